"""Timing of callables: warm-up, then the median and p20/p80 of repeated runs.

On a GPU each run is bracketed by CUDA events (device time, no host overhead between runs counted);
on the CPU by perf_counter around a call that returns only when the work is done.

``measure_interleaved`` times several callables in rounds (A B C, B C A, ...) instead of one after
the other: on a shared CPU the load drifts from second to second (an OpenMP worker that loses its
core stalls a whole parallel region for a scheduler tick), and rounds expose every provider to the
same drift, so their ratios stay meaningful even when absolute times do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


@dataclass(frozen=True)
class TimingPlan:
    """How long to measure: at least ``min_reps`` runs and ``min_time_s`` seconds, at most ``max_reps``."""

    warmup: int
    min_reps: int
    max_reps: int
    min_time_s: float


PLANS = {
    "tiny": TimingPlan(warmup=1, min_reps=3, max_reps=3, min_time_s=0.0),
    # The runner has already called the provider twice (first call, error check) before timing, so one
    # more warm-up suffices; quick keeps `fdiv-ops bench` under two minutes on a shared 2-core CPU.
    "quick": TimingPlan(warmup=1, min_reps=5, max_reps=30, min_time_s=0.2),
    # The peers' published sizes on a GPU (gpu_check.sh): few, large, each step tens of ms.
    "headline": TimingPlan(warmup=2, min_reps=10, max_reps=50, min_time_s=0.3),
    "full": TimingPlan(warmup=3, min_reps=15, max_reps=100, min_time_s=1.0),
}


def _one_run_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def measure_ms(fn: Callable[[], object], device: torch.device, plan: TimingPlan) -> Timing:
    """Median and p20/p80 milliseconds of fn() after ``plan.warmup`` untimed runs."""
    for _ in range(plan.warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < plan.min_reps or (len(times) < plan.max_reps and time.perf_counter() - start < plan.min_time_s):
        times.append(_one_run_ms(fn, device))
    return summarize(times)


def summarize(times: list[float]) -> Timing:
    ordered = sorted(times)
    if len(ordered) >= 2:
        q = statistics.quantiles(ordered, n=5, method="inclusive")
        p20, p80 = q[0], q[3]
    else:
        p20 = p80 = ordered[0]
    return Timing(statistics.median(ordered), p20, p80, len(ordered))


def measure_interleaved(
    steps: dict[Hashable, Callable[[], object]], device: torch.device, plan: TimingPlan
) -> dict[Hashable, Timing]:
    """Timing of every step, measured in rotating rounds after ``plan.warmup`` untimed rounds. Stops once
    every step has ``min_reps`` runs and ``min_time_s`` per step has passed, or at ``max_reps``."""
    keys = list(steps)
    for _ in range(plan.warmup):
        for key in keys:
            steps[key]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[Hashable, list[float]] = {key: [] for key in keys}
    start = time.perf_counter()
    rounds = 0
    while rounds < plan.min_reps or (
        rounds < plan.max_reps and time.perf_counter() - start < plan.min_time_s * len(keys)
    ):
        shift = rounds % len(keys)
        for key in keys[shift:] + keys[:shift]:
            times[key].append(_one_run_ms(steps[key], device))
        rounds += 1
    return {key: summarize(values) for key, values in times.items()}
