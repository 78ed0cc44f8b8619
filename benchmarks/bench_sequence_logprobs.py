"""sequence_logprobs forward+backward: fdiv_ops vs the idiomatic eager expressions vs torch.compile of them.

The idiomatic expressions are the two a user writes: ``log_softmax(logits.float(), -1).gather(-1, labels)``
("eager") and ``logits.gather(-1, labels) - logits.logsumexp(-1)`` ("eager_lse"); "compile"/"compile_lse" are
``torch.compile`` of each, and the ratio is taken against the faster of the two. CPU: rows 2048 x V 32000
float32, on 1 and 2 threads; CUDA: rows 8192 x V 128256 bfloat16.

CI runs each case once on a small size (``--benchmark-disable``). To measure, either with pytest-benchmark:
    FDIV_BENCH_FULL=1 PYTHONPATH=python python -m pytest benchmarks/bench_sequence_logprobs.py --benchmark-enable \
        --benchmark-columns=median,iqr,rounds -q
or as one interleaved run that prints the table with the ratios (providers alternate round by round):
    PYTHONPATH=python python benchmarks/bench_sequence_logprobs.py [--rounds 7] [--device cuda]
Targets (issue 12), never asserted: CPU >= 2x the faster torch.compile on 1 and on 2 threads; CUDA within 85%
of the HBM floor (the row read twice and the gradient written once, over the measured copy bandwidth). No
(rows x V) tensor beyond the gradient (tests/test_sequence_logprobs.py checks that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import fdiv_ops
import pytest
import torch

FULL = os.environ.get("FDIV_BENCH_FULL") == "1"
SHAPES = {"cpu": (2048, 32000) if FULL else (64, 1271), "cuda": (8192, 128256) if FULL else (256, 4096)}
MEASURE = {"cpu": (2048, 32000), "cuda": (8192, 128256)}
DTYPES = {"cpu": torch.float32, "cuda": torch.bfloat16}


def _eager(logits, labels):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _eager_lse(logits, labels):
    z = logits.float()
    return z.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - z.logsumexp(-1)


PROVIDERS = {
    "fdiv_ops": fdiv_ops.sequence_logprobs,
    "eager": _eager,
    "eager_lse": _eager_lse,
    "compile": torch.compile(_eager, dynamic=False),
    "compile_lse": torch.compile(_eager_lse, dynamic=False),
}


def _inputs(device, rows, vocab):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=gen).to(device=device, dtype=DTYPES[device]).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    upstream = torch.randn(rows, generator=gen).to(device)
    return logits, labels, upstream


def _step_fn(provider, logits, labels, upstream):
    fn = PROVIDERS[provider]

    def step():
        logits.grad = None
        (fn(logits, labels) * upstream).sum().backward()
        if logits.is_cuda:
            torch.cuda.synchronize()

    return step


def _cases():
    needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not fdiv_ops.cuda_available(), reason="needs a CUDA device")]
    for provider in PROVIDERS:
        if provider == "compile_lse" and not FULL:
            continue  # CI's smoke run: one torch.compile is enough to check the harness (each costs ~20 s)
        for threads in (1, 2):
            yield pytest.param("cpu", threads, provider, id=f"cpu-{threads}thread-{provider}")
        yield pytest.param("cuda", 0, provider, marks=needs_cuda, id=f"cuda-{provider}")


@pytest.mark.parametrize("device, threads, provider", list(_cases()))
def test_forward_backward(benchmark, device, threads, provider):
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rows, vocab = SHAPES[device]
        logits, labels, upstream = _inputs(device, rows, vocab)
        step = _step_fn(provider, logits, labels, upstream)
        step()  # compile / warm up outside the timing
        benchmark.pedantic(step, rounds=7, warmup_rounds=1)
        benchmark.extra_info["bytes_min"] = 3 * rows * vocab * logits.element_size()  # read twice, write grad once
    finally:
        torch.set_num_threads(previous)


def copy_bandwidth(device, nbytes=1 << 30, rounds=20):
    """Bytes per second of a device-to-device copy (read + write), the floor's yardstick."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * nbytes * rounds / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    rows, vocab = MEASURE[args.device]
    logits, labels, upstream = _inputs(args.device, rows, vocab)
    print(
        f"sequence_logprobs fwd+bwd, rows {rows} x V {vocab}, {DTYPES[args.device]}, {args.device}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print("| threads | " + " | ".join(PROVIDERS) + " | vs eager | vs compile |")
    print("|---|" + "---|" * (len(PROVIDERS) + 2))
    for threads in [1, 2] if args.device == "cpu" else [0]:
        if threads:
            torch.set_num_threads(threads)
        steps = {name: _step_fn(name, logits, labels, upstream) for name in PROVIDERS}
        for step in steps.values():
            step()
            step()
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        eager, compiled = min(ms["eager"], ms["eager_lse"]), min(ms["compile"], ms["compile_lse"])
        cells = " | ".join(f"{ms[name]:.1f} ms" for name in PROVIDERS)
        print(f"| {threads or '-'} | {cells} | {eager / ms['fdiv_ops']:.2f}x | {compiled / ms['fdiv_ops']:.2f}x |")
        if args.device == "cuda":
            nbytes = 3 * rows * vocab * logits.element_size()
            floor = nbytes / copy_bandwidth(args.device)
            print(
                f"floor {floor * 1e3:.3f} ms at the copy bandwidth; fdiv_ops at "
                f"{floor / (ms['fdiv_ops'] / 1e3):.0%} of the floor (target >= 85%)"
            )


if __name__ == "__main__":
    main()
