"""f-DPG, f-DPO, group-normalised advantages and the divergence_terms op they share (docs/math.md §4).

The key test enumerates every sequence of a tiny autoregressive policy (vocabulary {a, b, EOS}, length <= 4:
31 sequences), so expectations are exact sums: the f-DPG gradient (exact probabilities as importance
weights) must equal autograd of the exact D_f(p || pi) for every divergence.
"""

import itertools
import math

import fdiv_ops
import pytest
import torch
from divergence_cases import ALL, IDS  # every divergence of fdiv_ops.DIVERGENCES
from fdiv_ops import reference as ref
from fdiv_ops.ops.divergence_terms import clamp_log_ratio, divergence_terms_op, dtype_max_exponent

_terms_op = divergence_terms_op.op

# ---------------------------------------------------------------------------------------------------
# divergence_terms and the exponent clamp


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_divergence_terms_match_reference_and_psi_gradient_is_minus_h(div, device):
    l = torch.linspace(-6, 6, 49, dtype=torch.float64, device=device).requires_grad_()
    f, psi, h = fdiv_ops.divergence_terms(l, div)
    torch.testing.assert_close(psi, ref.psi(div, l.detach()), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f, ref.f(div, l.detach()), rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad((psi * torch.arange(49.0, dtype=torch.float64, device=device)).sum(), l)
    lr = l.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad((ref.psi(div, lr) * torch.arange(49.0, dtype=torch.float64, device=device)).sum(), lr)
    keep = l.detach().abs() > 1e-9  # total_variation's jump at l = 0
    torch.testing.assert_close(grad[keep], want[keep], rtol=1e-9, atol=1e-12)
    assert not f.requires_grad and not h.requires_grad


@pytest.mark.parametrize("div", ALL, ids=IDS)
@pytest.mark.parametrize("of_f", [False, True])
def test_exponent_clamp_keeps_sequence_log_ratios_finite(div, of_f):
    div = fdiv_ops.resolve(div)
    l = torch.tensor([-1e3, -200.0, -1.0, 0.0, 1.0, 200.0, 1e3])
    cap = 30.0 if of_f else 50.0  # the f-DPG and f-DPO defaults
    f, psi, h = fdiv_ops.divergence_terms(clamp_log_ratio(l, div, cap, of_f=of_f), div)
    assert torch.isfinite(psi).all() and torch.isfinite(h).all(), (psi, h)
    if of_f:
        assert torch.isfinite(f).all(), f
    if div.name in ("reverse_kl", "js", "softened_rkl", "total_variation", "skew_reverse_kl") and not of_f:
        assert torch.equal(clamp_log_ratio(l, div, cap), l)  # log-space forms are never clamped


def test_trl_cap_reproduced_on_request():
    div = fdiv_ops.alpha(0.5)
    l = torch.tensor([-1e3, 1e3])
    assert clamp_log_ratio(l, div, dtype_max_exponent(torch.float32))[1].item() == pytest.approx(2 * 88.7228)


def test_opcheck_divergence_terms():
    l = torch.randn(7, requires_grad=True)
    torch.library.opcheck(_terms_op, (l, 2, 0.0))
    torch.library.opcheck(_terms_op, (l.double().detach().requires_grad_(), 10, 0.5))


# ---------------------------------------------------------------------------------------------------
# f-DPO


def _pairs(batch=6, dtype=torch.float64, spread=5.0, device="cpu"):
    return [(spread * torch.randn(batch, dtype=torch.float64) - 20).to(device=device, dtype=dtype) for _ in range(4)]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_f_dpo_reverse_kl_is_dpo(label_smoothing, device):
    pc, pr, rc, rr = _pairs(device=device)
    pc.requires_grad_(), pr.requires_grad_()
    losses, cr, rjr = fdiv_ops.f_dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=label_smoothing)
    g = torch.autograd.grad(losses.sum(), (pc, pr))
    w_losses, w_cr, w_rjr = ref.dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=label_smoothing)
    w_g = torch.autograd.grad(w_losses.sum(), (pc, pr))
    torch.testing.assert_close(losses, w_losses, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(cr, w_cr, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(rjr, w_rjr, rtol=1e-12, atol=1e-13)
    for a, b in zip(g, w_g):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    "divergence, trl_name, alpha_coef",
    [
        ("js", "js_divergence", None),
        (fdiv_ops.alpha(0.5), "alpha_divergence", 0.5),
        (fdiv_ops.alpha(1.5), "alpha_divergence", 1.5),
        ("reverse_kl", "reverse_kl", None),
    ],
)
def test_f_dpo_matches_trl_branches(divergence, trl_name, alpha_coef):
    # TRL's own test values (log-ratios of hundreds of nats) plus ordinary ones, in float32 as TRL runs
    pc = torch.tensor([410.0, 0.1, -12.0, -40.0])
    pr = torch.tensor([810.5, 0.2, -15.0, -38.0])
    rc = torch.tensor([-610.0, -0.1, -13.0, -41.0])
    rr = torch.tensor([110.6, 0.5, -14.0, -37.5])
    beta = 0.1
    losses, _, _ = fdiv_ops.f_dpo_loss(pc, pr, rc, rr, divergence=divergence, beta=beta)
    trl_logits = ref.trl_f_dpo_logits(
        pc, pr, rc, rr, divergence=trl_name, alpha_coef=alpha_coef or 1.0, trl_version="0.28"
    )
    want = -torch.nn.functional.logsigmoid(beta * trl_logits)
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_dpo_every_divergence_matches_reference(div, device):
    pc, pr, rc, rr = _pairs(spread=1.0, device=device)
    pc.requires_grad_(), pr.requires_grad_()
    out = fdiv_ops.f_dpo_loss(pc, pr, rc, rr, divergence=div, beta=0.2, label_smoothing=0.1)
    want = ref.f_dpo_loss(pc, pr, rc, rr, divergence=div, beta=0.2, label_smoothing=0.1)
    for a, b in zip(out, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    g = torch.autograd.grad(out[0].sum(), (pc, pr))
    w_g = torch.autograd.grad(want[0].sum(), (pc, pr))
    for a, b in zip(g, w_g):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_dpo_log_ratios_of_1e3_stay_finite(div):
    pc = torch.tensor([-1e3, -1.0, -1e3, -2.0], requires_grad=True)
    pr = torch.tensor([-1.0, -1e3, -2.0, -1e3], requires_grad=True)
    rc = torch.tensor([-1.0, -1e3, -1e3, -2.0])
    rr = torch.tensor([-1e3, -1.0, -2.0, -3.0])
    losses, cr, rjr = fdiv_ops.f_dpo_loss(pc, pr, rc, rr, divergence=div)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert torch.isfinite(cr).all() and torch.isfinite(rjr).all()


def test_f_dpo_bf16_inputs_compute_in_fp32():
    pc, pr, rc, rr = (t.bfloat16() for t in _pairs())
    losses, _, _ = fdiv_ops.f_dpo_loss(pc, pr, rc, rr, divergence="js")
    want, _, _ = ref.f_dpo_loss(*(t.double() for t in (pc, pr, rc, rr)), divergence="js")
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses.double(), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# group normalisation


def test_group_normalized_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0], dtype=torch.float64)
    adv = fdiv_ops.group_normalized_advantages(rewards, 3)
    # group 1: mean 2, unbiased std 1; group 2: constant -> 0; group 3: [0, 0, 0]; group 4: mean 100/3,
    # std = sqrt(((100/3)^2 * 2 + (200/3)^2) / 2) = 57.735: [-0.577, -0.577, 1.1547]
    s4 = math.sqrt(((100 / 3) ** 2 * 2 + (200 / 3) ** 2) / 2)
    want = torch.tensor(
        [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -(100 / 3) / s4, -(100 / 3) / s4, (200 / 3) / s4],
        dtype=torch.float64,
    )
    torch.testing.assert_close(adv, want, rtol=1e-7, atol=1e-7)
    clipped = fdiv_ops.group_normalized_advantages(
        torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), 12
    )
    assert clipped[-1].item() == pytest.approx(3.0) and clipped[0].item() == pytest.approx(-1 / math.sqrt(12))
    unclipped = fdiv_ops.group_normalized_advantages(clipped.new_tensor([0.0] * 11 + [1.0]), 12, clip=None)
    assert unclipped[-1].item() == pytest.approx(11 / math.sqrt(12), rel=1e-6)
    torch.testing.assert_close(
        fdiv_ops.group_normalized_advantages(rewards, 4), ref.group_normalized_advantages(rewards, 4)
    )
    strided = torch.stack([rewards, rewards], 1)[:, 0]  # non-contiguous (B,) view
    torch.testing.assert_close(fdiv_ops.group_normalized_advantages(strided, 3), adv)


