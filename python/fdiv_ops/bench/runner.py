"""The benchmark loop: for each op, size and provider, time forward and forward+backward, measure the
error against the float64 reference and the peak memory, and derive bandwidth and speed-ups.

Returns plain dict records (the ``--json`` schema): one header, then one record per
(op, shape, dtype, device, provider); a metric that was not measured is None, with a ``note`` saying why.

header:  record="header", schema_version (2), created_utc, complete (false while a run is under way: the
         CLI rewrites --json after every size), command, device, device_name, copy_gbps (large-buffer
         device copy), dtype, preset, ops, providers, baseline (the reference of the headline speed-up),
         threads, load_avg_1min (+ _end), versions {fdiv_ops, torch, python, cuda, trl, liger_kernel},
         build_info, notes (how peak memory and the error are defined)
result:  record="result", op, shape, params (e.g. divergence), dtype, device, provider, source (what ran,
         e.g. "F.kl_div(...)"), fwd_ms / fwd_p20_ms / fwd_p80_ms, fwd_bwd_ms / fwd_bwd_p20_ms /
         fwd_bwd_p80_ms, reps, warmup_s (first call, torch.compile's compile included), bytes_moved (by a
         fused fwd+bwd), gbps (bytes_moved / fwd_bwd time), copy_ms (a device copy of bytes_moved, same
         rounds), copy_frac (copy_ms / fwd_bwd_ms), peak_mem_mb (MiB), speedup_vs_<torch|compile|trl>
         (fwd+bwd time of that provider / this one's), fwd_speedup_vs_<...> (forward only), max_rel_err,
         note (why a value is missing, or a provider skipped or failed)
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable

import torch

import fdiv_ops

from . import memory, providers, registry
from .roofline import copy_bandwidth_gbps
from .spec import Case, OpBench
from .timing import PLANS, measure_interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

MAX_REL_ERR_NOTE = (
    "max rel err: max over the output and every input gradient of max|x - ref| / max|ref|, ref = "
    "fdiv_ops.reference (the package's generic eager mirror, never timed) in float64 on the same inputs"
)
SCHEMA_VERSION = 2

Progress = Callable[[str], None]  # called as each unit of work starts, with what it is


def _threads() -> str:
    count = torch.get_num_threads()
    return f"{count} thread{'s' if count != 1 else ''}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({_threads()})"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({_threads()})"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def header(
    device: torch.device,
    dtype: str,
    preset: str,
    provider_names: list[str],
    ops: list[str],
    baseline: str = "torch",
    command: list[str] | None = None,
) -> dict:
    return {
        "record": "header",
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "command": command,
        "device": device.type,
        "device_name": device_name(device),
        "copy_gbps": copy_bandwidth_gbps(device),
        "dtype": dtype,
        "preset": preset,
        "ops": ops,
        "providers": provider_names,
        "baseline": baseline,
        "threads": torch.get_num_threads(),
        # Others' work on a shared machine inflates CPU timings: the 1-minute load average says how much.
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": {
            "fdiv_ops": fdiv_ops.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "trl": _version("trl"),
            "liger_kernel": _version("liger-kernel"),
        },
        "build_info": {k: v for k, v in fdiv_ops.build_info().items()},
        "notes": [MAX_REL_ERR_NOTE, memory.CUDA_NOTE if device.type == "cuda" else memory.CPU_NOTE],
    }


def _empty_record(bench: OpBench, case: Case, dtype: str, device: torch.device, provider: str) -> dict:
    return {
        "record": "result",
        "op": bench.name,
        "shape": list(case.shape),
        "params": dict(case.params),
        "dtype": dtype,
        "device": device.type,
        "provider": provider,
        "source": None,
        "fwd_ms": None,
        "fwd_p20_ms": None,
        "fwd_p80_ms": None,
        "fwd_bwd_ms": None,
        "fwd_bwd_p20_ms": None,
        "fwd_bwd_p80_ms": None,
        "reps": None,
        "warmup_s": None,
        "bytes_moved": bench.bytes_moved(case, DTYPES[dtype]),
        "gbps": None,
        "copy_ms": None,
        "copy_frac": None,
        "peak_mem_mb": None,
        **{f"speedup_vs_{base}": None for base in providers.BASELINES},
        **{f"fwd_speedup_vs_{base}": None for base in providers.BASELINES},
        "max_rel_err": None,
        "note": None,
    }


def _free_bytes(device: torch.device) -> int | None:
    """Memory free for the oracle: the CUDA device's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


_ORACLE_TENSORS = 16  # float64 tensors of the largest size the generic reference holds at once, fwd+bwd


def _oracle_too_big(bench: OpBench, case: Case, device: torch.device) -> str | None:
    if bench.oracle_numel is None:
        return None
    need, free = _ORACLE_TENSORS * 8 * bench.oracle_numel(case), _free_bytes(device)
    if free is None or need <= free:
        return None
    return (
        f"max_rel_err not measured at this size: the float64 oracle would need ~{need / 2**30:.0f} GiB, "
        f"{free / 2**30:.0f} GiB free (smaller sizes and the tests check correctness)"
    )


