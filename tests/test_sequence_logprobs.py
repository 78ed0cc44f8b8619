"""sequence_logprobs and fused_linear_sequence_logprobs against log_softmax + gather in float64 (values and
gradients), their registration (opcheck, torch.compile), awkward inputs and errors."""

import math

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference as ref
from fdiv_ops.ops.sequence_logprobs import linear_backward_op, linear_op, seq_backward_op, seq_op

_seq_op, _seq_backward_op, _linear_op, _linear_backward_op = (
    o.op for o in (seq_op, seq_backward_op, linear_op, linear_backward_op)
)


def _inputs(shape, vocab, dtype=torch.float64, device="cpu", scale=3.0, ignore_frac=0.2):
    logits = (scale * torch.randn(*shape, vocab, dtype=torch.float64)).to(device)
    labels = torch.randint(0, vocab, shape).to(device)
    drop = torch.rand(shape).to(device) < ignore_frac
    labels = torch.where(drop, torch.full_like(labels, -100), labels)
    return logits.to(dtype), labels


def _fused(logits, labels, grads, **kw):
    logits = logits.detach().clone().requires_grad_()
    out = fdiv_ops.sequence_logprobs(logits, labels, **kw)
    outs = out if isinstance(out, tuple) else (out,)
    sum(o * g for o, g in zip(outs, grads)).sum().backward()
    return [o.detach() for o in outs], logits.grad


def _reference(logits, labels, grads, **kw):
    logits = logits.detach().double().requires_grad_()
    out = ref.sequence_logprobs(logits, labels, **kw)
    outs = out if isinstance(out, tuple) else (out,)
    sum(o * g.double() for o, g in zip(outs, grads)).sum().backward()
    return [o.detach() for o in outs], logits.grad


TOL = {torch.float64: dict(rtol=1e-11, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=2e-6)}


@pytest.mark.parametrize("return_entropy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_log_softmax_gather(dtype, temperature, return_entropy, device):
    logits, labels = _inputs((3, 5), 1271, dtype, device)
    n_out = 2 if return_entropy else 1
    grads = [torch.randn(3, 5, dtype=torch.float64, device=device) for _ in range(n_out)]
    kw = dict(temperature=temperature, return_entropy=return_entropy)
    outs, grad = _fused(logits, labels, grads, **kw)
    want_outs, want_grad = _reference(logits, labels, grads, **kw)
    for o, w in zip(outs, want_outs):
        assert o.dtype == dtype
        torch.testing.assert_close(o.double(), w, **TOL[dtype])
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double(), want_grad, **TOL[dtype])
    ignored = labels == -100
    assert (outs[0][ignored] == 0).all() and (grad[ignored] == 0).all()


def test_gradcheck_float64():
    logits, labels = _inputs((2, 3), 7)
    labels[0, 0] = -100

    def fn(z):
        lp, ent = fdiv_ops.sequence_logprobs(z, labels, temperature=0.8, return_entropy=True)
        return lp, ent

    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(),))


def test_block_rescaling_when_the_max_grows_along_the_row(device):
    # V spans several CPU blocks (1024) and the max sits in the last one, so every block rescales.
    vocab = 3 * 1024 + 17
    logits = torch.linspace(-30, 40, vocab, dtype=torch.float64).repeat(4, 1).to(device)
    logits += 0.1 * torch.randn_like(logits)
    labels = torch.tensor([0, vocab - 1, 1500, 2048], device=device)
    for dtype in (torch.float64, torch.float32):
        grads = [torch.ones(4, dtype=torch.float64, device=device)] * 2
        outs, grad = _fused(logits.to(dtype), labels, grads, return_entropy=True)
        want_outs, want_grad = _reference(logits, labels, grads, return_entropy=True)
        for o, w in zip(outs, want_outs):
            torch.testing.assert_close(o.double(), w, **TOL[dtype])
        torch.testing.assert_close(grad.double(), want_grad, **TOL[dtype])


