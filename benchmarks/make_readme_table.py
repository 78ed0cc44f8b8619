"""The README's benchmark tables, generated from benchmarks/results/*.json (written by `fdiv-ops bench --json`),
so the README's numbers are never typed by hand.

    python benchmarks/make_readme_table.py --rerun   # re-measure the CPU results (2 threads, then 1), then
                                                     # rewrite the tables: the one command to regenerate
    python benchmarks/make_readme_table.py           # rewrite the tables between the markers in README.md
    python benchmarks/make_readme_table.py --check   # exit 1 if README.md is out of date (a test runs this)

The tables go between these two lines of README.md:

    <!-- bench-table:start -->
    <!-- bench-table:end -->

First a headline table (fdiv_ops' forward+backward speed-up over each provider, one column group per results
file), then one detailed table per file. Rendering needs only the standard library (fmt.py and headline.py of
python/fdiv_ops/bench are loaded by path); --rerun runs `python -m fdiv_ops.cli bench` from python/.
GPU results (e.g. benchmarks/results/h100.json from benchmarks/gpu_check.sh) are copied in by hand and
shown like the others.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "python" / "fdiv_ops" / "bench"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"

# The committed CPU results and the `fdiv-ops bench` arguments that produce them (--rerun). Threads are
# fixed so that a rerun on another machine measures the same configuration.
RUNS = {
    "cpu.json": ["--device", "cpu", "--threads", "2", "--preset", "quick", "--dtype", "fp32"],
    "cpu-1thread.json": ["--device", "cpu", "--threads", "1", "--preset", "quick", "--dtype", "fp32"],
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fmt, headline = _load("fmt"), _load("headline")

SPEEDUP_BASES = ("torch", "compile")


def _bench_output(path: Path) -> list[dict] | None:
    """The records of a `fdiv-ops bench --json` file, or None for the other JSON kept in results/ (e.g. a
    kernel resource report)."""
    records = json.loads(path.read_text())
    if isinstance(records, list) and records and isinstance(records[0], dict) and records[0].get("record") == "header":
        return records
    return None


def _read(path: Path, records: list[dict]) -> tuple[dict, list[dict]]:
    head = records[0]
    if head.get("schema_version", 1) < 2:
        raise ValueError(
            f"{path}: not a schema-2 file of `fdiv-ops bench --json` (rerun: python benchmarks/make_readme_table.py "
            "--rerun)"
        )
    return head, records[1:]


def _config(head: dict) -> str:
    """What a column group measured: ``CPU, 2 threads`` or the GPU's name."""
    if head["device"] == "cpu":
        return f"CPU, {head['threads']} thread{'s' if head['threads'] != 1 else ''}"
    return head["device_name"]


def _order(item: tuple[Path, dict, list[dict]]):
    path, head, _ = item
    return (head["device"] == "cpu", -int(head.get("threads") or 0), path.name)


