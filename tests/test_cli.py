"""The ``fdiv-ops`` command on the tiny preset: exit codes, the JSON schema, the PNG, the error messages,
and the plug-in path of the bench registry (ops not yet in this build stood in for by eager code)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import fdiv_ops
import pytest
import torch
from fdiv_ops import cli, reference
from fdiv_ops.bench import providers, registry, runner

RESULT_KEYS = {
    "op",
    "shape",
    "dtype",
    "device",
    "provider",
    "fwd_ms",
    "fwd_bwd_ms",
    "gbps",
    "peak_mem_mb",
    "max_rel_err",
}
HEADER_KEYS = {"device_name", "copy_gbps", "versions", "device", "dtype", "preset"}
PYTHON_DIR = str(Path(fdiv_ops.__file__).resolve().parents[1])


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (PYTHON_DIR, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run(
        [sys.executable, "-m", "fdiv_ops.cli", *args], capture_output=True, text=True, env=env, check=False
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real CPU run of the tiny preset (fdiv_ops and eager, memory subprocesses included)."""
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "tiny.json", out / "tiny.png"
    argv = ["bench", "--device", "cpu", "--preset", "tiny", "--providers", "fdiv_ops,eager", "--json", str(json_path)]
    if _has_matplotlib():
        argv += ["--plot", str(png_path)]
    code = cli.main(argv)
    return code, json.loads(json_path.read_text()), png_path


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_bench_exit_code_and_json_schema(tiny_run):
    code, records, _ = tiny_run
    assert code == 0
    head, results = records[0], records[1:]
    assert head["record"] == "header" and HEADER_KEYS <= head.keys()
    assert head["copy_gbps"] > 0 and head["versions"]["torch"] == torch.__version__
    assert {r["record"] for r in results} == {"result"}
    expected = {(op, p) for op in registry.available() for p in ("fdiv_ops", "eager")}
    assert {(r["op"], r["provider"]) for r in results} == expected
    for r in results:
        assert RESULT_KEYS <= r.keys(), RESULT_KEYS - r.keys()
        assert r["dtype"] == "fp32" and r["device"] == "cpu" and r["note"] is None, r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["gbps"] > 0
        assert r["fwd_bwd_p20_ms"] <= r["fwd_bwd_ms"] <= r["fwd_bwd_p80_ms"]
        assert r["max_rel_err"] < 1e-5  # fp32 against the float64 reference
        assert r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0  # measured in a subprocess
        assert r["speedup_vs_eager"] > 0 and r["speedup_vs_compile"] is None  # compile was not asked for


def test_bench_plot_decodes(tiny_run):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the bench extra)")
    import matplotlib.image

    image = matplotlib.image.imread(tiny_run[2])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


