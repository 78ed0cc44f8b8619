"""The ``fdiv-ops`` command: ``fdiv-ops info``, ``fdiv-ops bench`` and ``fdiv-ops --version``.

    fdiv-ops bench [OP ...] [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--preset tiny|quick|headline|full]
                   [--providers fdiv_ops,torch,compile,trl,liger] [--baseline torch|compile|trl]
                   [--threads N] [--json PATH] [--plot PATH] [--load PATH ...]

With no arguments: every op in this build, the quick preset, on the GPU when one is usable, else the CPU.
Every argument, the --json and --plot destinations included, is checked before anything is measured
(exit code 2 and a message naming what to change).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import __version__, _cuda_status
from ._backend import build_info, cuda_available

PRESETS = ("tiny", "quick", "headline", "full")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _info(_args) -> int:
    from .bench import registry

    print(f"fdiv-ops {__version__}, torch {torch.__version__}")
    for key, value in build_info().items():
        print(f"  {key}: {value}")
    print(f"  torch threads: {torch.get_num_threads()}")
    print("\n".join(f"  {line}" for line in _cuda_status.info_lines()))
    if cuda_available():
        for index in range(torch.cuda.device_count()):
            print(f"  device cuda:{index}: {torch.cuda.get_device_name(index)}")
    print(f"  benchmarked ops: {', '.join(registry.available()) or 'none'}")
    return 0


def _error(message: str) -> int:
    print(f"fdiv-ops bench: error: {message}", file=sys.stderr)
    return 2


def _json_safe(value):
    """inf / NaN are not JSON: they become null (the record's note says why where it matters)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _destination_problem(path: str, option: str, suffixes: tuple[str, ...] = ()) -> str | None:
    """Why ``path`` cannot be written later, or None: checked before a run, so that a typo costs seconds,
    not the measurements."""
    target = Path(path)
    if target.is_dir():
        return f"{option} {path} is a folder; give a file name"
    if suffixes and target.suffix.lower() not in suffixes:
        return f"{option} {path}: the file name must end in {', '.join(suffixes)}"
    folder = target.parent
    if not folder.is_dir():
        return f"{option} {path}: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{option} {path}: the folder {folder} is not writable"
    if target.exists() and not os.access(target, os.W_OK):
        return f"{option} {path}: the file exists and is not writable"
    return None


def _write_json(path: str, records: list[dict]) -> None:
    """Atomically (a temporary file, then rename): a reader or a kill never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".fdiv-ops-bench-", suffix=".tmp", delete=False) as fh:
        json.dump(_json_safe(records), fh, indent=1)
        fh.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(fh.name, 0o666 & ~umask)  # as open() would have made it, not the temporary file's 0600
    os.replace(fh.name, path)


def _save(records: list[dict], json_path: str | None, plot_path: str | None) -> int:
    """Write the results; where that fails after all, keep them in a temporary file and say where (exit 1)."""
    from .bench.plot import write_png

    code = 0
    if json_path:
        try:
            _write_json(json_path, records)
        except OSError as exc:
            fallback = os.path.join(tempfile.gettempdir(), f"fdiv-ops-bench-{int(time.time())}.json")
            with open(fallback, "w") as fh:
                json.dump(_json_safe(records), fh, indent=1)
            print(f"fdiv-ops bench: error: could not write {json_path} ({exc}); saved to {fallback}", file=sys.stderr)
            code = 1
    if plot_path:
        try:
            write_png(records, plot_path)
        except OSError as exc:
            print(f"fdiv-ops bench: error: could not write {plot_path} ({exc})", file=sys.stderr)
            code = 1
    return code


def _check_args(args) -> str | None:
    """Everything a run needs, checked up front: the first problem found, or None."""
    from .bench import registry
    from .bench.peers import trl_unavailable
    from .bench.plot import matplotlib_missing
    from .bench.providers import BASELINES, PROVIDERS

    for path, option, suffixes in ((args.json, "--json", ()), (args.plot, "--plot", PLOT_SUFFIXES)):
        problem = path and _destination_problem(path, option, suffixes)
        if problem:
            return problem
    if args.json and args.plot and os.path.abspath(args.json) == os.path.abspath(args.plot):
        return "--json and --plot name the same file"
    if args.plot and matplotlib_missing():
        return matplotlib_missing()
    if args.load:
        missing_files = [path for path in args.load if not os.path.isfile(path)]
        return f"--load {missing_files[0]}: no such file" if missing_files else None
    available, missing = registry.available(), registry.missing()
    valid_ops = ", ".join(available) or "none"
    for op in args.ops:
        if op in missing:
            return (
                f"op {op!r} is not in this build of fdiv_ops (fdiv_ops.{missing[op]} is missing); "
                f"valid ops: {valid_ops}"
            )
        if op not in available:
            return f"unknown op {op!r}; valid ops: {valid_ops}"
    names = [p.strip() for p in args.providers.split(",") if p.strip()]
    for name in names:
        if name not in PROVIDERS:
            return f"unknown provider {name!r}; valid providers: {', '.join(PROVIDERS)}"
    if not names:
        return f"--providers is empty; valid providers: {', '.join(PROVIDERS)}"
    if args.baseline is None:  # not given: the first of torch, compile, trl that runs (torch by default)
        args.baseline = next((name for name in BASELINES if name in names), "torch")
    elif args.baseline not in names:
        return f"--baseline {args.baseline} is not among --providers ({', '.join(names)}); add it"
    if args.baseline == "trl" and trl_unavailable():
        return f"--baseline trl: {trl_unavailable()}; or choose --baseline {' or '.join(BASELINES[:2])}"
    if args.device == "cuda" and not cuda_available():
        return (
            "--device cuda asked for, but no CUDA device is usable by fdiv_ops "
            f"(torch CUDA: {torch.version.cuda or 'none'}, cuda_status: "
            f"{build_info().get('cuda_status')}); use --device cpu"
        )
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    return None


def _bench(args) -> int:
    from .bench import registry, report, runner

    problem = _check_args(args)
    if problem:
        return _error(problem)
    if args.load:  # show (and plot, and write merged) earlier runs' records
        runs = []
        for path in args.load:
            with open(path) as fh:
                runs.append(json.load(fh))
        records = runs[0] if len(runs) == 1 else runner.merge(runs)
        code = _save(records, args.json if len(runs) > 1 else None, args.plot)
        report.print_table(records)
        return code
    available, missing = registry.available(), registry.missing()
    ops = list(dict.fromkeys(args.ops)) or list(available)
    provider_names = list(dict.fromkeys(p.strip() for p in args.providers.split(",") if p.strip()))
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # fdiv_ops' CPU kernels follow torch's thread count
    device = torch.device(args.device or ("cuda" if cuda_available() else "cpu"))

    def keep_so_far(records: list[dict]) -> None:  # a run cut short (a time limit) keeps its finished sizes
        if args.json:
            try:
                _write_json(args.json, records)
            except OSError as exc:  # not fatal: the final write tries again, then falls back to a temp file
                print(f"fdiv-ops bench: warning: could not update {args.json} ({exc})", file=sys.stderr)

    total = runner.count_steps(ops, device, args.preset, provider_names)
    with report.ProgressDisplay(total) as progress:
        records = runner.run(
            ops,
            device,
            args.dtype,
            args.preset,
            provider_names,
            progress=progress,
            baseline=args.baseline,
            command=args.invocation,
            on_case=keep_so_far,
        )
    extra = [f"not in this build: {op} (waits for fdiv_ops.{api})" for op, api in missing.items()]
    extra += [f"{op}: {available[op].roofline_note}" for op in ops if available[op].roofline_note]
    # Files first: a reader that closes the pipe early (`| head`) must not cost the measurements.
    code = _save(records, args.json, args.plot)
    report.print_table(records, extra)
    return code


def main(argv: list[str] | None = None) -> int:
    from .bench.providers import BASELINES, PROVIDERS
    from .bench.runner import DTYPES

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="fdiv-ops", description="fused f-divergence losses: info and benchmarks")
    parser.add_argument("--version", action="version", version=f"fdiv-ops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what was built and which devices are usable").set_defaults(fn=_info)
    bench = sub.add_parser(
        "bench",
        help="time fdiv_ops against eager PyTorch, torch.compile, TRL and Liger-Kernel",
        description="Is fdiv_ops faster than what you use now? Forward and forward+backward time (median, "
        "p20-p80), bandwidth against the measured copy bandwidth, peak memory, speed-ups and max relative "
        "error vs float64, per op, size and provider. Providers: fdiv_ops; torch (the eager expression users "
        "write, e.g. F.kl_div on log_softmax); compile (torch.compile of it); trl (TRL's own function, when "
        "trl is installed); liger (Liger-Kernel's nearest op, on CUDA).",
    )
    bench.add_argument("ops", nargs="*", metavar="OP", help="ops to run, in this order (default: every op)")
    bench.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when fdiv_ops can use a GPU, else cpu"
    )
    bench.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    bench.add_argument(
        "--preset",
        choices=PRESETS,
        default="quick",
        help="sizes: quick (default, about 2 min on a 2-core CPU), headline (the sizes peers publish, for "
        "a GPU), full, tiny (tests)",
    )
    bench.add_argument(
        "--providers",
        default=",".join(PROVIDERS),
        help=f"comma-separated subset of {','.join(PROVIDERS)} (default: all; trl needs trl installed, "
        "liger needs CUDA and liger-kernel; those missing are skipped with a note)",
    )
    bench.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="the reference of the headline speed-up and of the plot's speed-up panel (default: torch, or the "
        "first of compile, trl among --providers)",
    )
    bench.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and fdiv_ops (default: torch's default, one per core)",
    )
    bench.add_argument(
        "--json", default=None, metavar="PATH", help="write the records to this JSON file (after every size)"
    )
    bench.add_argument(
        "--plot", default=None, metavar="PATH", help="write time, speed-up and memory plots to this .png/.svg/.pdf"
    )
    bench.add_argument(
        "--load",
        action="append",
        metavar="PATH",
        help="show (and --plot) the records of an earlier --json, measuring nothing; given several times, "
        "merge the runs (later runs add the providers the earlier lack) and write them to --json",
    )
    bench.set_defaults(fn=_bench)
    args = parser.parse_args(argv)
    args.invocation = ["fdiv-ops", *argv]  # recorded in the JSON header
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
