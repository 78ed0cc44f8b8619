"""The roofline the bench compares against: the device's own copy bandwidth, measured, not looked up.

A memory-bound op cannot beat (bytes it must move) / (copy bandwidth). ``dst.copy_(src)`` reads and
writes every byte once, so its bandwidth is 2 * nbytes / time. The buffers are larger than any cache:
on the CPU twice the L3 the OS reports (at least 512 MiB, at most 1 GiB: a VM's lscpu may say 32 MiB
while the host's L3 is 384 MiB, and a 64 MiB copy then ran at cache speed), 1 GiB on a GPU (L2 is
50-60 MiB on H100/H200). The runner also times, per size, a copy of that size's bytes (runner._time).
"""

from __future__ import annotations

import os

import torch

from .timing import TimingPlan, measure_ms


def _cpu_copy_bytes() -> int:
    try:
        l3 = os.sysconf("SC_LEVEL3_CACHE_SIZE")
    except (ValueError, OSError, AttributeError):
        l3 = 0
    return min(max(2 * max(l3, 0), 512 << 20), 1 << 30)


_PLAN = TimingPlan(warmup=2, min_reps=10, max_reps=50, min_time_s=0.2)


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Median device-to-device copy bandwidth in GB/s (1e9 bytes per second)."""
    nbytes = _cpu_copy_bytes() if device.type == "cpu" else 1 << 30
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = measure_ms(lambda: dst.copy_(src), device, _PLAN)
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9
