"""Why fdiv_ops can or cannot run its CUDA kernels here, and what to install.

One place for the words of `fdiv-ops info`, of the error raised when a CUDA tensor reaches an op that cannot use
CUDA, and of the test suite's refusal to skip the CUDA tests where torch sees a GPU.

The facts come from ``fdiv_ops._C.cuda_probe()``: the CUDA runtime is linked statically, so its version is fixed
when the module is built, and a runtime of major version M runs on drivers of CUDA M.0 or newer (minor-version
compatibility); the driver's version comes from cudaDriverGetVersion (0: no driver could be loaded). The message
functions take the facts as arguments, so the text for machines we cannot test on (no driver, an old driver, a GPU)
is tested on any machine.
"""

from __future__ import annotations

import functools
from typing import Any

# The oldest Linux driver of each CUDA release (NVIDIA's CUDA Toolkit release notes, "CUDA Toolkit and
# Corresponding Driver Versions"), keyed by the version cudaDriverGetVersion reports (1000*major + 10*minor).
DRIVER_FOR_CUDA = {
    12000: "525.60.13",
    12010: "530.30.02",
    12020: "535.54.03",
    12030: "545.23.06",
    12040: "550.54.14",
    12050: "555.42.02",
    12060: "560.28.03",
    12080: "570.26",
    12090: "575.51.03",
    13000: "580.65.06",
}

SKIP_ENV = "FDIV_OPS_SKIP_CUDA_TESTS"  # set to 1 to run only the CPU tests on a machine with a GPU


def cuda_version(code: int) -> str:
    """'12.9' from 12090."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def driver_name(code: int) -> str:
    """A driver by the CUDA version it supports: 'CUDA 12.2 (R535)'; the branch where it is known."""
    known = DRIVER_FOR_CUDA.get(code)
    return f"CUDA {cuda_version(code)} (R{known.split('.')[0]})" if known else f"CUDA {cuda_version(code)}"


def needed_driver(facts: dict[str, Any]) -> str:
    """What this build needs: 'CUDA 13.0 (R580, 580.65.06 or newer)'."""
    floor = facts["min_driver_version"]
    known = DRIVER_FOR_CUDA.get(floor)
    return f"CUDA {cuda_version(floor)} (R{known.split('.')[0]}, {known} or newer)" if known else cuda_version(floor)


@functools.cache
def probe() -> dict[str, Any]:
    """The compiled module's CUDA facts, once per process (the driver and the device list do not change)."""
    from . import _C

    return dict(_C.cuda_probe())


def problem(facts: dict[str, Any]) -> str | None:
    """Why fdiv_ops cannot run CUDA kernels, with what to install; None when it can (as far as the module sees)."""
    status = facts["status"]
    if status == "ok":
        return None
    if status == "not_built":
        return (
            "this fdiv_ops was built without CUDA (FDIV_OPS_CUDA=OFF, or no nvcc was found): install a wheel built "
            "with CUDA, or build it from source where nvcc is on PATH (FDIV_OPS_CUDA=ON makes such a build fail "
            "instead of quietly leaving CUDA out)"
        )
    runtime = cuda_version(facts["runtime_version"])
    if status == "no_driver":
        return (
            f"no NVIDIA driver: libcuda.so.1 could not be loaded. Install the NVIDIA driver, {needed_driver(facts)} "
            f"for this build of fdiv_ops (CUDA {runtime} runtime); in a container, run it with the GPU exposed "
            "(e.g. docker run --gpus all)"
        )
    if status == "driver_too_old":
        found = facts["driver_version"]
        return (
            f"NVIDIA driver too old for this build of fdiv_ops (found a driver for {driver_name(found)}, needs >= "
            f"{needed_driver(facts)}: this build links the CUDA {runtime} runtime). Upgrade the NVIDIA driver, or "
            f"build fdiv_ops from source with a CUDA toolkit no newer than CUDA {cuda_version(found)}: "
            "CUDACXX=/path/to/that/nvcc pip install --no-deps --no-build-isolation <fdiv-ops source>"
        )
    if status == "no_device":
        return (
            f"no CUDA device: the NVIDIA driver ({driver_name(facts['driver_version'])}) lists none. Check "
            "nvidia-smi and CUDA_VISIBLE_DEVICES"
        )
    return f"the CUDA runtime reported an error while listing devices: {facts['error']}"


