"""The answer to "is fdiv_ops faster than what I use now?": per op and size, fdiv_ops' forward+backward
speed-up over every other provider that ran, the chosen baseline first.

Standard library only, on the JSON records: benchmarks/make_readme_table.py loads this file by path.
"""

from __future__ import annotations


def case_label(record: dict) -> str:
    """``64x32000 forward_kl``: the shape, then the op's settings."""
    return "x".join(map(str, record["shape"])) + "".join(f" {v}" for v in record.get("params", {}).values())


def comparisons(results: list[dict], baseline: str) -> list[str]:
    """The providers fdiv_ops is compared with, in table order: the baseline, then the others as they ran."""
    others = [p for p in dict.fromkeys(r["provider"] for r in results) if p != "fdiv_ops"]
    return sorted(others, key=lambda p: p != baseline)  # stable: only moves the baseline to the front


def rows(results: list[dict], baseline: str) -> list[dict]:
    """[{op, case, fdiv_ops_ms, speedups: {provider: ratio or None}}] per (op, size) where fdiv_ops ran.

    ratio = that provider's fwd+bwd median / fdiv_ops' (> 1: fdiv_ops is faster); None where it did not run.
    """
    by_case: dict[tuple[str, str], dict[str, dict]] = {}
    for r in results:
        by_case.setdefault((r["op"], case_label(r)), {})[r["provider"]] = r
    out = []
    for (op, label), providers in by_case.items():
        ours = providers.get("fdiv_ops")
        if ours is None or ours.get("fwd_bwd_ms") is None:
            continue
        speedups = {}
        for name in comparisons(results, baseline):
            other = providers.get(name)
            ms = None if other is None else other.get("fwd_bwd_ms")
            speedups[name] = None if ms is None else ms / ours["fwd_bwd_ms"]
        out.append({"op": op, "case": label, "fdiv_ops_ms": ours["fwd_bwd_ms"], "speedups": speedups})
    return out
