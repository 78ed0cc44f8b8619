"""The Liger-Kernel mapping of docs/integrations.md, one test per table line: our op called with the mapped
arguments against a restatement of the Liger op's documented semantics (liger-kernel is Triton-only and cannot
run here, so its semantics are written out in float64 PyTorch, not imported):

* inputs are log-probabilities (LigerJSD, LigerKLDIVLoss) or probabilities (LigerTVDLoss), shape (BT, V);
* LigerJSD: beta as TRL's GKD (0: KL(p||q), 1: KL(q||p)); sum over rows whose label is not ignore_index,
  divided by their number (all rows without labels);
* LigerKLDIVLoss (nn.KLDivLoss semantics): "batchmean" divides by BT (no ignore_index), "mean" by BT * V,
  "none" is per element; a probability target is read as log(max(p, 1e-10));
* LigerTVDLoss: 0.5 |p - q|, reductions like LigerJSD's plus "mean" (/ (rows * V)) and "none" (per element);
* LigerFusedLinearJSD: logits = input @ weight^T in float32, divided by the temperature, then LigerJSD's loss;
  a shorter vocabulary is padded with zero logits;
* LigerCrossEntropyLoss / LigerFusedLinearCrossEntropyLoss: torch's cross-entropy ("mean" over non-ignored).

Gradients are compared with respect to the logits the log-probabilities come from (Liger's gradient is with
respect to its log-prob input; through the log-softmax both chains give the same gradient to the logits).
"""

from __future__ import annotations

import fdiv_ops
import pytest
import torch
import torch.nn.functional as F

IGNORE = -100


def _liger_jsd(log_q, log_p, labels=None, beta=0.5, ignore_index=IGNORE):
    """LigerJSD(beta, ignore_index)(log_q, log_p, shift_labels), restated."""
    q, p = log_q.exp(), log_p.exp()
    if beta == 0.0:
        terms = p * (log_p - log_q)
    elif beta == 1.0:
        terms = q * (log_q - log_p)
    else:
        m = beta * p + (1 - beta) * q
        terms = beta * p * (log_p - m.log()) + (1 - beta) * q * (log_q - m.log())
    rows = terms.sum(-1)
    keep = torch.ones_like(rows, dtype=torch.bool) if labels is None else labels != ignore_index
    return torch.where(keep, rows, 0).sum() / keep.sum()


def _liger_kl_div(y_pred, y_true, reduction="batchmean", log_target=False):
    """LigerKLDIVLoss(reduction=..., log_target=...)(y_pred, y_true), restated (y_pred: log-probs, (BT, V))."""
    if log_target:
        terms = y_true.exp() * (y_true - y_pred)
    else:
        terms = y_true * (y_true.clamp_min(1e-10).log() - y_pred)
    rows, vocab = terms.shape
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    return terms.sum() / (rows if reduction == "batchmean" else rows * vocab)


def _liger_tvd(p, q, labels=None, reduction="batchmean", ignore_index=IGNORE):
    """LigerTVDLoss(reduction, ignore_index)(p, q, shift_labels), restated (p, q: probabilities, (BT, V))."""
    terms = 0.5 * (p - q).abs()
    keep = torch.ones(p.shape[0], dtype=torch.bool) if labels is None else labels != ignore_index
    terms = torch.where(keep[:, None], terms, 0)
    n = keep.sum()
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    return terms.sum() / (n if reduction == "batchmean" else n * p.shape[1])


def _liger_fused_linear_jsd(student_input, student_weight, teacher_input, teacher_weight, labels, beta, temperature):
    """LigerFusedLinearJSD(beta, ignore_index, temperature)(...), restated, zero-padding the shorter vocabulary."""
    s_logits, t_logits = student_input @ student_weight.T, teacher_input @ teacher_weight.T
    gap = s_logits.shape[-1] - t_logits.shape[-1]
    if gap > 0:
        t_logits = F.pad(t_logits, (0, gap), value=0.0)
    elif gap < 0:
        s_logits = F.pad(s_logits, (0, -gap), value=0.0)
    log_q = torch.log_softmax(s_logits / temperature, -1)
    log_p = torch.log_softmax(t_logits / temperature, -1)
    return _liger_jsd(log_q, log_p, labels, beta)