def _reference_outputs(bench: OpBench, case: Case, inputs) -> tuple[list[torch.Tensor] | None, str | None]:
    """(the float64 reference's output and gradients, None) or (None, why max_rel_err is not measured)."""
    eager = bench.reference(case)
    if eager is None:
        return None, f"max_rel_err not measured: fdiv_ops.reference has no {bench.name} yet"
    too_big = _oracle_too_big(bench, case, inputs.args[0].device)
    if too_big is not None:
        return None, too_big
    try:
        return providers.outputs_and_grads(eager, providers.upcast(inputs)), None
    except Exception as exc:
        if inputs.args[0].device.type == "cuda":
            torch.cuda.empty_cache()
        return None, f"max_rel_err not measured: the float64 reference failed ({type(exc).__name__})"


def _prepare(record: dict, fn, inputs, want) -> None:
    """The untimed first call (torch.compile compiles here) and the error check."""
    t0 = time.perf_counter()
    providers.forward_backward_step(fn, inputs)()
    record["warmup_s"] = time.perf_counter() - t0
    if want is not None:
        record["max_rel_err"] = providers.max_rel_err(providers.outputs_and_grads(fn, inputs), want)
        if record["max_rel_err"] == float("inf"):
            record["note"] = "output or gradient not finite where the float64 reference is"


