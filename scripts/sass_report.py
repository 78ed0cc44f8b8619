#!/usr/bin/env python3
"""Per-kernel machine-code figures of every CUDA kernel of fdiv-ops, read from the built objects.

For each kernel instantiation and each real architecture in the build: registers, stack, local memory,
shared memory (static), the number of SASS instructions (NOP padding excluded), and the number of
local-memory instructions (LDL/STL: register spills, or a stack array that did not fit registers).
The instruction cache of sm_80/sm_90 holds about 128 KB (~8k instructions of 16 bytes); a kernel whose
hot loop is larger than that refetches its own code on every iteration.

    scripts/dev_build.sh cuda                      # builds build/dev-cuda (the objects read here)
    python scripts/sass_report.py                  # writes benchmarks/results/sass.md (+ .json)
    python scripts/sass_report.py --build DIR --json-only --out FILE.json   # e.g. a baseline build

Needs cuobjdump and nvdisasm: from the CUDA toolkit, or `pip install nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm` (both found automatically). `--baseline FILE.json --baseline-label TEXT` adds a
before/after summary; repeat the pair for several earlier builds (newest first).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSN = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?);")
FUNC = re.compile(r"^\s+Function\s*:\s*(\S+)")
ARCH = re.compile(r"^\s*code for (sm_\d+a?)")
RES_ARCH = re.compile(r"^arch = (sm_\d+a?)")
RES_FUNC = re.compile(r"^\s*Function (\S+):")
RES_USE = re.compile(r"(\w+(?:\[\d+\])?):(\d+)")


def find_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name]
    try:
        import nvidia  # the pip wheels nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm

        subs = ("cu13", "cu12", "cuda_cuobjdump")
        candidates += [Path(p) / sub / "bin" / name for p in nvidia.__path__ for sub in subs]
    except ImportError:
        pass
    for c in candidates:
        if c.is_file():
            return str(c)
    sys.exit(f"{name} not found: use the CUDA toolkit's, or `pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`")


def demangle(names: list[str]) -> dict[str, str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(pretty: str) -> str:
    """void fdiv_ops::(anonymous namespace)::dense_kernel<float, true>(...) -> dense_kernel<float, true>"""
    s = re.sub(r"\(anonymous namespace\)::", "", pretty)
    if s.startswith("void "):
        s = s[5:]
    depth, cut = 0, len(s)
    for i, ch in enumerate(s):  # drop the parameter list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    s = s[:cut]
    s = re.sub(r"\bfdiv_ops::(cuda::)?", "", s)
    s = s.replace("__nv_bfloat16", "bf16").replace("__half", "f16")
    return s


def read_object(obj: Path, cuobjdump: str, env: dict) -> dict:
    """{(arch, mangled): {...figures...}} for one object file."""
    figures: dict = defaultdict(dict)
    res = subprocess.run([cuobjdump, "-res-usage", str(obj)], capture_output=True, text=True, env=env, check=True)
    arch = None
    func = None
    for line in res.stdout.splitlines():
        if m := RES_ARCH.match(line):
            arch = m.group(1)
        elif m := RES_FUNC.match(line):
            func = m.group(1)
        elif func and "REG:" in line:
            use = dict(RES_USE.findall(line))
            figures[(arch, func)].update(
                reg=int(use["REG"]), stack=int(use["STACK"]), shared=int(use["SHARED"]), local=int(use["LOCAL"])
            )
            func = None
    sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, env=env, check=True)
    arch = None
    func = None
    for line in sass.stdout.splitlines():
        if m := ARCH.match(line):
            arch = m.group(1)
        elif m := FUNC.match(line):
            func = m.group(1)
            figures[(arch, func)].update(insns=0, lmem=0)
        elif func and (m := INSN.match(line)):
            op = m.group(1).split()
            opcode = op[1] if op[0].startswith("@") else op[0]  # predicated: "@P0 BRA ..."
            if opcode == "NOP":
                continue
            entry = figures[(arch, func)]
            entry["insns"] += 1
            if opcode.startswith(("LDL", "STL")):
                entry["lmem"] += 1
    return figures


def collect(build: Path) -> list[dict]:
    objs = sorted(build.glob("CMakeFiles/_C.dir/csrc/cuda/**/*.cu.o"))
    if not objs:
        sys.exit(f"no CUDA objects under {build}: run scripts/dev_build.sh cuda first")
    cuobjdump = find_tool("cuobjdump")
    env = dict(os.environ)
    env["PATH"] = str(Path(find_tool("nvdisasm")).parent) + os.pathsep + env.get("PATH", "")
    rows = []
    for obj in objs:
        figures = read_object(obj, cuobjdump, env)
        names = demangle(sorted({f for _, f in figures}))
        unit = str(obj.relative_to(build / "CMakeFiles/_C.dir/csrc/cuda")).removesuffix(".o")
        for (arch, func), fig in figures.items():
            if "insns" not in fig:  # a function with resources but no code (should not happen)
                continue
            rows.append({"unit": unit, "arch": arch, "kernel": short_name(names[func]), "mangled": func, **fig})
    rows.sort(key=lambda r: (r["unit"], r["arch"], r["kernel"]))
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Per source, kernel template and architecture: instantiations, the largest, registers, local memory."""
    groups: dict = defaultdict(list)
    for r in rows:
        stem = r["unit"].split("/")[0].split(".")[0]
        groups[(stem, r["kernel"].split("<")[0], r["arch"])].append(r)
    out = [
        "| source | kernel | arch | instances | SASS insns (max) | SASS insns (all) | regs (max) | LDL/STL (all) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (stem, kernel, arch), rs in sorted(groups.items()):
        out.append(
            f"| {stem} | {kernel} | {arch} | {len(rs)} | {max(r['insns'] for r in rs)} | "
            f"{sum(r['insns'] for r in rs)} | {max(r['reg'] for r in rs)} | {sum(r['lmem'] for r in rs)} |"
        )
    return out


def table(rows: list[dict]) -> list[str]:
    out = [
        "| unit | arch | kernel | regs | stack | local | shared | SASS insns | LDL/STL |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['unit']} | {r['arch']} | `{r['kernel']}` | {r['reg']} | {r['stack']} | {r['local']} | "
            f"{r['shared']} | {r['insns']} | {r['lmem']} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, default=ROOT / "build/dev-cuda")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sass.md")
    ap.add_argument(
        "--baseline", type=Path, action="append", default=[], help="a JSON written by --json-only (repeatable)"
    )
    ap.add_argument(
        "--baseline-label", action="append", default=[], help="what each --baseline was built from, in order"
    )
    ap.add_argument("--json-only", action="store_true", help="write only the JSON (to --out)")
    args = ap.parse_args()
    rows = collect(args.build)
    archs = sorted(set(r["arch"] for r in rows))
    if args.json_only:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {len(rows)} kernels to {args.out}")
        return
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    cache = ROOT / args.build / "CMakeCache.txt"
    arch_list = next(
        (ln.split("=", 1)[1] for ln in cache.read_text().splitlines() if ln.startswith("CMAKE_CUDA_ARCHITECTURES")),
        "?",
    )
    lines = [
        "# SASS figures of every CUDA kernel",
        "",
        "Generated by `python scripts/sass_report.py` from the objects of `scripts/dev_build.sh cuda` "
        f"(CMAKE_CUDA_ARCHITECTURES={arch_list}; machine code for {', '.join(archs)}). Per kernel: registers per "
        "thread, stack and local memory (bytes), static shared memory (bytes), SASS instructions (NOP padding "
        "excluded) and local-memory instructions (LDL/STL: spills). Budget: each token-KD kernel <= 4k SASS "
        "instructions (the instruction cache holds ~8k), no LDL/STL.",
        "",
        "## Summary",
        "",
        *summary(rows),
    ]
    for i, path in enumerate(args.baseline):
        label = args.baseline_label[i] if i < len(args.baseline_label) else "an earlier build"
        lines += ["", f"## Before: {label} (`{path.name}`)", "", *summary(json.loads(path.read_text()))]
    lines += ["", "## Every kernel", "", *table(rows), ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {len(rows)} kernels to {args.out} (and {args.out.with_suffix('.json').name})")


if __name__ == "__main__":
    main()
