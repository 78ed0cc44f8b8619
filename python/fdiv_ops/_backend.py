"""The bridge to the compiled core: dtype codes, pointers, streams and what the build contains.

The core (fdiv_ops._C) is torch-free; everything that knows torch tensors lives on this side.
"""

from __future__ import annotations

import functools

import torch

from . import _C

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
FLOAT_DTYPES = tuple(DTYPE_CODES)


def build_info() -> dict:
    """What was compiled: CPU ISA clones usable on this CPU, OpenMP, CUDA archs and runtime version."""
    info = dict(_C.build_info())
    count, reason = _C.cuda_device_count()
    info["cuda_devices"] = count
    info["cuda_status"] = reason
    return info


@functools.cache
def _cuda_built() -> bool:
    return bool(_C.build_info()["cuda"])


def cuda_available() -> bool:
    """Whether fdiv_ops can run its CUDA kernels now (built with CUDA, a device and torch with CUDA)."""
    return _cuda_built() and _C.cuda_device_count()[0] > 0 and torch.cuda.is_available()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and loss) dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ptr(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def device_args(device: torch.device) -> tuple[bool, int]:
    """(on_cuda, stream handle) for a kernel launch on `device`: torch's current stream, never a sync."""
    if device.type == "cpu":
        return False, 0
    if device.type != "cuda":
        raise ValueError(f"fdiv_ops runs on CPU and CUDA tensors, got a tensor on {device}")
    if not _cuda_built():
        raise RuntimeError(
            "fdiv_ops was built without CUDA, so it cannot run on CUDA tensors; reinstall it on a machine "
            "with nvcc (FDIV_OPS_CUDA=ON makes the build fail loudly instead of skipping CUDA)"
        )
    return True, torch.cuda.current_stream(device).cuda_stream


def num_threads() -> int:
    """CPU kernels follow torch.set_num_threads."""
    return torch.get_num_threads()
