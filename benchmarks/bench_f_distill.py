"""f_distill_loss forward+backward: fdiv_ops vs the eager reference vs torch.compile of the reference.

CI runs this once per provider as a smoke test (pytest's --benchmark-disable). To measure:
    FDIV_BENCH_FULL=1 python -m pytest benchmarks/bench_f_distill.py --benchmark-enable
Targets (issue 2), never asserted: CPU (B=64, 4x64x64, fp32) >= 5x eager and >= 1.5x torch.compile.
"""

import os

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference

FULL = os.environ.get("FDIV_BENCH_FULL") == "1"
BATCH, SAMPLE = (64, (4, 64, 64)) if FULL else (8, (4, 16, 16))


def _eager(x, teacher, fake, logits):
    return reference.f_distill_loss(x, teacher, fake, logits, divergence="js")


PROVIDERS = {
    "fdiv_ops": lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg, divergence="js"),
    "eager": _eager,
    "compile": torch.compile(_eager, dynamic=False),
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_f_distill_fwd_bwd(benchmark, provider):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *SAMPLE, generator=gen)
    teacher = x + 0.3 * torch.randn(x.shape, generator=gen)
    fake = x + 0.3 * torch.randn(x.shape, generator=gen)
    logits = torch.randn(BATCH, 4, generator=gen)
    x.requires_grad_()
    loss_fn = PROVIDERS[provider]

    def step():
        x.grad = None
        loss_fn(x, teacher, fake, logits).backward()

    benchmark(step)
    assert torch.isfinite(x.grad).all()
