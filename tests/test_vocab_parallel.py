"""vocab_parallel_group: each rank passes its vocabulary shard and gets the unsharded op's loss and its shard's
gradient. gloo on CPU, 2 and 3 processes, uneven shards; every case runs once per world size inside one spawn
(the processes' start-up dominates), and each test below checks one case's result."""

import os
import socket
import sys
import traceback

import fdiv_ops
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from divergence_cases import ALL as DIVERGENCES

# Uneven shards of a V = 37 vocabulary per world size (one rank may hold more than the others).
SHARDS = {2: [20, 17], 3: [13, 7, 17]}
ROWS = 6
FP32 = dict(rtol=2e-5, atol=2e-6)


def _split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(x, sizes, dim=-1))


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True, msg=name)


def _inputs(seed: int, vs: int, vt: int, dtype=torch.float32, rows: int = ROWS):
    gen = torch.Generator().manual_seed(seed)
    z = (2 * torch.randn(rows, vs, generator=gen)).to(dtype)
    t = (2 * torch.randn(rows, vt, generator=gen)).to(dtype)
    labels = torch.randint(0, min(vs, vt), (rows,), generator=gen)
    labels[1] = -100
    return z, t, labels


def _kd_case(rank, world, group, *, dtype=torch.float32, pad=(0, 0), tol=FP32, **kw):
    """f_divergence_loss sharded vs whole; pad = (extra student columns, extra teacher columns) on the last rank."""
    sizes = SHARDS[world]
    vs, vt = sum(sizes) + pad[0], sum(sizes) + pad[1]
    z, t, labels = _inputs(11, vs, vt, dtype)
    if kw.pop("with_labels", True):
        kw["labels"] = labels
    if kw.pop("logprobs", False):
        t = torch.log_softmax(t.float(), -1).to(dtype)
        kw["teacher_is_logprobs"] = True
    z_full = z.clone().requires_grad_()
    want = fdiv_ops.f_divergence_loss(z_full, t, **kw)
    want.sum().backward()
    s_sizes = sizes[:-1] + [sizes[-1] + pad[0]]
    t_sizes = sizes[:-1] + [sizes[-1] + pad[1]]
    z_local = _split(z, s_sizes)[rank].clone().requires_grad_()
    got = fdiv_ops.f_divergence_loss(z_local, _split(t, t_sizes)[rank], vocab_parallel_group=group, **kw)
    got.sum().backward()
    _close("loss", got.detach(), want.detach(), **tol)
    _close("grad", z_local.grad, _split(z_full.grad, s_sizes)[rank], **tol)


def _all_divergences(rank, world, group):
    for div in DIVERGENCES:
        try:
            _kd_case(rank, world, group, divergence=div, temperature=1.7, reduction="sum")
        except AssertionError as err:
            raise AssertionError(f"{div}: {err}") from None


def _nan_rule(rank, world, group):
    """A NaN in one rank's shard makes its row NaN on every rank (loss and the whole gradient row); -inf entries
    are dropped as in the unsharded op."""
    sizes = SHARDS[world]
    z, t, _ = _inputs(5, sum(sizes), sum(sizes))
    z[2, -1] = float("nan")  # in the last rank's shard
    t[3, :5] = -float("inf")
    z_full = z.clone().requires_grad_()
    want = fdiv_ops.f_divergence_loss(z_full, t, reduction="none", divergence="js")
    want.sum().backward()
    z_local = _split(z, sizes)[rank].clone().requires_grad_()
    got = fdiv_ops.f_divergence_loss(
        z_local, _split(t, sizes)[rank], reduction="none", divergence="js", vocab_parallel_group=group
    )
    got.sum().backward()
    assert torch.isnan(got[2]) and torch.isnan(z_local.grad[2]).all()
    _close("loss", got.detach(), want.detach(), **FP32)
    _close("grad", z_local.grad, _split(z_full.grad, sizes)[rank], **FP32)


