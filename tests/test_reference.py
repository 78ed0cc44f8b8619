"""The float64 reference against closed forms in 50-digit arithmetic (mpmath), at its edges above all.

The reference (fdiv_ops.reference, fdiv_ops.reference_divergences) is every other test's expected answer,
so it is held here to something independent of it and of the kernels: each divergence's `definition`, f(r)
as docs/math.md writes it, evaluated with mpmath. With F(l) = f(e^l): psi = F - F', h = F'' - F'. The
grids run to |log-ratio| = 1e4 (float64's exp overflows at 709.8) and into the subnormal range, where the
reference used to give NaN.
"""

import math

import fdiv_ops
import mpmath
import pytest
import torch
import torch.nn.functional as F
from divergence_cases import ALL, IDS
from fdiv_ops import reference as ref
from fdiv_ops.reference_divergences import TABLE, lookup

mp = mpmath.mp.clone()  # a private context: 50 digits here never leak into another test
mp.dps = 50

# log-ratios from far below float64's exp range to far above it, and the cancellation zone around 0
GRID = [-1000, -800, -745.5, -710, -700, -100, -30, -5, -1, -0.1, -1e-3, -1e-6, -1e-9, 0.0]
GRID = sorted(set(GRID + [-x for x in GRID]))
# log-probabilities for the categorical terms: subnormal and beyond (-745.5, -800, -1e4), moderate, ~0
LOG_PROBS = [-1e4, -800, -745.5, -300, -30, -5, -1, -1e-3, -1e-9, 0.0]
RTOL = 1e-13
ATOL = 1e-15  # f ~ f''(1) l^2 / 2 near l = 0 is resolved absolutely (reference_divergences.py, "Forms")
TINY = 1e-300  # below float64's normal range (2.2e-308) a subnormal result keeps only a few digits


def _mp_f(div):
    """F(l) = f(e^l) from the divergence's definition, in 50 digits (TRL's gkd_jsd endpoints and the skew
    endpoints are the divergences they hand over to)."""
    d = fdiv_ops.resolve(div)
    obj, param = lookup(d.name, d.param)
    a = mp.mpf(param)
    return lambda l: obj.definition(mp.exp(l), a, mp)


def _mp_terms(div, l: float) -> tuple:
    """(f, psi, h) at log-ratio l. F - F' and F'' - F' cancel terms of size up to e^|l| (e.g. js's psi at
    l = 700 is -699.3 from two terms of 1e304), so the working precision grows with |l|."""
    big_f = _mp_f(div)
    with mp.workdps(60 + int(0.9 * abs(l))):
        x = mp.mpf(l)
        f0, f1, f2 = big_f(x), mp.diff(big_f, x), mp.diff(big_f, x, 2)
        return f0, f0 - f1, f2 - f1


def _close(got: float, want, rtol=RTOL, atol=ATOL) -> bool:
    want = float(want)  # beyond float64's range this is +-inf, below it a subnormal or 0
    if math.isinf(want):
        return got == want
    return abs(got - want) <= rtol * abs(want) + atol + TINY