def test_shifted_and_non_contiguous_views(device):
    logits, labels = _inputs((3, 6), 97, device=device)
    shifted = logits[:, :-1]  # (B, T-1, V) with the batch stride of T: read in place
    labels = labels[:, 1:]
    assert not shifted.is_contiguous()
    grads = [torch.randn(3, 5, dtype=torch.float64, device=device)]
    outs, grad = _fused(shifted, labels, grads)
    want_outs, want_grad = _reference(shifted, labels, grads)
    torch.testing.assert_close(outs[0], want_outs[0], **TOL[torch.float64])
    torch.testing.assert_close(grad, want_grad, **TOL[torch.float64])
    strided_vocab = logits.transpose(0, 2).contiguous().transpose(0, 2)  # vocab stride != 1: copied
    outs, _ = _fused(strided_vocab, labels.new_zeros(3, 6), [torch.ones(3, 6, dtype=torch.float64, device=device)])
    torch.testing.assert_close(outs[0], ref.sequence_logprobs(logits, labels.new_zeros(3, 6)), **TOL[torch.float64])


def test_two_dim_and_four_dim_logits(device):
    logits, labels = _inputs((7,), 33, device=device)
    torch.testing.assert_close(fdiv_ops.sequence_logprobs(logits, labels), ref.sequence_logprobs(logits, labels))
    logits, labels = _inputs((2, 3, 4), 33, device=device)
    torch.testing.assert_close(fdiv_ops.sequence_logprobs(logits, labels), ref.sequence_logprobs(logits, labels))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_twice_eager_error(dtype, device):
    logits, labels = _inputs((4, 16), 1000, torch.float64, device)
    grads = [torch.randn(4, 16, dtype=torch.float64, device=device) for _ in range(2)]
    low = logits.to(dtype)
    truth_outs, truth_grad = _reference(low.double(), labels, grads, return_entropy=True)
    outs, grad = _fused(low, labels, [g.float() for g in grads], return_entropy=True)
    eager = low.clone().requires_grad_()
    e_lp, e_ent = ref.sequence_logprobs(eager, labels, return_entropy=True)
    (e_lp * grads[0].to(dtype) + e_ent * grads[1].to(dtype)).sum().backward()
    assert outs[0].dtype == torch.float32 and grad.dtype == dtype
    for mine, theirs, truth in (
        (outs[0], e_lp, truth_outs[0]),
        (outs[1], e_ent, truth_outs[1]),
        (grad, eager.grad, truth_grad),
    ):
        scale = truth.abs().max()
        err = ((mine.double() - truth).abs().max() / scale).item()
        eager_err = ((theirs.double() - truth).abs().max() / scale).item()
        assert err <= 2 * eager_err, (err, eager_err)


def test_unused_entropy_gives_the_logprob_gradient(device):
    logits, labels = _inputs((2, 4), 50, device=device)
    z1 = logits.clone().requires_grad_()
    lp, _ = fdiv_ops.sequence_logprobs(z1, labels, return_entropy=True)
    lp.sum().backward()
    z2 = logits.clone().requires_grad_()
    fdiv_ops.sequence_logprobs(z2, labels).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=0, atol=0)
    z3 = logits.clone().requires_grad_()
    _, ent = fdiv_ops.sequence_logprobs(z3, labels, return_entropy=True)
    ent.sum().backward()  # only the entropy: the log-prob gradient is None inside backward
    upstream = [torch.zeros(2, 4, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)]
    _, want = _reference(logits, labels, upstream, return_entropy=True)
    torch.testing.assert_close(z3.grad, want, **TOL[torch.float64])


def test_all_ignored_and_batch_of_one(device):
    logits, labels = _inputs((1, 3), 11, device=device)
    labels.fill_(-100)
    outs, grad = _fused(logits, labels, [torch.ones(1, 3, dtype=torch.float64, device=device)] * 2, return_entropy=True)
    assert (outs[0] == 0).all() and (outs[1] == 0).all() and (grad == 0).all()
    labels = torch.tensor([[5, 2, 7]], device=device)
    outs, grad = _fused(logits, labels, [torch.ones(1, 3, dtype=torch.float64, device=device)])
    torch.testing.assert_close(outs[0], ref.sequence_logprobs(logits, labels))


