"""f_distill_loss: the f-distill / DMD2 distribution-matching generator loss (docs/math.md §2).

Two custom ops: ``fdiv_ops::f_distill_weights`` (B values: density ratio and h from the discriminator)
and ``fdiv_ops::f_distill`` (the fused pass over x, teacher_x0 and fake_x0 that writes the gradient in
forward). Between them the optional all-reduce makes the mean of h global over data-parallel ranks.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from .. import _C
from .._backend import DTYPE_CODES, acc_dtype, device_args, num_threads, ptr
from .._validation import check_choice, check_float_tensor, check_interval, check_positive, check_same
from ..divergences import Divergence, resolve

_REDUCTIONS = ("mean", "sum")


@torch.library.custom_op("fdiv_ops::f_distill_weights", mutates_args=())
def _weights_op(
    logits: torch.Tensor,
    ratio_divisor: torch.Tensor | None,
    double_precision: bool,
    logit_clamp: float,
    ratio_lo: float,
    ratio_hi: float,
    kind: int,
    param: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = logits.contiguous()
    batch, heads = logits.shape
    out_dtype = torch.float64 if double_precision else torch.float32
    ratio = logits.new_empty(batch, dtype=out_dtype)
    h = logits.new_empty(batch, dtype=out_dtype)
    stats = logits.new_empty(2, dtype=out_dtype)
    divisor = None if ratio_divisor is None else ratio_divisor.to(out_dtype).contiguous()
    on_cuda, stream = device_args(logits.device)
    with torch.cuda.device(logits.device) if on_cuda else contextlib.nullcontext():
        _C.f_distill_weights(
            ptr(logits),
            DTYPE_CODES[logits.dtype],
            batch,
            heads,
            ptr(divisor),
            logit_clamp,
            ratio_lo,
            ratio_hi,
            kind,
            param,
            DTYPE_CODES[out_dtype],
            ptr(ratio),
            ptr(h),
            ptr(stats),
            on_cuda,
            stream,
        )
    return ratio, h, stats


@_weights_op.register_fake
def _(logits, ratio_divisor, double_precision, logit_clamp, ratio_lo, ratio_hi, kind, param):
    dtype = torch.float64 if double_precision else torch.float32
    batch = logits.shape[0]
    return logits.new_empty(batch, dtype=dtype), logits.new_empty(batch, dtype=dtype), logits.new_empty(2, dtype=dtype)


def _f_distill_impl(
    x: torch.Tensor,
    teacher_x0: torch.Tensor,
    fake_x0: torch.Tensor,
    disc_logits: torch.Tensor | None,
    ratio_divisor: torch.Tensor | None,
    global_h_stats: torch.Tensor | None,
    kind: int,
    param: float,
    logit_clamp: float,
    ratio_lo: float,
    ratio_hi: float,
    normalize: bool,
    eps: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad, normalizer, h, ratio) in one call: the weights from disc_logits (if any), then the fused
    pass. global_h_stats ([sum h, count] all-reduced over ranks) replaces this batch's own when given."""
    batch = x.shape[0]
    dim = x.numel() // batch
    x, teacher_x0, fake_x0 = x.contiguous(), teacher_x0.contiguous(), fake_x0.contiguous()
    acc = acc_dtype(x.dtype)
    on_cuda, stream = device_args(x.device)
    h = h_stats = None
    ratio = x.new_empty(0, dtype=acc)
    with torch.cuda.device(x.device) if on_cuda else contextlib.nullcontext():
        if disc_logits is not None:
            logits = disc_logits.reshape(batch, -1).contiguous()
            divisor = None if ratio_divisor is None else ratio_divisor.to(acc).contiguous()
            ratio, h, h_stats = (x.new_empty(n, dtype=acc) for n in (batch, batch, 2))
            _C.f_distill_weights(
                ptr(logits),
                DTYPE_CODES[logits.dtype],
                batch,
                logits.shape[1],
                ptr(divisor),
                logit_clamp,
                ratio_lo,
                ratio_hi,
                kind,
                param,
                DTYPE_CODES[acc],
                ptr(ratio),
                ptr(h),
                ptr(h_stats),
                on_cuda,
                stream,
            )
            if global_h_stats is not None:
                h_stats = global_h_stats.to(acc).contiguous()
            if not normalize:
                h_stats = None
        grad = torch.empty_like(x)
        loss = x.new_empty((), dtype=acc)
        normalizer = x.new_empty(batch, dtype=acc)
        weight = x.new_empty(batch, dtype=acc)
        workspace = x.new_empty(_C.f_distill_workspace_elems(batch, dim, on_cuda), dtype=acc)
        scale = 1.0 / (batch * dim) if reduction == "mean" else 1.0
        _C.f_distill(
            ptr(x),
            ptr(teacher_x0),
            ptr(fake_x0),
            DTYPE_CODES[x.dtype],
            batch,
            dim,
            ptr(h),
            ptr(h_stats),
            eps,
            scale,
            ptr(grad),
            ptr(loss),
            ptr(normalizer),
            ptr(weight),
            ptr(workspace),
            num_threads(),
            on_cuda,
            stream,
        )
    return loss, grad, normalizer, weight, ratio


