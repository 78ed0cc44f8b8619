"""fused_linear_f_divergence: token-level distillation from hidden states and lm_head weights, the
logits never materialised whole (chunks of rows).

GEMM-bound, not memory-bound: its floor is the time of its matrix products (two forward, two in
backward for the student), so GB/s here only counts the bytes of hidden states and weights and says
little; compare the times. Divergence gkd_jsd(0.5), the one Liger-Kernel's fused-linear JSD covers.
The full CPU preset includes the issue's size, 4096 rows x H 1024 x V 32000 (eager needs ~8 GB there).
"""

from __future__ import annotations

import torch

import fdiv_ops
from fdiv_ops import reference

from .spec import Case, Inputs, OpBench

_DIVERGENCE = "gkd_jsd(0.5)"
_SIZES = {  # (rows, hidden, V); student and teacher share the hidden size here
    ("tiny", "cpu"): [(8, 16, 257)],
    ("quick", "cpu"): [(128, 256, 8192)],
    ("full", "cpu"): [(1024, 1024, 32000), (4096, 1024, 32000)],
    ("tiny", "cuda"): [(8, 16, 257)],
    ("quick", "cuda"): [(1024, 4096, 32000)],
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
    """fdiv_ops.reference's own fused-linear mirror if it has one, else the unfused eager computation:
    both logits materialised by matmul, then the eager f_divergence_loss."""
    divergence = case.params["divergence"]
    mirror = getattr(reference, "fused_linear_f_divergence", None)
    if mirror is not None:

        def eager(student_hidden, student_weight, teacher_hidden, teacher_weight):
            return mirror(student_hidden, student_weight, teacher_hidden, teacher_weight, divergence=divergence)

        return eager
    eager_loss = getattr(reference, "f_divergence_loss", None)
    if eager_loss is None:
        return None

    def unfused(student_hidden, student_weight, teacher_hidden, teacher_weight):
        return eager_loss(student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T, divergence=divergence)

    return unfused


def _liger(case: Case, device: torch.device):
    if case.params["divergence"] != "gkd_jsd(0.5)":
        return f"Liger-Kernel's fused linear covers JSD only, not {case.params['divergence']}"
    from liger_kernel.transformers import LigerFusedLinearJSD

    loss = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)  # beta 0.5: symmetric, convention-free

    def liger(student_hidden, student_weight, teacher_hidden, teacher_weight):
        return loss(student_hidden, student_weight, teacher_hidden, teacher_weight)

    return liger


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
    reference=_reference,
    liger=_liger,
    bytes_moved=_bytes_moved,
    roofline_note="GEMM-bound: its floor is the time of its matrix products, so GB/s and % copy say little",
)