def torch_problem(torch_cuda_version: str | None, torch_sees_gpu: bool) -> str | None:
    """Why torch cannot hand fdiv_ops CUDA tensors although fdiv_ops itself could run on the GPU."""
    if torch_cuda_version is None:
        return "the installed torch is a CPU-only build: install a CUDA build of torch (pip install torch)"
    if not torch_sees_gpu:
        return (
            f"torch (built for CUDA {torch_cuda_version}) sees no GPU although fdiv_ops does: its CUDA runtime may "
            "need a newer driver than the one installed (torch.cuda.is_available() is False)"
        )
    return None


def _torch_state() -> tuple[str | None, bool]:
    import torch

    return torch.version.cuda, torch.cuda.is_available()


def unusable_reason(facts: dict[str, Any] | None = None, torch_state: tuple[str | None, bool] | None = None) -> str:
    """Why fdiv_ops.cuda_available() is False, in one message ('' when it is True)."""
    facts = probe() if facts is None else facts
    torch_cuda_version, torch_sees_gpu = _torch_state() if torch_state is None else torch_state
    return problem(facts) or torch_problem(torch_cuda_version, torch_sees_gpu) or ""


def cuda_tensor_error(device: Any, facts: dict[str, Any] | None = None) -> str:
    """The RuntimeError text for a CUDA tensor that reached an op which cannot run CUDA kernels here."""
    facts = probe() if facts is None else facts
    return f"fdiv_ops cannot run on the CUDA tensor on {device}: {problem(facts) or 'CUDA is not usable'}"


def require_cuda(device: Any) -> None:
    """Raise the RuntimeError of `cuda_tensor_error` unless the module can run CUDA kernels (cached: no cost per op)."""
    facts = probe()
    if facts["status"] != "ok":
        raise RuntimeError(cuda_tensor_error(device, facts))


def gpu_but_unusable(
    facts: dict[str, Any] | None = None, torch_state: tuple[str | None, bool] | None = None
) -> str | None:
    """The message for the test suite when torch sees a GPU but fdiv_ops cannot use it; None otherwise."""
    facts = probe() if facts is None else facts
    torch_cuda_version, torch_sees_gpu = _torch_state() if torch_state is None else torch_state
    if not torch_sees_gpu:
        return None
    reason = problem(facts)
    if reason is None:
        return None
    return (
        f"torch sees a GPU (CUDA {torch_cuda_version}) but fdiv_ops cannot use it, so its CUDA tests would all "
        f"be skipped: {reason}. Set {SKIP_ENV}=1 to run only the CPU tests on purpose."
    )


def info_lines(facts: dict[str, Any] | None = None, torch_state: tuple[str | None, bool] | None = None) -> list[str]:
    """`fdiv-ops info`'s CUDA section: the build, the driver found, what it needs, and the verdict."""
    facts = probe() if facts is None else facts
    torch_cuda_version, torch_sees_gpu = _torch_state() if torch_state is None else torch_state
    if not facts["built"]:
        lines = ["CUDA: not built (CPU kernels only)"]
    else:
        driver = facts["driver_version"]
        lines = [
            f"CUDA runtime: {cuda_version(facts['runtime_version'])} (linked statically), needs an NVIDIA driver "
            f">= {needed_driver(facts)}",
            f"NVIDIA driver: {driver_name(driver) if driver else 'none found'}",
            f"CUDA devices: {facts['device_count']}",
        ]
    lines.append(f"torch CUDA: {torch_cuda_version or 'none (CPU build)'}, sees a GPU: {torch_sees_gpu}")
    reason = unusable_reason(facts, (torch_cuda_version, torch_sees_gpu))
    lines.append("fdiv_ops on CUDA: usable" if not reason else f"fdiv_ops on CUDA: not usable: {reason}")
    return lines
