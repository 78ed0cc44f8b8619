"""The ``fdiv-ops`` command: ``fdiv-ops info`` and ``fdiv-ops bench``."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from . import __version__
from ._backend import build_info, cuda_available
from .bench import f_distill as bench_f_distill
from .bench.timing import measure_ms

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _info(_args) -> int:
    print(f"fdiv-ops {__version__}, torch {torch.__version__}")
    for key, value in build_info().items():
        print(f"  {key}: {value}")
    print(f"  torch threads: {torch.get_num_threads()}")
    if cuda_available():
        print(f"  device: {torch.cuda.get_device_name()}")
    return 0


def _bench(args) -> int:
    device = torch.device(args.device or ("cuda" if cuda_available() else "cpu"))
    if device.type == "cuda" and not cuda_available():
        print("error: --device cuda asked for, but no CUDA device is usable (fdiv_ops.cuda_available() is False)",
              file=sys.stderr)
        return 2
    dtype = _DTYPES[args.dtype]
    records = []
    for batch, sample in bench_f_distill.PRESETS[args.preset]:
        x, t, f, lg = bench_f_distill.make_inputs(batch, sample, dtype, device)
        for name, loss_fn in bench_f_distill.providers().items():
            xg = x.clone().requires_grad_()

            def step():
                xg.grad = None
                loss_fn(xg, t, f, lg).backward()

            med, p20, p80 = measure_ms(step, device)
            gbps = bench_f_distill.bytes_moved(x) / (med * 1e-3) / 1e9
            records.append(dict(op="f_distill", shape=[batch, *sample], dtype=args.dtype, device=device.type,
                                provider=name, fwd_bwd_ms=med, p20_ms=p20, p80_ms=p80, gbps=gbps))
    base = {(r["shape"][0], tuple(r["shape"])): r["fwd_bwd_ms"] for r in records if r["provider"] == "eager"}
    print(f"{'op':10} {'shape':18} {'provider':9} {'fwd+bwd ms':>11} {'p20-p80':>15} {'GB/s':>7} {'x eager':>8}")
    for r in records:
        speedup = base[(r["shape"][0], tuple(r["shape"]))] / r["fwd_bwd_ms"]
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['op']:10} {shape:18} {r['provider']:9} {r['fwd_bwd_ms']:11.2f} "
              f"{r['p20_ms']:7.2f}-{r['p80_ms']:<7.2f} {r['gbps']:7.1f} {speedup:8.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fdiv-ops", description="fused f-divergence losses: info and benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what was built and which devices are usable").set_defaults(fn=_info)
    bench = sub.add_parser("bench", help="time fdiv_ops against eager PyTorch and torch.compile")
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None)
    bench.add_argument("--dtype", choices=list(_DTYPES), default="fp32")
    bench.add_argument("--preset", choices=["quick", "full"], default="quick")
    bench.add_argument("--json", default=None, help="write the records to this JSON file")
    bench.set_defaults(fn=_bench)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
