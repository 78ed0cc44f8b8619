"""Sequence-level alignment losses (docs/math.md §4): f-DPO, f-DPG and group-normalised advantages.

All three apply the psi of the C++ functors (ops/divergence_terms.py) to sequence log-ratios; the heavy part,
log pi(x) from logits, is sequence_logprobs. Everything here is O(B) elementwise work with no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_float_tensor, check_int, check_positive, check_range, check_same, is_number
from ..divergences import Divergence, resolve
from ._plumbing import operand
from .divergence_terms import clamp_log_ratio, divergence_terms


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (16-bit log-probs are summed and compared in fp32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_batch(name: str, value: object, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    check_float_tensor(name, value)
    check_same(name, value, ref_name, ref, dtype=False)
    return value


def _check_exponent(max_exponent: object) -> float:
    return check_positive("max_exponent", max_exponent)


# ---------------------------------------------------------------------------------------------------
# f-DPO


def f_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    divergence: str | Divergence = "reverse_kl",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    max_exponent: float = 50.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Preference optimisation under an f-divergence constraint (Wang et al. 2023); reverse_kl is DPO.

    With r = pi_ref(y|x) / pi(y|x) per sequence (math.md §4)::

        z      = beta * (psi(r_chosen) - psi(r_rejected))
        losses = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z)      (eps = label_smoothing, DPO's
                                                                        conservative form)

    reverse_kl gives DPO's sigmoid loss exactly (psi = 1 + log(pi/pi_ref)); every divergence of fdiv_ops works.
    Against TRL 1.x's ``DPOConfig(loss_type="sigmoid", f_divergence_type=...)`` (checked with trl 1.16.0 in
    tests/test_integrations_trl.py): "js" is its ``js_divergence`` and "forward_kl" its ``forward_kl``, while its
    ``alpha_divergence`` with ``f_alpha_divergence_coef=a`` is ``alpha(1 - a)`` here (``alpha(a)`` was TRL <= 0.28's);
    TRL 1.x's sigmoid loss has no label smoothing, so they agree at label_smoothing=0.
    ``fdiv_ops.integrations.trl.dpo_loss`` takes TRL's names, coefficient and clamps.

    Rewards: ``beta * (psi(r) - psi(1))``, detached: the implicit reward whose chosen-minus-rejected margin is
    exactly z. For reverse_kl that is DPO's ``beta * log(pi/pi_ref)``; for other divergences it differs from
    TRL, which reports ``beta * log(pi/pi_ref)`` whatever the divergence (a margin inconsistent with its loss).

    Exponents are clamped: the log-ratio is limited so that no exp exceeds e^max_exponent (psi and its
    gradient -h stay finite for log-ratios of +-1e3; log-space forms, reverse_kl, js, softened_rkl and
    total_variation, are never clamped). TRL 1.16 clamps its alpha branch's exponent (a - 1) log(pi/pi_ref) at 80
    (11 for float16), which ``max_exponent=80`` reproduces with ``alpha(1 - a)``; TRL <= 0.28 clamped at
    log(float32 max) = 88.7228 (``max_exponent=fdiv_ops.ops.divergence_terms.dtype_max_exponent(torch.float32)``),
    where constant factors (1/alpha) can overflow to inf and meet the saturated sigmoid's zero gradient as NaN.

    A -inf reference log-prob (pi_ref = 0) gives the limit, never NaN: on the chosen side of reverse_kl,
    softened_rkl or jeffreys z = +inf, so the loss is 0 with gradient 0 (+inf with label_smoothing > 0).

    Inputs: four tensors of one shape (B,), any float dtype (computed in float32, or float64 if any input is
    float64). Returns (losses, chosen_rewards, rejected_rewards), each (B,).
    """
    check_float_tensor("policy_chosen_logps", policy_chosen_logps)
    ref = policy_chosen_logps
    _check_batch("policy_rejected_logps", policy_rejected_logps, "policy_chosen_logps", ref)
    _check_batch("ref_chosen_logps", ref_chosen_logps, "policy_chosen_logps", ref)
    _check_batch("ref_rejected_logps", ref_rejected_logps, "policy_chosen_logps", ref)
    check_positive("beta", beta)
    check_range("label_smoothing", label_smoothing, 0.0, 0.5)
    dtype = _compute_dtype(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    div = resolve(divergence).check_compute_dtype(dtype)
    cap = _check_exponent(max_exponent)

    # log r = log pi_ref - log pi, chosen and rejected in one elementwise call
    log_ratio = torch.stack(
        [
            ref_chosen_logps.to(dtype) - policy_chosen_logps.to(dtype),
            ref_rejected_logps.to(dtype) - policy_rejected_logps.to(dtype),
        ]
    )
    _, psi, _ = divergence_terms(clamp_log_ratio(log_ratio, div, cap), div)
    z = beta * (psi[0] - psi[1])
    # The eps term is left out where eps = 0 (a select, not a Python branch: eps may change under torch.compile),
    # so that z = +inf (pi_ref(chosen) = 0) gives the limit 0 rather than inf * 0 = NaN; with eps > 0 it is +inf.
    eps = _as_batch_tensor(label_smoothing, z, z.dtype)
    smoothed = torch.where(eps > 0, -F.logsigmoid(-z) * eps, 0.0)
    losses = -F.logsigmoid(z) * (1 - eps) + smoothed
    _, psi_at_one, _ = divergence_terms(log_ratio.new_zeros(1), div)
    rewards = (beta * (psi - psi_at_one)).detach()
    return losses, rewards[0], rewards[1]


# ---------------------------------------------------------------------------------------------------
# Group normalisation (DiDi-Instruct, GRPO-style)


def _check_group_size(group_size: object, batch: int) -> int:
    check_int("group_size", group_size, minimum=2)  # a standard deviation needs two samples
    if batch % group_size != 0:
        raise ValueError(f"group_size must divide the batch: B = {batch} is not divisible by group_size = {group_size}")
    return group_size


def group_normalized_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-8, clip: float | None = 3.0
) -> torch.Tensor:
    r"""A = (R - mean_G R) / (std_G R + eps), clipped to [-clip, clip] (DiDi-Instruct; clip=None: no clip).

    ``rewards`` (B,) holds consecutive groups of ``group_size`` samples of one prompt (B divisible by
    group_size >= 2). std is the unbiased sample standard deviation (torch.std, as GRPO implementations use).
    Plain differentiable torch ops; no host sync.
    """
    check_float_tensor("rewards", rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    g = _check_group_size(group_size, rewards.shape[0])
    check_positive("eps", eps, allow_zero=True)
    if clip is not None:
        check_positive("clip", clip)
    grouped = rewards.reshape(-1, g)
    adv = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + eps)
    if clip is not None:
        adv = adv.clamp(operand(-clip, adv), operand(clip, adv))
    return adv.reshape(-1)


