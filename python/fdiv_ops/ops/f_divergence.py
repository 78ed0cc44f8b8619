"""f_divergence_loss: token-level f-divergence distillation on logits (docs/math.md §3).

Two custom ops: ``fdiv_ops::f_divergence`` (dense teacher logits or log-probs) and
``fdiv_ops::f_divergence_topk`` (a sparse top-k teacher). Each returns the per-row losses, already
weighted by the reduction, and the gradient of their sum with respect to the student logits, written in
forward; backward only scales that gradient by grad_output on the device (no host sync).
"""

from __future__ import annotations

import torch

from .. import _C
from .._backend import acc_dtype
from .._validation import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_int,
    check_integer_tensor,
    check_item_count,
    check_positive,
    check_same,
)
from ..divergences import Divergence, resolve
from . import vocab_parallel
from ._plumbing import Op, launch, row_weights, saved_gradient, scalar_arg, tensor_arg

REDUCTIONS = ("batchmean", "sum", "none")
DEFAULT_MAX_VOCAB_PAD = 1024


def _outputs(op: str, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_loss, grad): allocated alike by the implementation and the fake, after a first look at student."""
    tensor_arg(op, "student", student, ndim=2)
    acc = acc_dtype(student.dtype)
    return student.new_empty(student.shape[0], dtype=acc), torch.empty_like(
        student, memory_format=torch.contiguous_format
    )


def _dense(
    student: torch.Tensor,
    teacher: torch.Tensor,
    row_scale: torch.Tensor,
    kind: int,
    param: float,
    inv_temperature: torch.Tensor,
    teacher_is_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    row_loss, grad = _outputs("f_divergence", student)
    tensor_arg("f_divergence", "teacher", teacher)
    tensor_arg("f_divergence", "row_scale", row_scale)
    launch(
        _C.f_divergence,
        student.device,
        student=student.contiguous(),
        teacher=teacher.contiguous(),
        row_scale=row_scale,
        row_loss=row_loss,
        grad=grad,
        labels=None,
        kind=kind,
        param=param,
        inv_temperature=scalar_arg("f_divergence", "inv_temperature", inv_temperature),
        teacher_is_logprobs=teacher_is_logprobs,
        hard_weight=0.0,
    )
    return row_loss, grad


def _dense_fake(student, teacher, row_scale, kind, param, inv_temperature, teacher_is_logprobs):
    return _outputs("f_divergence", student)


def _topk(
    student: torch.Tensor,
    indices: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    row_scale: torch.Tensor,
    kind: int,
    param: float,
    inv_temperature: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    row_loss, grad = _outputs("f_divergence_topk", student)
    for name, value in (("indices", indices), ("teacher_logprobs", teacher_logprobs), ("row_scale", row_scale)):
        tensor_arg("f_divergence_topk", name, value)
    launch(
        _C.f_divergence_topk,
        student.device,
        student=student.contiguous(),
        indices=indices.contiguous(),
        teacher_logprobs=teacher_logprobs.contiguous(),
        row_scale=row_scale,
        row_loss=row_loss,
        grad=grad,
        kind=kind,
        param=param,
        inv_temperature=scalar_arg("f_divergence_topk", "inv_temperature", inv_temperature),
    )
    return row_loss, grad


def _topk_fake(student, indices, teacher_logprobs, row_scale, kind, param, inv_temperature):
    return _outputs("f_divergence_topk", student)


# Each returns the per-row losses (already weighted by the reduction) and the gradient of their sum with respect
# to the student logits, written in forward; backward scales it by grad_output (one value per row).
_setup, _backward = saved_gradient("f_divergence_loss", [(1, 0)])
dense_op = Op("f_divergence", _dense, fake=_dense_fake, setup_context=_setup, backward=_backward, scalars=(5,))
topk_op = Op("f_divergence_topk", _topk, fake=_topk_fake, setup_context=_setup, backward=_backward, scalars=(6,))


def _check_leading(name: str, value: torch.Tensor, leading: torch.Size, what: str) -> None:
    if value.shape[:-1] != leading:
        raise ValueError(
            f"{name} must have the leading shape of student_logits {tuple(leading)} ({what}), got {tuple(value.shape)}"
        )


def _validate(
    student_logits,
    teacher_logits,
    temperature,
    labels,
    ignore_index,
    reduction,
    num_items_in_batch,
    teacher_is_logprobs,
    teacher_topk,
    max_vocab_pad,
):
    check_float_tensor("student_logits", student_logits)
    if student_logits.dim() < 1 or student_logits.shape[-1] == 0:
        raise ValueError(f"student_logits must have shape (..., V) with V >= 1, got {tuple(student_logits.shape)}")
    leading = student_logits.shape[:-1]
    check_bool("teacher_is_logprobs", teacher_is_logprobs)
    check_int("max_vocab_pad", max_vocab_pad, minimum=0, allow_none=True)
    if teacher_topk is not None:
        if teacher_logits is not None:
            raise ValueError("teacher_logits must be None when teacher_topk is given (one teacher at a time)")
        if teacher_is_logprobs:
            raise ValueError("teacher_is_logprobs does not apply to teacher_topk (its values are log-probs already)")
        if not isinstance(teacher_topk, (tuple, list)) or len(teacher_topk) != 2:
            raise TypeError("teacher_topk must be a pair (indices, logprobs) of tensors")
        indices, logprobs = teacher_topk
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise TypeError(f"teacher_topk: indices must be an int64 tensor, got {got}")
        check_float_tensor("teacher_topk logprobs", logprobs)
        check_same("teacher_topk indices", indices, "student_logits", student_logits, shape=False, dtype=False)
        check_same("teacher_topk logprobs", logprobs, "student_logits", student_logits, shape=False, dtype=False)
        _check_leading("teacher_topk indices", indices, leading, "(..., k)")
        if logprobs.shape != indices.shape:
            raise ValueError(
                f"teacher_topk: logprobs must have the shape of indices {tuple(indices.shape)}, "
                f"got {tuple(logprobs.shape)}"
            )
        k, vocab = indices.shape[-1], student_logits.shape[-1]
        if not (1 <= k and k <= vocab):
            raise ValueError(f"teacher_topk: k must satisfy 1 <= k <= V = {vocab}, got k = {k}")
    else:
        if teacher_logits is None:
            raise ValueError("teacher_logits is required (or pass teacher_topk=(indices, logprobs))")
        check_float_tensor("teacher_logits", teacher_logits)
        check_same("teacher_logits", teacher_logits, "student_logits", student_logits, shape=False, dtype=False)
        if teacher_logits.dim() != student_logits.dim() or teacher_logits.shape[:-1] != leading:
            raise ValueError(
                f"teacher_logits must have the leading shape of student_logits {tuple(leading)}, "
                f"got {tuple(teacher_logits.shape)}"
            )
        if teacher_logits.shape[-1] == 0:
            raise ValueError(
                f"teacher_logits must have shape (..., V') with V' >= 1, got {tuple(teacher_logits.shape)}"
            )
        gap = abs(teacher_logits.shape[-1] - student_logits.shape[-1])
        if max_vocab_pad is not None and gap > max_vocab_pad:
            raise ValueError(
                f"teacher_logits: vocabulary sizes differ by {gap} (student {student_logits.shape[-1]}, teacher "
                f"{teacher_logits.shape[-1]}), more than max_vocab_pad = {max_vocab_pad}; the shorter side is "
                "padded with -inf, pass a larger max_vocab_pad (or None) if this mismatch is intended"
            )
    check_positive("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("ignore_index", ignore_index, allow_none=True)
    if labels is not None:
        check_integer_tensor("labels", labels, " with the leading shape of student_logits")
        if labels.shape != leading:
            raise ValueError(
                f"labels must have the leading shape of student_logits {tuple(leading)}, got {tuple(labels.shape)}"
            )
        check_same("labels", labels, "student_logits", student_logits, shape=False, dtype=False)
    check_item_count("num_items_in_batch", num_items_in_batch)


def f_divergence_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    divergence: str | Divergence = "forward_kl",
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    num_items_in_batch: float | torch.Tensor | None = None,
    teacher_is_logprobs: bool = False,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_vocab_pad: int | None = DEFAULT_MAX_VOCAB_PAD,
    vocab_parallel_group: object | None = None,
) -> torch.Tensor:
    r"""Token-level f-divergence D_f(p || q) between teacher p and student q, per row of (..., V) logits.

    With q = softmax(student_logits / T) and p = softmax(teacher_logits / T) (docs/math.md §3)::

        loss_row = sum_v q_v f(p_v / q_v)          grad_z = (1/T) q (psi - sum_v q_v psi_v)

    ``divergence="forward_kl"`` is KL(p||q), ``"reverse_kl"`` KL(q||p); ``fdiv_ops.gkd_jsd(beta)``
    reproduces TRL 1.x's ``generalized_jsd_loss(student_logits, teacher_logits, labels, beta, temperature,
    reduction="batchmean")`` (checked with trl 1.16.0) for its (batch, seq, V) logits when labels are given,
    beta = 0 (forward_kl) and 1 (reverse_kl) included (TRL applies no T^2 factor, neither does this). With
    labels=None TRL 1.x divides by the batch B, this by the B * seq rows; ``fdiv_ops.integrations.trl`` has
    TRL's exact semantics. Only the student gets a gradient.

    Args:
        student_logits: (..., V) float32/float64/bfloat16/float16, any strides (a non-contiguous tensor
            is copied to a contiguous one first; contiguous ones never are). The loss is accumulated
            in float32 (float64 for float64 input) and returned in that dtype; the gradient has the
            student's dtype.
        teacher_logits: (..., V') with the same leading shape, on the same device. A dtype other than the
            student's is cast to it (a copy). When V' != V the shorter row is padded with -inf (never
            copied); ``max_vocab_pad`` (default 1024, e.g. 151936 vs 152064 passes) bounds the allowed
            difference, None allows any.
        labels: integer tensor of the leading shape; rows whose label is ``ignore_index`` contribute
            nothing (0 loss, 0 gradient). None: every row counts.
        reduction: "batchmean" = sum over counted rows / their number (or / ``num_items_in_batch`` when
            given, for gradient accumulation; all rows ignored gives 0, not NaN), "sum", or "none"
            (per-row losses of the leading shape, 0 at ignored rows).
        num_items_in_batch: a number > 0, or a one-element tensor (as HF Trainer passes it). A tensor that is
            not a finite number > 0 raises ValueError when it is a CPU tensor in eager mode; on CUDA, or under
            torch.compile, checking it would need a host sync, so the loss is NaN instead.
        teacher_is_logprobs: ``teacher_logits`` holds cached log-probabilities, used as given: no
            log-sum-exp and no temperature on the teacher side (cache them at the temperature you
            distil at); ``temperature`` still applies to the student.
        teacher_topk: ``(indices, logprobs)``, both (..., k) with k <= V, int64 token ids (distinct per
            row, as torch.topk returns) and the teacher's log-probabilities of those tokens. The loss is
            then the divergence between two (k+1)-category distributions: the k tokens plus one bucket
            holding the rest of each side's mass, 1 - sum_k p and 1 - sum_k q. The student's
            probabilities come from its full softmax (with temperature), so its gradient reaches all V
            logits: token j outside the top-k gets q_j (psi_bucket - S) / T. The bucket masses are
            1 - sum_k (accumulated in float32 for 16/32-bit logits), so a bucket smaller than ~1e-6 is
            resolved only to that rounding. Duplicate indices are not detected (they would count twice).
            Out-of-range indices raise ValueError on CPU tensors; on CUDA (no host sync to check) they
            make that row's loss and gradient NaN.

    Entries that are -inf on either side (masked vocabulary, padding) contribute 0 to the loss and to
    sum q psi; the gradient is that of the remaining sum (so a student entry with a -inf teacher still
    feels the softmax normalisation). Rows of -inf give 0. Finite or -inf inputs never give NaN;
    pearson_chi2, neyman_chi2 and alpha are unbounded where one side is ~0 and can give inf there (their
    gradient then saturates at the float range rather than becoming NaN). The divergence's parameter must be
    valid in the dtype the kernels compute in (float32 for float32/16-bit logits: alpha(1 - 1e-9) is refused
    there). The gradient is computed in forward by the kernel, so double backward (create_graph=True) raises
    RuntimeError rather than returning a gradient that is not itself differentiable.

    ``vocab_parallel_group``: a torch.distributed process group over which the vocabulary is sharded (tensor
    parallelism): each rank passes its contiguous shard of the student and teacher logits and the same global
    labels, and gets the unsharded loss and its shard's gradient (two O(rows) collectives per call, none in
    backward; ``teacher_topk`` is not supported). See docs/vocab_parallel.md. None: the logits are whole.
    """
    if vocab_parallel_group is not None:
        return vocab_parallel.f_divergence_loss(
            student_logits,
            teacher_logits,
            divergence=divergence,
            temperature=temperature,
            labels=labels,
            ignore_index=ignore_index,
            reduction=reduction,
            num_items_in_batch=num_items_in_batch,
            teacher_is_logprobs=teacher_is_logprobs,
            teacher_topk=teacher_topk,
            max_vocab_pad=max_vocab_pad,
            group=vocab_parallel_group,
        )
    _validate(
        student_logits,
        teacher_logits,
        temperature,
        labels,
        ignore_index,
        reduction,
        num_items_in_batch,
        teacher_is_logprobs,
        teacher_topk,
        max_vocab_pad,
    )
    div = resolve(divergence).check_compute_dtype(student_logits.dtype)
    leading = student_logits.shape[:-1]
    rows, vocab = leading.numel(), student_logits.shape[-1]
    acc = acc_dtype(student_logits.dtype)
    row_scale = row_weights(
        labels,
        -100 if ignore_index is None else ignore_index,
        reduction,
        num_items_in_batch,
        rows,
        student_logits.device,
        acc,
    )
    student = student_logits.reshape(rows, vocab)
    if teacher_topk is None:
        teacher = teacher_logits.detach().reshape(rows, teacher_logits.shape[-1]).to(student.dtype)
        row_loss, _ = dense_op(
            student, teacher, row_scale, div.kernel_id, div.kernel_param, 1.0 / temperature, teacher_is_logprobs
        )
    else:
        indices, logprobs = teacher_topk
        k = indices.shape[-1]
        row_loss, _ = topk_op(
            student,
            indices.reshape(rows, k),
            logprobs.detach().reshape(rows, k).to(acc),
            row_scale,
            div.kernel_id,
            div.kernel_param,
            1.0 / temperature,
        )
    if reduction == "none":
        return row_loss.reshape(leading)
    return row_loss.sum()
