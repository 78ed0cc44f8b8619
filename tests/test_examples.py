"""Smoke tests of the examples (tiny settings, seconds) and checks of the pieces their claims rest on:
the closed-form teacher of gmm_f_distill and its metrics."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

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
    argv = [
        "--out", str(tmp_path), "--seed", "3", "--steps", "15", "--warmup-steps", "5", "--batch-size", "64",
        "--eval-samples", "400", "--energy-samples", "200", "--time-bins", "4", "--gan-weight", "0.01",
    ]
    result = gmm.main(argv)
    written = json.loads((tmp_path / "gmm_f_distill.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert list(written["divergences"]) == ["reverse_kl", "js", "forward_kl", "squared_hellinger"]
    for name, metrics in written["divergences"].items():
        assert set(metrics) == {"mode_recall", "precision", "energy_distance"}, name
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), (name, metrics)
        assert 0.0 <= metrics["mode_recall"] <= 1.0 and 0.0 <= metrics["precision"] <= 1.0
        assert metrics["energy_distance"] >= 0.0  # the V-statistic is a squared distance
    png = tmp_path / "gmm_f_distill.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    keep[in_mode[len(in_mode) // 10:]] = False
    assert gmm.mode_metrics(samples[keep], teacher)["mode_recall"] == (teacher.num_modes - 1) / teacher.num_modes
    keep[in_mode[: len(in_mode) // 2]] = True
    assert gmm.mode_metrics(samples[keep], teacher)["mode_recall"] == 1.0
    # energy distance: ~0 between two teacher draws, clearly positive against the collapsed generator
    other = teacher.sample(1000, torch.Generator().manual_seed(1))
    assert gmm.energy_distance(samples[:1000], other) < 0.02
    assert gmm.energy_distance(collapsed[:1000], other) > 1.0
