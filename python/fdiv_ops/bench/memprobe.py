"""Subprocess entry of the CPU peak-memory measurement (see memory.py): one provider, every op and size.

    python -m fdiv_ops.bench.memprobe OP[,OP...] PRESET DTYPE PROVIDER THREADS

prints one JSON line {"peak_mb": {op: [MiB or null per case]}, "notes": {op: str | null}}.
"""

from __future__ import annotations

import gc
import json
import sys

import torch

from . import providers, registry
from .memory import rss_growth_mb
from .runner import DTYPES
from .spec import OpBench


def _op_peaks(bench: OpBench, preset: str, dtype: torch.dtype, provider_name: str):
    device = torch.device("cpu")
    peaks: list[float | None] = []
    note = None
    for case in bench.cases(preset, device):
        torch._dynamo.reset()  # as the timing run does: a fresh compile per size
        inputs = providers.require_grads(bench.make_inputs(case, dtype, device))
        try:
            impl = providers.build(bench, case, provider_name, device)
            if isinstance(impl, str):
                peaks.append(None)
                note = impl
                continue
            step = providers.forward_backward_step(impl.fn, inputs)
            step()  # the first call compiles (torch.compile) and fills OpenMP/MKL thread-local buffers
            providers.clear_grads(inputs)
            gc.collect()
            peaks.append(rss_growth_mb(step))
        except Exception as exc:
            peaks.append(None)
            note = f"{type(exc).__name__}: {exc}"
        del inputs
        gc.collect()
    return peaks, note


def main(argv: list[str]) -> int:
    ops, preset, dtype_name, provider_name, threads = argv
    torch.set_num_threads(int(threads))
    declared = registry.declared()
    peaks, notes = {}, {}
    for op in ops.split(","):
        peaks[op], notes[op] = _op_peaks(declared[op], preset, DTYPES[dtype_name], provider_name)
    print(json.dumps({"peak_mb": peaks, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