def test_extreme_and_infinite_logits(device):
    logits, labels = _inputs((4,), 64, device=device, ignore_frac=0.0)
    logits[0] *= 1e4 / 3  # +-1e4
    logits[1, ::2] = float("-inf")  # masked vocabulary
    labels[1] = 1  # a finite entry
    logits[2, 5] = float("-inf")
    labels[2] = 5  # the label itself is masked: log p = -inf, like log_softmax
    logits[3] = float("-inf")  # no distribution at all: -inf, entropy 0, no gradient (documented)
    for dtype in (torch.float64, torch.float32):
        z = logits.detach().clone().to(dtype).requires_grad_()
        lp, ent = fdiv_ops.sequence_logprobs(z, labels, return_entropy=True)
        (lp[:2].sum() + ent.sum()).backward()
        want_lp, want_ent = ref.sequence_logprobs(logits[:3], labels[:3], return_entropy=True)
        torch.testing.assert_close(lp[:2].double(), want_lp[:2], **TOL[dtype])
        ent_atol = 1e-3 if dtype == torch.float32 else 1e-9
        torch.testing.assert_close(ent[:2].double(), want_ent[:2], rtol=1e-5, atol=ent_atol)
        assert lp[2] == float("-inf") and lp[3] == float("-inf") and ent[3] == 0
        assert torch.isfinite(z.grad).all() and (z.grad[3] == 0).all()


def test_labels_out_of_range_raise_on_cpu():
    logits, labels = _inputs((2, 3), 10)
    for bad in (10, -1, 12345):
        labels[1, 2] = bad
        with pytest.raises(ValueError, match=r"labels must lie in \[0, V\)"):
            fdiv_ops.sequence_logprobs(logits, labels)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, V\)"):
            fdiv_ops.fused_linear_sequence_logprobs(torch.randn(2, 3, 4), torch.randn(10, 4), labels.clone())
    labels = labels.clamp(min=0)  # no -100 left: with ignore_index=-1 those would be out of range
    labels[1, 2] = -1
    out = fdiv_ops.sequence_logprobs(logits, labels, ignore_index=-1)  # -1 is fine when it is ignore_index
    assert out[1, 2] == 0


@pytest.mark.cuda
def test_labels_out_of_range_give_nan_on_cuda():
    logits, labels = _inputs((2, 3), 10, device="cuda")
    labels[1, 2] = 10
    z = logits.clone().requires_grad_()
    out = fdiv_ops.sequence_logprobs(z, labels)
    out.sum().backward()
    assert torch.isnan(out[1, 2]) and torch.isfinite(out[0]).all() and (z.grad[1, 2] == 0).all()


def _peaked_truth(logits, labels):
    """(log p(label), entropy) of each row from exact sums (math.fsum) in float64: the float64 log_softmax
    itself loses the ~1e-10 entropy of a sharply peaked row (its log S = log(1 + 1e-11) carries 1e-16)."""
    lps, ents = [], []
    for row, y in zip(logits.double().cpu(), labels.cpu().tolist()):
        d = (row - row.max()).tolist()
        rest = math.fsum(math.exp(v) for v in d if v < 0)
        ones = sum(1 for v in d if v == 0)
        w = math.fsum(math.exp(v) * v for v in d)
        log_s = math.log1p(ones - 1 + rest)
        lps.append(d[y] - log_s)
        ents.append(log_s - w / (ones + rest))
    return torch.tensor(lps, dtype=torch.float64), torch.tensor(ents, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entropy_of_sharply_peaked_rows(dtype, device):
    # S = 1 + 1e-11 rounded to 1 in float32 and the entropy (~1e-10) was lost: relative error 3e-2 (eager's
    # float32 is as bad). S is now kept as (terms equal to the max) + (the rest): no rounding, no cancellation.
    logits = 3.0 * torch.randn(6, 3000, dtype=torch.float64)
    peak = torch.tensor([20.0, 25.0, 30.0, 35.0, 40.0, 40.0], dtype=torch.float64)
    logits[torch.arange(6), torch.tensor([0, 17, 1024, 2047, 2999, 5])] = peak
    logits[5, 6] = 40.0  # two equal maxima
    logits = logits.to(dtype)
    labels = torch.tensor([0, 3, 1024, 9, 2999, 6])
    lp, ent = fdiv_ops.sequence_logprobs(logits.to(device), labels.to(device), return_entropy=True)
    want_lp, want_ent = _peaked_truth(logits, labels)
    assert (want_ent > 0).all() and want_ent[4] < 1e-10  # from 5e-3 down to 2e-11; the last row: log 2
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ent.double().cpu(), want_ent, rtol=rtol, atol=0)
    torch.testing.assert_close(lp.double().cpu(), want_lp, rtol=rtol, atol=1e-30)