def headline_table(files: list[tuple[Path, dict, list[dict]]]) -> list[str]:
    """fdiv_ops' fwd+bwd speed-up per (op, size) and provider, one column group per results file."""
    groups = []  # (config, {(op, case): row}, providers compared in this file)
    for _, head, results in files:
        rows = headline.rows(results, head.get("baseline", "torch"))
        names = [n for n in headline.comparisons(results, "torch") if any(r["speedups"].get(n) for r in rows)]
        groups.append((_config(head), {(r["op"], r["case"]): r for r in rows}, names))
    keys = list(dict.fromkeys(key for _, rows, _ in groups for key in rows))
    cols = ["op", "shape"] + [f"{config}: × {name}" for config, _, names in groups for name in names]
    lines = ["| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
    for op, case in keys:
        cells = [op, case]
        for _, rows, names in groups:
            row = rows.get((op, case))
            cells += [fmt.speedup(None if row is None else row["speedups"].get(name)) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _detail_row(r: dict) -> str:
    provider = f"**{r['provider']}**" if r["provider"] == "fdiv_ops" else r["provider"]
    cells = [
        r["op"],
        headline.case_label(r),
        provider,
        fmt.time_spread(r["fwd_bwd_ms"], r["fwd_bwd_p20_ms"], r["fwd_bwd_p80_ms"]),
        fmt.time_ms(r["fwd_ms"]),
        fmt.bandwidth_and_roof(r["gbps"], r["copy_frac"]),
        fmt.mib(r["peak_mem_mb"]),
        *[fmt.speedup(r.get(f"speedup_vs_{base}")) for base in SPEEDUP_BASES],
        fmt.rel_err(r["max_rel_err"]),
    ]
    return "| " + " | ".join(cells) + " |"


def detail_table(path: Path, head: dict, results: list[dict]) -> list[str]:
    loads = [head.get("load_avg_1min"), head.get("load_avg_1min_end")]
    versions = head["versions"]
    peers = ", ".join(f"{name} {versions[name]}" for name in ("trl", "liger_kernel") if versions.get(name))
    lines = [
        f"**{path.name}** ({_config(head)}): {head['device_name']}, {head['dtype']}, preset `{head['preset']}`, "
        f"torch {versions['torch']}{', ' + peers if peers else ''}, {head['created_utc']}; device copy bandwidth "
        f"{fmt.bandwidth(head['copy_gbps'])}"
        + ("" if None in loads else f"; 1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end")
        + ("" if head.get("complete", True) else "; **incomplete run**"),
        "",
        "| op | shape | provider | fwd+bwd (p20–p80) | fwd | GB/s (% roof) | peak mem | × torch | × compile "
        "| max rel err |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes, sources = [], []
    for r in results:
        if r["fwd_bwd_ms"] is None:
            note = f"{r['op']} {r['provider']}: {r['note']}"
            if note not in notes:
                notes.append(note)
            continue
        lines.append(_detail_row(r))
        source = f"{r['op']}{''.join(f' {v}' for v in r.get('params', {}).values())} {r['provider']}: {r['source']}"
        if r["provider"] not in ("fdiv_ops", "compile") and r.get("source") and source not in sources:
            sources.append(source)
    explain = (
        "fwd+bwd: median (p20–p80) of interleaved rounds; % roof: a device copy of the bytes a fused fwd+bwd must "
        "move, timed in the same rounds, over the fwd+bwd time; × torch / × compile: that provider's fwd+bwd time "
        "over this row's (> 1: this row is faster); compile is torch.compile of the torch row's expression"
    )
    lines += [""] + [f"- {n}" for n in [*head.get("notes", []), explain, *sources, *notes]]
    plot = path.with_suffix(".png")  # written by the same run's --plot
    if plot.exists():
        lines += ["", f"![time, speed-up and peak memory, {path.name}](benchmarks/results/{plot.name})"]
    return lines


def render(results_dir: Path) -> str:
    runs = [(p, records) for p in sorted(results_dir.glob("*.json")) if (records := _bench_output(p)) is not None]
    if not runs:
        return "_No results yet: run `python benchmarks/make_readme_table.py --rerun`._"
    files = sorted(((p, *_read(p, records)) for p, records in runs), key=_order)
    lines = [
        "fdiv_ops' forward+backward speed-up over what users run now (> 1: fdiv_ops is faster; the rows "
        "below say what each provider runs):",
        "",
        *headline_table(files),
    ]
    for path, head, results in files:
        lines += ["", *detail_table(path, head, results)]
    return "\n".join(lines)


def updated_readme(readme: str, table: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"README.md needs the marker lines {START} and {END}")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    generated = "<!-- generated by benchmarks/make_readme_table.py from benchmarks/results/*.json; do not edit -->"
    return f"{before}{START}\n{generated}\n\n{table}\n\n{END}{after}"


def rerun(results_dir: Path, names: list[str]) -> int:
    """Re-measure the named results files (all of RUNS by default), each with its plot, one after the other."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p)
    for name in names or list(RUNS):
        if name not in RUNS:
            print(f"--rerun: unknown results file {name!r}; known: {', '.join(RUNS)}", file=sys.stderr)
            return 2
        json_path, plot_path = results_dir / name, (results_dir / name).with_suffix(".png")
        command = [sys.executable, "-m", "fdiv_ops.cli", "bench", *RUNS[name], "--json", str(json_path)]
        print("+", " ".join(command[1:] + ["--plot", str(plot_path)]), file=sys.stderr, flush=True)
        code = subprocess.run([*command, "--plot", str(plot_path)], env=env, check=False).returncode
        if code != 0:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    parser.add_argument(
        "--rerun",
        nargs="*",
        metavar="FILE",
        default=None,
        help=f"re-measure these results files first (default: all of {', '.join(RUNS)})",
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.rerun is not None:
        code = rerun(args.results, args.rerun)
        if code != 0:
            return code
    readme = args.readme.read_text()
    new = updated_readme(readme, render(args.results))
    if args.check:
        if new != readme:
            print(f"{args.readme} is out of date: run python benchmarks/make_readme_table.py", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
