"""f_distill_loss against the float64 eager reference (docs/math.md §2), its registration, and its errors.

The loss is DMD's stop-gradient surrogate: its value is 0.5 * mean(g^2) while its gradient treats g as
detached, so a literal gradcheck of the value cannot hold (not for the reference either). The gradient is
instead held against float64 autograd of the reference surrogate, and the registration against opcheck.
"""

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference as ref

H_DIVERGENCES = [
    "reverse_kl",
    "forward_kl",
    "js",
    "squared_hellinger",
    "softened_rkl",
    "jeffreys",
    "pearson_chi2",
    "neyman_chi2",
    fdiv_ops.gkd_jsd(0.5),
    fdiv_ops.alpha(0.5),
    fdiv_ops.alpha(-1.0),
    fdiv_ops.skew_forward_kl(0.1),
    fdiv_ops.skew_reverse_kl(0.1),
]


def _inputs(shape, dtype=torch.float32, device="cpu", heads=2):
    x = torch.randn(shape, dtype=torch.float64, device=device)
    teacher = x + 0.3 * torch.randn(shape, dtype=torch.float64, device=device)
    fake = x + 0.3 * torch.randn(shape, dtype=torch.float64, device=device)
    logits = 2.0 * torch.randn(shape[0], heads, dtype=torch.float64, device=device)
    return [t.to(dtype) for t in (x, teacher, fake)] + [logits.to(dtype)]


def _fused(x, teacher, fake, logits, grad_scale=1.0, **kw):
    x = x.detach().clone().requires_grad_()
    loss = fdiv_ops.f_distill_loss(x, teacher, fake, logits, **kw)
    (loss * grad_scale).backward()
    return loss.detach(), x.grad


def _reference(x, teacher, fake, logits, grad_scale=1.0, **kw):
    x = x.detach().double().clone().requires_grad_()
    logits = None if logits is None else logits.double()
    loss = ref.f_distill_loss(x, teacher.double(), fake.double(), logits, **kw)
    (loss * grad_scale).backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("divergence", H_DIVERGENCES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(divergence, reduction, dtype, device):
    x, t, f, logits = _inputs((6, 3, 17, 19), dtype, device)  # odd D = 3 * 17 * 19
    kw = dict(divergence=divergence, reduction=reduction)
    loss, grad = _fused(x, t, f, logits, **kw)
    want_loss, want_grad = _reference(x, t, f, logits, **kw)
    tol = dict(rtol=1e-5, atol=1e-9) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-15)
    assert loss.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), want_loss, **tol)
    torch.testing.assert_close(grad.double(), want_grad, **tol)


@pytest.mark.parametrize("normalize", [True, False])
def test_without_logits_is_dmd2_and_normalize_flag(normalize, device):
    x, t, f, logits = _inputs((4, 5, 7), device=device)
    loss, grad = _fused(x, t, f, None)
    want_loss, want_grad = _reference(x, t, f, None)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-9)
    loss, grad = _fused(x, t, f, logits, divergence="forward_kl", normalize=normalize)
    want_loss, want_grad = _reference(x, t, f, logits, divergence="forward_kl", normalize=normalize)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-9)


# On CUDA: B1 and D1 take the on-chip path, multichunk the sm_90 cluster path, chunked the two-pass path.
@pytest.mark.parametrize(
    "shape", [(1, 969), (3, 40_000), (2, 450_001), (2, 1), (5,)], ids=["B1", "multichunk", "chunked", "D1", "1d"]
)
def test_awkward_shapes_and_grad_output(shape, device):
    x, t, f, logits = _inputs(shape, device=device, heads=1)
    logits = logits[:, 0]  # (B,) logits
    loss, grad = _fused(x, t, f, logits, grad_scale=-2.5, divergence="js")
    want_loss, want_grad = _reference(x, t, f, logits, grad_scale=-2.5, divergence="js")
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-9)