def test_nan_logits_make_exactly_their_row_nan(device):
    logits, labels = _inputs((7,), 2053, torch.float32, device, ignore_frac=0.0)
    logits[0, 0] = float("nan")  # first entry
    logits[1, 1000] = float("nan")  # middle
    logits[2, -1] = float("nan")  # last
    logits[3] = float("-inf")
    logits[3, 7] = float("nan")  # NaN among -inf only: a max that skipped it would see an empty row
    logits[4, 3] = float("nan")
    labels[4] = -100  # ignored rows are never read: 0 and 0 whatever they hold
    nan_rows = torch.tensor([True, True, True, True, False, False, False], device=device)
    z = logits.clone().requires_grad_()
    lp, ent = fdiv_ops.sequence_logprobs(z, labels, return_entropy=True)
    (lp.nan_to_num() * 0.5 + ent.nan_to_num()).sum().backward()
    assert torch.isnan(lp[nan_rows]).all() and torch.isnan(ent[nan_rows]).all()
    assert torch.isnan(z.grad[nan_rows]).all()  # every entry of those rows
    assert lp[4] == 0 and ent[4] == 0 and (z.grad[4] == 0).all()
    keep = torch.tensor([5, 6], device=device)
    upstream = [
        torch.full((2,), 0.5, dtype=torch.float64, device=device),
        torch.ones(2, dtype=torch.float64, device=device),
    ]
    want_outs, want_grad = _reference(logits[keep], labels[keep], upstream, return_entropy=True)
    torch.testing.assert_close(lp[keep].double(), want_outs[0], **TOL[torch.float32])
    torch.testing.assert_close(ent[keep].double(), want_outs[1], **TOL[torch.float32])
    torch.testing.assert_close(z.grad[keep].double(), want_grad, **TOL[torch.float32])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu_with_nan_rows_odd_vocab_and_shifted_views(dtype):
    # Odd V and a shifted (B, T-1, V) view: rows start at every offset, so vec_loop's head and tail run.
    logits, labels = _inputs((3, 6), 1271, torch.float32)
    logits[0, 2, 600] = float("nan")
    logits = logits.to(dtype)
    out = []
    for device in ("cpu", "cuda"):
        z = logits.to(device).requires_grad_()
        lp, ent = fdiv_ops.sequence_logprobs(z[:, :-1], labels[:, 1:].to(device), return_entropy=True)
        (lp.nan_to_num() + 0.3 * ent.nan_to_num()).sum().backward()
        out.append((lp.cpu(), ent.cpu(), z.grad.cpu()))
    (cpu_lp, cpu_ent, cpu_grad), (gpu_lp, gpu_ent, gpu_grad) = out
    tol = dict(rtol=1e-5, atol=2e-6, equal_nan=True)
    torch.testing.assert_close(gpu_lp, cpu_lp, **tol)
    torch.testing.assert_close(gpu_ent, cpu_ent, **tol)
    assert torch.equal(torch.isnan(gpu_grad), torch.isnan(cpu_grad)) and torch.isnan(cpu_grad[0, 2]).all()
    torch.testing.assert_close(
        gpu_grad.double(),
        cpu_grad.double(),
        **(tol if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3, equal_nan=True)),
    )


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda z, y: fdiv_ops.sequence_logprobs(z, y[:, :2]), ValueError, "labels must have shape"),
        (lambda z, y: fdiv_ops.sequence_logprobs(z, y.double()), TypeError, "labels must have an integer dtype"),
        (lambda z, y: fdiv_ops.sequence_logprobs(z, y, temperature=0.0), ValueError, "temperature must be"),
        (lambda z, y: fdiv_ops.sequence_logprobs(z, y, ignore_index=1.5), TypeError, "ignore_index must be an int"),
        (lambda z, y: fdiv_ops.sequence_logprobs(z[..., :0], y), ValueError, "V >= 1"),
        (lambda z, y: fdiv_ops.sequence_logprobs(z.long(), y), TypeError, "logits must have a floating dtype"),
        (
            lambda z, y: fdiv_ops.fused_linear_sequence_logprobs(z, torch.randn(5, 3, dtype=torch.float64), y),
            ValueError,
            "weight must have shape",
        ),
        (
            lambda z, y: fdiv_ops.fused_linear_sequence_logprobs(
                z, torch.randn(5, 8, dtype=torch.float64), y, chunk_size=0
            ),
            ValueError,
            "chunk_size must be",
        ),
        (
            lambda z, y: fdiv_ops.fused_linear_sequence_logprobs(
                z, torch.randn(5, 8, dtype=torch.float64), y, bias=torch.randn(4, dtype=torch.float64)
            ),
            ValueError,
            "bias must have shape",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    logits, labels = _inputs((2, 3), 8)
    with pytest.raises(error, match=message):
        call(logits, labels)


def test_opcheck():
    logits, labels = _inputs((2, 3), 9, torch.float32)
    logits.requires_grad_()
    torch.library.opcheck(_seq_op, seq_op.op_args(logits, labels, -100, 0.9, True))
    torch.library.opcheck(_seq_op, seq_op.op_args(logits, labels, -100, 1.0, False))
    _, ent, stats = seq_op(logits.detach(), labels, -100, 0.9, True)
    torch.library.opcheck(
        _seq_backward_op,
        seq_backward_op.op_args(logits.detach(), labels, stats, ent, torch.randn(2, 3), None, -100, 0.9),
    )
    hidden = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    bias = torch.randn(9, requires_grad=True)
    flat = labels.reshape(-1)
    torch.library.opcheck(_linear_op, linear_op.op_args(hidden, weight, bias, flat, -100, 1.0, True, 4))
    torch.library.opcheck(_linear_op, linear_op.op_args(hidden, weight, None, flat, -100, 1.0, False, 2))
    _, ent, stats = linear_op(hidden.detach(), weight.detach(), bias.detach(), flat, -100, 1.0, True, 4)
    torch.library.opcheck(
        _linear_backward_op,
        linear_backward_op.op_args(
            hidden.detach(),
            weight.detach(),
            bias.detach(),
            flat,
            stats,
            ent,
            torch.randn(6),
            torch.randn(6),
            -100,
            1.0,
            4,
            True,
        ),
    )
    torch.library.opcheck(
        _linear_backward_op,
        linear_backward_op.op_args(
            hidden.detach(), weight.detach(), None, flat, stats, ent, torch.randn(6), None, -100, 1.0, 4, False
        ),
    )


def test_torch_compile_fullgraph():
    logits, labels = _inputs((2, 5), 40, torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(z, y):
        lp, ent = fdiv_ops.sequence_logprobs(z, y, temperature=0.9, return_entropy=True)
        return lp.sum(-1).mean() + 0.1 * ent.mean()

    z = logits.clone().requires_grad_()
    step(z, labels).backward()
    zr = logits.double().requires_grad_()
    lp, ent = ref.sequence_logprobs(zr, labels, temperature=0.9, return_entropy=True)
    (lp.sum(-1).mean() + 0.1 * ent.mean()).backward()
    torch.testing.assert_close(z.grad.double(), zr.grad, **TOL[torch.float32])


# ---------------------------------------------------------------------------------------------------
# fused_linear_sequence_logprobs


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_matches_reference(chunk_size, with_bias, device):
    hidden = torch.randn(2, 5, 16, dtype=torch.float64, device=device)
    weight = 0.5 * torch.randn(37, 16, dtype=torch.float64, device=device)
    bias = torch.randn(37, dtype=torch.float64, device=device) if with_bias else None
    labels = torch.randint(0, 37, (2, 5), device=device)
    labels[1, 3] = -100
    g_lp, g_ent = (
        torch.randn(2, 5, dtype=torch.float64, device=device),
        torch.randn(2, 5, dtype=torch.float64, device=device),
    )
    params = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    lp, ent = fdiv_ops.fused_linear_sequence_logprobs(
        params[0],
        params[1],
        labels,
        bias=params[2] if with_bias else None,
        temperature=0.8,
        return_entropy=True,
        chunk_size=chunk_size,
    )
    (lp * g_lp + ent * g_ent).sum().backward()
    want = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    logits = want[0] @ want[1].t() + (want[2] if with_bias else 0)
    w_lp, w_ent = ref.sequence_logprobs(logits, labels, temperature=0.8, return_entropy=True)
    (w_lp * g_lp + w_ent * g_ent).sum().backward()
    torch.testing.assert_close(lp, w_lp, **TOL[torch.float64])
    torch.testing.assert_close(ent, w_ent, **TOL[torch.float64])
    for mine, theirs in zip(params, want):
        torch.testing.assert_close(mine.grad, theirs.grad, **TOL[torch.float64])


def test_fused_linear_bf16_accumulates_logits_in_fp32(device):
    hidden = torch.randn(8, 32, device=device)
    weight = torch.randn(50, 32, device=device) / 4
    labels = torch.randint(0, 50, (8,), device=device)
    h16, w16 = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    lp = fdiv_ops.fused_linear_sequence_logprobs(h16, w16, labels, chunk_size=3)
    lp.sum().backward()
    # truth: the same bf16 parameters, everything after them in float64
    hd, wd = h16.detach().double().requires_grad_(), w16.detach().double().requires_grad_()
    truth = ref.sequence_logprobs(hd @ wd.t(), labels)
    truth.sum().backward()
    assert lp.dtype == torch.float32 and h16.grad.dtype == torch.bfloat16 and w16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp.double(), truth, rtol=1e-5, atol=1e-4)  # fp32 logits: no bf16 rounding
    torch.testing.assert_close(h16.grad.double(), hd.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w16.grad.double(), wd.grad, rtol=2e-2, atol=2e-2)


def test_fused_linear_frozen_weight_gets_no_gradient():
    hidden = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 8, dtype=torch.float64)  # frozen LM head: its GEMM is skipped
    labels = torch.randint(0, 13, (5,))
    fdiv_ops.fused_linear_sequence_logprobs(hidden, weight, labels, chunk_size=2).sum().backward()
    hd = hidden.detach().clone().requires_grad_()
    ref.sequence_logprobs(hd @ weight.t(), labels).sum().backward()
    torch.testing.assert_close(hidden.grad, hd.grad, **TOL[torch.float64])
    assert weight.grad is None