# ---------------------------------------------------------------------------------------------------
# f-DPG


def _check_batch_value(name: str, value: object, like: torch.Tensor) -> None:
    """A number, a scalar tensor or a (B,) tensor on like's device."""
    if is_number(value):
        return
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a tensor, got bool")
    check_float_tensor(name, value)
    check_same(name, value, "policy_logprobs", like, shape=False, dtype=False)
    if value.shape not in ((), (1,), like.shape):
        raise ValueError(f"{name} must be a scalar or have shape (B,) = {tuple(like.shape)}, got {tuple(value.shape)}")


def _as_batch_tensor(value: float | torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A checked number or tensor as a (B,)-broadcastable tensor on like's device (detached)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype)
    if torch.compiler.is_compiling():  # tensor arithmetic keeps a value that changes between calls symbolic
        return torch.ones((), dtype=dtype, device=like.device) * value
    return torch.full((), value, dtype=dtype, device=like.device)


def validate_dpg(
    policy_logprobs,
    target_logscores,
    log_z,
    log_ratio,
    proposal_logprobs,
    divergence,
    baseline,
    group_size,
    max_exponent,
) -> tuple[Divergence, torch.dtype]:
    """Every argument of f_dpg_loss checked (FDPG runs this before it touches its state); returns the divergence
    and the compute dtype."""
    check_float_tensor("policy_logprobs", policy_logprobs)
    if policy_logprobs.dim() != 1 or policy_logprobs.shape[0] == 0:
        raise ValueError(f"policy_logprobs must have shape (B,) with B >= 1, got {tuple(policy_logprobs.shape)}")
    if (target_logscores is None) == (log_ratio is None):
        raise ValueError(
            "target_logscores and log_ratio: give exactly one (target log-scores log P(x) with "
            "log_z, or a discriminator's log density ratio)"
        )
    if log_ratio is not None and log_z is not None:
        raise ValueError("log_z goes with target_logscores; with log_ratio it must be None")
    if target_logscores is not None:
        _check_batch("target_logscores", target_logscores, "policy_logprobs", policy_logprobs)
    else:
        _check_batch("log_ratio", log_ratio, "policy_logprobs", policy_logprobs)
    if log_z is not None:
        _check_batch_value("log_z", log_z, policy_logprobs)
    if proposal_logprobs is not None:
        _check_batch("proposal_logprobs", proposal_logprobs, "policy_logprobs", policy_logprobs)
    _check_exponent(max_exponent)
    batch = policy_logprobs.shape[0]
    if group_size is not None:
        _check_group_size(group_size, batch)
        if not (baseline is None or (isinstance(baseline, str) and baseline == "mean")):
            raise ValueError(
                "baseline must be 'mean' or None when group_size is given (the group mean is the baseline)"
            )
    elif isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be 'mean', None, a number or a tensor, got {baseline!r}")
    elif baseline is not None:
        _check_batch_value("baseline", baseline, policy_logprobs)
    given = [t for t in (target_logscores, log_ratio, proposal_logprobs) if isinstance(t, torch.Tensor)]
    dtype = _compute_dtype(policy_logprobs, *given)
    div = resolve(divergence).check_compute_dtype(dtype)
    return div, dtype


def f_dpg_loss(
    policy_logprobs: torch.Tensor,
    *,
    target_logscores: torch.Tensor | None = None,
    log_z: torch.Tensor | float | None = None,
    log_ratio: torch.Tensor | None = None,
    proposal_logprobs: torch.Tensor | None = None,
    divergence: str | Divergence = "js",
    baseline: str | torch.Tensor | float | None = "mean",
    group_size: int | None = None,
    max_exponent: float = 30.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""f-DPG (Go et al. 2023): minimise D_f(p || pi) by the policy gradient E_pi[psi(r) grad log pi].

    Per sample x_i (math.md §4), everything but ``policy_logprobs`` detached::

        l_i = log P(x_i) - log Z - log pi(x_i)    (target_logscores, log_z)  or  l_i = log_ratio_i
        R_i = -psi(exp l_i)                        pseudo-reward
        w_i = pi(x_i) / q(x_i)                     with proposal_logprobs, else 1
        A_i = R_i - b                              b: batch mean of R ("mean"), 0 (None) or given
            = group_normalized_advantages(R)_i     when group_size is given (DiDi-Instruct)
        loss = -mean_i w_i A_i log pi(x_i)

    so grad loss = mean_i w_i (psi_i + b) grad log pi(x_i), an unbiased estimate of grad D_f(p||pi) (a
    constant baseline has zero expected gradient). The loss *value* is that surrogate; the divergence
    itself is estimated in ``stats["divergence"]``.

    Args:
        policy_logprobs: (B,) log pi(x) of each sampled sequence, with gradient (e.g. sequence_logprobs summed
            over tokens).
        target_logscores, log_z: log P(x) of the unnormalised target and log Z (number, scalar or (B,), e.g.
            per prompt; None means 0, i.e. target_logscores are normalised). Or, instead of both,
        log_ratio: (B,) a discriminator's estimate of log p(x)/pi(x) (its logit). Exactly one of
            target_logscores / log_ratio must be given.
            A hard constraint (log P(x) = -inf) is fine where psi(0) is finite (forward_kl, js, gkd_jsd(b<1),
            total_variation, squared_hellinger, pearson_chi2, alpha > 0, skew_forward_kl): such samples get
            the bounded reward -psi(0). Where psi(0) is infinite (reverse_kl, softened_rkl, jeffreys,
            neyman_chi2, alpha < 0, skew_reverse_kl(0)), D_f(p||pi) itself is infinite while pi puts mass
            outside the support of p, and the loss is NaN: give such samples a finite floor instead (e.g.
            log P = log base - 20, as examples/fdpg_toy.py's --violation-penalty does).
        proposal_logprobs: (B,) log q(x) of the proposal that sampled x (off-policy); weights are
            exp(min(log pi - log q, max_exponent)).
        baseline: "mean", None, a number or a scalar / (B,) tensor. With group_size it must be "mean" or None
            (the group mean is the baseline).
        group_size: normalise pseudo-rewards within consecutive groups of this many samples.
        max_exponent: no exponential above e^max_exponent: the log-ratio is clamped separately for psi (the
            rewards) and for f (the divergence estimate), each only where that function grows exponentially
            (math in divergences.h), so log-space psi (js, reverse_kl, softened_rkl, total_variation) is never
            clamped; 30 keeps psi * log pi products far from float32 overflow for log-ratios of +-1e3.

    Returns (loss, stats): stats holds detached (B,) ``pseudo_rewards``, ``importance_weights``,
    ``advantages`` and ``log_ratio`` (after psi's clamp, the one the rewards use), and the scalar
    ``divergence``: mean_i w_i f(r_i), the importance-sampled estimate of D_f(p||pi) (f at its own clamp).
    """
    div, dtype = validate_dpg(
        policy_logprobs,
        target_logscores,
        log_z,
        log_ratio,
        proposal_logprobs,
        divergence,
        baseline,
        group_size,
        max_exponent,
    )
    cap = max_exponent

    with torch.no_grad():
        log_pi = policy_logprobs.detach().to(dtype)
        if target_logscores is not None:
            z = _as_batch_tensor(0.0 if log_z is None else log_z, policy_logprobs, dtype)
            ell = target_logscores.detach().to(dtype) - z - log_pi
        else:
            ell = log_ratio.detach().to(dtype)
        # psi and f have their own clamps: f often grows faster than psi (js: f ~ r, psi ~ log r), and psi at
        # f's clamp would cut the reward (js at l = 100: 29.3 instead of 99.3). Log-space psi is never clamped.
        ell_f = clamp_log_ratio(ell, div, cap, of_f=True)
        ell = clamp_log_ratio(ell, div, cap)
        _, psi, _ = divergence_terms(ell, div)
        f_val, _, _ = divergence_terms(ell_f, div)
        rewards = -psi
        if proposal_logprobs is not None:
            log_w = log_pi - proposal_logprobs.detach().to(dtype)
            weights = torch.exp(log_w.clamp(max=operand(cap, log_w)))
        else:
            weights = torch.ones_like(log_pi)
        if group_size is not None:
            advantages = group_normalized_advantages(rewards, group_size)
        elif baseline is None:
            advantages = rewards
        elif isinstance(baseline, str):
            advantages = rewards - rewards.mean()
        else:
            advantages = rewards - _as_batch_tensor(baseline, policy_logprobs, dtype)
        divergence_estimate = (weights * f_val).mean()
        coef = (weights * advantages).to(policy_logprobs.dtype)

    loss = -(coef * policy_logprobs).mean()
    stats = {
        "pseudo_rewards": rewards,
        "importance_weights": weights,
        "advantages": advantages,
        "log_ratio": ell,
        "divergence": divergence_estimate,
    }
    return loss, stats
