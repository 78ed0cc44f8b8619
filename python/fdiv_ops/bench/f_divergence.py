"""f_divergence_loss (docs/math.md §3): token-level distillation on logits, rows × vocabulary.

Memory-bound: a fused forward+backward must read the student and teacher logits once and write the
student's gradient once, 3·rows·V elements. Divergences: forward_kl and gkd_jsd(0.5) (TRL GKD's default
beta), plus reverse_kl in the full preset. Baselines: F.kl_div on log_softmax / TRL GKD's expression
(``torch``, ``compile``), TRL's own ``generalized_jsd_loss`` (``trl``), LigerKLDIVLoss / LigerJSD (``liger``).
The headline preset is the size Liger-Kernel publishes for its JSD (8192 rows x 131072).
"""

from __future__ import annotations

import torch

import fdiv_ops
from fdiv_ops import reference

from . import idioms, peers
from .spec import Case, Impl, Inputs, OpBench

_SIZES = {  # (rows, V) per (preset, device); rows = B·T tokens
    ("tiny", "cpu"): [(8, 257)],
    ("quick", "cpu"): [(64, 32000)],
    ("headline", "cpu"): [(64, 32000)],
    ("full", "cpu"): [(512, 32000), (2048, 32000)],
    ("tiny", "cuda"): [(8, 257)],
    ("quick", "cuda"): [(4096, 32000)],
    ("headline", "cuda"): [(8192, 131072)],
    ("full", "cuda"): [(4096, 32000), (8192, 32000), (8192, 131072)],
}
_TWO = ["forward_kl", "gkd_jsd(0.5)"]
_DIVERGENCES = {"tiny": _TWO, "quick": _TWO, "headline": _TWO, "full": ["forward_kl", "reverse_kl", "gkd_jsd(0.5)"]}


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
    reference_loss = getattr(reference, "f_divergence_loss", None)
    if reference_loss is None:
        return None
    divergence = case.params["divergence"]

    def oracle(student_logits, teacher_logits):
        return reference_loss(student_logits, teacher_logits, divergence=divergence)

    return oracle


def _idiomatic(case: Case):
    return idioms.kd_loss(case.params["divergence"])


def _trl(case: Case):
    beta = idioms.kd_beta(case.params["divergence"])
    if beta is None:
        return f"TRL's GKD loss has no {case.params['divergence']} (forward_kl, reverse_kl, gkd_jsd(beta) only)"
    gkd_loss = peers.trl_gkd_loss()

    def trl(student_logits, teacher_logits):
        return gkd_loss(student_logits, teacher_logits, beta=beta)  # reduction="batchmean": sum / rows

    return Impl(trl, f"trl GKDTrainer.generalized_jsd_loss(beta={beta:g})")


def _liger(case: Case, device: torch.device):
    """LigerKLDIVLoss for forward_kl and LigerJSD for gkd_jsd(0.5), both on log-probs (batchmean), so the
    provider includes the two log_softmax calls Liger's users run before them."""
    divergence = case.params["divergence"]
    if divergence == "forward_kl":
        from liger_kernel.transformers import LigerKLDIVLoss

        loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)  # KL(target || input) = KL(p || q)
        source = "LigerKLDIVLoss(log_softmax(s), log_softmax(t))"
    elif divergence == "gkd_jsd(0.5)":
        from liger_kernel.transformers import LigerJSD

        loss = LigerJSD(beta=0.5)  # beta = 0.5 is symmetric, so Liger's beta convention does not matter
        source = "LigerJSD(beta=0.5)(log_softmax(s), log_softmax(t))"
    else:
        return f"Liger-Kernel has no {divergence} loss"

    def liger(student_logits, teacher_logits):
        return loss(torch.log_softmax(student_logits.float(), -1), torch.log_softmax(teacher_logits.float(), -1))

    return Impl(liger, source)


def _bytes_moved(case: Case, dtype: torch.dtype) -> int:
    rows, vocab = case.shape
    return 3 * rows * vocab * torch.empty((), dtype=dtype).element_size()


BENCH = OpBench(
    name="f_divergence",
    api="f_divergence_loss",
    cases=_cases,
    make_inputs=_make_inputs,
    fused=_fused,
    idiomatic=_idiomatic,
    trl=_trl,
    liger=_liger,
    reference=_reference,
    bytes_moved=_bytes_moved,
    oracle_numel=lambda case: case.shape[0] * case.shape[1],
)