def test_the_table_has_one_object_per_divergence():
    assert set(TABLE) == set(fdiv_ops.DIVERGENCES)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_psi_h_match_the_definition_at_every_scale(div):
    l = torch.tensor(GRID, dtype=torch.float64)
    got = {name: fn(div, l).tolist() for name, fn in (("f", ref.f), ("psi", ref.psi), ("h", ref.h))}
    kinked = fdiv_ops.resolve(div).name == "total_variation"
    bad = []
    for i, x in enumerate(GRID):
        for name, want in zip(("f", "psi", "h"), _mp_terms(div, x), strict=True):
            if kinked and x == 0.0 and name == "h":
                continue  # |r - 1| has no second derivative at r = 1 (h = 0 there by convention)
            if not _close(got[name][i], want):
                bad.append((name, x, got[name][i], float(want)))
    assert not bad, bad


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_limits_at_zero_and_infinity_match_the_definition(div):
    ends = torch.tensor([-math.inf, math.inf], dtype=torch.float64)
    for side, sign in ((0, -1), (1, 1)):
        # r = e^-+200: every finite limit is reached to 1e-40; a divergent one keeps growing to e^-+400
        far, farther = _mp_terms(div, sign * 200.0), _mp_terms(div, sign * 400.0)
        for i, (name, fn) in enumerate((("f", ref.f), ("psi", ref.psi), ("h", ref.h))):
            got, want, beyond = fn(div, ends)[side].item(), far[i], farther[i]
            if math.isinf(got):
                growing = abs(want) > 1 and abs(beyond) > 1.5 * abs(want)
                assert growing and (want > 0) == (got > 0), (name, side, got, float(want), float(beyond))
            else:
                assert abs(got - float(want)) <= 1e-12 * max(1.0, abs(got)), (name, side, got, float(want))


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_log_h_is_log_of_h(div):
    l = torch.tensor(GRID, dtype=torch.float64)
    if fdiv_ops.resolve(div).name == "total_variation":
        return  # h = 0: log h = -inf everywhere, checked below
    h = ref.h(div, l)
    inside = (h > 0) & torch.isfinite(h)
    torch.testing.assert_close(ref.log_h(div, l)[inside], torch.log(h[inside]), rtol=1e-13, atol=1e-13)


def test_log_h_exceeds_float64_where_h_overflows():
    # alpha(300) at r = 20: h = 20^300 ~ 1e390 overflows float64, its log does not
    l = torch.tensor([math.log(20.0)], dtype=torch.float64)
    assert ref.h(fdiv_ops.alpha(300.0), l).item() == math.inf
    assert ref.log_h(fdiv_ops.alpha(300.0), l).item() == pytest.approx(300 * math.log(20.0), rel=1e-15)
    assert ref.log_h("total_variation", l).item() == -math.inf


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_categorical_terms_match_q_f_of_p_over_q(div):
    big_f = _mp_f(div)
    pairs = [(lq, lp) for lq in LOG_PROBS for lp in LOG_PROBS]
    lq = torch.tensor([q for q, _ in pairs], dtype=torch.float64)
    lp = torch.tensor([p for _, p in pairs], dtype=torch.float64)
    got = ref.qf(div, lq, lp).tolist()
    bad = []
    for (q_log, p_log), value in zip(pairs, got, strict=True):
        want = mp.exp(q_log) * big_f(mp.mpf(p_log) - mp.mpf(q_log))
        scale = float(mp.exp(q_log) + mp.exp(p_log))  # cancellation near p = q is absolute, in units of p + q
        if not _close(value, want, atol=ATOL * scale):
            bad.append((q_log, p_log, value, float(want)))
    assert not bad, bad


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_nan_in_nan_out_and_minus_inf_entries_drop(div):
    nan, inf = math.nan, math.inf
    l = torch.tensor([nan, 0.5], dtype=torch.float64)
    for fn in (ref.f, ref.psi, ref.h):
        out = fn(div, l)
        assert math.isnan(out[0].item()) and not math.isnan(out[1].item())
    lq = torch.tensor([0.0, nan, 0.0, inf, 0.0, -inf, -inf, nan, -1.0], dtype=torch.float64)
    lp = torch.tensor([nan, 0.0, inf, 0.0, -inf, 0.0, -inf, -inf, -2.0], dtype=torch.float64)
    terms = ref.qf(div, lq, lp)
    assert torch.isnan(terms[:4]).all()  # NaN or +inf on either side
    assert (terms[4:7] == 0).all()  # -inf on either side (or both): dropped
    assert torch.isnan(terms[7])  # NaN wins over a dropped -inf
    assert torch.isfinite(terms[8])


