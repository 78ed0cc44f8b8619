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

import math
from typing import Literal, overload

import torch

from .. import _C
from .._backend import acc_dtype
from .._validation import check_bool, check_float_tensor, check_int, check_integer_tensor, check_positive, check_same
from . import vocab_parallel
from ._chunking import chunk_logits, fp32_weight, mm_fp32, row_chunks
from ._plumbing import Op, launch, refuse_double_backward, scalar_arg, tensor_arg


def _kernel_view(logits: torch.Tensor) -> torch.Tensor:
    """The logits as the kernels read them: (N, V) or (B, T, V) with a unit-stride vocabulary (any other strides);
    more leading dimensions are flattened (a copy only where they cannot be)."""
    if logits.dim() > 3:
        logits = logits.reshape(-1, logits.shape[-1])
    if logits.stride(-1) != 1 and logits.shape[-1] != 1:
        logits = logits.contiguous()
    return logits


def _inverse_temperature(op: str, temperature) -> float:
    t = scalar_arg(op, "temperature", temperature)
    if not (t > 0 and t < math.inf):  # the binding checks 1 / t again; this keeps 1 / 0 from raising first
        raise ValueError(f"fdiv_ops::{op}: temperature must be a finite number > 0, got {t!r}")
    return 1.0 / t


def _launch_forward(logits, labels, ignore_index, temperature, logprobs, entropy, stats) -> None:
    """The forward kernel over `logits` (any shape the kernels read), every per-row tensor flat."""
    view = _kernel_view(logits)
    launch(
        _C.sequence_logprobs,
        view.device,
        logits=view,
        labels=labels.reshape(-1).contiguous(),
        logprobs=logprobs.reshape(-1),
        entropy=None if entropy is None else entropy.reshape(-1),
        row_stats=stats,
        ignore_index=ignore_index,
        inv_temperature=_inverse_temperature("sequence_logprobs", temperature),
    )


def _launch_backward(
    logits, labels, stats, entropy, grad_logprobs, grad_entropy, grad_logits, ignore_index, temperature
):
    view = _kernel_view(logits)
    launch(
        _C.sequence_logprobs_backward,
        view.device,
        logits=view,
        labels=labels.reshape(-1).contiguous(),
        row_stats=stats,
        entropy=entropy,
        grad_logprobs=grad_logprobs,
        grad_entropy=grad_entropy,
        grad_logits=grad_logits.view(view.shape[:-1].numel(), view.shape[-1]),
        ignore_index=ignore_index,
        inv_temperature=_inverse_temperature("sequence_logprobs_backward", temperature),
    )


def _seq_outputs(logits, labels, return_entropy: bool):
    """(logprobs, entropy, row_stats), allocated alike by the implementation and the fake."""
    tensor_arg("sequence_logprobs", "logits", logits, ndim=range(2, 65))
    tensor_arg("sequence_logprobs", "labels", labels)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"fdiv_ops::sequence_logprobs: labels must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
            f"got {tuple(labels.shape)}"
        )
    acc = acc_dtype(logits.dtype)
    return (
        logits.new_empty(labels.shape, dtype=acc),
        logits.new_empty(labels.shape if return_entropy else (0,), dtype=acc),
        logits.new_empty((labels.numel(), 2), dtype=acc),
    )


