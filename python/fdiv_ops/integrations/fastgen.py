"""FastGen (NVlabs/FastGen, the f-distill code) on fdiv_ops: its divergence names, its defaults, its generator
loss (docs/integrations.md, "FastGen recipe").

FastGen's f-distill generator step, as the paper and its code describe it::

    r     = clamp(exp(clamp(mean_k logits, -10, 10)), ratio_lower, ratio_upper)
    r    /= bins[bin(t)] + 1e-6          (ratio_normalization: bin_num bins over [t_min, t_max] of the
                                          noise scheduler; bins <- ema * bins + (1 - ema) * this step's means)
    h     = h_fastgen(r) / (mean(h_fastgen(r)) + 1e-6)
    loss  = VSD(gen_data, teacher_x0, fake_x0, scale=h) + gan_loss_weight_gen * mean(softplus(-logits))

which is ``fdiv_ops.FDistillLoss`` with ``num_time_bins=bin_num``, ``ema_rate=ratio_ema_rate``,
``time_range=(t_min, t_max)`` and ``ratio_clip=(ratio_lower, ratio_upper)``, plus the GAN term.
``fdistill_loss`` builds that module and always passes the time range explicitly: with EDM's
t in [0.002, 80], FDistillLoss's own default (0, 1) would put nearly every sample in the last bin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..divergences import Divergence, alpha, resolve
from ..nn import FDistillLoss

# FastGen's f_distill.f_div names -> the divergence they mean (p = data/teacher, q = generator).
FASTGEN_DIVERGENCES: dict[str, str] = {
    "kl": "forward_kl",
    "rkl": "reverse_kl",
    "js": "js",
    "sf": "softened_rkl",
    "sh": "squared_hellinger",
    "jf": "jeffreys",
    "neyman": "neyman_chi2",
}

# FastGen's weighting functions h are those of fdiv_ops up to a constant factor for sh (sqrt(r), ours
# sqrt(r)/4) and neyman (1/r, ours 2/r). The factor cancels in h / mean(h) except against the 1e-6 added to the
# mean, so for an exact match these two use the divergence whose h *is* FastGen's: alpha(0.5) (= 4 x
# squared_hellinger, h = r^0.5) and alpha(-1) (= neyman_chi2 / 2, h = 1/r).
_EXACT_WEIGHTING: dict[str, Divergence] = {"sh": alpha(0.5), "neyman": alpha(-1.0)}

DEFAULT_BIN_NUM = 10  # FastGen's f_distill.bin_num
DEFAULT_RATIO_EMA_RATE = 0.0  # f_distill.ratio_ema_rate (its ImageNet-64 config uses 0.5)
DEFAULT_RATIO_CLIP = (0.1, 20.0)  # f_distill.ratio_lower / ratio_upper
DEFAULT_LOGIT_CLAMP = 10.0  # FastGen clamps the mean discriminator logit to [-10, 10] before exp


def divergence(f_div: str, *, exact_weighting: bool = True) -> Divergence:
    """The fdiv_ops divergence for FastGen's ``f_distill.f_div`` name.

    ``exact_weighting=True`` returns, for "sh" and "neyman", the constant multiple of the named divergence
    whose h equals FastGen's weighting function (alpha(0.5), alpha(-1)), so that h / (mean h + 1e-6) is
    FastGen's to the last bit; ``False`` returns the divergence by name (squared_hellinger, neyman_chi2):
    the same direction and normalised weights up to ~1e-5 relative, and ``last_divergence_estimate`` of
    that divergence itself.
    """
    if f_div not in FASTGEN_DIVERGENCES:
        raise ValueError(f"f_div must be one of {', '.join(map(repr, FASTGEN_DIVERGENCES))} (FastGen), got {f_div!r}")
    if exact_weighting and f_div in _EXACT_WEIGHTING:
        return _EXACT_WEIGHTING[f_div]
    return resolve(FASTGEN_DIVERGENCES[f_div])


def time_range_of(noise_scheduler) -> tuple[float, float]:
    """(min_t, max_t) of a FastGen noise scheduler (its ``min_t`` and ``max_t`` attributes), or of a pair."""
    if hasattr(noise_scheduler, "min_t") and hasattr(noise_scheduler, "max_t"):
        return float(noise_scheduler.min_t), float(noise_scheduler.max_t)
    try:
        lo, hi = (float(v) for v in noise_scheduler)
    except (TypeError, ValueError):
        raise TypeError(
            "time_range must be a pair (t_min, t_max) or a noise scheduler with min_t and max_t, "
            f"got {type(noise_scheduler).__name__}"
        ) from None
    return lo, hi


def fdistill_loss(
    f_div: str = "js",
    *,
    time_range=None,
    ratio_normalization: bool = True,
    bin_num: int = DEFAULT_BIN_NUM,
    ratio_ema_rate: float = DEFAULT_RATIO_EMA_RATE,
    ratio_lower: float = DEFAULT_RATIO_CLIP[0],
    ratio_upper: float = DEFAULT_RATIO_CLIP[1],
    exact_weighting: bool = True,
    process_group=None,
) -> FDistillLoss:
    """An ``fdiv_ops.FDistillLoss`` configured as FastGen's f-distill generator loss (without the GAN term).

    Args:
        f_div: FastGen's divergence name: kl, rkl, js, sf, sh, jf or neyman.
        time_range: (t_min, t_max) of the noise scheduler whose t the call passes as ``time`` (EDM: (0.002, 80)),
            or the scheduler itself (its ``min_t`` and ``max_t``). Required with ratio_normalization: the bins
            are laid over it.
        ratio_normalization, bin_num, ratio_ema_rate, ratio_lower, ratio_upper: FastGen's f_distill config keys
            and defaults (time-bin normalisation on, 10 bins, EMA 0, ratio clipped to [0.1, 20]).
        exact_weighting: see ``divergence``.
        process_group: all-reduce the bin statistics and the mean of h, as FastGen does over its world.

    Call it as ``loss = criterion(gen_data, teacher_x0, fake_x0, fake_logits.detach(), time=t)``; the module
    keeps the bins in its state dict (FastGen keeps them in ``net.bins``) and updates them in training mode.
    """
    if time_range is None:
        if ratio_normalization:
            raise ValueError(
                "time_range is required with ratio_normalization: the (t_min, t_max) of the noise scheduler "
                "(EDM: (0.002, 80)), or the scheduler itself"
            )
        time_range = (0.0, 1.0)  # unused without bins
    lo, hi = time_range_of(time_range)
    return FDistillLoss(
        divergence(f_div, exact_weighting=exact_weighting),
        logit_clamp=DEFAULT_LOGIT_CLAMP,
        ratio_clip=(ratio_lower, ratio_upper),
        normalize=True,
        eps=1e-6,  # FastGen's VSD normaliser: 1 / (mean |x - teacher_x0| + 1e-6)
        reduction="mean",
        process_group=process_group,
        num_time_bins=bin_num if ratio_normalization else 0,
        ema_rate=ratio_ema_rate,
        time_range=(lo, hi),
    )


def generator_loss(
    criterion: FDistillLoss,
    gen_data: torch.Tensor,
    teacher_x0: torch.Tensor,
    fake_x0: torch.Tensor,
    fake_logits: torch.Tensor,
    t: torch.Tensor,
    *,
    gan_loss_weight_gen: float,
) -> dict[str, torch.Tensor]:
    """FastGen's f-distill generator loss: ``criterion`` on the detached logits plus the non-saturating GAN term.

    ``fake_logits`` (B, K) are the discriminator's logits on the teacher's features of the noised generator
    sample, with their graph: the GAN term's gradient reaches the generator through them, while the f-distill
    weights use them detached. Returns FastGen's loss map: total_loss, f_distill_loss, gan_loss_gen.
    """
    time = t if criterion.num_time_bins > 0 else None
    f_distill = criterion(gen_data, teacher_x0, fake_x0, fake_logits.detach(), time=time)
    gan = F.softplus(-fake_logits).mean()
    return {"total_loss": f_distill + gan_loss_weight_gen * gan, "f_distill_loss": f_distill, "gan_loss_gen": gan}