def test_gkd_and_skew_endpoints_hand_over_to_their_limits():
    assert lookup("gkd_jsd", 0.0)[0] is TABLE["forward_kl"]
    assert lookup("gkd_jsd", 1.0)[0] is TABLE["reverse_kl"]
    assert lookup("skew_forward_kl", 0.0)[0] is TABLE["forward_kl"]
    assert lookup("skew_reverse_kl", 0.0)[0] is TABLE["reverse_kl"]
    l = torch.linspace(-800, 800, 17, dtype=torch.float64)
    for div in (fdiv_ops.skew_forward_kl(1.0), fdiv_ops.skew_reverse_kl(1.0)):
        assert all((fn(div, l) == 0).all() for fn in (ref.f, ref.psi, ref.h))


# ---------------------------------------------------------------------------------------------------
# The ops' references at the edges that used to be wrong (issue 16, item 9)


def _mp_log_softmax(row: list[float]) -> list:
    finite = [mp.mpf(v) for v in row if v != -math.inf]
    lse = mp.log(mp.fsum(mp.exp(v) for v in finite))
    return [None if v == -math.inf else mp.mpf(v) - lse for v in row]


def _mp_row_divergence(div, student: list[float], teacher: list[float]):
    big_f = _mp_f(div)
    total = mp.mpf(0)
    for lq, lp in zip(_mp_log_softmax(student), _mp_log_softmax(teacher), strict=True):
        if lq is not None and lp is not None:
            total += mp.exp(lq) * big_f(lp - lq)
    return total


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_divergence_rows_with_log_ratios_beyond_float64(div):
    # log-ratios of +-1000 and -inf entries in one row: the reference gave NaN for every divergence here
    student = [[0.0, -1000.0, 0.0, 3.0, -math.inf], [1.0, 2.0, -800.0, 0.0, 0.5]]
    teacher = [[0.0, 0.0, -1000.0, 2.0, 1.0], [-900.0, 2.0, 0.0, 0.0, -math.inf]]
    got = ref.f_divergence_loss(
        torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
        divergence=div, reduction="none",
    )  # fmt: skip
    for value, s, t in zip(got.tolist(), student, teacher, strict=True):
        want = _mp_row_divergence(div, s, t)
        assert _close(value, want, rtol=1e-12, atol=1e-13), (value, float(want))


def test_softened_rkl_of_a_vanishing_teacher_entry_is_finite():
    # p_2 = e^-20000 / (1 + e^-20000): (p + q) log((p + q) / 2p) ~ q (20000 - log 4); the reference said inf
    student, teacher = [0.0, 0.0], [0.0, -20000.0]
    want = _mp_row_divergence("softened_rkl", student, teacher)
    args = (torch.tensor([student], dtype=torch.float64), torch.tensor([teacher], dtype=torch.float64))
    got = ref.f_divergence_loss(*args, divergence="softened_rkl")
    assert _close(got.item(), want, rtol=1e-14), (got.item(), float(want))
    fused = fdiv_ops.f_divergence_loss(*args, divergence="softened_rkl")
    assert _close(fused.item(), want, rtol=1e-12), (fused.item(), float(want))


@pytest.mark.parametrize("teacher_is_logprobs", [False, True])
def test_nan_or_plus_inf_teacher_entries_make_their_row_nan(teacher_is_logprobs):
    student = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 7, dtype=torch.float64)
    if teacher_is_logprobs:
        teacher = teacher.log_softmax(-1)
    clean = ref.f_divergence_loss(student, teacher, reduction="none", teacher_is_logprobs=teacher_is_logprobs)
    teacher[1, 3], teacher[2, 0] = math.inf, math.nan  # the reference used to drop both silently
    rows = ref.f_divergence_loss(student, teacher, reduction="none", teacher_is_logprobs=teacher_is_logprobs)
    assert torch.isnan(rows[1:3]).all()
    torch.testing.assert_close(rows[[0, 3]], clean[[0, 3]], rtol=0, atol=0)
    (grad,) = torch.autograd.grad(rows[[0, 3]].sum(), student)
    assert torch.isfinite(grad).all()


