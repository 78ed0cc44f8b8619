"""Vocabulary-parallel f_divergence_loss, sequence_logprobs and their fused-linear forms (docs/vocab_parallel.md).

Each rank of ``vocab_parallel_group`` holds a contiguous shard of the vocabulary (student and teacher logits, or
LM-head rows, sharded alike; shard sizes may differ between ranks) and the same global labels. Every rank gets the
unsharded op's loss and the gradient for its own shard. Only O(rows) numbers cross ranks, in two collectives per
forward (none in backward), issued here between the kernel phases of csrc/include/fdiv_ops/vocab_parallel.h:

1. all_gather of each rank's per-row (max, sum of exponentials) of both sides (+ the entropy's moment, + the
   temperature-1 pair of the hard term at T != 1), with 3-4 values of metadata appended: the shard sizes (the
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
from torch.distributed import distributed_c10d

from .. import _C
from .._backend import acc_dtype
from ..divergences import resolve
from ._chunking import chunk_logits, fp32_weight, mm_fp32, row_chunks
from ._plumbing import Op, launch, row_weights, saved_gradient, scalar_arg, tensor_arg

DEFAULT_CHUNK_SIZE = 1024  # rows per chunk of the fused-linear forms: the same on every rank (chunks are collective)
# Two checksums of the labels modulo primes below 2^23, so that each is exact in float32 (the gathered dtype).
_FINGERPRINTS = ((8388593, 40503), (8388587, 69069))
_META = 4  # metadata values appended to the gathered buffer: sizes (1 or 2), fingerprints (2), padding


def group_name(group: object) -> str:
    """The process group's registered name (custom ops take strings, not groups)."""
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"vocab_parallel_group must be a torch.distributed ProcessGroup, got {type(group).__name__}")
    return group.group_name


def _group(name: str) -> dist.ProcessGroup:
    return distributed_c10d._resolve_process_group(name)


# ---------------------------------------------------------------------------------------------------
# Phase 1: local statistics, one all_gather, the global log-sum-exps


def _fingerprint(labels: torch.Tensor | None, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2,) checksums of the labels (-1, -1 without labels), exact in float32: equal on every rank iff (with
    probability ~1 - 1e-13) the labels are."""
    if labels is None:
        return torch.full((2,), -1.0, dtype=dtype, device=device)
    lab = labels.reshape(-1).long() + 3  # ignore_index -100 and friends stay distinct
    idx = torch.arange(rows, device=device, dtype=torch.int64)
    sums = [
        torch.remainder((lab * (torch.remainder(idx * mult + 12345, 8191) + 1)).sum(), mod)
        for mod, mult in _FINGERPRINTS
    ]
    return torch.stack(sums).to(dtype)


# torch >= 2.13 names it all_gather_single (all_gather_into_tensor warns there).
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _gather(buf: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(world, n): every rank's flat buffer, in rank order."""
    out = buf.new_empty(group.size() * buf.numel())
    _ALL_GATHER(out, buf, group=group)
    return out.view(group.size(), buf.numel())