def _inputs(rows=12, vocab=53, seed=0, with_labels=True):
    gen = torch.Generator().manual_seed(seed)
    student = 2 * torch.randn(rows, vocab, generator=gen, dtype=torch.float64)
    teacher = 2 * torch.randn(rows, vocab, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[[1, 4, 5]] = IGNORE
    return student, teacher, (labels if with_labels else None)


def _check(ours_fn, liger_fn, student, rel=1e-12):
    """Both losses and their gradients to the student logits agree (any output shape; a random grad_output)."""
    ours_in, ref_in = student.clone().requires_grad_(), student.clone().requires_grad_()
    ours, want = ours_fn(ours_in), liger_fn(ref_in)
    assert ours.shape == want.shape, (ours.shape, want.shape)
    weight = torch.rand(want.shape, dtype=want.dtype)
    ours.backward(weight.to(ours.dtype))
    want.backward(weight)
    for got, expected in ((ours.detach(), want.detach()), (ours_in.grad, ref_in.grad)):
        scale = float(expected.abs().max())
        torch.testing.assert_close(got.double(), expected, rtol=rel, atol=rel * scale)


@pytest.mark.parametrize("with_labels", [False, True], ids=["no-labels", "labels"])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_liger_jsd(beta, with_labels):
    # LigerJSD(beta)(log_q, log_p, labels) == f_divergence_loss(log_q, log_p, gkd_jsd(beta), labels=labels,
    #                                                           teacher_is_logprobs=True)
    student, teacher, labels = _inputs(with_labels=with_labels)
    log_p = torch.log_softmax(teacher, -1)
    _check(
        lambda z: fdiv_ops.f_divergence_loss(
            torch.log_softmax(z, -1),
            log_p,
            divergence=fdiv_ops.gkd_jsd(beta),
            labels=labels,
            teacher_is_logprobs=True,
        ),
        lambda z: _liger_jsd(torch.log_softmax(z, -1), log_p, labels, beta),
        student,
    )


@pytest.mark.parametrize("log_target", [True, False], ids=["log-target", "prob-target"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_liger_kl_div(reduction, log_target):
    # LigerKLDIVLoss(reduction, log_target)(log_q, target) == f_divergence_loss(log_q, log p, "forward_kl",
    # teacher_is_logprobs=True) with batchmean -> "batchmean" (every row counts: no labels), sum -> "sum",
    # mean -> "batchmean" with num_items_in_batch = BT * V, none -> "none" gives the per-row sums of Liger's
    # per-element terms
    student, teacher, _ = _inputs(with_labels=False)
    p = torch.softmax(teacher, -1)
    if not log_target:
        # probability targets with exact zeros: Liger reads log(max(p, 1e-10)) times 0 = 0, we read -inf: 0. (A
        # -inf log-target gives NaN in Liger and nn.KLDivLoss, exp(-inf) * -inf; 0 here.)
        p[0, :5] = 0.0
        p = p / p.sum(-1, keepdim=True)
    target = p.log() if log_target else p
    rows, vocab = student.shape
    core = {"batchmean": ("batchmean", None), "sum": ("sum", None), "mean": ("batchmean", rows * vocab)}
    core["none"] = ("none", None)
    ours_reduction, items = core[reduction]

    def ours(z):
        return fdiv_ops.f_divergence_loss(
            torch.log_softmax(z, -1),
            p.log(),
            divergence="forward_kl",
            teacher_is_logprobs=True,
            reduction=ours_reduction,
            num_items_in_batch=items,
        )

    def liger(z):
        out = _liger_kl_div(torch.log_softmax(z, -1), target, reduction, log_target)
        return out.sum(-1) if reduction == "none" else out

    _check(ours, liger, student)


@pytest.mark.parametrize("with_labels", [False, True], ids=["no-labels", "labels"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_liger_tvd(reduction, with_labels):
    # LigerTVDLoss(reduction)(p, q, labels), p the trained side == f_divergence_loss(log p, log q,
    # "total_variation", labels=labels, teacher_is_logprobs=True); mean -> "batchmean" with
    # num_items_in_batch = (non-ignored rows) * V; none -> per-row sums of Liger's per-element terms
    student, teacher, labels = _inputs(with_labels=with_labels)
    q = torch.softmax(teacher, -1)
    vocab = student.shape[1]
    kept = student.shape[0] if labels is None else (labels != IGNORE).sum()
    core = {"batchmean": ("batchmean", None), "sum": ("sum", None), "mean": ("batchmean", kept * vocab)}
    core["none"] = ("none", None)
    ours_reduction, items = core[reduction]

    def ours(z):
        return fdiv_ops.f_divergence_loss(
            torch.log_softmax(z, -1),
            q.log(),
            divergence="total_variation",
            labels=labels,
            teacher_is_logprobs=True,
            reduction=ours_reduction,
            num_items_in_batch=items,
        )

    def liger(z):
        out = _liger_tvd(torch.softmax(z, -1), q, labels, reduction)
        return out.sum(-1) if reduction == "none" else out

    _check(ours, liger, student)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_liger_fused_linear_jsd(beta):
    # LigerFusedLinearJSD(beta, ignore_index, temperature)(h_s, W_s, h_t, W_t, labels) ==
    # fused_linear_f_divergence(h_s, W_s, h_t, W_t, labels=labels, divergence=gkd_jsd(beta), temperature=T)
    gen = torch.Generator().manual_seed(2)
    h_s = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    h_t = torch.randn(12, 16, generator=gen, dtype=torch.float64)
    w_s = torch.randn(53, 8, generator=gen, dtype=torch.float64)
    w_t = torch.randn(53, 16, generator=gen, dtype=torch.float64)
    _, _, labels = _inputs()
    ours_w, ref_w = w_s.clone().requires_grad_(), w_s.clone().requires_grad_()
    _check(
        lambda h: fdiv_ops.fused_linear_f_divergence(
            h, ours_w, h_t, w_t, labels=labels, divergence=fdiv_ops.gkd_jsd(beta), temperature=1.5, chunk_size=5
        ),
        lambda h: _liger_fused_linear_jsd(h, ref_w, h_t, w_t, labels, beta, 1.5),
        h_s,
    )
    torch.testing.assert_close(ours_w.grad, ref_w.grad, rtol=1e-12, atol=1e-12 * float(ref_w.grad.abs().max()))


def test_liger_zero_vocabulary_padding():
    # Liger pads a shorter vocabulary with zero logits (real categories); fdiv_ops pads with -inf (absent).
    # Liger's behaviour: zero rows appended to the shorter weight. The default -inf padding is different.
    gen = torch.Generator().manual_seed(4)
    h_s, h_t = (torch.randn(12, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    w_s = torch.randn(53, 8, generator=gen, dtype=torch.float64)
    w_t = torch.randn(50, 8, generator=gen, dtype=torch.float64)  # 3 entries shorter
    _, _, labels = _inputs()
    w_t_zero = F.pad(w_t, (0, 0, 0, 3))  # three zero rows: three zero logits
    _check(
        lambda h: fdiv_ops.fused_linear_f_divergence(
            h, w_s, h_t, w_t_zero, labels=labels, divergence=fdiv_ops.gkd_jsd(0.5)
        ),
        lambda h: _liger_fused_linear_jsd(h, w_s, h_t, w_t, labels, 0.5, 1.0),
        h_s,
    )
    minus_inf = fdiv_ops.fused_linear_f_divergence(h_s, w_s, h_t, w_t, labels=labels, divergence=fdiv_ops.gkd_jsd(0.5))
    zero = _liger_fused_linear_jsd(h_s, w_s, h_t, w_t, labels, 0.5, 1.0)
    assert abs(float(minus_inf) - float(zero)) > 1e-3 * abs(float(zero))


def test_liger_cross_entropy():
    # LigerCrossEntropyLoss(ignore_index)(logits, labels) == -sequence_logprobs(logits, labels).sum() / kept
    student, _, labels = _inputs()
    kept = (labels != IGNORE).sum()
    _check(
        lambda z: -fdiv_ops.sequence_logprobs(z, labels).sum() / kept,
        lambda z: F.cross_entropy(z, labels, ignore_index=IGNORE),
        student,
    )


def test_liger_fused_linear_cross_entropy():
    # LigerFusedLinearCrossEntropyLoss(ignore_index)(W, h, labels, bias) ==
    # -fused_linear_sequence_logprobs(h, W, labels, bias=bias).sum() / kept
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(53, 8, generator=gen, dtype=torch.float64)
    bias = torch.randn(53, generator=gen, dtype=torch.float64)
    _, _, labels = _inputs()
    kept = (labels != IGNORE).sum()
    _check(
        lambda h: -fdiv_ops.fused_linear_sequence_logprobs(h, weight, labels, bias=bias, chunk_size=5).sum() / kept,
        lambda h: F.cross_entropy(h @ weight.T + bias, labels, ignore_index=IGNORE),
        hidden,
    )