def test_nan_or_plus_inf_student_logits_make_their_row_nan():
    student = torch.randn(3, 5, dtype=torch.float64)
    student[0, 1], student[1, 4] = math.nan, math.inf
    rows = ref.f_divergence_loss(student, torch.randn(3, 5, dtype=torch.float64), reduction="none")
    assert torch.isnan(rows[:2]).all() and torch.isfinite(rows[2])


def test_sequence_logprobs_rows_of_minus_inf_nan_and_plus_inf():
    logits = torch.randn(5, 6, dtype=torch.float64)
    logits[0] = -math.inf  # nothing to choose from: log-prob -inf, entropy 0 (what the op documents)
    logits[1, 2] = math.nan
    logits[2, 5] = math.inf
    logits[3, :4] = -math.inf  # a live row with a label on a -inf entry: -inf, and a finite entropy
    labels = torch.tensor([1, 0, 1, 2, 4])
    leaf = logits.clone().requires_grad_()
    logprobs, entropy = ref.sequence_logprobs(leaf, labels, return_entropy=True)
    assert logprobs[0].item() == -math.inf and entropy[0].item() == 0.0
    assert torch.isnan(logprobs[1:3]).all() and torch.isnan(entropy[1:3]).all()
    assert logprobs[3].item() == -math.inf and entropy[3].item() == pytest.approx(
        float(-mp.fsum(mp.exp(v) * v for v in _mp_log_softmax(logits[3].tolist()) if v is not None)), rel=1e-14
    )
    want = _mp_log_softmax(logits[4].tolist())[4]
    assert logprobs[4].item() == pytest.approx(float(want), rel=1e-15)
    (grad,) = torch.autograd.grad(logprobs[[0, 4]].sum() + entropy[[0, 3, 4]].sum(), leaf)
    assert (grad[0] == 0).all() and torch.isfinite(grad[[0, 3, 4]]).all()  # rows 1, 2 hold NaN: NaN gradient


def test_sequence_logprobs_ignored_rows_give_zero_whatever_they_hold():
    logits = torch.full((2, 3), math.nan, dtype=torch.float64)
    logprobs, entropy = ref.sequence_logprobs(logits, torch.tensor([-100, -100]), return_entropy=True)
    assert (logprobs == 0).all() and (entropy == 0).all()


def _mp_f_distill(x, teacher, fake, h=None, eps=1e-6):
    """0.5 mean(g^2) and g / (B D) of docs/math.md §2 in 50 digits (h already normalised)."""
    batch, dim = x.shape
    loss, grads = mp.mpf(0), []
    for b in range(batch):
        xs, ts, fs = ([mp.mpf(v) for v in row[b].tolist()] for row in (x, teacher, fake))
        norm = mp.fsum(abs(u - v) for u, v in zip(xs, ts, strict=True)) / dim
        w = (mp.mpf(1) if h is None else h[b]) / (norm + mp.mpf(eps))
        g = [w * (u - v) for u, v in zip(fs, ts, strict=True)]
        loss += mp.fsum(v * v for v in g)
        grads.append([float(v / (batch * dim)) for v in g])
    return float(loss / (2 * batch * dim)), torch.tensor(grads, dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 1e18, 1e-18])
def test_f_distill_value_and_gradient_at_any_scale(scale):
    # 0.5 mse(x, x - g) loses g to rounding once |x| >> |g|: at 1e18 the reference used to say 0.0
    x, teacher, fake = (scale * torch.randn(3, 40, dtype=torch.float64) for _ in range(3))
    leaf = x.clone().requires_grad_()
    loss = ref.f_distill_loss(leaf, teacher, fake)
    loss.backward()
    want_loss, want_grad = _mp_f_distill(x, teacher, fake)
    assert loss.item() == pytest.approx(want_loss, rel=1e-13) and want_loss > 0
    torch.testing.assert_close(leaf.grad, want_grad, rtol=1e-13, atol=0)