# ---------------------------------------------------------------------------------------------------
# f-DPG on an enumerable sequence space

VOCAB, EOS, MAX_LEN = 3, 2, 4


def _all_sequences():
    """Every sequence of the tiny policy: tokens in {0, 1} then EOS, or 4 tokens (any last one): 31."""
    seqs = []
    for length in range(1, MAX_LEN + 1):
        for prefix in itertools.product((0, 1), repeat=length - 1):
            lasts = (EOS,) if length < MAX_LEN else (0, 1, EOS)
            seqs += [prefix + (last,) for last in lasts]
    return seqs


def _policy_logprobs(theta, seqs, device):
    """log pi(x) for every sequence, through sequence_logprobs on (N, T, V) logits: theta[t, previous token]."""
    n = len(seqs)
    labels = torch.full((n, MAX_LEN), -100, dtype=torch.long)
    prev = torch.full((n, MAX_LEN), 3, dtype=torch.long)  # 3 = BOS
    for i, s in enumerate(seqs):
        labels[i, : len(s)] = torch.tensor(s)
        prev[i, 1 : len(s)] = torch.tensor(s[:-1])
    positions = torch.arange(MAX_LEN).expand(n, MAX_LEN)
    logits = theta[positions.to(device), prev.to(device)]  # (N, T, V), differentiable in theta
    return fdiv_ops.sequence_logprobs(logits, labels.to(device)).sum(-1)


