"""The shared part of the vocabulary-parallel ops (docs/vocab_parallel.md): the process group by name, phase 1's
gathered buffer (per-row statistics, shard sizes, label fingerprint) and the global log-sum-exps, and the
consistency checks that every rank evaluates identically on the gathered metadata (CPU: raise; CUDA: NaN)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

# Two checksums of the labels modulo primes below 2^23, so that each is exact in float32 (the gathered dtype).
_FINGERPRINTS = ((8388593, 40503), (8388587, 69069))
_META = 4  # metadata values appended to the gathered buffer: sizes (1 or 2), fingerprints (2), padding


def group_name(group: object) -> str:
    """The process group's registered name (custom ops take strings, not groups)."""
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"vocab_parallel_group must be a torch.distributed ProcessGroup, got {type(group).__name__}")
    return group.group_name


def _group(name: str) -> dist.ProcessGroup:
    return distributed_c10d._resolve_process_group(name)


# ---------------------------------------------------------------------------------------------------
# Phase 1: local statistics, one all_gather, the global log-sum-exps


def _fingerprint(labels: torch.Tensor | None, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2,) checksums of the labels (-1, -1 without labels), exact in float32: equal on every rank iff (with
    probability ~1 - 1e-13) the labels are."""
    if labels is None:
        return torch.full((2,), -1.0, dtype=dtype, device=device)
    lab = labels.reshape(-1).long() + 3  # ignore_index -100 and friends stay distinct
    idx = torch.arange(rows, device=device, dtype=torch.int64)
    sums = [
        torch.remainder((lab * (torch.remainder(idx * mult + 12345, 8191) + 1)).sum(), mod)
        for mod, mult in _FINGERPRINTS
    ]
    return torch.stack(sums).to(dtype)


# torch >= 2.13 names it all_gather_single (all_gather_into_tensor warns there).
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _gather(buf: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(world, n): every rank's flat buffer, in rank order."""
    out = buf.new_empty(group.size() * buf.numel())
    _ALL_GATHER(out, buf, group=group)
    return out.view(group.size(), buf.numel())


def _combine(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Global LSE (float64) from the ranks' (max, sum exp(x - max)), (world, rows) each. A poisoned row on any rank
    (max NaN or +inf) gives NaN; a row of -inf everywhere gives -inf."""
    m, s = m.double(), s.double()
    top = m.amax(0)
    safe = torch.where(top == -math.inf, torch.zeros_like(top), top)
    return safe + torch.log((s * torch.exp(m - safe)).sum(0))


def _raise_or_poison(problems: list[tuple[torch.Tensor, str]], like: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: every check passed. CPU tensors: raise the first failed check's message (the same on
    every rank, since all hold the same gathered data). CUDA: no host sync, the caller poisons with NaN instead."""
    if like.device.type == "cpu":
        for ok, message in problems:
            if not bool(ok):
                raise ValueError(f"vocab_parallel_group: {message}")
        return torch.ones((), dtype=torch.bool)
    valid = torch.ones((), dtype=torch.bool, device=like.device)
    for ok, _ in problems:
        valid = valid & ok
    return valid


def _sizes_str(sizes: torch.Tensor) -> str:
    return str([int(v) for v in sizes.tolist()]) if sizes.device.type == "cpu" else "(on the device)"


def _layout_checks(vs: torch.Tensor, vt: torch.Tensor, max_vocab_pad: int) -> list[tuple[torch.Tensor, str]]:
    """Student shards vs and teacher shards vt (world,) must cover the same global columns: on each rank the shared
    columns start at the same offset, and one-sided columns lie past the other vocabulary's end."""
    total_s, total_t = vs.sum(), vt.sum()
    off_s, off_t = torch.cumsum(vs, 0) - vs, torch.cumsum(vt, 0) - vt
    common = torch.minimum(vs, vt)
    aligned = ((common == 0) | (off_s == off_t)).all()
    aligned &= ((vs <= common) | (off_s + common >= total_t)).all()
    aligned &= ((vt <= common) | (off_t + common >= total_s)).all()
    sizes = f"student shards {_sizes_str(vs)}, teacher shards {_sizes_str(vt)} (rank order)"
    checks = [
        (
            aligned,
            f"the vocabulary shards do not line up: {sizes}; each rank must pass the same contiguous slice of both "
            "vocabularies (sizes may differ only where the shorter vocabulary ends)",
        )
    ]
    if max_vocab_pad >= 0:
        checks.append(
            (
                (total_s - total_t).abs() <= max_vocab_pad,
                f"the global vocabulary sizes differ by more than max_vocab_pad = {max_vocab_pad}: {sizes}; the "
                "shorter side is padded with -inf, pass a larger max_vocab_pad (or None) if this is intended",
            )
        )
    return checks


def _labels_check(meta_fp: torch.Tensor) -> tuple[torch.Tensor, str]:
    return (meta_fp == meta_fp[:1]).all(), "labels differ between ranks (every rank must pass the same global labels)"


def _range_check(labels: torch.Tensor, counted: torch.Tensor, vocab: torch.Tensor, what: str):
    """Per-row flag of a label outside [0, vocab) on a counted row, and the check for _raise_or_poison."""
    bad = counted & ((labels < 0) | (labels >= vocab.to(labels.dtype)))
    return bad, (~bad.any(), f"labels must lie in [0, V) with V = {_sizes_str(vocab.reshape(1))[1:-1]} {what}")