_f_distill_op = torch.library.custom_op("fdiv_ops::f_distill", mutates_args=())(_f_distill_impl)


@_f_distill_op.register_fake
def _(x, teacher_x0, fake_x0, disc_logits, ratio_divisor, global_h_stats, *args):
    acc = acc_dtype(x.dtype)
    batch = x.shape[0]
    return (
        x.new_empty((), dtype=acc),
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty(batch, dtype=acc),
        x.new_empty(batch, dtype=acc),
        x.new_empty(0 if disc_logits is None else batch, dtype=acc),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero (B, D) gradient for the statistics outputs
    ctx.backward_done = False


def _backward(ctx, grad_loss, *_unused_grads):
    # The gradient was written in forward; backward scales it in place on the device: no host sync and no
    # second (B, D) buffer. In-place means one backward per forward, so a second one is refused.
    if ctx.backward_done:
        raise RuntimeError(
            "fdiv_ops.f_distill_loss: backward ran twice through the same graph "
            "(retain_graph=True); the gradient is scaled in place, recompute the loss instead"
        )
    ctx.backward_done = True
    (grad,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 14
    # Traced (torch.compile, AOT autograd: tensors are functional/fake subclasses), the graph owns memory
    # planning and rejects mutating a saved output, so scale out of place there.
    eager = type(grad) is torch.Tensor and not torch.compiler.is_compiling()
    scaled = grad.mul_(grad_loss) if eager else grad * grad_loss
    return (scaled,) + (None,) * 13


_f_distill_op.register_autograd(_backward, setup_context=_setup_context)


class _FDistillEager(torch.autograd.Function):
    """The eager fast path: the custom op's own implementation, context and backward, without
    torch.library's dispatch and autograd layers (~100 us a call, measured: 37% of a 64x4x64x64 fp32
    forward+backward on the CPU). Traced calls (torch.compile, AOT autograd, fake tensors) take the
    registered op, which is what opcheck and torch.compile see."""

    @staticmethod
    def forward(ctx, *args):
        output = _f_distill_impl(*args)
        _setup_context(ctx, args, output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        return _backward(ctx, *grads)


def _call_f_distill(*args):
    traced = torch.compiler.is_compiling() or any(
        isinstance(a, torch.Tensor) and type(a) not in (torch.Tensor, torch.nn.Parameter) for a in args
    )
    return _f_distill_op(*args) if traced else _FDistillEager.apply(*args)


class FDistillResult(NamedTuple):
    """Everything one call computes, for logging (all but ``loss`` are detached)."""

    loss: torch.Tensor
    ratio: torch.Tensor | None  # r_b after clipping (and time-bin division); None without disc_logits
    h: torch.Tensor  # h_b after batch normalisation (ones without disc_logits)
    normalizer: torch.Tensor  # n_b = mean |x - teacher_x0| per sample


def _validate(x, teacher_x0, fake_x0, disc_logits, divergence, logit_clamp, ratio_clip, eps, reduction):
    check_float_tensor("x", x)
    check_float_tensor("teacher_x0", teacher_x0)
    check_float_tensor("fake_x0", fake_x0)
    check_same("teacher_x0", teacher_x0, "x", x)
    check_same("fake_x0", fake_x0, "x", x)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must have at least one element per sample, got shape {tuple(x.shape)}")
    div = resolve(divergence)
    if div.name == "total_variation":
        raise ValueError("divergence: total_variation has h = 0 and no f-distill gradient; choose another")
    if disc_logits is None:
        if div.name != "reverse_kl":
            raise ValueError(
                f"divergence {div} needs disc_logits (its weighting h depends on the density ratio); "
                "without disc_logits only reverse_kl (h = 1, DMD2) is allowed"
            )
    else:
        check_float_tensor("disc_logits", disc_logits)
        check_same("disc_logits", disc_logits, "x", x, shape=False, dtype=False)
        if disc_logits.dim() not in (1, 2) or disc_logits.shape[0] != x.shape[0] or disc_logits.numel() == 0:
            raise ValueError(
                f"disc_logits must have shape (B,) or (B, K) with B = {x.shape[0]} and K >= 1, "
                f"got {tuple(disc_logits.shape)}"
            )
    check_positive("logit_clamp", logit_clamp)
    lo, hi = check_interval("ratio_clip", ratio_clip)
    eps = check_positive("eps", eps)
    check_choice("reduction", reduction, _REDUCTIONS)
    return div, float(logit_clamp), lo, hi, eps


def compute_weights(
    disc_logits: torch.Tensor,
    div: Divergence,
    double_precision: bool,
    logit_clamp: float,
    lo: float,
    hi: float,
    ratio_divisor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_b, h_b, [sum h, B]) from the discriminator logits, in the fused kernel."""
    logits = disc_logits.reshape(disc_logits.shape[0], -1)
    return _weights_op(logits, ratio_divisor, double_precision, logit_clamp, lo, hi, div.kernel_id, div.kernel_param)


def f_distill(
    x: torch.Tensor,
    teacher_x0: torch.Tensor,
    fake_x0: torch.Tensor,
    disc_logits: torch.Tensor | None = None,
    *,
    divergence: str | Divergence = "reverse_kl",
    logit_clamp: float = 10.0,
    ratio_clip: tuple[float, float] = (0.1, 20.0),
    normalize: bool = True,
    eps: float = 1e-6,
    reduction: str = "mean",
    process_group=None,
    ratio_divisor: torch.Tensor | None = None,
) -> FDistillResult:
    """f_distill_loss with its per-sample statistics; see fdiv_ops.f_distill_loss."""
    div, logit_clamp, lo, hi, eps = _validate(
        x, teacher_x0, fake_x0, disc_logits, divergence, logit_clamp, ratio_clip, eps, reduction
    )
    global_h_stats = None
    if disc_logits is not None and normalize and process_group is not None:
        import torch.distributed as dist

        _, _, global_h_stats = compute_weights(
            disc_logits, div, x.dtype == torch.float64, logit_clamp, lo, hi, ratio_divisor
        )
        dist.all_reduce(global_h_stats, group=process_group)  # [sum h, count] over every rank
    loss, _, normalizer, weight, ratio = _call_f_distill(
        x,
        teacher_x0,
        fake_x0,
        disc_logits,
        ratio_divisor,
        global_h_stats,
        div.kernel_id,
        div.kernel_param,
        logit_clamp,
        lo,
        hi,
        normalize,
        eps,
        reduction,
    )
    return FDistillResult(loss, ratio if disc_logits is not None else None, weight, normalizer)


def f_distill_loss(
    x: torch.Tensor,
    teacher_x0: torch.Tensor,
    fake_x0: torch.Tensor,
    disc_logits: torch.Tensor | None = None,
    *,
    divergence: str | Divergence = "reverse_kl",
    logit_clamp: float = 10.0,
    ratio_clip: tuple[float, float] = (0.1, 20.0),
    normalize: bool = True,
    eps: float = 1e-6,
    reduction: str = "mean",
    process_group=None,
) -> torch.Tensor:
    r"""The f-distill generator loss (Xu, Nie, Vahdat 2025); reverse_kl without logits is DMD2.

    Per sample b with D elements (docs/math.md §2)::

        l_b = clamp(mean_k disc_logits[b, k], -logit_clamp, logit_clamp)
        r_b = clamp(exp(l_b), *ratio_clip)
        h_b = h(r_b) / (mean_batch h + 1e-6)          # normalize=True; the mean is global with process_group
        w_b = h_b / (mean_i |x_bi - teacher_x0_bi| + eps)
        g   = w_b (fake_x0 - teacher_x0)               # detached
        loss = 0.5 * mean(g^2)   ("mean")  or  0.5 * sum(g^2)  ("sum")

    The only gradient is to ``x``: g / (B D) for "mean", g for "sum" (the value and gradient of
    ``0.5 * mse(x, stopgrad(x - g))``). Nothing flows into the logits, the teacher or the fake network.

    Args:
        x: generator samples (B, ...), float32/float64/bfloat16/float16; any strides.
        teacher_x0, fake_x0: the teacher's and the fake score network's x0-predictions, same shape/dtype.
        disc_logits: discriminator logits (B,) or (B, K) (K heads are averaged); their sigmoid is the
            probability of "teacher", so the logit is log r. Without them only reverse_kl (h = 1) works.
        divergence: a name from ``fdiv_ops.DIVERGENCES`` or an object (``fdiv_ops.alpha(0.5)``);
            total_variation has h = 0 and is rejected.
        normalize: divide h by its batch mean (FastGen); ``eps`` guards the DMD normaliser (> 0).
        process_group: make the batch mean of h global over data-parallel ranks (one all-reduce of two
            numbers); None keeps it per rank.

    Returns the scalar loss, float32 for 16-bit inputs (accumulated in float32), else x's dtype.
    NaN or inf in a sample's inputs make that sample's gradient and the loss NaN/inf, as in the
    eager reference; finite inputs never produce NaN (eps > 0 keeps the normaliser positive).
    """
    return f_distill(
        x,
        teacher_x0,
        fake_x0,
        disc_logits,
        divergence=divergence,
        logit_clamp=logit_clamp,
        ratio_clip=ratio_clip,
        normalize=normalize,
        eps=eps,
        reduction=reduction,
        process_group=process_group,
    ).loss
