#!/usr/bin/env python3
"""Clean-build time of fdiv_ops._C per translation unit, in CPU seconds (load-independent).

The development machine is shared, so wall-clock times of a build swing with the load; the CPU time each
compiler process tree uses does not. This script configures a fresh build directory whose compiler launcher
is this script itself (it runs the compiler and records user + system time of the whole process tree:
nvcc's cicc, ptxas, fatbinary, the host compiler), builds it, and reports per unit, plus the wall time an
idle machine with `--cores` cores would take (units packed greedily, longest first: a lower bound on what
ninja achieves, which is close to it when no unit dominates).

    python scripts/build_times.py                                    # CUDA, dev archs 80-real;90
    python scripts/build_times.py --archs "80-real;86-real;89-real;90-real;100-real;120" --out FILE.md
"""

from __future__ import annotations

import argparse
import heapq
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(log: str, cmd: list[str]) -> int:
    """Compiler-launcher mode: run cmd, append '<cpu s> <wall s> <output>' to log."""
    t0 = time.monotonic()
    rc = subprocess.call(cmd)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = cmd[cmd.index("-o") + 1] if "-o" in cmd else cmd[-1]
    with open(log, "a") as f:
        f.write(f"{usage.ru_utime + usage.ru_stime:.2f} {time.monotonic() - t0:.2f} {out}\n")
    return rc


def idle_wall(times: list[float], cores: int) -> float:
    """Longest-processing-time-first packing of the units on `cores` workers."""
    load = [0.0] * cores
    for t in sorted(times, reverse=True):
        heapq.heapreplace(load, load[0] + t)
    return max(load)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--launch":
        sys.exit(launch(sys.argv[2], sys.argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="80-real;90", help="CMAKE_CUDA_ARCHITECTURES")
    ap.add_argument("--cuda", default="ON", choices=["ON", "OFF"])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", type=Path, help="append a markdown table here")
    ap.add_argument("--keep", type=Path, help="build here (kept) instead of a temporary directory")
    ap.add_argument("--source", type=Path, default=ROOT, help="the source tree (e.g. an export of main)")
    args = ap.parse_args()
    build = args.keep or Path(tempfile.mkdtemp(prefix="fdiv-build-times-"))
    if build.exists():
        shutil.rmtree(build)
    log = build.parent / f"{build.name}.units.log"
    log.unlink(missing_ok=True)
    launcher = f"{sys.executable};{Path(__file__).resolve()};--launch;{log}"
    pybind = subprocess.check_output([sys.executable, "-m", "pybind11", "--cmakedir"], text=True).strip()
    subprocess.check_call(
        [
            "cmake", "-S", str(args.source), "-B", str(build), "-G", "Ninja", f"-DFDIV_OPS_CUDA={args.cuda}",
            f"-DCMAKE_CUDA_ARCHITECTURES={args.archs}", f"-Dpybind11_DIR={pybind}",
            f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
            f"-DCMAKE_CUDA_COMPILER_LAUNCHER={launcher}",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    t0 = time.monotonic()
    subprocess.check_call(["cmake", "--build", str(build), "-j", str(os.cpu_count())], stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    rows = []
    for line in log.read_text().splitlines():
        cpu, unit_wall, out = line.split(maxsplit=2)
        if "_C.dir/" not in out:  # configure-time compiler checks
            continue
        rows.append((float(cpu), float(unit_wall), out.split("_C.dir/")[-1].removesuffix(".o")))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    cuda_units = [r for r in rows if r[2].endswith(".cu")]
    lines = [
        f"### {'CUDA ' + args.archs if args.cuda == 'ON' else 'CPU only'} ({args.source.name})",
        "",
        f"{len(rows)} units, {total:.0f} CPU s in all ({sum(r[0] for r in cuda_units):.0f} s CUDA); "
        f"idle {args.cores}-core estimate {idle_wall([r[0] for r in rows], args.cores):.0f} s; this run's "
        f"wall clock {wall:.0f} s at load average {os.getloadavg()[0]:.1f} (shared machine).",
        "",
        "| unit | CPU s | wall s (this run) |",
        "|---|---:|---:|",
        *(f"| {u} | {c:.1f} | {w:.1f} |" for c, w, u in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")
    if not args.keep:
        shutil.rmtree(build, ignore_errors=True)
        log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
