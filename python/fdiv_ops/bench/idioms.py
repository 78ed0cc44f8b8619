"""The eager PyTorch a user writes today for each loss: the ``torch`` provider, and ``compile``'s input.

These are the baselines a speed-up must beat to matter, so they are the plain expressions of the trainers
people use (TRL's GKD, the DMD2 / FastGen generator loss, TRL's log-prob gather), restated from their
formulas, not the package's generic reference (which evaluates any f from the log-ratio and is slower).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fdiv_ops.divergences import resolve

from .spec import Impl

# ---------------------------------------------------------------------------------------------------
# Token-level KD on logits (rows, V), reduced as the sum over rows / rows (TRL's and our "batchmean").


def kd_beta(divergence: str) -> float | None:
    """The GKD beta of a divergence (forward_kl 0, reverse_kl 1, gkd_jsd(b) b), or None: not a GKD loss."""
    spec = resolve(divergence)
    return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(spec.name, spec.param if spec.name == "gkd_jsd" else None)


def kd_loss(divergence: str) -> Impl | str:
    """F.kl_div on log_softmax for the KLs; for gkd_jsd(beta) the mixture form of TRL's generalized_jsd_loss
    (log m by logsumexp over a stack, then two F.kl_div)."""
    beta = kd_beta(divergence)
    if beta is None:
        return f"no idiomatic eager expression is declared for {divergence}"
    if beta == 0.0:

        def forward_kl(student_logits, teacher_logits):
            log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
            return F.kl_div(log_q, log_p, log_target=True, reduction="sum") / student_logits.shape[0]

        return Impl(forward_kl, "F.kl_div(log_softmax(s), log_softmax(t), log_target=True, reduction='sum') / rows")
    if beta == 1.0:

        def reverse_kl(student_logits, teacher_logits):
            log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
            return F.kl_div(log_p, log_q, log_target=True, reduction="sum") / student_logits.shape[0]

        return Impl(reverse_kl, "F.kl_div(log_softmax(t), log_softmax(s), log_target=True, reduction='sum') / rows")
    log_beta, log_rest = math.log(beta), math.log1p(-beta)

    def gkd(student_logits, teacher_logits):
        log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
        log_m = torch.logsumexp(torch.stack([log_q + log_rest, log_p + log_beta]), dim=0)
        loss = beta * F.kl_div(log_m, log_p, log_target=True, reduction="sum")
        loss = loss + (1 - beta) * F.kl_div(log_m, log_q, log_target=True, reduction="sum")
        return loss / student_logits.shape[0]

    return Impl(
        gkd,
        f"TRL GKD's expression: log m = logsumexp(stack(log q + log(1-b), log p + log b)), "
        f"b KL(p||m) + (1-b) KL(q||m) by F.kl_div, b = {beta:g}, sum / rows",
    )


# ---------------------------------------------------------------------------------------------------
# Per-token log-probabilities of the labels.


def label_logprobs(ignore_index: int) -> Impl:
    def gather_minus_logsumexp(logits, labels):
        keep = labels != ignore_index
        picked = logits.gather(-1, torch.where(keep, labels, 0).unsqueeze(-1)).squeeze(-1)
        return (picked - logits.logsumexp(-1)).masked_fill(~keep, 0.0)

    return Impl(gather_minus_logsumexp, "logits.gather(-1, labels) - logits.logsumexp(-1), 0 where ignored")


# ---------------------------------------------------------------------------------------------------
# The DMD2 / FastGen generator loss (docs/math.md §2): weights from the discriminator, then 0.5 mse to a
# detached target. h(r) as FastGen writes it per divergence, in the ratio r (clamped to [0.1, 20]).

_H_OF_RATIO = {
    "reverse_kl": lambda r: torch.ones_like(r),
    "forward_kl": lambda r: r,
    "js": lambda r: r / (r + 1),
    "softened_rkl": lambda r: 1 / (r + 1),
    "squared_hellinger": lambda r: 0.25 * r.sqrt(),
    "jeffreys": lambda r: r + 1,
    "neyman_chi2": lambda r: 2 / r,
}


def dmd_generator_loss(divergence: str) -> Impl | str:
    h_of_ratio = _H_OF_RATIO.get(divergence)
    if h_of_ratio is None:
        return f"FastGen has no {divergence} weighting"

    def f_distill_eager(x, teacher_x0, fake_x0, disc_logits):
        dims = list(range(1, x.dim()))
        with torch.no_grad():
            ratio = disc_logits.mean(dim=1).clamp(-10, 10).exp().clamp(0.1, 20)
            h = h_of_ratio(ratio)
            h = h / (h.mean() + 1e-6)
            normalizer = (x - teacher_x0).abs().mean(dim=dims, keepdim=True)
            weight = h.view(-1, *[1] * len(dims)) / (normalizer + 1e-6)
            grad = torch.nan_to_num(weight * (fake_x0 - teacher_x0))
        return 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="mean")

    return Impl(
        f_distill_eager,
        "the DMD2/FastGen eager loss: h(clamped ratio) / mean h, / mean|x - teacher|, 0.5 mse(x, (x - grad).detach())",
    )