def test_non_contiguous_inputs(device):
    x, t, f, logits = _inputs((8, 6, 5), device=device, heads=3)
    x, t, f = (v.transpose(1, 2) for v in (x, t, f))
    logits = logits.t().contiguous().t()  # (B, K) with strides (1, B)
    assert not x.is_contiguous() and not logits.is_contiguous()
    _, grad = _fused(x, t, f, logits, divergence="squared_hellinger")
    _, want_grad = _reference(x, t, f, logits, divergence="squared_hellinger")
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-9)
    assert grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_twice_eager_error(dtype, device):
    x, t, f, logits = _inputs((8, 4, 32, 32), torch.float64, device)
    for divergence in ("reverse_kl", "js", "forward_kl"):
        kw = dict(divergence=divergence)
        truth_loss, truth = _reference(x, t, f, logits, **kw)
        loss, grad = _fused(*(v.to(dtype) for v in (x, t, f)), logits.float(), **kw)
        xe = x.to(dtype).requires_grad_()
        eager_loss = ref.f_distill_loss(xe, t.to(dtype), f.to(dtype), logits.float(), **kw)
        eager_loss.backward()
        scale = truth.abs().max()
        err = ((grad.double() - truth).abs().max() / scale).item()
        eager_err = ((xe.grad.double() - truth).abs().max() / scale).item()
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert err <= 2 * eager_err, (divergence, err, eager_err)
        eager_loss_err = abs(eager_loss.double() - truth_loss) / truth_loss
        assert abs(loss.double() - truth_loss) / truth_loss <= max(2 * eager_loss_err, 1e-5)


def test_extreme_inputs_stay_finite(device):
    x, t, f, logits = _inputs((4, 300), device=device)
    logits = torch.tensor([[1e4, 1e4], [-1e4, -1e4], [0.0, 0.0], [30.0, -30.0]], device=device)
    x = x * 1e4
    for divergence in H_DIVERGENCES:
        loss, grad = _fused(x, t, f, logits, divergence=divergence)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), str(divergence)
    same = x.clone()  # x == teacher: the normaliser is eps, still finite
    loss, grad = _fused(x, same, f, logits, divergence="js")
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_nan_input_propagates_like_reference():
    x, t, f, logits = _inputs((3, 10))
    x[1, 4] = float("nan")
    loss, grad = _fused(x, t, f, logits, divergence="js")
    _, want = _reference(x, t, f, logits, divergence="js")
    assert torch.isnan(loss)
    assert torch.isnan(grad[1]).all() and torch.isfinite(grad[0]).all() and torch.isnan(want[1]).all()


def test_second_backward_through_the_same_graph_is_refused():
    x, t, f, logits = _inputs((2, 5))
    x.requires_grad_()
    loss = fdiv_ops.f_distill_loss(x, t, f, logits, divergence="js")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_returned_statistics():
    x, t, f, logits = _inputs((5, 3, 4))
    out = fdiv_ops.f_distill(x, t, f, logits, divergence="js")
    r, hb = ref.f_distill_weights(logits.double(), "js")
    torch.testing.assert_close(out.ratio.double(), r, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.h.double(), hb / (hb.mean() + 1e-6), rtol=1e-6, atol=1e-7)
    want_norm = (x - t).abs().reshape(5, -1).mean(1)
    torch.testing.assert_close(out.normalizer, want_norm, rtol=1e-6, atol=1e-7)


def test_opcheck():
    x, t, f, logits = _inputs((3, 4, 5))
    x.requires_grad_()
    from fdiv_ops.ops.f_distill import compute_weights, f_distill_op, weights_op

    _f_distill_op, _weights_op = f_distill_op.op, weights_op.op

    js = fdiv_ops.resolve("js")
    _, _, stats = compute_weights(logits, js, False, 10.0, 0.1, 20.0)
    common = (js.kernel_id, 0.0, 10.0, 0.1, 20.0)
    torch.library.opcheck(_f_distill_op, f_distill_op.op_args(x, t, f, logits, None, None, *common, True, 1e-6, "mean"))
    torch.library.opcheck(
        _f_distill_op, f_distill_op.op_args(x, t, f, logits, torch.rand(3) + 0.5, stats, *common, True, 1e-6, "sum")
    )
    torch.library.opcheck(_f_distill_op, f_distill_op.op_args(x, t, f, None, None, None, *common, False, 1e-6, "sum"))
    torch.library.opcheck(_weights_op, weights_op.op_args(logits, None, False, 10.0, 0.1, 20.0, 2, 0.0))


