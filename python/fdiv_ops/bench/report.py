"""Showing the records: a rich table on a terminal, aligned plain text when piped (or without rich),
and the progress display (rich bar on a terminal, one line per step otherwise)."""

from __future__ import annotations

import sys
from typing import TextIO

COLUMNS = (
    "op",
    "shape",
    "provider",
    "fwd ms",
    "fwd+bwd ms",
    "p20-p80 ms",
    "GB/s",
    "% roof",
    "peak MB",
    "x eager",
    "x compile",
    "max rel err",
)
_LEFT = {"op", "shape", "provider"}


def _rich_console(stream: TextIO):
    """A rich Console on ``stream`` when rich is installed and the stream is a terminal, else None."""
    if not stream.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream)


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(r: dict) -> list[str]:
    spread = "-" if r["fwd_bwd_p20_ms"] is None else f"{r['fwd_bwd_p20_ms']:.3g}-{r['fwd_bwd_p80_ms']:.3g}"
    shape = "x".join(map(str, r["shape"])) + "".join(f" {v}" for v in r["params"].values())
    return [
        r["op"],
        shape,
        r["provider"] + (" *" if r["note"] else ""),
        _num(r["fwd_ms"], ".3g"),
        _num(r["fwd_bwd_ms"], ".3g"),
        spread,
        _num(r["gbps"], ".3g"),
        _num(None if r["copy_frac"] is None else 100 * r["copy_frac"], ".0f"),
        _num(r["peak_mem_mb"], ".1f"),
        _num(r["speedup_vs_eager"], ".2f"),
        _num(r["speedup_vs_compile"], ".2f"),
        _num(r["max_rel_err"], ".1e"),
    ]


def _title(head: dict) -> str:
    return (
        f"fdiv-ops bench: {head['device_name']}, {head['dtype']}, preset {head['preset']}; "
        f"device copy bandwidth {head['copy_gbps']:.1f} GB/s"
    )


def _notes(head: dict, results: list[dict], extra: list[str]) -> list[str]:
    notes = list(head["notes"])
    loads = [head.get("load_avg_1min"), head.get("load_avg_1min_end")]
    if head["device"] == "cpu" and None not in loads:
        busy = (
            " (busier than the threads used: other processes inflate and spread these timings)"
            if max(loads) > head["threads"]
            else ""
        )
        notes.append(
            f"1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end, "
            f"{head['threads']} threads{busy}"
        )
    notes.append(
        "fwd/fwd+bwd: median ms (p20-p80 of fwd+bwd); GB/s: bytes a fused fwd+bwd must move / "
        "fwd+bwd time; % roof: time of a device copy moving those bytes (timed in the same rounds) / "
        "fwd+bwd time; x eager / x compile: fwd+bwd speed-up"
    )
    seen = set()
    for r in results:
        if r["note"] and (r["provider"], r["note"]) not in seen:
            seen.add((r["provider"], r["note"]))
            notes.append(f"* {r['op']} {r['provider']}: {r['note']}")
    return notes + extra


def shown(results: list[dict]) -> list[dict]:
    """Rows worth a table line: skipped providers become notes instead."""
    return [r for r in results if not (r["note"] or "").startswith("skipped")]


def print_table(records: list[dict], extra_notes: list[str] = (), stream: TextIO | None = None) -> None:
    stream = sys.stdout if stream is None else stream  # looked up now: tests and callers may redirect it
    head, results = records[0], records[1:]
    rows = [_row(r) for r in shown(results)]
    notes = _notes(head, results, list(extra_notes))
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(COLUMNS)]
    console = _rich_console(stream)
    if console is not None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=_title(head), caption="\n".join(notes), caption_justify="left")
        for name, width in zip(COLUMNS, widths):
            table.add_column(name, justify="left" if name in _LEFT else "right", no_wrap=True, min_width=width)
        for row in rows:
            table.add_row(*row)
        needed = sum(widths) + 3 * len(widths) + 1
        if console.width < needed:  # never crop numbers: let a narrow terminal wrap the lines instead
            console = Console(file=stream, width=needed)
        console.print(table)
        return

    def line(cells):
        return "  ".join(c.ljust(w) if name in _LEFT else c.rjust(w) for c, w, name in zip(cells, widths, COLUMNS))

    print(_title(head), file=stream)
    print(line(COLUMNS).rstrip(), file=stream)
    for row in rows:
        print(line(row).rstrip(), file=stream)
    for note in notes:
        print(note, file=stream)


class ProgressDisplay:
    """A context manager whose instances are the runner's ``progress`` callback."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.stream, self.done = total, sys.stderr if stream is None else stream, -1
        self._console = _rich_console(self.stream)
        self._bar = None

    def __enter__(self):
        if self._console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description:<40}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("starting", total=self.total)
        return self

    def __call__(self, description: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=description)
        else:
            print(f"[{self.done + 1}/{self.total}] {description}", file=self.stream, flush=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
        return False
