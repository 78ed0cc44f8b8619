"""TRL 1.x drop-ins built on fdiv_ops' core ops (checked against trl 1.16.0; docs/integrations.md).

* ``generalized_jsd_loss``: the signature and semantics of TRL 1.x's GKD loss
  (``trl.experimental.gkd.GKDTrainer.generalized_jsd_loss``), computed by ``fdiv_ops.f_divergence_loss`` with
  ``divergence=gkd_jsd(beta)``. ``GKDTrainer`` (TRL's trainer with this loss) and ``GKDLossMixin`` use it.
* ``dpo_loss``: TRL 1.x's ``DPOTrainer`` sigmoid loss under its ``f_divergence_type`` names and
  ``f_alpha_divergence_coef``, computed by ``fdiv_ops.f_dpo_loss``.

TRL is imported only when ``GKDTrainer`` is first looked up; everything else works without it.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_choice
from ..divergences import Divergence, alpha, gkd_jsd, resolve
from ..ops.alignment import f_dpo_loss
from ..ops.divergence_terms import dtype_max_exponent
from ..ops.f_divergence import f_divergence_loss

TESTED_TRL_VERSIONS = ("1.16.0",)
TRL_IGNORE_INDEX = -100  # generalized_jsd_loss masks labels == -100; TRL has no ignore_index argument
GKD_REDUCTIONS = ("batchmean", "sum", "mean", "none")
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


# ---------------------------------------------------------------------------------------------------
# GKD


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    num_items_in_batch: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""TRL 1.x's GKD ``generalized_jsd_loss``, on the fused ``f_divergence_loss``.

    Per position, with q = softmax(student_logits / T) and p = softmax(teacher_logits / T) (no T^2 factor),
    the loss is gkd_jsd(beta) = beta KL(p||m) + (1 - beta) KL(q||m), m = beta p + (1 - beta) q; beta = 0 is
    KL(p||q) and beta = 1 is KL(q||p), exactly. Positions whose label is -100 are dropped. Reductions, as in
    TRL 1.x:

    * ``num_items_in_batch`` given: the sum over kept positions / num_items_in_batch, whatever ``reduction``
      says (gradient accumulation; TRL checks it first);
    * ``"batchmean"``: the sum / the number of kept positions (at least 1), or without labels / size(0) of
      ``student_logits`` (the batch B of (B, S, V) logits, not B*S);
    * ``"sum"``: the sum;
    * ``"mean"``: the mean over every kept element, i.e. the sum / (kept positions * V);
    * ``"none"``: the per-element terms, (..., V) without labels and (kept positions, V) with labels.

    Differences from TRL, all deliberate: the loss is float32 for 16-bit logits (TRL computes in the logits'
    dtype); ``"mean"`` with every position masked gives 0 (TRL: the mean of nothing, NaN); vocabularies must
    match (TRL's GKDTrainer refuses different ones too). Only the student gets a gradient.
    """
    check_choice("reduction", reduction, GKD_REDUCTIONS)
    divergence = gkd_jsd(float(beta))
    core = dict(
        divergence=divergence,
        temperature=temperature,
        labels=labels,
        ignore_index=TRL_IGNORE_INDEX,
        max_vocab_pad=0,
    )
    if num_items_in_batch is not None:
        return f_divergence_loss(
            student_logits, teacher_logits, reduction="batchmean", num_items_in_batch=num_items_in_batch, **core
        )
    if reduction == "none":
        return _per_element_terms(student_logits, teacher_logits, labels, divergence, temperature)
    if reduction == "sum":
        return f_divergence_loss(student_logits, teacher_logits, reduction="sum", **core)
    if reduction == "batchmean":
        # With labels the core's batchmean is TRL's (kept positions, at least 1); without, TRL divides by size(0).
        items = None if labels is not None else max(student_logits.size(0), 1)
        return f_divergence_loss(
            student_logits, teacher_logits, reduction="batchmean", num_items_in_batch=items, **core
        )
    # "mean": every element of the (kept positions, V) terms, so sum / (kept positions * V)
    vocab = student_logits.shape[-1]
    if labels is None:
        items = max(student_logits.numel(), 1)
    else:
        items = (labels != TRL_IGNORE_INDEX).sum().clamp_min(1) * vocab  # a tensor: no host sync
    return f_divergence_loss(student_logits, teacher_logits, reduction="batchmean", num_items_in_batch=items, **core)


