"""fused_linear_f_divergence: token-level distillation from hidden states and lm_head weights, the
logits never materialised whole (chunks of rows).

GEMM-bound, not memory-bound: its floor is the time of its matrix products (two forward, two in
backward for the student), so GB/s here only counts the bytes of hidden states and weights and says
little; compare the times. Divergence gkd_jsd(0.5), the one Liger-Kernel's fused-linear JSD covers.
Baselines: both models' logits materialised by F.linear, then TRL GKD's expression (``torch``, ``compile``);
TRL's chunked fused-linear GKD loss of its DistillationTrainer (``trl``); LigerFusedLinearJSD (``liger``).
The full CPU preset includes 4096 rows x H 1024 x V 32000 (the torch provider needs ~8 GB there); the
headline preset is the size Liger-Kernel publishes, 8192 rows x H 4096 x V 128256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fdiv_ops
from fdiv_ops import reference

from . import idioms
from .spec import Case, Impl, Inputs, OpBench

_DIVERGENCE = "gkd_jsd(0.5)"
_SIZES = {  # (rows, hidden, V); student and teacher share the hidden size here
    ("tiny", "cpu"): [(8, 16, 257)],
    ("quick", "cpu"): [(128, 256, 8192)],
    ("headline", "cpu"): [(128, 256, 8192)],
    ("full", "cpu"): [(1024, 1024, 32000), (4096, 1024, 32000)],
    ("tiny", "cuda"): [(8, 16, 257)],
    ("quick", "cuda"): [(1024, 4096, 32000)],
    ("headline", "cuda"): [(8192, 4096, 128256)],
    ("full", "cuda"): [(1024, 4096, 128256), (8192, 4096, 128256)],
}


def _cases(preset: str, device: torch.device) -> list[Case]:
    return [Case(size, {"divergence": _DIVERGENCE}) for size in _SIZES[(preset, device.type)]]


def _make_inputs(case: Case, dtype: torch.dtype, device: torch.device) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows, hidden, vocab = case.shape
    scale = hidden**-0.5  # logits of order one
    student_hidden = torch.randn(rows, hidden, generator=gen)
    teacher_hidden = torch.randn(rows, hidden, generator=gen)
    student_weight = scale * torch.randn(vocab, hidden, generator=gen)
    teacher_weight = scale * torch.randn(vocab, hidden, generator=gen)
    args = tuple(t.to(device, dtype) for t in (student_hidden, student_weight, teacher_hidden, teacher_weight))
    return Inputs(args=args, grad_args=(0, 1))


def _fused(case: Case):
    divergence = case.params["divergence"]

    def fused(student_hidden, student_weight, teacher_hidden, teacher_weight):
        return fdiv_ops.fused_linear_f_divergence(
            student_hidden, student_weight, teacher_hidden, teacher_weight, divergence=divergence
        )

    return fused


def _reference(case: Case):
    """fdiv_ops.reference's fused-linear mirror (logits materialised in the inputs' dtype), the float64 oracle."""
    mirror = getattr(reference, "fused_linear_f_divergence", None)
    if mirror is None:
        return None
    divergence = case.params["divergence"]

    def oracle(student_hidden, student_weight, teacher_hidden, teacher_weight):
        return mirror(student_hidden, student_weight, teacher_hidden, teacher_weight, divergence=divergence)

    return oracle


def _idiomatic(case: Case):
    loss = idioms.kd_loss(case.params["divergence"])
    if isinstance(loss, str):
        return loss

    def unfused(student_hidden, student_weight, teacher_hidden, teacher_weight):
        student_logits = F.linear(student_hidden, student_weight)
        with torch.no_grad():  # the teacher is frozen: a trainer computes its logits without a graph
            teacher_logits = F.linear(teacher_hidden, teacher_weight)
        return loss.fn(student_logits, teacher_logits)

    return Impl(unfused, "logits = F.linear(hidden, weight) for both models, then " + loss.source)


def _trl(case: Case):
    beta = idioms.kd_beta(case.params["divergence"])
    if beta is None:
        return f"TRL's fused-linear GKD loss has no {case.params['divergence']}"
    from trl.trainer.distillation_trainer import _chunked_divergence_loss  # private in TRL 1.16: may move

    def trl(student_hidden, student_weight, teacher_hidden, teacher_weight):
        rows = student_hidden.shape[0]
        mask = torch.ones(1, rows, dtype=torch.long, device=student_hidden.device)
        loss, _, _ = _chunked_divergence_loss(
            student_hidden[None], teacher_hidden[None], student_weight, teacher_weight, mask, beta
        )  # the mean over the rows, as ours
        return loss

    return Impl(trl, f"trl.trainer.distillation_trainer._chunked_divergence_loss(beta={beta:g})")


def _liger(case: Case, device: torch.device):
    if case.params["divergence"] != "gkd_jsd(0.5)":
        return f"Liger-Kernel's fused linear covers JSD only, not {case.params['divergence']}"
    from liger_kernel.transformers import LigerFusedLinearJSD

    loss = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)  # beta 0.5: symmetric, convention-free

    def liger(student_hidden, student_weight, teacher_hidden, teacher_weight):
        return loss(student_hidden, student_weight, teacher_hidden, teacher_weight)

    return Impl(liger, "LigerFusedLinearJSD(jsd_beta=0.5)")


def _bytes_moved(case: Case, dtype: torch.dtype) -> int:
    rows, hidden, vocab = case.shape
    element = torch.empty((), dtype=dtype).element_size()
    # read both hidden states and both weights; write the student's hidden and weight gradients
    return (2 * rows * hidden + 2 * vocab * hidden + rows * hidden + vocab * hidden) * element


BENCH = OpBench(
    name="fused_linear",
    api="fused_linear_f_divergence",
    cases=_cases,
    make_inputs=_make_inputs,
    fused=_fused,
    idiomatic=_idiomatic,
    trl=_trl,
    liger=_liger,
    reference=_reference,
    bytes_moved=_bytes_moved,
    oracle_numel=lambda case: case.shape[0] * case.shape[2],
    roofline_note="GEMM-bound: its floor is the time of its matrix products, so GB/s and % copy say little",
)
