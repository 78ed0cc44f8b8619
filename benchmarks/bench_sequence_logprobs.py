"""sequence_logprobs forward+backward: fused vs eager log_softmax+gather vs torch.compile of it.

    PYTHONPATH=python python -m pytest benchmarks/bench_sequence_logprobs.py --benchmark-enable \
        --benchmark-columns=median,iqr,rounds -q

Targets (not asserts): CPU, B*T = 4096, V = 32000, fp32: >= 2x torch.compile; no (rows x V) tensor beyond the
gradient. Timings only: correctness lives in tests/test_sequence_logprobs.py.
"""

from __future__ import annotations

import fdiv_ops
import pytest
import torch

SHAPES = {"cpu": [(4096, 32000)], "cuda": [(8192, 32000), (8192, 128256)]}


def _eager(logits, labels):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


_compiled = torch.compile(_eager, dynamic=False)

PROVIDERS = {"fdiv_ops": fdiv_ops.sequence_logprobs, "eager": _eager, "compile": _compiled}


def _cases():
    for device, shapes in SHAPES.items():
        skip = pytest.mark.skipif(not fdiv_ops.cuda_available(), reason="needs a CUDA device")
        marks = [pytest.mark.cuda, skip] if device == "cuda" else []
        for rows, vocab in shapes:
            for name in PROVIDERS:
                yield pytest.param(device, rows, vocab, name, marks=marks, id=f"{device}-{rows}x{vocab}-{name}")


@pytest.mark.parametrize("device, rows, vocab, provider", list(_cases()))
def test_forward_backward(benchmark, device, rows, vocab, provider):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=gen).to(device).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    upstream = torch.randn(rows, generator=gen).to(device)
    fn = PROVIDERS[provider]

    def step():
        logits.grad = None
        (fn(logits, labels) * upstream).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # compile / warm up outside the timing
    benchmark.pedantic(step, rounds=7, warmup_rounds=1)
    benchmark.extra_info["bytes_min"] = 3 * rows * vocab * logits.element_size()  # read twice, write grad once
