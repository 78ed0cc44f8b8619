"""Independent eager PyTorch mirror of every op, float64-capable: the tests' truth and the benchmark's
eager baseline. Written from docs/math.md, not from the kernels: f, psi and h come from r = p/q with
explicit limits at r = 0 and r = inf, whereas the C++ functors work in log space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .divergences import Divergence, resolve

LOG2 = math.log(2.0)


def _limits(l: torch.Tensor, value: torch.Tensor, at_zero: float, at_inf: float) -> torch.Tensor:
    """`value` where l is finite; the mathematical limits at r = 0 (l = -inf) and r = inf (l = +inf)."""
    value = torch.where(l == -math.inf, torch.full_like(value, at_zero), value)
    return torch.where(l == math.inf, torch.full_like(value, at_inf), value)


def _fin(l: torch.Tensor) -> torch.Tensor:
    """l with the infinities replaced by 0, so the finite formula evaluates without NaN (masked later)."""
    return torch.where(torch.isfinite(l), l, torch.zeros_like(l))


def f(divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    """The generator f(r) at r = exp(log_ratio)."""
    d = resolve(divergence)
    l = log_ratio
    x = _fin(l)
    r = torch.exp(x)
    inf = math.inf
    name, a = d.name, d.param
    if name == "gkd_jsd" and a in (0.0, 1.0):  # TRL's endpoints
        return f("forward_kl" if a == 0.0 else "reverse_kl", l)
    if name == "forward_kl":
        return _limits(l, torch.special.xlogy(r, r), 0.0, inf)
    if name == "reverse_kl":
        return -l
    if name == "js":
        return _limits(l, torch.special.xlogy(r, r) - (r + 1) * torch.log((r + 1) / 2), LOG2, inf)
    if name == "gkd_jsd":
        m = a * r + 1 - a
        return _limits(l, a * r * torch.log(r / m) - (1 - a) * torch.log(m), -(1 - a) * math.log(1 - a), inf)
    if name == "squared_hellinger":
        return _limits(l, 1 - torch.sqrt(r), 1.0, -inf)
    if name == "softened_rkl":
        return _limits(l, (r + 1) * torch.log((r + 1) / (2 * r)), inf, -inf)
    if name == "jeffreys":
        return _limits(l, torch.expm1(x) * x, inf, inf)
    if name == "total_variation":
        return _limits(l, 0.5 * torch.abs(torch.expm1(x)), 0.5, inf)
    if name == "pearson_chi2":
        return _limits(l, torch.expm1(x) ** 2, 1.0, inf)
    if name == "neyman_chi2":
        return _limits(l, torch.expm1(x) ** 2 / r, inf, inf)
    if name == "alpha":
        value = (torch.expm1(a * x) - a * torch.expm1(x)) / (a * (a - 1))
        return _limits(l, value, 1 / a if a > 0 else inf, inf)
    if name == "skew_forward_kl":
        m = a * r + 1 - a
        at_inf = inf if a < 1 else 0.0
        return _limits(l, r * torch.log(r / m), 0.0, at_inf)
    if name == "skew_reverse_kl":
        at_zero = -math.log(a) if a > 0 else inf
        return _limits(l, -torch.log((1 - a) * r + a), at_zero, -inf if a < 1 else 0.0)
    raise AssertionError(name)


def psi(divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    """psi(r) = f(r) - r f'(r): the gradient of D_f with respect to the model's own probability."""
    d = resolve(divergence)
    l = log_ratio
    x = _fin(l)
    r = torch.exp(x)
    inf = math.inf
    name, a = d.name, d.param
    if name == "gkd_jsd" and a in (0.0, 1.0):
        return psi("forward_kl" if a == 0.0 else "reverse_kl", l)
    if name == "forward_kl":
        return _limits(l, -r, 0.0, -inf)
    if name == "reverse_kl":
        return 1 - l
    if name == "js":
        return _limits(l, torch.log(2 / (1 + r)), LOG2, -inf)
    if name == "gkd_jsd":
        return _limits(l, -(1 - a) * torch.log(a * r + 1 - a), -(1 - a) * math.log(1 - a), -inf)
    if name == "squared_hellinger":
        return _limits(l, 1 - torch.sqrt(r) / 2, 1.0, -inf)
    if name == "softened_rkl":
        return _limits(l, torch.log((r + 1) / (2 * r)) + 1, inf, 1 - LOG2)
    if name == "jeffreys":
        return _limits(l, 1 - r - x, inf, -inf)
    if name == "total_variation":
        return -0.5 * torch.sign(l)
    if name == "pearson_chi2":
        return _limits(l, -torch.expm1(2 * x), 1.0, -inf)
    if name == "neyman_chi2":
        return _limits(l, 2 / r - 2, inf, -2.0)
    if name == "alpha":
        value = -torch.expm1(a * x) / a
        return _limits(l, value, 1 / a if a > 0 else inf, -inf if a > 0 else 1 / a)
    if name == "skew_forward_kl":
        m = a * r + 1 - a
        at_inf = -(1 - a) / a if a > 0 else -inf
        return _limits(l, -(1 - a) * r / m, 0.0, at_inf)
    if name == "skew_reverse_kl":
        n = (1 - a) * r + a
        at_zero = -math.log(a) if a > 0 else inf
        return _limits(l, -torch.log(n) + (1 - a) * r / n, at_zero, -inf if a < 1 else 0.0)
    raise AssertionError(name)


def h(divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    """h(r) = r^2 f''(r) = -d psi / d log r: the f-distill weighting function."""
    d = resolve(divergence)
    l = log_ratio
    x = _fin(l)
    r = torch.exp(x)
    inf = math.inf
    name, a = d.name, d.param
    if name == "gkd_jsd" and a in (0.0, 1.0):
        return h("forward_kl" if a == 0.0 else "reverse_kl", l)
    ones = torch.ones_like(r)
    if name == "forward_kl":
        return _limits(l, r, 0.0, inf)
    if name == "reverse_kl":
        return ones
    if name == "js":
        return _limits(l, r / (r + 1), 0.0, 1.0)
    if name == "gkd_jsd":
        return _limits(l, a * (1 - a) * r / (a * r + 1 - a), 0.0, 1 - a)
    if name == "squared_hellinger":
        return _limits(l, torch.sqrt(r) / 4, 0.0, inf)
    if name == "softened_rkl":
        return _limits(l, 1 / (r + 1), 1.0, 0.0)
    if name == "jeffreys":
        return _limits(l, r + 1, 1.0, inf)
    if name == "total_variation":
        return torch.zeros_like(r)
    if name == "pearson_chi2":
        return _limits(l, 2 * r**2, 0.0, inf)
    if name == "neyman_chi2":
        return _limits(l, 2 / r, inf, 0.0)
    if name == "alpha":
        return _limits(l, r**a, 0.0 if a > 0 else inf, inf if a > 0 else 0.0)
    if name == "skew_forward_kl":
        return _limits(l, (1 - a) ** 2 * r / (a * r + 1 - a) ** 2, 0.0, 0.0 if a > 0 else inf)
    if name == "skew_reverse_kl":
        u = (1 - a) * r / ((1 - a) * r + a)
        return _limits(l, u**2, 0.0 if a > 0 else 1.0, 1.0 if a < 1 else 0.0)
    raise AssertionError(name)


# ---------------------------------------------------------------------------------------------------
# f_distill_loss (docs/math.md §2), written the way FastGen / DMD2 trainers write it.


def f_distill_weights(
    disc_logits: torch.Tensor,
    divergence: str | Divergence,
    *,
    logit_clamp: float = 10.0,
    ratio_clip: tuple[float, float] = (0.1, 20.0),
    ratio_divisor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_b, h(r_b)) from the discriminator logits (B,) or (B, K), in the logits' dtype."""
    logits = disc_logits.reshape(disc_logits.shape[0], -1)
    ell = logits.mean(dim=1).clamp(-logit_clamp, logit_clamp)
    r = torch.exp(ell).clamp(ratio_clip[0], ratio_clip[1])
    if ratio_divisor is not None:
        r = r / ratio_divisor
    return r, h(divergence, torch.log(r))


