"""nn.Module front ends that hold the state a training loop keeps between steps."""

from __future__ import annotations

import torch
from torch import nn

from ._validation import check_interval, check_positive
from .divergences import Divergence, resolve
from .ops.f_distill import compute_weights, f_distill
from .ops.f_divergence import DEFAULT_MAX_VOCAB_PAD, f_divergence_loss


class FDistillLoss(nn.Module):
    """f_distill_loss with the optional time-bin ratio normalisation of f-distill, and logging state.

    With ``num_time_bins > 0`` the density ratio r_b of each sample is divided by the running mean of r
    over the samples whose time t falls in the same bin (bins equally spaced over ``time_range``)::

        bins[k] <- ema_rate * bins[k] + (1 - ema_rate) * mean(r_b : t_b in bin k)   (bins seen this step)
        r_b     <- r_b / (bins[bin(t_b)] + 1e-6)

    ``ema_rate = 0`` (default) uses this step's bin means only. Bins start at 1, live in a buffer (saved
    with the state dict) and are updated in training mode only; with a ``process_group`` the bin
    statistics and the mean of h are all-reduced.

    After each call, ``last_ratio``, ``last_h`` (h_b after normalisation) and ``last_normalizer``
    (mean |x - teacher_x0| per sample) hold that step's detached per-sample statistics.
    """

    def __init__(
        self,
        divergence: str | Divergence = "js",
        *,
        logit_clamp: float = 10.0,
        ratio_clip: tuple[float, float] = (0.1, 20.0),
        normalize: bool = True,
        eps: float = 1e-6,
        reduction: str = "mean",
        process_group=None,
        num_time_bins: int = 0,
        ema_rate: float = 0.0,
        time_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        self.divergence = resolve(divergence)
        self.logit_clamp = logit_clamp
        self.ratio_clip = ratio_clip
        self.normalize = normalize
        self.eps = eps
        self.reduction = reduction
        self.process_group = process_group
        if isinstance(num_time_bins, bool) or not isinstance(num_time_bins, int) or num_time_bins < 0:
            raise ValueError(f"num_time_bins must be an int >= 0, got {num_time_bins!r}")
        if not 0.0 <= float(ema_rate) < 1.0:
            raise ValueError(f"ema_rate must lie in [0, 1), got {ema_rate}")
        lo, hi = float(time_range[0]), float(time_range[1])
        if not lo < hi:
            raise ValueError(f"time_range must satisfy lo < hi, got {time_range!r}")
        self.num_time_bins = num_time_bins
        self.ema_rate = float(ema_rate)
        self.time_range = (lo, hi)
        self.register_buffer("bins", torch.ones(num_time_bins, dtype=torch.float32))
        self.last_ratio: torch.Tensor | None = None
        self.last_h: torch.Tensor | None = None
        self.last_normalizer: torch.Tensor | None = None

    def _ratio_divisor(self, disc_logits: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if not isinstance(time, torch.Tensor) or time.shape != (disc_logits.shape[0],):
            shape = tuple(time.shape) if isinstance(time, torch.Tensor) else type(time).__name__
            raise ValueError(f"time must be a tensor of shape (B,) = ({disc_logits.shape[0]},), got {shape}")
        lo, hi = self.time_range
        width = (hi - lo) / self.num_time_bins
        idx = ((time.double() - lo) / width).floor().long().clamp(0, self.num_time_bins - 1)
        idx = idx.to(disc_logits.device)
        bins = self.bins.to(disc_logits.device)
        if self.training:
            lc = check_positive("logit_clamp", self.logit_clamp)
            rlo, rhi = check_interval("ratio_clip", self.ratio_clip)
            ratio, _, _ = compute_weights(disc_logits, self.divergence, False, lc, rlo, rhi)
            count = torch.zeros_like(bins).scatter_add_(0, idx, torch.ones_like(ratio))
            total = torch.zeros_like(bins).scatter_add_(0, idx, ratio)
            if self.process_group is not None:
                import torch.distributed as dist

                dist.all_reduce(count, group=self.process_group)
                dist.all_reduce(total, group=self.process_group)
            fresh = total / (count + 1e-6)
            bins = torch.where(count > 0, self.ema_rate * bins + (1 - self.ema_rate) * fresh, bins)
            self.bins.copy_(bins)  # no host sync: a masked update, not boolean indexing
        return bins[idx] + 1e-6

    def forward(
        self,
        x: torch.Tensor,
        teacher_x0: torch.Tensor,
        fake_x0: torch.Tensor,
        disc_logits: torch.Tensor | None = None,
        *,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        divisor = None
        if self.num_time_bins > 0 and disc_logits is not None:
            if time is None:
                raise ValueError("time is required when num_time_bins > 0 (the bin of each sample)")
            divisor = self._ratio_divisor(disc_logits, time)
        result = f_distill(
            x, teacher_x0, fake_x0, disc_logits, divergence=self.divergence, logit_clamp=self.logit_clamp,
            ratio_clip=self.ratio_clip, normalize=self.normalize, eps=self.eps, reduction=self.reduction,
            process_group=self.process_group, ratio_divisor=divisor,
        )
        self.last_ratio = None if result.ratio is None else result.ratio.detach()
        self.last_h = result.h.detach()
        self.last_normalizer = result.normalizer.detach()
        return result.loss


class FDivergenceLoss(nn.Module):
    """f_divergence_loss as a module: token-level distillation of a student's logits towards a teacher's.

    The constructor takes every keyword of ``fdiv_ops.f_divergence_loss`` (divergence, temperature,
    ignore_index, reduction, teacher_is_logprobs, max_vocab_pad); ``forward(student_logits,
    teacher_logits=None, labels=None, *, num_items_in_batch=None, teacher_topk=None)``.
    """

    def __init__(
        self,
        divergence: str | Divergence = "forward_kl",
        *,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "batchmean",
        teacher_is_logprobs: bool = False,
        max_vocab_pad: int | None = DEFAULT_MAX_VOCAB_PAD,
    ) -> None:
        super().__init__()
        self.divergence = resolve(divergence)
        self.temperature = check_positive("temperature", temperature)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.teacher_is_logprobs = teacher_is_logprobs
        self.max_vocab_pad = max_vocab_pad

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        num_items_in_batch=None,
        teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return f_divergence_loss(
            student_logits, teacher_logits, divergence=self.divergence, temperature=self.temperature,
            labels=labels, ignore_index=self.ignore_index, reduction=self.reduction,
            num_items_in_batch=num_items_in_batch, teacher_is_logprobs=self.teacher_is_logprobs,
            teacher_topk=teacher_topk, max_vocab_pad=self.max_vocab_pad,
        )

    def extra_repr(self) -> str:
        return f"divergence={self.divergence}, temperature={self.temperature}, reduction={self.reduction!r}"
