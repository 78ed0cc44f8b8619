"""Vocabulary-parallel sequence_logprobs and fused_linear_sequence_logprobs (docs/vocab_parallel.md).

Forward: phase 1 (per-row max, sum of exponentials and, for the entropy, their moment) gathered with the shard sizes
and a label fingerprint (collective 1), then the label's logit from the rank whose shard holds it, summed
(collective 2: a rank learns its vocabulary offset only from the gathered sizes). Backward is local (no collective):
dL/dz_j = (1/T)[g (1[j = y] - p_j) - g_H p_j (log p_j + H)] from the saved global LSE and entropy.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .. import _C
from .._backend import acc_dtype
from ._chunking import chunk_logits, fp32_weight, mm_fp32, row_chunks
from ._plumbing import Op, launch, scalar_arg, tensor_arg
from ._vp_common import _META, _fingerprint, _gather, _group, _labels_check, _raise_or_poison, _range_check, group_name

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
