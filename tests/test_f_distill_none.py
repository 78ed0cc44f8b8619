"""f_distill_loss(reduction="none"): per-sample losses (B,), each 0.5 * mean_i g_bi^2 over the sample's D elements
(their mean is the "mean" loss, as for 0.5 * mse(x, target, reduction="none").mean(dim=(1, ...))), written by the
kernel's sample_loss output; the gradient of sum_b v_b loss_b is v_b g_b / D. Checked against the float64
reference surrogate averaged per sample."""

import fdiv_ops
import pytest
import torch
import torch.nn.functional as F
from fdiv_ops import reference as ref
from fdiv_ops.ops.f_distill import f_distill_op


def _inputs(shape, dtype=torch.float64, heads=2):
    x = torch.randn(shape, dtype=torch.float64)
    teacher = x + 0.3 * torch.randn(shape, dtype=torch.float64)
    fake = x + 0.3 * torch.randn(shape, dtype=torch.float64)
    logits = 2.0 * torch.randn(shape[0], heads, dtype=torch.float64)
    return [t.to(dtype) for t in (x, teacher, fake)] + [logits.to(dtype)]


def _reference_per_sample(x, teacher, fake, logits, grad_output, **kw):
    """The reference's stop-gradient surrogate averaged per sample: (losses, d(sum v * losses)/dx)."""
    x = x.detach().double().clone().requires_grad_()
    # the reference's "sum" surrogate has the per-element target x - g
    batch = x.shape[0]
    per_element = ref.f_distill_loss(x, teacher.double(), fake.double(), logits, reduction="sum", **kw)
    target = (x - torch.autograd.grad(per_element, x, retain_graph=True)[0]).detach()  # x - g
    losses = 0.5 * F.mse_loss(x, target, reduction="none").reshape(batch, -1).mean(1)
    (grad,) = torch.autograd.grad((losses * grad_output).sum(), x)
    return losses.detach(), grad


@pytest.mark.parametrize("divergence", ["reverse_kl", "js", fdiv_ops.alpha(0.5)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_sample_losses_and_gradient_match_the_reference(divergence, dtype):
    x, t, f, logits = _inputs((5, 3, 7), dtype)
    logits = None if str(divergence) == "reverse_kl" else logits
    grad_output = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    xg = x.clone().requires_grad_()
    losses = fdiv_ops.f_distill_loss(xg, t, f, logits, divergence=divergence, reduction="none")
    assert losses.shape == (5,) and losses.dtype == dtype
    (losses * grad_output.to(dtype)).sum().backward()
    want_losses, want_grad = _reference_per_sample(
        x, t, f, None if logits is None else logits.double(), grad_output, divergence=divergence
    )
    tol = dict(rtol=1e-5, atol=1e-9) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(losses.detach().double(), want_losses, **tol)
    torch.testing.assert_close(xg.grad.double(), want_grad, **tol)


def test_none_is_consistent_with_mean_and_sum():
    x, t, f, logits = _inputs((4, 6, 5))
    none = fdiv_ops.f_distill_loss(x, t, f, logits, divergence="js", reduction="none")
    mean = fdiv_ops.f_distill_loss(x, t, f, logits, divergence="js", reduction="mean")
    total = fdiv_ops.f_distill_loss(x, t, f, logits, divergence="js", reduction="sum")
    torch.testing.assert_close(none.sum() * 30, total, rtol=1e-13, atol=0)
    torch.testing.assert_close(none.mean(), mean, rtol=1e-13, atol=0)


def test_opcheck_and_module_and_compile():
    x, t, f, logits = _inputs((3, 4, 5), torch.float64)
    js = fdiv_ops.resolve("js")
    args = (x.clone().requires_grad_(), t, f, logits, None, None, js.kernel_id, 0.0, 10.0, 0.1, 20.0, True, 1e-6)
    torch.library.opcheck(f_distill_op.op, f_distill_op.op_args(*args, "none"))
    module = fdiv_ops.FDistillLoss("js", reduction="none")
    assert module(x, t, f, logits).shape == (3,)
    step = torch.compile(
        lambda x: fdiv_ops.f_distill_loss(x, t, f, logits, divergence="js", reduction="none"),
        backend="aot_eager",
        fullgraph=True,
    )
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = step(xc), fdiv_ops.f_distill_loss(xe, t, f, logits, divergence="js", reduction="none")
    (got * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    (want * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)


def test_half_precision_per_sample_losses_are_float32():
    x, t, f, logits = _inputs((4, 64), torch.bfloat16)
    losses = fdiv_ops.f_distill_loss(x, t, f, logits.float(), divergence="js", reduction="none")
    assert losses.dtype == torch.float32 and losses.shape == (4,) and torch.isfinite(losses).all()
