"""f_divergence_loss forward+backward: fdiv_ops vs the idiomatic eager expression vs its torch.compile.

The baselines are what a user writes, not the package's float64-capable reference:
  forward_kl    F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="sum", log_target=True) / rows
  reverse_kl    its mirror (the student's log-probs as the target)
  gkd_jsd(0.5)  TRL's GKDTrainer.generalized_jsd_loss(s, t, beta=0.5) (the body re-stated when trl is absent)
  js            2 * gkd_jsd(0.5)

Side-by-side table (one run, every provider interleaved round by round so that load on a shared machine
hits all of them alike; medians; ratios against torch.compile at each thread count):

    PYTHONPATH=python python benchmarks/bench_f_divergence.py --rows 2048 --vocab 32000 --threads 1 2

pytest-benchmark form (CI runs it once on a small size as a smoke test; ``FDIV_BENCH_FULL=1`` for the issue's
sizes: CPU rows 2048 x V 32000 float32, CUDA rows 8192 x V 128256 bfloat16). Timings are never asserted:

    FDIV_BENCH_FULL=1 PYTHONPATH=python python -m pytest benchmarks/bench_f_divergence.py --benchmark-enable \
        -k cpu --benchmark-columns=median,min,max --benchmark-group-by=param:divergence
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time

import fdiv_ops
import pytest
import torch
import torch.nn.functional as F

FULL = os.environ.get("FDIV_BENCH_FULL") == "1"
SIZES = {
    "cpu": ((2048, 32000, torch.float32) if FULL else (64, 1271, torch.float32)),
    "cuda": ((8192, 128256, torch.bfloat16) if FULL else (256, 4096, torch.bfloat16)),
}
DIVERGENCES = ["forward_kl", "reverse_kl", "js", "gkd_jsd(0.5)"]
needs_cuda = pytest.mark.skipif(not fdiv_ops.cuda_available(), reason="needs a CUDA device")


def _trl_body(student_logits, teacher_logits, beta):
    """TRL 1.16's generalized_jsd_loss body for (rows, V) logits, temperature 1, batchmean (used when trl is absent)."""
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    beta = torch.tensor(beta, dtype=student_log_probs.dtype, device=student_log_probs.device)
    mixture_log_probs = torch.logsumexp(
        torch.stack([student_log_probs + torch.log1p(-beta), teacher_log_probs + torch.log(beta)]), dim=0
    )
    kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
    kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
    jsd = beta * kl_teacher + (1 - beta) * kl_student
    return jsd.sum() / max(jsd.size(0), 1)


def _load_trl():
    # Resolved once at import: an import inside the compiled function would break torch.compile's graph.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        return _trl_body
    return lambda s, t, beta: GKDTrainer.generalized_jsd_loss(s, t, beta=beta)


_trl_jsd = _load_trl()


def idiomatic(student, teacher, divergence):
    """The loss a user writes for `divergence` (batchmean over rows)."""
    rows = student.shape[0]
    if divergence == "forward_kl":
        log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
        return F.kl_div(log_q, log_p, reduction="sum", log_target=True) / rows
    if divergence == "reverse_kl":
        log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
        return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / rows
    if divergence == "gkd_jsd(0.5)":
        return _trl_jsd(student, teacher, 0.5)
    if divergence == "js":
        return 2 * _trl_jsd(student, teacher, 0.5)
    raise ValueError(divergence)


def _fdiv_name(divergence):
    return fdiv_ops.gkd_jsd(0.5) if divergence == "gkd_jsd(0.5)" else divergence


def _inputs(device: str, rows=None, vocab=None, dtype=None):
    d_rows, d_vocab, d_dtype = SIZES[device]
    rows, vocab, dtype = rows or d_rows, vocab or d_vocab, dtype or d_dtype
    gen = torch.Generator().manual_seed(0)
    student = (2 * torch.randn(rows, vocab, generator=gen)).to(device=device, dtype=dtype)
    teacher = (2 * torch.randn(rows, vocab, generator=gen)).to(device=device, dtype=dtype)
    return student, teacher


@functools.cache
def _compiled():
    return torch.compile(idiomatic, dynamic=False)


PROVIDERS = {
    "fdiv_ops": lambda s, t, d: fdiv_ops.f_divergence_loss(s, t, divergence=_fdiv_name(d)),
    "eager": idiomatic,
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


def compare(rows, vocab, threads, divergences, providers, rounds):
    """Median ms per provider, interleaved round by round; returns {(threads, divergence, provider): ms}."""
    student, teacher = _inputs("cpu", rows, vocab, torch.float32)
    times = {}
    for n in threads:
        torch.set_num_threads(n)
        for d in divergences:
            for p in providers:  # warm-up: compile, allocator, page faults
                _step(PROVIDERS[p], student, teacher, d, "cpu")
            samples = {p: [] for p in providers}
            for _ in range(rounds):
                for p in providers:
                    t0 = time.perf_counter()
                    _step(PROVIDERS[p], student, teacher, d, "cpu")
                    samples[p].append(1e3 * (time.perf_counter() - t0))
            for p in providers:
                times[(n, d, p)] = statistics.median(samples[p])
            line = "  ".join(f"{p} {times[(n, d, p)]:8.1f}" for p in providers)
            print(f"threads {n}  {d:13s} {line}", flush=True)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--divergences", nargs="+", default=DIVERGENCES)
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times = compare(args.rows, args.vocab, args.threads, args.divergences, args.providers, args.rounds)
    print(f"\nrows {args.rows} x V {args.vocab} float32, forward+backward, median of {args.rounds} (ms)")
    head = "| threads | divergence | " + " | ".join(args.providers) + " | compile / fdiv_ops |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for n in args.threads:
        for d in args.divergences:
            cells = " | ".join(f"{times[(n, d, p)]:.1f}" for p in args.providers)
            ratio = times.get((n, d, "compile"), math.nan) / times.get((n, d, "fdiv_ops"), math.nan)
            print(f"| {n} | {d} | {cells} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
