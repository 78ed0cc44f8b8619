"""fused_linear_f_divergence against f_divergence_loss on explicitly computed logits and against the float64
eager reference (logits materialised), the hard cross-entropy term, the in-place row kernel it relies on,
its registration (opcheck, torch.compile) and its errors. Tiny shapes: the whole file runs in seconds."""

import math

import fdiv_ops
import pytest
import torch
import torch.nn.functional as F
from fdiv_ops import _C
from fdiv_ops import reference as ref
from fdiv_ops.ops._plumbing import launch
from fdiv_ops.ops.fused_linear import CPU_LOGITS_BUDGET, auto_chunk_size, fused_op

_fused_op = fused_op.op

ROWS, H_S, H_T, V = 11, 8, 6, 37


def _inputs(dtype=torch.float64, device="cpu", rows=ROWS, h_s=H_S, h_t=H_T, v_s=V, v_t=V, bias=True, lead=None):
    gen = torch.Generator().manual_seed(1)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)

    lead = (rows,) if lead is None else lead
    inputs = {
        "student_hidden": rnd(*lead, h_s),
        "student_weight": rnd(v_s, h_s, scale=h_s**-0.5 * 2),
        "teacher_hidden": rnd(*lead, h_t),
        "teacher_weight": rnd(v_t, h_t, scale=h_t**-0.5 * 2),
        "student_bias": rnd(v_s) if bias else None,
        "teacher_bias": rnd(v_t) if bias else None,
    }
    labels = torch.randint(0, v_s, lead, generator=gen).to(device)
    labels.view(-1)[::4] = -100
    return inputs, labels


STUDENT = ("student_hidden", "student_weight", "student_bias")


def _leaves(inputs, dtype=None):
    out = {}
    for name, value in inputs.items():
        if value is None:
            out[name] = None
            continue
        value = value.detach().clone() if dtype is None else value.detach().to(dtype)
        out[name] = value.requires_grad_() if name in STUDENT else value
    return out


def _grads(loss, leaves):
    names = [n for n in STUDENT if leaves[n] is not None]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return dict(zip(names, grads, strict=True))


def _run_fused(inputs, grad_output=1.0, **kw):
    leaves = _leaves(inputs)
    loss = fdiv_ops.fused_linear_f_divergence(
        leaves["student_hidden"],
        leaves["student_weight"],
        leaves["teacher_hidden"],
        leaves["teacher_weight"],
        student_bias=leaves["student_bias"],
        teacher_bias=leaves["teacher_bias"],
        **kw,
    )
    return loss.detach(), _grads(loss * grad_output, leaves)


def _run_explicit(inputs, grad_output=1.0, dtype=None, hard_loss_weight=0.0, ignore_index=-100, **kw):
    """f_divergence_loss on logits computed with F.linear (+ an eager CE for the hard term)."""
    leaves = _leaves(inputs, dtype)
    student_logits = F.linear(leaves["student_hidden"], leaves["student_weight"], leaves["student_bias"])
    teacher_logits = F.linear(leaves["teacher_hidden"], leaves["teacher_weight"], leaves["teacher_bias"])
    loss = fdiv_ops.f_divergence_loss(student_logits, teacher_logits, ignore_index=ignore_index, **kw)
    if hard_loss_weight:
        labels = kw["labels"]
        ce = F.cross_entropy(
            student_logits.reshape(-1, student_logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=ignore_index,
            reduction="sum",
        )
        count = (labels != ignore_index).sum().clamp_min(1) if kw.get("reduction", "batchmean") == "batchmean" else 1
        loss = loss + hard_loss_weight * ce / count
    return loss.detach(), _grads(loss * grad_output, leaves)


def _run_reference(inputs, grad_output=1.0, **kw):
    leaves = _leaves(inputs, torch.float64)
    loss = ref.fused_linear_f_divergence(
        leaves["student_hidden"],
        leaves["student_weight"],
        leaves["teacher_hidden"],
        leaves["teacher_weight"],
        student_bias=leaves["student_bias"],
        teacher_bias=leaves["teacher_bias"],
        **kw,
    )
    return loss.detach(), _grads(loss * grad_output, leaves)


def _close(got, want, dtype):
    rel = 1e-5 if dtype != torch.float64 else 1e-10
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got.double(), want.double(), rtol=rel, atol=rel * scale + 1e-12)


