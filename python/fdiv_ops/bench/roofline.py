"""The roofline the bench compares against: the device's own copy bandwidth, measured, not looked up.

A memory-bound op cannot beat (bytes it must move) / (copy bandwidth). ``dst.copy_(src)`` reads and
writes every byte once, so its bandwidth is 2 * nbytes / time. The buffer is far larger than any cache:
64 MiB on the CPU (L3 is at most tens of MiB), 1 GiB on a GPU (L2 is 50-60 MiB on H100/H200).
"""

from __future__ import annotations

import torch

from .timing import TimingPlan, measure_ms

_COPY_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}
_PLAN = TimingPlan(warmup=2, min_reps=10, max_reps=50, min_time_s=0.2)


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Median device-to-device copy bandwidth in GB/s (1e9 bytes per second)."""
    nbytes = _COPY_BYTES[device.type]
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = measure_ms(lambda: dst.copy_(src), device, _PLAN)
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9
