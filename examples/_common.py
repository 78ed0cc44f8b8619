"""Scaffolding shared by the examples: the command line every example takes, seeding, and the three
outputs every example writes (a results table on stdout, ``<script>.json`` and ``<script>.png``).

Each example is a script ``examples/<name>.py`` with ``main(argv=None) -> dict``: the dict it returns is
exactly what it writes to ``<out>/<name>.json``, so tests can call ``main([...])`` in-process.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def make_parser(script_file: str, description: str, threads: int | None = 1) -> argparse.ArgumentParser:
    """An argparse parser with the options every example takes: --out, --seed and --threads.

    ``threads`` is the default of --threads. One intra-op thread is the default because the examples'
    small matrices gain little from more, and on a shared 2-core machine a second spinning OpenMP thread
    made a run 5x slower (measured: 295 s instead of ~60 s for one divergence under load).
    None leaves torch's own setting.
    """
    parser = argparse.ArgumentParser(
        prog=Path(script_file).name,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for <script>.json and <script>.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random number generator")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="torch intra-op threads",
    )
    return parser


def setup(args: argparse.Namespace) -> None:
    """Seed Python, NumPy and torch, set the thread count, and create the output folder."""
    seed_everything(args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def script_stem(script_file: str) -> str:
    """The name the outputs carry: ``gmm_f_distill`` for ``examples/gmm_f_distill.py``."""
    return Path(script_file).stem


def write_json(out_dir: Path, stem: str, result: dict) -> Path:
    """Write ``<out_dir>/<stem>.json``; non-finite floats are written as null (JSON has no NaN)."""
    path = Path(out_dir) / f"{stem}.json"
    path.write_text(json.dumps(_finite_or_none(result), indent=2, sort_keys=False) + "\n")
    return path


def _finite_or_none(value):
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_figure(fig, out_dir: Path, stem: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``<out_dir>/<stem>.png`` and close it."""
    import matplotlib.pyplot as plt

    path = Path(out_dir) / f"{stem}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (examples run headless)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def format_table(rows: dict[str, dict[str, float]], columns: Sequence[str], row_header: str = "divergence") -> str:
    """A plain fixed-width table: one row per key of ``rows``, one column per metric name."""
    width0 = max(len(row_header), *(len(name) for name in rows))
    widths = [max(len(c), 9) for c in columns]
    lines = ["  ".join([row_header.ljust(width0), *(c.rjust(w) for c, w in zip(columns, widths))])]
    lines.append("  ".join(["-" * width0, *("-" * w for w in widths)]))
    for name, metrics in rows.items():
        cells = [_format_number(metrics.get(c)).rjust(w) for c, w in zip(columns, widths)]
        lines.append("  ".join([name.ljust(width0), *cells]))
    return "\n".join(lines)


def _format_number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3e}"
