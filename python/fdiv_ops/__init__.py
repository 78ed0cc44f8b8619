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
from .nn import FDistillLoss, FDivergenceLoss
from .ops.f_distill import FDistillResult, f_distill, f_distill_loss
from .ops.f_divergence import f_divergence_loss

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "FDistillLoss",
    "FDistillResult",
    "FDivergenceLoss",
    "alpha",
    "build_info",
    "cuda_available",
    "f_distill",
    "f_distill_loss",
    "f_divergence_loss",
    "gkd_jsd",
    "resolve",
    "skew_forward_kl",
    "skew_reverse_kl",
]
