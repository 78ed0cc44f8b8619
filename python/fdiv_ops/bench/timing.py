"""Wall-clock timing of a callable: warm-up, then the median and p20/p80 of repeated runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def measure_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, repeat: int = 7,
               min_time_s: float = 0.0) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of fn(); CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_time_s:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return statistics.median(times), q[0], q[3]
