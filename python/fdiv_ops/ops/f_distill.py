"""f_distill_loss: the f-distill / DMD2 distribution-matching generator loss (docs/math.md §2).

Two custom ops: ``fdiv_ops::f_distill_weights`` (B values: density ratio and h from the discriminator)
and ``fdiv_ops::f_distill`` (the fused pass over x, teacher_x0 and fake_x0 that writes the gradient in
forward). Between them the optional all-reduce makes the mean of h global over data-parallel ranks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _C
from .._backend import acc_dtype
from .._validation import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_interval,
    check_positive,
    check_process_group,
    check_same,
)
from ..divergences import Divergence, resolve
from ._plumbing import Op, launch, saved_gradient, scalar_arg, tensor_arg

REDUCTIONS = ("mean", "sum", "none")


def _weights_outputs(logits, double_precision: bool):
    tensor_arg("f_distill_weights", "logits", logits, ndim=2)
    dtype = torch.float64 if double_precision else torch.float32
    batch = logits.shape[0]
    return logits.new_empty(batch, dtype=dtype), logits.new_empty(batch, dtype=dtype), logits.new_empty(2, dtype=dtype)


def _weights(
    logits: torch.Tensor,
    ratio_divisor: torch.Tensor | None,
    double_precision: bool,
    logit_clamp: torch.Tensor,
    ratio_lo: torch.Tensor,
    ratio_hi: torch.Tensor,
    kind: int,
    param: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ratio, h, stats = _weights_outputs(logits, double_precision)
    op = "f_distill_weights"
    launch(
        _C.f_distill_weights,
        logits.device,
        logits=logits.contiguous(),
        ratio_divisor=ratio_divisor,
        ratio=ratio,
        h=h,
        h_stats=stats,
        kind=kind,
        param=param,
        logit_clamp=scalar_arg(op, "logit_clamp", logit_clamp),
        ratio_lo=scalar_arg(op, "ratio_lo", ratio_lo),
        ratio_hi=scalar_arg(op, "ratio_hi", ratio_hi),
    )
    return ratio, h, stats


def _weights_fake(logits, ratio_divisor, double_precision, logit_clamp, ratio_lo, ratio_hi, kind, param):
    return _weights_outputs(logits, double_precision)


# (r_b, h_b, [sum h, B]) from the discriminator logits: no gradient flows through them.
weights_op = Op("f_distill_weights", _weights, fake=_weights_fake, scalars=(3, 4, 5))


def _outputs(x, disc_logits, reduction):
    """(loss, grad, normalizer, h, ratio), allocated alike by the implementation and the fake."""
    tensor_arg("f_distill", "x", x, ndim=range(1, 65))
    if reduction not in REDUCTIONS:
        raise ValueError(f"fdiv_ops::f_distill: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    acc = acc_dtype(x.dtype)
    batch = x.shape[0]
    if disc_logits is not None:
        tensor_arg("f_distill", "disc_logits", disc_logits, ndim=(1, 2))
        if disc_logits.shape[0] != batch:
            raise ValueError(
                f"fdiv_ops::f_distill: disc_logits must have shape (B,) or (B, K) with B = {batch}, "
                f"got {tuple(disc_logits.shape)}"
            )
    return (
        x.new_empty(batch if reduction == "none" else (), dtype=acc),
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty(batch, dtype=acc),
        x.new_empty(batch, dtype=acc),
        x.new_empty(0 if disc_logits is None else batch, dtype=acc),
    )


def _f_distill(
    x: torch.Tensor,
    teacher_x0: torch.Tensor,
    fake_x0: torch.Tensor,
    disc_logits: torch.Tensor | None,
    ratio_divisor: torch.Tensor | None,
    global_h_stats: torch.Tensor | None,
    kind: int,
    param: float,
    logit_clamp: torch.Tensor,
    ratio_lo: torch.Tensor,
    ratio_hi: torch.Tensor,
    normalize: bool,
    eps: torch.Tensor,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad, normalizer, h, ratio) in one call: the weights from disc_logits (if any), then the fused
    pass. global_h_stats ([sum h, count] all-reduced over ranks) replaces this batch's own when given. The loss
    is 0-dim, or (B,) per-sample losses for reduction="none" (each 0.5 * mean g_b^2 over its D elements)."""
    loss, grad, normalizer, weight, ratio = _outputs(x, disc_logits, reduction)
    tensor_arg("f_distill", "teacher_x0", teacher_x0)
    tensor_arg("f_distill", "fake_x0", fake_x0)
    batch = x.shape[0]
    dim = x.numel() // max(batch, 1)
    acc = loss.dtype
    h = h_stats = None
    if disc_logits is not None:
        h, h_stats = x.new_empty(batch, dtype=acc), x.new_empty(2, dtype=acc)
        launch(
            _C.f_distill_weights,
            x.device,
            logits=(disc_logits if disc_logits.dim() == 2 else disc_logits[:, None]).contiguous(),
            ratio_divisor=ratio_divisor,
            ratio=ratio,
            h=h,
            h_stats=h_stats,
            kind=kind,
            param=param,
            logit_clamp=scalar_arg("f_distill", "logit_clamp", logit_clamp),
            ratio_lo=scalar_arg("f_distill", "ratio_lo", ratio_lo),
            ratio_hi=scalar_arg("f_distill", "ratio_hi", ratio_hi),
        )
        if global_h_stats is not None:
            h_stats = global_h_stats
        if not normalize:
            h_stats = None
    on_cuda = x.device.type == "cuda"
    per_sample = reduction == "none"
    # "mean": 1 / (B D); "none": 1 / D (each sample's mean, so that the mean of the B losses is the "mean" loss)
    scale = {"mean": 1.0 / (batch * dim), "none": 1.0 / dim, "sum": 1.0}[reduction] if batch * dim > 0 else 1.0
    launch(
        _C.f_distill,
        x.device,
        x=x.contiguous(),
        teacher_x0=teacher_x0.contiguous(),
        fake_x0=fake_x0.contiguous(),
        h=h,
        h_stats=h_stats,
        grad=grad,
        loss=x.new_empty((), dtype=acc) if per_sample else loss,  # the kernel always writes the total
        sample_loss=loss if per_sample else None,
        normalizer=normalizer,
        weight=weight,
        workspace=x.new_empty(_C.f_distill_workspace_elems(batch, dim, on_cuda), dtype=acc),
        eps=scalar_arg("f_distill", "eps", eps),
        scale=scale,
    )
    return loss, grad, normalizer, weight, ratio