def _seq_case(rank, world, group, *, dtype=torch.float32, tol=FP32):
    sizes = SHARDS[world]
    z, _, labels = _inputs(3, sum(sizes), sum(sizes), dtype, rows=8)
    labels[0] = sum(sizes) - 1  # the last rank's last column
    w_lp, w_ent = torch.rand(8), torch.rand(8)
    z_full = z.clone().requires_grad_()
    lp, ent = fdiv_ops.sequence_logprobs(z_full, labels, temperature=1.3, return_entropy=True)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    z_local = _split(z, sizes)[rank].clone().requires_grad_()
    glp, gent = fdiv_ops.sequence_logprobs(
        z_local, labels, temperature=1.3, return_entropy=True, vocab_parallel_group=group
    )
    ((glp * w_lp).sum() + (gent * w_ent).sum()).backward()
    _close("logprobs", glp.detach(), lp.detach(), **tol)
    _close("entropy", gent.detach(), ent.detach(), **tol)
    _close("grad", z_local.grad, _split(z_full.grad, sizes)[rank], **tol)


def _fused_kd(rank, world, group):
    sizes = SHARDS[world]
    vocab, hidden = sum(sizes), 16
    gen = torch.Generator().manual_seed(9)
    h_s, h_t = torch.randn(10, hidden, generator=gen), torch.randn(10, 12, generator=gen)
    w_s, w_t = torch.randn(vocab, hidden, generator=gen) / 2, torch.randn(vocab, 12, generator=gen) / 2
    b_s = torch.randn(vocab, generator=gen)
    labels = torch.randint(0, vocab, (10,), generator=gen)
    labels[4] = -100
    kw = dict(labels=labels, divergence="gkd_jsd", temperature=2.0, hard_loss_weight=0.4, chunk_size=4)
    full = [v.clone().requires_grad_() for v in (h_s, w_s, b_s)]
    want = fdiv_ops.fused_linear_f_divergence(full[0], full[1], h_t, w_t, student_bias=full[2], **kw)
    want.backward()
    local = [
        h_s.clone().requires_grad_(),
        _split(w_s.T, sizes)[rank].T.clone().requires_grad_(),
        _split(b_s, sizes)[rank].clone().requires_grad_(),
    ]
    got = fdiv_ops.fused_linear_f_divergence(
        local[0],
        local[1],
        h_t,
        _split(w_t.T, sizes)[rank].T.contiguous(),
        student_bias=local[2],
        vocab_parallel_group=group,
        **kw,
    )
    got.backward()
    _close("loss", got.detach(), want.detach(), **FP32)
    _close("grad_weight", local[1].grad, _split(full[1].grad.T, sizes)[rank].T, **FP32)
    _close("grad_bias", local[2].grad, _split(full[2].grad, sizes)[rank], **FP32)
    grad_hidden = local[0].grad.clone()
    dist.all_reduce(grad_hidden, group=group)  # a column-parallel layer's input gradient: summed over ranks
    _close("grad_hidden", grad_hidden, full[0].grad, rtol=1e-4, atol=1e-5)


def _fused_seq(rank, world, group):
    sizes = SHARDS[world]
    vocab = sum(sizes)
    gen = torch.Generator().manual_seed(4)
    h, w = torch.randn(9, 8, generator=gen), torch.randn(vocab, 8, generator=gen)
    labels = torch.randint(0, vocab, (9,), generator=gen)
    labels[2] = -100
    full = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    lp, ent = fdiv_ops.fused_linear_sequence_logprobs(full[0], full[1], labels, return_entropy=True, chunk_size=4)
    (lp.sum() + 0.5 * ent.sum()).backward()
    local = [h.clone().requires_grad_(), _split(w.T, sizes)[rank].T.clone().requires_grad_()]
    glp, gent = fdiv_ops.fused_linear_sequence_logprobs(
        local[0], local[1], labels, return_entropy=True, chunk_size=4, vocab_parallel_group=group
    )
    (glp.sum() + 0.5 * gent.sum()).backward()
    _close("logprobs", glp.detach(), lp.detach(), **FP32)
    _close("entropy", gent.detach(), ent.detach(), **FP32)
    _close("grad_weight", local[1].grad, _split(full[1].grad.T, sizes)[rank].T, rtol=1e-4, atol=1e-5)
    grad_hidden = local[0].grad.clone()
    dist.all_reduce(grad_hidden, group=group)
    _close("grad_hidden", grad_hidden, full[0].grad, rtol=1e-4, atol=1e-5)


def _expect_error(fn, match: str) -> None:
    try:
        fn()
    except ValueError as err:
        assert match in str(err), str(err)
        return
    raise AssertionError(f"no ValueError ({match!r})")


