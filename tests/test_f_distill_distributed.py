"""process_group makes the mean of h global over data-parallel ranks: 2 gloo processes on CPU.

Starting the processes costs far more than any case (each imports torch), so one spawn, shared by the tests of
this module, runs every case and saves its results; the tests then check them in the parent."""

import os
import socket

import fdiv_ops
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fdiv_ops import reference as ref

WORLD, LOCAL_B, SHAPE = 2, 3, (2, 5)


def _global_batch():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(WORLD * LOCAL_B, *SHAPE, generator=gen, dtype=torch.float64)
    teacher = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    fake = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    logits = 3.0 * torch.randn(WORLD * LOCAL_B, generator=gen, dtype=torch.float64)
    return x, teacher, fake, logits


def _global_mean_case(rank, out_dir):
    x, teacher, fake, logits = (v[rank * LOCAL_B : (rank + 1) * LOCAL_B] for v in _global_batch())
    x = x.clone().requires_grad_()
    fdiv_ops.f_distill_loss(
        x, teacher, fake, logits, divergence="forward_kl", process_group=dist.group.WORLD, reduction="sum"
    ).backward()
    torch.save(x.grad, os.path.join(out_dir, f"grad{rank}.pt"))


def _worker(rank, port, out_dir):
    import datetime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a short timeout turns a desync (one rank waiting in a collective the other skipped) into an error, not a hang
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=20))
    try:
        _global_mean_case(rank, out_dir)
        _mixed_cases(rank, out_dir)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """The directory where both ranks saved every case's results."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def test_h_mean_is_global_over_ranks(spawned):
    tmp_path = spawned
    x, teacher, fake, logits = _global_batch()
    _, h = ref.f_distill_weights(logits, "forward_kl")
    h = h / (h.mean() + 1e-6)  # the mean over all WORLD * LOCAL_B samples
    normalizer = (x - teacher).abs().flatten(1).mean(1)
    want = (h / (normalizer + 1e-6)).view(-1, 1, 1) * (fake - teacher)
    got = torch.cat([torch.load(tmp_path / f"grad{r}.pt") for r in range(WORLD)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    local_only = fdiv_ops.f_distill(
        x[:LOCAL_B], teacher[:LOCAL_B], fake[:LOCAL_B], logits[:LOCAL_B], divergence="forward_kl"
    ).h
    assert not torch.allclose(local_only, h[:LOCAL_B])  # the test distinguishes global from local means


# ---------------------------------------------------------------------------------------------------
# Mixed arguments (issue 16 item 7): every rank makes the same collectives whatever its arguments. A rank that
# skipped the all-reduce of [sum h, count] left the other's waiting, or paired it with the next unrelated
# all-reduce (whose values came back corrupted). After each case an unrelated all-reduce checks that the ranks
# are still paired.

MIXED_B = (3, 5)  # unequal batches: rank 0 has 3 samples, rank 1 has 5


def _mixed_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    total = sum(MIXED_B)
    x = torch.randn(total, *SHAPE, generator=gen, dtype=torch.float64)
    teacher = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    fake = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    logits = 3.0 * torch.randn(total, 2, generator=gen, dtype=torch.float64)
    time = torch.rand(total, generator=gen, dtype=torch.float64)
    return x, teacher, fake, logits, time


def _shard(values, rank):
    lo = sum(MIXED_B[:rank])
    return [v[lo : lo + MIXED_B[rank]] for v in values]


# case -> per rank: (divergence, with disc_logits, normalize)
MIXED_CASES = {
    "no_logits_on_rank1": (("js", True, True), ("reverse_kl", False, True)),
    "normalize_off_on_rank1": (("js", True, True), ("js", True, False)),
    "normalize_off_and_no_logits": (("forward_kl", True, False), ("reverse_kl", False, True)),
}


def _mixed_cases(rank, out_dir):
    results = {}
    try:
        for seed, (case, per_rank) in enumerate(MIXED_CASES.items()):
            div, with_logits, normalize = per_rank[rank]
            x, teacher, fake, logits, _ = _shard(_mixed_batch(seed), rank)
            x = x.clone().requires_grad_()
            out = fdiv_ops.f_distill(
                x,
                teacher,
                fake,
                logits if with_logits else None,
                divergence=div,
                normalize=normalize,
                process_group=dist.group.WORLD,
            )
            out.loss.backward()
            results[case] = (out.loss.detach(), x.grad, out.h)
            check = torch.tensor([float(rank + 1)])
            dist.all_reduce(check)  # still paired: 1 + 2
            results[case + "/check"] = check
        # FDistillLoss with time bins: rank 1 has no disc_logits (so no ratio to bin) and no time
        div = "js" if rank == 0 else "reverse_kl"
        group = dist.group.WORLD
        module = fdiv_ops.FDistillLoss(div, num_time_bins=4, ema_rate=0.5, time_range=(0.0, 1.0), process_group=group)
        x, teacher, fake, logits, time = _shard(_mixed_batch(99), rank)
        for _ in range(2):
            loss = module(x, teacher, fake, logits if rank == 0 else None, time=time if rank == 0 else None)
        results["bins"] = (loss.detach(), module.bins.clone())
        check = torch.tensor([float(rank + 1)])
        dist.all_reduce(check)
        results["bins/check"] = check
    finally:
        torch.save(results, os.path.join(out_dir, f"mixed{rank}.pt"))


def _want_h(div, logits, normalize, global_sum, global_count):
    if logits is None:
        return torch.ones(MIXED_B[1], dtype=torch.float64)
    _, h = ref.f_distill_weights(logits, div)
    return h / (global_sum / global_count + 1e-6) if normalize else h


def test_mixed_arguments_keep_ranks_in_step_and_correct(spawned):
    got = [torch.load(spawned / f"mixed{r}.pt") for r in range(WORLD)]
    for seed, (case, per_rank) in enumerate(MIXED_CASES.items()):
        batch = _mixed_batch(seed)
        # the global mean of h: h of every rank with logits, 1 per sample of a rank without
        hs = []
        for rank, (div, with_logits, _) in enumerate(per_rank):
            logits = _shard(batch, rank)[3]
            hs.append(ref.f_distill_weights(logits, div)[1] if with_logits else torch.ones(MIXED_B[rank]))
        global_sum, global_count = float(torch.cat(hs).double().sum()), sum(MIXED_B)
        for rank, (div, with_logits, normalize) in enumerate(per_rank):
            x, teacher, fake, logits, _ = _shard(batch, rank)
            h = _want_h(div, logits if with_logits else None, normalize, global_sum, global_count)
            want_grad = (h / ((x - teacher).abs().flatten(1).mean(1) + 1e-6)).view(-1, 1, 1) * (fake - teacher)
            want_grad = want_grad / want_grad.numel()  # reduction "mean"
            loss, grad, got_h = got[rank][case]
            assert got[rank][case + "/check"].item() == 3.0, (case, rank)
            torch.testing.assert_close(got_h, h, rtol=1e-10, atol=0, msg=f"{case} rank {rank}: h")
            torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-15, msg=f"{case} rank {rank}: grad")
            want_loss = 0.5 * (want_grad * want_grad.numel()).pow(2).mean()
            torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=0, msg=f"{case} rank {rank}: loss")
    # the bins: only rank 0's ratios are binned, and both ranks hold the same bins after the shared all-reduce
    (loss0, bins0), (loss1, bins1) = got[0]["bins"], got[1]["bins"]
    assert got[0]["bins/check"].item() == 3.0 and got[1]["bins/check"].item() == 3.0
    assert torch.equal(bins0, bins1) and not torch.equal(bins0, torch.ones(4))
    _, _, _, logits, time = _shard(_mixed_batch(99), 0)
    r, _ = ref.f_distill_weights(logits, "js")
    idx = (time / 0.25).floor().long().clamp(0, 3)
    want_bins = torch.ones(4, dtype=torch.float64)
    for _ in range(2):
        for k in range(4):
            if (idx == k).any():
                want_bins[k] = 0.5 * want_bins[k] + 0.5 * r[idx == k].mean()
    torch.testing.assert_close(bins0.double(), want_bins, rtol=1e-6, atol=0)
    assert torch.isfinite(loss0) and torch.isfinite(loss1)