def f_distill_loss(
    x: torch.Tensor,
    teacher_x0: torch.Tensor,
    fake_x0: torch.Tensor,
    disc_logits: torch.Tensor | None = None,
    *,
    divergence: str | Divergence = "reverse_kl",
    logit_clamp: float = 10.0,
    ratio_clip: tuple[float, float] = (0.1, 20.0),
    normalize: bool = True,
    eps: float = 1e-6,
    reduction: str = "mean",
    ratio_divisor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eager f-distill / DMD2 generator loss; its gradient to x is g / (B D) ("mean") or g ("sum")."""
    batch = x.shape[0]
    with torch.no_grad():
        if disc_logits is None:
            hb = torch.ones(batch, dtype=x.dtype, device=x.device)
        else:
            _, hb = f_distill_weights(
                disc_logits, divergence, logit_clamp=logit_clamp, ratio_clip=ratio_clip, ratio_divisor=ratio_divisor
            )
            hb = hb.to(x.dtype)
            if normalize:
                hb = hb / (hb.mean() + 1e-6)
        view = (batch,) + (1,) * (x.dim() - 1)
        normalizer = (x - teacher_x0).abs().reshape(batch, -1).mean(dim=1)
        weight = hb / (normalizer + eps)
        g = weight.view(view) * (fake_x0 - teacher_x0)
        target = (x - g).detach()
    return 0.5 * F.mse_loss(x, target, reduction=reduction)


# ---------------------------------------------------------------------------------------------------
# Sequence-level alignment (docs/math.md §4), written the way TRL / disco / DiDi-Instruct trainers write it.


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """log_softmax(logits / T) gathered at the labels (0 where ignored), and the entropy when asked."""
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    keep = labels != ignore_index
    picked = log_probs.gather(-1, torch.where(keep, labels, torch.zeros_like(labels)).unsqueeze(-1)).squeeze(-1)
    picked = torch.where(keep, picked, torch.zeros_like(picked))
    if not return_entropy:
        return picked
    finite = torch.where(torch.isfinite(log_probs), log_probs, torch.zeros_like(log_probs))  # p log p -> 0 at p = 0
    entropy = -(log_probs.exp() * finite).sum(-1)
    return picked, torch.where(keep, entropy, torch.zeros_like(entropy))


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta=0.1, label_smoothing=0.0):
    """Plain DPO, sigmoid loss with conservative label smoothing: (losses, chosen_rewards, rejected_rewards)."""
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def trl_f_dpo_logits(
    policy_chosen,
    policy_rejected,
    ref_chosen,
    ref_rejected,
    *,
    divergence="reverse_kl",
    alpha_coef=None,
    trl_version="1",
):
    """The argument of TRL's sigmoid in its DPO loss (before beta) for f_divergence_type reverse_kl / forward_kl /
    js_divergence / alpha_divergence, restated from the f-DPO formulas, u = pi/pi_ref per sequence.

    trl_version "1" (TRL 1.x, trl.DPOTrainer._compute_loss): the score of a sequence is f'(u) = log u,
    1 - 1/u, log(2u/(1+u)), and (u^(a-1) - 1)/(a - 1) with the exponent (a - 1) log u clamped at 80 (11 for
    float16) and a = 1 (|a - 1| < 1e-6) falling back to log u; the argument is score(chosen) - score(rejected).
    trl_version "0.28" (TRL <= 0.28, its dpo_loss): reverse_kl and js as above, alpha_divergence
    (u_rejected^-a - u_chosen^-a)/a with the exponent capped at log(dtype max); no forward_kl."""
    chosen_lr = policy_chosen - ref_chosen
    rejected_lr = policy_rejected - ref_rejected
    if trl_version == "0.28":
        coef = 1.0 if alpha_coef is None else alpha_coef
        cap = math.floor(math.log(torch.finfo(chosen_lr.dtype).max) * 1e4) / 1e4
        if divergence == "alpha_divergence":

            def capped(x):
                return torch.exp(torch.clamp(x, max=cap))

            return (capped(-coef * rejected_lr) - capped(-coef * chosen_lr)) / coef
        logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
        if divergence == "js_divergence":
            logits = logits - (F.softplus(chosen_lr) - F.softplus(rejected_lr))
        return logits
    if trl_version != "1":
        raise ValueError(f"trl_version must be '1' or '0.28', got {trl_version!r}")
    coef = 0.5 if alpha_coef is None else alpha_coef  # TRL 1.x's DPOConfig default

    def score(lr):
        if divergence == "reverse_kl" or (divergence == "alpha_divergence" and abs(coef - 1.0) < 1e-6):
            return lr
        if divergence == "forward_kl":
            return 1 - torch.exp(-lr)
        if divergence == "js_divergence":
            return math.log(2.0) + F.logsigmoid(lr)
        if divergence == "alpha_divergence":
            cap = 11.0 if lr.dtype == torch.float16 else 80.0
            return torch.expm1(torch.clamp((coef - 1) * lr, max=cap)) / (coef - 1)
        raise ValueError(f"unknown f_divergence_type {divergence!r}")

    return score(chosen_lr) - score(rejected_lr)


def f_dpo_loss(
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, divergence="reverse_kl", beta=0.1, label_smoothing=0.0
):
    """f-DPO from the math: z = beta (psi(r_w) - psi(r_l)), r = pi_ref/pi; rewards beta (psi(r) - psi(1))."""
    l_w, l_l = ref_chosen - policy_chosen, ref_rejected - policy_rejected
    psi_w, psi_l = psi(divergence, l_w), psi(divergence, l_l)
    z = beta * (psi_w - psi_l)
    losses = -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    psi_1 = psi(divergence, torch.zeros_like(l_w))
    return losses, (beta * (psi_w - psi_1)).detach(), (beta * (psi_l - psi_1)).detach()


def group_normalized_advantages(rewards, group_size, eps=1e-8, clip=3.0):
    """DiDi-Instruct's A = (R - mean_G) / (std_G + eps) clipped to +-clip, one group at a time."""
    out = []
    for group in rewards.split(group_size):
        a = (group - group.mean()) / (group.std() + eps)
        out.append(a if clip is None else a.clamp(-clip, clip))
    return torch.cat(out)


def f_dpg_loss(
    policy_logprobs,
    *,
    target_logscores=None,
    log_z=0.0,
    log_ratio=None,
    proposal_logprobs=None,
    divergence="js",
    baseline="mean",
    group_size=None,
):
    """Eager f-DPG surrogate: -mean(w A log pi) with R = -psi(p/pi) and w = pi/q (no clamping)."""
    with torch.no_grad():
        log_pi = policy_logprobs.detach()
        ell = log_ratio if log_ratio is not None else target_logscores - log_z - log_pi
        rewards = -psi(divergence, ell)
        w = torch.ones_like(log_pi) if proposal_logprobs is None else torch.exp(log_pi - proposal_logprobs)
        if group_size is not None:
            adv = group_normalized_advantages(rewards, group_size)
        elif baseline is None:
            adv = rewards
        elif isinstance(baseline, str):
            adv = rewards - rewards.mean()
        else:
            adv = rewards - baseline
    return -(w * adv * policy_logprobs).mean(), (w * f(divergence, ell)).mean()


# ---------------------------------------------------------------------------------------------------
# f_divergence_loss (docs/math.md §3): token-level distillation on logits, written the eager way
# (full log-softmaxes, a (rows x V) term tensor, autograd for the gradient).


def _safe_log_softmax(x: torch.Tensor) -> torch.Tensor:
    """log_softmax with rows of -inf kept at -inf (log_softmax alone would give NaN there)."""
    dead = (x == -math.inf).all(dim=-1, keepdim=True)
    return torch.where(dead, torch.full_like(x, -math.inf), F.log_softmax(torch.where(dead, 0.0, x), dim=-1))


def categorical_divergence(divergence: str | Divergence, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """sum_v q_v f(p_v/q_v) over the last dim; entries that are -inf on either side contribute 0."""
    keep = (log_q > -math.inf) & (log_p > -math.inf)
    l = torch.where(keep, log_p - log_q, torch.zeros_like(log_q))
    q = torch.exp(torch.where(keep, log_q, torch.zeros_like(log_q)))
    term = torch.where(keep, q * f(divergence, l), torch.zeros_like(q))
    return term.sum(dim=-1)


def _reduce(row: torch.Tensor, labels, ignore_index, reduction, num_items_in_batch) -> torch.Tensor:
    weight = torch.ones_like(row) if labels is None else (labels != ignore_index).to(row.dtype)
    row = torch.where(weight > 0, row, torch.zeros_like(row))
    if reduction == "none":
        return row
    if reduction == "sum":
        return row.sum()
    denom = weight.sum().clamp_min(1) if num_items_in_batch is None else num_items_in_batch
    return row.sum() / denom


def f_divergence_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str | Divergence = "forward_kl",
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    num_items_in_batch=None,
    teacher_is_logprobs: bool = False,
) -> torch.Tensor:
    """Eager f_divergence_loss: the shorter vocabulary padded with -inf, as TRL and Liger do."""
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    teacher_logits = teacher_logits.to(student_logits.dtype)
    if vs < vt:
        student_logits = F.pad(student_logits, (0, vt - vs), value=-math.inf)
    elif vt < vs:
        teacher_logits = F.pad(teacher_logits, (0, vs - vt), value=-math.inf)
    log_q = _safe_log_softmax(student_logits / temperature)
    log_p = teacher_logits.detach() if teacher_is_logprobs else _safe_log_softmax(teacher_logits.detach() / temperature)
    row = categorical_divergence(divergence, log_q, log_p)
    return _reduce(row, labels, ignore_index, reduction, num_items_in_batch)


def f_divergence_topk_loss(
    student_logits: torch.Tensor,
    indices: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    divergence: str | Divergence = "forward_kl",
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    num_items_in_batch=None,
) -> torch.Tensor:
    """The top-k definition: D_f between the (k+1)-category distributions {the teacher's k tokens, one
    bucket with each side's remaining mass}; the student's bucket is a log-sum-exp over its other tokens."""
    log_q_all = F.log_softmax(student_logits / temperature, dim=-1)
    log_q_top = log_q_all.gather(-1, indices)
    outside = torch.ones_like(log_q_all, dtype=torch.bool).scatter(-1, indices, False)
    log_q_rest = torch.logsumexp(torch.where(outside, log_q_all, -math.inf), dim=-1, keepdim=True)
    lp = teacher_logprobs.detach().to(log_q_all.dtype)
    p_rest = (1 - lp.exp().sum(-1, keepdim=True)).clamp_min(0)
    log_p_rest = torch.log(p_rest)
    row = categorical_divergence(divergence, torch.cat([log_q_top, log_q_rest], -1), torch.cat([lp, log_p_rest], -1))
    return _reduce(row, labels, ignore_index, reduction, num_items_in_batch)


def trl_generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    num_items_in_batch=None,
) -> torch.Tensor:
    """TRL 1.x's GKD generalized_jsd_loss semantics (trl.experimental.gkd, TRL 1.16), restated for the drop-in
    tests (not TRL's code).

    Per element: logits divided by the temperature before the log-softmaxes (no T^2 factor); beta = 0 is
    p log(p/q) (KL(teacher || student)), beta = 1 is q log(q/p), otherwise beta p log(p/m) + (1 - beta) q log(q/m)
    with m = beta p + (1 - beta) q. Elements of positions whose label is -100 are dropped. Reduction:
    num_items_in_batch given: sum / num_items_in_batch (whatever the reduction); "batchmean": sum / max(kept
    positions, 1) with labels, else sum / max(size(0), 1), the batch B of (B, S, V) logits; "sum"; "mean": the
    mean over every kept element (NaN when none is kept); "none": the per-element terms, (kept positions, V)
    with labels."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        per_entry = log_t.exp() * (log_t - log_s)
    elif beta == 1:
        per_entry = log_s.exp() * (log_s - log_t)
    else:
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
        per_entry = beta * log_t.exp() * (log_t - log_m) + (1 - beta) * log_s.exp() * (log_s - log_m)
    if labels is not None:
        per_entry = per_entry[labels != -100]
    if num_items_in_batch is not None:
        return per_entry.sum() / num_items_in_batch
    if reduction == "batchmean":
        denom = (labels != -100).sum().clamp_min(1) if labels is not None else max(per_entry.size(0), 1)
        return per_entry.sum() / denom
    if reduction == "sum":
        return per_entry.sum()
    if reduction == "mean":
        return per_entry.mean()
    return per_entry


def fused_linear_f_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    divergence: str | Divergence = "forward_kl",
    temperature: float = 1.0,
    ignore_index: int = -100,
    hard_loss_weight: float = 0.0,
    reduction: str = "batchmean",
    num_items_in_batch=None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Eager fused-linear KD with the logits materialised (in the inputs' dtype: float64 in, float64 truth):
    per counted row, D_f at temperature T plus hard_loss_weight * CE(student, label) at temperature 1,
    reduced like f_divergence_loss. chunk_size is accepted and ignored (the whole batch is one chunk)."""
    student_logits = F.linear(student_hidden, student_weight, student_bias)
    with torch.no_grad():
        teacher_logits = F.linear(teacher_hidden, teacher_weight, teacher_bias)
    row = f_divergence_loss(
        student_logits, teacher_logits, divergence=divergence, temperature=temperature, reduction="none"
    )
    if hard_loss_weight:
        vocab = student_logits.shape[-1]
        ce = F.cross_entropy(
            student_logits.reshape(-1, vocab).to(row.dtype),
            labels.reshape(-1),
            ignore_index=ignore_index,
            reduction="none",
        ).reshape(row.shape)
        row = row + hard_loss_weight * ce
    return _reduce(row, labels, ignore_index, reduction, num_items_in_batch)
