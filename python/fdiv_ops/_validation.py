"""Validation at one seam: every user error is raised here, naming the argument and what was expected,
before any pointer reaches C++."""

from __future__ import annotations

import math

import torch

from ._backend import FLOAT_DTYPES


class DTypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: a TypeError by the house convention, and a ValueError too, so callers
    that treat every bad argument as a ValueError (as the op issues specify) catch it."""


def _dtype_names() -> str:
    return ", ".join(str(d).replace("torch.", "") for d in FLOAT_DTYPES)


def check_float_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name} must have a floating dtype ({_dtype_names()}), got {value.dtype}")
    if value.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {value.device}")
    return value


def check_same(
    name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor, *, shape: bool = True, dtype: bool = True
) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {value.device}")
    if dtype and value.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {value.dtype}")
    if shape and value.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}")


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_interval(name: str, value: object) -> tuple[float, float]:
    """A (lo, hi) pair with 0 < lo < hi < inf."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}") from None
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"{name} must satisfy 0 < lo < hi < inf, got ({lo}, {hi})")
    return lo, hi