def test_f_distill_weights_beyond_float64_and_nan_logits():
    x, teacher, fake = (torch.randn(4, 30, dtype=torch.float64) for _ in range(3))
    logits = torch.tensor([[3.0, 4.0], [-1.0, 0.0], [2.0, 2.5], [0.5, 0.5]], dtype=torch.float64)
    div = fdiv_ops.alpha(300.0)  # h = r^300 reaches 20^300 ~ 1e390: the plain h / mean(h) is inf / inf
    log_h = [300 * mp.log(min(max(mp.exp(mp.mpf(sum(row)) / 2), mp.mpf("0.1")), 20)) for row in logits.tolist()]
    mean_h = mp.fsum(mp.exp(v) for v in log_h) / 4
    h = [mp.exp(v) / (mean_h + mp.mpf("1e-6")) for v in log_h]
    leaf = x.clone().requires_grad_()
    ref.f_distill_loss(leaf, teacher, fake, logits, divergence=div).backward()
    torch.testing.assert_close(leaf.grad, _mp_f_distill(x, teacher, fake, h)[1], rtol=1e-12, atol=1e-300)
    # a NaN logit: that sample's gradient is NaN, the others normalise over the samples that are left
    logits[1, 0] = math.nan
    leaf = x.clone().requires_grad_()
    ref.f_distill_loss(leaf, teacher, fake, logits, divergence="js").backward()
    assert torch.isnan(leaf.grad[1]).all() and torch.isfinite(leaf.grad[[0, 2, 3]]).all()
    keep = [0, 2, 3]
    js_h = ref.h("js", ref.f_distill_weights(logits[keep], "js")[0].log())
    want = _mp_f_distill(
        x[keep], teacher[keep], fake[keep], [mp.mpf(v) / (js_h.mean().item() + 1e-6) for v in js_h.tolist()]
    )
    torch.testing.assert_close(leaf.grad[keep] * 4 / 3, want[1], rtol=1e-12, atol=0)  # B = 4 there, 3 here


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_f_distill_reductions_agree(reduction):
    x, teacher, fake = (torch.randn(3, 2, 5, dtype=torch.float64) for _ in range(3))
    leaf = x.clone().requires_grad_()
    loss = ref.f_distill_loss(leaf, teacher, fake, reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    mean_loss, mean_grad = _mp_f_distill(x.reshape(3, -1), teacher.reshape(3, -1), fake.reshape(3, -1))
    # 0.5 sum(g^2) = B D times the mean; the per-sample means 0.5 mean_i g_bi^2 sum to B times it
    factor = {"mean": 1.0, "sum": 30.0, "none": 3.0}[reduction]
    assert loss.sum().item() == pytest.approx(mean_loss * factor, rel=1e-13)
    torch.testing.assert_close(leaf.grad.reshape(3, -1), mean_grad * factor, rtol=1e-13, atol=0)
    if reduction == "none":
        assert loss.shape == (3,)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_f_dpo_and_dpo_with_a_minus_inf_reference_log_prob(label_smoothing):
    # pi_ref(y_w) = 0: r_w = 0, psi(0) = +inf for reverse_kl, z = +inf, loss -log sigmoid(inf) = 0 (the
    # smoothing term adds eps * inf); pi_ref(y_l) = 0: z = -inf, loss inf. Never inf * 0 = NaN.
    pc, pr = torch.tensor([-3.0, -3.0], dtype=torch.float64), torch.tensor([-4.0, -4.0], dtype=torch.float64)
    rc = torch.tensor([-math.inf, -2.0], dtype=torch.float64)
    rr = torch.tensor([-5.0, -math.inf], dtype=torch.float64)
    want = [0.0 if label_smoothing == 0 else math.inf, math.inf]
    for losses in (
        ref.f_dpo_loss(pc, pr, rc, rr, divergence="reverse_kl", label_smoothing=label_smoothing)[0],
        ref.dpo_loss(pc, pr, rc, rr, label_smoothing=label_smoothing)[0],
    ):
        assert losses.tolist() == want


# ---------------------------------------------------------------------------------------------------
# The derivations of docs/math.md §3 and §4, against autograd of the reference in float64


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_three_pass_gradient_formula(div):
    # docs/math.md §3.3: d loss_row / dz_j = (1/T) (q_j psi_j [j kept] - q_j S), S = sum_kept q psi
    temperature = 1.7
    student, teacher = torch.randn(3, 11, dtype=torch.float64), torch.randn(3, 11, dtype=torch.float64)
    teacher[0, 2] = student[1, 5] = -math.inf  # dropped entries
    leaf = student.clone().requires_grad_()
    ref.f_divergence_loss(leaf, teacher, divergence=div, temperature=temperature, reduction="sum").backward()
    lq, lp = (torch.log_softmax(x / temperature, dim=-1) for x in (student, teacher))
    kept = torch.isfinite(lq) & torch.isfinite(lp)
    q = lq.exp()
    q_psi = torch.where(kept, q * ref.psi(div, torch.where(kept, lp - lq, 0.0)), 0.0)
    formula = (q_psi - q * q_psi.sum(-1, keepdim=True)) / temperature
    torch.testing.assert_close(leaf.grad, formula, rtol=1e-10, atol=1e-13)


def test_sequence_logprobs_backward_formula():
    # docs/math.md §4.1: dL/dz_v = (1/T) [g (delta_vy - pi_v) - g_H pi_v (log pi_v + H)]
    temperature = 0.8
    logits = 3 * torch.randn(4, 9, dtype=torch.float64)
    labels = torch.tensor([0, 3, 8, 2])
    g, g_h = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    leaf = logits.clone().requires_grad_()
    logprobs, entropy = ref.sequence_logprobs(leaf, labels, temperature=temperature, return_entropy=True)
    torch.autograd.backward([logprobs, entropy], [g, g_h])
    log_pi = torch.log_softmax(logits / temperature, dim=-1)
    pi = log_pi.exp()
    h = -(pi * log_pi).sum(-1, keepdim=True)
    onehot = F.one_hot(labels, 9).to(torch.float64)
    formula = (g[:, None] * (onehot - pi) - g_h[:, None] * pi * (log_pi + h)) / temperature
    torch.testing.assert_close(leaf.grad, formula, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_policy_gradient_of_a_divergence_is_psi_weighted(div):
    # docs/math.md §4.2: grad_theta D_f(p || pi) = E_pi[psi(p / pi) grad log pi], exactly, on a categorical pi
    theta = torch.randn(7, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(torch.randn(7, dtype=torch.float64), dim=0)
    log_pi = torch.log_softmax(theta, dim=0)
    (exact,) = torch.autograd.grad(ref.categorical_divergence(div, log_pi, log_p), theta, retain_graph=True)
    weights = (log_pi.exp() * ref.psi(div, log_p - log_pi)).detach()
    (estimate,) = torch.autograd.grad((weights * log_pi).sum(), theta)
    torch.testing.assert_close(estimate, exact, rtol=1e-10, atol=1e-13)


def test_f_dpo_implicit_rewards():
    # docs/math.md §4.3, with u = pi / pi_ref = 1 / r
    u = torch.tensor([0.01, 0.5, 1.0, 3.0, 40.0], dtype=torch.float64)
    l = -torch.log(u)
    torch.testing.assert_close(ref.psi("reverse_kl", l), 1 + torch.log(u))
    torch.testing.assert_close(ref.psi("js", l), torch.log(2 * u / (1 + u)))
    torch.testing.assert_close(ref.psi("forward_kl", l), -1 / u)
    torch.testing.assert_close(ref.psi(fdiv_ops.alpha(0.3), l), (1 - u**-0.3) / 0.3)