def test_bench_plain_table_when_piped(capsys):
    code = cli.main(["bench", "f_distill", "--device", "cpu", "--preset", "tiny", "--providers", "fdiv_ops"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "\x1b[" not in out  # no terminal escapes in piped output
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["op", "shape", "provider"]
    assert lines[2].startswith("f_distill") and "fdiv_ops" in lines[2]
    assert "[1/" in err  # plain progress lines on a non-terminal stderr


def test_unknown_op_lists_valid_ones(capsys):
    assert cli.main(["bench", "no_such_op"]) == 2
    err = capsys.readouterr().err
    assert "unknown op 'no_such_op'" in err and "f_distill" in err


def test_unknown_provider_lists_valid_ones(capsys):
    assert cli.main(["bench", "--providers", "fdiv_ops,triton"]) == 2
    err = capsys.readouterr().err
    assert "unknown provider 'triton'" in err
    assert "fdiv_ops, eager, compile, liger" in err


def test_op_not_in_this_build_says_so(capsys):
    missing = registry.missing()
    if not missing:
        pytest.skip("every declared op is in this build")
    op, api = next(iter(missing.items()))
    assert cli.main(["bench", op]) == 2
    err = capsys.readouterr().err
    assert f"fdiv_ops.{api} is missing" in err and "f_distill" in err


def test_device_cuda_without_gpu_exits_nonzero():
    if fdiv_ops.cuda_available():
        pytest.skip("a GPU is usable here")
    proc = _run_cli("bench", "--device", "cuda", "--preset", "tiny")
    assert proc.returncode != 0
    assert "no CUDA device is usable" in proc.stderr
    assert proc.stdout == ""


def test_info_runs():
    proc = _run_cli("info")
    assert proc.returncode == 0, proc.stderr
    assert "torch" in proc.stdout and "benchmarked ops" in proc.stdout


def test_registry_lists_only_existing_ops():
    available, missing = registry.available(), registry.missing()
    assert "f_distill" in available
    assert set(available) | set(missing) == set(registry.OP_MODULES)
    for bench in available.values():
        assert hasattr(fdiv_ops, bench.api)
    for api in missing.values():
        assert not hasattr(fdiv_ops, api)


def test_json_never_holds_nan_or_inf():
    assert cli._json_safe({"a": [math.inf, 1.0, math.nan], "b": "x"}) == {"a": [None, 1.0, None], "b": "x"}


def test_max_rel_err_sees_nan():
    want = [torch.ones(3, dtype=torch.float64)]
    assert providers.max_rel_err([torch.tensor([1.0, math.nan, 1.0])], want) == math.inf
    assert providers.max_rel_err([torch.tensor([1.0, 1.5, 1.0])], want) == pytest.approx(0.5)


def test_compile_provider_on_tiny_case():
    records = runner.run(["f_distill"], torch.device("cpu"), "fp32", "tiny", ["eager", "compile"], measure_memory=False)
    compiled = [r for r in records[1:] if r["provider"] == "compile"]
    assert compiled and all(r["note"] is None and r["max_rel_err"] < 1e-5 for r in compiled)
    assert all(r["speedup_vs_compile"] == pytest.approx(1.0) for r in compiled)


# ------------------------------------------------------------------------------------------------
# The plug-in path: bench files written against the ops' declared signatures. Where an op has not
# landed in this build, an eager stand-in takes its place (and the reference's, if missing too), so
# the bench files run now; once the ops land, the same test runs them for real.


def _categorical_loss(student_logits, teacher_logits, *, divergence="forward_kl", **_):
    """batchmean of sum_v q_v f(p_v / q_v) (docs/math.md §3), q = softmax(student), p = softmax(teacher)."""
    log_q = torch.log_softmax(student_logits, -1)
    log_p = torch.log_softmax(teacher_logits, -1)
    per_row = (log_q.exp() * reference.f(divergence, log_p - log_q)).sum(-1)
    return per_row.sum() / per_row.numel()


def _sequence_logprobs(logits, labels, *, ignore_index=-100, **_):
    keep = labels != ignore_index
    picked = torch.log_softmax(logits, -1).gather(-1, torch.where(keep, labels, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, picked, torch.zeros_like(picked))


def _fused_linear(student_hidden, student_weight, teacher_hidden, teacher_weight, *, divergence="forward_kl", **_):
    return _categorical_loss(
        student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T, divergence=divergence
    )


STAND_INS = {
    "f_divergence_loss": _categorical_loss,
    "sequence_logprobs": _sequence_logprobs,
    "fused_linear_f_divergence": _fused_linear,
}


def test_plugged_in_ops_run_through_the_harness(monkeypatch):
    for name, fn in STAND_INS.items():
        if not hasattr(fdiv_ops, name):
            monkeypatch.setattr(fdiv_ops, name, fn, raising=False)
        if name != "fused_linear_f_divergence" and not hasattr(reference, name):
            monkeypatch.setattr(reference, name, fn, raising=False)
    ops = ["f_divergence", "sequence_logprobs", "fused_linear"]
    assert set(ops) <= set(registry.available())
    records = runner.run(ops, torch.device("cpu"), "fp32", "tiny", ["fdiv_ops", "eager", "liger"], measure_memory=False)
    results = records[1:]
    assert {r["op"] for r in results} == set(ops)
    for r in results:
        if r["provider"] == "liger":
            assert r["note"].startswith("skipped:") and r["fwd_ms"] is None  # Liger is CUDA-only
        else:
            assert r["note"] is None, r
            assert r["fwd_bwd_ms"] > 0 and r["bytes_moved"] > 0 and r["max_rel_err"] < 1e-5


def test_interleaved_timing_runs_every_step_in_rounds():
    from fdiv_ops.bench.timing import TimingPlan, measure_interleaved

    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings = measure_interleaved(
        steps, torch.device("cpu"), TimingPlan(warmup=1, min_reps=4, max_reps=4, min_time_s=0.0)
    )
    assert calls[:3] == ["a", "b", "c"]  # the warm-up round
    assert calls[3:6] == ["a", "b", "c"] and calls[6:9] == ["b", "c", "a"]  # rotating rounds
    assert len(calls) == 3 * 5 and all(t.reps == 4 and t.p20_ms <= t.median_ms <= t.p80_ms for t in timings.values())


def test_bad_thread_count_is_an_error(capsys):
    assert cli.main(["bench", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def _readme_table_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "make_readme_table.py"
    spec = importlib.util.spec_from_file_location("make_readme_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_generated_from_the_results():
    # The README's numbers come from benchmarks/results/*.json through the script, never by hand.
    assert _readme_table_script().main(["--check"]) == 0


def test_readme_table_renders_a_bench_json(tmp_path, tiny_run):
    script = _readme_table_script()
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu.json").write_text(json.dumps(tiny_run[1]))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{script.START}\nstale\n{script.END}\noutro\n")
    assert script.main(["--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "| f_distill |" in text and "**fdiv_ops**" in text
    assert script.main(["--check", "--readme", str(readme), "--results", str(results)]) == 0


class _Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_table_is_rich_on_a_terminal_and_plain_without_rich(tiny_run, monkeypatch):
    from fdiv_ops.bench import report

    records = tiny_run[1]
    if _has_rich():
        terminal = _Terminal()
        report.print_table(records, stream=terminal)
        assert "┃" in terminal.getvalue()  # rich's table border
    monkeypatch.setitem(sys.modules, "rich.console", None)  # rich not installed: import fails
    terminal = _Terminal()
    report.print_table(records, stream=terminal)
    text = terminal.getvalue()
    assert "┃" not in text and text.splitlines()[1].split()[:3] == ["op", "shape", "provider"]


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["bench", "--preset", "tiny", "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


@pytest.mark.cuda
def test_bench_on_cuda_tiny(tmp_path):
    path = tmp_path / "cuda.json"
    assert cli.main(["bench", "--device", "cuda", "--preset", "tiny", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert records[0]["device"] == "cuda" and records[0]["copy_gbps"] > 0
    for r in records[1:]:
        if r["provider"] == "liger" and r["fwd_ms"] is None:
            assert r["note"].startswith("skipped:")  # not installed, or no Liger equivalent of this op
            continue
        assert r["note"] is None, r
        assert r["fwd_bwd_ms"] > 0 and r["peak_mem_mb"] >= 0  # max_memory_allocated over one step
        if r["provider"] != "liger":
            assert r["max_rel_err"] < 1e-5


def test_a_failing_provider_is_reported_and_the_others_still_run(monkeypatch):
    import dataclasses

    def broken(case):
        raise ImportError("cannot import name 'LigerSomething'")  # e.g. a peer's API moved

    bench = dataclasses.replace(registry.available()["f_distill"], fused=broken)
    monkeypatch.setattr(registry, "available", lambda: {"f_distill": bench})
    records = runner.run(
        ["f_distill"], torch.device("cpu"), "fp32", "tiny", ["fdiv_ops", "eager"], measure_memory=False
    )
    by_provider = {r["provider"]: r for r in records[1:]}
    assert by_provider["fdiv_ops"]["note"].startswith("failed: ImportError")
    assert by_provider["fdiv_ops"]["fwd_ms"] is None
    assert by_provider["eager"]["note"] is None and by_provider["eager"]["fwd_bwd_ms"] > 0
