"""sequence_logprobs and fused_linear_sequence_logprobs: per-token log pi(label) without a log-softmax tensor.

Four custom ops: ``fdiv_ops::sequence_logprobs`` (+ its backward op, which re-reads the logits and writes
dL/dlogits directly: the only rows x V tensor) and ``fdiv_ops::fused_linear_sequence_logprobs`` (+ backward),
which computes the logits chunk by chunk from hidden states and recomputes them in backward, so no
rows x V tensor exists at all beyond one chunk. Kernels: csrc/{cpu,cuda}/sequence_logprobs.*.

Labels outside [0, V) other than ignore_index: on CPU a ValueError (the labels are on the host, checking is
free); on CUDA checking would need a host sync, so the kernel writes NaN log-probabilities for those rows
instead (and no gradient), which any loss built on them turns into a visible NaN.
"""

from __future__ import annotations

import contextlib

import torch

from .. import _C
from .._backend import DTYPE_CODES, acc_dtype, device_args, num_threads, ptr
from .._validation import check_float_tensor, check_positive, check_same
from ._chunking import chunk_logits, fp32_weight, mm_fp32, row_chunks


def _device_ctx(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _layout(logits: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
    """(logits, outer, inner, outer_stride, inner_stride): rows addressed as (B, T) with strides."""
    vocab = logits.shape[-1]
    if logits.dim() > 3:
        logits = logits.reshape(-1, vocab)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if logits.dim() == 2:
        return logits, 1, logits.shape[0], 0, logits.stride(0)
    return logits, logits.shape[0], logits.shape[1], logits.stride(0), logits.stride(1)


def _check_labels_on_host(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    if labels.device.type != "cpu":
        return  # documented: NaN log-probs on CUDA instead of a host sync
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if bad.any():
        value = labels[bad][0].item()
        raise ValueError(
            f"labels must lie in [0, V) = [0, {vocab}) or equal ignore_index ({ignore_index}), got {value}"
        )


def _kernel_args(logits, labels, ignore_index, temperature):
    view, outer, inner, so, si = _layout(logits)
    return (
        ptr(view),
        DTYPE_CODES[view.dtype],
        outer,
        inner,
        view.shape[-1],
        so,
        si,
        ptr(labels),
        ignore_index,
        1.0 / temperature,
    ), view


@torch.library.custom_op("fdiv_ops::sequence_logprobs", mutates_args=())
def _seq_op(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, temperature: float, return_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels_flat = labels.reshape(-1).contiguous()
    _check_labels_on_host(labels_flat, logits.shape[-1], ignore_index)
    acc = acc_dtype(logits.dtype)
    rows = labels_flat.numel()
    logprobs = logits.new_empty(labels.shape, dtype=acc)
    entropy = logits.new_empty(labels.shape if return_entropy else (0,), dtype=acc)
    stats = logits.new_empty((rows, 2), dtype=acc)
    args, _keep = _kernel_args(logits, labels_flat, ignore_index, temperature)
    on_cuda, stream = device_args(logits.device)
    with _device_ctx(logits.device):
        _C.seq_logprobs(
            *args, ptr(logprobs), ptr(entropy) if return_entropy else 0, ptr(stats), num_threads(), on_cuda, stream
        )
    return logprobs, entropy, stats


@_seq_op.register_fake
def _(logits, labels, ignore_index, temperature, return_entropy):
    acc = acc_dtype(logits.dtype)
    return (
        logits.new_empty(labels.shape, dtype=acc),
        logits.new_empty(labels.shape if return_entropy else (0,), dtype=acc),
        logits.new_empty((labels.numel(), 2), dtype=acc),
    )


@torch.library.custom_op("fdiv_ops::sequence_logprobs_backward", mutates_args=())
def _seq_backward_op(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stats: torch.Tensor,
    entropy: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    ignore_index: int,
    temperature: float,
) -> torch.Tensor:
    acc = acc_dtype(logits.dtype)
    labels_flat = labels.reshape(-1).contiguous()
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    g_lp = None if grad_logprobs is None else grad_logprobs.to(acc).contiguous()
    g_ent = None if grad_entropy is None else grad_entropy.to(acc).contiguous()
    ent = entropy.contiguous() if g_ent is not None else None
    args, _keep = _kernel_args(logits, labels_flat, ignore_index, temperature)
    on_cuda, stream = device_args(logits.device)
    with _device_ctx(logits.device):
        _C.seq_logprobs_backward(
            *args, ptr(stats.contiguous()), ptr(ent), ptr(g_lp), ptr(g_ent), ptr(grad), num_threads(), on_cuda, stream
        )
    return grad


@_seq_backward_op.register_fake
def _(logits, labels, stats, entropy, grad_logprobs, grad_entropy, ignore_index, temperature):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _seq_setup(ctx, inputs, output):
    logits, labels, ignore_index, temperature, _ = inputs
    _, entropy, stats = output
    ctx.save_for_backward(logits, labels, stats, entropy)
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # an unused entropy sends None, not a zero tensor
    ctx.ignore_index, ctx.temperature = ignore_index, temperature


def _seq_backward(ctx, grad_logprobs, grad_entropy, _grad_stats):
    if grad_logprobs is None and grad_entropy is None:
        return None, None, None, None, None
    logits, labels, stats, entropy = ctx.saved_tensors
    grad = _seq_backward_op(
        logits, labels, stats, entropy, grad_logprobs, grad_entropy, ctx.ignore_index, ctx.temperature
    )
    return grad, None, None, None, None


_seq_op.register_autograd(_seq_backward, setup_context=_seq_setup)


def _check_labels(labels: object, shape: torch.Size, device: torch.device, what: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != shape:
        raise ValueError(f"labels must have shape {what} = {tuple(shape)}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels must be on the device of the logits ({device}), got {labels.device}")
    return labels.long()


def _check_common(ignore_index: object, temperature: object) -> tuple[int, float]:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return ignore_index, check_positive("temperature", temperature)


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Per-token log pi(label) = log_softmax(logits / T)[label], fused: no (..., V) log-softmax is built.

    Args:
        logits: (B, T, V) or (N, V), float32/float64/bfloat16/float16. Any strides with a unit-stride
            vocabulary (shifted views such as ``logits[:, :-1]`` are read in place).
        labels: integer tensor of shape logits.shape[:-1]; ``ignore_index`` marks positions to skip.
        temperature: T > 0; the gradient carries the 1/T.
        return_entropy: also return the per-token entropy of softmax(logits / T), differentiable.

    Returns log-probs (and entropy) of shape logits.shape[:-1], float32 for 16-bit logits (accumulated in
    float32) else the logits' dtype; 0 at ignored positions (no gradient flows there). Sum over the last dim
    for log pi(x) of a sequence. Backward writes d/dlogits in the logits' dtype, the row re-read once.
    Labels outside [0, V) (other than ignore_index) raise ValueError on CPU; on CUDA, where checking needs a
    host sync, those positions give NaN. A row of all -inf logits gives -inf and no gradient.
    """
    check_float_tensor("logits", logits)
    if logits.dim() < 2 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    labels = _check_labels(labels, logits.shape[:-1], logits.device, "logits.shape[:-1]")
    ignore_index, temperature = _check_common(ignore_index, temperature)
    logprobs, entropy, _ = _seq_op(logits, labels, ignore_index, temperature, bool(return_entropy))
    return (logprobs, entropy) if return_entropy else logprobs


# ---------------------------------------------------------------------------------------------------
# From hidden states: logits = hidden @ weight.T (+ bias), one chunk of rows at a time.


def _linear_kernel_forward(logits_chunk, labels_chunk, ignore_index, temperature, logprobs, entropy, stats):
    args, _keep = _kernel_args(logits_chunk, labels_chunk, ignore_index, temperature)
    on_cuda, stream = device_args(logits_chunk.device)
    with _device_ctx(logits_chunk.device):
        _C.seq_logprobs(*args, ptr(logprobs), ptr(entropy), ptr(stats), num_threads(), on_cuda, stream)


@torch.library.custom_op("fdiv_ops::fused_linear_sequence_logprobs", mutates_args=())
def _linear_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    temperature: float,
    return_entropy: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = labels.contiguous()
    _check_labels_on_host(labels, weight.shape[0], ignore_index)
    rows = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    logprobs = hidden.new_empty(rows, dtype=acc)
    entropy = hidden.new_empty(rows if return_entropy else 0, dtype=acc)
    stats = hidden.new_empty((rows, 2), dtype=acc)
    w = fp32_weight(weight)
    for start, end in row_chunks(rows, chunk_size):
        logits = chunk_logits(hidden[start:end], w, bias)
        _linear_kernel_forward(
            logits,
            labels[start:end],
            ignore_index,
            temperature,
            logprobs[start:end],
            entropy[start:end] if return_entropy else None,
            stats[start:end],
        )
    return logprobs, entropy, stats


@_linear_op.register_fake
def _(hidden, weight, bias, labels, ignore_index, temperature, return_entropy, chunk_size):
    acc = acc_dtype(hidden.dtype)
    rows = hidden.shape[0]
    return (
        hidden.new_empty(rows, dtype=acc),
        hidden.new_empty(rows if return_entropy else 0, dtype=acc),
        hidden.new_empty((rows, 2), dtype=acc),
    )


@torch.library.custom_op("fdiv_ops::fused_linear_sequence_logprobs_backward", mutates_args=())
def _linear_backward_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    stats: torch.Tensor,
    entropy: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    ignore_index: int,
    temperature: float,
    chunk_size: int,
    weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = labels.contiguous()
    rows = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    g_lp = None if grad_logprobs is None else grad_logprobs.to(acc).contiguous()
    g_ent = None if grad_entropy is None else grad_entropy.to(acc).contiguous()
    ent = entropy.contiguous() if g_ent is not None else None
    grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    # accumulated over chunks; skipped (an empty tensor) for a frozen weight, saving one GEMM per chunk
    grad_weight = torch.zeros(weight.shape if weight_grad else (0,), dtype=acc, device=weight.device)
    grad_bias = torch.zeros(weight.shape[0] if bias is not None else 0, dtype=acc, device=weight.device)
    w = fp32_weight(weight)
    on_cuda, stream = device_args(hidden.device)
    for start, end in row_chunks(rows, chunk_size):
        h = hidden[start:end]
        logits = chunk_logits(h, w, bias)  # recomputed: O(chunk x V) memory
        grad_logits = torch.empty_like(logits)
        args, _keep = _kernel_args(logits, labels[start:end], ignore_index, temperature)
        with _device_ctx(hidden.device):
            _C.seq_logprobs_backward(
                *args,
                ptr(stats[start:end].contiguous()),
                ptr(None if ent is None else ent[start:end]),
                ptr(None if g_lp is None else g_lp[start:end]),
                ptr(None if g_ent is None else g_ent[start:end]),
                ptr(grad_logits),
                num_threads(),
                on_cuda,
                stream,
            )
        g = grad_logits if w.dtype == grad_logits.dtype else grad_logits.to(w.dtype)
        grad_hidden[start:end] = mm_fp32(g, w)
        if weight_grad:
            grad_weight += mm_fp32(g.t(), h)
        if bias is not None:
            grad_bias += grad_logits.sum(0)
    return grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


@_linear_backward_op.register_fake
def _(
    hidden,
    weight,
    bias,
    labels,
    stats,
    entropy,
    grad_logprobs,
    grad_entropy,
    ignore_index,
    temperature,
    chunk_size,
    weight_grad,
):
    return (
        torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device),
        torch.empty(weight.shape if weight_grad else (0,), dtype=weight.dtype, device=weight.device),
        weight.new_empty(weight.shape[0] if bias is not None else 0),
    )


def _linear_setup(ctx, inputs, output):
    hidden, weight, bias, labels, ignore_index, temperature, _, chunk_size = inputs
    _, entropy, stats = output
    ctx.save_for_backward(hidden, weight, bias, labels, stats, entropy)
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)
    ctx.ignore_index, ctx.temperature, ctx.chunk_size = ignore_index, temperature, chunk_size
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad_logprobs, grad_entropy, _grad_stats):
    if grad_logprobs is None and grad_entropy is None:
        return (None,) * 8
    hidden, weight, bias, labels, stats, entropy = ctx.saved_tensors
    weight_grad = bool(ctx.needs_input_grad[1])
    gh, gw, gb = _linear_backward_op(
        hidden,
        weight,
        bias,
        labels,
        stats,
        entropy,
        grad_logprobs,
        grad_entropy,
        ctx.ignore_index,
        ctx.temperature,
        ctx.chunk_size,
        weight_grad,
    )
    return gh, (gw if weight_grad else None), (gb if ctx.has_bias else None), None, None, None, None, None


_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


def fused_linear_sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
    chunk_size: int = 1024,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""sequence_logprobs(hidden @ weight.T + bias, labels) without materialising the logits.

    Rows are processed ``chunk_size`` at a time: each chunk's logits are computed in fp32 (16-bit GEMMs
    accumulate into fp32; on CPU the weight is upcast once per call), run through the fused kernel and
    dropped; backward recomputes them and forms grad_hidden = g W and grad_weight = sum g^T h chunk by
    chunk, so peak memory is O(chunk_size x V) (plus an fp32 V x H gradient accumulator for 16-bit weights).

    Args:
        hidden: (B, T, H) or (N, H) hidden states; weight: (V, H) (the LM head); bias: (V,) or None; all of
            one floating dtype and device. labels: integer, shape hidden.shape[:-1].
        chunk_size: rows per chunk (>= 1).

    Returns what sequence_logprobs returns for the same logits.
    """
    check_float_tensor("hidden", hidden)
    check_float_tensor("weight", weight)
    check_same("weight", weight, "hidden", hidden, shape=False)
    if hidden.dim() < 2:
        raise ValueError(f"hidden must have shape (..., H), got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"weight must have shape (V, H) with H = {hidden.shape[-1]} and V >= 1, got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_float_tensor("bias", bias)
        check_same("bias", bias, "weight", weight, shape=False)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    labels = _check_labels(labels, hidden.shape[:-1], hidden.device, "hidden.shape[:-1]")
    ignore_index, temperature = _check_common(ignore_index, temperature)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    lead = hidden.shape[:-1]
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    if not hidden2d.is_contiguous():
        hidden2d = hidden2d.contiguous()
    logprobs, entropy, _ = _linear_op(
        hidden2d, weight, bias, labels.reshape(-1), ignore_index, temperature, bool(return_entropy), chunk_size
    )
    logprobs = logprobs.reshape(lead)
    return (logprobs, entropy.reshape(lead)) if return_entropy else logprobs
