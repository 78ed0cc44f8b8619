"""sequence_logprobs (docs/math.md §4): per-token log π(label) from logits (B, T, V), a fused selective
log-softmax, with the backward writing dL/dlogits.

Memory-bound: at the least a forward+backward reads the logits once and writes their gradient once,
2·B·T·V elements (the fused op reads the logits a second time in backward, so it cannot exceed ~2/3 of the
copy roofline by this count). One label in eight is ignore_index, as padding would be. Until
``fdiv_ops.sequence_logprobs`` exists the registry leaves this op out.
"""

from __future__ import annotations

import torch

import fdiv_ops
from fdiv_ops import reference

from .spec import Case, Inputs, OpBench

_IGNORE_INDEX = -100
_SIZES = {  # (B, T, V)
    ("tiny", "cpu"): [(2, 4, 257)],
    ("quick", "cpu"): [(4, 128, 32000)],
    ("full", "cpu"): [(4, 256, 32000), (8, 512, 32000)],
    ("tiny", "cuda"): [(2, 4, 257)],
    ("quick", "cuda"): [(8, 512, 32000)],
    ("full", "cuda"): [(8, 512, 32000), (8, 1024, 128256)],
}


def _cases(preset: str, device: torch.device) -> list[Case]:
    return [Case(size) for size in _SIZES[(preset, device.type)]]


def _make_inputs(case: Case, dtype: torch.dtype, device: torch.device) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(0)
    batch, time, vocab = case.shape
    logits = 2.0 * torch.randn(case.shape, generator=gen)
    labels = torch.randint(0, vocab, (batch, time), generator=gen)
    labels[:, ::8] = _IGNORE_INDEX
    return Inputs(args=(logits.to(device, dtype), labels.to(device)), grad_args=(0,))


def _fused(case: Case):
    def fused(logits, labels):
        return fdiv_ops.sequence_logprobs(logits, labels)

    return fused


def _reference(case: Case):
    eager = getattr(reference, "sequence_logprobs", None)
    if eager is None:
        return None

    def eager_logprobs(logits, labels):
        return eager(logits, labels)

    return eager_logprobs


def _liger(case: Case, device: torch.device):
    """LigerCrossEntropyLoss(reduction="none") is -log p(label) per token, 0 where ignored."""
    from liger_kernel.transformers import LigerCrossEntropyLoss

    loss = LigerCrossEntropyLoss(reduction="none", ignore_index=_IGNORE_INDEX)

    def liger(logits, labels):
        vocab = logits.shape[-1]
        return -loss(logits.reshape(-1, vocab), labels.reshape(-1)).view(labels.shape)

    return liger


def _bytes_moved(case: Case, dtype: torch.dtype) -> int:
    batch, time, vocab = case.shape
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * batch * time * vocab * element + batch * time * (8 + 4)  # + int64 labels, fp32 log-probs


BENCH = OpBench(
    name="sequence_logprobs",
    api="sequence_logprobs",
    cases=_cases,
    make_inputs=_make_inputs,
    fused=_fused,
    reference=_reference,
    liger=_liger,
    bytes_moved=_bytes_moved,
)