def _per_element_terms(student_logits, teacher_logits, labels, divergence: Divergence, temperature: float):
    """q_v f(p_v/q_v) of gkd_jsd per vocabulary entry (reduction="none").

    The fused kernel reduces each row in registers and never has these terms, so they are evaluated here from
    the log-probabilities in log space (docs/math.md §1: q f(p/q) = beta p log(p/m) + (1 - beta) q log(q/m),
    log m by logaddexp), with autograd for the gradient. Their row sums are f_divergence_loss(reduction="none").
    An entry that is -inf on either side contributes 0, as in the core op.
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"teacher_logits must have the vocabulary of student_logits ({student_logits.shape[-1]}), "
            f"got {teacher_logits.shape[-1]}"
        )
    acc = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_q = torch.log_softmax(student_logits.to(acc) / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.detach().to(acc) / temperature, dim=-1)
    keep = torch.isfinite(log_q) & torch.isfinite(log_p)
    # masked entries are evaluated at 0 so that no inf - inf reaches the value or the gradient
    log_q = torch.where(keep, log_q, torch.zeros_like(log_q))
    log_p = torch.where(keep, log_p, torch.zeros_like(log_p))
    b = divergence.param
    if b == 0.0:  # KL(p || q)
        terms = log_p.exp() * (log_p - log_q)
    elif b == 1.0:  # KL(q || p)
        terms = log_q.exp() * (log_q - log_p)
    else:
        log_m = torch.logaddexp(log_p + math.log(b), log_q + math.log1p(-b))
        terms = b * log_p.exp() * (log_p - log_m) + (1 - b) * log_q.exp() * (log_q - log_m)
    terms = torch.where(keep, terms, torch.zeros_like(terms))
    if labels is not None:
        terms = terms[labels != TRL_IGNORE_INDEX]  # (kept positions, V), as TRL returns
    return terms


class GKDLossMixin:
    """Makes a trainer's ``generalized_jsd_loss`` the fused one: put it before TRL's GKDTrainer (or any
    trainer whose ``compute_loss`` calls ``self.generalized_jsd_loss``) in the bases."""

    generalized_jsd_loss = staticmethod(generalized_jsd_loss)


def _make_gkd_trainer():
    try:
        from trl.experimental.gkd import GKDTrainer as _TRLGKDTrainer
    except ImportError as err:  # TRL < 1.0 kept it in trl.GKDTrainer, with a different loss (see the docs)
        raise ImportError(
            "fdiv_ops.integrations.trl.GKDTrainer needs TRL 1.x (trl.experimental.gkd.GKDTrainer); "
            f"tested with trl {', '.join(TESTED_TRL_VERSIONS)}: {err}"
        ) from err

    class GKDTrainer(GKDLossMixin, _TRLGKDTrainer):
        """TRL's GKDTrainer with ``generalized_jsd_loss`` computed by fdiv_ops (same arguments, same results).

        Like TRL's, ``compute_loss`` does not pass ``args.temperature`` to the loss (it applies only to
        on-policy generation); override ``compute_loss`` if you want the loss at that temperature.
        """

    GKDTrainer.__module__ = __name__
    return GKDTrainer


def __getattr__(name: str):
    if name == "GKDTrainer":
        trainer = _make_gkd_trainer()
        globals()["GKDTrainer"] = trainer  # build the class once
        return trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------
# DPO


def f_divergence(f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5) -> Divergence:
    """The fdiv_ops divergence of TRL 1.x's ``DPOConfig(f_divergence_type=..., f_alpha_divergence_coef=...)``.

    TRL 1.x scores a sequence by f'(u), u = pi/pi_ref; ``alpha_divergence`` with coefficient a uses
    (u^(a-1) - 1)/(a - 1), which is fdiv_ops' psi of ``alpha(1 - a)`` (TRL <= 0.28 used ``alpha(a)``).
    a = 1 falls back to reverse_kl as TRL does (|a - 1| < 1e-6), and a = 0 is forward_kl.
    """
    check_choice("f_divergence_type", f_divergence_type, F_DIVERGENCE_TYPES)
    if f_divergence_type == "reverse_kl":
        return resolve("reverse_kl")
    if f_divergence_type == "forward_kl":
        return resolve("forward_kl")
    if f_divergence_type == "js_divergence":
        return resolve("js")
    coef = f_alpha_divergence_coef
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
        raise ValueError(f"f_alpha_divergence_coef must be a finite number, got {coef!r}")
    if abs(coef - 1.0) < 1e-6:
        return resolve("reverse_kl")
    if coef == 0.0:
        return resolve("forward_kl")
    return alpha(1.0 - float(coef))


def _trl_max_exponent(div: Divergence, dtype: torch.dtype) -> float:
    """The exponent TRL 1.x lets its scores reach: its alpha branch clamps (a - 1) log u at 80 (11 for
    float16) before exp; forward_kl's exp is not clamped, so it overflows at log(dtype max)."""
    if div.name == "alpha":
        return 11.0 if dtype == torch.float16 else 80.0
    return dtype_max_exponent(torch.float64 if dtype == torch.float64 else torch.float32)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""TRL 1.x's DPO ``loss_type="sigmoid"`` under an f-divergence, on ``fdiv_ops.f_dpo_loss``.

    losses = -log sigmoid(beta (f'(u_chosen) - f'(u_rejected))), u = pi/pi_ref, per pair: TRL's loss is
    ``losses.mean()``. TRL 1.x's sigmoid loss has no label smoothing (its ``label_smoothing`` applies to
    the robust, exo_pair and aot losses only), so none is applied here. Exponents are clamped where TRL
    clamps them (alpha: (a - 1) log u <= 80, 11 for float16). Returns (losses, chosen_rewards,
    rejected_rewards) with TRL's rewards beta log(pi/pi_ref), detached.

    Differences from TRL: 16-bit log-probs are computed in float32 (TRL rounds the alpha scores to the input
    dtype); float64 works (TRL's alpha branch raises KeyError); forward_kl is clamped at log(float max)
    instead of overflowing to NaN.
    """
    div = f_divergence(f_divergence_type, f_alpha_divergence_coef)
    dtype = chosen_logps.dtype
    losses, _, _ = f_dpo_loss(
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        divergence=div,
        beta=beta,
        label_smoothing=0.0,
        max_exponent=_trl_max_exponent(div, dtype),
    )
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards
