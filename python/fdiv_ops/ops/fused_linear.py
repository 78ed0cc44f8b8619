"""fused_linear_f_divergence: token-level f-divergence distillation from hidden states and LM-head weights,
the logits never held beyond one chunk of rows (docs/math.md §3).

One custom op, ``fdiv_ops::fused_linear_f_divergence``. Per chunk of rows it forms the student and teacher
logits with fp32-output GEMMs (never rounded to 16 bits), runs the f_divergence row kernel (the same one as
f_divergence_loss; it writes dL/dlogits in place over the student's logits chunk, see
csrc/include/fdiv_ops/f_divergence.h) and turns that into grad_hidden = g W, grad_weight += g^T h,
grad_bias += sum_rows g, accumulated in fp32. Everything is computed in forward and saved; backward only
scales the three gradients by grad_output on the device (no host sync).
"""

from __future__ import annotations

import torch

from .. import _C
from .._backend import acc_dtype
from .._validation import (
    check_choice,
    check_float_tensor,
    check_int,
    check_integer_tensor,
    check_item_count,
    check_positive,
    check_same,
)
from ..divergences import Divergence, resolve
from . import vocab_parallel
from ._chunking import chunk_buffer, chunk_logits, fp32_weight, mm_fp32, row_chunks
from ._plumbing import Op, launch, row_weights, saved_gradient, scalar_arg, tensor_arg
from .f_divergence import DEFAULT_MAX_VOCAB_PAD

REDUCTIONS = ("batchmean", "sum")
# bytes of fp32 logits per side in one chunk on the CPU: 2 x 128 MiB of chunk logits keep the extra memory at
# 4096 x 1024 x 32000 near 16% of the idiomatic loss's (both models' full logits), with GEMMs of >= 1000 rows
CPU_LOGITS_BUDGET = 128 << 20
CUDA_LOGITS_BUDGET = 2 << 30  # cap on the bytes of one chunk's logits (both sides) on CUDA


