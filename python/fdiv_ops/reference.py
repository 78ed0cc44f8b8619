"""Independent eager PyTorch mirror of every op, float64-capable: the tests' truth and the benchmark's
eager baseline. Written from docs/math.md, not from the kernels. The divergences are a table of small
objects (reference_divergences.py): f, psi and h of the log-ratio with their limits at r = 0 and r = inf,
and the categorical terms q f(p/q), all in forms that stay exact for any finite float64 log-ratio.

Numerics rules (docs/math.md §5), the same as the ops': an entry that is -inf on either side of a
categorical divergence contributes nothing; NaN or +inf anywhere in a row (or sample) makes exactly that
row's (sample's) result NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .divergences import Divergence, resolve
from .reference_divergences import categorical, elementwise, lookup


def _elementwise(which: str, divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    d = resolve(divergence)
    obj, param = lookup(d.name, d.param)
    return elementwise(obj, which, log_ratio, param)


def f(divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    """The generator f(r) at r = exp(log_ratio)."""
    return _elementwise("f", divergence, log_ratio)


def psi(divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    """psi(r) = f(r) - r f'(r): the gradient of D_f with respect to the model's own probability."""
    return _elementwise("psi", divergence, log_ratio)


def h(divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    """h(r) = r^2 f''(r) = -d psi / d log r: the f-distill weighting function."""
    return _elementwise("h", divergence, log_ratio)


def log_h(divergence: str | Divergence, log_ratio: torch.Tensor) -> torch.Tensor:
    """log h(r), exact where h itself would overflow (alpha with a large |alpha|)."""
    return _elementwise("log_h", divergence, log_ratio)


def qf(divergence: str | Divergence, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """The categorical terms q f(p/q) from log q and log p, elementwise (the rules of categorical_divergence)."""
    d = resolve(divergence)
    obj, param = lookup(d.name, d.param)
    return categorical(obj, log_q, log_p, param)


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
    """(r_b, h(r_b)) from the discriminator logits (B,) or (B, K), in the logits' dtype. A NaN logit gives
    NaN r_b and h_b (torch.clamp keeps NaN): a broken discriminator shows, it is never clipped to a number."""
    logits = disc_logits.reshape(disc_logits.shape[0], -1)
    ell = logits.mean(dim=1).clamp(-logit_clamp, logit_clamp)
    r = torch.exp(ell).clamp(ratio_clip[0], ratio_clip[1])
    if ratio_divisor is not None:
        r = r / ratio_divisor
    return r, h(divergence, torch.log(r))


def _normalized_h(log_hb: torch.Tensor) -> torch.Tensor:
    """h_b / (mean h + 1e-6) from log h_b, in log space (h = r^alpha overflows float32 for |alpha| >= 30).
    The mean runs over the samples whose h is not NaN, so a NaN sample stays the only NaN one."""
    valid = ~torch.isnan(log_hb)
    log_mean = torch.logsumexp(torch.where(valid, log_hb, -math.inf), dim=0) - torch.log(valid.sum().to(log_hb))
    return torch.exp(log_hb - torch.logaddexp(log_mean, torch.tensor(math.log(1e-6), dtype=log_hb.dtype)))


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
    """Eager f-distill / DMD2 generator loss (docs/math.md §2): value 0.5 mean(g^2) ("mean"), 0.5 sum(g^2)
    ("sum") or the per-sample 0.5 mean_i g_bi^2 ("none"); its gradient to x is g / (B D), g, or g_b / D.

    Trainers write 0.5 * mse(x, (x - g).detach()), which is that value and gradient in exact arithmetic but
    loses g to rounding once |x| >> |g| (x ~ 1e18 in float64 gives 0). Here the value is formed from g
    alone and the gradient from (x - x.detach()) * g, whose value is exactly 0: both exact at any scale."""
    batch = x.shape[0]
    with torch.no_grad():
        if disc_logits is None:
            hb = torch.ones(batch, dtype=x.dtype, device=x.device)
        else:
            r, _ = f_distill_weights(
                disc_logits, divergence, logit_clamp=logit_clamp, ratio_clip=ratio_clip, ratio_divisor=ratio_divisor
            )
            log_hb = log_h(divergence, torch.log(r))
            hb = (_normalized_h(log_hb) if normalize else torch.exp(log_hb)).to(x.dtype)
        view = (batch,) + (1,) * (x.dim() - 1)
        normalizer = (x - teacher_x0).abs().reshape(batch, -1).mean(dim=1)
        weight = hb / (normalizer + eps)
        g = weight.view(view) * (fake_x0 - teacher_x0)
        value = 0.5 * g * g
    surrogate = (x - x.detach()) * g  # value exactly 0, gradient g
    if reduction == "sum":
        return value.sum() + surrogate.sum()
    if reduction == "none":
        return value.reshape(batch, -1).mean(dim=1) + surrogate.reshape(batch, -1).mean(dim=1)
    return value.mean() + surrogate.mean()


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
    """log_softmax(logits / T) gathered at the labels (0 where ignored), and the entropy when asked.

    A row of all -inf logits gives log-prob -inf and entropy 0 (no distribution to be uncertain about); a
    row holding a NaN or +inf logit gives NaN for both (NaN in, NaN out for that row)."""
    scaled = logits / temperature
    row_max = scaled.amax(dim=-1)  # one cheap pass decides the row rules (amax keeps NaN)
    dead = row_max == -math.inf
    bad = torch.isnan(row_max) | (row_max == math.inf)
    log_probs = torch.log_softmax(torch.where(dead.unsqueeze(-1), 0.0, scaled), dim=-1)  # no NaN from dead rows
    keep = labels != ignore_index
    picked = log_probs.gather(-1, torch.where(keep, labels, torch.zeros_like(labels)).unsqueeze(-1)).squeeze(-1)
    picked = torch.where(bad, math.nan, torch.where(dead, -math.inf, picked))
    picked = torch.where(keep, picked, torch.zeros_like(picked))
    if not return_entropy:
        return picked
    # p log p -> 0 at p = 0; a NaN entry stays NaN through exp(NaN) * 0
    finite = torch.where(torch.isfinite(log_probs), log_probs, torch.zeros_like(log_probs))
    entropy = torch.where(dead, 0.0, -(log_probs.exp() * finite).sum(-1))
    return picked, torch.where(keep, entropy, torch.zeros_like(entropy))


def _sigmoid_loss(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z); the eps term is left out at eps = 0, so that z = +inf
    gives 0 rather than inf * 0 = NaN."""
    losses = -F.logsigmoid(z) * (1 - label_smoothing)
    return losses - F.logsigmoid(-z) * label_smoothing if label_smoothing else losses


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta=0.1, label_smoothing=0.0):
    """Plain DPO, sigmoid loss with conservative label smoothing: (losses, chosen_rewards, rejected_rewards)."""
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = _sigmoid_loss(beta * logits, label_smoothing)
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
    losses = _sigmoid_loss(z, label_smoothing)
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
    """sum_v q_v f(p_v/q_v) over the last dim. Entries that are -inf on either side contribute 0; a NaN or
    +inf entry on either side makes the row NaN (reference_divergences.categorical)."""
    return qf(divergence, log_q, log_p).sum(dim=-1)


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
    log_q_all = _safe_log_softmax(student_logits / temperature)
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