def _time(records: dict[str, dict], fns: dict, inputs, device: torch.device, plan) -> None:
    """fwd and fwd+bwd of every ready provider, interleaved in rounds (timing.measure_interleaved)."""
    # The roofline of this size, timed in the same rounds: a device copy moving the same bytes (it reads
    # half and writes half). On a shared CPU the load drifts, so a copy bandwidth measured once at the
    # start can be off by several times for a given size; the header keeps that one for reference.
    any_record = next(iter(records.values()))
    copy_elems = max(1, any_record["bytes_moved"] // 8)  # float32: 4 bytes read + 4 written per element
    buffers = [torch.ones(copy_elems, dtype=torch.float32, device=device)]
    buffers.append(torch.empty_like(buffers[0]))
    steps = {("copy", "copy"): lambda: buffers[1].copy_(buffers[0])}
    for name, fn in fns.items():
        steps[(name, "fwd")] = providers.forward_step(fn, inputs)
        steps[(name, "fwd_bwd")] = providers.forward_backward_step(fn, inputs)
    timings = measure_interleaved(steps, device, plan)
    buffers.clear()  # free them before the peak-memory step
    copy_ms = timings[("copy", "copy")].median_ms
    for name in fns:
        record, fwd, fwd_bwd = records[name], timings[(name, "fwd")], timings[(name, "fwd_bwd")]
        record.update(
            fwd_ms=fwd.median_ms,
            fwd_p20_ms=fwd.p20_ms,
            fwd_p80_ms=fwd.p80_ms,
            fwd_bwd_ms=fwd_bwd.median_ms,
            fwd_bwd_p20_ms=fwd_bwd.p20_ms,
            fwd_bwd_p80_ms=fwd_bwd.p80_ms,
            reps=fwd_bwd.reps,
        )
        record["gbps"] = record["bytes_moved"] / (fwd_bwd.median_ms * 1e-3) / 1e9
        record["copy_ms"] = copy_ms
        record["copy_frac"] = copy_ms / fwd_bwd.median_ms  # = gbps / (bandwidth of the same-size copy)
        if device.type == "cuda":
            providers.clear_grads(inputs)  # the last timed run's gradients must not count as the baseline
            record["peak_mem_mb"] = memory.cuda_peak_mb(steps[(name, "fwd_bwd")], device)


def _speedups(records: list[dict]) -> None:
    """speedup_vs_<base>: fwd+bwd (the table's); fwd_speedup_vs_<base>: forward only (JSON only)."""
    by_provider = {r["provider"]: r for r in records}
    for r in records:
        if r["fwd_bwd_ms"] is None:
            continue
        for base in providers.BASELINES:
            ref = by_provider.get(base)
            if ref is not None and ref["fwd_bwd_ms"] is not None:
                r[f"speedup_vs_{base}"] = ref["fwd_bwd_ms"] / r["fwd_bwd_ms"]
                r[f"fwd_speedup_vs_{base}"] = ref["fwd_ms"] / r["fwd_ms"]


def count_steps(
    ops: list[str], device: torch.device, preset: str, provider_names: list[str], measure_memory: bool = True
) -> int:
    """How many times ``run`` calls ``progress``: per (op, size) once per provider (its first call and
    error check) and once for the interleaved timing, plus once per provider for its CPU memory
    subprocess."""
    known = registry.available()
    memory_steps = len(provider_names) if measure_memory and device.type == "cpu" else 0
    return sum(len(known[op].cases(preset, device)) * (len(provider_names) + 1) for op in ops) + memory_steps


def _failed(exc: Exception) -> str:
    return f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _run_case(
    bench: OpBench,
    case: Case,
    device: torch.device,
    dtype: str,
    provider_names: list[str],
    plan,
    progress: Progress | None,
) -> list[dict]:
    torch._dynamo.reset()  # a fresh compile per size: no recompile limit across sizes
    inputs = providers.require_grads(bench.make_inputs(case, DTYPES[dtype], device))
    want, no_reference = _reference_outputs(bench, case, inputs)
    records, ready = {}, {}
    for name in provider_names:
        if progress is not None:
            progress(f"{bench.name} {case.label} {name}")
        record = records[name] = _empty_record(bench, case, dtype, device, name)
        try:
            impl = providers.build(bench, case, name, device)  # may import trl or liger_kernel, whose APIs move
            if isinstance(impl, str):
                record["note"] = f"skipped: {impl}"
                continue
            record["source"] = impl.source
            _prepare(record, impl.fn, inputs, want)
            ready[name] = impl.fn
            record["note"] = record["note"] or no_reference
        except Exception as exc:
            record["note"] = _failed(exc)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # an out-of-memory provider must not starve the next one
    if progress is not None:
        progress(f"{bench.name} {case.label} timing")
    if ready:
        try:
            _time(records, ready, inputs, device, plan)
        except Exception as exc:
            for name in ready:
                records[name]["note"] = _failed(exc)
    results = list(records.values())
    _speedups(results)
    return results


def _cpu_memory(
    results: list[dict], ops: list[str], preset: str, dtype: str, provider_names: list[str], progress: Progress | None
) -> None:
    """Fill peak_mem_mb of the CPU records: one fresh subprocess per provider, covering every op and size
    (the probe resets the peak-RSS mark before each size)."""
    for name in provider_names:
        if progress is not None:
            progress(f"peak memory {name}")
        mine = [r for r in results if r["provider"] == name]
        if all(r["fwd_bwd_ms"] is None for r in mine):
            continue  # skipped or failed everywhere: nothing to measure
        peaks, notes = memory.cpu_peak_mb(ops, preset, dtype, name)
        for op in ops:
            op_records = [r for r in mine if r["op"] == op]  # in case order, as the probe measures them
            op_peaks = peaks.get(op) or [None] * len(op_records)
            for record, peak in zip(op_records, op_peaks):
                if record["fwd_bwd_ms"] is None:
                    continue
                record["peak_mem_mb"] = peak
                if peak is None and not record["note"]:
                    record["note"] = notes.get(op) or "peak memory not measured"


def run(
    ops: list[str],
    device: torch.device,
    dtype: str,
    preset: str,
    provider_names: list[str],
    *,
    measure_memory: bool = True,
    progress: Progress | None = None,
    baseline: str = "torch",
    command: list[str] | None = None,
    on_case: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """[header, record, ...] for every (op, size of the preset, provider). ``on_case`` gets the records so
    far (header first, ``complete`` false) after every size, so that a run cut short keeps what it measured."""
    known = registry.available()
    head = header(device, dtype, preset, provider_names, ops, baseline, command)
    plan = PLANS[preset]
    results: list[dict] = []
    for op in ops:
        for case in known[op].cases(preset, device):
            results += _run_case(known[op], case, device, dtype, provider_names, plan, progress)
            if on_case is not None:
                on_case([head, *results])
    if measure_memory and device.type == "cpu":
        _cpu_memory(results, ops, preset, dtype, provider_names, progress)
    head["load_avg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    head["complete"] = True
    return [head, *results]


def _record_key(r: dict) -> tuple:
    return (r["op"], tuple(r["shape"]), json.dumps(r.get("params", {}), sort_keys=True), r["dtype"], r["device"])


def merge(runs: list[list[dict]]) -> list[dict]:
    """One record list from several runs of the same ops and sizes (gpu_check.sh times the compile provider
    in a run of its own): the first run's header and records, then each later run's records of providers
    the earlier runs lack, with the speed-ups recomputed across them. Such a speed-up compares times of
    separate runs on the same machine; the header's ``merged_from`` lists the runs."""
    head = dict(runs[0][0])
    results = [dict(r) for r in runs[0][1:]]
    have = {(*_record_key(r), r["provider"]) for r in results}
    for run in runs[1:]:
        for r in run[1:]:
            if (*_record_key(r), r["provider"]) not in have:
                results.append(dict(r))
                have.add((*_record_key(r), r["provider"]))
        head["providers"] = list(dict.fromkeys([*head["providers"], *run[0]["providers"]]))
    head["merged_from"] = [run[0].get("command") for run in runs]
    head["complete"] = all(run[0].get("complete", True) for run in runs)
    cases: dict[tuple, list[dict]] = {}
    for r in results:  # grouped per size, in the first run's order
        cases.setdefault(_record_key(r), []).append(r)
    order = {name: k for k, name in enumerate(providers.PROVIDERS)}
    merged = []
    for group in cases.values():
        group.sort(key=lambda r: order.get(r["provider"], len(order)))
        for r in group:
            for base in providers.BASELINES:
                r[f"speedup_vs_{base}"] = r[f"fwd_speedup_vs_{base}"] = None
        _speedups(group)
        merged += group
    return [head, *merged]
