"""The CUDA token-KD kernels of f_divergence_loss (csrc/cuda/f_divergence/) against the float64 reference:
every divergence on the streaming and the sm_90 cluster paths (dense: vocabulary mismatch, cached teacher
log-probs, the hard term and the in-place gradient through fused_linear_f_divergence; top-k), the cluster
path at V = 128256 bf16 and at odd V, misaligned rows, the NaN rule (a NaN or +inf teacher entry makes
its row NaN, exactly as on the CPU), and the categorical numerics the CPU tests check (total_variation's dead
zone, fp32 within 2e-5 of float64 at V = 128256, tiny-divergence rows, CPU = CUDA to float32 rounding on
masked and tiny rows). Every test needs a GPU (marked `cuda`: skipped without one).

FDIV_OPS_TOKEN_KD_PATH=stream|cluster forces a dense path (read per launch); "cluster" needs a compute
capability >= 9.0 and an image built with compute_90 code (the dev default "80-real;90" has it)."""

import math

import fdiv_ops
import pytest
import torch
from fdiv_ops import reference as ref

pytestmark = pytest.mark.cuda

ALL = [
    "forward_kl",
    "reverse_kl",
    "js",
    "squared_hellinger",
    "softened_rkl",
    "jeffreys",
    "total_variation",
    "pearson_chi2",
    "neyman_chi2",
    fdiv_ops.gkd_jsd(0.0),
    fdiv_ops.gkd_jsd(0.1),
    fdiv_ops.gkd_jsd(0.5),
    fdiv_ops.gkd_jsd(1.0),
    fdiv_ops.alpha(-0.5),
    fdiv_ops.alpha(0.5),
    fdiv_ops.alpha(2.0),
    fdiv_ops.skew_forward_kl(0.0),
    fdiv_ops.skew_forward_kl(0.1),
    fdiv_ops.skew_forward_kl(1.0),
    fdiv_ops.skew_reverse_kl(0.0),
    fdiv_ops.skew_reverse_kl(0.1),
    fdiv_ops.skew_reverse_kl(1.0),
]
IDS = [str(d) for d in ALL]
PATHS = ["stream", "cluster"]
ENV = "FDIV_OPS_TOKEN_KD_PATH"


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Forces the dense kernel path; the cluster path needs sm_90+ (elsewhere the op must refuse it)."""
    if request.param == "cluster" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the cluster path needs compute capability >= 9.0")
    monkeypatch.setenv(ENV, request.param)
    return request.param


def _logits(shape, dtype=torch.float32, scale=2.0, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device="cuda", dtype=dtype)


def _fused(student, teacher=None, **kw):
    student = student.detach().clone().requires_grad_()
    loss = fdiv_ops.f_divergence_loss(student, teacher, **kw)
    loss.backward(torch.ones_like(loss))
    torch.cuda.synchronize()
    return loss.detach(), student.grad


def _reference(student, teacher, fn=ref.f_divergence_loss, **kw):
    student = student.detach().double().clone().requires_grad_()
    loss = fn(student, teacher.double() if teacher.is_floating_point() else teacher, **kw)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), student.grad


def _close(got, want, dtype):
    """fp32: 1e-5 of the largest magnitude (as tests/test_f_divergence.py), fp64: 1e-10; a 16-bit gradient is
    the fp32 result rounded once to that dtype (half an ulp: 2^-8 of bf16, 2^-11 of fp16, relative)."""
    rel, floor = {torch.float64: (1e-10, 1e-15), torch.float32: (1e-5, 1e-9)}.get(dtype, (1e-5, 1e-9))
    scale = float(want.abs().max()) if want.numel() else 0.0
    rtol = {torch.bfloat16: 2**-8, torch.float16: 2**-11}.get(got.dtype, rel)
    floor += 2**-25 if got.dtype == torch.float16 else 0.0  # fp16 subnormals: half their spacing, absolute
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rel * scale + floor)


@pytest.mark.parametrize("divergence", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_divergence_dense(divergence, dtype, path):
    student, teacher = _logits((2, 3, 1271), dtype), _logits((2, 3, 1271), dtype, gen_seed=1)
    kw = {"divergence": divergence, "temperature": 1.7, "reduction": "none"}
    loss, grad = _fused(student, teacher, **kw)
    want_loss, want_grad = _reference(student, teacher, **kw)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    _close(loss, want_loss, torch.float32)
    _close(grad, want_grad, torch.float32)


@pytest.mark.parametrize("divergence", ALL, ids=IDS)
def test_every_divergence_dense_float64(divergence, monkeypatch):
    monkeypatch.setenv(ENV, "stream")  # float64 always streams (no cluster kernel: the checking dtype)
    student, teacher = _logits((5, 999), torch.float64), _logits((5, 999), torch.float64, gen_seed=1)
    kw = {"divergence": divergence, "temperature": 0.8, "reduction": "none"}
    loss, grad = _fused(student, teacher, **kw)
    want_loss, want_grad = _reference(student, teacher, **kw)
    _close(loss, want_loss, torch.float64)
    _close(grad, want_grad, torch.float64)


def test_float64_refuses_a_forced_cluster_path(monkeypatch):
    monkeypatch.setenv(ENV, "cluster")
    with pytest.raises(RuntimeError):
        _fused(_logits((2, 64), torch.float64), _logits((2, 64), torch.float64))


@pytest.mark.parametrize("student_vocab, teacher_vocab", [(1271, 1280), (1280, 1271), (1283, 1000)])
@pytest.mark.parametrize("divergence", ALL, ids=IDS)
def test_vocab_mismatch(student_vocab, teacher_vocab, divergence, path):
    student, teacher = _logits((5, student_vocab)), _logits((5, teacher_vocab), gen_seed=1)
    kw = {"divergence": divergence, "reduction": "none", "max_vocab_pad": None}
    loss, grad = _fused(student, teacher, **kw)
    kw.pop("max_vocab_pad")
    want_loss, want_grad = _reference(student, teacher, **kw)
    _close(loss, want_loss, torch.float32)
    _close(grad, want_grad, torch.float32)


@pytest.mark.parametrize("divergence", ALL, ids=IDS)
def test_teacher_is_logprobs(divergence, path):
    student, teacher = _logits((4, 1500)), _logits((4, 1500), gen_seed=1)
    cached = torch.log_softmax(teacher.double() / 2.0, -1).float()
    loss, grad = _fused(student, cached, divergence=divergence, temperature=2.0, teacher_is_logprobs=True)
    want_loss, want_grad = _reference(student, teacher, divergence=divergence, temperature=2.0)
    _close(loss, want_loss, torch.float32)
    _close(grad, want_grad, torch.float32)


@pytest.mark.parametrize("temperature", [1.0, 2.0], ids=["T1", "T2"])
@pytest.mark.parametrize("divergence", ["forward_kl", "js", fdiv_ops.alpha(0.5)], ids=str)
def test_hard_term_and_in_place_gradient_through_fused_linear(temperature, divergence, path):
    """fused_linear_f_divergence runs the dense kernel with grad = the student's logits (in place) and, with
    hard_loss_weight, the cross-entropy term (at T = 1: a third LSE on the device when T != 1)."""
    gen = torch.Generator().manual_seed(3)
    rows, hidden, vocab = 37, 16, 3001
    leaves = {
        "student_hidden": torch.randn(rows, hidden, generator=gen, dtype=torch.float64),
        "student_weight": torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * hidden**-0.5 * 3,
        "teacher_hidden": torch.randn(rows, hidden, generator=gen, dtype=torch.float64),
        "teacher_weight": torch.randn(vocab + 5, hidden, generator=gen, dtype=torch.float64) * hidden**-0.5 * 3,
    }
    labels = torch.randint(0, vocab, (rows,), generator=gen).cuda()
    labels[::5] = -100
    kw = {"divergence": divergence, "temperature": temperature, "labels": labels, "hard_loss_weight": 0.6}
    results = []
    for fn, dtype in ((fdiv_ops.fused_linear_f_divergence, torch.float32), (ref.fused_linear_f_divergence, None)):
        args = {k: v.cuda().to(dtype or torch.float64) for k, v in leaves.items()}
        for k in ("student_hidden", "student_weight"):
            args[k].requires_grad_()
        extra = {"chunk_size": 8} if dtype is not None else {}
        names = ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")
        loss = fn(*(args[n] for n in names), **kw, **extra)
        loss.backward()
        results.append((loss.detach(), args["student_hidden"].grad, args["student_weight"].grad))
    for got, want in zip(results[0], results[1], strict=True):
        _close(got, want, torch.float32)


def test_hard_term_label_out_of_range_gives_a_nan_row(path):
    """On CUDA the labels are not checked on the host (no sync): the kernel makes the row NaN instead."""
    rows, hidden, vocab = 4, 8, 300
    s_h, t_h = torch.randn(rows, hidden, device="cuda"), torch.randn(rows, hidden, device="cuda")
    s_w, t_w = torch.randn(vocab, hidden, device="cuda"), torch.randn(vocab, hidden, device="cuda")
    labels = torch.tensor([1, vocab + 7, 2, 3], device="cuda")
    loss = fdiv_ops.fused_linear_f_divergence(s_h, s_w.requires_grad_(), t_h, t_w, labels=labels, hard_loss_weight=1.0)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(s_w.grad).any()
    labels[1] = 4
    assert torch.isfinite(fdiv_ops.fused_linear_f_divergence(s_h, s_w, t_h, t_w, labels=labels, hard_loss_weight=1.0))


@pytest.mark.parametrize("divergence", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_divergence_topk(divergence, dtype):
    student, teacher = _logits((2, 3, 301), dtype), _logits((2, 3, 301), torch.float64, gen_seed=1)
    logprobs, indices = torch.log_softmax(teacher, -1).topk(9, dim=-1)
    logprobs = logprobs.to(dtype if dtype != torch.bfloat16 else torch.float32)
    logprobs[0, 0, 8] = -math.inf  # a top-k token the teacher rules out: dropped
    labels = torch.randint(0, 301, (2, 3), device="cuda")
    labels[1, 2] = -100
    kw = {"divergence": divergence, "temperature": 1.3, "labels": labels, "reduction": "none"}
    loss, grad = _fused(student, teacher_topk=(indices, logprobs), **kw)
    want_loss, want_grad = _reference(
        student, indices, fn=lambda z, i, **k: ref.f_divergence_topk_loss(z, i, logprobs.double(), **k), **kw
    )
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    _close(loss, want_loss, acc)
    _close(grad, want_grad, acc)
    assert (grad[1, 2] == 0).all()


def test_topk_out_of_range_index_gives_a_nan_row():
    student = _logits((3, 100))
    indices = torch.tensor([[0, 1], [2, 100], [4, 5]], device="cuda")
    logprobs = torch.log(torch.full((3, 2), 0.3, device="cuda"))
    loss, grad = _fused(student, teacher_topk=(indices, logprobs), reduction="none")
    assert torch.isnan(loss[1]) and torch.isnan(grad[1]).all()
    assert torch.isfinite(loss[[0, 2]]).all() and torch.isfinite(grad[[0, 2]]).all()


@pytest.mark.parametrize(
    "vocab, dtype",
    [(128256, torch.bfloat16), (128257, torch.bfloat16), (128256, torch.float32), (40001, torch.float16)],
    ids=["128256-bf16", "128257-bf16-odd", "128256-fp32", "40001-fp16-odd"],
)
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "js", fdiv_ops.gkd_jsd(0.5)], ids=str)
def test_large_vocabulary(vocab, dtype, divergence, path):
    """The sizes the cluster path is for (a 128k bf16 row pair is 512 KB: 8 blocks of 64 KB shared memory),
    odd V (every other row starts off a 16-byte boundary), an ignored row and a masked vocabulary range."""
    student, teacher = _logits((6, vocab), dtype), _logits((6, vocab), dtype, gen_seed=1)
    student[2, 1000:5000] = -math.inf
    teacher[3, 70000:] = -math.inf
    labels = torch.tensor([0, 1, -100, 3, 4, 5], device="cuda")
    kw = {"divergence": divergence, "temperature": 1.5, "labels": labels, "reduction": "none"}
    loss, grad = _fused(student, teacher, **kw)
    want_loss, want_grad = _reference(student, teacher, **kw)
    assert (loss[2] == 0) and (grad[2] == 0).all()
    # fp32 sums over 128k entries: 2e-5 relative (issue 16's bound) on the loss
    torch.testing.assert_close(loss.double(), want_loss, rtol=2e-5, atol=1e-7)
    _close(grad, want_grad, torch.float32)


@pytest.mark.parametrize("offsets", [(1, 1, 0), (1, 0, 0), (3, 3, 3)], ids=["z+t", "z-only", "all"])
def test_misaligned_rows(offsets, path):
    """Storage offsets of a few elements: the 16-byte loop's head and tail, and the scalar fallback where the
    student, the teacher and the gradient sit at different 16-byte phases."""
    rows, vocab = 5, 4099
    dz, dt, _ = offsets

    def shifted(x, d):
        buf = torch.empty(x.numel() + d, dtype=x.dtype, device=x.device)
        out = buf[d:].view_as(x)
        out.copy_(x)
        return out

    student, teacher = _logits((rows, vocab), torch.bfloat16), _logits((rows, vocab), torch.bfloat16, gen_seed=1)
    s, t = shifted(student, dz), shifted(teacher, dt)
    assert s.is_contiguous() and t.is_contiguous()
    loss, grad = _fused(s, t, divergence="js", reduction="none")
    want_loss, want_grad = _reference(student, teacher, divergence="js", reduction="none")
    _close(loss, want_loss, torch.float32)
    _close(grad, want_grad, torch.float32)


def test_paths_agree():
    """The cluster and streaming paths compute the same sums in a different order: equal to rounding."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the cluster path needs compute capability >= 9.0")
    student, teacher = _logits((16, 50257), torch.bfloat16), _logits((16, 50257), torch.bfloat16, gen_seed=1)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for p in PATHS:
            mp.setenv(ENV, p)
            out[p] = _fused(student, teacher, divergence="js", reduction="none")
    torch.testing.assert_close(out["cluster"][0], out["stream"][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["cluster"][1].float(), out["stream"][1].float(), rtol=2**-7, atol=1e-7)


def test_automatic_path_matches_reference(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    student, teacher = _logits((8, 32000), torch.bfloat16), _logits((8, 32000), torch.bfloat16, gen_seed=1)
    loss, grad = _fused(student, teacher, divergence="reverse_kl", reduction="none")
    want_loss, want_grad = _reference(student, teacher, divergence="reverse_kl", reduction="none")
    _close(loss, want_loss, torch.float32)
    _close(grad, want_grad, torch.float32)


def test_many_rows():
    """More rows than a grid's y dimension holds (the cluster grid is rows x C blocks along x)."""
    student, teacher = _logits((70001, 40)), _logits((70001, 40), gen_seed=1)
    loss, grad = _fused(student, teacher, divergence="forward_kl", reduction="none")
    want_loss, want_grad = _reference(student, teacher, divergence="forward_kl", reduction="none")
    _close(loss, want_loss, torch.float32)
    _close(grad, want_grad, torch.float32)


@pytest.mark.parametrize("rows", [[0, 1], [2]])
def test_neg_inf_rows_and_ignored_rows_give_zero(rows, path):
    student, teacher = _logits((4, 3000)), _logits((4, 3000), gen_seed=1)
    student[rows[0]] = -math.inf
    teacher[rows[-1]] = -math.inf
    labels = torch.tensor([0, 1, 2, -100], device="cuda")
    loss, grad = _fused(student, teacher, labels=labels, divergence="js", reduction="none")
    dead = sorted(set(rows) | {3})
    assert (loss[dead] == 0).all() and (grad[dead] == 0).all()
    assert not torch.isnan(loss).any() and not torch.isnan(grad).any()


# --- the NaN rule: NaN (or +inf) in gives NaN out for exactly the affected rows, as on the CPU ---------


def _poisoned(dtype=torch.float32, vocab=2053):
    student, teacher = _logits((6, vocab), dtype), _logits((6, vocab), dtype, gen_seed=1)
    teacher[1, 17] = math.nan
    teacher[2, 900] = math.inf
    student[3, 5] = math.nan
    student[4, 2000] = math.inf
    return student, teacher


@pytest.mark.parametrize("divergence", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_entries_make_exactly_their_rows_nan(divergence, dtype, path):
    student, teacher = _poisoned(dtype)
    loss, grad = _fused(student, teacher, divergence=divergence, reduction="none")
    bad = torch.tensor([False, True, True, True, True, False], device="cuda")
    assert torch.isnan(loss[bad]).all() and torch.isnan(grad[bad]).all()
    assert not torch.isnan(loss[~bad]).any() and not torch.isnan(grad[~bad]).any()


@pytest.mark.parametrize("divergence", ALL, ids=IDS)
@pytest.mark.parametrize("logprobs", [False, True], ids=["logits", "logprobs"])
def test_cpu_and_cuda_give_identical_nan_rows(divergence, logprobs, path):
    student, teacher = _poisoned()
    if logprobs:
        teacher = torch.log_softmax(torch.nan_to_num(teacher, nan=0.0, posinf=0.0), -1)
        teacher[1, 17] = math.nan
        teacher[2, 900] = math.inf  # an impossible log-prob: whatever the CPU does, CUDA does too
    kw = {"divergence": divergence, "reduction": "none", "teacher_is_logprobs": logprobs}
    cuda_loss, cuda_grad = _fused(student, teacher, **kw)
    cpu_loss, cpu_grad = _fused(student.cpu(), teacher.cpu(), **kw)
    assert torch.equal(torch.isnan(cuda_loss).cpu(), torch.isnan(cpu_loss))
    assert torch.equal(torch.isnan(cuda_grad).cpu(), torch.isnan(cpu_grad))
    assert torch.equal(torch.isinf(cuda_loss).cpu(), torch.isinf(cpu_loss))
    ok = torch.isfinite(cpu_loss) & torch.isfinite(cpu_grad).all(-1)
    torch.testing.assert_close(cuda_loss.cpu()[ok], cpu_loss[ok], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda_grad.cpu()[ok], cpu_grad[ok], rtol=1e-4, atol=1e-6)


def test_topk_nan_teacher_logprob_gives_a_nan_row():
    student, teacher = _logits((3, 500)), _logits((3, 500), torch.float64, gen_seed=1)
    logprobs, indices = torch.log_softmax(teacher, -1).topk(5, dim=-1)
    logprobs = logprobs.float()
    logprobs[1, 2] = math.nan
    loss, grad = _fused(student, teacher_topk=(indices, logprobs), reduction="none")
    cpu_loss, cpu_grad = _fused(student.cpu(), teacher_topk=(indices.cpu(), logprobs.cpu()), reduction="none")
    assert torch.isnan(loss[1]) and torch.isnan(grad[1]).all()
    assert torch.equal(torch.isnan(loss).cpu(), torch.isnan(cpu_loss))
    assert torch.equal(torch.isnan(grad).cpu(), torch.isnan(cpu_grad))


# --- the categorical numerics shared with the CPU (divergences.h: shifted forms, near-r = 1 polynomials,
# total_variation's dead zone), checked as tests/test_f_divergence.py checks them on the CPU, on both paths ------

ACCURACY = [d for d in ALL if not (isinstance(d, fdiv_ops.Divergence) and d.param in (0.0, 1.0))]
ACCURACY_IDS = [str(d) for d in ACCURACY]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale, temperature, offset", [(1.0, 1.0, 0.5), (10.0, 0.7, -3.0), (100.0, 2.0, 20.0)])
def test_total_variation_gradient_is_zero_where_p_equals_q_up_to_rounding(dtype, scale, temperature, offset, path):
    """p = q up to the rounding of t = s + offset: psi's dead zone (a few ulps of the scaled logits, the same
    rule as the CPU's) gives exactly no gradient, for teacher logits and cached log-probs."""
    if dtype == torch.float64 and path == "cluster":
        pytest.skip("float64 always streams")
    gen = torch.Generator().manual_seed(0)
    s = (scale * torch.randn(4, 1000, generator=gen, dtype=torch.float64)).to(device="cuda", dtype=dtype)
    for teacher, logprobs in ((s + offset, False), (torch.log_softmax(s / temperature, -1), True)):
        loss, grad = _fused(
            s, teacher, divergence="total_variation", temperature=temperature, teacher_is_logprobs=logprobs
        )
        assert grad.abs().max() <= 1e-8 and abs(loss.item()) <= 1e-6, (grad.abs().max(), loss, logprobs)


@pytest.mark.parametrize("topk", [False, True], ids=["dense", "topk"])
def test_total_variation_keeps_its_gradient_outside_the_dead_zone(topk, path):
    """The dead zone is a few ulps wide: a ratio of 1 +- 1e-4 keeps psi = -+1/2 (matches the reference)."""
    gen = torch.Generator().manual_seed(1)
    student = _logits((3, 500))
    teacher = student + 1e-4 * torch.randn(3, 500, generator=gen, dtype=torch.float64).sign().cuda().float()
    if not topk:
        loss, grad = _fused(student, teacher, divergence="total_variation")
        want_loss, want_grad = _reference(student, teacher, divergence="total_variation")
    else:
        logprobs, indices = torch.log_softmax(teacher.double(), -1).topk(20, dim=-1)
        logprobs = logprobs.float()  # the reference takes the very values the kernel gets
        loss, grad = _fused(student, teacher_topk=(indices, logprobs), divergence="total_variation")
        want_loss, want_grad = _reference(
            student,
            indices,
            fn=lambda z, i, **k: ref.f_divergence_topk_loss(z, i, logprobs.double(), **k),
            divergence="total_variation",
        )
    _close(loss, want_loss, torch.float32)
    _close(grad, want_grad, torch.float32)


@pytest.mark.parametrize("divergence", ACCURACY, ids=ACCURACY_IDS)
def test_float32_within_2e_5_of_float64_at_v_128256(divergence, path):
    """fp32 loss and gradient within 2e-5 relative of float64 (of the same fp32 inputs) at a Llama-3 vocabulary,
    the CPU's bound (tests/test_f_divergence.py)."""
    vocab = 128256
    student, teacher = _logits((3, vocab)), _logits((3, vocab), gen_seed=1)
    loss, grad = _fused(student, teacher, divergence=divergence, reduction="none")
    want_loss, want_grad = _reference(student, teacher, divergence=divergence, reduction="none")
    assert ((loss.double() - want_loss).abs() <= 2e-5 * want_loss.abs()).all(), (loss, want_loss)
    err = (grad.double() - want_grad).abs()
    if fdiv_ops.resolve(divergence).name == "total_variation":
        # entries inside psi's dead zone (|log p/q| of a few ulps, by design psi = 0) are not compared
        log_ratio = torch.log_softmax(teacher.double(), -1) - torch.log_softmax(student.double(), -1)
        outside = log_ratio.abs() > 1e-5
        assert (~outside).sum() <= 3
        err = torch.where(outside, err, torch.zeros_like(err))
    assert (err <= 2e-5 * want_grad.abs().amax(-1, keepdim=True)).all(), err.max()


@pytest.mark.parametrize("divergence", ACCURACY, ids=ACCURACY_IDS)
def test_tiny_divergence_rows_within_eager_float32_error(divergence, path):
    """Rows where the teacher is the student plus a small perturbation (divergences of 1e-5 to 1e-15): the fp32
    loss stays within eager fp32's error of float64 and within 1e-6 relative (plus 1e-12 absolute) of it, the
    gradient of the rows >= 1e-9 within 1e-5 of its largest entry and no worse than eager's (the CPU's bounds)."""
    vocab = 20000
    gen = torch.Generator().manual_seed(2)
    student = _logits((5, vocab))
    noise = (
        torch.randn(5, vocab, generator=gen, dtype=torch.float64) * torch.tensor([1e-2, 1e-3, 1e-4, 1e-5, 0.0])[:, None]
    )
    teacher = (student.double() + 0.37 + noise.cuda()).float()
    loss, grad = _fused(student, teacher, divergence=divergence, reduction="none")
    truth_loss, truth_grad = _reference(student, teacher, divergence=divergence, reduction="none")
    s = student.clone().requires_grad_()
    eager_loss = ref.f_divergence_loss(s, teacher, divergence=divergence, reduction="none")
    eager_loss.sum().backward()
    err = (loss.double() - truth_loss).abs()
    eager_err = (eager_loss.detach().double() - truth_loss).abs()
    assert (err <= eager_err + 1e-15).all(), (err, eager_err)
    if fdiv_ops.resolve(divergence).name != "total_variation":
        assert (err <= 1e-6 * truth_loss.abs() + 1e-12).all(), (err, truth_loss)
        rows = slice(0, 3)
        g_err = (grad[rows].double() - truth_grad[rows]).abs().amax(-1)
        g_eager = (s.grad[rows].double() - truth_grad[rows]).abs().amax(-1)
        assert (g_err <= 1e-5 * truth_grad[rows].abs().amax(-1)).all() and (g_err <= g_eager).all()


@pytest.mark.parametrize("divergence", ALL, ids=IDS)
@pytest.mark.parametrize("logprobs", [False, True], ids=["logits", "logprobs"])
def test_cpu_and_cuda_agree_on_tiny_and_masked_rows(divergence, logprobs, path):
    """The same categorical numerics on both devices: rows of every kind (ordinary, tiny divergence, identical,
    -inf entries on either side, a vocabulary tail) agree to float32 rounding, not just to the reference's
    tolerance; a cached teacher row of -inf gives 0 and 0 on both."""
    gen = torch.Generator().manual_seed(3)
    student = 2.0 * torch.randn(6, 3001, generator=gen, dtype=torch.float64)
    teacher = 2.0 * torch.randn(6, 3000, generator=gen, dtype=torch.float64)
    teacher[1] = student[1, :3000] + 0.3 + 1e-4 * torch.randn(3000, generator=gen, dtype=torch.float64)
    teacher[2] = student[2, :3000]
    student[3, :40] = -math.inf
    teacher[4, 100:300] = -math.inf
    teacher[5] = -math.inf
    student, teacher = student.float(), teacher.float()
    if logprobs:
        teacher = torch.log_softmax(teacher, -1)
        teacher[5] = -math.inf  # (log_softmax of a row of -inf is NaN)
    kw = {"divergence": divergence, "reduction": "none", "teacher_is_logprobs": logprobs, "max_vocab_pad": None}
    cuda_loss, cuda_grad = _fused(student.cuda(), teacher.cuda(), **kw)
    cpu_loss, cpu_grad = _fused(student, teacher, **kw)
    assert cuda_loss[5] == 0 and (cuda_grad[5] == 0).all() and cpu_loss[5] == 0
    torch.testing.assert_close(cuda_loss.cpu(), cpu_loss, rtol=1e-5, atol=1e-7 * float(cpu_loss.abs().max()) + 1e-12)
    scale = cpu_grad.abs().amax(-1, keepdim=True)
    assert ((cuda_grad.cpu() - cpu_grad).abs() <= 1e-5 * scale + 1e-12).all()


@pytest.mark.parametrize("where", ["student", "teacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_in_a_one_entry_row(where, dtype):
    """The smallest row (V = 1): a NaN makes exactly its row NaN (tests/test_properties.py, on the GPU)."""
    logits = torch.tensor([[math.nan], [0.5]], dtype=dtype, device="cuda")
    other = torch.tensor([[0.0], [0.0]], dtype=dtype, device="cuda")
    student, teacher = (logits, other) if where == "student" else (other, logits)
    rows = fdiv_ops.f_divergence_loss(student, teacher, reduction="none")
    assert torch.isnan(rows[0]) and not torch.isnan(rows[1]), rows


@pytest.mark.parametrize("divergence", ["forward_kl", "js", "total_variation", fdiv_ops.alpha(2.0)], ids=str)
def test_nan_rows_leave_the_other_rows_bit_for_bit(divergence, path):
    """The CPU's check (tests/test_f_divergence.py): poisoned rows are NaN, every other row is exactly what it is
    without the poison (each row is computed on its own, in a fixed order)."""
    student, teacher = _logits((7, 301)), _logits((7, 301), gen_seed=1)
    student[0, :10] = -math.inf
    clean_loss, clean_grad = _fused(student, teacher, divergence=divergence, reduction="none")
    student[1, 7], teacher[2, 300] = math.nan, math.nan
    student[3, 0], teacher[4, 150] = math.inf, math.inf
    loss, grad = _fused(student, teacher, divergence=divergence, reduction="none")
    poisoned = torch.tensor([False, True, True, True, True, False, False], device="cuda")
    assert torch.isnan(loss[poisoned]).all() and torch.isnan(grad[poisoned]).all()
    assert torch.equal(loss[~poisoned], clean_loss[~poisoned]) and torch.equal(grad[~poisoned], clean_grad[~poisoned])
