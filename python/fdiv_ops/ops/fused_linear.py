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
from .._backend import DTYPE_CODES, acc_dtype, num_threads, ptr
from .._validation import check_choice, check_float_tensor, check_positive, check_same
from ..divergences import Divergence, resolve
from ._chunking import chunk_logits, fp32_weight, mm_fp32, row_chunks
from .f_divergence import DEFAULT_MAX_VOCAB_PAD, _row_scale, _run

_REDUCTIONS = ("batchmean", "sum")
CPU_LOGITS_BUDGET = 256 << 20  # bytes of fp32 logits per side in one chunk on the CPU
CUDA_LOGITS_BUDGET = 2 << 30  # cap on the bytes of one chunk's logits (both sides) on CUDA


def auto_chunk_size(rows: int, student_vocab: int, teacher_vocab: int, device: torch.device) -> int:
    """Rows per chunk from the vocabulary sizes and the memory at hand; all rows when they fit.

    CPU: 256 MiB of fp32 logits per side. CUDA: the two fp32 logits chunks plus a 16-bit copy of the
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


def _check_labels_on_host(labels: torch.Tensor, row_scale: torch.Tensor, vocab: int) -> None:
    bad = ((labels < 0) | (labels >= vocab)) & (row_scale != 0)  # ignored rows have row_scale 0
    if bool(bad.any()):
        raise ValueError(
            f"labels must lie in [0, V) = [0, {vocab}) or equal ignore_index for the hard loss, "
            f"got {labels[bad][0].item()}"
        )


def _row_kernel_in_place(logits, teacher_logits, row_scale, row_loss, labels, hard_weight, kind, param, inv_t):
    """The f_divergence row kernel with grad = the student's logits: they become dL/dlogits in place."""
    rows, vocab_s = logits.shape
    _run(
        logits.device,
        lambda on_cuda, stream: _C.f_divergence(
            ptr(logits),
            ptr(teacher_logits),
            DTYPE_CODES[logits.dtype],
            rows,
            vocab_s,
            teacher_logits.shape[1],
            False,
            inv_t,
            kind,
            param,
            ptr(row_scale),
            ptr(row_loss),
            ptr(logits),
            ptr(labels),
            hard_weight if labels is not None else 0.0,
            num_threads(),
            on_cuda,
            stream,
        ),
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


@torch.library.custom_op("fdiv_ops::fused_linear_f_divergence", mutates_args=())
def _fused_op(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    row_scale: torch.Tensor,
    labels: torch.Tensor | None,
    hard_weight: float,
    kind: int,
    param: float,
    inv_temperature: float,
    chunk_size: int,
    hidden_grad: bool,
    weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = student_hidden.shape[0]
    vocab_s, vocab_t = student_weight.shape[0], teacher_weight.shape[0]
    acc = acc_dtype(student_hidden.dtype)
    if chunk_size <= 0:
        chunk_size = auto_chunk_size(rows, vocab_s, vocab_t, student_hidden.device)
    row_scale = row_scale.to(acc).contiguous()
    hard = labels is not None and hard_weight != 0.0
    labels = labels.contiguous() if hard else None
    if hard and labels.device.type == "cpu":  # free on the host (and opaque to torch.compile here)
        _check_labels_on_host(labels, row_scale, vocab_s)
    row_loss = student_hidden.new_empty(rows, dtype=acc)
    # a gradient nobody asked for (frozen weight, eval under no_grad) skips its GEMM: an empty tensor
    grad_hidden = torch.empty(
        student_hidden.shape if hidden_grad else (0,), dtype=student_hidden.dtype, device=student_hidden.device
    )
    # fp32 accumulators (the gradient's own tensor for fp32/fp64 weights): a 16-bit (V, H) weight costs one
    # extra V x H x 4 bytes here, plus the final cast
    grad_weight = torch.zeros(student_weight.shape if weight_grad else (0,), dtype=acc, device=student_weight.device)
    grad_bias = torch.zeros(vocab_s if student_bias is not None else 0, dtype=acc, device=student_weight.device)
    w_s, w_t = fp32_weight(student_weight), fp32_weight(teacher_weight)
    for start, end in row_chunks(rows, chunk_size):
        h = student_hidden[start:end]
        logits = chunk_logits(h, w_s, student_bias)  # (n, V) fp32 (fp64): becomes the gradient in place
        with torch.no_grad():
            teacher_logits = chunk_logits(teacher_hidden[start:end], w_t, teacher_bias).to(logits.dtype)
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
    loss = row_loss.sum()
    return loss, grad_hidden, grad_weight.to(student_weight.dtype), grad_bias.to(student_weight.dtype)


@_fused_op.register_fake
def _(
    student_hidden,
    student_weight,
    student_bias,
    teacher_hidden,
    teacher_weight,
    teacher_bias,
    row_scale,
    labels,
    hard_weight,
    kind,
    param,
    inv_temperature,
    chunk_size,
    hidden_grad,
    weight_grad,
):
    acc = acc_dtype(student_hidden.dtype)
    return (
        student_hidden.new_empty((), dtype=acc),
        torch.empty(
            student_hidden.shape if hidden_grad else (0,), dtype=student_hidden.dtype, device=student_hidden.device
        ),
        student_weight.new_empty(student_weight.shape if weight_grad else (0,)),
        student_weight.new_empty(student_weight.shape[0] if student_bias is not None else 0),
    )


def _setup_context(ctx, inputs, output):
    _, grad_hidden, grad_weight, grad_bias = output
    ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    ctx.mark_non_differentiable(grad_hidden, grad_weight, grad_bias)
    ctx.set_materialize_grads(False)
    ctx.has_bias = inputs[2] is not None
    ctx.hidden_grad, ctx.weight_grad = inputs[13], inputs[14]
    ctx.backward_done = False
    ctx.scale_in_place = grad_hidden.dtype != torch.float64


def _backward(ctx, grad_loss, *_unused):
    # The gradients were formed in forward; scale them by grad_output (a 0-dim device tensor) on the device.
    # Eager: in place, as f_divergence_loss does (no second copy of a V x H gradient), hence one backward per
    # forward. Traced, or float64 (gradcheck's repeated backward): out of place.
    nones = (None,) * 12
    if grad_loss is None:
        return (None, None, None, *nones)
    if ctx.backward_done and ctx.scale_in_place:
        raise RuntimeError(
            "fdiv_ops.fused_linear_f_divergence: backward ran twice through the same graph "
            "(retain_graph=True); the gradients are scaled in place, recompute the loss instead"
        )
    ctx.backward_done = True
    grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
    in_place = ctx.scale_in_place and type(grad_hidden) is torch.Tensor and not torch.compiler.is_compiling()

    def scale(grad):
        factor = grad_loss.to(grad.dtype)
        return grad.mul_(factor) if in_place else grad * factor

    return (
        scale(grad_hidden) if ctx.hidden_grad else None,
        scale(grad_weight) if ctx.weight_grad else None,
        scale(grad_bias) if ctx.has_bias else None,
        *nones,
    )


_fused_op.register_autograd(_backward, setup_context=_setup_context)


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
    if max_vocab_pad is not None and (
        isinstance(max_vocab_pad, bool) or not isinstance(max_vocab_pad, int) or max_vocab_pad < 0
    ):
        raise ValueError(f"max_vocab_pad must be an int >= 0 or None, got {max_vocab_pad!r}")
    vocab_s, vocab_t = student_weight.shape[0], teacher_weight.shape[0]
    if max_vocab_pad is not None and abs(vocab_s - vocab_t) > max_vocab_pad:
        raise ValueError(
            f"teacher_weight: vocabulary sizes differ by {abs(vocab_s - vocab_t)} (student {vocab_s}, teacher "
            f"{vocab_t}), more than max_vocab_pad = {max_vocab_pad}; the shorter side is padded with -inf, pass a "
            "larger max_vocab_pad (or None) if this mismatch is intended"
        )
    hard_loss_weight = check_positive("hard_loss_weight", hard_loss_weight, allow_zero=True)
    check_choice("reduction", reduction, _REDUCTIONS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if labels is not None:
        if (
            not isinstance(labels, torch.Tensor)
            or labels.dtype.is_floating_point
            or labels.dtype.is_complex
            or labels.dtype == torch.bool
        ):
            raise TypeError("labels must be an integer tensor with the leading shape of student_hidden")
        if labels.shape != leading:
            raise ValueError(
                f"labels must have the leading shape of student_hidden {tuple(leading)}, got {tuple(labels.shape)}"
            )
        check_same("labels", labels, "student_hidden", student_hidden, shape=False, dtype=False)
    elif hard_loss_weight > 0:
        raise ValueError("labels are required when hard_loss_weight > 0 (the cross-entropy needs targets)")
    if num_items_in_batch is not None and not isinstance(num_items_in_batch, torch.Tensor):
        check_positive("num_items_in_batch", num_items_in_batch)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 or None (automatic), got {chunk_size!r}")
    return hard_loss_weight


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
) -> torch.Tensor:
    r"""f_divergence_loss(student_hidden @ student_weight.T + b_s, teacher_hidden @ teacher_weight.T + b_t)
    plus an optional hard cross-entropy term, without ever holding more than one chunk of logits.

    Per counted row (label != ignore_index; every row when labels is None)::

        loss_row = D_f(p || q) at temperature T  +  hard_loss_weight * CE(softmax(z), label)   (CE at T = 1)

    reduced like f_divergence_loss ("batchmean": sum over counted rows / their number, or /
    ``num_items_in_batch``; "sum"). The convention is additive: the soft term is never scaled by
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
        chunk_size: rows per chunk; None picks it from V, V' and the free memory (CPU: 256 MiB of fp32
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
    """
    hard_loss_weight = _validate(
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
    temperature = check_positive("temperature", temperature)
    div = resolve(divergence)
    leading = student_hidden.shape[:-1]
    rows = leading.numel()
    acc = acc_dtype(student_hidden.dtype)
    row_scale = _row_scale(labels, ignore_index, reduction, num_items_in_batch, leading, student_hidden.device, acc)
    hidden_s = student_hidden.reshape(rows, student_hidden.shape[-1])
    hidden_t = teacher_hidden.detach().reshape(rows, teacher_hidden.shape[-1])
    hard = hard_loss_weight > 0
    flat_labels = labels.reshape(rows).long() if hard else None
    grad_on = torch.is_grad_enabled()
    hidden_grad = grad_on and bool(student_hidden.requires_grad)
    weight_grad = grad_on and bool(student_weight.requires_grad)
    loss, *_ = _fused_op(
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
