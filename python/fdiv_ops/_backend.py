"""What the build contains and the dtypes the kernels take.

The core (fdiv_ops._C) is torch-free: it reads every tensor from a DLPack capsule and derives its element type
there, so no dtype code crosses the binding. How an op reaches the kernels lives in ops/_plumbing.py.
"""

from __future__ import annotations

import functools

import torch

from . import _C

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def build_info() -> dict:
    """What was compiled: CPU ISA clones usable on this CPU, OpenMP, CUDA archs and runtime version."""
    info = dict(_C.build_info())
    count, reason = _C.cuda_device_count()
    info["cuda_devices"] = count
    info["cuda_status"] = reason
    return info


@functools.cache
def cuda_built() -> bool:
    return bool(_C.build_info()["cuda"])


def cuda_available() -> bool:
    """Whether fdiv_ops can run its CUDA kernels now (built with CUDA, a device and torch with CUDA)."""
    return cuda_built() and _C.cuda_device_count()[0] > 0 and torch.cuda.is_available()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and loss) dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32
