"""Subprocess entry of the CPU peak-memory measurement (see memory.py): one op, one provider, every size.

    python -m fdiv_ops.bench.memprobe OP PRESET DTYPE PROVIDER THREADS

prints one JSON line {"peak_mb": [MiB or null per case], "note": str | null}.
"""

from __future__ import annotations

import gc
import json
import sys

import torch

from . import providers, registry
from .memory import rss_growth_mb
from .runner import DTYPES


def main(argv: list[str]) -> int:
    op, preset, dtype_name, provider_name, threads = argv
    torch.set_num_threads(int(threads))
    bench = registry.declared()[op]
    device = torch.device("cpu")
    peaks: list[float | None] = []
    note = None
    for case in bench.cases(preset, device):
        fn = providers.build(bench, case, provider_name, device)
        if isinstance(fn, str):
            peaks.append(None)
            note = fn
            continue
        inputs = providers.require_grads(bench.make_inputs(case, DTYPES[dtype_name], device))
        step = providers.forward_backward_step(fn, inputs)
        try:
            step()  # the first call compiles (torch.compile) and fills OpenMP/MKL thread-local buffers
            step()
            providers._clear_grads(inputs)
            gc.collect()
            peaks.append(rss_growth_mb(step))
        except Exception as exc:  # noqa: BLE001 -- reported, not raised: the timing run reports the same failure
            peaks.append(None)
            note = f"{type(exc).__name__}: {exc}"
        del inputs, step
        gc.collect()
    print(json.dumps({"peak_mb": peaks, "note": note}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
