"""Smoke tests of the examples (tiny settings, seconds) and checks of the pieces their claims rest on:
the closed-form teacher of gmm_f_distill and its metrics; fdpg_toy's exact target and metrics, and the part of
its claim that held in every seed tried; that kd_tiny_lm's Trainer loss is KD between the two models' actual
logits, and that its fused loss peaks far below eager KD."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    """Import examples/<name>.py as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gmm():
    return load_example("gmm_f_distill")


@pytest.fixture
def restore_threads():
    # main() sets torch's intra-op thread count (--threads, default 1); later tests must keep theirs
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_gmm_f_distill_smoke(gmm, tmp_path, restore_threads):
    # the default code path (no time bins, no GAN term, the default batch and evaluation sizes): only the step
    # counts are smaller
    result = gmm.main(["--out", str(tmp_path), "--seed", "3", "--steps", "15", "--warmup-steps", "5"])
    written = json.loads((tmp_path / "gmm_f_distill.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["config"]["time_bins"] == 0 and written["config"]["gan_weight"] == 0.0
    assert list(written["divergences"]) == ["reverse_kl", "js", "forward_kl", "squared_hellinger"]
    for name, metrics in written["divergences"].items():
        assert set(metrics) == {"mode_recall", "precision", "energy_distance"}, name
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), (name, metrics)
        assert 0.0 <= metrics["mode_recall"] <= 1.0 and 0.0 <= metrics["precision"] <= 1.0
        assert metrics["energy_distance"] >= 0.0  # the V-statistic is a squared distance
    png = tmp_path / "gmm_f_distill.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gmm_f_distill_optional_paths(gmm, tmp_path, restore_threads):
    # the paths off by default: ratio binned by time (over log sigma) and the generator's GAN term
    argv = ["--out", str(tmp_path), "--steps", "5", "--warmup-steps", "2", "--batch-size", "64"]
    argv += ["--eval-samples", "400", "--energy-samples", "200", "--time-bins", "4", "--gan-weight", "0.01"]
    result = gmm.main([*argv, "--divergences", "js", "forward_kl"])
    for name, metrics in result["divergences"].items():
        assert all(math.isfinite(v) for v in metrics.values()), (name, metrics)


def test_gmm_teacher_x0_prediction_is_tweedie(gmm):
    # x0_hat = x_t + sigma^2 * grad log p_t(x_t), with p_t the mixture of N(mu_i, (s_i^2 + sigma^2) I),
    # checked against autograd of the noised log density written out independently.
    teacher = gmm.MixtureTeacher(mode_std=0.15)
    x_t = (3 * torch.randn(64, 2, dtype=torch.float64)).requires_grad_()
    sigma = torch.exp(torch.empty(64, dtype=torch.float64).uniform_(math.log(0.02), math.log(2.0)))
    var = teacher.stds[None] ** 2 + sigma[:, None] ** 2
    sq = (x_t[:, None, :] - teacher.means[None]).pow(2).sum(-1)
    log_pt = torch.logsumexp(teacher.weights.log() - sq / (2 * var) - torch.log(2 * math.pi * var), dim=1)
    (score,) = torch.autograd.grad(log_pt.sum(), x_t)
    expected = x_t.detach() + sigma[:, None] ** 2 * score
    torch.testing.assert_close(teacher.x0_prediction(x_t.detach(), sigma), expected, rtol=1e-10, atol=1e-10)


def test_gmm_teacher_is_unequal_and_separated(gmm):
    teacher = gmm.MixtureTeacher()
    assert teacher.num_modes >= 8
    assert float(teacher.weights.sum()) == pytest.approx(1.0)
    assert float(teacher.weights.max() / teacher.weights.min()) >= 4
    gaps = torch.cdist(teacher.means, teacher.means) + 1e9 * torch.eye(teacher.num_modes, dtype=torch.float64)
    # the 3-std discs of two modes never overlap, so a sample belongs to at most one mode
    assert float(gaps.min()) > 2 * gmm.NEAR_STDS * float(teacher.stds.max())


def test_gmm_metrics_separate_coverage_from_collapse(gmm):
    teacher = gmm.MixtureTeacher()
    samples = teacher.sample(8000, torch.Generator().manual_seed(0))
    full = gmm.mode_metrics(samples, teacher)
    assert full["mode_recall"] == 1.0
    assert full["precision"] == pytest.approx(gmm.NEAR_MASS_2D, abs=0.01)
    # all mass on the heaviest mode: one mode recalled, still precise
    heaviest = int(teacher.weights.argmax())
    collapsed = teacher.means[heaviest].float() + 0.15 * torch.randn(8000, 2)
    one = gmm.mode_metrics(collapsed, teacher)
    assert one["mode_recall"] == 1 / teacher.num_modes
    assert one["precision"] > 0.95
    # RECALL_SHARE = 0.25: a mode left with ~1/8 of its expected share is dropped, with ~2/3 it is kept
    keep = torch.ones(len(samples), dtype=torch.bool)
    near = torch.cdist(samples.double(), teacher.means).argmin(1)
    in_mode = (near == heaviest).nonzero().squeeze(1)
    keep[in_mode[len(in_mode) // 10 :]] = False
    assert gmm.mode_metrics(samples[keep], teacher)["mode_recall"] == (teacher.num_modes - 1) / teacher.num_modes
    keep[in_mode[: len(in_mode) // 2]] = True
    assert gmm.mode_metrics(samples[keep], teacher)["mode_recall"] == 1.0
    # energy distance: ~0 between two teacher draws, clearly positive against the collapsed generator
    other = teacher.sample(1000, torch.Generator().manual_seed(1))
    assert gmm.energy_distance(samples[:1000], other) < 0.02
    assert gmm.energy_distance(collapsed[:1000], other) > 1.0


# ---------------------------------------------------------------------------------------------------
# fdpg_toy


@pytest.fixture(scope="module")
def fdpg():
    return load_example("fdpg_toy")


def _fdpg_setup(fdpg, seed=0, **overrides):
    args = fdpg.parse_args(["--seed", str(seed), *[a for k, v in overrides.items() for a in (f"--{k}", str(v))]])
    cfg = fdpg.Config(args)
    base = fdpg.make_base(cfg, seed)
    return cfg, base, fdpg.ToyTarget(base, cfg.beta)


def test_fdpg_toy_smoke(fdpg, tmp_path, restore_threads):
    # the default code path (FDPG's running log Z, the default batch and evaluation cadence): fewer steps only
    result = fdpg.main(["--out", str(tmp_path), "--seed", "1", "--steps", "45"])
    written = json.loads((tmp_path / "fdpg_toy.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert list(written["divergences"]) == ["reverse_kl", "forward_kl", "js", "total_variation"]
    for name, metrics in written["divergences"].items():
        assert set(metrics) == {"kl_p_pi", "kl_pi_p", "entropy", "constraint_satisfaction"}, name
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), (name, metrics)
        assert metrics["kl_p_pi"] >= 0 and metrics["kl_pi_p"] >= 0
        assert 0.0 <= metrics["constraint_satisfaction"] <= 1.0
        assert 0.0 < metrics["entropy"] <= math.log(6**4) + 1e-6
        assert written["history"][name]["step"] == [0, 20, 40, 45]
    png = tmp_path / "fdpg_toy.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fdpg_toy_exact_log_z_path_runs(fdpg, tmp_path, restore_threads):
    argv = [
        "--out",
        str(tmp_path),
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--batch-size",
        "8",
        "--exact-log-z",
        "--divergences",
        "reverse_kl",
        "js",
    ]
    result = fdpg.main(argv)
    assert all(math.isfinite(v) for m in result["divergences"].values() for v in m.values())


def test_fdpg_toy_target_and_metrics_are_exact(fdpg):
    cfg, base, target = _fdpg_setup(fdpg, seed=0)
    space = target.space
    assert space.shape == (6**4, 4) and len({tuple(x) for x in space.tolist()}) == 6**4
    # the base is a normalised autoregressive distribution, and index() inverts the enumeration
    assert float(torch.logsumexp(target.log_base, 0)) == pytest.approx(0.0, abs=1e-5)
    assert torch.equal(target.index(space), torch.arange(6**4))
    # p = a b exp(beta n1) / Z, written out independently
    satisfied = torch.tensor([0 in x for x in space.tolist()])
    n1 = torch.tensor([x.count(1) for x in space.tolist()], dtype=torch.float64)
    weight = target.log_base.exp() * satisfied * torch.exp(cfg.beta * n1)
    torch.testing.assert_close(target.log_p.exp(), weight / weight.sum(), rtol=1e-6, atol=1e-12)
    assert torch.isneginf(target.log_p[~satisfied]).all()
    # the policy starts as the base: its metrics against p are those of a
    base_metrics = fdpg.exact_metrics(base, target)
    a, p = target.log_base.exp(), weight / weight.sum()
    assert base_metrics["kl_p_pi"] == pytest.approx(
        float((p[satisfied] * (p[satisfied] / a[satisfied]).log()).sum()), rel=1e-5
    )
    assert base_metrics["constraint_satisfaction"] == pytest.approx(float(a[satisfied].sum()), rel=1e-5)
    assert base_metrics["entropy"] == pytest.approx(float(-(a * a.log()).sum()), rel=1e-5)
    a_b = a[satisfied] / a[satisfied].sum()  # KL(a(.|b=1) || p)
    assert base_metrics["kl_pi_p"] == pytest.approx(float((a_b * (a_b / p[satisfied]).log()).sum()), rel=1e-5)


def test_fdpg_toy_policy_sampling_matches_its_log_probs(fdpg):
    # the sampler and sequence_logprobs must describe the same distribution, else on-policy f-DPG is biased
    _, base, target = _fdpg_setup(fdpg, seed=0)
    tokens = base.sample(20000, torch.Generator().manual_seed(0))
    counts = torch.bincount(target.index(tokens), minlength=6**4).double() / len(tokens)
    tv = 0.5 * float((counts - target.log_base.exp()).abs().sum())
    assert tv < 0.12  # 20 000 draws over 1296 cells: sampling noise alone gave TV 0.071 here


def test_fdpg_toy_claim_reverse_kl_trades_diversity_for_alignment(fdpg, tmp_path, restore_threads):
    # Held in each of seeds 0-2 at 400 steps (and at the 1000-step default): reverse_kl ends with more of
    # its mass on the constraint, less entropy and a larger KL(p||pi) than forward_kl. Margins seen: KL ratio
    # >= 2.1, entropy gap >= 0.10 nats, satisfaction gap >= 0.011; the test asks for less.
    for seed in range(3):
        argv = [
            "--out",
            str(tmp_path),
            "--seed",
            str(seed),
            "--steps",
            "400",
            "--divergences",
            "reverse_kl",
            "forward_kl",
        ]
        result = fdpg.main(argv)["divergences"]
        rkl, fkl = result["reverse_kl"], result["forward_kl"]
        assert rkl["kl_p_pi"] > 1.5 * fkl["kl_p_pi"], (seed, rkl, fkl)
        assert rkl["entropy"] < fkl["entropy"] - 0.05, (seed, rkl, fkl)
        assert rkl["constraint_satisfaction"] > fkl["constraint_satisfaction"], (seed, rkl, fkl)


# ---------------------------------------------------------------------------------------------------
# kd_tiny_lm (needs transformers and accelerate: the `test` extra installs them)


@pytest.fixture(scope="module")
def kd():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return load_example("kd_tiny_lm")


def test_kd_tiny_lm_smoke(kd, tmp_path, restore_threads):
    # the default code path (default language, models, batch, chunking and the memory probe): fewer steps only
    result = kd.main(["--out", str(tmp_path), "--seed", "1", "--teacher-steps", "3", "--student-steps", "2"])
    written = json.loads((tmp_path / "kd_tiny_lm.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert list(written["divergences"]) == ["forward_kl", "reverse_kl", "gkd_jsd(0.5)"]
    for name, metrics in written["divergences"].items():
        assert set(metrics) == {"heldout_kl", "loss_peak_mem_mb"}, name
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), (name, metrics)
        assert metrics["heldout_kl"] >= 0 and metrics["loss_peak_mem_mb"] >= 0
        assert math.isfinite(written["extras"][name]["eager_loss_peak_mem_mb"])
    png = tmp_path / "kd_tiny_lm.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kd_trainer_loss_is_kd_on_the_models_own_logits(kd):
    # compute_loss feeds hidden_states[-1] and lm_head.weight to the fused op: that must be the divergence
    # between the two models' actual next-token distributions (eager, from their full logits)
    torch.manual_seed(0)
    teacher = kd.gpt2(50, 8, 16, 1, heads=4).eval()
    student = kd.gpt2(50, 8, 8, 1, heads=2).eval()
    tokens = torch.randint(50, (3, 8))
    for divergence in kd.DIVERGENCES:
        with torch.no_grad():
            fused = fdiv_ops.fused_linear_f_divergence(
                kd.last_hidden(student, tokens),
                student.lm_head.weight,
                kd.last_hidden(teacher, tokens),
                teacher.lm_head.weight,
                divergence=divergence,
                chunk_size=5,
            )
            expected = reference.f_divergence_loss(
                student(tokens).logits.double(), teacher(tokens).logits.double(), divergence=divergence
            )
        assert float(fused) == pytest.approx(float(expected), rel=1e-4), divergence


def test_kd_fused_loss_peak_memory_is_below_eager(kd):
    # the example's default batch shapes: 1024 rows, V = 1024. Measured 1.4 MiB fused (chunks of 128 rows)
    # against 45-68 MiB eager; the test asks for a factor of 4.
    shapes = {"rows": 1024, "vocab": 1024, "student_width": 64, "teacher_width": 128}
    memory = kd.measure_memory(shapes, ["forward_kl"], chunk_size=128)["forward_kl"]
    assert memory["fused"] * 4 < memory["eager"], memory
