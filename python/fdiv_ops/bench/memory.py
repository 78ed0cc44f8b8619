"""Peak memory of one forward+backward, per provider.

CUDA: ``torch.cuda.max_memory_allocated`` over one step, minus what was allocated before it (the inputs).

CPU: there is no allocator counter, so each provider runs in a fresh Python subprocess
(``python -m fdiv_ops.bench.memprobe``) that, per op and size, creates the inputs, warms the provider up
(torch.compile compiles there), resets the kernel's peak-RSS mark (``/proc/self/clear_refs`` = 5) and
reports VmHWM - VmRSS over one step: the growth of the resident set above the baseline with inputs made.
The child runs with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB so that glibc returns freed tensors to
the OS instead of keeping them in its heap, where the next run would reuse them unseen.
Linux only; elsewhere the peak is reported as not measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

CPU_NOTE = (
    "CPU peak MB (MiB, 2^20 bytes): growth of the peak RSS of a fresh subprocess per provider during one "
    "fwd+bwd after warm-up, relative to its RSS once the inputs exist"
)
CUDA_NOTE = (
    "CUDA peak MB (MiB, 2^20 bytes): torch.cuda.max_memory_allocated during one fwd+bwd, minus the "
    "memory allocated before it"
)

_MIB = float(1 << 20)


def cuda_peak_mb(step: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / _MIB


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def rss_growth_mb(step: Callable[[], object]) -> float:
    """Peak RSS growth over step(), in MiB, in this process (used inside the probe subprocess)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) * 1024 / _MIB


def cpu_peak_mb(ops: list[str], preset: str, dtype: str, provider: str) -> tuple[dict, dict]:
    """({op: [peak RSS growth in MiB or None per case]}, {op: note}) of ``provider``, measured in one
    fresh subprocess."""
    if not (sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")):
        return {}, dict.fromkeys(ops, "peak RSS needs Linux /proc (clear_refs)")
    package_parent = str(Path(__file__).resolve().parents[2])  # the directory holding fdiv_ops/
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 << 10)
    command = [
        sys.executable,
        "-m",
        "fdiv_ops.bench.memprobe",
        ",".join(ops),
        preset,
        dtype,
        provider,
        str(torch.get_num_threads()),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, dict.fromkeys(ops, f"memory probe failed: {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["peak_mb"], result["notes"]
