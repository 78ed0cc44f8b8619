"""The divergences of fdiv-ops, by name or as objects (docs/math.md §1).

p is the target, q the model, r = p/q. ``forward_kl`` is KL(p||q) (mass-covering), ``reverse_kl`` is
KL(q||p) (mode-seeking). Every op accepts a name (``"js"``, ``"alpha(0.5)"``) or an object from the
constructors here (``fdiv_ops.alpha(0.5)``, ``fdiv_ops.gkd_jsd(0.9)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from . import _C
from ._compiler import assume_constant_result

# The divergence table lives once, in C++ (csrc/include/fdiv_ops/divergences.h, FDIV_DIVERGENCES):
# name -> (kernel id, parameter rule, parameter name, default). Everything here derives from it.
_TABLE: dict[str, tuple[int, int, str, float | None]] = dict(
    sorted(((str(name), tuple(row)) for name, row in _C.DIVERGENCE_TABLE.items()), key=lambda item: item[1][0])
)
# name -> (parameter name, default) for the parametric ones; None for the rest.
_PARAMETERS: dict[str, tuple[str, float | None] | None] = {
    name: (pname, default) if rule else None for name, (_, rule, pname, default) in _TABLE.items()
}
DIVERGENCES: tuple[str, ...] = tuple(_PARAMETERS)


@assume_constant_result  # a pure function of constants: torch.compile evaluates it once
def _param_error(kind: int, value: float, single: bool) -> str | None:
    """None if `value` is a valid parameter of divergence `kind` computed in float32 (single) or float64,
    else what was expected ("must ..."): the rule lives in C++ (param_error in divergences.h)."""
    return _C.divergence_param_error(kind, value, single)


@dataclass(frozen=True)
class Divergence:
    """One f-divergence: its name and, for gkd_jsd / alpha / skew_*, its parameter."""

    name: str
    param: float | None = None

    def __post_init__(self) -> None:
        if self.name not in _PARAMETERS:
            raise ValueError(f"unknown divergence {self.name!r}; valid: {', '.join(DIVERGENCES)}")
        spec = _PARAMETERS[self.name]
        if spec is None:
            if self.param is not None:
                raise ValueError(f"divergence {self.name!r} takes no parameter, got {self.param!r}")
            return
        pname, _ = spec
        if self.param is None:
            raise ValueError(f"divergence {self.name!r} needs its parameter {pname}: use fdiv_ops.{self.name}(...)")
        if isinstance(self.param, bool) or not isinstance(self.param, (int, float)):
            raise TypeError(f"{self.name}: {pname} must be a number, got {type(self.param).__name__}")
        value = float(self.param)
        error = _param_error(_TABLE[self.name][0], value, False)
        if error is not None:
            raise ValueError(f"{self.name}: {pname} {error}, got {value!r}")
        object.__setattr__(self, "param", value)

    def check_compute_dtype(self, dtype: torch.dtype, *, argname: str = "divergence") -> Divergence:
        """Self, if its parameter is valid in the dtype the kernels compute in for `dtype` inputs (float32 for
        float32/bfloat16/float16, float64 for float64): e.g. alpha(1 - 1e-9) rounds to 1 in float32 and would
        give NaN there. The constructor checked it in float64 already."""
        if self.param is None or dtype == torch.float64:
            return self
        error = _param_error(_TABLE[self.name][0], self.param, True)
        if error is not None:
            pname = _TABLE[self.name][2]
            raise ValueError(
                f"{argname}: {self.name}'s {pname} {error}, got {self.param!r} (computed in float32 for {dtype} inputs)"
            )
        return self

    @property
    def kernel_id(self) -> int:
        """The id of the C++ functor (csrc/include/fdiv_ops/divergences.h)."""
        return _TABLE[self.name][0]

    @property
    def kernel_param(self) -> float:
        return 0.0 if self.param is None else float(self.param)

    def __str__(self) -> str:
        return self.name if self.param is None else f"{self.name}({self.param:g})"


def alpha(alpha: float) -> Divergence:
    """Amari alpha-divergence; alpha -> 1 is forward_kl, alpha -> 0 is reverse_kl."""
    return Divergence("alpha", alpha)


def gkd_jsd(beta: float = 0.5) -> Divergence:
    """GKD's generalised JSD: beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q.

    As in TRL's ``generalized_jsd_loss``, beta = 0 is forward_kl and beta = 1 is reverse_kl.
    """
    return Divergence("gkd_jsd", beta)


def skew_forward_kl(lam: float = 0.1) -> Divergence:
    """DistiLLM's skew KL: KL(p || lam p + (1-lam) q)."""
    return Divergence("skew_forward_kl", lam)


def skew_reverse_kl(lam: float = 0.1) -> Divergence:
    """DistiLLM's skew reverse KL: KL(q || (1-lam) p + lam q)."""
    return Divergence("skew_reverse_kl", lam)


_CALL = re.compile(r"^\s*([a-z_0-9]+)\s*(?:\(\s*([^)]*?)\s*\))?\s*$")


def resolve(divergence: str | Divergence, *, argname: str = "divergence") -> Divergence:
    """A Divergence from a name ("js", "alpha(0.5)", "gkd_jsd") or a Divergence; defaults fill in."""
    if isinstance(divergence, Divergence):
        return divergence
    if not isinstance(divergence, str):
        raise TypeError(f"{argname} must be a divergence name or fdiv_ops.Divergence, got {type(divergence).__name__}")
    match = _CALL.match(divergence)
    name = match.group(1) if match else divergence
    if name not in _PARAMETERS:
        raise ValueError(f"{argname}: unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if match and match.group(2):
        try:
            return Divergence(name, float(match.group(2)))
        except ValueError as err:
            raise ValueError(f"{argname}: {err}") from None
    spec = _PARAMETERS[name]
    return Divergence(name, None if spec is None else spec[1])