def test_eager_fast_path_equals_the_registered_op():
    from fdiv_ops.ops.f_distill import f_distill_op

    _f_distill_op, _FDistillEager = f_distill_op.op, f_distill_op._eager

    x, t, f, logits = _inputs((3, 4, 5))
    js = fdiv_ops.resolve("js")
    rest = (t, f, logits, None, None, js.kernel_id, 0.0, 10.0, 0.1, 20.0, True, 1e-6, "mean")
    grads = []
    for fn in (_FDistillEager.apply, lambda *a: _f_distill_op(*f_distill_op.op_args(*a))):
        xg = x.clone().requires_grad_()
        out = fn(xg, *rest)
        (out[0] * 3.0).backward()
        grads.append((out[0].detach(), xg.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_torch_compile_fullgraph():
    x, t, f, logits = _inputs((4, 3, 8))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(x, t, f, logits):
        return fdiv_ops.f_distill_loss(x, t, f, logits, divergence="js") * 2.0

    xc = x.clone().requires_grad_()
    step(xc, t, f, logits).backward()
    _, want = _reference(x, t, f, logits, grad_scale=2.0, divergence="js")
    torch.testing.assert_close(xc.grad.double(), want, rtol=1e-5, atol=1e-9)


def test_module_time_bins_match_fastgen_rule():
    x, t, f, logits = _inputs((6, 10))
    time = torch.tensor([0.05, 0.15, 0.12, 0.95, 0.5, 0.55])
    module = fdiv_ops.FDistillLoss("js", num_time_bins=10, ema_rate=0.5, time_range=(0.0, 1.0))
    xg = x.clone().requires_grad_()
    module(xg, t, f, logits, time=time).backward()
    r, _ = ref.f_distill_weights(logits.double(), "js")
    idx = (time.double() / 0.1).floor().long().clamp(0, 9)
    bins = torch.ones(10, dtype=torch.float64)
    for k in range(10):
        sel = idx == k
        if sel.any():
            bins[k] = 0.5 * bins[k] + 0.5 * r[sel].mean()
    torch.testing.assert_close(module.bins.double(), bins, rtol=1e-6, atol=1e-7)
    _, want = _reference(x, t, f, logits, divergence="js", ratio_divisor=bins[idx] + 1e-6)
    torch.testing.assert_close(xg.grad.double(), want, rtol=1e-5, atol=1e-9)
    assert module.last_h.shape == (6,) and module.last_normalizer.shape == (6,)
    module.eval()
    before = module.bins.clone()
    module(x, t, f, logits, time=time)
    assert torch.equal(before, module.bins)  # eval mode leaves the bins alone


def test_module_divergence_estimate_and_time_without_bins():
    x, t, f, logits = _inputs((6, 10))
    module = fdiv_ops.FDistillLoss("js")
    assert module.last_divergence_estimate is None
    module(x, t, f, logits)
    r, _ = ref.f_distill_weights(logits.double(), "js")
    want = ref.f("js", torch.log(r)).mean()
    torch.testing.assert_close(module.last_divergence_estimate.double(), want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="num_time_bins = 0"):
        module(x, t, f, logits, time=torch.rand(6))
    assert fdiv_ops.FDistillLoss().divergence.name == "reverse_kl"  # the function's default too


def test_cuda_tensor_on_cpu_only_build_is_a_clear_error():
    if fdiv_ops.build_info()["cuda"]:
        pytest.skip("this build has CUDA")
    from fdiv_ops._cuda_status import require_cuda

    # What every op's launch calls for a CUDA tensor (torch here may have no CUDA to make one with).
    with pytest.raises(RuntimeError, match="built without CUDA"):
        require_cuda(torch.device("cuda"))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t[:, :2], f, lg), ValueError, "teacher_x0 must have the shape"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f.double(), lg), TypeError, "fake_x0 must have the dtype"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg[:2]), ValueError, "disc_logits must have shape"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg[..., None]), ValueError, "disc_logits must have"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x[:0], t[:0], f[:0], lg[:0]), ValueError, "B >= 1"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg, ratio_clip=(2.0, 1.0)), ValueError, "ratio_clip"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg, ratio_clip=(0.0, 1.0)), ValueError, "ratio_clip"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg, divergence="kl"), ValueError, "valid: forward_kl"),
        (
            lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg, divergence="total_variation"),
            ValueError,
            "total_variation has h = 0",
        ),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, None, divergence="js"), ValueError, "only reverse_kl"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg, eps=0.0), ValueError, "eps must be"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x, t, f, lg, reduction="avg"), ValueError, "reduction must"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x.long(), t, f, lg), TypeError, "x must have a floating dtype"),
        (lambda x, t, f, lg: fdiv_ops.f_distill_loss(x.numpy(), t, f, lg), TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    x, t, f, logits = _inputs((4, 3, 5))
    with pytest.raises(error, match=message):
        call(x, t, f, logits)


# ---------------------------------------------------------------------------------------------------
# Numerics at the edges (issue 16 items 1 and 5) and the CUDA paths (issues 12 and 13).


def _closed_form(x, teacher, fake, logits, divergence="reverse_kl", reduction="mean", skip=None, eps=1e-6):
    """(loss, grad, per-sample losses) straight from the formula in float64 (docs/math.md §2).

    Unlike the reference's 0.5 * mse(x, x - g) surrogate, this never subtracts g from x, so it stays exact when
    |x| dwarfs g (inputs near 1e20). `skip`: samples left out of the batch mean of h (their own results are NaN).
    """
    x, teacher, fake = (v.detach().double().cpu() for v in (x, teacher, fake))
    batch = x.shape[0]
    d = (fake - teacher).reshape(batch, -1)
    if logits is None:
        weight = torch.ones(batch, dtype=torch.float64)
    else:
        r = logits.detach().double().cpu().reshape(batch, -1).mean(1).clamp(-10, 10).exp().clamp(0.1, 20)
        hb = ref.h(divergence, r.log())
        keep = torch.ones(batch, dtype=torch.bool) if skip is None else ~skip
        weight = hb / (hb[keep].mean() + 1e-6)
    w = weight / ((x - teacher).reshape(batch, -1).abs().mean(1) + eps)
    # "mean": over every element; "none": each sample's mean over its D elements; "sum": 1
    scale = {"mean": 1.0 / d.numel(), "none": 1.0 / d.shape[1], "sum": 1.0}[reduction]
    per_sample = 0.5 * scale * w**2 * (d**2).sum(1)
    return per_sample.sum(), (scale * w[:, None] * d).reshape(x.shape), per_sample


@pytest.mark.parametrize("magnitude", [1e19, 1e21, 1e23])
def test_huge_inputs_give_the_finite_loss(magnitude, device):
    # w_b^2 * sum d^2 overflowed float32 (inf/NaN loss) although the loss is ~1 and the gradient was right.
    x, t, f, logits = _inputs((4, 2, 500), device=device)
    x, t, f = (v * magnitude for v in (x, t, f))
    loss, grad = _fused(x, t, f, logits, divergence="js")
    want_loss, want_grad, _ = _closed_form(x, t, f, logits, "js")
    assert 0.1 < want_loss < 10
    torch.testing.assert_close(loss.double().cpu(), want_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double().cpu(), want_grad, rtol=1e-5, atol=1e-12)


def test_huge_float64_inputs_give_the_finite_loss():
    # float64 squares overflow near 1e160: the CPU sums such a sample again, scaled.
    x, t, f, logits = _inputs((3, 400), torch.float64)
    x, t, f = (v * 1e160 for v in (x, t, f))
    loss, grad = _fused(x, t, f, logits, divergence="forward_kl")
    # (w d)^2 is unchanged when x, t, f and eps are all divided by 1e160: the truth without overflow
    want_loss, want_grad, _ = _closed_form(x / 1e160, t / 1e160, f / 1e160, logits, "forward_kl", eps=1e-166)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("divergence", [fdiv_ops.alpha(30.0), fdiv_ops.alpha(-40.0)], ids=str)
def test_extreme_alpha_gives_finite_weights(divergence, device):
    # h = 20^30 (or 0.1^-40) overflows float32: h is passed in log space and normalised there.
    x, t, f, _ = _inputs((4, 100), device=device)
    logits = torch.tensor([[5.0], [-5.0], [0.0], [2.0]], device=device)
    out = fdiv_ops.f_distill(x, t, f, logits, divergence=divergence)
    loss, grad = _fused(x, t, f, logits, divergence=divergence)
    want_loss, want_grad, _ = _closed_form(x, t, f, logits, divergence)
    # log h near 90 is stored in float32 (absolute error ~4e-6), so h carries ~4e-6 relative error
    torch.testing.assert_close(loss.double().cpu(), want_loss, rtol=2e-5, atol=0)
    torch.testing.assert_close(grad.double().cpu(), want_grad, rtol=2e-5, atol=1e-12)
    assert torch.isfinite(out.h).all() and torch.isfinite(out.ratio).all()


def test_weights_statistics_are_scaled_consistently_for_extreme_alpha():
    # [sum h, n] are kept as e^-c [sum h, n] with c fixed by the divergence and the clip: summing two ranks'
    # statistics (what the all-reduce does) gives the statistics of the union of their batches.
    from fdiv_ops.ops.f_distill import compute_weights

    div = fdiv_ops.resolve(fdiv_ops.alpha(30.0))
    logits = torch.tensor([[3.0], [-1.0], [0.5], [-3.0], [2.9], [1.0]])
    _, _, both = compute_weights(logits, div, False, 10.0, 0.1, 20.0)
    _, _, first = compute_weights(logits[:2], div, False, 10.0, 0.1, 20.0)
    _, _, rest = compute_weights(logits[2:], div, False, 10.0, 0.1, 20.0)
    assert torch.isfinite(both).all()
    torch.testing.assert_close(first + rest, both, rtol=1e-6, atol=0)
    r = logits.double()[:, 0].clamp(-10, 10).exp().clamp(0.1, 20)
    torch.testing.assert_close(both[0].double() / both[1].double(), (r**30).mean(), rtol=1e-5, atol=0)


def test_nan_discriminator_logit_gives_nan_for_that_sample_only(device):
    # A NaN logit used to be clamped to r = 0.1, so a broken discriminator trained on silently.
    x, t, f, logits = _inputs((4, 3, 5), device=device)
    logits[1, 0] = float("nan")
    out = fdiv_ops.f_distill(x, t, f, logits, divergence="js")
    loss, grad = _fused(x, t, f, logits, divergence="js")
    skip = torch.tensor([False, True, False, False])
    _, want_grad, _ = _closed_form(x, t, f, logits, "js", skip=skip)
    assert torch.isnan(out.ratio[1]) and torch.isnan(out.h[1]) and torch.isnan(loss)
    assert torch.isnan(grad[1]).all()
    keep = ~skip.to(device)
    assert torch.isfinite(out.h[keep]).all() and torch.isfinite(grad[keep]).all()
    # the others are weighted by the mean of h over the samples that have one
    torch.testing.assert_close(grad[keep].double().cpu(), want_grad[~skip], rtol=1e-5, atol=1e-9)


def test_nan_in_inputs_gives_nan_for_that_sample_only(device):
    x, t, f, logits = _inputs((3, 10), device=device)
    t[0, 3] = float("nan")
    x[2, 1] = float("nan")
    loss, grad = _fused(x, t, f, logits, divergence="js")
    assert torch.isnan(loss) and torch.isnan(grad[0]).all() and torch.isnan(grad[2]).all()
    assert torch.isfinite(grad[1]).all()


def _supports_reduction_none():
    x, t, f, _ = _inputs((2, 3))
    try:
        fdiv_ops.f_distill_loss(x, t, f, reduction="none")
    except ValueError:
        return False
    return True


@pytest.mark.skipif(not _supports_reduction_none(), reason="the bindings do not pass sample_loss yet")
def test_reduction_none_gives_the_per_sample_losses(device):
    x, t, f, logits = _inputs((5, 2, 7), device=device)
    x, t, f = (v * 1e21 for v in (x, t, f))  # formed safely, like the total
    per = fdiv_ops.f_distill_loss(x, t, f, logits, divergence="js", reduction="none")
    _, _, want = _closed_form(x, t, f, logits, "js", reduction="none")
    torch.testing.assert_close(per.double().cpu(), want, rtol=1e-5, atol=0)


def _cpu_and_cuda(shape, dtype, divergence="js", heads=2, prepare=None):
    x, t, f, logits = _inputs(shape, dtype, heads=heads)
    if prepare is not None:
        prepare(x, t, f, logits)
    results = []
    for device in ("cpu", "cuda"):
        args = [v.to(device) for v in (x, t, f, logits)]
        out = fdiv_ops.f_distill(*args, divergence=divergence)
        loss, grad = _fused(*args, divergence=divergence)
        results.append((loss.cpu(), grad.cpu(), out.h.cpu(), out.normalizer.cpu()))
    return (x, t, f, logits), results


@pytest.mark.cuda
def test_cuda_cluster_path_bf16_large_samples():
    # B = 64 x 16x128x128 bf16: the sm_90 cluster path (16-block clusters where allowed), chunked elsewhere.
    x, t, f, logits = _inputs((64, 16, 128, 128), torch.float32, device="cuda", heads=4)
    x, t, f = (v.bfloat16() for v in (x, t, f))
    loss, grad = _fused(x, t, f, logits, divergence="js")
    want_loss, want_grad, _ = _closed_form(x, t, f, logits, "js")
    scale = want_grad.abs().max()
    assert grad.dtype == torch.bfloat16
    assert ((grad.double().cpu() - want_grad).abs().max() / scale).item() < 8e-3  # bf16 rounding of w d
    torch.testing.assert_close(loss.double().cpu(), want_loss, rtol=1e-5, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [40_001, 40_003])
def test_cuda_cluster_path_odd_dim_and_misaligned(dim):
    # Odd D: rows start at every 4-byte offset (vector head and tail); a misaligned x forces the scalar loop.
    (x, t, f, logits), results = _cpu_and_cuda((6, dim), torch.float32)
    for loss, grad, *_ in results:
        want_loss, want_grad, _ = _closed_form(x, t, f, logits, "js")
        torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-9)
    storage = torch.randn(6 * dim + 1, device="cuda")
    xm = storage[1:].view(6, dim)  # contiguous, but 4 bytes off the others' 16-byte alignment
    xm.copy_(x.cuda())
    loss, grad = _fused(xm, t.cuda(), f.cuda(), logits.cuda(), divergence="js")
    want_loss, want_grad, _ = _closed_form(x, t, f, logits, "js")
    torch.testing.assert_close(grad.double().cpu(), want_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(4, 300), (3, 40_000), (2, 450_001)], ids=["on_chip", "cluster", "chunked"])
