"""f_divergence_loss forward+backward: fdiv_ops vs the eager reference vs torch.compile of the reference.

By default (CI, ``--benchmark-disable``) each case runs once on a small size as a smoke test. With
``FDIV_BENCH_FULL=1`` the issue's sizes are used: CPU rows 2048 x V 32000 float32; CUDA rows 8192 x V 128256
bfloat16. Timings are reported by pytest-benchmark, never asserted:

    FDIV_BENCH_FULL=1 PYTHONPATH=python python -m pytest benchmarks/bench_f_divergence.py --benchmark-enable \
        -k cpu --benchmark-columns=median,min,max --benchmark-group-by=param:divergence
"""

from __future__ import annotations

import functools
import os

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference

FULL = os.environ.get("FDIV_BENCH_FULL") == "1"
SIZES = {
    "cpu": ((2048, 32000, torch.float32) if FULL else (64, 1271, torch.float32)),
    "cuda": ((8192, 128256, torch.bfloat16) if FULL else (256, 4096, torch.bfloat16)),
}
DIVERGENCES = ["forward_kl", "reverse_kl", "gkd_jsd(0.5)"]
needs_cuda = pytest.mark.skipif(not fdiv_ops.cuda_available(), reason="needs a CUDA device")


def _inputs(device: str):
    rows, vocab, dtype = SIZES[device]
    gen = torch.Generator().manual_seed(0)
    student = (2 * torch.randn(rows, vocab, generator=gen)).to(device=device, dtype=dtype)
    teacher = (2 * torch.randn(rows, vocab, generator=gen)).to(device=device, dtype=dtype)
    return student, teacher


def _eager(student, teacher, divergence):
    return reference.f_divergence_loss(student, teacher, divergence=divergence)


@functools.cache
def _compiled():
    return torch.compile(_eager, dynamic=False)


PROVIDERS = {
    "fdiv_ops": lambda s, t, d: fdiv_ops.f_divergence_loss(s, t, divergence=d),
    "eager": _eager,
    "compile": lambda s, t, d: _compiled()(s, t, d),
}


def _step(fn, student, teacher, divergence, device):
    student = student.detach().requires_grad_()
    fn(student, teacher, divergence).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return student.grad


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])])
def test_f_divergence_fwd_bwd(benchmark, provider, divergence, device):
    student, teacher = _inputs(device)
    fn = PROVIDERS[provider]
    _step(fn, student, teacher, divergence, device)  # warm-up (and compile)
    benchmark.extra_info.update(rows=student.shape[0], vocab=student.shape[1], dtype=str(student.dtype))
    grad = benchmark.pedantic(
        _step, args=(fn, student, teacher, divergence, device), rounds=3 if FULL else 1, iterations=1
    )
    assert grad.shape == student.shape


@pytest.mark.cuda
@needs_cuda
def test_liger_jsd_fwd_bwd(benchmark):
    """The peer: Liger-Kernel's LigerJSD(beta=0.5) on log-probs (skipped when liger-kernel is absent)."""
    liger = pytest.importorskip("liger_kernel.transformers")
    student, teacher = _inputs("cuda")
    jsd = liger.LigerJSD(beta=0.5)

    def step(student, teacher):
        student = student.detach().requires_grad_()
        log_q = torch.log_softmax(student.float(), -1)
        log_p = torch.log_softmax(teacher.float(), -1)
        jsd(log_q, log_p).backward()
        torch.cuda.synchronize()
        return student.grad

    step(student, teacher)
    benchmark.pedantic(step, args=(student, teacher), rounds=3 if FULL else 1, iterations=1)
