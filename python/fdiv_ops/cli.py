"""The ``fdiv-ops`` command: ``fdiv-ops info`` and ``fdiv-ops bench``.

    fdiv-ops bench [OP ...] [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--preset tiny|quick|full]
                   [--providers fdiv_ops,eager,compile,liger] [--threads N] [--json PATH] [--plot PATH]

With no arguments: every op in this build, the quick preset, on the GPU when one is usable, else the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from . import __version__
from ._backend import build_info, cuda_available


def _info(_args) -> int:
    from .bench import registry

    print(f"fdiv-ops {__version__}, torch {torch.__version__}")
    for key, value in build_info().items():
        print(f"  {key}: {value}")
    print(f"  torch threads: {torch.get_num_threads()}")
    print(f"  torch CUDA: {torch.version.cuda or 'none'}, usable by fdiv_ops: {cuda_available()}")
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


def _bench(args) -> int:
    from .bench import registry, report, runner
    from .bench.plot import matplotlib_missing, write_png
    from .bench.providers import PROVIDERS

    available, missing = registry.available(), registry.missing()
    valid_ops = ", ".join(available) or "none"
    for op in args.ops:
        if op in missing:
            return _error(
                f"op {op!r} is not in this build of fdiv_ops (fdiv_ops.{missing[op]} is missing); "
                f"valid ops: {valid_ops}"
            )
        if op not in available:
            return _error(f"unknown op {op!r}; valid ops: {valid_ops}")
    ops = list(dict.fromkeys(args.ops)) or list(available)
    provider_names = [p.strip() for p in args.providers.split(",") if p.strip()]
    for name in provider_names:
        if name not in PROVIDERS:
            return _error(f"unknown provider {name!r}; valid providers: {', '.join(PROVIDERS)}")
    if not provider_names:
        return _error(f"--providers is empty; valid providers: {', '.join(PROVIDERS)}")
    provider_names = list(dict.fromkeys(provider_names))
    if args.device == "cuda" and not cuda_available():
        return _error(
            "--device cuda asked for, but no CUDA device is usable by fdiv_ops "
            f"(torch CUDA: {torch.version.cuda or 'none'}, cuda_status: "
            f"{build_info().get('cuda_status')}); use --device cpu"
        )
    if args.plot and matplotlib_missing():
        return _error(matplotlib_missing())
    if args.threads is not None:
        if args.threads < 1:
            return _error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # fdiv_ops' CPU kernels follow torch's thread count
    device = torch.device(args.device or ("cuda" if cuda_available() else "cpu"))

    total = runner.count_steps(ops, device, args.preset, provider_names)
    with report.ProgressDisplay(total) as progress:
        records = runner.run(ops, device, args.dtype, args.preset, provider_names, progress=progress)
    extra = [f"not in this build: {op} (waits for fdiv_ops.{api})" for op, api in missing.items()]
    extra += [f"{op}: {available[op].roofline_note}" for op in ops if available[op].roofline_note]
    # Files first: a reader that closes the pipe early (`| head`) must not cost the measurements.
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_json_safe(records), fh, indent=1)
            fh.write("\n")
    if args.plot:
        write_png(records, args.plot)
    report.print_table(records, extra)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .bench.providers import PROVIDERS
    from .bench.runner import DTYPES

    parser = argparse.ArgumentParser(prog="fdiv-ops", description="fused f-divergence losses: info and benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what was built and which devices are usable").set_defaults(fn=_info)
    bench = sub.add_parser(
        "bench",
        help="time fdiv_ops against eager PyTorch, torch.compile and Liger-Kernel",
        description="Forward and forward+backward time, bandwidth against the measured copy bandwidth, "
        "peak memory, speed-ups and max relative error vs float64, per op, size and provider.",
    )
    bench.add_argument("ops", nargs="*", metavar="OP", help="ops to run (default: every op in this build)")
    bench.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when fdiv_ops can use a GPU, else cpu"
    )
    bench.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    bench.add_argument(
        "--preset",
        choices=["tiny", "quick", "full"],
        default="quick",
        help="sizes: quick (default, < 2 min on a 2-core CPU), full, tiny (tests)",
    )
    bench.add_argument(
        "--providers",
        default=",".join(PROVIDERS),
        help=f"comma-separated subset of {','.join(PROVIDERS)} (default: all; liger needs CUDA)",
    )
    bench.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and fdiv_ops (default: torch's default, one per core)",
    )
    bench.add_argument("--json", default=None, metavar="PATH", help="write the records to this JSON file")
    bench.add_argument("--plot", default=None, metavar="PATH", help="write speed-up and memory plots to this PNG")
    bench.set_defaults(fn=_bench)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