def _misaligned(rank, world, group):
    """Student and teacher shards that cover different columns: every rank raises the same error."""
    sizes = SHARDS[world]
    z, t, _ = _inputs(1, sum(sizes), sum(sizes))
    t_sizes = sizes[::-1]
    _expect_error(
        lambda: fdiv_ops.f_divergence_loss(
            _split(z, sizes)[rank], _split(t, t_sizes)[rank], vocab_parallel_group=group
        ),
        "shards do not line up",
    )


def _labels_differ(rank, world, group):
    sizes = SHARDS[world]
    z, t, labels = _inputs(1, sum(sizes), sum(sizes))
    labels[0] = rank  # differs between ranks
    for call in (
        lambda: fdiv_ops.f_divergence_loss(
            _split(z, sizes)[rank], _split(t, sizes)[rank], labels=labels, vocab_parallel_group=group
        ),
        lambda: fdiv_ops.sequence_logprobs(_split(z, sizes)[rank], labels, vocab_parallel_group=group),
    ):
        _expect_error(call, "labels differ between ranks")
    bad = labels.clone().fill_(0)
    bad[3] = sum(sizes)  # one past the global vocabulary
    _expect_error(
        lambda: fdiv_ops.sequence_logprobs(_split(z, sizes)[rank], bad, vocab_parallel_group=group),
        "labels must lie in [0, V) with V = 37",
    )


def _pad_too_large(rank, world, group):
    sizes = SHARDS[world]
    z, t, _ = _inputs(1, sum(sizes), sum(sizes) + 9)
    t_sizes = sizes[:-1] + [sizes[-1] + 9]
    _expect_error(
        lambda: fdiv_ops.f_divergence_loss(
            _split(z, sizes)[rank], _split(t, t_sizes)[rank], max_vocab_pad=4, vocab_parallel_group=group
        ),
        "max_vocab_pad = 4",
    )


def _readme_recipe(rank, world, group):
    """The README's column-parallel recipe, executed from the README: loss, the hidden states' (summed) gradient and
    each rank's weight rows equal the unsharded computation."""
    import pathlib
    import re

    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S) if "ColumnParallelLMHead" in b
    ]
    ns: dict = {}
    exec(compile(block, str(readme), "exec"), ns)  # our own README
    gen = torch.Generator().manual_seed(8)
    vocab = sum(SHARDS[world]) + 1  # tensor_split's sizes, not SHARDS
    w_s, w_t = torch.randn(vocab, 6, generator=gen), torch.randn(vocab, 5, generator=gen)
    h_s, h_t = torch.randn(2, 3, 6, generator=gen), torch.randn(2, 3, 5, generator=gen)
    labels = torch.randint(0, vocab, (2, 3), generator=gen)
    labels[0, 1] = -100
    head_s, head_t = ns["ColumnParallelLMHead"](w_s, group), ns["ColumnParallelLMHead"](w_t, group)
    mine = torch.arange(vocab).tensor_split(world)[rank]
    for recipe, reference in (
        (
            ns["tp_distillation_loss"],
            lambda h, w: fdiv_ops.f_divergence_loss(
                h @ w.T, h_t @ w_t.T, labels=labels, divergence=fdiv_ops.gkd_jsd(0.5), temperature=2.0
            ),
        ),
        (
            ns["tp_fused_distillation_loss"],
            lambda h, w: fdiv_ops.fused_linear_f_divergence(
                h, w, h_t, w_t, labels=labels, divergence="reverse_kl", hard_loss_weight=0.1
            ),
        ),
        (
            lambda h, head, *_: ns["tp_sequence_logprobs"](h, head, labels).sum(),
            lambda h, w: fdiv_ops.sequence_logprobs(h @ w.T, labels).sum(),
        ),
    ):
        head_s.weight.grad = None
        h = h_s.clone().requires_grad_()
        got = recipe(h, head_s, h_t, head_t, labels)
        got.backward()
        h_full, w_full = h_s.clone().requires_grad_(), w_s.clone().requires_grad_()
        want = reference(h_full, w_full)
        want.backward()
        _close("loss", got.detach(), want.detach(), **FP32)
        _close("grad_hidden", h.grad, h_full.grad, rtol=1e-4, atol=1e-5)
        _close("grad_weight", head_s.weight.grad, w_full.grad[mine], rtol=1e-4, atol=1e-5)


