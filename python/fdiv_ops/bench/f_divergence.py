"""f_divergence_loss (docs/math.md §3): token-level distillation on logits, rows × vocabulary.

Memory-bound: a fused forward+backward must read the student and teacher logits once and write the
student's gradient once, 3·rows·V elements. Divergences: forward_kl (the quick preset), then reverse_kl and
gkd_jsd(0.5), the three the op's CPU targets name. Until ``fdiv_ops.f_divergence_loss`` exists the registry
leaves this op out; nothing here touches the op at import time.
"""

from __future__ import annotations

import torch

import fdiv_ops
from fdiv_ops import reference

from .spec import Case, Inputs, OpBench

_SIZES = {  # (rows, V) per (preset, device); rows = B·T tokens
    ("tiny", "cpu"): [(8, 257)],
    ("quick", "cpu"): [(64, 32000)],
    ("full", "cpu"): [(512, 32000), (2048, 32000)],
    ("tiny", "cuda"): [(8, 257)],
    ("quick", "cuda"): [(4096, 32000)],
    ("full", "cuda"): [(4096, 32000), (8192, 32000), (8192, 131072)],
}
_DIVERGENCES = {"tiny": ["forward_kl"], "quick": ["forward_kl"], "full": ["forward_kl", "reverse_kl", "gkd_jsd(0.5)"]}


def _cases(preset: str, device: torch.device) -> list[Case]:
    return [Case(size, {"divergence": div}) for size in _SIZES[(preset, device.type)] for div in _DIVERGENCES[preset]]


def _make_inputs(case: Case, dtype: torch.dtype, device: torch.device) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(0)
    teacher = 2.0 * torch.randn(case.shape, generator=gen)
    student = teacher + torch.randn(case.shape, generator=gen)  # a student near its teacher, as in training
    return Inputs(args=(student.to(device, dtype), teacher.to(device, dtype)), grad_args=(0,))


def _fused(case: Case):
    divergence = case.params["divergence"]

    def fused(student_logits, teacher_logits):
        return fdiv_ops.f_divergence_loss(student_logits, teacher_logits, divergence=divergence)

    return fused


def _reference(case: Case):
    eager_loss = getattr(reference, "f_divergence_loss", None)
    if eager_loss is None:
        return None
    divergence = case.params["divergence"]

    def eager(student_logits, teacher_logits):
        return eager_loss(student_logits, teacher_logits, divergence=divergence)

    return eager


def _liger(case: Case, device: torch.device):
    """LigerKLDIVLoss for forward_kl and LigerJSD for gkd_jsd(0.5), both on log-probs (batchmean), so the
    provider includes the two log_softmax calls Liger's users run before them."""
    divergence = case.params["divergence"]
    if divergence == "forward_kl":
        from liger_kernel.transformers import LigerKLDIVLoss

        loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)  # KL(target || input) = KL(p || q)
    elif divergence == "gkd_jsd(0.5)":
        from liger_kernel.transformers import LigerJSD

        loss = LigerJSD(beta=0.5)  # beta = 0.5 is symmetric, so Liger's beta convention does not matter
    else:
        return f"Liger-Kernel has no {divergence} loss"

    def liger(student_logits, teacher_logits):
        return loss(torch.log_softmax(student_logits.float(), -1), torch.log_softmax(teacher_logits.float(), -1))

    return liger


def _bytes_moved(case: Case, dtype: torch.dtype) -> int:
    rows, vocab = case.shape
    return 3 * rows * vocab * torch.empty((), dtype=dtype).element_size()


BENCH = OpBench(
    name="f_divergence",
    api="f_divergence_loss",
    cases=_cases,
    make_inputs=_make_inputs,
    fused=_fused,
    reference=_reference,
    liger=_liger,
    bytes_moved=_bytes_moved,
)
