"""process_group makes the mean of h global over data-parallel ranks: 2 gloo processes on CPU."""

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


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, teacher, fake, logits = (v[rank * LOCAL_B : (rank + 1) * LOCAL_B] for v in _global_batch())
        x = x.clone().requires_grad_()
        fdiv_ops.f_distill_loss(
            x, teacher, fake, logits, divergence="forward_kl", process_group=dist.group.WORLD, reduction="sum"
        ).backward()
        torch.save(x.grad, os.path.join(out_dir, f"grad{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_h_mean_is_global_over_ranks(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
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
