"""fused_linear_f_divergence forward+backward: fdiv_ops vs the eager reference (both logits materialised).

By default (CI, ``--benchmark-disable``) each case runs once on a tiny size as a smoke test. With
``FDIV_BENCH_FULL=1`` the issue's sizes are used: CPU rows 4096 x H 1024 x V 32000 float32 (and 1024 rows,
the small-input case where a peer is 4.3x slower than eager); CUDA rows 8192 x H 4096 x V 128256 bfloat16.
Timings are reported by pytest-benchmark, never asserted:

    FDIV_BENCH_FULL=1 PYTHONPATH=python python -m pytest benchmarks/bench_fused_linear.py --benchmark-enable \
        -k cpu --benchmark-columns=median,min,max

Peak memory of one forward+backward (CPU: growth of the peak RSS of a fresh subprocess per provider over
its RSS once the inputs exist; CUDA: torch.cuda.max_memory_allocated over the inputs) is reported in each
case's ``extra_info`` (``peak_mb``), and printed by running this file as a script:

    FDIV_BENCH_FULL=1 PYTHONPATH=python python benchmarks/bench_fused_linear.py cpu
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference

FULL = os.environ.get("FDIV_BENCH_FULL") == "1"
SIZES = {  # (rows, H, V, dtype)
    "cpu": (
        [(4096, 1024, 32000, torch.float32), (1024, 1024, 32000, torch.float32)]
        if FULL
        else [(64, 32, 1271, torch.float32)]
    ),
    "cuda": (
        [(8192, 4096, 128256, torch.bfloat16), (1024, 4096, 128256, torch.bfloat16)]
        if FULL
        else [(256, 256, 4096, torch.bfloat16)]
    ),
}
DIVERGENCE = "gkd_jsd(0.5)"  # the one Liger-Kernel's fused-linear JSD covers
needs_cuda = pytest.mark.skipif(not fdiv_ops.cuda_available(), reason="needs a CUDA device")


def _inputs(device: str, size):
    rows, hidden, vocab, dtype = size
    gen = torch.Generator().manual_seed(0)
    scale = hidden**-0.5 * 2  # logits of order a few units

    def make(*shape, s=1.0):
        return (s * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

    return make(rows, hidden), make(vocab, hidden, s=scale), make(rows, hidden), make(vocab, hidden, s=scale)


def _liger():
    from liger_kernel.transformers import LigerFusedLinearJSD

    loss = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)
    return lambda hs, ws, ht, wt: loss(hs, ws, ht, wt)


PROVIDERS = {
    "fdiv_ops": lambda: (
        lambda hs, ws, ht, wt: fdiv_ops.fused_linear_f_divergence(hs, ws, ht, wt, divergence=DIVERGENCE)
    ),
    "eager": lambda: lambda hs, ws, ht, wt: reference.fused_linear_f_divergence(hs, ws, ht, wt, divergence=DIVERGENCE),
    "liger": _liger,
}


def _step(fn, hs, ws, ht, wt, device):
    hs.grad = ws.grad = None
    fn(hs, ws, ht, wt).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return hs.grad, ws.grad


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(provider: str, device: str, index: int) -> dict:
    """One provider on one size in this process: peak memory of one fwd+bwd after a warm-up, and its time."""
    size = SIZES[device][index]
    hs, ws, ht, wt = _inputs(device, size)
    hs.requires_grad_()
    ws.requires_grad_()
    fn = PROVIDERS[provider]()
    _step(fn, hs, ws, ht, wt, device)  # warm-up: thread pools, allocator, gradients exist from here on
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    _step(fn, hs, ws, ht, wt, device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status_kib("VmHWM") * 1024
    return {"provider": provider, "size": str(size), "peak_mb": (peak - before) / 2**20, "ms": seconds * 1e3}


def measure_in_subprocess(provider: str, device: str, index: int) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import bench_fused_linear as b; "
        f"print(json.dumps(b.measure({provider!r}, {device!r}, {index})))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.path.join(root, "python")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("provider", ["fdiv_ops", "eager", pytest.param("liger", marks=[pytest.mark.cuda, needs_cuda])])
@pytest.mark.parametrize("index", range(len(SIZES["cpu"])))
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])])
def test_fused_linear_fwd_bwd(benchmark, provider, index, device):
    if provider == "liger":
        pytest.importorskip("liger_kernel.transformers")
    size = SIZES[device][index]
    hs, ws, ht, wt = _inputs(device, size)
    hs.requires_grad_()
    ws.requires_grad_()
    fn = PROVIDERS[provider]()
    _step(fn, hs, ws, ht, wt, device)  # warm-up
    benchmark.extra_info.update(rows=size[0], hidden=size[1], vocab=size[2], dtype=str(size[3]))
    if FULL:
        benchmark.extra_info["peak_mb"] = measure_in_subprocess(provider, device, index)["peak_mb"]
    grads = benchmark.pedantic(_step, args=(fn, hs, ws, ht, wt, device), rounds=3 if FULL else 1, iterations=1)
    assert grads[0].shape == hs.shape and grads[1].shape == ws.shape


if __name__ == "__main__":
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    providers = ["fdiv_ops", "eager"] + (["liger"] if device == "cuda" else [])
    for index in range(len(SIZES[device])):
        for provider in providers:
            print(json.dumps(measure_in_subprocess(provider, device, index)), flush=True)