BF16 = dict(rtol=2e-2, atol=2e-3)
CASES = {
    "forward_kl_batchmean": lambda r, w, g: _kd_case(r, w, g),
    "all_divergences_sum_T": _all_divergences,
    "none_num_items_teacher_pad": lambda r, w, g: _kd_case(
        r, w, g, divergence="reverse_kl", reduction="none", pad=(0, 3), temperature=0.7
    ),
    "student_pad_num_items": lambda r, w, g: _kd_case(
        r, w, g, divergence="js", pad=(2, 0), num_items_in_batch=7, max_vocab_pad=None
    ),
    "teacher_logprobs": lambda r, w, g: _kd_case(r, w, g, divergence="skew_reverse_kl", logprobs=True, temperature=2.0),
    "total_variation_no_labels": lambda r, w, g: _kd_case(r, w, g, divergence="total_variation", with_labels=False),
    "bf16_js": lambda r, w, g: _kd_case(r, w, g, dtype=torch.bfloat16, divergence="js", tol=BF16),
    "bf16_forward_kl_T": lambda r, w, g: _kd_case(r, w, g, dtype=torch.bfloat16, temperature=2.0, tol=BF16),
    "fp16_reverse_kl_pad": lambda r, w, g: _kd_case(
        r, w, g, dtype=torch.float16, divergence="reverse_kl", pad=(0, 2), tol=dict(rtol=2e-3, atol=2e-4)
    ),
    "nan_rule": _nan_rule,
    "sequence_logprobs": _seq_case,
    "sequence_logprobs_bf16": lambda r, w, g: _seq_case(r, w, g, dtype=torch.bfloat16, tol=BF16),
    "fused_linear_f_divergence": _fused_kd,
    "fused_linear_sequence_logprobs": _fused_seq,
    "readme_recipe": _readme_recipe,
    "misaligned_shards_raise": _misaligned,
    "labels_differ_raise": _labels_differ,
    "pad_too_large_raise": _pad_too_large,
}


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    try:
        for name, case in CASES.items():
            try:
                case(rank, world, dist.group.WORLD)
                results[name] = None
            except Exception:  # reported by the test of this case
                results[name] = traceback.format_exc()
            dist.barrier()
    finally:
        torch.save(results, os.path.join(out_dir, f"results{rank}.pt"))
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def world_results(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"vp{world}")
    mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True)
    return [torch.load(out / f"results{r}.pt") for r in range(world)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("case", list(CASES))
def test_sharded_equals_unsharded(world_results, case):
    failures = [f"rank {r}:\n{res[case]}" for r, res in enumerate(world_results) if res[case] is not None]
    assert not failures, "\n".join(failures)


@pytest.fixture
def single_rank_group():
    """A one-rank gloo group in this process (the vocabulary in one shard): the op's plumbing without spawning."""
    if dist.is_initialized():
        yield dist.group.WORLD
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_top_k_teacher_is_refused_before_any_collective(single_rank_group):
    z = torch.randn(2, 5)
    topk = torch.topk(z, 2)
    with pytest.raises(ValueError, match="teacher_topk is not supported with vocab_parallel_group"):
        fdiv_ops.f_divergence_loss(z, teacher_topk=(topk.indices, topk.values), vocab_parallel_group=single_rank_group)
    with pytest.raises(TypeError, match=r"vocab_parallel_group must be a torch\.distributed ProcessGroup"):
        fdiv_ops.f_divergence_loss(z, z, vocab_parallel_group="world")


def test_compiles_fullgraph(single_rank_group):
    """The collectives run inside the custom ops (the group passed by name), so torch.compile(fullgraph=True) sees
    one opaque op per call, forward and backward, and matches eager."""
    group = single_rank_group
    gen = torch.Generator().manual_seed(2)
    z, t = torch.randn(4, 11, generator=gen, requires_grad=True), torch.randn(4, 11, generator=gen)
    labels = torch.randint(0, 11, (4,), generator=gen)

    def kd(z, t, labels, temperature):
        return fdiv_ops.f_divergence_loss(
            z, t, labels=labels, divergence="js", temperature=temperature, vocab_parallel_group=group
        )

    def seq(z, t, labels, temperature):
        lp, ent = fdiv_ops.sequence_logprobs(
            z, labels, temperature=temperature, return_entropy=True, vocab_parallel_group=group
        )
        return lp.sum() + ent.sum()

    for fn in (kd, seq):
        want = fn(z, t, labels, 1.5)
        (want_grad,) = torch.autograd.grad(want, z)
        got = torch.compile(fn, fullgraph=True)(z, t, labels, 1.5)
        (got_grad,) = torch.autograd.grad(got, z)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_grad, want_grad)


