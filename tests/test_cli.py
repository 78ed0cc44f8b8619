"""The ``fdiv-ops`` command on the tiny preset: exit codes, the JSON schema, the PNG, the error messages (the
destinations checked before any measurement), the providers users compare against (torch, compile, trl,
liger: the last two skipped with a note where they cannot run), the number formatting, and the plug-in path
of the bench registry (ops not yet in this build stood in for by eager code)."""

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
from fdiv_ops.bench import fmt, headline, idioms, peers, providers, registry, runner

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
HEADER_KEYS = {"device_name", "copy_gbps", "versions", "device", "dtype", "preset", "baseline", "command", "complete"}
PYTHON_DIR = str(Path(fdiv_ops.__file__).resolve().parents[1])


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (PYTHON_DIR, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run(
        [sys.executable, "-m", "fdiv_ops.cli", *args], capture_output=True, text=True, env=env, check=False
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real CPU run of the tiny preset (fdiv_ops and torch, memory subprocesses included)."""
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "tiny.json", out / "tiny.png"
    argv = ["bench", "--device", "cpu", "--preset", "tiny", "--providers", "fdiv_ops,torch", "--json", str(json_path)]
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
    assert head["complete"] is True and head["baseline"] == "torch" and head["command"][:2] == ["fdiv-ops", "bench"]
    assert {r["record"] for r in results} == {"result"}
    expected = {(op, p) for op in registry.available() for p in ("fdiv_ops", "torch")}
    assert {(r["op"], r["provider"]) for r in results} == expected
    for r in results:
        assert RESULT_KEYS <= r.keys(), RESULT_KEYS - r.keys()
        assert r["dtype"] == "fp32" and r["device"] == "cpu" and r["note"] is None, r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["gbps"] > 0
        assert r["fwd_bwd_p20_ms"] <= r["fwd_bwd_ms"] <= r["fwd_bwd_p80_ms"]
        assert r["max_rel_err"] < 1e-5  # fp32 against the float64 reference
        assert r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0  # measured in a subprocess
        assert r["speedup_vs_torch"] > 0 and r["speedup_vs_compile"] is None  # compile was not asked for
        assert r["speedup_vs_trl"] is None and r["source"]  # what ran, in words, for the notes


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
    assert "Is fdiv_ops faster than what you use now?" in out  # the headline table comes last


def test_unknown_op_lists_valid_ones(capsys):
    assert cli.main(["bench", "no_such_op"]) == 2
    err = capsys.readouterr().err
    assert "unknown op 'no_such_op'" in err and "f_distill" in err


def test_unknown_provider_lists_valid_ones(capsys):
    assert cli.main(["bench", "--providers", "fdiv_ops,triton"]) == 2
    err = capsys.readouterr().err
    assert "unknown provider 'triton'" in err
    assert "fdiv_ops, torch, compile, trl, liger" in err


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
    records = runner.run(["f_distill"], torch.device("cpu"), "fp32", "tiny", ["torch", "compile"], measure_memory=False)
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
    records = runner.run(ops, torch.device("cpu"), "fp32", "tiny", ["fdiv_ops", "torch", "liger"], measure_memory=False)
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
    threads = tiny_run[1][0]["threads"]
    assert f"CPU, {threads} thread{'s' if threads > 1 else ''}: × torch" in text  # the headline's column group
    assert script.main(["--check", "--readme", str(readme), "--results", str(results)]) == 0


def test_readme_table_ignores_other_json_in_results(tmp_path, tiny_run):
    """results/ also holds other JSON (a kernel resource report): only `fdiv-ops bench --json` files count."""
    script = _readme_table_script()
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu.json").write_text(json.dumps(tiny_run[1]))
    (results / "sass_before.json").write_text(json.dumps([{"unit": "f_divergence.cu", "reg": 40}]))
    readme = tmp_path / "README.md"
    readme.write_text(f"{script.START}\n{script.END}\n")
    assert script.main(["--readme", str(readme), "--results", str(results)]) == 0
    assert "**cpu.json**" in readme.read_text() and "sass_before" not in readme.read_text()


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
    # compile is left out: torch.compile on a fresh GPU machine takes minutes (gpu_check.sh times it apart)
    path = tmp_path / "cuda.json"
    argv = ["bench", "--device", "cuda", "--preset", "tiny", "--providers", "fdiv_ops,torch,trl,liger"]
    assert cli.main([*argv, "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert records[0]["device"] == "cuda" and records[0]["copy_gbps"] > 0
    for r in records[1:]:
        if r["provider"] in ("liger", "trl") and r["fwd_ms"] is None:
            assert r["note"].startswith("skipped:")  # not installed, or no equivalent of this op
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
        ["f_distill"], torch.device("cpu"), "fp32", "tiny", ["fdiv_ops", "torch"], measure_memory=False
    )
    by_provider = {r["provider"]: r for r in records[1:]}
    assert by_provider["fdiv_ops"]["note"].startswith("failed: ImportError")
    assert by_provider["fdiv_ops"]["fwd_ms"] is None
    assert by_provider["torch"]["note"] is None and by_provider["torch"]["fwd_bwd_ms"] > 0


# ------------------------------------------------------------------------------------------------
# --version, the destinations checked up front, --baseline, --load, and a write that fails at the end.


def test_version_prints_the_package_version():
    proc = _run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fdiv-ops {fdiv_ops.__version__}"


def _refuse_to_run(monkeypatch):
    """Any measurement is a failure of the test: the argument checks must come first."""

    def run(*args, **kwargs):
        raise AssertionError("the benchmark ran although an argument was bad")

    monkeypatch.setattr(runner, "run", run)


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--json", "no_such_folder/out.json", "does not exist"),
        ("--plot", "no_such_folder/out.png", "does not exist"),
        ("--json", ".", "is a folder"),
        ("--plot", "out.jpg", "must end in .png, .svg, .pdf"),
    ],
)
def test_bad_destination_fails_before_measuring(monkeypatch, capsys, tmp_path, option, name, message):
    _refuse_to_run(monkeypatch)
    path = tmp_path / name
    assert cli.main(["bench", "--device", "cpu", "--preset", "tiny", option, str(path)]) == 2
    err = capsys.readouterr().err
    assert option in err and message in err
    assert not path.is_file()


def test_same_file_for_json_and_plot_is_refused(monkeypatch, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    _refuse_to_run(monkeypatch)
    path = str(tmp_path / "out.png")
    assert cli.main(["bench", "--preset", "tiny", "--json", path, "--plot", path]) == 2
    assert "same file" in capsys.readouterr().err


def test_bad_destination_fails_in_a_fresh_process(tmp_path):
    """The real command, from a fresh interpreter: exit code 2, a message, nothing measured (no progress)."""
    proc = _run_cli("bench", "--json", str(tmp_path / "missing" / "out.json"))
    assert proc.returncode == 2
    assert "the folder" in proc.stderr and "does not exist" in proc.stderr
    assert "[1/" not in proc.stderr and proc.stdout == ""


def test_baseline_must_be_among_the_providers(monkeypatch, capsys):
    _refuse_to_run(monkeypatch)
    assert cli.main(["bench", "--providers", "fdiv_ops,torch", "--baseline", "compile"]) == 2
    assert "--baseline compile is not among --providers" in capsys.readouterr().err


def test_baseline_trl_without_trl_says_what_to_install(monkeypatch, capsys):
    _refuse_to_run(monkeypatch)
    monkeypatch.setattr(peers, "_installed", lambda module: False)
    assert cli.main(["bench", "--providers", "fdiv_ops,trl", "--baseline", "trl"]) == 2
    err = capsys.readouterr().err
    assert "pip install trl" in err and "--baseline torch" in err


def test_baseline_orders_the_headline_and_is_recorded(capsys, tmp_path):
    path = tmp_path / "b.json"
    argv = ["bench", "f_distill", "--device", "cpu", "--preset", "tiny", "--providers", "fdiv_ops,torch,compile"]
    assert cli.main([*argv, "--baseline", "compile", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert json.loads(path.read_text())[0]["baseline"] == "compile"
    lines = out.splitlines()
    caption = next(i for i, line in enumerate(lines) if line.startswith("Is fdiv_ops"))
    columns = lines[caption + 1]
    assert "vs compile (baseline)" in columns
    assert columns.index("vs compile") < columns.index("vs torch")


def test_load_shows_an_earlier_run_and_replots(tiny_run, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(tiny_run[1]))
    png = tmp_path / "replot.png"
    assert cli.main(["bench", "--load", str(saved), "--plot", str(png)]) == 0
    assert "f_distill" in capsys.readouterr().out and png.stat().st_size > 0


def test_a_write_that_fails_at_the_end_keeps_the_results(monkeypatch, capsys, tmp_path):
    def full_disk(path, records):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_write_json", full_disk)
    argv = ["bench", "f_distill", "--device", "cpu", "--preset", "tiny", "--providers", "fdiv_ops"]
    assert cli.main([*argv, "--json", str(tmp_path / "out.json")]) == 1
    captured = capsys.readouterr()
    fallback = captured.err.split("saved to ")[1].strip()
    assert json.loads(Path(fallback).read_text())[1]["op"] == "f_distill"
    assert "f_distill" in captured.out  # the table is still shown
    os.remove(fallback)


def test_json_is_rewritten_after_every_size():
    seen = []
    records = runner.run(
        ["f_divergence"],
        torch.device("cpu"),
        "fp32",
        "tiny",
        ["fdiv_ops"],
        measure_memory=False,
        on_case=lambda so_far: seen.append((so_far[0]["complete"], len(so_far) - 1)),
    )
    cases = len(registry.available()["f_divergence"].cases("tiny", torch.device("cpu")))
    assert seen == [(False, k) for k in range(1, cases + 1)]
    assert records[0]["complete"] is True


# ------------------------------------------------------------------------------------------------
# The providers users compare against.


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "gkd_jsd(0.5)", "gkd_jsd(0.1)"])
def test_idiomatic_kd_loss_is_the_loss_it_claims(divergence):
    """The torch provider's F.kl_div / GKD expression equals the float64 oracle, value and gradient."""
    student = torch.randn(6, 37, dtype=torch.float64, requires_grad=True)
    teacher = 2 * torch.randn(6, 37, dtype=torch.float64)
    got = idioms.kd_loss(divergence).fn(student, teacher)
    (grad_got,) = torch.autograd.grad(got, student)
    want = reference.f_divergence_loss(student, teacher, divergence=divergence)
    (grad_want,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-12)


def test_idiomatic_label_logprobs_is_gather_minus_logsumexp():
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = -100
    got = idioms.label_logprobs(-100).fn(logits, labels)
    torch.testing.assert_close(got, reference.sequence_logprobs(logits, labels))
    assert got[0, 1] == 0


@pytest.mark.parametrize("divergence", ["js", "reverse_kl", "forward_kl", "squared_hellinger", "neyman_chi2"])
def test_idiomatic_dmd_loss_is_the_f_distill_loss(divergence):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    teacher, fake = x.detach() + 0.3 * torch.randn_like(x), x.detach() + 0.3 * torch.randn_like(x)
    logits = torch.randn(4, 2, dtype=torch.float64)
    got = idioms.dmd_generator_loss(divergence).fn(x, teacher, fake, logits)
    (grad_got,) = torch.autograd.grad(got, x)
    want = reference.f_distill_loss(x, teacher, fake, logits, divergence=divergence)
    (grad_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad_got, grad_want)


def test_no_idiom_is_a_note_not_a_crash():
    assert "total_variation" in idioms.kd_loss("total_variation")
    assert "total_variation" in idioms.dmd_generator_loss("total_variation")


def test_trl_provider_runs_trl_own_functions():
    pytest.importorskip("trl", reason="trl is not installed: the trl provider is skipped with a note")
    ops = ["f_divergence", "sequence_logprobs", "fused_linear", "f_distill"]
    records = runner.run(ops, torch.device("cpu"), "fp32", "tiny", ["torch", "trl"], measure_memory=False)
    trl_rows = {(r["op"], headline.case_label(r)): r for r in records[1:] if r["provider"] == "trl"}
    for (op, _), r in trl_rows.items():
        if op == "f_distill":
            assert r["note"] == "skipped: TRL has no distribution-matching (f-distill / DMD) loss"
            continue
        assert r["note"] is None, r
        assert "trl" in r["source"] and r["fwd_bwd_ms"] > 0
        assert r["max_rel_err"] < 1e-5  # TRL computes the same loss as ours: same value and gradients
        assert r["speedup_vs_trl"] == pytest.approx(1.0)
    torch_rows = [r for r in records[1:] if r["provider"] == "torch"]
    assert all(r["speedup_vs_trl"] is not None for r in torch_rows if r["op"] != "f_distill")


def test_trl_provider_is_skipped_with_a_note_when_trl_is_missing(monkeypatch):
    monkeypatch.setattr(peers, "_installed", lambda module: False)
    records = runner.run(["f_divergence"], torch.device("cpu"), "fp32", "tiny", ["trl"], measure_memory=False)
    assert all(r["note"] == "skipped: trl is not installed (pip install trl)" for r in records[1:])


def test_liger_provider_is_skipped_with_a_note_off_cuda():
    records = runner.run(["f_divergence"], torch.device("cpu"), "fp32", "tiny", ["liger"], measure_memory=False)
    assert all(r["note"] == "skipped: liger-kernel is Triton/CUDA only" for r in records[1:])
    if not peers._installed("liger_kernel"):
        assert "pip install liger-kernel" in peers.liger_unavailable(torch.device("cuda"))


# ------------------------------------------------------------------------------------------------
# Numbers a person can read.


def test_numbers_have_units_and_no_exponents():
    assert fmt.time_ms(0.2534) == "253 µs" and fmt.time_ms(4.654) == "4.65 ms" and fmt.time_ms(1012.7) == "1.01 s"
    assert fmt.time_ms(999.7) == "1.00 s" and fmt.time_ms(0.99971) == "1.00 ms"
    assert fmt.time_spread(721.0, 698.0, 1010.0) == "721 ms (698 ms–1.01 s)"
    assert fmt.time_spread(0.253, 0.219, 0.272) == "253 µs (219–272)"
    assert fmt.time_spread(0.253, 0.219, 0.272, ascii=True) == "253 us (219-272)"
    assert fmt.speedup(2.712) == "2.71×" and fmt.speedup(16.22) == "16.2×" and fmt.speedup(1057.4) == "1057×"
    assert fmt.mib(4.0) == "4.00 MiB" and fmt.mib(8375.0) == "8.18 GiB" and fmt.mib(-0.1) == "0 MiB"
    assert fmt.bandwidth(2950.0) == "2.95 TB/s" and fmt.bandwidth(0.0305) == "30.5 MB/s"
    assert fmt.rel_err(4.5e-7) == "4.5e-7" and fmt.rel_err(math.inf) == "inf" and fmt.rel_err(None) == "-"
    assert fmt.percent(0.73) == "73%" and fmt.percent(0.0004) == "<0.1%"
    for value in (1e-9, 3e-5, 0.5, 9.996, 99.96, 1e3, 123456.0):
        assert "e" not in fmt.sig(value) and "e" not in fmt.time_ms(value)


def test_table_numbers_are_formatted(tiny_run):
    from fdiv_ops.bench import report

    out = __import__("io").StringIO()
    report.print_table(tiny_run[1], stream=out)
    text = out.getvalue()
    assert "e+" not in text
    data_lines = [line for line in text.splitlines() if " MiB " in line]  # the table rows (peak mem column)
    assert data_lines and all(any(u in line for u in (" µs", " ms", " s ")) for line in data_lines)


def test_piped_table_falls_back_to_ascii_where_the_encoding_lacks_symbols(tiny_run):
    import io

    from fdiv_ops.bench import report

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    report.print_table(tiny_run[1], stream=stream)  # would raise UnicodeEncodeError on µ or ×
    stream.flush()
    text = raw.getvalue().decode("ascii")
    assert " us" in text or " ms" in text
    assert "x vs torch" in text


def test_headline_compares_fdiv_ops_with_every_provider_baseline_first():
    def record(provider, ms):
        return {"op": "f", "shape": [2, 3], "params": {}, "provider": provider, "fwd_bwd_ms": ms}

    results = [record("fdiv_ops", 2.0), record("torch", 8.0), record("compile", 4.0), record("trl", None)]
    assert headline.comparisons(results, "compile") == ["compile", "torch", "trl"]
    (row,) = headline.rows(results, "compile")
    assert row["speedups"] == {"compile": 2.0, "torch": 4.0, "trl": None} and row["case"] == "2x3"


def test_load_merges_a_separate_run_of_another_provider(tiny_run, capsys, tmp_path):
    """gpu_check.sh times compile apart: --load A --load B adds B's providers to A and recomputes speed-ups."""
    first = tiny_run[1]
    second = [dict(first[0], providers=["compile"], command=["second"])]
    for r in first[1:]:
        if r["provider"] == "fdiv_ops":
            second.append(dict(r, provider="compile", fwd_ms=2 * r["fwd_ms"], fwd_bwd_ms=2 * r["fwd_bwd_ms"]))
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (first, second)):
        path.write_text(json.dumps(run))
    merged_path = tmp_path / "merged.json"
    argv = ["bench", "--load", str(paths[0]), "--load", str(paths[1]), "--json", str(merged_path)]
    assert cli.main(argv) == 0
    merged = json.loads(merged_path.read_text())
    assert merged[0]["providers"] == ["fdiv_ops", "torch", "compile"] and len(merged[0]["merged_from"]) == 2
    ours = [r for r in merged[1:] if r["provider"] == "fdiv_ops"]
    assert ours and all(r["speedup_vs_compile"] == pytest.approx(2.0) for r in ours)
    assert len(merged) == len(first) + len(second) - 1
    assert "vs compile" in capsys.readouterr().out
