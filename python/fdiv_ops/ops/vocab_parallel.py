"""Vocabulary-parallel f_divergence_loss and fused_linear_f_divergence (docs/vocab_parallel.md); the log-prob ops
live in vocab_parallel_logprobs.py (re-exported here for the public ops' dispatch) and the shared phase-1
helpers in _vp_common.py.

Each rank of ``vocab_parallel_group`` holds a contiguous shard of the vocabulary (student and teacher logits, or
LM-head rows, sharded alike; shard sizes may differ between ranks) and the same global labels. Every rank gets the
unsharded op's loss and the gradient for its own shard. Only O(rows) numbers cross ranks, in two collectives per
forward (none in backward), issued here between the kernel phases of csrc/include/fdiv_ops/vocab_parallel.h:

1. all_gather of each rank's per-row (max, sum of exponentials) of both sides (+ the entropy's moment, + the
   temperature-1 pair of the hard term at T != 1), with 4 values of metadata appended: the shard sizes (the
   global vocabulary and each rank's offset follow from them) and a fingerprint of the labels;
2. all_reduce SUM of the per-row partial sums: the loss, S = sum q psi~, and the label's logit where needed.

Inconsistent inputs across ranks (shards that do not line up, labels that differ, a hard-term or sequence label
outside the global vocabulary) are found from the gathered metadata, which every rank holds identically: on CPU
(gloo) every rank raises the same ValueError (reading a CPU tensor is no device sync); on CUDA they make the loss
(and gradient) NaN on every rank instead, since raising would need a host sync.

The collectives run inside the custom ops (the process group passed by name and resolved there), so each op stays
one opaque node under torch.compile(fullgraph=True).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .. import _C
from .._backend import acc_dtype
from ..divergences import resolve
from ._chunking import chunk_logits, fp32_weight, mm_fp32, row_chunks
from ._plumbing import Op, launch, row_weights, saved_gradient, scalar_arg, tensor_arg
from ._vp_common import (
    _META,
    _combine,
    _fingerprint,
    _gather,
    _group,
    _labels_check,
    _layout_checks,
    _raise_or_poison,
    _range_check,
    group_name,
)
from .vocab_parallel_logprobs import fused_linear_sequence_logprobs, sequence_logprobs

__all__ = ["f_divergence_loss", "fused_linear_f_divergence", "fused_linear_sequence_logprobs", "sequence_logprobs"]

DEFAULT_CHUNK_SIZE = 1024  # rows per chunk of the fused-linear forms: the same on every rank (chunks are collective)


# ---------------------------------------------------------------------------------------------------
# f_divergence on one block of rows: phases 1-3, two collectives


def kd_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    row_scale: torch.Tensor,
    labels: torch.Tensor | None,
    hard_weight: float,
    kind: int,
    param: float,
    inv_t: float,
    teacher_is_logprobs: bool,
    max_vocab_pad: int,
    group: dist.ProcessGroup,
    grad: torch.Tensor,
) -> torch.Tensor:
    """The row losses (rows,) of the sharded rows, identical on every rank; writes this shard's gradient into grad
    (which may be student itself). labels: the global labels (fingerprinted; the hard term's targets when
    hard_weight != 0)."""
    rows, vs = student.shape
    vt = teacher.shape[1]
    device, acc = student.device, acc_dtype(student.dtype)
    hard = labels is not None and hard_weight != 0.0
    width = 6 if hard and inv_t != 1.0 else 4
    buf = student.new_empty(rows * width + _META, dtype=acc)
    stats = buf[: rows * width].view(rows, width)
    t_scale = 1.0 if teacher_is_logprobs else inv_t
    for logits, col, scale in ((student, 0, inv_t), (teacher, 2, t_scale), (student, 4, 1.0))[: width // 2]:
        launch(_C.vp_row_stats, device, logits=logits, stats=stats, col=col, scale=scale, with_moment=False)
    buf[rows * width].fill_(vs)  # fills, not a copy from a host tensor: no sync on CUDA
    buf[rows * width + 1].fill_(vt)
    buf[rows * width + 2 :] = torch.cat([_fingerprint(labels, rows, device, acc), buf.new_zeros(_META - 4)])
    gathered = _gather(buf, group)  # collective 1
    per_rank = gathered[:, : rows * width].view(-1, rows, width)
    meta = gathered[:, rows * width :].double()
    lse_z = _combine(per_rank[..., 0], per_rank[..., 1])
    lse_t = _combine(per_rank[..., 2], per_rank[..., 3])
    lse_1 = _combine(per_rank[..., 4], per_rank[..., 5]) if width == 6 else lse_z
    lse = torch.stack([lse_z, lse_t, lse_1], dim=1)
    vs_all, vt_all = meta[:, 0].long(), meta[:, 1].long()
    checks = _layout_checks(vs_all, vt_all, max_vocab_pad) + [_labels_check(meta[:, 2:4])]
    local_labels = None
    if hard:
        flat = labels.reshape(-1).long()
        bad, check = _range_check(flat, row_scale != 0, vs_all.sum(), "of the student (the hard term's targets)")
        row_checks = [check]  # CPU: raises; CUDA: only the rows in `bad` become NaN
        lse = torch.where(bad.unsqueeze(1), torch.full_like(lse, math.nan), lse)
        rank = dist.get_rank(group)
        local_labels = (flat - (torch.cumsum(vs_all, 0) - vs_all)[rank]).contiguous()
    valid = _raise_or_poison(checks, student)
    if hard:
        _raise_or_poison(row_checks, student)
    if device.type != "cpu":
        lse = torch.where(valid, lse, torch.full_like(lse, math.nan))
    lse = lse.contiguous()
    partial = student.new_empty(3, rows, dtype=acc)
    common = dict(lse=lse, row_scale=row_scale, labels=local_labels, hard_weight=float(hard_weight) if hard else 0.0)
    spec = dict(kind=kind, param=param, inv_temperature=inv_t, teacher_is_logprobs=teacher_is_logprobs)
    launch(_C.vp_kd_partial, device, student=student, teacher=teacher, partial=partial, **common, **spec)
    dist.all_reduce(partial if hard else partial[:2], group=group)  # collective 2
    row_loss = student.new_empty(rows, dtype=acc)
    launch(
        _C.vp_kd_grad,
        device,
        student=student,
        teacher=teacher,
        totals=partial,
        row_loss=row_loss,
        grad=grad,
        **common,
        **spec,
    )
    return row_loss


def _dense(
    student: torch.Tensor,
    teacher: torch.Tensor,
    row_scale: torch.Tensor,
    labels: torch.Tensor | None,
    kind: int,
    param: float,
    inv_temperature: torch.Tensor,
    teacher_is_logprobs: bool,
    max_vocab_pad: int,
    group: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    tensor_arg("vp_f_divergence", "student", student, ndim=2)
    grad = torch.empty_like(student, memory_format=torch.contiguous_format)
    row_loss = kd_rows(
        student.contiguous(),
        teacher.contiguous(),
        row_scale,
        labels,
        0.0,
        kind,
        param,
        scalar_arg("vp_f_divergence", "inv_temperature", inv_temperature),
        teacher_is_logprobs,
        max_vocab_pad,
        _group(group),
        grad,
    )
    return row_loss, grad


def _dense_fake(student, teacher, row_scale, labels, kind, param, inv_temperature, teacher_is_logprobs, pad, group):
    tensor_arg("vp_f_divergence", "student", student, ndim=2)
    acc = acc_dtype(student.dtype)
    return student.new_empty(student.shape[0], dtype=acc), torch.empty_like(
        student, memory_format=torch.contiguous_format
    )


_setup, _backward = saved_gradient("f_divergence_loss", [(1, 0)])
dense_op = Op("vp_f_divergence", _dense, fake=_dense_fake, setup_context=_setup, backward=_backward, scalars=(6,))


def f_divergence_loss(
    student_logits,
    teacher_logits,
    *,
    divergence,
    temperature,
    labels,
    ignore_index,
    reduction,
    num_items_in_batch,
    teacher_is_logprobs,
    teacher_topk,
    max_vocab_pad,
    group,
) -> torch.Tensor:
    """fdiv_ops.f_divergence_loss(..., vocab_parallel_group=group): the arguments as documented there, the logits
    being this rank's vocabulary shards."""
    from .f_divergence import _validate

    name = group_name(group)
    if teacher_topk is not None:
        raise ValueError(
            "teacher_topk is not supported with vocab_parallel_group (a top-k teacher's indices are global; "
            "pass the teacher's sharded logits or log-probs instead)"
        )
    _validate(
        student_logits,
        teacher_logits,
        temperature,
        labels,
        ignore_index,
        reduction,
        num_items_in_batch,
        teacher_is_logprobs,
        None,
        None,  # max_vocab_pad is checked on the global sizes, after the gather
    )
    if max_vocab_pad is not None and (isinstance(max_vocab_pad, bool) or not isinstance(max_vocab_pad, int)):
        raise TypeError(f"max_vocab_pad must be an int or None, got {max_vocab_pad!r}")
    if max_vocab_pad is not None and max_vocab_pad < 0:
        raise ValueError(f"max_vocab_pad must be >= 0, got {max_vocab_pad}")
    div = resolve(divergence).check_compute_dtype(student_logits.dtype)
    leading = student_logits.shape[:-1]
    rows, vocab = leading.numel(), student_logits.shape[-1]
    acc = acc_dtype(student_logits.dtype)
    row_scale = row_weights(
        labels,
        -100 if ignore_index is None else ignore_index,
        reduction,
        num_items_in_batch,
        rows,
        student_logits.device,
        acc,
    )
    student = student_logits.reshape(rows, vocab)
    teacher = teacher_logits.detach().reshape(rows, teacher_logits.shape[-1]).to(student.dtype)
    row_loss, _ = dense_op(
        student,
        teacher,
        row_scale,
        None if labels is None else labels.reshape(rows).long(),
        div.kernel_id,
        div.kernel_param,
        1.0 / temperature,
        teacher_is_logprobs,
        -1 if max_vocab_pad is None else max_vocab_pad,
        name,
    )
    if reduction == "none":
        return row_loss.reshape(leading)
    return row_loss.sum()


