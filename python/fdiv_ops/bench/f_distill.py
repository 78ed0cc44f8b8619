"""f_distill_loss forward+backward: fused vs the eager reference vs torch.compile of the reference."""

from __future__ import annotations

import torch

from .. import reference
from ..ops.f_distill import f_distill_loss

PRESETS = {
    "quick": [(64, (4, 64, 64))],
    "full": [(64, (4, 64, 64)), (16, (4, 128, 128)), (64, (16, 128, 128))],
}


def make_inputs(batch, sample_shape, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (batch, *sample_shape)
    x = torch.randn(shape, generator=gen)
    teacher = x + 0.3 * torch.randn(shape, generator=gen)
    fake = x + 0.3 * torch.randn(shape, generator=gen)
    logits = torch.randn(batch, 4, generator=gen)
    x, teacher, fake = (t.to(device=device, dtype=dtype) for t in (x, teacher, fake))
    return x, teacher, fake, logits.to(device)


def providers(divergence: str = "js"):
    """name -> loss function with the f_distill_loss signature."""
    def eager(x, t, f, lg):
        return reference.f_distill_loss(x, t, f, lg, divergence=divergence)

    compiled = torch.compile(eager, dynamic=False)

    def fused(x, t, f, lg):
        return f_distill_loss(x, t, f, lg, divergence=divergence)

    return {"fdiv_ops": fused, "eager": eager, "compile": compiled}


def bytes_moved(x: torch.Tensor) -> int:
    """Bytes a fused forward+backward must move: read x, teacher, fake; write the gradient."""
    return 4 * x.numel() * x.element_size()