def _assert_same(got, want, dtype):
    (loss, grads), (want_loss, want_grads) = got, want
    _close(loss, want_loss, dtype)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        assert grads[name].dtype == dtype, name
        _close(grads[name], want_grads[name], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "js", fdiv_ops.gkd_jsd(0.3), "total_variation"], ids=str
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_equals_f_divergence_loss_on_explicit_logits(dtype, divergence, bias, device):
    inputs, labels = _inputs(dtype, device, bias=bias)
    kw = {"divergence": divergence, "labels": labels, "temperature": 1.5}
    # chunk 4 leaves a last chunk of 3 rows (11 = 4 + 4 + 3)
    got = _run_fused(inputs, chunk_size=4, **kw)
    _assert_same(got, _run_explicit(inputs, **kw), dtype)


@pytest.mark.parametrize("chunk_size", [1, 3, ROWS, 100, None])
def test_chunking_does_not_change_the_result(chunk_size, device):
    inputs, labels = _inputs(torch.float64, device)
    got = _run_fused(inputs, labels=labels, divergence="js", chunk_size=chunk_size)
    _assert_same(got, _run_reference(inputs, labels=labels, divergence="js"), torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 2.0], ids=["T1", "T2"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_hard_loss_weight_adds_eager_cross_entropy(temperature, reduction, device):
    inputs, labels = _inputs(torch.float64, device)
    kw = {"divergence": "reverse_kl", "labels": labels, "temperature": temperature, "reduction": reduction}
    got = _run_fused(inputs, chunk_size=5, hard_loss_weight=0.7, **kw)
    _assert_same(got, _run_explicit(inputs, hard_loss_weight=0.7, **kw), torch.float64)
    soft = _run_fused(inputs, chunk_size=5, **kw)[0]
    assert got[0] > soft  # the CE term is really there (positive)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference_with_everything_on(dtype, device):
    # H != H', V' = V + 3 (padding rule), a (B, T, H) batch, hard term, temperature, grad_output != 1
    inputs, labels = _inputs(dtype, device, lead=(2, 5), v_t=V + 3)
    kw = {"divergence": fdiv_ops.gkd_jsd(0.5), "labels": labels, "temperature": 2.0, "hard_loss_weight": 0.3}
    got = _run_fused(inputs, grad_output=3.0, chunk_size=3, **kw)
    _assert_same(got, _run_reference(inputs, grad_output=3.0, **kw), dtype)


def test_student_vocab_longer_than_teacher(device):
    inputs, labels = _inputs(torch.float64, device, v_t=V - 5)
    got = _run_fused(inputs, labels=labels, chunk_size=4, hard_loss_weight=0.2)
    _assert_same(got, _run_reference(inputs, labels=labels, hard_loss_weight=0.2), torch.float64)


def test_num_items_in_batch(device):
    inputs, labels = _inputs(torch.float64, device)
    for num_items in (17, torch.tensor(17.0, device=device)):
        got = _run_fused(inputs, labels=labels, num_items_in_batch=num_items, hard_loss_weight=0.5)
        _assert_same(
            got, _run_reference(inputs, labels=labels, num_items_in_batch=17, hard_loss_weight=0.5), torch.float64
        )


@pytest.mark.parametrize("hard", [0.0, 1.0])
def test_all_rows_ignored_gives_zero_not_nan(hard, device):
    inputs, labels = _inputs(torch.float32, device)
    labels.fill_(-100)
    loss, grads = _run_fused(inputs, labels=labels, hard_loss_weight=hard, chunk_size=4)
    assert loss.item() == 0.0
    for grad in grads.values():
        assert torch.count_nonzero(grad) == 0


def test_no_gradient_reaches_the_teacher_and_frozen_weight_is_skipped():
    inputs, labels = _inputs(torch.float64)
    teacher_hidden = inputs["teacher_hidden"].clone().requires_grad_()
    teacher_weight = inputs["teacher_weight"].clone().requires_grad_()
    student_hidden = inputs["student_hidden"].clone().requires_grad_()
    loss = fdiv_ops.fused_linear_f_divergence(
        student_hidden,
        inputs["student_weight"],
        teacher_hidden,
        teacher_weight,
        student_bias=inputs["student_bias"],
        teacher_bias=inputs["teacher_bias"],
        labels=labels,
    )
    loss.backward()
    assert teacher_hidden.grad is None and teacher_weight.grad is None
    want = _run_reference(inputs, labels=labels)[1]["student_hidden"]
    _close(student_hidden.grad, want, torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", fdiv_ops.gkd_jsd(0.5)], ids=str)
def test_half_precision_within_twice_eager_error(dtype, divergence, device):
    inputs, labels = _inputs(dtype, device, rows=16, h_s=64, h_t=48, v_s=1031, v_t=1031)
    kw = {"divergence": divergence, "labels": labels, "hard_loss_weight": 0.5}
    truth_loss, truth = _run_reference(inputs, **kw)  # float64 of the same (16-bit) inputs
    loss, grads = _run_fused(inputs, chunk_size=5, **kw)
    leaves = _leaves(inputs)  # eager PyTorch in that dtype: 16-bit GEMMs, 16-bit logits
    eager_loss = ref.fused_linear_f_divergence(
        leaves["student_hidden"],
        leaves["student_weight"],
        leaves["teacher_hidden"],
        leaves["teacher_weight"],
        student_bias=leaves["student_bias"],
        teacher_bias=leaves["teacher_bias"],
        **kw,
    )
    eager = _grads(eager_loss, leaves)
    assert loss.dtype == torch.float32
    for name in truth:
        assert grads[name].dtype == dtype
        scale = truth[name].abs().max()
        err = ((grads[name].double() - truth[name]).abs().max() / scale).item()
        eager_err = ((eager[name].double() - truth[name]).abs().max() / scale).item()
        assert math.isfinite(err), name
        assert err <= 2 * eager_err or math.isnan(eager_err), (name, err, eager_err)  # eager fp16 can overflow
    loss_err = abs(loss.double() - truth_loss).item()
    eager_loss_err = abs(eager_loss.double() - truth_loss).item()
    assert loss_err <= 2 * eager_loss_err or math.isnan(eager_loss_err) or loss_err <= 1e-6 * abs(truth_loss)


def _kernel(student, teacher, grad, labels, hard_weight, inv_t, device):
    rows = student.shape[0]
    scale = torch.full((rows,), 0.5, dtype=student.dtype, device=device)
    scale[1] = 0.0  # an ignored row
    loss = torch.empty(rows, dtype=student.dtype, device=device)
    launch(
        _C.f_divergence,
        device,
        student=student,
        teacher=teacher,
        row_scale=scale,
        row_loss=loss,
        grad=grad,
        labels=labels,
        kind=2,
        param=0.0,
        inv_temperature=inv_t,
        teacher_is_logprobs=False,
        hard_weight=hard_weight,
    )
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("vocabs", [(1031, 1031), (1031, 1000), (1000, 1031)], ids=str)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_row_kernel_may_write_the_gradient_over_the_student(dtype, vocabs, hard, device):
    """Pins the aliasing the fused op relies on: grad == student gives what separate buffers give."""
    vs, vt = vocabs
    student = (3 * torch.randn(4, vs, dtype=torch.float64)).to(device=device, dtype=dtype)
    teacher = (3 * torch.randn(4, vt, dtype=torch.float64)).to(device=device, dtype=dtype)
    labels = torch.randint(0, vs, (4,), device=device) if hard else None
    grad = torch.empty_like(student)
    loss = _kernel(student, teacher, grad, labels, 0.7, 0.5, device)
    in_place = student.clone()
    loss_in_place = _kernel(in_place, teacher, in_place, labels, 0.7, 0.5, device)
    torch.testing.assert_close(loss_in_place, loss, rtol=0, atol=0)
    torch.testing.assert_close(in_place, grad, rtol=0, atol=0)
    assert not torch.equal(grad, student)


def test_frozen_hidden_and_no_grad_mode():
    inputs, labels = _inputs(torch.float64)
    weight = inputs["student_weight"].clone().requires_grad_()
    loss = fdiv_ops.fused_linear_f_divergence(
        inputs["student_hidden"],
        weight,
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        student_bias=inputs["student_bias"],
        teacher_bias=inputs["teacher_bias"],
        labels=labels,
        chunk_size=4,
    )
    loss.backward()
    want_loss, want = _run_reference(inputs, labels=labels)
    _close(weight.grad, want["student_weight"], torch.float64)
    with torch.no_grad():
        loss = fdiv_ops.fused_linear_f_divergence(
            inputs["student_hidden"],
            weight,
            inputs["teacher_hidden"],
            inputs["teacher_weight"],
            student_bias=inputs["student_bias"],
            teacher_bias=inputs["teacher_bias"],
            labels=labels,
        )
    _close(loss, want_loss, torch.float64)
    assert not loss.requires_grad


def test_module_matches_function():
    inputs, labels = _inputs(torch.float64)
    module = fdiv_ops.FusedLinearFDivergenceLoss("js", temperature=2.0, hard_loss_weight=0.5, chunk_size=4)
    got = module(
        inputs["student_hidden"],
        inputs["student_weight"],
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        labels,
        student_bias=inputs["student_bias"],
        teacher_bias=inputs["teacher_bias"],
    )
    want = fdiv_ops.fused_linear_f_divergence(
        inputs["student_hidden"],
        inputs["student_weight"],
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        student_bias=inputs["student_bias"],
        teacher_bias=inputs["teacher_bias"],
        labels=labels,
        divergence="js",
        temperature=2.0,
        hard_loss_weight=0.5,
        chunk_size=4,
    )
    assert got.item() == want.item()
    assert "hard_loss_weight=0.5" in repr(module)


def test_auto_chunk_size():
    cpu = torch.device("cpu")
    assert auto_chunk_size(1024, 32000, 32000, cpu) == 1024  # small inputs: one chunk
    assert auto_chunk_size(100_000, 32000, 32000, cpu) == CPU_LOGITS_BUDGET // (4 * 32000)
    assert auto_chunk_size(10, 10**12, 10, cpu) == 1  # at least one row


def test_opcheck():
    inputs, labels = _inputs(torch.float64, rows=5, v_s=13, v_t=15)
    row_scale = torch.full((5,), 0.2, dtype=torch.float64)
    args = [
        inputs[n]
        for n in (
            "student_hidden",
            "student_weight",
            "student_bias",
            "teacher_hidden",
            "teacher_weight",
            "teacher_bias",
        )
    ]
    for name in STUDENT:
        inputs[name].requires_grad_()
    # float64 scales the saved gradients out of place, so every check runs; float32 scales in place.
    torch.library.opcheck(
        _fused_op, fused_op.op_args(*args, row_scale, labels.clamp_min(0), 0.5, 2, 0.0, 0.5, 2, True, True)
    )
    torch.library.opcheck(_fused_op, fused_op.op_args(*args, row_scale, None, 0.0, 0, 0.0, 1.0, 0, True, True))
    torch.library.opcheck(_fused_op, fused_op.op_args(*args, row_scale, None, 0.0, 0, 0.0, 1.0, 0, False, True))
    args32 = [a.detach().float().requires_grad_() for a in args]
    torch.library.opcheck(
        _fused_op,
        fused_op.op_args(*args32, row_scale.float(), None, 0.0, 0, 0.0, 1.0, 3, True, True),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_torch_compile_fullgraph():
    inputs, labels = _inputs(torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(hs, ws, ht, wt, bs, bt, labels):
        return (
            fdiv_ops.fused_linear_f_divergence(
                hs,
                ws,
                ht,
                wt,
                student_bias=bs,
                teacher_bias=bt,
                labels=labels,
                divergence="js",
                temperature=2.0,
                hard_loss_weight=0.5,
            )
            * 3.0
        )

    leaves = _leaves(inputs)
    loss = step(
        leaves["student_hidden"],
        leaves["student_weight"],
        leaves["teacher_hidden"],
        leaves["teacher_weight"],
        leaves["student_bias"],
        leaves["teacher_bias"],
        labels,
    )
    got = loss.detach(), _grads(loss, leaves)
    want = _run_reference(
        inputs, grad_output=3.0, labels=labels, divergence="js", temperature=2.0, hard_loss_weight=0.5
    )
    _close(got[0] / 3.0, want[0], torch.float32)
    for name in want[1]:
        _close(got[1][name], want[1][name], torch.float32)


def test_second_backward_through_the_same_graph_is_refused():
    inputs, _ = _inputs(torch.float32)
    leaves = _leaves(inputs)
    loss = fdiv_ops.fused_linear_f_divergence(
        leaves["student_hidden"], leaves["student_weight"], leaves["teacher_hidden"], leaves["teacher_weight"]
    )
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def _call(i, **kw):
    return fdiv_ops.fused_linear_f_divergence(
        i["student_hidden"], i["student_weight"], i["teacher_hidden"], i["teacher_weight"], **kw
    )


def _with(i, **changes):
    return {**i, **changes}


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda i, y: _call(_with(i, student_weight=i["student_weight"][:, :5])), ValueError, "student_weight must"),
        (lambda i, y: _call(_with(i, teacher_weight=i["teacher_weight"][:, :5])), ValueError, "teacher_weight must"),
        (lambda i, y: _call(_with(i, teacher_hidden=i["teacher_hidden"][:3])), ValueError, "teacher_hidden must"),
        (
            lambda i, y: _call(_with(i, teacher_weight=torch.zeros(V + 2000, H_T, dtype=torch.float64))),
            ValueError,
            "max_vocab_pad",
        ),
        (lambda i, y: _call(i, student_bias=torch.zeros(V + 1, dtype=torch.float64)), ValueError, "student_bias"),
        (lambda i, y: _call(i, teacher_bias=torch.zeros(3, dtype=torch.float64)), ValueError, "teacher_bias"),
        (lambda i, y: _call(i, labels=y[:4]), ValueError, "labels must have the leading shape"),
        (lambda i, y: _call(i, labels=y.float()), TypeError, "labels must be an integer"),
        (lambda i, y: _call(i, hard_loss_weight=0.5), ValueError, "labels are required"),
        (lambda i, y: _call(i, labels=y.clamp_min(0) + V, hard_loss_weight=0.5), ValueError, "labels must lie in"),
        (lambda i, y: _call(i, hard_loss_weight=-1.0), ValueError, "hard_loss_weight"),
        (lambda i, y: _call(i, reduction="none"), ValueError, "reduction must be"),
        (lambda i, y: _call(i, chunk_size=0), ValueError, "chunk_size"),
        (lambda i, y: _call(i, temperature=0.0), ValueError, "temperature"),
        (lambda i, y: _call(_with(i, student_weight=i["student_weight"].float())), TypeError, "student_weight must"),
        (lambda i, y: _call(_with(i, teacher_weight=i["teacher_weight"].float())), TypeError, "teacher_weight must"),
        (lambda i, y: _call(_with(i, student_hidden=i["student_hidden"].long())), TypeError, "student_hidden must"),
        (
            lambda i, y: _call(_with(i, teacher_hidden=i["teacher_hidden"].to("meta"))),
            ValueError,
            "teacher_hidden must be on a CPU or CUDA device",
        ),
    ],
)
def test_bad_input_names_the_argument(make, error, message):
    inputs, labels = _inputs(torch.float64)
    with pytest.raises(error, match=message):
        make(inputs, labels)


def test_gradcheck_float64():
    inputs, labels = _inputs(torch.float64, rows=5, h_s=4, h_t=3, v_s=9, v_t=11)
    leaves = _leaves(inputs)

    def loss(hs, ws, bs):
        return fdiv_ops.fused_linear_f_divergence(
            hs,
            ws,
            inputs["teacher_hidden"],
            inputs["teacher_weight"],
            student_bias=bs,
            teacher_bias=inputs["teacher_bias"],
            labels=labels,
            divergence="js",
            temperature=1.5,
            hard_loss_weight=0.4,
            chunk_size=2,
        )

    assert torch.autograd.gradcheck(loss, (leaves["student_hidden"], leaves["student_weight"], leaves["student_bias"]))


def test_non_contiguous_shifted_hidden_states(device):
    # what a causal-LM recipe passes: hidden[:, :-1] of a (B, T, H) tensor, labels[:, 1:]
    inputs, labels = _inputs(torch.float64, device, lead=(2, 6))
    shifted = {k: (v[:, :-1] if k.endswith("hidden") else v) for k, v in inputs.items()}
    assert not shifted["student_hidden"].is_contiguous()
    got = _run_fused(shifted, labels=labels[:, 1:], hard_loss_weight=0.3, chunk_size=3)
    _assert_same(got, _run_reference(shifted, labels=labels[:, 1:], hard_loss_weight=0.3), torch.float64)
