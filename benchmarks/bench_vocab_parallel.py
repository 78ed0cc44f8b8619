"""Vocabulary-parallel f_divergence_loss and sequence_logprobs (forward + backward) vs all-gathering the logits and
calling the unsharded op, on 2 gloo processes (CPU, 1 thread each).

Providers, per op:
  vocab_parallel  each rank passes its vocabulary shard with vocab_parallel_group= (one all_gather of per-row
                  statistics and one all_reduce of per-row partial sums; nothing in backward)
  allgather       each rank all-gathers the full rows x V logits (student and teacher for the loss), runs the
                  unsharded op on them and keeps its shard of the gradient (what a trainer must do without it)
Bytes are counted from the collectives' buffers: what one rank sends (all_gather: its buffer; all_reduce: its
buffer, as a ring sends ~2 (world - 1) / world of it) and receives (all_gather: the other ranks' buffers).
Rounds alternate the providers, so a loaded machine slows them alike; the table gives medians.

    PYTHONPATH=python python benchmarks/bench_vocab_parallel.py [--rows 2048] [--vocab 32000] [--rounds 5]

CI collects the smoke test below (a small size, one round): it checks that the benchmark runs, not its speed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import fdiv_ops
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _shards(vocab: int) -> list[int]:
    return [vocab // WORLD + (1 if r < vocab % WORLD else 0) for r in range(WORLD)]


def _kd_vocab_parallel(z, t, labels, group):
    z = z.clone().requires_grad_()
    fdiv_ops.f_divergence_loss(z, t, labels=labels, divergence="js", vocab_parallel_group=group).backward()
    return z.grad


def _kd_allgather(z, t, labels, group):
    rank = dist.get_rank(group)
    parts_z = [torch.empty(z.shape[0], v) for v in _SIZES]
    parts_t = [torch.empty(t.shape[0], v) for v in _SIZES]
    dist.all_gather(parts_z, z.contiguous(), group=group)
    dist.all_gather(parts_t, t.contiguous(), group=group)
    full = torch.cat(parts_z, 1).requires_grad_()
    fdiv_ops.f_divergence_loss(full, torch.cat(parts_t, 1), labels=labels, divergence="js").backward()
    return torch.split(full.grad, _SIZES, 1)[rank]


def _seq_vocab_parallel(z, t, labels, group):
    z = z.clone().requires_grad_()
    fdiv_ops.sequence_logprobs(z, labels, vocab_parallel_group=group).sum().backward()
    return z.grad


def _seq_allgather(z, t, labels, group):
    rank = dist.get_rank(group)
    parts = [torch.empty(z.shape[0], v) for v in _SIZES]
    dist.all_gather(parts, z.contiguous(), group=group)
    full = torch.cat(parts, 1).requires_grad_()
    fdiv_ops.sequence_logprobs(full, labels).sum().backward()
    return torch.split(full.grad, _SIZES, 1)[rank]


_SIZES: list[int] = []


def _bytes(op: str, provider: str, rows: int, vocab: int) -> tuple[int, int]:
    """(sent, received) bytes of one rank for one forward + backward (fp32, WORLD ranks, the larger shard)."""
    local = max(_shards(vocab))
    if provider == "allgather":
        sides = 2 if op == "f_divergence_loss" else 1
        return sides * rows * local * 4, sides * rows * (vocab - local) * 4
    width, reduced = (4, 2) if op == "f_divergence_loss" else (2, 1)  # per-row stats gathered, partials reduced
    gather = (rows * width + 4) * 4
    ring = 2 * (WORLD - 1) * rows * reduced * 4 // WORLD
    return gather + ring, (WORLD - 1) * gather + ring


PROVIDERS = {
    "f_divergence_loss": {"vocab_parallel": _kd_vocab_parallel, "allgather": _kd_allgather},
    "sequence_logprobs": {"vocab_parallel": _seq_vocab_parallel, "allgather": _seq_allgather},
}


def _worker(rank, port, rows, vocab, rounds, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    group = dist.group.WORLD
    _SIZES[:] = _shards(vocab)
    gen = torch.Generator().manual_seed(0)
    z_full = 3 * torch.randn(rows, vocab, generator=gen)
    t_full = z_full + torch.randn(rows, vocab, generator=gen)
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    z, t = (torch.split(x, _SIZES, 1)[rank].contiguous() for x in (z_full, t_full))
    del z_full, t_full
    times: dict[tuple[str, str], list[float]] = {}
    for op, providers in PROVIDERS.items():
        grads = {}
        for name, fn in providers.items():
            grads[name] = fn(z, t, labels, group)  # warm-up, and the gradients agree
        torch.testing.assert_close(grads["vocab_parallel"], grads["allgather"], rtol=1e-4, atol=1e-7)
        for _ in range(rounds):
            for name, fn in providers.items():
                dist.barrier()
                start = time.perf_counter()
                fn(z, t, labels, group)
                elapsed = torch.tensor([time.perf_counter() - start])
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank sets the step time
                times.setdefault((op, name), []).append(elapsed.item())
    if rank == 0:
        out.update({k: statistics.median(v) for k, v in times.items()})
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rows: int, vocab: int, rounds: int) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), rows, vocab, rounds, out), nprocs=WORLD, join=True)
        return dict(out)


def _table(rows: int, vocab: int, medians: dict) -> str:
    lines = [
        f"{WORLD} gloo ranks x 1 thread, rows {rows} x V {vocab} fp32 (shards {_shards(vocab)}), forward + backward",
        f"{'op':20} {'provider':16} {'median ms':>10} {'vs allgather':>13} {'sent/rank':>12} {'recv/rank':>12}",
    ]
    for op, providers in PROVIDERS.items():
        base = medians[(op, "allgather")]
        for name in providers:
            sent, recv = _bytes(op, name, rows, vocab)
            lines.append(
                f"{op:20} {name:16} {1e3 * medians[(op, name)]:10.1f} {base / medians[(op, name)]:12.2f}x "
                f"{sent / 1e6:10.3f}MB {recv / 1e6:10.3f}MB"
            )
    return "\n".join(lines)


def test_bench_vocab_parallel_smoke():
    medians = run(rows=16, vocab=300, rounds=1)
    assert set(medians) == {(op, name) for op, p in PROVIDERS.items() for name in p}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(_table(args.rows, args.vocab, run(args.rows, args.vocab, args.rounds)))
    sys.exit(0)
