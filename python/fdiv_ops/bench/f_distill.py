"""f_distill_loss (docs/math.md §2): the f-distill / DMD2 generator loss over B samples of D elements.

Memory-bound: a fused forward+backward must read x, teacher_x0 and fake_x0 once and write the gradient
to x once, 4·B·D elements (the B×K logits are negligible). The divergence is js (with discriminator
logits, so the weighting h(r) is exercised), the f-distill paper's best on ImageNet-64. Baselines: the
DMD2 / FastGen eager generator loss (``torch``, ``compile``); TRL and Liger-Kernel have no such loss.
"""

from __future__ import annotations

import math

import torch

import fdiv_ops
from fdiv_ops import reference

from . import idioms
from .spec import Case, Inputs, OpBench

_HEADS = 4  # discriminator heads averaged into the log-ratio
_DIVERGENCE = "js"

# (B, C, H, W) image-like samples. CPU sizes keep `fdiv-ops bench` (quick) well inside two minutes on
# two cores; GPU sizes are large enough that launch overhead does not dominate.
_SHAPES = {
    ("tiny", "cpu"): [(2, 2, 8, 8)],
    ("quick", "cpu"): [(64, 4, 64, 64)],
    ("headline", "cpu"): [(64, 4, 64, 64)],
    ("full", "cpu"): [(16, 4, 64, 64), (64, 4, 64, 64), (16, 4, 128, 128), (64, 16, 128, 128)],
    ("tiny", "cuda"): [(2, 2, 8, 8)],
    ("quick", "cuda"): [(64, 4, 64, 64), (64, 16, 128, 128)],
    ("headline", "cuda"): [(64, 16, 128, 128)],
    ("full", "cuda"): [(64, 4, 64, 64), (64, 16, 128, 128), (32, 4, 512, 512), (128, 16, 128, 128)],
}


def _cases(preset: str, device: torch.device) -> list[Case]:
    return [Case(shape, {"divergence": _DIVERGENCE}) for shape in _SHAPES[(preset, device.type)]]


def _make_inputs(case: Case, dtype: torch.dtype, device: torch.device) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(case.shape, generator=gen)
    teacher = x + 0.3 * torch.randn(case.shape, generator=gen)
    fake = x + 0.3 * torch.randn(case.shape, generator=gen)
    logits = torch.randn(case.shape[0], _HEADS, generator=gen)
    x, teacher, fake = (t.to(device=device, dtype=dtype) for t in (x, teacher, fake))
    return Inputs(args=(x, teacher, fake, logits.to(device)), grad_args=(0,))


def _fused(case: Case):
    divergence = case.params["divergence"]

    def fused(x, teacher, fake, logits):
        return fdiv_ops.f_distill_loss(x, teacher, fake, logits, divergence=divergence)

    return fused


def _reference(case: Case):
    divergence = case.params["divergence"]

    def oracle(x, teacher, fake, logits):
        return reference.f_distill_loss(x, teacher, fake, logits, divergence=divergence)

    return oracle


def _idiomatic(case: Case):
    return idioms.dmd_generator_loss(case.params["divergence"])


def _trl(case: Case):
    return "TRL has no distribution-matching (f-distill / DMD) loss"


def _liger(case: Case, device: torch.device):
    return "Liger-Kernel has no distribution-matching (f-distill / DMD) loss"


def _bytes_moved(case: Case, dtype: torch.dtype) -> int:
    numel = 1
    for size in case.shape:
        numel *= size
    element = torch.empty((), dtype=dtype).element_size()
    return 4 * numel * element + case.shape[0] * _HEADS * 4


BENCH = OpBench(
    name="f_distill",
    api="f_distill_loss",
    cases=_cases,
    make_inputs=_make_inputs,
    fused=_fused,
    idiomatic=_idiomatic,
    trl=_trl,
    liger=_liger,
    reference=_reference,
    bytes_moved=_bytes_moved,
    oracle_numel=lambda case: math.prod(case.shape),
)