def _f_distill_fake(x, teacher_x0, fake_x0, disc_logits, ratio_divisor, global_h_stats, *args):
    return _outputs(x, disc_logits, args[-1])


# The gradient to x is written in forward; backward scales it by grad_output. The statistics are detached.
_setup, _backward = saved_gradient("f_distill_loss", [(1, 0)])
f_distill_op = Op(
    "f_distill", _f_distill, fake=_f_distill_fake, setup_context=_setup, backward=_backward, scalars=(8, 9, 10, 12)
)


class FDistillResult(NamedTuple):
    """Everything one call computes, for logging (all but ``loss`` are detached)."""

    loss: torch.Tensor
    ratio: torch.Tensor | None  # r_b after clipping (and time-bin division); None without disc_logits
    h: torch.Tensor  # h_b after batch normalisation (ones without disc_logits)
    normalizer: torch.Tensor  # n_b = mean |x - teacher_x0| per sample


def validate(
    x,
    teacher_x0,
    fake_x0,
    disc_logits,
    divergence,
    logit_clamp,
    ratio_clip,
    normalize,
    eps,
    reduction,
    process_group,
    ratio_divisor=None,
) -> tuple[Divergence, float, float]:
    """Every argument of f_distill checked (FDistillLoss runs this before it touches its state); returns the
    divergence and ratio_clip's (lo, hi)."""
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
    div.check_compute_dtype(x.dtype)
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
    check_bool("normalize", normalize)
    check_positive("eps", eps)
    check_choice("reduction", reduction, REDUCTIONS)
    check_process_group("process_group", process_group)
    if ratio_divisor is not None:
        check_float_tensor("ratio_divisor", ratio_divisor)
        check_same("ratio_divisor", ratio_divisor, "x", x, shape=False, dtype=False)
        if ratio_divisor.shape != (x.shape[0],):
            raise ValueError(f"ratio_divisor must have shape (B,) = ({x.shape[0]},), got {tuple(ratio_divisor.shape)}")
    return div, lo, hi