def test_opcheck(single_rank_group):
    """torch.library.opcheck on the registered vocabulary-parallel ops (schema, fake, autograd registration)."""
    from fdiv_ops.ops import vocab_parallel as vp
    from fdiv_ops.ops import vocab_parallel_logprobs as vpl

    name = single_rank_group.group_name
    gen = torch.Generator().manual_seed(6)
    z, t = torch.randn(4, 9, generator=gen, requires_grad=True), torch.randn(4, 9, generator=gen)
    labels = torch.randint(0, 9, (4,), generator=gen)
    h, w = torch.randn(4, 5, generator=gen, requires_grad=True), torch.randn(9, 5, generator=gen, requires_grad=True)
    half = torch.tensor(0.5, dtype=torch.float64)
    cases = [
        (vp.dense_op, (z, t, torch.full((4,), 0.25), labels, 2, 0.0, half, False, -1, name)),
        (vpl.seq_op, (z, labels, -100, half, True, name)),
        (vpl.linear_op, (h, w, None, labels, -100, half, True, 2, name)),
        (
            vp.fused_op,
            (
                h,
                w,
                None,
                h.detach(),
                w.detach(),
                None,
                torch.full((4,), 0.25),
                labels,
                half,
                0,
                0.0,
                half,
                2,
                -1,
                name,
                True,
                True,
            ),
        ),
    ]
    for op, args in cases:
        torch.library.opcheck(op.op, args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_single_rank_nccl_matches_unsharded(single_rank_group, dtype):
    """The CUDA phases on a one-rank NCCL group (one GPU: the whole vocabulary in one shard) equal the unsharded CUDA
    op; an out-of-range label gives NaN there instead of raising (no host sync)."""
    group = dist.new_group([0], backend="nccl")
    gen = torch.Generator().manual_seed(12)
    z = (2 * torch.randn(7, 301, generator=gen)).to(dtype).cuda()
    t = (2 * torch.randn(7, 305, generator=gen)).to(dtype).cuda()  # teacher padding on the (only) rank
    labels = torch.randint(0, 301, (7,), generator=gen).cuda()
    labels[2] = -100
    tol = FP32 if dtype == torch.float32 else BF16
    for div in ("forward_kl", "js", fdiv_ops.gkd_jsd(0.3), "total_variation", fdiv_ops.alpha(0.5)):
        kw = dict(labels=labels, divergence=div, temperature=1.5, reduction="sum")
        full = z.clone().requires_grad_()
        want = fdiv_ops.f_divergence_loss(full, t, **kw)
        want.backward()
        mine = z.clone().requires_grad_()
        got = fdiv_ops.f_divergence_loss(mine, t, vocab_parallel_group=group, **kw)
        got.backward()
        _close(f"{div} loss", got.detach(), want.detach(), **tol)
        _close(f"{div} grad", mine.grad, full.grad, **tol)
    full = z.clone().requires_grad_()
    lp, ent = fdiv_ops.sequence_logprobs(full, labels, return_entropy=True)
    (lp.sum() + ent.sum()).backward()
    mine = z.clone().requires_grad_()
    glp, gent = fdiv_ops.sequence_logprobs(mine, labels, return_entropy=True, vocab_parallel_group=group)
    (glp.sum() + gent.sum()).backward()
    for name, got, want in (("logprobs", glp, lp), ("entropy", gent, ent), ("grad", mine.grad, full.grad)):
        _close(name, got.detach(), want.detach(), **tol)
    bad = labels.clone()
    bad[0] = 301
    out = fdiv_ops.sequence_logprobs(z, bad, vocab_parallel_group=group)
    assert torch.isnan(out[0]) and not torch.isnan(out[1:]).any()
    dist.destroy_process_group(group)