def test_cuda_nan_and_inf_match_cpu(shape):
    def poison(x, t, f, logits):
        t[0, 7] = float("nan")
        t[1, 5] = float("inf")
        logits[-1, 0] = float("nan")

    _, ((cpu_loss, cpu_grad, cpu_h, cpu_n), (gpu_loss, gpu_grad, gpu_h, gpu_n)) = _cpu_and_cuda(
        shape, torch.float32, prepare=poison
    )
    # CPU sums in float32 (vector partial sums), CUDA in double: up to ~1e-5 apart over 450k elements
    assert torch.isnan(cpu_loss) and torch.isnan(gpu_loss)
    torch.testing.assert_close(gpu_h, cpu_h, rtol=1e-6, atol=0, equal_nan=True)
    torch.testing.assert_close(gpu_n, cpu_n, rtol=5e-5, atol=0, equal_nan=True)
    assert torch.equal(torch.isnan(gpu_grad), torch.isnan(cpu_grad))
    assert torch.isnan(cpu_grad[-1]).all()  # the NaN logit's sample
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=5e-5, atol=1e-9, equal_nan=True)


@pytest.mark.cuda
def test_cuda_multichunk_and_chunked_match_cpu_in_every_dtype():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for shape in ((3, 40_000), (2, 450_001)):
            _, ((cpu_loss, cpu_grad, *_), (gpu_loss, gpu_grad, *_)) = _cpu_and_cuda(shape, dtype)
            # CPU sums 32-bit data in float32, CUDA in double: the two agree to the CPU's rounding (~1e-5)
            tol = dict(rtol=5e-5, atol=1e-9) if dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=1e-6)
            torch.testing.assert_close(gpu_loss, cpu_loss, rtol=5e-5, atol=0)
            torch.testing.assert_close(gpu_grad.double(), cpu_grad.double(), **tol)