# ---------------------------------------------------------------------------------------------------
# fused_linear_f_divergence: the same phases per chunk of rows, the logits formed from the local LM-head rows


def _fused(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    row_scale: torch.Tensor,
    labels: torch.Tensor | None,
    hard_weight: torch.Tensor,
    kind: int,
    param: float,
    inv_temperature: torch.Tensor,
    chunk_size: int,
    max_vocab_pad: int,
    group: str,
    hidden_grad: bool,
    weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .fused_linear import _accumulate_weight_grad, _fused_outputs

    op = "vp_fused_linear_f_divergence"
    _, grad_hidden, _, _ = _fused_outputs(student_hidden, student_weight, student_bias, hidden_grad, weight_grad)
    pg = _group(group)
    rows = student_hidden.shape[0]
    acc = acc_dtype(student_hidden.dtype)
    hard_weight = scalar_arg(op, "hard_weight", hard_weight)
    inv_t = scalar_arg(op, "inv_temperature", inv_temperature)
    row_loss = student_hidden.new_empty(rows, dtype=acc)
    grad_weight = torch.zeros(student_weight.shape if weight_grad else (0,), dtype=acc, device=student_weight.device)
    grad_bias = torch.zeros(
        student_weight.shape[0] if student_bias is not None else 0, dtype=acc, device=student_weight.device
    )
    w_s, w_t = fp32_weight(student_weight), fp32_weight(teacher_weight)
    for start, end in row_chunks(rows, chunk_size):
        h = student_hidden[start:end]
        logits = chunk_logits(h, w_s, student_bias)
        with torch.no_grad():
            teacher_logits = chunk_logits(teacher_hidden[start:end], w_t, teacher_bias).to(logits.dtype)
        row_loss[start:end] = kd_rows(
            logits,
            teacher_logits,
            row_scale[start:end],
            None if labels is None else labels[start:end].contiguous(),
            hard_weight,
            kind,
            param,
            inv_t,
            False,
            max_vocab_pad,
            pg,
            logits,  # the gradient in place
        )
        del teacher_logits
        if student_bias is not None:
            grad_bias += logits.sum(0)
        g = logits if w_s.dtype == logits.dtype else logits.to(w_s.dtype)
        if hidden_grad and g.dtype == grad_hidden.dtype:
            torch.mm(g, w_s, out=grad_hidden[start:end])
        elif hidden_grad:
            grad_hidden[start:end] = mm_fp32(g, w_s)
        if weight_grad:
            _accumulate_weight_grad(grad_weight, g, h)
    return row_loss.sum(), grad_hidden, grad_weight.to(student_weight.dtype), grad_bias.to(student_weight.dtype)


def _fused_fake(student_hidden, student_weight, student_bias, *args):
    from .fused_linear import _fused_outputs

    hidden_grad, weight_grad = args[-2:]
    return _fused_outputs(student_hidden, student_weight, student_bias, hidden_grad, weight_grad)


_fsetup, _fbackward = saved_gradient("fused_linear_f_divergence", [(1, 0), (2, 1), (3, 2)])
fused_op = Op(
    "vp_fused_linear_f_divergence",
    _fused,
    fake=_fused_fake,
    setup_context=_fsetup,
    backward=_fbackward,
    scalars=(8, 11),
)


def fused_linear_f_divergence(
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    *,
    student_bias,
    teacher_bias,
    labels,
    divergence,
    temperature,
    ignore_index,
    hard_loss_weight,
    reduction,
    num_items_in_batch,
    chunk_size,
    max_vocab_pad,
    group,
) -> torch.Tensor:
    """fdiv_ops.fused_linear_f_divergence(..., vocab_parallel_group=group): the weights (and biases) are this rank's
    rows of the LM heads. grad of student_hidden is this rank's partial sum g_shard @ W_shard (sum it over the group
    as a column-parallel layer's input gradient is summed)."""
    from .._validation import check_positive
    from .fused_linear import _validate

    name = group_name(group)
    _validate(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        student_bias,
        teacher_bias,
        labels,
        ignore_index,
        hard_loss_weight,
        reduction,
        num_items_in_batch,
        chunk_size,
        None,
    )
    if max_vocab_pad is not None and (not isinstance(max_vocab_pad, int) or max_vocab_pad < 0):
        raise ValueError(f"max_vocab_pad must be an int >= 0 or None, got {max_vocab_pad!r}")
    check_positive("temperature", temperature)
    div = resolve(divergence).check_compute_dtype(student_hidden.dtype)
    rows = student_hidden.shape[:-1].numel()
    acc = acc_dtype(student_hidden.dtype)
    row_scale = row_weights(labels, ignore_index, reduction, num_items_in_batch, rows, student_hidden.device, acc)
    grad_on = torch.is_grad_enabled()
    loss, *_ = fused_op(
        student_hidden.reshape(rows, student_hidden.shape[-1]),
        student_weight,
        student_bias,
        teacher_hidden.detach().reshape(rows, teacher_hidden.shape[-1]),
        teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(),
        row_scale,
        None if labels is None else labels.reshape(rows).long(),
        hard_loss_weight,
        div.kernel_id,
        div.kernel_param,
        1.0 / temperature,
        DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size,
        -1 if max_vocab_pad is None else max_vocab_pad,
        name,
        grad_on and bool(student_hidden.requires_grad),
        grad_on and bool(student_weight.requires_grad),
    )
    return loss