def test_fused_linear_torch_compile_fullgraph():
    hidden = torch.randn(2, 3, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    labels = torch.randint(0, 11, (2, 3))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(h, w, y):
        return fdiv_ops.fused_linear_sequence_logprobs(h, w, y, chunk_size=4).sum()

    step(hidden, weight, labels).backward()
    hd, wd = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref.sequence_logprobs(hd @ wd.t(), labels).sum().backward()
    torch.testing.assert_close(hidden.grad.double(), hd.grad, **TOL[torch.float32])
    torch.testing.assert_close(weight.grad.double(), wd.grad, **TOL[torch.float32])


def _large_allocations(fn, threshold_bytes):
    """(op, bytes) of every CPU allocation of at least threshold_bytes made while fn runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [(e.name, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage >= threshold_bytes]


def test_no_rows_by_vocab_tensor_beyond_the_gradient():
    rows, vocab = 64, 5000
    z = torch.randn(rows, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,))

    def fused():
        lp, ent = fdiv_ops.sequence_logprobs(z, labels, return_entropy=True)
        (lp + ent).sum().backward()

    def eager():  # the probe sees the eager path's log-softmax, its backward buffer and the gather's zeros
        torch.log_softmax(z, -1).gather(-1, labels[:, None]).sum().backward()

    size = rows * vocab * 4
    assert len(_large_allocations(eager, size)) >= 2
    assert len(_large_allocations(fused, size)) == 1  # the gradient itself

    hidden = torch.randn(rows, 32, requires_grad=True)
    weight = torch.randn(vocab, 32, requires_grad=True)

    def fused_linear():
        fdiv_ops.fused_linear_sequence_logprobs(hidden, weight, labels, chunk_size=8).sum().backward()

    assert _large_allocations(fused_linear, size) == []  # only chunk x V blocks, never rows x V
