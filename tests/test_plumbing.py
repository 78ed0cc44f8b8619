"""The shared op plumbing (fdiv_ops/ops/_plumbing.py): the eager fast path equals the registered op for every op,
double backward is a clear error rather than a silently wrong second derivative, the saved-gradient pattern's
float64 path supports repeated backward (f_distill checked against autograd of the reference surrogate), and
the binding binds the tensors' device."""

import contextlib

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference as ref
from torch.overrides import TorchFunctionMode


class _Dispatching(TorchFunctionMode):
    """A do-nothing function mode: while it is active, every op takes the registered torch.library path."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _f64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _cases():
    """(name, inputs, fn(*inputs) -> tensor to differentiate): every public op, small float64 shapes."""
    indices = torch.stack([torch.randperm(11)[:3] for _ in range(4)])
    teacher_topk = (indices, torch.log(torch.full((4, 3), 0.2, dtype=torch.float64)))
    labels = torch.tensor([1, -100, 3, 10])
    x, disc_logits, ref_chosen, ref_rejected = _f64(3, 7), _f64(3, 2), _f64(5), _f64(5)
    return [
        (
            "f_divergence_loss",
            (_f64(4, 11), _f64(4, 13)),
            lambda s, t: fdiv_ops.f_divergence_loss(s, t, divergence="js"),
        ),
        (
            "f_divergence_loss top-k",
            (_f64(4, 11),),
            lambda s: fdiv_ops.f_divergence_loss(s, teacher_topk=teacher_topk, reduction="none").sum(),
        ),
        (
            "fused_linear_f_divergence",
            (_f64(4, 5), _f64(11, 5), _f64(4, 3), _f64(11, 3)),
            lambda hs, ws, ht, wt: fdiv_ops.fused_linear_f_divergence(
                hs, ws, ht, wt, labels=labels.clamp_min(0), hard_loss_weight=0.5, chunk_size=3
            ),
        ),
        (
            "sequence_logprobs",
            (_f64(4, 11),),
            lambda z: sum(t.sum() for t in fdiv_ops.sequence_logprobs(z, labels, return_entropy=True)),
        ),
        (
            "fused_linear_sequence_logprobs",
            (_f64(4, 5), _f64(11, 5)),
            lambda h, w: fdiv_ops.fused_linear_sequence_logprobs(h, w, labels, chunk_size=3).sum(),
        ),
        (
            "f_distill_loss",
            (x,),
            lambda x: fdiv_ops.f_distill_loss(x, x.detach() + 0.3, x.detach() - 0.2, disc_logits, divergence="js"),
        ),
        ("divergence_terms", (_f64(6),), lambda l: fdiv_ops.divergence_terms(l, "js")[1].sum()),
        (
            "f_dpo_loss",
            (_f64(5), _f64(5)),
            lambda pc, pr: fdiv_ops.f_dpo_loss(pc, pr, ref_chosen, ref_rejected, divergence="js")[0].sum(),
        ),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


def _leaves(inputs):
    return [t.detach().clone().requires_grad_() for t in inputs]


@pytest.mark.parametrize("name, inputs, fn", CASES, ids=IDS)
def test_eager_fast_path_equals_the_registered_op(name, inputs, fn):
    results = []
    for dispatching in (False, True):
        leaves = _leaves(inputs)
        if dispatching:
            with _Dispatching():
                out = fn(*leaves)
        else:
            out = fn(*leaves)
        (out * 1.7).backward()
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_the_fast_path_is_taken_in_eager_mode_only():
    s, t = _f64(2, 5).requires_grad_(), _f64(2, 5)
    loss = fdiv_ops.f_divergence_loss(s, t, reduction="none")
    assert "eager" in type(loss.grad_fn.next_functions[0][0]).__name__
    with _Dispatching():
        loss = fdiv_ops.f_divergence_loss(s, t, reduction="none")
    assert "eager" not in type(loss.grad_fn.next_functions[0][0]).__name__


@pytest.mark.parametrize("name, inputs, fn", CASES, ids=IDS)
def test_double_backward_is_a_clear_error(name, inputs, fn):
    """create_graph=True would need the gradient's own derivative, which the kernels do not form: refused, on
    both paths, instead of returning a gradient with no grad_fn (or a wrong Hessian-vector product)."""
    for dispatching in (False, True):
        leaves = _leaves(inputs)
        with _Dispatching() if dispatching else contextlib.nullcontext():
            out = fn(*leaves)
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(out, leaves, create_graph=True)


def test_gradgradcheck_reports_the_error():
    s, t = _f64(2, 5).requires_grad_(), _f64(2, 5)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.gradgradcheck(lambda s: fdiv_ops.f_divergence_loss(s, t, divergence="js"), (s,))


def test_first_order_gradcheck_still_holds():
    s, t = _f64(3, 6).requires_grad_(), _f64(3, 6)
    assert torch.autograd.gradcheck(lambda s: fdiv_ops.f_divergence_loss(s, t, divergence="js"), (s,))
    assert torch.autograd.gradcheck(lambda l: fdiv_ops.divergence_terms(l, "js")[1], (_f64(5).requires_grad_(),))


@pytest.mark.parametrize("divergence", ["reverse_kl", "js", fdiv_ops.alpha(0.5)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_f_distill_gradchecks_in_float64_through_the_registered_op(divergence, reduction):
    """The loss is a stop-gradient surrogate (value 0.5 mean g^2, gradient g / (B D)), so a numerical gradcheck
    of its value cannot hold, for the reference neither; what gradcheck's analytical side needs does: through
    torch.ops.fdiv_ops.f_distill in float64, repeated backward with different grad_outputs (retain_graph) gives
    grad_output times autograd of the reference surrogate, to float64 rounding."""
    x, teacher, fake = _f64(4, 3, 5), _f64(4, 3, 5), _f64(4, 3, 5)
    teacher, fake = x + 0.3 * teacher, x + 0.3 * fake
    logits = 2 * _f64(4, 2) if str(divergence) != "reverse_kl" else None
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad(
        ref.f_distill_loss(xr, teacher, fake, logits, divergence=divergence, reduction=reduction), xr
    )[0]
    xg = x.clone().requires_grad_()
    with _Dispatching():  # the registered op, as torch.compile and opcheck see it
        loss = fdiv_ops.f_distill_loss(xg, teacher, fake, logits, divergence=divergence, reduction=reduction)
    assert "eager" not in type(loss.grad_fn).__name__
    for grad_output in (1.0, -2.5, 1e-3):
        (got,) = torch.autograd.grad(loss, xg, torch.tensor(grad_output, dtype=torch.float64), retain_graph=True)
        torch.testing.assert_close(got, grad_output * want, rtol=1e-12, atol=1e-15)


def test_second_backward_is_refused_for_16_and_32_bit_only():
    for dtype, refused in ((torch.float32, True), (torch.float64, False)):
        s = torch.randn(2, 9, dtype=dtype, requires_grad=True)
        loss = fdiv_ops.f_divergence_loss(s, torch.randn(2, 9, dtype=dtype))
        loss.backward(retain_graph=True)
        if refused:
            with pytest.raises(RuntimeError, match="backward ran twice"):
                loss.backward()
        else:
            first = s.grad.clone()
            loss.backward()
            torch.testing.assert_close(s.grad, 2 * first)


@pytest.mark.cuda
def test_a_tensor_on_another_device_runs_there():
    """The binding makes the tensors' device current for the launch (and restores the caller's)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    s, t = torch.randn(4, 33, device="cuda:1"), torch.randn(4, 33, device="cuda:1")
    torch.cuda.set_device(0)
    got = fdiv_ops.f_divergence_loss(s, t, divergence="js")
    assert torch.cuda.current_device() == 0 and got.device == torch.device("cuda:1")
    torch.testing.assert_close(got.cpu(), fdiv_ops.f_divergence_loss(s.cpu(), t.cpu(), divergence="js"))