def _seq(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, temperature: torch.Tensor, return_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logprobs, entropy, stats = _seq_outputs(logits, labels, return_entropy)
    _launch_forward(logits, labels, ignore_index, temperature, logprobs, entropy if return_entropy else None, stats)
    return logprobs, entropy, stats


def _seq_fake(logits, labels, ignore_index, temperature, return_entropy):
    return _seq_outputs(logits, labels, return_entropy)


def _seq_backward_impl(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stats: torch.Tensor,
    entropy: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    ignore_index: int,
    temperature: torch.Tensor,
) -> torch.Tensor:
    grad = _seq_backward_fake(logits, labels, stats, entropy, grad_logprobs, grad_entropy, ignore_index, temperature)
    for name, value in (("labels", labels), ("stats", stats), ("entropy", entropy)):
        tensor_arg("sequence_logprobs_backward", name, value)
    _launch_backward(
        logits,
        labels,
        stats.contiguous(),
        entropy.reshape(-1) if grad_entropy is not None else None,
        None if grad_logprobs is None else grad_logprobs.reshape(-1).contiguous(),
        None if grad_entropy is None else grad_entropy.reshape(-1).contiguous(),
        grad,
        ignore_index,
        temperature,
    )
    return grad


def _seq_backward_fake(logits, labels, stats, entropy, grad_logprobs, grad_entropy, ignore_index, temperature):
    tensor_arg("sequence_logprobs_backward", "logits", logits, ndim=range(2, 65))
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


seq_backward_op = Op("sequence_logprobs_backward", _seq_backward_impl, fake=_seq_backward_fake, scalars=(7,))


def _seq_setup(ctx, inputs, output):
    logits, labels, ignore_index, temperature, _ = inputs
    _, entropy, stats = output
    ctx.save_for_backward(logits, labels, stats, entropy)
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # an unused entropy sends None, not a zero tensor
    ctx.ignore_index, ctx.temperature = ignore_index, temperature


def _seq_backward(ctx, grad_logprobs, grad_entropy, _grad_stats):
    if grad_entropy is not None and grad_entropy.numel() == 0:
        grad_entropy = None  # the entropy was not asked for (traced graphs send an empty gradient for it)
    if grad_logprobs is None and grad_entropy is None:
        return None, None, None, None, None
    refuse_double_backward("sequence_logprobs", grad_logprobs if grad_logprobs is not None else grad_entropy)
    logits, labels, stats, entropy = ctx.saved_tensors
    acc = stats.dtype
    grad = seq_backward_op(
        logits,
        labels,
        stats,
        entropy,
        None if grad_logprobs is None else grad_logprobs.to(acc),
        None if grad_entropy is None else grad_entropy.to(acc),
        ctx.ignore_index,
        ctx.temperature,
    )
    return grad, None, None, None, None


seq_op = Op("sequence_logprobs", _seq, fake=_seq_fake, setup_context=_seq_setup, backward=_seq_backward, scalars=(3,))


def _check_labels(labels: object, shape: torch.Size, device: torch.device, what: str) -> torch.Tensor:
    check_integer_tensor("labels", labels)
    if labels.shape != shape:
        raise ValueError(f"labels must have shape {what} = {tuple(shape)}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels must be on the device of the logits ({device}), got {labels.device}")
    return labels.long()


def _check_common(ignore_index: object, temperature: object, return_entropy: object) -> None:
    check_int("ignore_index", ignore_index)
    check_positive("temperature", temperature)
    check_bool("return_entropy", return_entropy)


@overload
def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = ...,
    temperature: float = ...,
    return_entropy: Literal[False] = ...,
    vocab_parallel_group: object | None = ...,
) -> torch.Tensor: ...
@overload
def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = ...,
    temperature: float = ...,
    return_entropy: Literal[True],
    vocab_parallel_group: object | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...
