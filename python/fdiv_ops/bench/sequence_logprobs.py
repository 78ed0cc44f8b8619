"""sequence_logprobs (docs/math.md §4): per-token log π(label) from logits (B, T, V), a fused selective
log-softmax, with the backward writing dL/dlogits.

Memory-bound: at the least a forward+backward reads the logits once and writes their gradient once,
2·B·T·V elements (the fused op reads the logits a second time in backward, so it cannot exceed ~2/3 of the
copy roofline by this count). One label in eight is ignore_index, as padding would be. Baselines: gather -
logsumexp (``torch``, ``compile``), TRL's ``selective_log_softmax`` (``trl``: what its DPO/GRPO trainers call,
a Triton kernel on CUDA), LigerCrossEntropyLoss(reduction="none") negated (``liger``). The headline preset is
a Llama-3 vocabulary, 8 x 1024 tokens x 128256.
"""

from __future__ import annotations

import torch

import fdiv_ops
from fdiv_ops import reference

from . import idioms
from .spec import Case, Impl, Inputs, OpBench

_IGNORE_INDEX = -100
_SIZES = {  # (B, T, V)
    ("tiny", "cpu"): [(2, 4, 257)],
    ("quick", "cpu"): [(4, 128, 32000)],
    ("headline", "cpu"): [(4, 128, 32000)],
    ("full", "cpu"): [(4, 256, 32000), (8, 512, 32000)],
    ("tiny", "cuda"): [(2, 4, 257)],
    ("quick", "cuda"): [(8, 512, 32000)],
    ("headline", "cuda"): [(8, 1024, 128256)],
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
    reference_fn = getattr(reference, "sequence_logprobs", None)
    if reference_fn is None:
        return None

    def oracle(logits, labels):
        return reference_fn(logits, labels)

    return oracle


def _idiomatic(case: Case):
    return idioms.label_logprobs(_IGNORE_INDEX)


def _trl(case: Case):
    from trl.trainer.utils import selective_log_softmax

    def trl(logits, labels):
        keep = labels != _IGNORE_INDEX
        return selective_log_softmax(logits, torch.where(keep, labels, 0), row_mask=keep)

    return Impl(trl, "trl.trainer.utils.selective_log_softmax(logits, labels, row_mask=labels != -100)")


def _liger(case: Case, device: torch.device):
    """LigerCrossEntropyLoss(reduction="none") is -log p(label) per token, 0 where ignored."""
    from liger_kernel.transformers import LigerCrossEntropyLoss

    loss = LigerCrossEntropyLoss(reduction="none", ignore_index=_IGNORE_INDEX)

    def liger(logits, labels):
        vocab = logits.shape[-1]
        return -loss(logits.reshape(-1, vocab), labels.reshape(-1)).view(labels.shape)

    return Impl(liger, "-LigerCrossEntropyLoss(reduction='none')(logits, labels)")


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
    idiomatic=_idiomatic,
    trl=_trl,
    liger=_liger,
    reference=_reference,
    bytes_moved=_bytes_moved,
    oracle_numel=lambda case: case.shape[0] * case.shape[1] * case.shape[2],
)