@pytest.mark.parametrize("name, inputs, fn", CASES, ids=IDS)
def test_capsules_and_direct_tensors_give_the_same_results(name, inputs, fn, monkeypatch):
    """torch >= 2.10: tensors reach the bindings as they are (the DLPack C exchange table); older torch: as
    to_dlpack capsules. Both are the same reads of the same memory."""
    from fdiv_ops.ops import _plumbing

    results = []
    for direct in (True, False):
        monkeypatch.setattr(_plumbing, "DIRECT_TENSORS", direct)
        leaves = _leaves(inputs)
        out = fn(*leaves)
        out.backward()
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_capsule_path_validates_alike(monkeypatch):
    from fdiv_ops.ops import _plumbing

    monkeypatch.setattr(_plumbing, "DIRECT_TENSORS", False)
    rows = torch.randn(64, 1024), torch.randn(1, 1024), torch.ones(64)
    with pytest.raises(ValueError, match=r"teacher must have shape \(rows, V'\)"):
        torch.ops.fdiv_ops.f_divergence(*rows, 0, 0.0, torch.tensor(1.0, dtype=torch.float64), False)
    with pytest.raises(TypeError, match="must be a tensor"):
        fdiv_ops._C.divergence_terms(log_ratio="x", f=None, psi=None, h=None, kind=0, param=0.0)