def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
    vocab_parallel_group: object | None = None,
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
    host sync, those positions give NaN. A row of all -inf logits gives -inf and no gradient. Double backward
    (create_graph=True) raises RuntimeError: the kernels form no second derivative.

    ``vocab_parallel_group``: a torch.distributed group over which the vocabulary is sharded: logits is this
    rank's contiguous shard, labels the global ids (the same on every rank); log-probs and entropy are the
    unsharded ones on every rank, the gradient that of the shard (two O(rows) collectives in forward, none in
    backward; non-contiguous logits are copied). See docs/vocab_parallel.md.
    """
    if vocab_parallel_group is not None:
        return vocab_parallel.sequence_logprobs(
            logits,
            labels,
            ignore_index=ignore_index,
            temperature=temperature,
            return_entropy=return_entropy,
            group=vocab_parallel_group,
        )
    check_float_tensor("logits", logits)
    if logits.dim() < 2 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    labels = _check_labels(labels, logits.shape[:-1], logits.device, "logits.shape[:-1]")
    _check_common(ignore_index, temperature, return_entropy)
    logprobs, entropy, _ = seq_op(logits, labels, ignore_index, temperature, return_entropy)
    return (logprobs, entropy) if return_entropy else logprobs


# ---------------------------------------------------------------------------------------------------
# From hidden states: logits = hidden @ weight.T (+ bias), one chunk of rows at a time.


def _linear_outputs(hidden, weight, bias, labels, return_entropy: bool):
    """(logprobs, entropy, row_stats), allocated alike by the implementation and the fake."""
    op = "fused_linear_sequence_logprobs"
    tensor_arg(op, "hidden", hidden, ndim=2)
    tensor_arg(op, "weight", weight, ndim=2)
    tensor_arg(op, "labels", labels, ndim=1)
    rows = hidden.shape[0]
    if labels.shape[0] != rows or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"fdiv_ops::{op}: expected hidden (rows, H), weight (V, H) and labels (rows,), got "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)} and {tuple(labels.shape)}"
        )
    if bias is not None and tensor_arg(op, "bias", bias).shape != weight.shape[:1]:
        raise ValueError(f"fdiv_ops::{op}: bias must have shape (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    acc = acc_dtype(hidden.dtype)
    return (
        hidden.new_empty(rows, dtype=acc),
        hidden.new_empty(rows if return_entropy else 0, dtype=acc),
        hidden.new_empty((rows, 2), dtype=acc),
    )


def _linear(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    temperature: torch.Tensor,
    return_entropy: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logprobs, entropy, stats = _linear_outputs(hidden, weight, bias, labels, return_entropy)
    labels = labels.contiguous()
    w = fp32_weight(weight)
    for start, end in row_chunks(hidden.shape[0], max(1, chunk_size)):
        _launch_forward(
            chunk_logits(hidden[start:end], w, bias),
            labels[start:end],
            ignore_index,
            temperature,
            logprobs[start:end],
            entropy[start:end] if return_entropy else None,
            stats[start:end],
        )
    return logprobs, entropy, stats


def _linear_fake(hidden, weight, bias, labels, ignore_index, temperature, return_entropy, chunk_size):
    return _linear_outputs(hidden, weight, bias, labels, return_entropy)


def _linear_backward_impl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    stats: torch.Tensor,
    entropy: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    ignore_index: int,
    temperature: torch.Tensor,
    chunk_size: int,
    weight_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _linear_outputs(hidden, weight, bias, labels, False)
    labels = labels.contiguous()
    acc = acc_dtype(hidden.dtype)
    grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    # accumulated over chunks; skipped (an empty tensor) for a frozen weight, saving one GEMM per chunk
    grad_weight = torch.zeros(weight.shape if weight_grad else (0,), dtype=acc, device=weight.device)
    grad_bias = torch.zeros(weight.shape[0] if bias is not None else 0, dtype=acc, device=weight.device)
    w = fp32_weight(weight)
    for start, end in row_chunks(hidden.shape[0], max(1, chunk_size)):
        h = hidden[start:end]
        logits = chunk_logits(h, w, bias)  # recomputed: O(chunk x V) memory
        grad_logits = torch.empty_like(logits)
        _launch_backward(
            logits,
            labels[start:end],
            stats[start:end].contiguous(),
            None if grad_entropy is None else entropy[start:end],
            None if grad_logprobs is None else grad_logprobs[start:end],
            None if grad_entropy is None else grad_entropy[start:end],
            grad_logits,
            ignore_index,
            temperature,
        )
        g = grad_logits if w.dtype == grad_logits.dtype else grad_logits.to(w.dtype)
        grad_hidden[start:end] = mm_fp32(g, w)
        if weight_grad:
            grad_weight += mm_fp32(g.t(), h)
        if bias is not None:
            grad_bias += grad_logits.sum(0)
    return grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


def _linear_backward_fake(hidden, weight, bias, labels, stats, entropy, grad_logprobs, grad_entropy, *args):
    weight_grad = args[-1]
    _linear_outputs(hidden, weight, bias, labels, False)
    return (
        torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device),
        torch.empty(weight.shape if weight_grad else (0,), dtype=weight.dtype, device=weight.device),
        weight.new_empty(weight.shape[0] if bias is not None else 0),
    )


linear_backward_op = Op(
    "fused_linear_sequence_logprobs_backward", _linear_backward_impl, fake=_linear_backward_fake, scalars=(9,)
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
    if grad_entropy is not None and grad_entropy.numel() == 0:
        grad_entropy = None  # the entropy was not asked for (traced graphs send an empty gradient for it)
    if grad_logprobs is None and grad_entropy is None:
        return (None,) * 8
    refuse_double_backward(
        "fused_linear_sequence_logprobs", grad_logprobs if grad_logprobs is not None else grad_entropy
    )
    hidden, weight, bias, labels, stats, entropy = ctx.saved_tensors
    weight_grad = bool(ctx.needs_input_grad[1])
    acc = stats.dtype
    gh, gw, gb = linear_backward_op(
        hidden,
        weight,
        bias,
        labels,
        stats,
        entropy,
        None if grad_logprobs is None else grad_logprobs.to(acc).contiguous(),
        None if grad_entropy is None else grad_entropy.to(acc).contiguous(),
        ctx.ignore_index,
        ctx.temperature,
        ctx.chunk_size,
        weight_grad,
    )
    return gh, (gw if weight_grad else None), (gb if ctx.has_bias else None), None, None, None, None, None


linear_op = Op(
    "fused_linear_sequence_logprobs",
    _linear,
    fake=_linear_fake,
    setup_context=_linear_setup,
    backward=_linear_backward,
    scalars=(5,),
)


@overload
def fused_linear_sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = ...,
    ignore_index: int = ...,
    temperature: float = ...,
    return_entropy: Literal[False] = ...,
    chunk_size: int = ...,
    vocab_parallel_group: object | None = ...,
) -> torch.Tensor: ...
@overload
def fused_linear_sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = ...,
    ignore_index: int = ...,
    temperature: float = ...,
    return_entropy: Literal[True],
    chunk_size: int = ...,
    vocab_parallel_group: object | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...
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
    vocab_parallel_group: object | None = None,
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

    ``vocab_parallel_group``: weight (and bias) are this rank's rows of an LM head sharded by vocabulary over this
    torch.distributed group; the result is the unsharded one on every rank, the weight gradient this rank's rows,
    and the gradient of hidden this rank's partial g_shard W_shard (sum it over the group, as a column-parallel
    layer's input gradient is). Two O(rows) collectives per chunk in forward (every rank must pass the same
    chunk_size). See docs/vocab_parallel.md.
    """
    if vocab_parallel_group is not None:
        return vocab_parallel.fused_linear_sequence_logprobs(
            hidden,
            weight,
            labels,
            bias=bias,
            ignore_index=ignore_index,
            temperature=temperature,
            return_entropy=return_entropy,
            chunk_size=chunk_size,
            group=vocab_parallel_group,
        )
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
    _check_common(ignore_index, temperature, return_entropy)
    check_int("chunk_size", chunk_size, minimum=1)
    lead = hidden.shape[:-1]
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    if not hidden2d.is_contiguous():
        hidden2d = hidden2d.contiguous()
    logprobs, entropy, _ = linear_op(
        hidden2d, weight, bias, labels.reshape(-1), ignore_index, temperature, return_entropy, chunk_size
    )
    logprobs = logprobs.reshape(lead)
    return (logprobs, entropy.reshape(lead)) if return_entropy else logprobs
