"""The README's promise to f-DPG users (naver/disco's losses): the exponent clamp never touches a log-space psi,
so the pseudo-reward -psi(p/pi) of js, reverse_kl, softened_rkl and total_variation is exact at any log-ratio.
Only f (for the divergence estimate) may need the clamp."""

from __future__ import annotations

import math

import fdiv_ops
import pytest
import torch

LOG_RATIOS = torch.tensor([100.0, 31.0, 0.0, -31.0, -100.0], dtype=torch.float64)


def _rewards(divergence):
    policy = torch.zeros_like(LOG_RATIOS, requires_grad=True)
    _, stats = fdiv_ops.f_dpg_loss(policy, log_ratio=LOG_RATIOS, divergence=divergence, baseline=None)
    return stats["pseudo_rewards"]


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


EXPECTED = {
    # -psi(r), r = exp(l): reverse_kl log r - 1; softened_rkl -1 - log((r + 1) / (2 r)); TV sign(l) / 2
    "reverse_kl": lambda l: l - 1,
    "softened_rkl": lambda l: -1 - (_softplus(l) - l - math.log(2)),
    "total_variation": lambda l: 0.5 * math.copysign(1.0, l) if l != 0 else 0.0,
}


@pytest.mark.parametrize("divergence", list(EXPECTED))
def test_log_space_pseudo_rewards_are_exact(divergence):
    got = _rewards(divergence)
    want = torch.tensor([EXPECTED[divergence](float(l)) for l in LOG_RATIOS], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_js_pseudo_reward_is_not_clamped():
    # -psi(r) = log((1 + r) / 2) = softplus(l) - log 2: 99.307 at l = 100
    got = _rewards("js")
    want = torch.tensor([_softplus(float(l)) - math.log(2) for l in LOG_RATIOS], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
