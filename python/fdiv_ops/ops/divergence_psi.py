"""psi (and f, h) of a divergence at sequence-level log-ratios, from the C++ functors (the math lives once).

``fdiv_ops::divergence_terms(log_ratio, kind, param) -> (f, psi, h)`` runs the divergence_eval kernels
(csrc/{cpu,cuda}/divergence_eval.*) elementwise; psi is differentiable with d psi / d l = -h (math.md §1),
f and h are returned detached. f-DPG and f-DPO build on it.

Sequence log-ratios reach +-1e3, where e^l overflows even float64. `clamp_log_ratio` clamps l so that no
exponential a functor evaluates exceeds e^max_exponent: l in [-max_exponent/down, max_exponent/up] with the
growth rates (up, down) that divergences.h declares next to each functor (div_exp_rates). Divergences whose
psi stays in log space (reverse_kl, js, softened_rkl, total_variation, ...) are never clamped. Like
torch.clamp, the clamp passes no gradient where it is active.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .. import _C
from .._backend import DTYPE_CODES, device_args, ptr
from ..divergences import Divergence, resolve


@torch.library.custom_op("fdiv_ops::divergence_terms", mutates_args=())
def _terms_op(log_ratio: torch.Tensor, kind: int, param: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    l = log_ratio.contiguous()
    f, psi, h = torch.empty_like(l), torch.empty_like(l), torch.empty_like(l)
    on_cuda, stream = device_args(l.device)
    with torch.cuda.device(l.device) if on_cuda else contextlib.nullcontext():
        _C.divergence_eval(
            kind, param, DTYPE_CODES[l.dtype], ptr(l), l.numel(), ptr(f), ptr(psi), ptr(h), on_cuda, stream
        )
    return f, psi, h


@_terms_op.register_fake
def _(log_ratio, kind, param):
    shape = dict(memory_format=torch.contiguous_format)
    return (
        torch.empty_like(log_ratio, **shape),
        torch.empty_like(log_ratio, **shape),
        torch.empty_like(log_ratio, **shape),
    )


def _terms_setup(ctx, inputs, output):
    f, _, h = output
    ctx.save_for_backward(h)
    ctx.mark_non_differentiable(f, h)
    ctx.set_materialize_grads(False)


def _terms_backward(ctx, _grad_f, grad_psi, _grad_h):
    if grad_psi is None:
        return None, None, None
    (h,) = ctx.saved_tensors
    return -grad_psi * h, None, None  # h = -d psi / d l


_terms_op.register_autograd(_terms_backward, setup_context=_terms_setup)


_RATES: dict[tuple[int, float, bool], tuple[float, float]] = {}


@torch.compiler.assume_constant_result  # a pure function of constants: torch.compile bakes the result in
def _rates(kind: int, param: float, of_f: bool) -> tuple[float, float]:
    key = (kind, param, of_f)
    if key not in _RATES:
        _RATES[key] = tuple(_C.divergence_exp_rates(kind, param, of_f))
    return _RATES[key]


def dtype_max_exponent(dtype: torch.dtype) -> float:
    """log of the dtype's largest finite value, floored to 4 decimals (TRL's cap_exp: 88.7228 for float32)."""
    return math.floor(math.log(torch.finfo(dtype).max) * 1e4) / 1e4


def clamp_log_ratio(log_ratio: torch.Tensor, div: Divergence, max_exponent: float, *, of_f: bool = False):
    """l clamped so that psi and h (and f with of_f) of `div` evaluate no exponential above e^max_exponent."""
    up, down = _rates(div.kernel_id, div.kernel_param, of_f)
    lo = -max_exponent / down if down > 0 else None
    hi = max_exponent / up if up > 0 else None
    if lo is None and hi is None:
        return log_ratio
    return log_ratio.clamp(min=lo, max=hi)


def divergence_terms(log_ratio: torch.Tensor, div: str | Divergence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f, psi, h) of a divergence at l = log_ratio, from the C++ functors; float32/float64 (16-bit inputs
    are evaluated in float32). psi carries the gradient -h to log_ratio; f and h are detached. No clamping:
    see clamp_log_ratio for sequence-level log-ratios."""
    div = resolve(div)
    if log_ratio.dtype not in (torch.float32, torch.float64):
        log_ratio = log_ratio.float()
    return _terms_op(log_ratio, div.kernel_id, div.kernel_param)