def _combine(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Global LSE (float64) from the ranks' (max, sum exp(x - max)), (world, rows) each. A poisoned row on any rank
    (max NaN or +inf) gives NaN; a row of -inf everywhere gives -inf."""
    m, s = m.double(), s.double()
    top = m.amax(0)
    safe = torch.where(top == -math.inf, torch.zeros_like(top), top)
    return safe + torch.log((s * torch.exp(m - safe)).sum(0))


def _raise_or_poison(problems: list[tuple[torch.Tensor, str]], like: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: every check passed. CPU tensors: raise the first failed check's message (the same on
    every rank, since all hold the same gathered data). CUDA: no host sync, the caller poisons with NaN instead."""
    if like.device.type == "cpu":
        for ok, message in problems:
            if not bool(ok):
                raise ValueError(f"vocab_parallel_group: {message}")
        return torch.ones((), dtype=torch.bool)
    valid = torch.ones((), dtype=torch.bool, device=like.device)
    for ok, _ in problems:
        valid = valid & ok
    return valid


def _sizes_str(sizes: torch.Tensor) -> str:
    return str([int(v) for v in sizes.tolist()]) if sizes.device.type == "cpu" else "(on the device)"


def _layout_checks(vs: torch.Tensor, vt: torch.Tensor, max_vocab_pad: int) -> list[tuple[torch.Tensor, str]]:
    """Student shards vs and teacher shards vt (world,) must cover the same global columns: on each rank the shared
    columns start at the same offset, and one-sided columns lie past the other vocabulary's end."""
    total_s, total_t = vs.sum(), vt.sum()
    off_s, off_t = torch.cumsum(vs, 0) - vs, torch.cumsum(vt, 0) - vt
    common = torch.minimum(vs, vt)
    aligned = ((common == 0) | (off_s == off_t)).all()
    aligned &= ((vs <= common) | (off_s + common >= total_t)).all()
    aligned &= ((vt <= common) | (off_t + common >= total_s)).all()
    sizes = f"student shards {_sizes_str(vs)}, teacher shards {_sizes_str(vt)} (rank order)"
    checks = [
        (
            aligned,
            f"the vocabulary shards do not line up: {sizes}; each rank must pass the same contiguous slice of both "
            "vocabularies (sizes may differ only where the shorter vocabulary ends)",
        )
    ]
    if max_vocab_pad >= 0:
        checks.append(
            (
                (total_s - total_t).abs() <= max_vocab_pad,
                f"the global vocabulary sizes differ by more than max_vocab_pad = {max_vocab_pad}: {sizes}; the "
                "shorter side is padded with -inf, pass a larger max_vocab_pad (or None) if this is intended",
            )
        )
    return checks


def _labels_check(meta_fp: torch.Tensor) -> tuple[torch.Tensor, str]:
    return (meta_fp == meta_fp[:1]).all(), "labels differ between ranks (every rank must pass the same global labels)"


def _range_check(labels: torch.Tensor, counted: torch.Tensor, vocab: torch.Tensor, what: str):
    """Per-row flag of a label outside [0, vocab) on a counted row, and the check for _raise_or_poison."""
    bad = counted & ((labels < 0) | (labels >= vocab.to(labels.dtype)))
    return bad, (~bad.any(), f"labels must lie in [0, V) with V = {_sizes_str(vocab.reshape(1))[1:-1]} {what}")


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


# ---------------------------------------------------------------------------------------------------
# sequence_logprobs: phase 1 (+ the entropy's moment), one all_gather; the label's logit, one all_reduce


def seq_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    inv_t: float,
    with_entropy: bool,
    group: dist.ProcessGroup,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, entropy) in the accumulation dtype and (lse, entropy64, local_label) for the backward, for the
    sharded rows (rows, V_local); identical logprobs/entropy on every rank."""
    rows, v = logits.shape
    device, acc = logits.device, acc_dtype(logits.dtype)
    width = 3 if with_entropy else 2
    buf = logits.new_empty(rows * width + _META, dtype=acc)
    stats = buf[: rows * width].view(rows, width)
    launch(_C.vp_row_stats, device, logits=logits, stats=stats, col=0, scale=inv_t, with_moment=with_entropy)
    buf[rows * width].fill_(v)  # a fill, not a copy from a host tensor: no sync on CUDA
    buf[rows * width + 1].fill_(0)
    buf[rows * width + 2 :] = _fingerprint(labels, rows, device, acc)
    gathered = _gather(buf, group)  # collective 1
    per_rank = gathered[:, : rows * width].view(-1, rows, width).double()
    meta = gathered[:, rows * width :].double()
    m, s = per_rank[..., 0], per_rank[..., 1]
    top = m.amax(0)
    safe = torch.where(top == -math.inf, torch.zeros_like(top), top)
    rel = torch.exp(m - safe)
    total = (s * rel).sum(0)
    lse = safe + torch.log(total)
    sizes = meta[:, 0].long()
    vocab = sizes.sum()
    ignored = labels == ignore_index
    bad, range_check = _range_check(labels, ~ignored, vocab, "or equal ignore_index")
    valid = _raise_or_poison([_labels_check(meta[:, 2:4])], logits)
    _raise_or_poison([range_check], logits)  # CPU: raises; CUDA: only the rows in `bad` become NaN (below)
    offset = (torch.cumsum(sizes, 0) - sizes)[dist.get_rank(group)]
    local = labels - offset
    mine = ~ignored & (local >= 0) & (local < v)
    picked = logits.gather(1, local.clamp(0, max(v - 1, 0)).unsqueeze(1)).squeeze(1).to(acc) if v > 0 else None
    label_logit = torch.where(mine, picked, torch.zeros((), dtype=acc, device=device)) if v > 0 else buf.new_zeros(rows)
    dist.all_reduce(label_logit, group=group)  # collective 2
    dead = lse == -math.inf
    logprobs = label_logit.double() * inv_t - lse
    logprobs = torch.where(dead, torch.full_like(lse, -math.inf), logprobs)
    poison = bad | ~valid
    logprobs = torch.where(poison, torch.full_like(lse, math.nan), logprobs)
    logprobs = torch.where(ignored, torch.zeros_like(lse), logprobs)
    if with_entropy:
        w = per_rank[..., 2]
        moment = (rel * (w + (m - safe) * s)).sum(0)
        entropy = torch.log(total) - moment / total
        entropy = torch.where(ignored | dead, torch.zeros_like(entropy), entropy)
    else:
        entropy = lse.new_zeros(0)
    local_label = torch.where(ignored, torch.full_like(local, -2), torch.where(mine, local, torch.full_like(local, -1)))
    return logprobs.to(acc), entropy.to(acc), lse.contiguous(), entropy.contiguous(), local_label.contiguous()


def _seq_outputs(logits: torch.Tensor, with_entropy: bool):
    tensor_arg("vp_sequence_logprobs", "logits", logits, ndim=2)
    rows, acc = logits.shape[0], acc_dtype(logits.dtype)
    return (
        logits.new_empty(rows, dtype=acc),
        logits.new_empty(rows if with_entropy else 0, dtype=acc),
        logits.new_empty(rows, dtype=torch.float64),
        logits.new_empty(rows if with_entropy else 0, dtype=torch.float64),
        logits.new_empty(rows, dtype=torch.int64),
    )


def _seq(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    temperature: torch.Tensor,
    return_entropy: bool,
    group: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _seq_outputs(logits, return_entropy)
    inv_t = 1.0 / scalar_arg("vp_sequence_logprobs", "temperature", temperature)
    return seq_rows(logits.contiguous(), labels.contiguous(), ignore_index, inv_t, return_entropy, _group(group))


def _seq_fake(logits, labels, ignore_index, temperature, return_entropy, group):
    return _seq_outputs(logits, return_entropy)


def _seq_grad(
    logits: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    local_label: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: torch.Tensor,
) -> torch.Tensor:
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    launch(
        _C.vp_seq_grad,
        logits.device,
        logits=logits.contiguous(),
        lse=lse,
        entropy=entropy if grad_entropy is not None else None,
        local_label=local_label,
        grad_logprobs=grad_logprobs,
        grad_entropy=grad_entropy,
        grad=grad,
        inv_temperature=1.0 / scalar_arg("vp_sequence_logprobs_backward", "temperature", temperature),
    )
    return grad


def _seq_grad_fake(logits, lse, entropy, local_label, grad_logprobs, grad_entropy, temperature):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


seq_grad_op = Op("vp_sequence_logprobs_backward", _seq_grad, fake=_seq_grad_fake, scalars=(6,))


def _upstream(grad_logprobs, grad_entropy, acc):
    if grad_entropy is not None and grad_entropy.numel() == 0:
        grad_entropy = None  # the entropy was not asked for (traced graphs send an empty gradient for it)
    return (
        None if grad_logprobs is None else grad_logprobs.to(acc).contiguous(),
        None if grad_entropy is None else grad_entropy.to(acc).contiguous(),
    )


def _seq_setup(ctx, inputs, output):
    logits, _, _, temperature, _, _ = inputs
    ctx.save_for_backward(logits, *output[2:])
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.temperature = temperature


def _seq_backward(ctx, grad_logprobs, grad_entropy, *_unused):
    from ._plumbing import refuse_double_backward

    logits, lse, entropy, local_label = ctx.saved_tensors
    grad_logprobs, grad_entropy = _upstream(grad_logprobs, grad_entropy, acc_dtype(logits.dtype))
    if grad_logprobs is None and grad_entropy is None:
        return (None,) * 6
    refuse_double_backward("sequence_logprobs", grad_logprobs if grad_logprobs is not None else grad_entropy)
    grad = seq_grad_op(logits, lse, entropy, local_label, grad_logprobs, grad_entropy, ctx.temperature)
    return grad, None, None, None, None, None


seq_op = Op(
    "vp_sequence_logprobs", _seq, fake=_seq_fake, setup_context=_seq_setup, backward=_seq_backward, scalars=(3,)
)


def sequence_logprobs(logits, labels, *, ignore_index, temperature, return_entropy, group):
    """fdiv_ops.sequence_logprobs(..., vocab_parallel_group=group): logits is this rank's vocabulary shard, labels
    the global token ids (the same on every rank)."""
    from .._validation import check_float_tensor
    from .sequence_logprobs import _check_common, _check_labels

    name = group_name(group)
    check_float_tensor("logits", logits)
    if logits.dim() < 2 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V_local) with V_local >= 1, got {tuple(logits.shape)}")
    labels = _check_labels(labels, logits.shape[:-1], logits.device, "logits.shape[:-1]")
    _check_common(ignore_index, temperature, return_entropy)
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    logprobs, entropy, *_ = seq_op(flat, labels.reshape(-1), ignore_index, temperature, return_entropy, name)
    logprobs = logprobs.reshape(lead)
    return (logprobs, entropy.reshape(lead)) if return_entropy else logprobs


# ---------------------------------------------------------------------------------------------------
# fused_linear_sequence_logprobs: per chunk, logits from the local LM-head rows; backward recomputes them


def _linear(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    temperature: torch.Tensor,
    return_entropy: bool,
    chunk_size: int,
    group: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = hidden.shape[0]
    outs = _seq_outputs(hidden.new_empty(rows, 1, dtype=weight.dtype), return_entropy)
    pg = _group(group)
    inv_t = 1.0 / scalar_arg("vp_fused_linear_sequence_logprobs", "temperature", temperature)
    w = fp32_weight(weight)
    for start, end in row_chunks(rows, max(1, chunk_size)):
        parts = seq_rows(
            chunk_logits(hidden[start:end], w, bias),
            labels[start:end].contiguous(),
            ignore_index,
            inv_t,
            return_entropy,
            pg,
        )
        for out, part in zip(outs, parts, strict=True):
            if out.numel():
                out[start:end] = part
    return outs


def _linear_fake(hidden, weight, bias, labels, ignore_index, temperature, return_entropy, chunk_size, group):
    return _seq_outputs(hidden.new_empty(hidden.shape[0], 1, dtype=weight.dtype), return_entropy)


def _linear_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    local_label: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: torch.Tensor,
    chunk_size: int,
    weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = acc_dtype(hidden.dtype)
    grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    grad_weight = torch.zeros(weight.shape if weight_grad else (0,), dtype=acc, device=weight.device)
    grad_bias = torch.zeros(weight.shape[0] if bias is not None else 0, dtype=acc, device=weight.device)
    w = fp32_weight(weight)
    for start, end in row_chunks(hidden.shape[0], max(1, chunk_size)):
        h = hidden[start:end]
        logits = chunk_logits(h, w, bias)
        g = _seq_grad(
            logits,
            lse[start:end],
            entropy[start:end] if grad_entropy is not None else entropy,
            local_label[start:end],
            None if grad_logprobs is None else grad_logprobs[start:end],
            None if grad_entropy is None else grad_entropy[start:end],
            temperature,
        )
        gw = g if w.dtype == g.dtype else g.to(w.dtype)
        grad_hidden[start:end] = mm_fp32(gw, w)
        if weight_grad:
            grad_weight += mm_fp32(gw.t(), h)
        if bias is not None:
            grad_bias += g.sum(0)
    return grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


def _linear_grad_fake(hidden, weight, bias, lse, entropy, local_label, grad_logprobs, grad_entropy, *args):
    weight_grad = args[-1]
    return (
        torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device),
        torch.empty(weight.shape if weight_grad else (0,), dtype=weight.dtype, device=weight.device),
        weight.new_empty(weight.shape[0] if bias is not None else 0),
    )


linear_grad_op = Op("vp_fused_linear_sequence_logprobs_backward", _linear_grad, fake=_linear_grad_fake, scalars=(8,))


def _linear_setup(ctx, inputs, output):
    hidden, weight, bias, _, _, temperature, _, chunk_size, _ = inputs
    ctx.save_for_backward(hidden, weight, bias, *output[2:])
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.temperature, ctx.chunk_size, ctx.has_bias = temperature, chunk_size, bias is not None


def _linear_backward(ctx, grad_logprobs, grad_entropy, *_unused):
    from ._plumbing import refuse_double_backward

    hidden, weight, bias, lse, entropy, local_label = ctx.saved_tensors
    grad_logprobs, grad_entropy = _upstream(grad_logprobs, grad_entropy, acc_dtype(hidden.dtype))
    if grad_logprobs is None and grad_entropy is None:
        return (None,) * 9
    refuse_double_backward(
        "fused_linear_sequence_logprobs", grad_logprobs if grad_logprobs is not None else grad_entropy
    )
    weight_grad = bool(ctx.needs_input_grad[1])
    gh, gw, gb = linear_grad_op(
        hidden,
        weight,
        bias,
        lse,
        entropy,
        local_label,
        grad_logprobs,
        grad_entropy,
        ctx.temperature,
        ctx.chunk_size,
        weight_grad,
    )
    return gh, (gw if weight_grad else None), (gb if ctx.has_bias else None), None, None, None, None, None, None


linear_op = Op(
    "vp_fused_linear_sequence_logprobs",
    _linear,
    fake=_linear_fake,
    setup_context=_linear_setup,
    backward=_linear_backward,
    scalars=(5,),
)


def fused_linear_sequence_logprobs(
    hidden, weight, labels, *, bias, ignore_index, temperature, return_entropy, chunk_size, group
):
    """fdiv_ops.fused_linear_sequence_logprobs(..., vocab_parallel_group=group): weight (and bias) are this rank's
    rows of the LM head. grad of hidden is this rank's partial sum g_shard @ W_shard (sum it over the group as a
    column-parallel layer's input gradient is summed)."""
    from .._validation import check_float_tensor, check_int, check_same
    from .sequence_logprobs import _check_common, _check_labels

    name = group_name(group)
    check_float_tensor("hidden", hidden)
    check_float_tensor("weight", weight)
    check_same("weight", weight, "hidden", hidden, shape=False)
    if hidden.dim() < 2:
        raise ValueError(f"hidden must have shape (..., H), got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"weight must have shape (V_local, H) with H = {hidden.shape[-1]} and V_local >= 1, got "
            f"{tuple(weight.shape)}"
        )
    if bias is not None:
        check_float_tensor("bias", bias)
        check_same("bias", bias, "weight", weight, shape=False)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape (V_local,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    labels = _check_labels(labels, hidden.shape[:-1], hidden.device, "hidden.shape[:-1]")
    _check_common(ignore_index, temperature, return_entropy)
    check_int("chunk_size", chunk_size, minimum=1)
    lead = hidden.shape[:-1]
    hidden2d = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    logprobs, entropy, *_ = linear_op(
        hidden2d, weight, bias, labels.reshape(-1), ignore_index, temperature, return_entropy, chunk_size, name
    )
    logprobs = logprobs.reshape(lead)
    return (logprobs, entropy.reshape(lead)) if return_entropy else logprobs