@pytest.mark.parametrize("div", ALL, ids=IDS)
@pytest.mark.parametrize("mode", ["target", "log_ratio"])
def test_f_dpg_gradient_equals_exact_divergence_gradient(div, mode, device):
    seqs = _all_sequences()
    assert len(seqs) == 31
    theta = (0.8 * torch.randn(MAX_LEN, 4, VOCAB, dtype=torch.float64)).to(device).requires_grad_()
    log_pi = _policy_logprobs(theta, seqs, device)
    torch.testing.assert_close(log_pi.exp().sum(), torch.tensor(1.0, dtype=torch.float64, device=device))
    log_p_unnorm = 1.5 * torch.randn(len(seqs), dtype=torch.float64, device=device) + 3.0
    log_z = torch.logsumexp(log_p_unnorm, 0)

    # exact D_f(p || pi) = sum_x pi(x) f(p(x)/pi(x)), differentiated by autograd
    exact = (log_pi.exp() * ref.f(div, log_p_unnorm - log_z - log_pi)).sum()
    (want,) = torch.autograd.grad(exact, theta, retain_graph=True)

    # f-DPG with every sequence as a sample from a uniform proposal: weights pi/q = N pi, exact expectations
    uniform = torch.full_like(log_pi, -math.log(len(seqs)))
    if mode == "target":
        kw = dict(target_logscores=log_p_unnorm, log_z=log_z)
    else:
        kw = dict(log_ratio=log_p_unnorm - log_z - log_pi.detach())
    loss, stats = fdiv_ops.f_dpg_loss(log_pi, proposal_logprobs=uniform, divergence=div, baseline="mean", **kw)
    (grad,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(stats["divergence"], exact.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(stats["importance_weights"], len(seqs) * log_pi.detach().exp())


def test_f_dpg_matches_eager_reference_variants(device):
    batch = 8
    log_pi = (torch.randn(batch, dtype=torch.float64, device=device) - 5).requires_grad_()
    target = torch.randn(batch, dtype=torch.float64, device=device) - 5
    proposal = torch.randn(batch, dtype=torch.float64, device=device) - 5
    cases = [
        dict(target_logscores=target, log_z=0.3, divergence="js"),
        dict(
            target_logscores=target,
            log_z=torch.full((batch,), -0.2, dtype=torch.float64, device=device),
            proposal_logprobs=proposal,
            divergence="forward_kl",
            baseline=None,
        ),
        dict(
            target_logscores=target,
            proposal_logprobs=proposal,
            divergence=fdiv_ops.alpha(0.5),
            baseline=torch.tensor(0.7, dtype=torch.float64, device=device),
        ),
        dict(log_ratio=target - log_pi.detach(), divergence="total_variation", group_size=4),
        dict(log_ratio=target - log_pi.detach(), divergence="reverse_kl", group_size=2, baseline=None),
    ]
    for kw in cases:
        loss, stats = fdiv_ops.f_dpg_loss(log_pi, **kw)
        (grad,) = torch.autograd.grad(loss, log_pi)
        want_loss, want_div = ref.f_dpg_loss(
            log_pi, **{k: v for k, v in kw.items() if k != "log_z"}, log_z=kw.get("log_z", 0.0)
        )
        (want_grad,) = torch.autograd.grad(want_loss, log_pi)
        torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(stats["divergence"], want_div, rtol=1e-10, atol=1e-12)
        assert not any(v.requires_grad for v in stats.values())


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_dpg_log_ratios_of_1e3_stay_finite(div):
    log_pi = torch.tensor([-1e3, -1.0, -500.0, -3.0], requires_grad=True)
    target = torch.tensor([-1.0, -1e3, -2.0, -1000.0])
    loss, stats = fdiv_ops.f_dpg_loss(log_pi, target_logscores=target, proposal_logprobs=target, divergence=div)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(log_pi.grad).all()
    assert all(torch.isfinite(v).all() for v in stats.values()), stats


def test_f_dpg_torch_compile_fullgraph():
    log_pi = torch.randn(6, requires_grad=True)
    target = torch.randn(6)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(lp, t):
        loss, stats = fdiv_ops.f_dpg_loss(lp, target_logscores=t, log_z=0.1, divergence="js", group_size=3)
        dpo, _, _ = fdiv_ops.f_dpo_loss(lp[:3], lp[3:], t[:3], t[3:], divergence=fdiv_ops.alpha(0.5))
        return loss + dpo.mean(), stats["divergence"]

    out, _ = step(log_pi, target)
    out.backward()
    lp2 = log_pi.detach().clone().requires_grad_()
    l1, _ = fdiv_ops.f_dpg_loss(lp2, target_logscores=target, log_z=0.1, divergence="js", group_size=3)
    l2, _, _ = fdiv_ops.f_dpo_loss(lp2[:3], lp2[3:], target[:3], target[3:], divergence=fdiv_ops.alpha(0.5))
    (l1 + l2.mean()).backward()
    torch.testing.assert_close(log_pi.grad, lp2.grad)


# ---------------------------------------------------------------------------------------------------
# FDPG module


def test_fdpg_module_running_z_and_baseline_per_context():
    torch.manual_seed(1)
    module = fdiv_ops.FDPG("js", num_contexts=2, baseline_momentum=0.9)
    ctx = torch.tensor([0, 0, 1, 1, 1])
    steps = [
        (
            torch.randn(5, dtype=torch.float64) - 3,
            torch.randn(5, dtype=torch.float64) - 2,
            torch.randn(5, dtype=torch.float64) - 3,
        )
        for _ in range(2)
    ]
    seen_log_w = {0: [], 1: []}
    expected_baseline = torch.zeros(5, dtype=torch.float64)
    for k, (log_pi, target, proposal) in enumerate(steps):
        log_pi = log_pi.clone().requires_grad_()
        for i in range(5):
            seen_log_w[int(ctx[i])].append(float(target[i] - proposal[i]))
        z_by_hand = torch.tensor(
            [math.log(sum(math.exp(v) for v in seen_log_w[c]) / len(seen_log_w[c])) for c in (0, 1)],
            dtype=torch.float64,
        )
        loss, stats = module(log_pi, target, proposal_logprobs=proposal, context=ctx)
        torch.testing.assert_close(stats["log_z"], z_by_hand[ctx])
        torch.testing.assert_close(stats["baseline"], expected_baseline)
        want_loss, _ = ref.f_dpg_loss(
            log_pi,
            target_logscores=target,
            log_z=z_by_hand[ctx],
            proposal_logprobs=proposal,
            divergence="js",
            baseline=expected_baseline,
        )
        torch.testing.assert_close(loss, want_loss)
        # next step's baseline: bias-corrected EMA of the importance-weighted mean pseudo-reward per context
        w, r = stats["importance_weights"], stats["pseudo_rewards"]
        means = [(w * r)[ctx == c].sum() / w[ctx == c].sum() for c in (0, 1)]
        if k == 0:
            ema = [0.1 * m for m in means]
        else:
            ema = [0.9 * e + 0.1 * m for e, m in zip(ema, means)]
        expected_baseline = torch.stack([ema[c] / (1 - 0.9 ** (k + 1)) for c in (0, 1)])[ctx]
    module.eval()
    before = module.log_z.clone()
    module(steps[0][0], steps[0][1], context=ctx)
    assert torch.equal(before, module.log_z)  # eval mode leaves the estimates alone


# ---------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda t: fdiv_ops.f_dpo_loss(t, t[:3], t, t), ValueError, "policy_rejected_logps must have the shape"),
        (lambda t: fdiv_ops.f_dpo_loss(t, t, t, t[None]), ValueError, "ref_rejected_logps must have the shape"),
        (lambda t: fdiv_ops.f_dpo_loss(t, t, t, t, beta=0.0), ValueError, "beta must be"),
        (lambda t: fdiv_ops.f_dpo_loss(t, t, t, t, label_smoothing=0.7), ValueError, "label_smoothing"),
        (lambda t: fdiv_ops.f_dpo_loss(t, t, t, t, divergence="kl"), ValueError, "valid: forward_kl"),
        (lambda t: fdiv_ops.f_dpg_loss(t), ValueError, "target_logscores and log_ratio: give exactly one"),
        (
            lambda t: fdiv_ops.f_dpg_loss(t, target_logscores=t, log_ratio=t),
            ValueError,
            "target_logscores and log_ratio: give exactly one",
        ),
        (
            lambda t: fdiv_ops.f_dpg_loss(t, target_logscores=t, group_size=4),
            ValueError,
            "B = 6 is not divisible by group_size = 4",
        ),
        (lambda t: fdiv_ops.f_dpg_loss(t, target_logscores=t, group_size=1), ValueError, "group_size must be"),
        (
            lambda t: fdiv_ops.f_dpg_loss(t, target_logscores=t, group_size=3, baseline=t),
            ValueError,
            "baseline must be 'mean' or None",
        ),
        (lambda t: fdiv_ops.f_dpg_loss(t, target_logscores=t[:2]), ValueError, "target_logscores must have the shape"),
        (lambda t: fdiv_ops.f_dpg_loss(t, target_logscores=t, log_z=t[:2]), ValueError, "log_z must be a scalar"),
        (lambda t: fdiv_ops.f_dpg_loss(t, target_logscores=t, baseline="median"), ValueError, "baseline must be"),
        (lambda t: fdiv_ops.f_dpg_loss(t, log_ratio=t, log_z=0.0), ValueError, "log_z goes with"),
        (lambda t: fdiv_ops.f_dpg_loss(t[None], target_logscores=t), ValueError, "policy_logprobs must have shape"),
        (lambda t: fdiv_ops.group_normalized_advantages(t, 4), ValueError, "not divisible by group_size"),
        (lambda t: fdiv_ops.FDPG(num_contexts=0), ValueError, "num_contexts"),
        (
            lambda t: fdiv_ops.FDPG(num_contexts=2)(t, t, context=torch.tensor([0, 1, 2, 0, 1, 0])),
            ValueError,
            "context ids must lie",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.randn(6))


@pytest.mark.parametrize(
    "divergence, finite",
    [
        ("forward_kl", True),
        ("js", True),
        (fdiv_ops.gkd_jsd(0.5), True),
        ("total_variation", True),
        ("squared_hellinger", True),
        (fdiv_ops.alpha(0.5), True),
        ("reverse_kl", False),
        (fdiv_ops.gkd_jsd(1.0), False),
    ],
    ids=str,
)
def test_f_dpg_hard_constraint_is_finite_exactly_where_psi_at_zero_is(divergence, finite):
    # The documented rule: log P = -inf gives the bounded reward -psi(0) where psi(0) is finite; where it is
    # infinite, D_f is infinite and the loss says so (NaN) rather than inventing a penalty.
    logp = torch.log_softmax(torch.randn(6, dtype=torch.float64), 0).requires_grad_()
    target = torch.tensor([-1.0, -2.0, float("-inf"), -0.5, float("-inf"), -3.0], dtype=torch.float64)
    loss, _ = fdiv_ops.f_dpg_loss(logp, target_logscores=target, divergence=divergence)
    (grad,) = torch.autograd.grad(loss, logp)
    assert bool(torch.isfinite(loss)) == finite and bool(torch.isfinite(grad).all()) == finite
