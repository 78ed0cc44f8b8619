"""Validation of what a user passes to the public functions and modules: every error names the argument and
what was expected, before anything runs or any state changes.

Traceable: torch.compile may make any number here symbolic (a SymFloat for a temperature that changes between
calls, a SymInt under dynamic=True), so the checks are type tests and comparisons only, which become guards;
no ``math.isfinite``, ``float(x)`` or ``int(x)`` on a value, and every value is returned as it was given. The
binding (csrc/bindings/<op>.cpp) checks the tensors that reach the kernels once more, against each other.
"""

from __future__ import annotations

import math

import torch

from ._backend import FLOAT_DTYPES


class DTypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: a TypeError by the house convention, and a ValueError too, so callers
    that treat every bad argument as a ValueError (as the op issues specify) catch it."""


def _dtype_names() -> str:
    return ", ".join(str(d).replace("torch.", "") for d in FLOAT_DTYPES)


def _type_name(value: object) -> str:
    return type(value).__name__


def check_float_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(value)}")
    if value.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name} must have a floating dtype ({_dtype_names()}), got {value.dtype}")
    if value.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {value.device}")
    return value


def check_integer_tensor(name: str, value: object, what: str = "") -> torch.Tensor:
    """An integer tensor (int8 ... int64, uint8); bool is not an integer here (it would count every row)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor{what}, got {_type_name(value)}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise DTypeError(
            f"{name} must be an integer tensor{what}: {name} must have an integer dtype (int64, int32, ...), "
            f"got {value.dtype}"
        )
    return value


def check_same(
    name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor, *, shape: bool = True, dtype: bool = True
) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {value.device}")
    if dtype and value.dtype != ref.dtype:
        raise DTypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {value.dtype}")
    if shape and value.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}")


def is_number(value: object) -> bool:
    """An int or float (symbolic under torch.compile), not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float, torch.SymInt, torch.SymFloat))


def check_number(name: str, value: object) -> None:
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {_type_name(value)}")


def check_positive(name: str, value: object, *, allow_zero: bool = False):
    """A finite number > 0 (>= 0 with allow_zero), returned as given. NaN fails both comparisons."""
    check_number(name, value)
    if not ((value >= 0 if allow_zero else value > 0) and value < math.inf):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return value


def check_range(name: str, value: object, lo: float, hi: float, *, hi_open: bool = False):
    """A number in [lo, hi] ([lo, hi) with hi_open), returned as given."""
    check_number(name, value)
    if not (value >= lo and (value < hi if hi_open else value <= hi)):
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}{')' if hi_open else ']'}, got {value!r}")
    return value


def check_int(name: str, value: object, *, minimum: int | None = None, allow_none: bool = False):
    """An int (not a bool), at least `minimum`; None where allow_none."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        also = " or None" if allow_none else ""
        raise TypeError(f"{name} must be an int{also}, got {_type_name(value)}")
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_interval(name: str, value: object) -> tuple:
    """A (lo, hi) pair of numbers with 0 < lo < hi < inf."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_number(v) for v in value):
        raise TypeError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}")
    lo, hi = value
    if not (0 < lo and lo < hi and hi < math.inf):
        raise ValueError(f"{name} must satisfy 0 < lo < hi < inf, got ({lo!r}, {hi!r})")
    return lo, hi


def check_process_group(name: str, value: object) -> None:
    """None or a torch.distributed ProcessGroup."""
    if value is None:
        return
    import torch.distributed as dist

    if not (dist.is_available() and isinstance(value, dist.ProcessGroup)):
        raise TypeError(f"{name} must be a torch.distributed ProcessGroup or None, got {_type_name(value)}")


def check_item_count(name: str, value: object) -> None:
    """num_items_in_batch: None, a number > 0, or a one-element real tensor.

    A tensor's value is checked only where that costs no host sync: a CPU tensor in eager mode. Elsewhere (a
    CUDA tensor, or under torch.compile) a value that is not a finite number > 0 makes the loss NaN instead
    (ops/_plumbing.row_weights)."""
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        check_positive(name, value)
        return
    if value.dtype == torch.bool or value.dtype.is_complex:
        raise DTypeError(f"{name} must be a number or a real tensor, got a tensor of dtype {value.dtype}")
    if value.numel() != 1:
        raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
    if value.device.type == "cpu" and type(value) is torch.Tensor and not torch.compiler.is_compiling():
        if not bool((value > 0) & (value < math.inf)):
            raise ValueError(f"{name} must be a finite number > 0, got {value.reshape(()).item()!r}")
