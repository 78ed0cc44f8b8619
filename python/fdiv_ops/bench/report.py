"""Showing the records: the full table, then the headline (fdiv_ops' speed-up over what users run now), as a
rich table on a terminal or aligned plain text when piped (or without rich); and the progress display (rich
bar on a terminal, one line per step otherwise)."""

from __future__ import annotations

import sys
from typing import TextIO

from . import fmt, headline

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


def _ascii_only(stream: TextIO) -> bool:
    """True where the stream cannot encode µ, × and – (a C-locale pipe): the numbers then use us, x and -.
    A stream without an encoding (io.StringIO) holds text, not bytes: anything goes."""
    encoding = getattr(stream, "encoding", None)
    if encoding is None:
        return False
    try:
        "µ×–".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return True
    return False


def speedup_columns(head: dict) -> list[str]:
    """torch and compile always; the --baseline's too when it is another provider (trl)."""
    bases = ["torch", "compile"]
    return bases + ([head["baseline"]] if head.get("baseline") not in (None, *bases) else [])


def columns(head: dict, ascii: bool = False) -> list[str]:
    times = "x" if ascii else "×"
    dash = "-" if ascii else "–"
    return [
        "op",
        "shape",
        "provider",
        f"fwd+bwd (p20{dash}p80)",
        "fwd",
        "GB/s (% roof)",
        "peak mem",
        *[f"{times} {base}" for base in speedup_columns(head)],
        "max rel err",
    ]


def row(r: dict, head: dict, ascii: bool = False) -> list[str]:
    return [
        r["op"],
        headline.case_label(r),
        r["provider"] + (" *" if r["note"] else ""),
        fmt.time_spread(r["fwd_bwd_ms"], r["fwd_bwd_p20_ms"], r["fwd_bwd_p80_ms"], ascii),
        fmt.time_ms(r["fwd_ms"], ascii),
        fmt.bandwidth_and_roof(r["gbps"], r["copy_frac"]),
        fmt.mib(r["peak_mem_mb"]),
        *[fmt.speedup(r.get(f"speedup_vs_{base}"), ascii) for base in speedup_columns(head)],
        fmt.rel_err(r["max_rel_err"]),
    ]


def title(head: dict) -> str:
    return (
        f"fdiv-ops bench: {head['device_name']}, {head['dtype']}, preset {head['preset']}; "
        f"device copy bandwidth {fmt.bandwidth(head['copy_gbps'])}"
    )


def load_note(head: dict) -> str | None:
    """The machine's load during the run: on a shared CPU, others' work inflates and spreads the timings."""
    loads = [load for load in (head.get("load_avg_1min"), head.get("load_avg_1min_end")) if load is not None]
    if not loads:
        return None
    end = f", {loads[1]:.1f} at the end" if len(loads) > 1 else ""
    busy = ""
    if head["device"] == "cpu" and max(loads) > head["threads"]:
        busy = " (busier than the threads used: other processes inflate and spread these timings)"
    threads = f"{head['threads']} thread{'s' if head['threads'] != 1 else ''}"
    return f"1-minute load average {loads[0]:.1f} at the start{end}, {threads}{busy}"


def notes(head: dict, results: list[dict], extra: list[str] = ()) -> list[str]:
    out = list(head["notes"])
    load = load_note(head)
    if load:
        out.append(load)
    out.append(
        "fwd+bwd: median of interleaved rounds (p20-p80); GB/s: bytes a fused fwd+bwd must move / fwd+bwd "
        "time; % roof: time of a device copy moving those bytes, timed in the same rounds / fwd+bwd time; "
        "x <provider>: that provider's fwd+bwd time / this row's (> 1: this row is faster)"
    )
    seen = set()
    for r in results:  # what each baseline is, once per op and setting: "torch" alone says too little
        key = (r["op"], tuple(r.get("params", {}).values()), r["provider"])
        if r.get("source") and r["provider"] != "fdiv_ops" and key not in seen:
            seen.add(key)
            settings = "".join(f" {v}" for v in key[1])
            out.append(f"{r['op']}{settings} {r['provider']}: {r['source']}")
    for r in results:
        if r["note"] and (r["op"], r["provider"], r["note"]) not in seen:
            seen.add((r["op"], r["provider"], r["note"]))
            out.append(f"* {r['op']} {r['provider']}: {r['note']}")
    return out + list(extra)


def shown(results: list[dict]) -> list[dict]:
    """Rows worth a table line: skipped providers become notes instead."""
    return [r for r in results if not (r["note"] or "").startswith("skipped")]


def headline_table(head: dict, results: list[dict], ascii: bool = False) -> tuple[str, list[str], list[list[str]]]:
    """(caption, column names, rows) of fdiv_ops' fwd+bwd speed-up over each other provider."""
    baseline = head.get("baseline", "torch")
    names = headline.comparisons(shown(results), baseline)
    times = "x" if ascii else "×"
    marked = [f"{times} vs {n}" + (" (baseline)" if n == baseline else "") for n in names]
    cols = ["op", "shape", "fdiv_ops fwd+bwd", *marked]
    body = [
        [h["op"], h["case"], fmt.time_ms(h["fdiv_ops_ms"], ascii)]
        + [fmt.speedup(h["speedups"][n], ascii) for n in names]
        for h in headline.rows(results, baseline)
    ]
    caption = "Is fdiv_ops faster than what you use now? its fwd+bwd speed-up over each provider (> 1: faster)"
    return caption, cols, body


def _render(stream: TextIO, console, caption: str, cols: list[str], body: list[list[str]], notes_: list[str]) -> None:
    widths = [max([len(c)] + [len(line[i]) for line in body]) for i, c in enumerate(cols)]
    if console is not None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=caption, caption="\n".join(notes_) or None, caption_justify="left")
        for name, width in zip(cols, widths):
            table.add_column(name, justify="left" if name in _LEFT else "right", no_wrap=True, min_width=width)
        for line in body:
            table.add_row(*line)
        needed = sum(widths) + 3 * len(widths) + 1
        if console.width < needed:  # never crop numbers: let a narrow terminal wrap the lines instead
            console = Console(file=stream, width=needed)
        console.print(table)
        return

    def line(cells):
        return "  ".join(c.ljust(w) if name in _LEFT else c.rjust(w) for c, w, name in zip(cells, widths, cols))

    print(caption, file=stream)
    print(line(cols).rstrip(), file=stream)
    for cells in body:
        print(line(cells).rstrip(), file=stream)
    for note in notes_:
        print(note, file=stream)


def print_table(records: list[dict], extra_notes: list[str] = (), stream: TextIO | None = None) -> None:
    """The full table with its notes, then the headline table (printed last: the line a reader sees)."""
    stream = sys.stdout if stream is None else stream  # looked up now: tests and callers may redirect it
    head, results = records[0], records[1:]
    ascii = _ascii_only(stream)
    console = _rich_console(stream)
    body = [row(r, head, ascii) for r in shown(results)]
    _render(stream, console, title(head), columns(head, ascii), body, notes(head, results, list(extra_notes)))
    caption, cols, body = headline_table(head, results, ascii)
    if body:
        print(file=stream)
        _render(stream, console, caption, cols, body, [])


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
