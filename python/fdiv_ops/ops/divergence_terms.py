"""divergence_terms: f, psi and h of a divergence at sequence-level log-ratios, from the C++ functors (the math
lives once).

``fdiv_ops::divergence_terms(log_ratio, kind, param) -> (f, psi, h)`` runs the kernels elementwise; psi is
differentiable with d psi / d l = -h (math.md §1), f and h are returned detached. f-DPG and f-DPO build on it.

Sequence log-ratios reach +-1e3, where e^l overflows even float64. `clamp_log_ratio` clamps l so that no
exponential a functor evaluates exceeds e^max_exponent: l in [-max_exponent/down, max_exponent/up] with the
growth rates (up, down) that divergences.h declares next to each functor (div_exp_rates). Divergences whose
psi stays in log space (reverse_kl, js, softened_rkl, total_variation, ...) are never clamped. Like
torch.clamp, the clamp passes no gradient where it is active.
"""

from __future__ import annotations

import math

import torch

from .. import _C
from .._compiler import assume_constant_result
from .._validation import check_float_tensor
from ..divergences import Divergence, resolve
from ._plumbing import Op, launch, operand, refuse_double_backward, tensor_arg


def _outputs(log_ratio):
    tensor_arg("divergence_terms", "log_ratio", log_ratio)
    shape = dict(memory_format=torch.contiguous_format)
    return tuple(torch.empty_like(log_ratio, **shape) for _ in range(3))


def _terms(log_ratio: torch.Tensor, kind: int, param: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f, psi, h = _outputs(log_ratio)
    launch(
        _C.divergence_terms,
        log_ratio.device,
        log_ratio=log_ratio.contiguous(),
        f=f,
        psi=psi,
        h=h,
        kind=kind,
        param=param,
    )
    return f, psi, h


def _terms_fake(log_ratio, kind, param):
    return _outputs(log_ratio)


def _terms_setup(ctx, inputs, output):
    f, _, h = output
    ctx.save_for_backward(h)
    ctx.mark_non_differentiable(f, h)
    ctx.set_materialize_grads(False)


def _terms_backward(ctx, _grad_f, grad_psi, _grad_h):
    if grad_psi is None:
        return None, None, None
    refuse_double_backward("divergence_terms", grad_psi)  # d h / d l is not available: no second derivative
    (h,) = ctx.saved_tensors
    return -grad_psi * h, None, None  # h = -d psi / d l


divergence_terms_op = Op(
    "divergence_terms", _terms, fake=_terms_fake, setup_context=_terms_setup, backward=_terms_backward
)


_RATES: dict[tuple[int, float, bool], tuple[float, float]] = {}


@assume_constant_result  # a pure function of constants: torch.compile bakes the result in
def _rates(kind: int, param: float, of_f: bool) -> tuple[float, float]:
    key = (kind, param, of_f)
    if key not in _RATES:
        _RATES[key] = tuple(_C.divergence_exp_rates(kind, param, of_f))
    return _RATES[key]


def dtype_max_exponent(dtype: torch.dtype) -> float:
    """log of the dtype's largest finite value, floored to 4 decimals (TRL <= 0.28's cap_exp: 88.7228 for float32)."""
    return math.floor(math.log(torch.finfo(dtype).max) * 1e4) / 1e4


def clamp_log_ratio(log_ratio: torch.Tensor, div: Divergence, max_exponent: float, *, of_f: bool = False):
    """l clamped so that psi and h (and f with of_f) of `div` evaluate no exponential above e^max_exponent."""
    up, down = _rates(div.kernel_id, div.kernel_param, of_f)
    lo = operand(-max_exponent / down, log_ratio) if down > 0 else None
    hi = operand(max_exponent / up, log_ratio) if up > 0 else None
    if lo is None and hi is None:
        return log_ratio
    return log_ratio.clamp(min=lo, max=hi)


def divergence_terms(log_ratio: torch.Tensor, div: str | Divergence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f, psi, h) of a divergence at l = log_ratio, from the C++ functors; float32/float64 (16-bit inputs
    are evaluated in float32). psi carries the gradient -h to log_ratio; f and h are detached. No clamping:
    see clamp_log_ratio for sequence-level log-ratios."""
    check_float_tensor("log_ratio", log_ratio)
    div = resolve(div, argname="div").check_compute_dtype(log_ratio.dtype, argname="div")
    if log_ratio.dtype not in (torch.float32, torch.float64):
        log_ratio = log_ratio.float()
    return divergence_terms_op(log_ratio, div.kernel_id, div.kernel_param)