def compute_weights(
    disc_logits: torch.Tensor,
    div: Divergence,
    double_precision: bool,
    logit_clamp: float,
    lo: float,
    hi: float,
    ratio_divisor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_b, h_b, [sum h, B]) from the discriminator logits, in the fused kernel (float64 with double_precision,
    else float32); no gradient reaches the logits."""
    logits = disc_logits.detach().reshape(disc_logits.shape[0], -1)
    if ratio_divisor is not None:
        ratio_divisor = ratio_divisor.to(torch.float64 if double_precision else torch.float32)
    return weights_op(logits, ratio_divisor, double_precision, logit_clamp, lo, hi, div.kernel_id, div.kernel_param)


def _all_reduce_h_stats(x, disc_logits, div, logit_clamp, lo, hi, ratio_divisor, process_group) -> torch.Tensor:
    """[sum h, count] summed over the ranks of process_group, in x's accumulation dtype.

    Every rank makes this one all-reduce, of two float64 numbers, whatever its arguments (issue 16 item 7): a rank
    that skipped it (no disc_logits, normalize=False) paired the next rank's all-reduce with an unrelated one of
    its own. A rank without disc_logits has h = 1 (DMD2) and contributes [B, B]; a rank with normalize=False
    contributes its h although its own h stays unnormalised. Float64 whatever the inputs' dtype, so that ranks of
    different dtypes still exchange buffers of one type (the stats are e^-c [sum h, n] with c = 0 while h stays
    below e^40 over the ratio clip, true of every divergence but extreme alphas: such ranks must share the dtype)."""
    import torch.distributed as dist

    acc = acc_dtype(x.dtype)
    if disc_logits is None:
        stats = x.new_full((2,), float(x.shape[0]), dtype=torch.float64)
    else:
        _, _, local = compute_weights(disc_logits, div, acc == torch.float64, logit_clamp, lo, hi, ratio_divisor)
        stats = local.to(torch.float64, copy=True)
    dist.all_reduce(stats, group=process_group)
    return stats.to(acc)


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
    div, lo, hi = validate(
        x,
        teacher_x0,
        fake_x0,
        disc_logits,
        divergence,
        logit_clamp,
        ratio_clip,
        normalize,
        eps,
        reduction,
        process_group,
        ratio_divisor,
    )
    acc = acc_dtype(x.dtype)
    if ratio_divisor is not None:
        ratio_divisor = ratio_divisor.to(acc)
    global_h_stats = None
    if process_group is not None:
        global_h_stats = _all_reduce_h_stats(x, disc_logits, div, logit_clamp, lo, hi, ratio_divisor, process_group)
        if disc_logits is None or not normalize:
            global_h_stats = None  # this rank's own result does not use the global mean
    loss, _, normalizer, weight, ratio = f_distill_op(
        x,
        teacher_x0,  # the op gives them no gradient
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
        loss_b = 0.5 * mean_i(g_bi^2)   ("none": per-sample losses (B,); their mean is the "mean" loss)

    The only gradient is to ``x``: g / (B D) for "mean", g for "sum", and for "none" g_b / D times each sample's
    grad_output: the value and gradient of ``0.5 * mse(x, stopgrad(x - g))`` with that reduction, and for "none"
    of ``0.5 * mse(..., reduction="none").mean(dim=(1, ...))``, the per-sample loss a FastGen/DMD2 trainer
    would weight (so that weights of 1 give back the default "mean" loss). Nothing flows into the logits, the
    teacher or the fake network.

    Args:
        x: generator samples (B, ...), float32/float64/bfloat16/float16; any strides.
        teacher_x0, fake_x0: the teacher's and the fake score network's x0-predictions, same shape/dtype.
        disc_logits: discriminator logits (B,) or (B, K) (K heads are averaged); their sigmoid is the
            probability of "teacher", so the logit is log r. Without them only reverse_kl (h = 1) works.
        divergence: a name from ``fdiv_ops.DIVERGENCES`` or an object (``fdiv_ops.alpha(0.5)``);
            total_variation has h = 0 and is rejected.
        normalize: divide h by its batch mean (FastGen); ``eps`` guards the DMD normaliser (> 0).
        process_group: make the batch mean of h global over data-parallel ranks (one all-reduce of two
            float64 numbers, [sum h, count]); None keeps it per rank. Every rank makes that all-reduce whatever
            its arguments: a rank without disc_logits counts as h = 1 per sample, a rank with normalize=False
            contributes its h and keeps its own h unnormalised; batch sizes may differ between ranks.

    Returns the scalar loss ((B,) for "none"), float32 for 16-bit inputs (accumulated in float32), else x's dtype.
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
