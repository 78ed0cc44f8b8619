"""One table of bad inputs across every public function, every nn.Module and every registered torch.ops.fdiv_ops.*
op: each must raise ValueError or TypeError (DTypeError is both) with a message naming the argument.

The table runs in a child process (``python tests/test_bad_inputs.py --child START``), one JSON line per case, so a
crash (segfault, abort) fails its case instead of killing pytest: the parent restarts the child after the case
that crashed. Each case is then its own test item.

Value checks that would need a host sync on CUDA (label ranges, a num_items_in_batch tensor) are CPU cases here:
on CPU they raise; on CUDA the documented behaviour is NaN (see each function's docstring).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

if __name__ != "__main__":
    import pytest

import fdiv_ops

ops = torch.ops.fdiv_ops
VE, TE = ValueError, TypeError


@dataclass
class Case:
    id: str
    call: Callable[[], object]
    error: type | tuple[type, ...]
    match: str  # a substring the message must contain (the argument's name, or what was expected)


CASES: list[Case] = []


def case(id_: str, call: Callable[[], object], error, match: str) -> None:
    CASES.append(Case(id_, call, error, match))


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def f64(value: float) -> torch.Tensor:
    """A scalar argument as the registered ops take it (a 0-dim CPU tensor)."""
    return torch.tensor(value, dtype=torch.float64)


NUMBER_BAD = [  # (id, value, error) for an argument that must be a finite number > 0
    ("zero", 0.0, VE),
    ("negative", -1.0, VE),
    ("nan", math.nan, VE),
    ("inf", math.inf, VE),
    ("str", "x", TE),
    ("none", None, TE),
    ("bool", True, TE),
    ("tensor", torch.tensor(1.0), TE),
    ("list", [1.0], TE),
]
INT_BAD = [("float", 1.5, TE), ("str", "x", TE), ("tensor", torch.tensor(-100), TE), ("bool", True, TE)]
BOOL_BAD = [("str", "no", TE), ("int", 1, TE), ("none", None, TE)]
ROUNDS_IN_FP32 = [  # valid in float64, not in float32 (the kernels' dtype for float32/16-bit inputs)
    ("alpha_1-1e-9", lambda: fdiv_ops.alpha(1 - 1e-9)),
    ("alpha_1e-46", lambda: fdiv_ops.alpha(1e-46)),
    ("gkd_jsd_1e-46", lambda: fdiv_ops.gkd_jsd(1e-46)),
    ("skew_fkl_1-1e-9", lambda: fdiv_ops.skew_forward_kl(1 - 1e-9)),
]

# ---------------------------------------------------------------------------------------------------
# Divergence constructors

for id_, call, err, match in [
    ("resolve_int", lambda: fdiv_ops.resolve(3), TE, "divergence must be"),
    ("resolve_none", lambda: fdiv_ops.resolve(None), TE, "divergence must be"),
    ("resolve_unknown", lambda: fdiv_ops.resolve("kl"), VE, "unknown divergence"),
    ("resolve_bad_call", lambda: fdiv_ops.resolve("alpha(x)"), VE, "divergence"),
    ("resolve_needs_param", lambda: fdiv_ops.resolve("alpha"), VE, "needs its parameter alpha"),
    ("resolve_no_param", lambda: fdiv_ops.resolve("js(0.5)"), VE, "takes no parameter"),
    ("resolve_alpha_zero", lambda: fdiv_ops.resolve("alpha(0)"), VE, "alpha must not be 0 or 1"),
    ("alpha_str", lambda: fdiv_ops.alpha("x"), TE, "alpha must be a number"),
    ("alpha_bool", lambda: fdiv_ops.alpha(True), TE, "alpha must be a number"),
    ("alpha_tensor", lambda: fdiv_ops.alpha(torch.tensor(0.5)), TE, "alpha must be a number"),
    ("alpha_zero", lambda: fdiv_ops.alpha(0.0), VE, "alpha must not be 0 or 1"),
    ("alpha_one", lambda: fdiv_ops.alpha(1), VE, "alpha must not be 0 or 1"),
    ("alpha_nan", lambda: fdiv_ops.alpha(math.nan), VE, "must be finite"),
    ("alpha_inf", lambda: fdiv_ops.alpha(math.inf), VE, "must be finite"),
    ("alpha_1e-320_in_fp64", lambda: fdiv_ops.alpha(1e-320), VE, "alpha"),
    ("gkd_jsd_above", lambda: fdiv_ops.gkd_jsd(1.5), VE, "must lie in [0, 1]"),
    ("gkd_jsd_below", lambda: fdiv_ops.gkd_jsd(-0.1), VE, "must lie in [0, 1]"),
    ("gkd_jsd_str", lambda: fdiv_ops.gkd_jsd("x"), TE, "beta must be a number"),
    ("gkd_jsd_nan", lambda: fdiv_ops.gkd_jsd(math.nan), VE, "must be finite"),
    ("skew_fkl_above", lambda: fdiv_ops.skew_forward_kl(2.0), VE, "must lie in [0, 1]"),
    ("skew_rkl_below", lambda: fdiv_ops.skew_reverse_kl(-1.0), VE, "must lie in [0, 1]"),
    ("skew_rkl_none", lambda: fdiv_ops.skew_reverse_kl(None), VE, "needs its parameter"),
    ("divergence_param_on_plain", lambda: fdiv_ops.Divergence("js", 0.5), VE, "takes no parameter"),
    ("divergence_unknown", lambda: fdiv_ops.Divergence("nope"), VE, "unknown divergence"),
]:
    case("divergence/" + id_, call, err, match)


# ---------------------------------------------------------------------------------------------------
# f_divergence_loss and FDivergenceLoss


def kd(**kw):
    s, t = kw.pop("s", None), kw.pop("t", None)
    s = randn(2, 3, 8) if s is None else s
    t = randn(2, 3, 8) if t is None and "teacher_topk" not in kw else t
    return fdiv_ops.f_divergence_loss(s, t, **kw)


def topk(indices=None, logprobs=None, **kw):
    indices = torch.tensor([[0, 3]]).expand(2, 3, 2).contiguous() if indices is None else indices
    logprobs = torch.log(torch.full((2, 3, 2), 0.2)) if logprobs is None else logprobs
    return kd(teacher_topk=(indices, logprobs), **kw)


for id_, call, err, match in [
    ("student_str", lambda: kd(s="x"), TE, "student_logits must be a torch.Tensor"),
    ("student_none", lambda: fdiv_ops.f_divergence_loss(None, randn(2, 8)), TE, "student_logits"),
    ("student_long", lambda: kd(s=torch.ones(2, 3, 8, dtype=torch.long)), TE, "student_logits must have a floating"),
    ("student_bool", lambda: kd(s=torch.ones(2, 3, 8, dtype=torch.bool)), TE, "student_logits must have a floating"),
    ("student_complex", lambda: kd(s=torch.ones(2, 3, 8, dtype=torch.complex64)), TE, "student_logits"),
    ("student_0d", lambda: kd(s=torch.tensor(1.0), t=torch.tensor(1.0)), VE, "student_logits must have shape"),
    ("student_v0", lambda: kd(s=randn(2, 3, 0)), VE, "V >= 1"),
    ("student_meta", lambda: kd(s=randn(2, 3, 8).to("meta")), VE, "student_logits must be on a CPU or CUDA"),
    ("student_numpy", lambda: kd(s=randn(2, 3, 8).numpy()), TE, "student_logits must be a torch.Tensor"),
    ("teacher_missing", lambda: fdiv_ops.f_divergence_loss(randn(2, 8)), VE, "teacher_logits is required"),
    ("teacher_str", lambda: kd(t="x"), TE, "teacher_logits must be a torch.Tensor"),
    ("teacher_int", lambda: kd(t=torch.ones(2, 3, 8, dtype=torch.int32)), TE, "teacher_logits must have a floating"),
    ("teacher_leading", lambda: kd(t=randn(1, 3, 8)), VE, "teacher_logits must have the leading shape"),
    ("teacher_rank", lambda: kd(t=randn(6, 8)), VE, "teacher_logits must have the leading shape"),
    ("teacher_v0", lambda: kd(t=randn(2, 3, 0)), VE, "teacher_logits must have shape (..., V') with V' >= 1"),
    ("teacher_meta", lambda: kd(t=randn(2, 3, 8).to("meta")), VE, "teacher_logits must be on a CPU or CUDA"),
    ("teacher_vocab_gap", lambda: kd(t=randn(2, 3, 2000)), VE, "max_vocab_pad"),
    ("divergence_unknown", lambda: kd(divergence="kl"), VE, "unknown divergence"),
    ("divergence_int", lambda: kd(divergence=3), TE, "divergence must be"),
    ("divergence_bad_call", lambda: kd(divergence="alpha(1)"), VE, "alpha must not be 0 or 1"),
    ("labels_bool", lambda: kd(labels=torch.ones(2, 3, dtype=torch.bool)), TE, "labels must be an integer tensor"),
    ("labels_float", lambda: kd(labels=torch.ones(2, 3)), TE, "labels must be an integer tensor"),
    ("labels_complex", lambda: kd(labels=torch.ones(2, 3, dtype=torch.complex64)), TE, "labels must be an integer"),
    ("labels_shape", lambda: kd(labels=torch.zeros(3, 2, dtype=torch.long)), VE, "labels must have the leading shape"),
    ("labels_list", lambda: kd(labels=[[0, 1, 2], [0, 1, 2]]), TE, "labels must be an integer torch.Tensor"),
    ("labels_meta", lambda: kd(labels=torch.zeros(2, 3, dtype=torch.long, device="meta")), VE, "labels must be on"),
    ("reduction_mean", lambda: kd(reduction="mean"), VE, "reduction must be one of"),
    ("reduction_upper", lambda: kd(reduction="SUM"), VE, "reduction must be one of"),
    ("reduction_none_obj", lambda: kd(reduction=None), VE, "reduction must be one of"),
    ("reduction_int", lambda: kd(reduction=1), VE, "reduction must be one of"),
    ("teacher_is_logprobs_topk", lambda: topk(teacher_is_logprobs=True), VE, "teacher_is_logprobs does not apply"),
    ("topk_and_teacher", lambda: topk(t=randn(2, 3, 8)), VE, "teacher_logits must be None"),
    ("topk_not_pair", lambda: kd(teacher_topk=(torch.zeros(2, 3, 2, dtype=torch.long),)), TE, "teacher_topk must be"),
    ("topk_str", lambda: kd(teacher_topk="x"), TE, "teacher_topk must be a pair"),
    ("topk_float_indices", lambda: topk(indices=torch.zeros(2, 3, 2)), TE, "indices must be an int64 tensor"),
    ("topk_int32_indices", lambda: topk(indices=torch.zeros(2, 3, 2, dtype=torch.int32)), TE, "int64"),
    ("topk_int_logprobs", lambda: topk(logprobs=torch.zeros(2, 3, 2, dtype=torch.long)), TE, "logprobs"),
    ("topk_shape", lambda: topk(logprobs=torch.zeros(2, 3, 3)), VE, "logprobs must have the shape of indices"),
    ("topk_leading", lambda: topk(indices=torch.zeros(3, 3, 2, dtype=torch.long)), VE, "leading shape"),
    (
        "topk_k_too_big",
        lambda: topk(torch.zeros(2, 3, 9, dtype=torch.long), torch.zeros(2, 3, 9)),
        VE,
        "k must satisfy",
    ),
    ("topk_k_zero", lambda: topk(torch.zeros(2, 3, 0, dtype=torch.long), torch.zeros(2, 3, 0)), VE, "k must satisfy"),
    ("topk_index_high", lambda: topk(indices=torch.full((2, 3, 2), 8)), VE, "indices must lie in [0, V)"),
    ("topk_index_negative", lambda: topk(indices=torch.full((2, 3, 2), -1)), VE, "indices must lie in [0, V)"),
]:
    case("f_divergence_loss/" + id_, call, err, match)
for id_, value, err in NUMBER_BAD:
    case(f"f_divergence_loss/temperature_{id_}", lambda v=value: kd(temperature=v), err, "temperature")
    case(
        f"FDivergenceLoss/temperature_{id_}",
        lambda v=value: fdiv_ops.FDivergenceLoss(temperature=v),
        err,
        "temperature",
    )
for id_, value, err in NUMBER_BAD + [
    ("tensor_zero", torch.tensor(0), VE),
    ("tensor_negative", torch.tensor(-3.0), VE),
    ("tensor_nan", torch.tensor(math.nan), VE),
    ("tensor_inf", torch.tensor(math.inf), VE),
    ("tensor_two_elements", torch.tensor([1.0, 2.0]), VE),
    ("tensor_bool", torch.tensor(True), TE),
    ("tensor_complex", torch.tensor(1 + 0j), TE),
]:
    if id_ in ("tensor", "none"):
        continue  # a one-element tensor and None are valid counts
    case(
        f"f_divergence_loss/num_items_in_batch_{id_}",
        lambda v=value: kd(num_items_in_batch=v),
        err,
        "num_items_in_batch",
    )
for id_, value, err in INT_BAD:
    case(f"f_divergence_loss/ignore_index_{id_}", lambda v=value: kd(ignore_index=v), err, "ignore_index")
    case(
        f"FDivergenceLoss/ignore_index_{id_}",
        lambda v=value: fdiv_ops.FDivergenceLoss(ignore_index=v),
        err,
        "ignore_index",
    )
for id_, value, err in [("negative", -1, VE), ("str", "8", TE), ("float", 1.5, TE), ("bool", True, TE)]:
    case(f"f_divergence_loss/max_vocab_pad_{id_}", lambda v=value: kd(max_vocab_pad=v), err, "max_vocab_pad")
    case(
        f"FDivergenceLoss/max_vocab_pad_{id_}",
        lambda v=value: fdiv_ops.FDivergenceLoss(max_vocab_pad=v),
        err,
        "max_vocab_pad",
    )
for id_, value, err in BOOL_BAD:
    case(
        f"f_divergence_loss/teacher_is_logprobs_{id_}",
        lambda v=value: kd(teacher_is_logprobs=v),
        err,
        "teacher_is_logprobs",
    )
    case(
        f"FDivergenceLoss/teacher_is_logprobs_{id_}",
        lambda v=value: fdiv_ops.FDivergenceLoss(teacher_is_logprobs=v),
        err,
        "teacher_is_logprobs",
    )
for id_, make in ROUNDS_IN_FP32:
    case(f"f_divergence_loss/divergence_{id_}_fp32", lambda m=make: kd(divergence=m()), VE, "in float32")
    case(
        f"f_divergence_loss/divergence_{id_}_bf16",
        lambda m=make: kd(s=randn(2, 8).bfloat16(), t=randn(2, 8).bfloat16(), divergence=m()),
        VE,
        "in float32",
    )
for id_, call, err, match in [
    ("reduction", lambda: fdiv_ops.FDivergenceLoss(reduction="mean"), VE, "reduction must be one of"),
    ("divergence", lambda: fdiv_ops.FDivergenceLoss("kl"), VE, "unknown divergence"),
    ("forward_student", lambda: fdiv_ops.FDivergenceLoss()("x", randn(2, 8)), TE, "student_logits"),
    (
        "forward_labels_bool",
        lambda: fdiv_ops.FDivergenceLoss()(randn(2, 8), randn(2, 8), torch.ones(2, dtype=torch.bool)),
        TE,
        "labels",
    ),
    (
        "forward_num_items",
        lambda: fdiv_ops.FDivergenceLoss()(randn(2, 8), randn(2, 8), num_items_in_batch=torch.tensor(0)),
        VE,
        "num_items_in_batch",
    ),
]:
    case("FDivergenceLoss/" + id_, call, err, match)


# ---------------------------------------------------------------------------------------------------
# fused_linear_f_divergence and FusedLinearFDivergenceLoss


def fl(**kw):
    args = {
        "student_hidden": randn(2, 3, 4),
        "student_weight": randn(9, 4),
        "teacher_hidden": randn(2, 3, 5),
        "teacher_weight": randn(9, 5),
    }
    for name in list(args):
        if name in kw:
            args[name] = kw.pop(name)
    return fdiv_ops.fused_linear_f_divergence(*args.values(), **kw)


LABELS6 = lambda: torch.randint(0, 9, (2, 3))  # noqa: E731
for id_, call, err, match in [
    ("student_hidden_str", lambda: fl(student_hidden="x"), TE, "student_hidden must be a torch.Tensor"),
    ("student_hidden_long", lambda: fl(student_hidden=torch.ones(2, 3, 4, dtype=torch.long)), TE, "student_hidden"),
    ("student_hidden_h0", lambda: fl(student_hidden=randn(2, 3, 0), student_weight=randn(9, 0)), VE, "H >= 1"),
    ("student_hidden_0d", lambda: fl(student_hidden=torch.tensor(1.0)), VE, "student_hidden"),
    ("student_weight_h", lambda: fl(student_weight=randn(9, 5)), VE, "student_weight must have shape (V, H)"),
    ("student_weight_1d", lambda: fl(student_weight=randn(9)), VE, "student_weight must have shape"),
    ("student_weight_v0", lambda: fl(student_weight=randn(0, 4)), VE, "student_weight must have shape"),
    (
        "student_weight_dtype",
        lambda: fl(student_weight=randn(9, 4, dtype=torch.float64)),
        TE,
        "student_weight must have the dtype",
    ),
    ("student_weight_str", lambda: fl(student_weight="w"), TE, "student_weight must be a torch.Tensor"),
    ("teacher_hidden_leading", lambda: fl(teacher_hidden=randn(3, 3, 5)), VE, "teacher_hidden must have shape"),
    ("teacher_hidden_long", lambda: fl(teacher_hidden=torch.ones(2, 3, 5, dtype=torch.long)), TE, "teacher_hidden"),
    ("teacher_hidden_meta", lambda: fl(teacher_hidden=randn(2, 3, 5).to("meta")), VE, "teacher_hidden"),
    ("teacher_weight_h", lambda: fl(teacher_weight=randn(9, 4)), VE, "teacher_weight must have shape (V, H)"),
    (
        "teacher_weight_dtype",
        lambda: fl(teacher_weight=randn(9, 5, dtype=torch.float64)),
        TE,
        "teacher_weight must have the dtype",
    ),
    ("teacher_weight_vocab_gap", lambda: fl(teacher_weight=randn(2000, 5)), VE, "max_vocab_pad"),
    ("student_bias_shape", lambda: fl(student_bias=randn(8)), VE, "student_bias must have shape"),
    (
        "student_bias_dtype",
        lambda: fl(student_bias=randn(9, dtype=torch.float64)),
        TE,
        "student_bias must have the dtype",
    ),
    ("student_bias_str", lambda: fl(student_bias="b"), TE, "student_bias must be a torch.Tensor"),
    ("teacher_bias_shape", lambda: fl(teacher_bias=randn(3)), VE, "teacher_bias must have shape"),
    ("labels_bool", lambda: fl(labels=torch.ones(2, 3, dtype=torch.bool)), TE, "labels must be an integer tensor"),
    ("labels_float", lambda: fl(labels=torch.ones(2, 3)), TE, "labels must be an integer tensor"),
    ("labels_shape", lambda: fl(labels=torch.zeros(6, dtype=torch.long)), VE, "labels must have the leading shape"),
    (
        "labels_out_of_range_hard",
        lambda: fl(labels=torch.full((2, 3), 9), hard_loss_weight=0.5),
        VE,
        "labels must lie in [0, V)",
    ),
    (
        "labels_negative_hard",
        lambda: fl(labels=torch.full((2, 3), -5), hard_loss_weight=0.5),
        VE,
        "labels must lie in [0, V)",
    ),
    ("hard_without_labels", lambda: fl(hard_loss_weight=0.5), VE, "labels are required"),
    ("reduction_none", lambda: fl(reduction="none"), VE, "reduction must be one of"),
    ("reduction_mean", lambda: fl(reduction="mean"), VE, "reduction must be one of"),
    ("divergence_unknown", lambda: fl(divergence="kl"), VE, "unknown divergence"),
    ("num_items_tensor_zero", lambda: fl(num_items_in_batch=torch.tensor(0)), VE, "num_items_in_batch"),
    ("num_items_tensor_nan", lambda: fl(num_items_in_batch=torch.tensor(math.nan)), VE, "num_items_in_batch"),
    ("num_items_negative", lambda: fl(num_items_in_batch=-2), VE, "num_items_in_batch"),
    ("num_items_str", lambda: fl(num_items_in_batch="6"), TE, "num_items_in_batch"),
]:
    case("fused_linear_f_divergence/" + id_, call, err, match)
for id_, value, err in NUMBER_BAD:
    case(f"fused_linear_f_divergence/temperature_{id_}", lambda v=value: fl(temperature=v), err, "temperature")
    case(
        f"FusedLinearFDivergenceLoss/temperature_{id_}",
        lambda v=value: fdiv_ops.FusedLinearFDivergenceLoss(temperature=v),
        err,
        "temperature",
    )
for id_, value, err in [
    ("negative", -1.0, VE),
    ("nan", math.nan, VE),
    ("inf", math.inf, VE),
    ("str", "x", TE),
    ("bool", True, TE),
]:
    case(
        f"fused_linear_f_divergence/hard_loss_weight_{id_}",
        lambda v=value: fl(hard_loss_weight=v, labels=LABELS6()),
        err,
        "hard_loss_weight",
    )
    case(
        f"FusedLinearFDivergenceLoss/hard_loss_weight_{id_}",
        lambda v=value: fdiv_ops.FusedLinearFDivergenceLoss(hard_loss_weight=v),
        err,
        "hard_loss_weight",
    )
for id_, value, err in INT_BAD:
    case(f"fused_linear_f_divergence/ignore_index_{id_}", lambda v=value: fl(ignore_index=v), err, "ignore_index")
    case(
        f"FusedLinearFDivergenceLoss/ignore_index_{id_}",
        lambda v=value: fdiv_ops.FusedLinearFDivergenceLoss(ignore_index=v),
        err,
        "ignore_index",
    )
for id_, value, err in [
    ("zero", 0, VE),
    ("negative", -3, VE),
    ("float", 1.5, TE),
    ("str", "8", TE),
    ("bool", True, TE),
]:
    case(f"fused_linear_f_divergence/chunk_size_{id_}", lambda v=value: fl(chunk_size=v), err, "chunk_size")
    case(
        f"FusedLinearFDivergenceLoss/chunk_size_{id_}",
        lambda v=value: fdiv_ops.FusedLinearFDivergenceLoss(chunk_size=v),
        err,
        "chunk_size",
    )
for id_, value, err in [("negative", -1, VE), ("str", "8", TE), ("float", 2.0, TE)]:
    case(f"fused_linear_f_divergence/max_vocab_pad_{id_}", lambda v=value: fl(max_vocab_pad=v), err, "max_vocab_pad")
    case(
        f"FusedLinearFDivergenceLoss/max_vocab_pad_{id_}",
        lambda v=value: fdiv_ops.FusedLinearFDivergenceLoss(max_vocab_pad=v),
        err,
        "max_vocab_pad",
    )
for id_, make in ROUNDS_IN_FP32:
    case(f"fused_linear_f_divergence/divergence_{id_}", lambda m=make: fl(divergence=m()), VE, "in float32")
for id_, call, err, match in [
    ("reduction", lambda: fdiv_ops.FusedLinearFDivergenceLoss(reduction="none"), VE, "reduction must be one of"),
    ("divergence", lambda: fdiv_ops.FusedLinearFDivergenceLoss(divergence=4), TE, "divergence must be"),
    (
        "forward_weight",
        lambda: fdiv_ops.FusedLinearFDivergenceLoss()(randn(2, 4), randn(9, 3), randn(2, 5), randn(9, 5)),
        VE,
        "student_weight",
    ),
]:
    case("FusedLinearFDivergenceLoss/" + id_, call, err, match)


# ---------------------------------------------------------------------------------------------------
# sequence_logprobs and fused_linear_sequence_logprobs


def seq(logits=None, labels=None, **kw):
    logits = randn(2, 3, 9) if logits is None else logits
    labels = torch.randint(0, 9, (2, 3)) if labels is None else labels
    return fdiv_ops.sequence_logprobs(logits, labels, **kw)


def fseq(hidden=None, weight=None, labels=None, **kw):
    hidden = randn(2, 3, 4) if hidden is None else hidden
    weight = randn(9, 4) if weight is None else weight
    labels = torch.randint(0, 9, (2, 3)) if labels is None else labels
    return fdiv_ops.fused_linear_sequence_logprobs(hidden, weight, labels, **kw)


for id_, call, err, match in [
    ("logits_str", lambda: seq(logits="x"), TE, "logits must be a torch.Tensor"),
    ("logits_long", lambda: seq(logits=torch.ones(2, 3, 9, dtype=torch.long)), TE, "logits must have a floating"),
    ("logits_complex", lambda: seq(logits=torch.ones(2, 3, 9, dtype=torch.complex64)), TE, "logits"),
    ("logits_1d", lambda: seq(logits=randn(9), labels=torch.tensor(1)), VE, "logits must have shape (..., V)"),
    ("logits_v0", lambda: seq(logits=randn(2, 3, 0)), VE, "V >= 1"),
    ("logits_meta", lambda: seq(logits=randn(2, 3, 9).to("meta")), VE, "logits must be on a CPU or CUDA"),
    ("labels_bool", lambda: seq(labels=torch.ones(2, 3, dtype=torch.bool)), TE, "labels must be an integer tensor"),
    ("labels_float", lambda: seq(labels=torch.ones(2, 3)), TE, "labels must have an integer dtype"),
    ("labels_str", lambda: seq(labels="y"), TE, "labels must be an integer torch.Tensor"),
    ("labels_shape", lambda: seq(labels=torch.zeros(2, 2, dtype=torch.long)), VE, "labels must have shape"),
    ("labels_high", lambda: seq(labels=torch.full((2, 3), 9)), VE, "labels must lie in [0, V)"),
    ("labels_negative", lambda: seq(labels=torch.full((2, 3), -1)), VE, "labels must lie in [0, V)"),
    ("labels_meta", lambda: seq(labels=torch.zeros(2, 3, dtype=torch.long, device="meta")), VE, "labels must be on"),
    ("hidden_str", lambda: fseq(hidden="h"), TE, "hidden must be a torch.Tensor"),
    ("hidden_1d", lambda: fseq(hidden=randn(4), labels=torch.tensor(1)), VE, "hidden must have shape"),
    ("hidden_long", lambda: fseq(hidden=torch.ones(2, 3, 4, dtype=torch.long)), TE, "hidden must have a floating"),
    ("weight_h", lambda: fseq(weight=randn(9, 5)), VE, "weight must have shape (V, H)"),
    ("weight_3d", lambda: fseq(weight=randn(9, 4, 1)), VE, "weight must have shape (V, H)"),
    ("weight_v0", lambda: fseq(weight=randn(0, 4)), VE, "weight must have shape (V, H)"),
    ("weight_dtype", lambda: fseq(weight=randn(9, 4, dtype=torch.float64)), TE, "weight must have the dtype"),
    ("bias_shape", lambda: fseq(bias=randn(8)), VE, "bias must have shape"),
    ("bias_dtype", lambda: fseq(bias=randn(9, dtype=torch.float64)), TE, "bias must have the dtype"),
    ("bias_str", lambda: fseq(bias="b"), TE, "bias must be a torch.Tensor"),
    ("fused_labels_bool", lambda: fseq(labels=torch.ones(2, 3, dtype=torch.bool)), TE, "labels must be an integer"),
    ("fused_labels_shape", lambda: fseq(labels=torch.zeros(6, dtype=torch.long)), VE, "labels must have shape"),
    ("fused_labels_high", lambda: fseq(labels=torch.full((2, 3), 9)), VE, "labels must lie in [0, V)"),
]:
    case("sequence_logprobs/" + id_, call, err, match)
for id_, value, err in NUMBER_BAD:
    case(f"sequence_logprobs/temperature_{id_}", lambda v=value: seq(temperature=v), err, "temperature")
    case(f"fused_linear_sequence_logprobs/temperature_{id_}", lambda v=value: fseq(temperature=v), err, "temperature")
for id_, value, err in INT_BAD + [("none", None, TE)]:
    case(f"sequence_logprobs/ignore_index_{id_}", lambda v=value: seq(ignore_index=v), err, "ignore_index")
    case(
        f"fused_linear_sequence_logprobs/ignore_index_{id_}", lambda v=value: fseq(ignore_index=v), err, "ignore_index"
    )
for id_, value, err in BOOL_BAD:
    case(f"sequence_logprobs/return_entropy_{id_}", lambda v=value: seq(return_entropy=v), err, "return_entropy")
    case(
        f"fused_linear_sequence_logprobs/return_entropy_{id_}",
        lambda v=value: fseq(return_entropy=v),
        err,
        "return_entropy",
    )
for id_, value, err in [
    ("zero", 0, VE),
    ("negative", -3, VE),
    ("float", 1.5, TE),
    ("str", "8", TE),
    ("none", None, TE),
]:
    case(f"fused_linear_sequence_logprobs/chunk_size_{id_}", lambda v=value: fseq(chunk_size=v), err, "chunk_size")


# ---------------------------------------------------------------------------------------------------
# f_distill_loss, f_distill and FDistillLoss


def fd(fn=fdiv_ops.f_distill_loss, **kw):
    x = kw.pop("x", randn(4, 3, 5))
    t = kw.pop("t", randn(4, 3, 5))
    f = kw.pop("f", randn(4, 3, 5))
    logits = kw.pop("logits", randn(4, 2))
    kw.setdefault("divergence", "js")
    return fn(x, t, f, logits, **kw)


for id_, call, err, match in [
    ("x_str", lambda: fd(x="x"), TE, "x must be a torch.Tensor"),
    ("x_numpy", lambda: fd(x=randn(4, 3, 5).numpy()), TE, "x must be a torch.Tensor"),
    ("x_long", lambda: fd(x=torch.ones(4, 3, 5, dtype=torch.long)), TE, "x must have a floating"),
    (
        "x_0d",
        lambda: fd(x=torch.tensor(1.0), t=torch.tensor(1.0), f=torch.tensor(1.0)),
        VE,
        "x must have shape (B, ...)",
    ),
    ("x_b0", lambda: fd(x=randn(0, 5), t=randn(0, 5), f=randn(0, 5), logits=randn(0)), VE, "B >= 1"),
    ("x_d0", lambda: fd(x=randn(4, 0), t=randn(4, 0), f=randn(4, 0)), VE, "at least one element per sample"),
    ("x_meta", lambda: fd(x=randn(4, 3, 5).to("meta")), VE, "x must be on a CPU or CUDA"),
    ("teacher_shape", lambda: fd(t=randn(4, 3, 4)), VE, "teacher_x0 must have the shape of x"),
    ("teacher_dtype", lambda: fd(t=randn(4, 3, 5, dtype=torch.float64)), TE, "teacher_x0 must have the dtype of x"),
    ("teacher_none", lambda: fd(t=None), TE, "teacher_x0 must be a torch.Tensor"),
    ("fake_shape", lambda: fd(f=randn(4, 15)), VE, "fake_x0 must have the shape of x"),
    ("fake_dtype", lambda: fd(f=randn(4, 3, 5).half()), TE, "fake_x0 must have the dtype of x"),
    ("fake_str", lambda: fd(f="f"), TE, "fake_x0 must be a torch.Tensor"),
    ("logits_batch", lambda: fd(logits=randn(3)), VE, "disc_logits must have shape (B,) or (B, K)"),
    ("logits_3d", lambda: fd(logits=randn(4, 2, 1)), VE, "disc_logits must have shape (B,) or (B, K)"),
    ("logits_k0", lambda: fd(logits=randn(4, 0)), VE, "disc_logits must have shape (B,) or (B, K)"),
    ("logits_long", lambda: fd(logits=torch.ones(4, dtype=torch.long)), TE, "disc_logits must have a floating"),
    ("logits_str", lambda: fd(logits="l"), TE, "disc_logits must be a torch.Tensor"),
    ("logits_meta", lambda: fd(logits=randn(4).to("meta")), VE, "disc_logits"),
    ("logits_missing", lambda: fd(logits=None), VE, "only reverse_kl"),
    ("divergence_unknown", lambda: fd(divergence="kl"), VE, "unknown divergence"),
    ("divergence_tv", lambda: fd(divergence="total_variation"), VE, "total_variation has h = 0"),
    ("divergence_alpha_str", lambda: fd(divergence=fdiv_ops.alpha("x")), TE, "alpha must be a number"),
    ("reduction_avg", lambda: fd(reduction="avg"), VE, "reduction must be one of"),
    ("reduction_int", lambda: fd(reduction=0), VE, "reduction must be one of"),
    (
        "process_group_str",
        lambda: fd(process_group="grp"),
        TE,
        "process_group must be a torch.distributed ProcessGroup",
    ),
    ("process_group_int", lambda: fd(process_group=0), TE, "process_group must be"),
    (
        "ratio_divisor_shape",
        lambda: fd(fn=fdiv_ops.f_distill, ratio_divisor=randn(3)),
        VE,
        "ratio_divisor must have shape",
    ),
    (
        "ratio_divisor_long",
        lambda: fd(fn=fdiv_ops.f_distill, ratio_divisor=torch.ones(4, dtype=torch.long)),
        TE,
        "ratio_divisor",
    ),
]:
    case("f_distill_loss/" + id_, call, err, match)
for id_, value, err in NUMBER_BAD:
    case(f"f_distill_loss/logit_clamp_{id_}", lambda v=value: fd(logit_clamp=v), err, "logit_clamp")
    case(f"f_distill_loss/eps_{id_}", lambda v=value: fd(eps=v), err, "eps")
    case(f"FDistillLoss/logit_clamp_{id_}", lambda v=value: fdiv_ops.FDistillLoss(logit_clamp=v), err, "logit_clamp")
    case(f"FDistillLoss/eps_{id_}", lambda v=value: fdiv_ops.FDistillLoss(eps=v), err, "eps")
for id_, value, err in [
    ("reversed", (2.0, 1.0), VE),
    ("zero_lo", (0.0, 1.0), VE),
    ("inf_hi", (1.0, math.inf), VE),
    ("nan_lo", (math.nan, 1.0), VE),
    ("single", (1.0,), TE),
    ("str", "x", TE),
    ("str_item", (0.1, "x"), TE),
    ("none", None, TE),
]:
    case(f"f_distill_loss/ratio_clip_{id_}", lambda v=value: fd(ratio_clip=v), err, "ratio_clip")
    case(f"FDistillLoss/ratio_clip_{id_}", lambda v=value: fdiv_ops.FDistillLoss(ratio_clip=v), err, "ratio_clip")
for id_, value, err in BOOL_BAD:
    case(f"f_distill_loss/normalize_{id_}", lambda v=value: fd(normalize=v), err, "normalize")
    case(f"FDistillLoss/normalize_{id_}", lambda v=value: fdiv_ops.FDistillLoss(normalize=v), err, "normalize")
for id_, make in ROUNDS_IN_FP32[:2]:
    case(f"f_distill_loss/divergence_{id_}", lambda m=make: fd(divergence=m()), VE, "in float32")
for id_, call, err, match in [
    ("divergence_tv", lambda: fdiv_ops.FDistillLoss("total_variation"), VE, "total_variation has h = 0"),
    ("reduction", lambda: fdiv_ops.FDistillLoss(reduction="avg"), VE, "reduction must be one of"),
    ("process_group", lambda: fdiv_ops.FDistillLoss(process_group="grp"), TE, "process_group must be"),
    ("num_time_bins_negative", lambda: fdiv_ops.FDistillLoss(num_time_bins=-1), VE, "num_time_bins"),
    ("num_time_bins_float", lambda: fdiv_ops.FDistillLoss(num_time_bins=1.5), TE, "num_time_bins"),
    ("num_time_bins_str", lambda: fdiv_ops.FDistillLoss(num_time_bins="4"), TE, "num_time_bins"),
    ("ema_rate_one", lambda: fdiv_ops.FDistillLoss(ema_rate=1.0), VE, "ema_rate"),
    ("ema_rate_negative", lambda: fdiv_ops.FDistillLoss(ema_rate=-0.1), VE, "ema_rate"),
    ("ema_rate_nan", lambda: fdiv_ops.FDistillLoss(ema_rate=math.nan), VE, "ema_rate"),
    ("ema_rate_str", lambda: fdiv_ops.FDistillLoss(ema_rate="x"), TE, "ema_rate"),
    ("time_range_reversed", lambda: fdiv_ops.FDistillLoss(time_range=(1.0, 0.0)), VE, "time_range"),
    ("time_range_inf", lambda: fdiv_ops.FDistillLoss(time_range=(0.0, math.inf)), VE, "time_range"),
    ("time_range_str", lambda: fdiv_ops.FDistillLoss(time_range="x"), TE, "time_range"),
    ("time_range_single", lambda: fdiv_ops.FDistillLoss(time_range=(0.0,)), TE, "time_range"),
    (
        "forward_time_missing",
        lambda: fdiv_ops.FDistillLoss("js", num_time_bins=4, time_range=(0.0, 1.0))(*fd_args()),
        VE,
        "time is required",
    ),
    (
        "forward_time_unexpected",
        lambda: fdiv_ops.FDistillLoss("js")(*fd_args(), time=torch.rand(4)),
        VE,
        "num_time_bins = 0",
    ),
    (
        "forward_time_shape",
        lambda: fdiv_ops.FDistillLoss("js", num_time_bins=4, time_range=(0.0, 1.0))(*fd_args(), time=torch.rand(3)),
        VE,
        "time must be",
    ),
    (
        "forward_time_bool",
        lambda: fdiv_ops.FDistillLoss("js", num_time_bins=4, time_range=(0.0, 1.0))(
            *fd_args(), time=torch.ones(4, dtype=torch.bool)
        ),
        VE,
        "time must be",
    ),
    (
        "forward_time_list",
        lambda: fdiv_ops.FDistillLoss("js", num_time_bins=4, time_range=(0.0, 1.0))(*fd_args(), time=[0.1] * 4),
        VE,
        "time must be",
    ),
    (
        "forward_x",
        lambda: fdiv_ops.FDistillLoss("js", num_time_bins=4, time_range=(0.0, 1.0))(
            "x", *fd_args()[1:], time=torch.rand(4)
        ),
        TE,
        "x must be",
    ),
    (
        "forward_logits",
        lambda: fdiv_ops.FDistillLoss("js", num_time_bins=4, time_range=(0.0, 1.0))(
            *fd_args()[:3], randn(3), time=torch.rand(4)
        ),
        VE,
        "disc_logits",
    ),
    ("forward_no_logits", lambda: fdiv_ops.FDistillLoss("js")(*fd_args()[:3]), VE, "only reverse_kl"),
]:
    case("FDistillLoss/" + id_, call, err, match)


def fd_args():
    return randn(4, 6), randn(4, 6), randn(4, 6), randn(4, 2)


# ---------------------------------------------------------------------------------------------------
# f_dpo_loss, f_dpg_loss, group_normalized_advantages, divergence_terms and FDPG


def dpo(which=None, value=None, **kw):
    args = [randn(4) for _ in range(4)]
    if which is not None:
        args[which] = value
    return fdiv_ops.f_dpo_loss(*args, **kw)


DPO_NAMES = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
for i, name in enumerate(DPO_NAMES):
    for id_, value, err, match in [
        ("str", "x", TE, f"{name} must be a torch.Tensor"),
        ("long", torch.ones(4, dtype=torch.long), TE, f"{name} must have a floating"),
        ("meta", randn(4).to("meta"), VE, name),
    ]:
        case(f"f_dpo_loss/{name}_{id_}", lambda i=i, v=value: dpo(i, v), err, match)
    if i > 0:
        case(f"f_dpo_loss/{name}_shape", lambda i=i: dpo(i, randn(3)), VE, f"{name} must have the shape")
for id_, value, err in NUMBER_BAD:
    case(f"f_dpo_loss/beta_{id_}", lambda v=value: dpo(beta=v), err, "beta")
    case(f"f_dpo_loss/max_exponent_{id_}", lambda v=value: dpo(max_exponent=v), err, "max_exponent")
for id_, value, err in [
    ("negative", -0.1, VE),
    ("above", 0.7, VE),
    ("nan", math.nan, VE),
    ("str", "x", TE),
    ("bool", False, TE),
]:
    case(f"f_dpo_loss/label_smoothing_{id_}", lambda v=value: dpo(label_smoothing=v), err, "label_smoothing")
for id_, call in [
    ("unknown", lambda: dpo(divergence="kl")),
    ("alpha_1e-40", lambda: dpo(divergence=fdiv_ops.alpha(1e-40))),
]:
    case(f"f_dpo_loss/divergence_{id_}", call, VE, "divergence" if id_ == "unknown" else "in float32")
for id_, make in ROUNDS_IN_FP32:
    case(f"f_dpo_loss/divergence_{id_}", lambda m=make: dpo(divergence=m()), VE, "in float32")


def dpg(policy=None, **kw):
    policy = randn(4) if policy is None else policy
    if "log_ratio" not in kw and "target_logscores" not in kw:
        kw["target_logscores"] = randn(4)
    kw = {k: v for k, v in kw.items() if not (k in ("log_ratio", "target_logscores") and v is ...)}
    return fdiv_ops.f_dpg_loss(policy, **kw)


for id_, call, err, match in [
    ("policy_str", lambda: dpg("x"), TE, "policy_logprobs must be a torch.Tensor"),
    ("policy_long", lambda: dpg(torch.ones(4, dtype=torch.long)), TE, "policy_logprobs must have a floating"),
    ("policy_2d", lambda: dpg(randn(4, 1)), VE, "policy_logprobs must have shape (B,)"),
    ("policy_empty", lambda: dpg(randn(0), target_logscores=randn(0)), VE, "policy_logprobs must have shape (B,)"),
    ("neither", lambda: dpg(target_logscores=...), VE, "give exactly one"),
    ("both", lambda: dpg(log_ratio=randn(4), target_logscores=randn(4)), VE, "give exactly one"),
    ("log_z_with_ratio", lambda: dpg(target_logscores=..., log_ratio=randn(4), log_z=0.0), VE, "log_z goes with"),
    ("target_shape", lambda: dpg(target_logscores=randn(3)), VE, "target_logscores must have the shape"),
    ("target_long", lambda: dpg(target_logscores=torch.ones(4, dtype=torch.long)), TE, "target_logscores"),
    ("target_str", lambda: dpg(target_logscores="t"), TE, "target_logscores"),
    ("log_ratio_shape", lambda: dpg(target_logscores=..., log_ratio=randn(2)), VE, "log_ratio must have the shape"),
    ("log_z_shape", lambda: dpg(log_z=randn(2)), VE, "log_z must be a scalar"),
    ("log_z_str", lambda: dpg(log_z="z"), TE, "log_z"),
    ("log_z_bool", lambda: dpg(log_z=True), TE, "log_z"),
    ("log_z_long", lambda: dpg(log_z=torch.ones(4, dtype=torch.long)), TE, "log_z"),
    ("proposal_shape", lambda: dpg(proposal_logprobs=randn(5)), VE, "proposal_logprobs must have the shape"),
    ("proposal_long", lambda: dpg(proposal_logprobs=torch.ones(4, dtype=torch.long)), TE, "proposal_logprobs"),
    ("baseline_median", lambda: dpg(baseline="median"), VE, "baseline must be"),
    ("baseline_bool", lambda: dpg(baseline=True), TE, "baseline"),
    ("baseline_shape", lambda: dpg(baseline=randn(3)), VE, "baseline must be a scalar"),
    ("baseline_with_groups", lambda: dpg(baseline=0.5, group_size=2), VE, "baseline must be 'mean' or None"),
    ("group_size_one", lambda: dpg(group_size=1), VE, "group_size"),
    ("group_size_not_divisor", lambda: dpg(group_size=3), VE, "not divisible by group_size"),
    ("group_size_float", lambda: dpg(group_size=2.0), TE, "group_size"),
    ("group_size_str", lambda: dpg(group_size="2"), TE, "group_size"),
    ("divergence_unknown", lambda: dpg(divergence="kl"), VE, "unknown divergence"),
    ("divergence_alpha_rounds", lambda: dpg(divergence=fdiv_ops.alpha(1 - 1e-9)), VE, "in float32"),
]:
    case("f_dpg_loss/" + id_, call, err, match)
for id_, value, err in NUMBER_BAD:
    case(f"f_dpg_loss/max_exponent_{id_}", lambda v=value: dpg(max_exponent=v), err, "max_exponent")
for id_, call, err, match in [
    ("rewards_str", lambda: fdiv_ops.group_normalized_advantages("r", 2), TE, "rewards must be a torch.Tensor"),
    ("rewards_long", lambda: fdiv_ops.group_normalized_advantages(torch.ones(8, dtype=torch.long), 2), TE, "rewards"),
    ("rewards_2d", lambda: fdiv_ops.group_normalized_advantages(randn(4, 2), 2), VE, "rewards must have shape (B,)"),
    ("group_size_one", lambda: fdiv_ops.group_normalized_advantages(randn(8), 1), VE, "group_size"),
    ("group_size_not_divisor", lambda: fdiv_ops.group_normalized_advantages(randn(8), 3), VE, "not divisible"),
    ("group_size_float", lambda: fdiv_ops.group_normalized_advantages(randn(8), 2.5), TE, "group_size"),
    ("group_size_str", lambda: fdiv_ops.group_normalized_advantages(randn(8), "4"), TE, "group_size"),
    ("group_size_bool", lambda: fdiv_ops.group_normalized_advantages(randn(8), True), TE, "group_size"),
    ("eps_negative", lambda: fdiv_ops.group_normalized_advantages(randn(8), 4, eps=-1.0), VE, "eps"),
    ("eps_nan", lambda: fdiv_ops.group_normalized_advantages(randn(8), 4, eps=math.nan), VE, "eps"),
    ("eps_str", lambda: fdiv_ops.group_normalized_advantages(randn(8), 4, eps="x"), TE, "eps"),
    ("clip_zero", lambda: fdiv_ops.group_normalized_advantages(randn(8), 4, clip=0.0), VE, "clip"),
    ("clip_nan", lambda: fdiv_ops.group_normalized_advantages(randn(8), 4, clip=math.nan), VE, "clip"),
    ("clip_str", lambda: fdiv_ops.group_normalized_advantages(randn(8), 4, clip="x"), TE, "clip"),
]:
    case("group_normalized_advantages/" + id_, call, err, match)
for id_, call, err, match in [
    ("log_ratio_str", lambda: fdiv_ops.divergence_terms("l", "js"), TE, "log_ratio must be a torch.Tensor"),
    ("log_ratio_long", lambda: fdiv_ops.divergence_terms(torch.ones(3, dtype=torch.long), "js"), TE, "log_ratio"),
    ("log_ratio_meta", lambda: fdiv_ops.divergence_terms(randn(3).to("meta"), "js"), VE, "log_ratio"),
    ("div_unknown", lambda: fdiv_ops.divergence_terms(randn(3), "kl"), VE, "unknown divergence"),
    ("div_int", lambda: fdiv_ops.divergence_terms(randn(3), 3), TE, "div must be"),
    ("div_alpha_rounds_fp32", lambda: fdiv_ops.divergence_terms(randn(3), fdiv_ops.alpha(1 - 1e-9)), VE, "in float32"),
    (
        "div_alpha_rounds_bf16",
        lambda: fdiv_ops.divergence_terms(randn(3).bfloat16(), fdiv_ops.alpha(1e-46)),
        VE,
        "in float32",
    ),
]:
    case("divergence_terms/" + id_, call, err, match)


def fdpg_forward(**kw):
    module = fdiv_ops.FDPG("js", num_contexts=3)
    args = {"policy_logprobs": randn(4), "target_logscores": randn(4)}
    for name in list(args):
        if name in kw:
            args[name] = kw.pop(name)
    return module(*args.values(), **kw)


for id_, call, err, match in [
    ("num_contexts_zero", lambda: fdiv_ops.FDPG(num_contexts=0), VE, "num_contexts"),
    ("num_contexts_float", lambda: fdiv_ops.FDPG(num_contexts=1.5), TE, "num_contexts"),
    ("num_contexts_str", lambda: fdiv_ops.FDPG(num_contexts="x"), TE, "num_contexts"),
    ("baseline_momentum_one", lambda: fdiv_ops.FDPG(baseline_momentum=1.0), VE, "baseline_momentum"),
    ("baseline_momentum_negative", lambda: fdiv_ops.FDPG(baseline_momentum=-0.5), VE, "baseline_momentum"),
    ("baseline_momentum_str", lambda: fdiv_ops.FDPG(baseline_momentum="x"), TE, "baseline_momentum"),
    ("max_exponent_zero", lambda: fdiv_ops.FDPG(max_exponent=0.0), VE, "max_exponent"),
    ("max_exponent_str", lambda: fdiv_ops.FDPG(max_exponent="x"), TE, "max_exponent"),
    ("divergence", lambda: fdiv_ops.FDPG("kl"), VE, "unknown divergence"),
    ("forward_policy_2d", lambda: fdpg_forward(policy_logprobs=randn(4, 1)), VE, "policy_logprobs must have shape"),
    ("forward_policy_str", lambda: fdpg_forward(policy_logprobs="p"), TE, "policy_logprobs"),
    ("forward_target_none", lambda: fdpg_forward(target_logscores=None), VE, "give exactly one"),
    (
        "forward_target_shape",
        lambda: fdpg_forward(target_logscores=randn(3)),
        VE,
        "target_logscores must have the shape",
    ),
    ("forward_proposal_shape", lambda: fdpg_forward(proposal_logprobs=randn(2)), VE, "proposal_logprobs"),
    ("forward_context_float", lambda: fdpg_forward(context=torch.zeros(4)), VE, "context must be an integer tensor"),
    ("forward_context_bool", lambda: fdpg_forward(context=torch.zeros(4, dtype=torch.bool)), VE, "context must be"),
    ("forward_context_shape", lambda: fdpg_forward(context=torch.zeros(3, dtype=torch.long)), VE, "context must be"),
    ("forward_context_range", lambda: fdpg_forward(context=torch.full((4,), 3)), VE, "context ids must lie in"),
    ("forward_context_negative", lambda: fdpg_forward(context=torch.full((4,), -1)), VE, "context ids must lie in"),
]:
    case("FDPG/" + id_, call, err, match)


# ---------------------------------------------------------------------------------------------------
# The registered ops, called directly (what compiled and exported graphs call). Their float scalars are 0-dim
# CPU tensors (f64); a Python float there is torch's own schema error (RuntimeError naming the argument).

JS = fdiv_ops.resolve("js").kernel_id
ALPHA = fdiv_ops.resolve("alpha(0.5)").kernel_id


def op_fdiv(student=None, teacher=None, row_scale=None, kind=JS, param=0.0, inv_t=None, logprobs=False):
    student = randn(64, 32) if student is None else student
    teacher = randn(64, 32) if teacher is None else teacher
    row_scale = torch.ones(64) if row_scale is None else row_scale
    return ops.f_divergence(student, teacher, row_scale, kind, param, f64(1.0) if inv_t is None else inv_t, logprobs)


def op_topk(student=None, indices=None, logprobs=None, row_scale=None, kind=JS, inv_t=None):
    student = randn(4, 16) if student is None else student
    indices = torch.arange(3).repeat(4, 1) if indices is None else indices
    logprobs = torch.full((4, 3), -2.0) if logprobs is None else logprobs
    row_scale = torch.ones(4) if row_scale is None else row_scale
    return ops.f_divergence_topk(student, indices, logprobs, row_scale, kind, 0.0, f64(1.0) if inv_t is None else inv_t)


def op_seq(logits=None, labels=None, ignore=-100, temperature=None, entropy=False):
    logits = randn(4, 8) if logits is None else logits
    labels = torch.zeros(4, dtype=torch.long) if labels is None else labels
    return ops.sequence_logprobs(logits, labels, ignore, f64(1.0) if temperature is None else temperature, entropy)


def op_seq_backward(**kw):
    logits, labels = randn(4, 8), torch.zeros(4, dtype=torch.long)
    _, entropy, stats = ops.sequence_logprobs(logits, labels, -100, f64(1.0), True)
    args = {
        "logits": logits,
        "labels": labels,
        "stats": stats,
        "entropy": entropy,
        "grad_logprobs": torch.ones(4),
        "grad_entropy": None,
        "ignore_index": -100,
        "temperature": f64(1.0),
    }
    args.update(kw)
    return ops.sequence_logprobs_backward(*args.values())


def op_fseq(hidden=None, weight=None, bias=None, labels=None, temperature=None, chunk=2):
    hidden = randn(6, 4) if hidden is None else hidden
    weight = randn(9, 4) if weight is None else weight
    labels = torch.zeros(6, dtype=torch.long) if labels is None else labels
    t = f64(1.0) if temperature is None else temperature
    return ops.fused_linear_sequence_logprobs(hidden, weight, bias, labels, -100, t, False, chunk)


def op_fseq_backward(**kw):
    hidden, weight, labels = randn(6, 4), randn(9, 4), torch.zeros(6, dtype=torch.long)
    _, entropy, stats = ops.fused_linear_sequence_logprobs(hidden, weight, None, labels, -100, f64(1.0), True, 2)
    args = {
        "hidden": hidden,
        "weight": weight,
        "bias": None,
        "labels": labels,
        "stats": stats,
        "entropy": entropy,
        "grad_logprobs": torch.ones(6),
        "grad_entropy": None,
        "ignore_index": -100,
        "temperature": f64(1.0),
        "chunk_size": 4,
        "weight_grad": True,
    }
    args.update(kw)
    return ops.fused_linear_sequence_logprobs_backward(*args.values())


def op_fused(**kw):
    args = {
        "student_hidden": randn(6, 4),
        "student_weight": randn(9, 4),
        "student_bias": None,
        "teacher_hidden": randn(6, 5),
        "teacher_weight": randn(9, 5),
        "teacher_bias": None,
        "row_scale": torch.full((6,), 1 / 6),
        "labels": None,
        "hard_weight": f64(0.0),
        "kind": JS,
        "param": 0.0,
        "inv_temperature": f64(1.0),
        "chunk_size": 0,
        "hidden_grad": True,
        "weight_grad": True,
    }
    args.update(kw)
    return ops.fused_linear_f_divergence(*args.values())


def op_distill(**kw):
    x = randn(4, 6)
    args = {
        "x": x,
        "teacher_x0": randn(4, 6),
        "fake_x0": randn(4, 6),
        "disc_logits": randn(4, 2),
        "ratio_divisor": None,
        "global_h_stats": None,
        "kind": JS,
        "param": 0.0,
        "logit_clamp": f64(10.0),
        "ratio_lo": f64(0.1),
        "ratio_hi": f64(20.0),
        "normalize": True,
        "eps": f64(1e-6),
        "reduction": "mean",
    }
    args.update(kw)
    return ops.f_distill(*args.values())


def op_weights(**kw):
    args = {
        "logits": randn(4, 2),
        "ratio_divisor": None,
        "double_precision": False,
        "logit_clamp": f64(10.0),
        "ratio_lo": f64(0.1),
        "ratio_hi": f64(20.0),
        "kind": JS,
        "param": 0.0,
    }
    args.update(kw)
    return ops.f_distill_weights(*args.values())


for id_, call, err, match in [
    # the two crashes of issue 11, as the ops take their scalars now, and as issue 11 wrote them
    (
        "sequence_logprobs/issue11_labels_too_short",
        lambda: op_seq(randn(4096, 64), torch.zeros(1, dtype=torch.long)),
        VE,
        "labels must have shape",
    ),
    (
        "sequence_logprobs/issue11_literal",
        lambda: ops.sequence_logprobs(randn(4096, 64), torch.zeros(1, dtype=torch.long), -100, 1.0, False),
        RuntimeError,
        "argument 'temperature'",
    ),
    (
        "f_divergence/issue11_teacher_rows",
        lambda: op_fdiv(randn(64, 1024), randn(1, 1024), torch.ones(64)),
        VE,
        "teacher must have shape (rows, V')",
    ),
    (
        "f_divergence/issue11_literal",
        lambda: ops.f_divergence(randn(64, 1024), randn(1, 1024), torch.ones(64), 0, 0.0, 1.0, False),
        RuntimeError,
        "argument 'inv_temperature'",
    ),
    ("f_divergence/kind_str", lambda: op_fdiv(kind="x"), RuntimeError, "argument 'kind'"),
    ("f_divergence/student_1d", lambda: op_fdiv(randn(64)), VE, "student must have 2 dimensions"),
    ("f_divergence/student_3d", lambda: op_fdiv(randn(64, 32, 1)), VE, "student must have 2 dimensions"),
    (
        "f_divergence/student_long",
        lambda: op_fdiv(torch.ones(64, 32, dtype=torch.long)),
        TE,
        "student must have a floating dtype",
    ),
    ("f_divergence/student_v0", lambda: op_fdiv(randn(64, 0)), VE, "student must have V >= 1"),
    (
        "f_divergence/teacher_dtype",
        lambda: op_fdiv(teacher=randn(64, 32, dtype=torch.float64)),
        TE,
        "teacher must be float32",
    ),
    ("f_divergence/teacher_1d", lambda: op_fdiv(teacher=randn(64)), VE, "teacher must have 2 dimensions"),
    ("f_divergence/teacher_v0", lambda: op_fdiv(teacher=randn(64, 0)), VE, "teacher must have shape (rows, V')"),
    ("f_divergence/row_scale_short", lambda: op_fdiv(row_scale=torch.ones(3)), VE, "row_scale must have shape (rows,)"),
    (
        "f_divergence/row_scale_long_dtype",
        lambda: op_fdiv(row_scale=torch.ones(64, dtype=torch.long)),
        TE,
        "row_scale must be float32",
    ),
    (
        "f_divergence/row_scale_f64",
        lambda: op_fdiv(row_scale=torch.ones(64, dtype=torch.float64)),
        TE,
        "row_scale must be float32",
    ),
    ("f_divergence/row_scale_2d", lambda: op_fdiv(row_scale=torch.ones(64, 1)), VE, "row_scale must have shape"),
    ("f_divergence/kind_high", lambda: op_fdiv(kind=99), VE, "kind must be a divergence id"),
    ("f_divergence/kind_negative", lambda: op_fdiv(kind=-1), VE, "kind must be a divergence id"),
    ("f_divergence/param_alpha_zero", lambda: op_fdiv(kind=ALPHA, param=0.0), VE, "param must not be 0 or 1"),
    ("f_divergence/param_alpha_rounds_fp32", lambda: op_fdiv(kind=ALPHA, param=1 - 1e-9), VE, "param"),
    ("f_divergence/param_on_plain", lambda: op_fdiv(param=0.5), VE, "param must be 0"),
    ("f_divergence/param_nan", lambda: op_fdiv(kind=ALPHA, param=math.nan), VE, "param must be finite"),
    (
        "f_divergence/inv_temperature_zero",
        lambda: op_fdiv(inv_t=f64(0.0)),
        VE,
        "inv_temperature must be a finite number > 0",
    ),
    ("f_divergence/inv_temperature_nan", lambda: op_fdiv(inv_t=f64(math.nan)), VE, "inv_temperature"),
    ("f_divergence/inv_temperature_inf", lambda: op_fdiv(inv_t=f64(math.inf)), VE, "inv_temperature"),
    (
        "f_divergence/inv_temperature_vector",
        lambda: op_fdiv(inv_t=torch.ones(2, dtype=torch.float64)),
        VE,
        "inv_temperature must be a 0-dim",
    ),
    (
        "f_divergence/inv_temperature_long",
        lambda: op_fdiv(inv_t=torch.tensor(1)),
        VE,
        "inv_temperature must be a 0-dim",
    ),
    ("f_divergence_topk/indices_float", lambda: op_topk(indices=torch.zeros(4, 3)), TE, "indices must be int64"),
    (
        "f_divergence_topk/indices_high",
        lambda: op_topk(indices=torch.full((4, 3), 16)),
        VE,
        "indices must lie in [0, V)",
    ),
    (
        "f_divergence_topk/indices_negative",
        lambda: op_topk(indices=torch.full((4, 3), -2)),
        VE,
        "indices must lie in [0, V)",
    ),
    (
        "f_divergence_topk/indices_rows",
        lambda: op_topk(indices=torch.zeros(3, 3, dtype=torch.long)),
        VE,
        "indices must have shape (rows, k)",
    ),
    (
        "f_divergence_topk/k_too_big",
        lambda: op_topk(indices=torch.zeros(4, 17, dtype=torch.long), logprobs=torch.zeros(4, 17)),
        VE,
        "1 <= k <= V",
    ),
    (
        "f_divergence_topk/logprobs_dtype",
        lambda: op_topk(logprobs=torch.zeros(4, 3, dtype=torch.float64)),
        TE,
        "teacher_logprobs must be float32",
    ),
    (
        "f_divergence_topk/logprobs_shape",
        lambda: op_topk(logprobs=torch.zeros(4, 2)),
        VE,
        "teacher_logprobs must have shape",
    ),
    ("f_divergence_topk/row_scale_shape", lambda: op_topk(row_scale=torch.ones(5)), VE, "row_scale must have shape"),
    ("f_divergence_topk/kind_high", lambda: op_topk(kind=13), VE, "kind must be a divergence id"),
    ("f_divergence_topk/inv_temperature", lambda: op_topk(inv_t=f64(-1.0)), VE, "inv_temperature"),
    (
        "sequence_logprobs/labels_int32",
        lambda: op_seq(labels=torch.zeros(4, dtype=torch.int32)),
        TE,
        "labels must be int64",
    ),
    ("sequence_logprobs/labels_float", lambda: op_seq(labels=torch.zeros(4)), TE, "labels must be int64"),
    ("sequence_logprobs/labels_high", lambda: op_seq(labels=torch.full((4,), 8)), VE, "labels must lie in [0, V)"),
    (
        "sequence_logprobs/labels_2d",
        lambda: op_seq(labels=torch.zeros(4, 1, dtype=torch.long)),
        VE,
        "labels must have shape",
    ),
    ("sequence_logprobs/logits_1d", lambda: op_seq(logits=randn(8), labels=torch.tensor(0)), VE, "logits must have"),
    (
        "sequence_logprobs/logits_long",
        lambda: op_seq(logits=torch.ones(4, 8, dtype=torch.long)),
        TE,
        "logits must have a floating dtype",
    ),
    ("sequence_logprobs/logits_v0", lambda: op_seq(logits=randn(4, 0)), VE, "V >= 1"),
    (
        "sequence_logprobs/temperature_zero",
        lambda: op_seq(temperature=f64(0.0)),
        VE,
        "temperature must be a finite number > 0",
    ),
    ("sequence_logprobs/temperature_nan", lambda: op_seq(temperature=f64(math.nan)), VE, "temperature must be"),
    ("sequence_logprobs/temperature_negative", lambda: op_seq(temperature=f64(-2.0)), VE, "temperature must be"),
    (
        "sequence_logprobs_backward/stats_shape",
        lambda: op_seq_backward(stats=torch.zeros(4, 3)),
        VE,
        "row_stats must have shape",
    ),
    (
        "sequence_logprobs_backward/stats_dtype",
        lambda: op_seq_backward(stats=torch.zeros(4, 2, dtype=torch.float64)),
        TE,
        "row_stats must be float32",
    ),
    (
        "sequence_logprobs_backward/grad_logprobs_shape",
        lambda: op_seq_backward(grad_logprobs=torch.ones(3)),
        VE,
        "grad_logprobs must have shape",
    ),
    (
        "sequence_logprobs_backward/grad_entropy_shape",
        lambda: op_seq_backward(grad_entropy=torch.ones(5)),
        VE,
        "grad_entropy must have shape",
    ),
    (
        "sequence_logprobs_backward/grad_entropy_no_entropy",
        lambda: op_seq_backward(grad_entropy=torch.ones(4), entropy=torch.zeros(0)),
        VE,
        "entropy",
    ),
    (
        "sequence_logprobs_backward/labels_high",
        lambda: op_seq_backward(labels=torch.full((4,), 99)),
        VE,
        "labels must lie in [0, V)",
    ),
    ("sequence_logprobs_backward/logits_str", lambda: op_seq_backward(logits="z"), RuntimeError, "argument 'logits'"),
    ("fused_linear_sequence_logprobs/weight_h", lambda: op_fseq(weight=randn(9, 5)), VE, "weight (V, H)"),
    ("fused_linear_sequence_logprobs/weight_1d", lambda: op_fseq(weight=randn(9)), VE, "weight must have 2 dimensions"),
    (
        "fused_linear_sequence_logprobs/labels_rows",
        lambda: op_fseq(labels=torch.zeros(5, dtype=torch.long)),
        VE,
        "labels (rows,)",
    ),
    (
        "fused_linear_sequence_logprobs/labels_high",
        lambda: op_fseq(labels=torch.full((6,), 9)),
        VE,
        "labels must lie in [0, V)",
    ),
    (
        "fused_linear_sequence_logprobs/labels_int32",
        lambda: op_fseq(labels=torch.zeros(6, dtype=torch.int32)),
        TE,
        "labels must be int64",
    ),
    ("fused_linear_sequence_logprobs/hidden_1d", lambda: op_fseq(hidden=randn(6)), VE, "hidden must have 2 dimensions"),
    ("fused_linear_sequence_logprobs/temperature_zero", lambda: op_fseq(temperature=f64(0.0)), VE, "temperature must"),
    (
        "fused_linear_sequence_logprobs_backward/stats_shape",
        lambda: op_fseq_backward(stats=torch.zeros(6, 3)),
        VE,
        "row_stats must have shape",
    ),
    (
        "fused_linear_sequence_logprobs_backward/grad_logprobs_shape",
        lambda: op_fseq_backward(grad_logprobs=torch.ones(5)),
        VE,
        "grad_logprobs must have shape",
    ),
    (
        "fused_linear_sequence_logprobs_backward/weight_h",
        lambda: op_fseq_backward(weight=randn(9, 3)),
        VE,
        "weight (V, H)",
    ),
    (
        "fused_linear_sequence_logprobs_backward/labels_high",
        lambda: op_fseq_backward(labels=torch.full((6,), 9)),
        VE,
        "labels must lie in [0, V)",
    ),
    (
        "fused_linear_sequence_logprobs_backward/bias_shape",
        lambda: op_fseq_backward(bias=randn(3)),
        VE,
        "bias must have shape (V,)",
    ),
    (
        "fused_linear_f_divergence/teacher_rows",
        lambda: op_fused(teacher_hidden=randn(5, 5)),
        VE,
        "teacher_hidden (rows, H')",
    ),
    (
        "fused_linear_f_divergence/student_weight_h",
        lambda: op_fused(student_weight=randn(9, 3)),
        VE,
        "student_weight (V, H)",
    ),
    (
        "fused_linear_f_divergence/teacher_weight_h",
        lambda: op_fused(teacher_weight=randn(9, 4)),
        VE,
        "teacher_weight (V', H')",
    ),
    (
        "fused_linear_f_divergence/row_scale_short",
        lambda: op_fused(row_scale=torch.ones(2)),
        VE,
        "row_scale must have shape",
    ),
    (
        "fused_linear_f_divergence/row_scale_2d",
        lambda: op_fused(row_scale=torch.ones(6, 1)),
        VE,
        "row_scale must have 1 dimensions",
    ),
    (
        "fused_linear_f_divergence/labels_high",
        lambda: op_fused(labels=torch.full((6,), 9), hard_weight=f64(0.5)),
        VE,
        "labels must lie in [0, V)",
    ),
    (
        "fused_linear_f_divergence/labels_int32",
        lambda: op_fused(labels=torch.zeros(6, dtype=torch.int32), hard_weight=f64(0.5)),
        TE,
        "labels must be int64",
    ),
    (
        "fused_linear_f_divergence/hard_weight_negative",
        lambda: op_fused(labels=torch.zeros(6, dtype=torch.long), hard_weight=f64(-1.0)),
        VE,
        "hard_weight",
    ),
    ("fused_linear_f_divergence/kind_high", lambda: op_fused(kind=77), VE, "kind must be a divergence id"),
    (
        "fused_linear_f_divergence/inv_temperature_nan",
        lambda: op_fused(inv_temperature=f64(math.nan)),
        VE,
        "inv_temperature",
    ),
    (
        "fused_linear_f_divergence/student_hidden_3d",
        lambda: op_fused(student_hidden=randn(2, 3, 4)),
        VE,
        "student_hidden must have 2 dimensions",
    ),
    ("f_distill/teacher_shape", lambda: op_distill(teacher_x0=randn(4, 5)), VE, "teacher_x0 must have the shape of x"),
    (
        "f_distill/teacher_dtype",
        lambda: op_distill(teacher_x0=randn(4, 6, dtype=torch.float64)),
        TE,
        "teacher_x0 must be float32",
    ),
    ("f_distill/fake_shape", lambda: op_distill(fake_x0=randn(24)), VE, "fake_x0 must have the shape of x"),
    ("f_distill/x_long", lambda: op_distill(x=torch.ones(4, 6, dtype=torch.long)), TE, "x must have a floating dtype"),
    ("f_distill/x_0d", lambda: op_distill(x=torch.tensor(1.0)), VE, "x must have"),
    (
        "f_distill/x_b0",
        lambda: op_distill(x=randn(0, 6), teacher_x0=randn(0, 6), fake_x0=randn(0, 6), disc_logits=None),
        VE,
        "B >= 1",
    ),
    (
        "f_distill/disc_logits_batch",
        lambda: op_distill(disc_logits=randn(3, 2)),
        VE,
        "disc_logits must have shape (B,) or (B, K)",
    ),
    ("f_distill/disc_logits_3d", lambda: op_distill(disc_logits=randn(4, 2, 1)), VE, "disc_logits must have"),
    (
        "f_distill/disc_logits_long",
        lambda: op_distill(disc_logits=torch.ones(4, 2, dtype=torch.long)),
        TE,
        "logits must have a floating dtype",
    ),
    (
        "f_distill/ratio_divisor_shape",
        lambda: op_distill(ratio_divisor=torch.ones(3)),
        VE,
        "ratio_divisor must have shape",
    ),
    (
        "f_distill/ratio_divisor_dtype",
        lambda: op_distill(ratio_divisor=torch.ones(4, dtype=torch.float64)),
        TE,
        "ratio_divisor must be float32",
    ),
    ("f_distill/global_h_stats_shape", lambda: op_distill(global_h_stats=torch.ones(3)), VE, "h_stats must have shape"),
    (
        "f_distill/logit_clamp_zero",
        lambda: op_distill(logit_clamp=f64(0.0)),
        VE,
        "logit_clamp must be a finite number > 0",
    ),
    (
        "f_distill/ratio_reversed",
        lambda: op_distill(ratio_lo=f64(2.0), ratio_hi=f64(1.0)),
        VE,
        "ratio_lo must be < ratio_hi",
    ),
    ("f_distill/ratio_hi_inf", lambda: op_distill(ratio_hi=f64(math.inf)), VE, "ratio_hi"),
    ("f_distill/eps_zero", lambda: op_distill(eps=f64(0.0)), VE, "eps must be a finite number > 0"),
    ("f_distill/eps_nan", lambda: op_distill(eps=f64(math.nan)), VE, "eps"),
    ("f_distill/reduction", lambda: op_distill(reduction="avg"), VE, "reduction must be one of"),
    ("f_distill/kind_high", lambda: op_distill(kind=50), VE, "kind must be a divergence id"),
    ("f_distill/param_alpha_rounds_fp32", lambda: op_distill(kind=ALPHA, param=1e-46), VE, "param"),
    ("f_distill_weights/logits_1d", lambda: op_weights(logits=randn(4)), VE, "logits must have 2 dimensions"),
    (
        "f_distill_weights/logits_long",
        lambda: op_weights(logits=torch.ones(4, 2, dtype=torch.long)),
        TE,
        "logits must have a floating",
    ),
    ("f_distill_weights/logits_k0", lambda: op_weights(logits=randn(4, 0)), VE, "K >= 1"),
    (
        "f_distill_weights/ratio_divisor_shape",
        lambda: op_weights(ratio_divisor=torch.ones(2)),
        VE,
        "ratio_divisor must have shape",
    ),
    ("f_distill_weights/logit_clamp_nan", lambda: op_weights(logit_clamp=f64(math.nan)), VE, "logit_clamp"),
    ("f_distill_weights/ratio_lo_zero", lambda: op_weights(ratio_lo=f64(0.0)), VE, "ratio_lo"),
    ("f_distill_weights/kind_high", lambda: op_weights(kind=13), VE, "kind must be a divergence id"),
    (
        "divergence_terms/bf16",
        lambda: ops.divergence_terms(randn(3).bfloat16(), JS, 0.0),
        TE,
        "log_ratio must be float32 or float64",
    ),
    (
        "divergence_terms/long",
        lambda: ops.divergence_terms(torch.ones(3, dtype=torch.long), JS, 0.0),
        TE,
        "log_ratio must be float32 or float64",
    ),
    ("divergence_terms/kind_high", lambda: ops.divergence_terms(randn(3), 13, 0.0), VE, "kind must be a divergence id"),
    (
        "divergence_terms/param_alpha_one",
        lambda: ops.divergence_terms(randn(3), ALPHA, 1.0),
        VE,
        "param must not be 0 or 1",
    ),
    ("divergence_terms/param_rounds_fp32", lambda: ops.divergence_terms(randn(3), ALPHA, 1e-46), VE, "param"),
]:
    op, name = id_.split("/")
    case(f"torch.ops.fdiv_ops.{op}/{name}", call, err, match)


# ---------------------------------------------------------------------------------------------------
# Running the table: a child process reports one JSON line per case.


def _run_child(start: int) -> None:
    torch.manual_seed(0)
    for index in range(start, len(CASES)):
        c = CASES[index]
        try:
            c.call()
            outcome = {"index": index, "raised": None, "message": ""}
        except BaseException as err:
            outcome = {
                "index": index,
                "raised": type(err).__name__,
                "mro": [k.__name__ for k in type(err).__mro__],
                "message": str(err),
            }
        print(json.dumps(outcome), flush=True)


def _run_table() -> dict[int, dict]:
    """Every case's outcome; a case that kills the child (signal, abort) is recorded as a crash and the child is
    restarted after it."""
    results: dict[int, dict] = {}
    start = 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    while start < len(CASES):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(start)], capture_output=True, text=True, env=env, timeout=900
        )
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                results[row["index"]] = row
        done = max(results, default=-1) + 1
        if done >= len(CASES):
            break
        results[done] = {"index": done, "raised": f"CRASH (exit {proc.returncode})", "message": proc.stderr[-2000:]}
        start = done + 1
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _run_child(int(sys.argv[2]))
    else:
        outcomes = _run_table()
        clear = sum(1 for o in outcomes.values() if o["raised"] in ("ValueError", "TypeError", "DTypeError"))
        print(f"{len(CASES)} cases, {clear} ValueError/TypeError")
    sys.exit(0)


@pytest.fixture(scope="module")
def outcomes():
    return _run_table()


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 300
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_bad_input_raises_a_clear_error(outcomes, index):
    c = CASES[index]
    got = outcomes[index]
    assert got["raised"] is not None, f"{c.id}: no error (expected {c.error})"
    assert not got["raised"].startswith("CRASH"), f"{c.id}: {got['raised']}\n{got['message']}"
    expected = c.error if isinstance(c.error, tuple) else (c.error,)
    assert any(e.__name__ in got["mro"] for e in expected), f"{c.id}: {got['raised']}: {got['message']}"
    assert c.match in got["message"], f"{c.id}: {got['message']!r} does not contain {c.match!r}"
