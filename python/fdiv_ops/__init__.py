"""fdiv-ops: fused f-divergence losses for distilling and aligning generative models.

Conventions (docs/math.md): p is the target, q the model; ``forward_kl`` is KL(p||q).
"""

from ._backend import build_info, cuda_available
from .divergences import (
    DIVERGENCES,
    Divergence,
    alpha,
    gkd_jsd,
    resolve,
    skew_forward_kl,
    skew_reverse_kl,
)
from .nn import FDPG, FDistillLoss, FDivergenceLoss, FusedLinearFDivergenceLoss
from .ops.alignment import f_dpg_loss, f_dpo_loss, group_normalized_advantages
from .ops.divergence_terms import divergence_terms
from .ops.f_distill import FDistillResult, f_distill, f_distill_loss
from .ops.f_divergence import f_divergence_loss
from .ops.fused_linear import fused_linear_f_divergence
from .ops.sequence_logprobs import fused_linear_sequence_logprobs, sequence_logprobs

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES",
    "FDPG",
    "Divergence",
    "FDistillLoss",
    "FDistillResult",
    "FDivergenceLoss",
    "FusedLinearFDivergenceLoss",
    "alpha",
    "build_info",
    "cuda_available",
    "divergence_terms",
    "f_distill",
    "f_distill_loss",
    "f_divergence_loss",
    "f_dpg_loss",
    "f_dpo_loss",
    "fused_linear_f_divergence",
    "fused_linear_sequence_logprobs",
    "gkd_jsd",
    "group_normalized_advantages",
    "resolve",
    "sequence_logprobs",
    "skew_forward_kl",
    "skew_reverse_kl",
]