def auto_chunk_size(rows: int, student_vocab: int, teacher_vocab: int, device: torch.device) -> int:
    """Rows per chunk from the vocabulary sizes and the memory at hand; all rows when they fit.

    CPU: 128 MiB of fp32 logits per side. CUDA: the two fp32 logits chunks plus a 16-bit copy of the
    gradient take at most a quarter of the free memory (cudaMemGetInfo: no stream sync) and 2 GiB.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_row = 4 * (student_vocab + teacher_vocab) + 2 * student_vocab
        budget = min(free // 4, CUDA_LOGITS_BUDGET)
    else:
        per_row = 4 * max(student_vocab, teacher_vocab)
        budget = CPU_LOGITS_BUDGET
    return max(1, min(rows, budget // per_row))


def _row_kernel_in_place(logits, teacher_logits, row_scale, row_loss, labels, hard_weight, kind, param, inv_t):
    """The f_divergence row kernel with grad = the student's logits: they become dL/dlogits in place. On CPU the
    binding rejects hard-loss labels outside [0, V) on counted rows (free there); on CUDA they give NaN."""
    launch(
        _C.f_divergence,
        logits.device,
        student=logits,
        teacher=teacher_logits,
        row_scale=row_scale,
        row_loss=row_loss,
        grad=logits,
        labels=labels,
        kind=kind,
        param=param,
        inv_temperature=inv_t,
        teacher_is_logprobs=False,
        hard_weight=hard_weight if labels is not None else 0.0,
    )


_addmm_out_dtype_works: bool | None = None  # CUDA addmm(fp32 self, 16-bit mats, out_dtype): None = untried


def _accumulate_weight_grad(grad_weight: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """grad_weight (fp32/fp64) += g^T h, without a (V, H) temporary where torch allows it."""
    global _addmm_out_dtype_works
    if g.dtype == h.dtype == grad_weight.dtype:
        grad_weight.addmm_(g.t(), h)
    elif g.device.type == "cuda" and g.dtype == h.dtype:
        # 16-bit GEMM accumulating into the fp32 gradient. torch versions differ on whether addmm's out_dtype
        # form accepts an fp32 `self` with 16-bit matrices (its checks run before any compute); where it does
        # not, fall back to a fp32 (V, H) temporary per chunk.
        if _addmm_out_dtype_works is not False:
            try:
                torch.addmm(grad_weight, g.t(), h, out_dtype=grad_weight.dtype, out=grad_weight)
                _addmm_out_dtype_works = True
                return
            except (RuntimeError, TypeError):
                _addmm_out_dtype_works = False
        grad_weight += mm_fp32(g.t(), h)
    else:
        grad_weight.addmm_(g.t().to(grad_weight.dtype), h.to(grad_weight.dtype))


def _fused_outputs(student_hidden, student_weight, student_bias, hidden_grad: bool, weight_grad: bool):
    """(loss, grad_hidden, grad_weight, grad_bias), allocated alike by the implementation and the fake; a gradient
    nobody asked for (frozen weight, eval under no_grad) is an empty tensor and its GEMM is skipped."""
    op = "fused_linear_f_divergence"
    tensor_arg(op, "student_hidden", student_hidden, ndim=2)
    tensor_arg(op, "student_weight", student_weight, ndim=2)
    if student_bias is not None and tensor_arg(op, "student_bias", student_bias).shape != student_weight.shape[:1]:
        raise ValueError(f"fdiv_ops::{op}: student_bias must have shape (V,), got {tuple(student_bias.shape)}")
    acc = acc_dtype(student_hidden.dtype)
    hidden_shape = student_hidden.shape if hidden_grad else (0,)
    return (
        student_hidden.new_empty((), dtype=acc),
        torch.empty(hidden_shape, dtype=student_hidden.dtype, device=student_hidden.device),
        student_weight.new_empty(student_weight.shape if weight_grad else (0,)),
        student_weight.new_empty(student_weight.shape[0] if student_bias is not None else 0),
    )


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
    hidden_grad: bool,
    weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "fused_linear_f_divergence"
    _, grad_hidden, _, _ = _fused_outputs(student_hidden, student_weight, student_bias, hidden_grad, weight_grad)
    tensor_arg(op, "teacher_hidden", teacher_hidden, ndim=2)
    tensor_arg(op, "teacher_weight", teacher_weight, ndim=2)
    tensor_arg(op, "row_scale", row_scale, ndim=1)
    if teacher_bias is not None and tensor_arg(op, "teacher_bias", teacher_bias).shape != teacher_weight.shape[:1]:
        raise ValueError(f"fdiv_ops::{op}: teacher_bias must have shape (V',), got {tuple(teacher_bias.shape)}")
    if (
        teacher_hidden.shape[0] != student_hidden.shape[0]
        or student_weight.shape[1] != student_hidden.shape[1]
        or teacher_weight.shape[1] != teacher_hidden.shape[1]
    ):
        raise ValueError(
            f"fdiv_ops::{op}: expected student_hidden (rows, H), student_weight (V, H), teacher_hidden (rows, H'), "
            f"teacher_weight (V', H'), got {tuple(student_hidden.shape)}, {tuple(student_weight.shape)}, "
            f"{tuple(teacher_hidden.shape)}, {tuple(teacher_weight.shape)}"
        )
    rows = student_hidden.shape[0]
    vocab_s, vocab_t = student_weight.shape[0], teacher_weight.shape[0]
    acc = acc_dtype(student_hidden.dtype)
    hard_weight = scalar_arg(op, "hard_weight", hard_weight)
    inv_temperature = scalar_arg(op, "inv_temperature", inv_temperature)
    if chunk_size <= 0:
        chunk_size = auto_chunk_size(rows, vocab_s, vocab_t, student_hidden.device)
    hard = labels is not None and hard_weight != 0.0
    labels = tensor_arg(op, "labels", labels).contiguous() if hard else None
    row_loss = student_hidden.new_empty(rows, dtype=acc)
    # fp32 accumulators (the gradient's own tensor for fp32/fp64 weights): a 16-bit (V, H) weight costs one
    # extra V x H x 4 bytes here, plus the final cast
    grad_weight = torch.zeros(student_weight.shape if weight_grad else (0,), dtype=acc, device=student_weight.device)
    grad_bias = torch.zeros(vocab_s if student_bias is not None else 0, dtype=acc, device=student_weight.device)
    w_s, w_t = fp32_weight(student_weight), fp32_weight(teacher_weight)
    # the two logits chunks, reused by every chunk on the CPU (None: a fresh tensor per chunk)
    student_buf = chunk_buffer(rows, chunk_size, vocab_s, student_hidden, acc)
    teacher_buf = chunk_buffer(rows, chunk_size, vocab_t, teacher_hidden, acc_dtype(teacher_hidden.dtype))
    for start, end in row_chunks(rows, chunk_size):
        h = student_hidden[start:end]
        n = end - start
        # (n, V) fp32 (fp64): becomes the gradient in place
        logits = chunk_logits(h, w_s, student_bias, None if student_buf is None else student_buf[:n])
        with torch.no_grad():
            out_t = None if teacher_buf is None else teacher_buf[:n]
            teacher_logits = chunk_logits(teacher_hidden[start:end], w_t, teacher_bias, out_t).to(logits.dtype)
        _row_kernel_in_place(
            logits,
            teacher_logits,
            row_scale[start:end],
            row_loss[start:end],
            labels[start:end] if hard else None,
            hard_weight,
            kind,
            param,
            inv_temperature,
        )
        del teacher_logits
        grad_logits = logits  # now dL/dlogits of this chunk
        if student_bias is not None:
            grad_bias += grad_logits.sum(0)
        g = grad_logits if w_s.dtype == grad_logits.dtype else grad_logits.to(w_s.dtype)  # CUDA 16-bit GEMMs
        if hidden_grad and g.dtype == grad_hidden.dtype:
            torch.mm(g, w_s, out=grad_hidden[start:end])
        elif hidden_grad:
            grad_hidden[start:end] = mm_fp32(g, w_s)
        if weight_grad:
            _accumulate_weight_grad(grad_weight, g, h)
        del logits, grad_logits, g
    del student_buf, teacher_buf
    loss = row_loss.sum()
    return loss, grad_hidden, grad_weight.to(student_weight.dtype), grad_bias.to(student_weight.dtype)


def _fused_fake(student_hidden, student_weight, student_bias, *args):
    hidden_grad, weight_grad = args[-2:]
    return _fused_outputs(student_hidden, student_weight, student_bias, hidden_grad, weight_grad)


# The loss and the three gradients are formed in forward; backward scales them by grad_output (a 0-dim tensor).
_setup, _backward = saved_gradient("fused_linear_f_divergence", [(1, 0), (2, 1), (3, 2)])
fused_op = Op(
    "fused_linear_f_divergence", _fused, fake=_fused_fake, setup_context=_setup, backward=_backward, scalars=(8, 11)
)


def _check_weight(name: str, weight: torch.Tensor, hidden_name: str, hidden_size: int) -> None:
    if weight.dim() != 2 or weight.shape[1] != hidden_size or weight.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (V, H) with H = {hidden_size} (the last dim of {hidden_name}) "
            f"and V >= 1, got {tuple(weight.shape)}"
        )


def _check_bias(name: str, bias: torch.Tensor | None, weight_name: str, weight: torch.Tensor) -> None:
    if bias is None:
        return
    check_float_tensor(name, bias)
    check_same(name, bias, weight_name, weight, shape=False)
    if bias.shape != (weight.shape[0],):
        raise ValueError(
            f"{name} must have shape (V,) = ({weight.shape[0]},) like {weight_name}, got {tuple(bias.shape)}"
        )


def _validate(
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
    max_vocab_pad,
):
    check_float_tensor("student_hidden", student_hidden)
    check_float_tensor("student_weight", student_weight)
    check_float_tensor("teacher_hidden", teacher_hidden)
    check_float_tensor("teacher_weight", teacher_weight)
    check_same("student_weight", student_weight, "student_hidden", student_hidden, shape=False)
    check_same("teacher_hidden", teacher_hidden, "student_hidden", student_hidden, shape=False, dtype=False)
    check_same("teacher_weight", teacher_weight, "teacher_hidden", teacher_hidden, shape=False)
    if student_hidden.dim() < 1 or student_hidden.shape[-1] == 0:
        raise ValueError(f"student_hidden must have shape (..., H) with H >= 1, got {tuple(student_hidden.shape)}")
    leading = student_hidden.shape[:-1]
    if teacher_hidden.dim() < 1 or teacher_hidden.shape[:-1] != leading or teacher_hidden.shape[-1] == 0:
        raise ValueError(
            f"teacher_hidden must have shape (..., H') with the leading shape of student_hidden "
            f"{tuple(leading)} and H' >= 1, got {tuple(teacher_hidden.shape)}"
        )
    _check_weight("student_weight", student_weight, "student_hidden", student_hidden.shape[-1])
    _check_weight("teacher_weight", teacher_weight, "teacher_hidden", teacher_hidden.shape[-1])
    _check_bias("student_bias", student_bias, "student_weight", student_weight)
    _check_bias("teacher_bias", teacher_bias, "teacher_weight", teacher_weight)
    check_int("max_vocab_pad", max_vocab_pad, minimum=0, allow_none=True)
    vocab_s, vocab_t = student_weight.shape[0], teacher_weight.shape[0]
    if max_vocab_pad is not None and abs(vocab_s - vocab_t) > max_vocab_pad:
        raise ValueError(
            f"teacher_weight: vocabulary sizes differ by {abs(vocab_s - vocab_t)} (student {vocab_s}, teacher "
            f"{vocab_t}), more than max_vocab_pad = {max_vocab_pad}; the shorter side is padded with -inf, pass a "
            "larger max_vocab_pad (or None) if this mismatch is intended"
        )
    check_positive("hard_loss_weight", hard_loss_weight, allow_zero=True)
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("ignore_index", ignore_index)
    if labels is not None:
        check_integer_tensor("labels", labels, " with the leading shape of student_hidden")
        if labels.shape != leading:
            raise ValueError(
                f"labels must have the leading shape of student_hidden {tuple(leading)}, got {tuple(labels.shape)}"
            )
        check_same("labels", labels, "student_hidden", student_hidden, shape=False, dtype=False)
    elif hard_loss_weight > 0:
        raise ValueError("labels are required when hard_loss_weight > 0 (the cross-entropy needs targets)")
    check_item_count("num_items_in_batch", num_items_in_batch)
    check_int("chunk_size", chunk_size, minimum=1, allow_none=True)


def fused_linear_f_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    divergence: str | Divergence = "forward_kl",
    temperature: float = 1.0,
    ignore_index: int = -100,
    hard_loss_weight: float = 0.0,
    reduction: str = "batchmean",
    num_items_in_batch: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    max_vocab_pad: int | None = DEFAULT_MAX_VOCAB_PAD,
    vocab_parallel_group: object | None = None,
) -> torch.Tensor:
    r"""f_divergence_loss(student_hidden @ student_weight.T + b_s, teacher_hidden @ teacher_weight.T + b_t)
    plus an optional hard cross-entropy term, without ever holding more than one chunk of logits.

    Per counted row (label != ignore_index; every row when labels is None)::

        loss_row = D_f(p || q) at temperature T  +  hard_loss_weight * CE(softmax(z), label)   (CE at T = 1)

    reduced like f_divergence_loss ("batchmean": sum over counted rows / their number, or /
    ``num_items_in_batch``, a number or a one-element tensor: one that is not a finite number > 0 raises
    ValueError for a CPU tensor in eager mode and gives a NaN loss on CUDA or under torch.compile, where checking
    it would need a host sync; "sum"). The convention is additive: the soft term is never scaled by
    1 - hard_loss_weight; for the convex mix (1 - a) soft + a CE pass ``hard_loss_weight = a / (1 - a)`` and
    multiply the result by (1 - a). Both terms come out of the same row pass of the f_divergence kernel.

    Args:
        student_hidden: (..., H) last hidden states of the student; student_weight: (V, H) its LM head
            (e.g. ``model.lm_head.weight``); student_bias: (V,) or None. One dtype (float32/float64/
            bfloat16/float16) and device.
        teacher_hidden: (..., H') with the same leading shape; teacher_weight: (V', H'); teacher_bias: (V',).
            H' may differ from H; |V - V'| <= ``max_vocab_pad`` (the shorter vocabulary is padded with -inf,
            as in f_divergence_loss). No gradient reaches the teacher (its logits are computed without
            autograd).
        labels: integer tensor of the leading shape; ignore_index rows count for nothing. Required when
            ``hard_loss_weight > 0``; labels outside [0, V) raise ValueError on CPU, and make the loss NaN on
            CUDA (no host sync to check).
        chunk_size: rows per chunk; None picks it from V, V' and the free memory (CPU: 128 MiB of fp32
            logits per side; CUDA: a quarter of the free memory, at most 2 GiB), all rows when they fit.

    Memory: one chunk of fp32 logits per side (the gradient is written over the student's), the outputs
    grad_hidden and grad_weight, and for 16-bit weights an fp32 (V, H) gradient accumulator (4 V H bytes,
    e.g. 2.1 GB for 128256 x 4096) and, on the CPU, fp32 copies of both weights (the CPU has no
    16-bit-in / fp32-out GEMM). Gradients (student_hidden, student_weight, student_bias) are computed in
    forward and saved, so memory for them is held from forward to backward; backward only scales them by
    grad_output. The gradient GEMMs of student_hidden / student_weight are skipped when it does not
    require grad (or grad mode is off). On CUDA with 16-bit weights, dL/dlogits (fp32 from the kernel) is
    rounded to the weight's dtype for the two gradient GEMMs (fp32 accumulation), as the 16-bit GEMMs of an
    unfused backward would; the logits themselves never are. chunk_size=None queries cudaMemGetInfo
    inside the op; under CUDA-graph capture pass chunk_size explicitly. Returns a
    0-dim float32 loss (float64 for float64 inputs). reduction="none" is not offered: a per-row
    grad_output cannot be applied to a gradient already summed over rows (grad_weight).

    ``vocab_parallel_group``: the LM heads are sharded over this torch.distributed group by vocabulary rows
    (column-parallel): each rank passes its rows of both weights (and biases) and the same hidden states and
    labels; the loss is the unsharded one on every rank, the weight gradients are each rank's own rows, and the
    gradient of student_hidden is this rank's partial g_shard W_shard (sum it over the group, as a column-parallel
    layer's input gradient is). Two O(rows) collectives per chunk; chunk_size=None means 1024 rows, the same on
    every rank. See docs/vocab_parallel.md.
    """
    if vocab_parallel_group is not None:
        return vocab_parallel.fused_linear_f_divergence(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            labels=labels,
            divergence=divergence,
            temperature=temperature,
            ignore_index=ignore_index,
            hard_loss_weight=hard_loss_weight,
            reduction=reduction,
            num_items_in_batch=num_items_in_batch,
            chunk_size=chunk_size,
            max_vocab_pad=max_vocab_pad,
            group=vocab_parallel_group,
        )
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
        max_vocab_pad,
    )
    check_positive("temperature", temperature)
    div = resolve(divergence).check_compute_dtype(student_hidden.dtype)
    leading = student_hidden.shape[:-1]
    rows = leading.numel()
    acc = acc_dtype(student_hidden.dtype)
    row_scale = row_weights(labels, ignore_index, reduction, num_items_in_batch, rows, student_hidden.device, acc)
    hidden_s = student_hidden.reshape(rows, student_hidden.shape[-1])
    hidden_t = teacher_hidden.detach().reshape(rows, teacher_hidden.shape[-1])
    hard = hard_loss_weight > 0
    flat_labels = labels.reshape(rows).long() if hard else None
    grad_on = torch.is_grad_enabled()
    hidden_grad = grad_on and bool(student_hidden.requires_grad)
    weight_grad = grad_on and bool(student_weight.requires_grad)
    loss, *_ = fused_op(
        hidden_s,
        student_weight,
        student_bias,
        hidden_t,
        teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(),
        row_scale,
        flat_labels,
        hard_loss_weight,
        div.kernel_id,
        div.kernel_param,
        1.0 / temperature,
        0 if chunk_size is None else chunk_size,
        hidden_grad,
        weight_grad,
    )
    return loss
