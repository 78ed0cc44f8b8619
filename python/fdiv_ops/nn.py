"""nn.Module front ends that hold the state a training loop keeps between steps."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._validation import (
    check_bool,
    check_choice,
    check_int,
    check_interval,
    check_positive,
    check_process_group,
    check_range,
    is_number,
)
from .divergences import Divergence, resolve
from .ops import f_distill as _f_distill
from .ops import f_divergence as _f_divergence
from .ops import fused_linear as _fused_linear
from .ops.alignment import f_dpg_loss, validate_dpg
from .ops.divergence_terms import divergence_terms
from .ops.f_distill import compute_weights, f_distill
from .ops.f_divergence import DEFAULT_MAX_VOCAB_PAD, f_divergence_loss
from .ops.fused_linear import fused_linear_f_divergence


class FDistillLoss(nn.Module):
    """f_distill_loss with the optional time-bin ratio normalisation of f-distill, and logging state.

    With ``num_time_bins > 0`` the density ratio r_b of each sample is divided by the running mean of r
    over the samples whose time t falls in the same bin (bins equally spaced over ``time_range``, which has no
    default: bins need the range of the ``time`` the caller passes, e.g. EDM's (0.002, 80))::

        bins[k] <- ema_rate * bins[k] + (1 - ema_rate) * mean(r_b : t_b in bin k)   (bins seen this step)
        r_b     <- r_b / (bins[bin(t_b)] + 1e-6)

    ``ema_rate = 0`` (default) uses this step's bin means only. Bins start at 1, live in a buffer (saved
    with the state dict) and are updated in training mode only; with a ``process_group`` the bin
    statistics and the mean of h are all-reduced: every rank makes the same collectives whatever its call's
    arguments (a rank without disc_logits contributes nothing to the bins, h = 1 to the mean of h), as long as
    the ranks share num_time_bins and training mode.

    After each call these hold that step's detached per-sample statistics, for logging:
      ``last_ratio``       r_b as the weighting used it: clipped to ratio_clip, then divided by its time bin's
                           mean when bins are on (None without disc_logits);
      ``last_h``           h_b after batch normalisation;
      ``last_normalizer``  mean |x - teacher_x0| per sample;
      ``last_divergence_estimate``  E_q[f(r)] over the batch with the discriminator's clipped ratio (before any
                           time-bin division): an estimate of D_f(p_t || q_t) to compare divergences by,
                           computed on first access only.
    ``time`` is binned linearly over ``time_range``: pass the quantity your sampler is uniform in (for a
    log-uniform sigma, pass log sigma and its range).
    """

    def __init__(
        self,
        divergence: str | Divergence = "reverse_kl",
        *,
        logit_clamp: float = 10.0,
        ratio_clip: tuple[float, float] = (0.1, 20.0),
        normalize: bool = True,
        eps: float = 1e-6,
        reduction: str = "mean",
        process_group=None,
        num_time_bins: int = 0,
        ema_rate: float = 0.0,
        time_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.divergence = resolve(divergence)
        if self.divergence.name == "total_variation":
            raise ValueError("divergence: total_variation has h = 0 and no f-distill gradient; choose another")
        check_positive("logit_clamp", logit_clamp)
        check_interval("ratio_clip", ratio_clip)
        check_bool("normalize", normalize)
        check_positive("eps", eps)
        check_choice("reduction", reduction, _f_distill.REDUCTIONS)
        check_process_group("process_group", process_group)
        check_int("num_time_bins", num_time_bins, minimum=0)
        check_range("ema_rate", ema_rate, 0.0, 1.0, hi_open=True)
        if time_range is None:
            # no default range: bins over (0, 1) with EDM's t in [0.002, 80] silently change the loss (issue 15)
            if num_time_bins > 0:
                raise ValueError(
                    "time_range is required with num_time_bins > 0: the (lo, hi) range of the `time` you pass "
                    "(the noise scheduler's (t_min, t_max), e.g. EDM's (0.002, 80)); the bins are laid over it"
                )
        else:
            if (
                not isinstance(time_range, (tuple, list))
                or len(time_range) != 2
                or not all(is_number(v) for v in time_range)
            ):
                raise TypeError(f"time_range must be a pair (lo, hi) of numbers, got {time_range!r}")
            lo, hi = time_range
            if not (-math.inf < lo and lo < hi and hi < math.inf):
                raise ValueError(f"time_range must satisfy lo < hi, both finite, got {time_range!r}")
            time_range = (lo, hi)
        self.logit_clamp = logit_clamp
        self.ratio_clip = tuple(ratio_clip)
        self.normalize = normalize
        self.eps = eps
        self.reduction = reduction
        self.process_group = process_group
        self.num_time_bins = num_time_bins
        self.ema_rate = ema_rate
        self.time_range = time_range
        self.register_buffer("bins", torch.ones(num_time_bins, dtype=torch.float32))
        self.last_ratio: torch.Tensor | None = None
        self.last_h: torch.Tensor | None = None
        self.last_normalizer: torch.Tensor | None = None
        self._last_logits: torch.Tensor | None = None

    def _check_time(self, time: object, batch: int) -> None:
        if (
            not isinstance(time, torch.Tensor)
            or time.shape != (batch,)
            or time.dtype == torch.bool
            or time.dtype.is_complex
        ):
            got = f"{time.dtype} {tuple(time.shape)}" if isinstance(time, torch.Tensor) else type(time).__name__
            raise ValueError(f"time must be a real tensor of shape (B,) = ({batch},), got {got}")

    def _update_bins(self, count: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """The bins after this step's per-bin (count, sum of r), summed over the process group when there is one:
        a single all-reduce of (2, num_time_bins) float64 values that every rank makes in training mode whatever
        its arguments (a rank without disc_logits brings zeros), so the ranks' collectives stay paired and
        their bins equal. No host sync: a masked update, not boolean indexing."""
        if self.process_group is not None:
            import torch.distributed as dist

            both = torch.stack([count, total]).to(torch.float64)
            dist.all_reduce(both, group=self.process_group)
            count, total = both[0].to(count.dtype), both[1].to(total.dtype)
        bins = self.bins.to(count.device)
        fresh = total / (count + 1e-6)
        bins = torch.where(count > 0, self.ema_rate * bins + (1 - self.ema_rate) * fresh, bins)
        self.bins.copy_(bins)
        return bins

    def _ratio_divisor(self, disc_logits: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        lo, hi = self.time_range
        width = (hi - lo) / self.num_time_bins
        idx = ((time.double() - lo) / width).floor().long().clamp(0, self.num_time_bins - 1)
        idx = idx.to(disc_logits.device)
        bins = self.bins.to(disc_logits.device)
        if self.training:
            rlo, rhi = self.ratio_clip
            # the statistics in the bins' dtype: float64 bins (module.double()) get a float64 ratio
            ratio, _, _ = compute_weights(
                disc_logits, self.divergence, bins.dtype == torch.float64, self.logit_clamp, rlo, rhi
            )
            ratio = ratio.to(bins.dtype)
            count = torch.zeros_like(bins).scatter_add_(0, idx, torch.ones_like(ratio))
            total = torch.zeros_like(bins).scatter_add_(0, idx, ratio)
            bins = self._update_bins(count, total)
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
        # Everything is checked before the bins change: a rejected call leaves the module as it was.
        _f_distill.validate(
            x,
            teacher_x0,
            fake_x0,
            disc_logits,
            self.divergence,
            self.logit_clamp,
            self.ratio_clip,
            self.normalize,
            self.eps,
            self.reduction,
            self.process_group,
        )
        if time is not None and self.num_time_bins == 0:
            raise ValueError("time was given but num_time_bins = 0: set num_time_bins to bin the ratio by time")
        divisor = None
        if self.num_time_bins > 0 and disc_logits is not None:
            if time is None:
                raise ValueError("time is required when num_time_bins > 0 (the bin of each sample)")
            self._check_time(time, x.shape[0])
            divisor = self._ratio_divisor(disc_logits, time)
        elif self.num_time_bins > 0 and self.training and self.process_group is not None:
            # no ratio to bin on this rank, but the other ranks' bin all-reduce needs this one's (zero) share; the
            # bins then take the other ranks' statistics, like every rank's
            zeros = torch.zeros_like(self.bins, device=x.device)
            self._update_bins(zeros, zeros)
        result = f_distill(
            x,
            teacher_x0,
            fake_x0,
            disc_logits,
            divergence=self.divergence,
            logit_clamp=self.logit_clamp,
            ratio_clip=self.ratio_clip,
            normalize=self.normalize,
            eps=self.eps,
            reduction=self.reduction,
            process_group=self.process_group,
            ratio_divisor=divisor,
        )
        self.last_ratio = None if result.ratio is None else result.ratio.detach()
        self.last_h = result.h.detach()
        self.last_normalizer = result.normalizer.detach()
        self._last_logits = None if disc_logits is None else disc_logits.detach()
        return result.loss

    @property
    def last_divergence_estimate(self) -> torch.Tensor | None:
        """E_q[f(r_b)] over the last batch (a 0-d tensor), or None if it had no disc_logits."""
        if self._last_logits is None:
            return None
        lo, hi = self.ratio_clip
        ratio, _, _ = compute_weights(self._last_logits, self.divergence, False, self.logit_clamp, lo, hi)
        f, _, _ = divergence_terms(torch.log(ratio), self.divergence)
        return f.mean()


class FDPG(nn.Module):
    r"""f-DPG with the state its reference implementation (naver/disco) keeps between steps, per context.

    A context is whatever shares one target normaliser Z(c) = sum_x P(x|c): a prompt, a control code, or
    a single global one (the default). Each call passes ``context`` (B,) ids in [0, num_contexts); the
    module keeps, per context:

    * the running importance-sampled partition function: Z(c) = (1/n_c) sum_i P(x_i|c) / q(x_i|c) over every
      sample seen in training (q = the proposal, or the policy itself when sampling on-policy), held in
      log space (log-sum-exp of log P - log q, and the count n_c), updated with this step's samples first;
    * a moving-average baseline of the pseudo-reward: b(c) <- m b(c) + (1 - m) * (sum w R / sum w over the
      context's samples), bias-corrected as b(c) / (1 - m^k) after k updates. The loss uses the baseline
      from *before* this step's update (independent of the current samples, so the gradient stays
      unbiased); a context never seen has no baseline (0).

    ``forward(policy_logprobs, target_logscores, proposal_logprobs=None, context=None)`` returns
    ``f_dpg_loss``'s (loss, stats) with ``stats["log_z"]`` (B,) and ``stats["baseline"]`` (B,) added.
    State is updated in training mode only (in eval mode the stored estimates are used; before any
    training step log Z is undefined, NaN). Buffers are float64 and saved in the state dict; move the module
    to the policy's device (``.to(device)``) so that updating them needs no host copy. Every argument is checked
    before any state changes (a rejected call leaves the buffers as they were). Context ids outside
    [0, num_contexts) raise ValueError for a CPU tensor in eager mode; on CUDA (and under torch.compile), where
    that check would need a host sync, such samples get NaN log Z and baseline (so the loss is NaN) and update
    nothing.
    """

    def __init__(
        self,
        divergence: str | Divergence = "js",
        *,
        num_contexts: int = 1,
        baseline_momentum: float = 0.99,
        max_exponent: float = 30.0,
    ) -> None:
        super().__init__()
        check_int("num_contexts", num_contexts, minimum=1)
        check_range("baseline_momentum", baseline_momentum, 0.0, 1.0, hi_open=True)
        check_positive("max_exponent", max_exponent)
        self.divergence = resolve(divergence)
        self.num_contexts = num_contexts
        self.baseline_momentum = baseline_momentum
        self.max_exponent = max_exponent
        f64 = dict(dtype=torch.float64)
        self.register_buffer("log_z_sum", torch.full((num_contexts,), -math.inf, **f64))
        self.register_buffer("z_count", torch.zeros(num_contexts, **f64))
        self.register_buffer("baseline_ema", torch.zeros(num_contexts, **f64))
        self.register_buffer("baseline_steps", torch.zeros(num_contexts, **f64))

    @property
    def log_z(self) -> torch.Tensor:
        """Current log Z estimate per context (NaN where no sample was seen)."""
        return self.log_z_sum - torch.log(self.z_count)

    def _context(self, context: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """The context ids as a long tensor on `device`. Out-of-range ids raise ValueError on CPU; on CUDA (no
        host sync to check) they are -1 after this: such samples get NaN log Z and baseline and update nothing."""
        if context is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        if (
            not isinstance(context, torch.Tensor)
            or context.shape != (batch,)
            or context.is_floating_point()
            or context.is_complex()
            or context.dtype == torch.bool
        ):
            got = (
                f"{context.dtype} {tuple(context.shape)}"
                if isinstance(context, torch.Tensor)
                else type(context).__name__
            )
            raise ValueError(f"context must be an integer tensor of shape (B,) = ({batch},), got {got}")
        valid = (context >= 0) & (context < self.num_contexts)
        if context.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(valid.all()):
            raise ValueError(f"context ids must lie in [0, num_contexts) = [0, {self.num_contexts})")
        return torch.where(valid, context, -1).to(device=device, dtype=torch.long)

    @torch.no_grad()
    def _update_z(self, log_w: torch.Tensor, ctx: torch.Tensor) -> None:
        # per-context log-sum-exp accumulation without a host sync: shift by the per-context max; a sample with
        # an invalid context id (-1) is sent to context 0 with weight 0 (log w = -inf, count 0)
        valid = ctx >= 0
        log_w = torch.where(valid, log_w, -math.inf)
        ctx = ctx.clamp_min(0)
        old = self.log_z_sum.to(log_w.device)
        peak = old.clone().scatter_reduce_(0, ctx, log_w, reduce="amax", include_self=True)
        safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        summed = torch.zeros_like(old).scatter_add_(0, ctx, torch.exp(log_w - safe_peak[ctx]))
        new = safe_peak + torch.log(torch.exp(old - safe_peak) + summed)
        self.log_z_sum.copy_(torch.where(torch.isfinite(peak), new, old))
        self.z_count.add_(torch.zeros_like(old).scatter_add_(0, ctx, valid.to(old.dtype)))

    @torch.no_grad()
    def _update_baseline(self, rewards: torch.Tensor, weights: torch.Tensor, ctx: torch.Tensor) -> None:
        weights = torch.where(ctx >= 0, weights, 0.0)  # an invalid context id updates nothing
        rewards = torch.where(ctx >= 0, rewards, 0.0)
        ctx = ctx.clamp_min(0)
        ema = self.baseline_ema.to(rewards.device)
        wsum = torch.zeros_like(ema).scatter_add_(0, ctx, weights)
        wr = torch.zeros_like(ema).scatter_add_(0, ctx, weights * rewards)
        seen = wsum > 0
        mean = wr / torch.where(seen, wsum, torch.ones_like(wsum))
        m = self.baseline_momentum
        self.baseline_ema.copy_(torch.where(seen, m * ema + (1 - m) * mean, ema))
        self.baseline_steps.add_(seen.to(ema.dtype))

    def forward(
        self,
        policy_logprobs: torch.Tensor,
        target_logscores: torch.Tensor,
        *,
        proposal_logprobs: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Everything is checked before Z and the baseline change: a rejected call leaves the module as it was.
        validate_dpg(
            policy_logprobs,
            target_logscores,
            None,
            None,
            proposal_logprobs,
            self.divergence,
            None,
            None,
            self.max_exponent,
        )
        ctx = self._context(context, policy_logprobs.shape[0], policy_logprobs.device)
        if self.training:
            sampler = policy_logprobs if proposal_logprobs is None else proposal_logprobs
            self._update_z(target_logscores.detach().double() - sampler.detach().double(), ctx)
        safe = ctx.clamp_min(0)
        valid = ctx >= 0
        log_z = torch.where(valid, self.log_z.to(policy_logprobs.device)[safe], math.nan)
        steps = self.baseline_steps.to(policy_logprobs.device)[safe]
        corrected = self.baseline_ema.to(policy_logprobs.device)[safe] / (1 - self.baseline_momentum**steps)
        unseen = torch.where(valid, 0.0, math.nan).to(corrected.dtype)  # a context never seen has no baseline (0)
        baseline = torch.where(valid & (steps > 0), corrected, unseen)
        loss, stats = f_dpg_loss(
            policy_logprobs,
            target_logscores=target_logscores,
            log_z=log_z,
            proposal_logprobs=proposal_logprobs,
            divergence=self.divergence,
            baseline=baseline,
            max_exponent=self.max_exponent,
        )
        if self.training:
            self._update_baseline(stats["pseudo_rewards"].double(), stats["importance_weights"].double(), ctx)
        stats["log_z"] = log_z
        stats["baseline"] = baseline
        return loss, stats


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
        check_positive("temperature", temperature)
        check_int("ignore_index", ignore_index, allow_none=True)
        check_choice("reduction", reduction, _f_divergence.REDUCTIONS)
        check_bool("teacher_is_logprobs", teacher_is_logprobs)
        check_int("max_vocab_pad", max_vocab_pad, minimum=0, allow_none=True)
        self.temperature = temperature
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
            student_logits,
            teacher_logits,
            divergence=self.divergence,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            num_items_in_batch=num_items_in_batch,
            teacher_is_logprobs=self.teacher_is_logprobs,
            teacher_topk=teacher_topk,
            max_vocab_pad=self.max_vocab_pad,
        )

    def extra_repr(self) -> str:
        return f"divergence={self.divergence}, temperature={self.temperature}, reduction={self.reduction!r}"


class FusedLinearFDivergenceLoss(nn.Module):
    """fused_linear_f_divergence as a module: distil from hidden states and LM-head weights, the logits
    never materialised whole.

    The constructor takes the keywords of ``fdiv_ops.fused_linear_f_divergence`` that stay fixed during
    training (divergence, temperature, ignore_index, hard_loss_weight, reduction, chunk_size,
    max_vocab_pad); ``forward(student_hidden, student_weight, teacher_hidden, teacher_weight, labels=None, *,
    student_bias=None, teacher_bias=None, num_items_in_batch=None)``. The loss is additive:
    soft + hard_loss_weight * CE per counted row (see the function).
    """

    def __init__(
        self,
        divergence: str | Divergence = "forward_kl",
        *,
        temperature: float = 1.0,
        ignore_index: int = -100,
        hard_loss_weight: float = 0.0,
        reduction: str = "batchmean",
        chunk_size: int | None = None,
        max_vocab_pad: int | None = DEFAULT_MAX_VOCAB_PAD,
    ) -> None:
        super().__init__()
        self.divergence = resolve(divergence)
        check_positive("temperature", temperature)
        check_int("ignore_index", ignore_index)
        check_positive("hard_loss_weight", hard_loss_weight, allow_zero=True)
        check_choice("reduction", reduction, _fused_linear.REDUCTIONS)
        check_int("chunk_size", chunk_size, minimum=1, allow_none=True)
        check_int("max_vocab_pad", max_vocab_pad, minimum=0, allow_none=True)
        self.temperature = temperature
        self.hard_loss_weight = hard_loss_weight
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.max_vocab_pad = max_vocab_pad

    def forward(
        self,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        student_bias: torch.Tensor | None = None,
        teacher_bias: torch.Tensor | None = None,
        num_items_in_batch=None,
    ) -> torch.Tensor:
        return fused_linear_f_divergence(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            labels=labels,
            divergence=self.divergence,
            temperature=self.temperature,
            ignore_index=self.ignore_index,
            hard_loss_weight=self.hard_loss_weight,
            reduction=self.reduction,
            num_items_in_batch=num_items_in_batch,
            chunk_size=self.chunk_size,
            max_vocab_pad=self.max_vocab_pad,
        )

    def extra_repr(self) -> str:
        return (
            f"divergence={self.divergence}, temperature={self.temperature}, "
            f"hard_loss_weight={self.hard_loss_weight}, reduction={self.reduction!r}, chunk_size={self.chunk_size}"
        )
