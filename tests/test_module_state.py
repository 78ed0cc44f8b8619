"""Modules validate before they change state: every rejected call leaves every buffer (and the logged statistics)
exactly as it was. And where checking a value would need a host sync (a CUDA tensor; any tensor under
torch.compile), the documented no-sync behaviour: NaN for the affected samples, no state change from them."""

import math

import fdiv_ops
import pytest
import torch


def _snapshot(module):
    state = {k: v.clone() for k, v in module.state_dict().items()}
    for name in ("last_ratio", "last_h", "last_normalizer", "_last_logits"):
        value = getattr(module, name, None)
        state[name] = None if value is None else value.clone()
    return state


def _assert_unchanged(module, before):
    after = _snapshot(module)
    assert after.keys() == before.keys()
    for key, value in before.items():
        if value is None:
            assert after[key] is None, key
        else:
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


def _distill_inputs(batch=6):
    x = torch.randn(batch, 10)
    return x, x + 0.3 * torch.randn(batch, 10), x + 0.3 * torch.randn(batch, 10), 2 * torch.randn(batch, 2)


FDISTILL_BAD = [
    ("x dtype", lambda x, t, f, lg, time: ((x.long(), t, f, lg), {"time": time})),
    ("teacher shape", lambda x, t, f, lg, time: ((x, t[:, :5], f, lg), {"time": time})),
    ("fake dtype", lambda x, t, f, lg, time: ((x, t, f.double(), lg), {"time": time})),
    ("logits batch", lambda x, t, f, lg, time: ((x, t, f, lg[:3]), {"time": time})),
    ("logits dtype", lambda x, t, f, lg, time: ((x, t, f, lg.long()), {"time": time})),
    ("time shape", lambda x, t, f, lg, time: ((x, t, f, lg), {"time": time[:2]})),
    ("time missing", lambda x, t, f, lg, time: ((x, t, f, lg), {})),
    ("time bool", lambda x, t, f, lg, time: ((x, t, f, lg), {"time": time > 0.5})),
    ("x batch of 0", lambda x, t, f, lg, time: ((x[:0], t[:0], f[:0], lg[:0]), {"time": time[:0]})),
]


@pytest.mark.parametrize("name, make", FDISTILL_BAD, ids=[b[0] for b in FDISTILL_BAD])
def test_fdistill_loss_rejects_before_updating_its_bins(name, make):
    module = fdiv_ops.FDistillLoss("js", num_time_bins=4, ema_rate=0.5, time_range=(0.0, 1.0))
    x, t, f, logits = _distill_inputs()
    time = torch.rand(6)
    module(x, t, f, logits, time=time)  # a valid step first: the bins and statistics hold something
    assert not torch.equal(module.bins, torch.ones(4))
    before = _snapshot(module)
    args, kwargs = make(x, t, f, logits, time)
    with pytest.raises((ValueError, TypeError)):
        module(*args, **kwargs)
    _assert_unchanged(module, before)


@pytest.mark.parametrize(
    "attribute, value",
    [("eps", 0.0), ("logit_clamp", -1.0), ("ratio_clip", (2.0, 1.0)), ("reduction", "avg"), ("normalize", "no")],
)
def test_fdistill_loss_rejects_a_bad_attribute_before_updating_its_bins(attribute, value):
    module = fdiv_ops.FDistillLoss("js", num_time_bins=4, ema_rate=0.5, time_range=(0.0, 1.0))
    x, t, f, logits = _distill_inputs()
    module(x, t, f, logits, time=torch.rand(6))
    before = _snapshot(module)
    setattr(module, attribute, value)
    with pytest.raises((ValueError, TypeError), match=attribute):
        module(x, t, f, logits, time=torch.rand(6))
    _assert_unchanged(module, before)


def _dpg_inputs(batch=6):
    return torch.randn(batch, requires_grad=True), torch.randn(batch)


FDPG_BAD = [
    ("policy 2-d", lambda p, t: ((p[:, None], t), {})),
    ("policy long", lambda p, t: ((p.detach().long(), t), {})),
    ("target shape", lambda p, t: ((p, t[:4]), {})),
    ("target none", lambda p, t: ((p, None), {})),
    ("proposal shape", lambda p, t: ((p, t), {"proposal_logprobs": t[:2]})),
    ("proposal long", lambda p, t: ((p, t), {"proposal_logprobs": t.long()})),
    ("context float", lambda p, t: ((p, t), {"context": torch.zeros(6)})),
    ("context shape", lambda p, t: ((p, t), {"context": torch.zeros(5, dtype=torch.long)})),
    ("context out of range", lambda p, t: ((p, t), {"context": torch.tensor([0, 1, 2, 3, 0, 1])})),
    ("context negative", lambda p, t: ((p, t), {"context": torch.tensor([0, -1, 2, 0, 0, 1])})),
]


@pytest.mark.parametrize("name, make", FDPG_BAD, ids=[b[0] for b in FDPG_BAD])
def test_fdpg_rejects_before_updating_z_and_baseline(name, make):
    module = fdiv_ops.FDPG("js", num_contexts=3)
    p, t = _dpg_inputs()
    module(p, t, context=torch.tensor([0, 1, 2, 0, 1, 2]))
    before = _snapshot(module)
    assert torch.isfinite(before["log_z_sum"]).all() and (before["baseline_steps"] > 0).all()
    args, kwargs = make(p, t)
    with pytest.raises((ValueError, TypeError)):
        module(*args, **kwargs)
    _assert_unchanged(module, before)


@pytest.mark.parametrize("attribute, value", [("max_exponent", 0.0), ("divergence", fdiv_ops.alpha(1 - 1e-9))])
def test_fdpg_rejects_a_bad_attribute_before_updating(attribute, value):
    module = fdiv_ops.FDPG("js", num_contexts=3)
    p, t = _dpg_inputs()
    module(p, t)
    before = _snapshot(module)
    setattr(module, attribute, value)
    with pytest.raises(ValueError):
        module(p, t)
    _assert_unchanged(module, before)


def test_constructors_validate_their_own_arguments():
    """What issue 11 found accepted until the first forward."""
    for make, match in [
        (lambda: fdiv_ops.FDivergenceLoss(reduction="avg"), "reduction"),
        (lambda: fdiv_ops.FDivergenceLoss(ignore_index=1.5), "ignore_index"),
        (lambda: fdiv_ops.FusedLinearFDivergenceLoss(chunk_size=0), "chunk_size"),
        (lambda: fdiv_ops.FusedLinearFDivergenceLoss(reduction="none"), "reduction"),
        (lambda: fdiv_ops.FDistillLoss(eps=0.0), "eps"),
        (lambda: fdiv_ops.FDistillLoss(reduction="avg"), "reduction"),
        (lambda: fdiv_ops.FDistillLoss(process_group="grp"), "process_group"),
        (lambda: fdiv_ops.FDPG(baseline_momentum="x"), "baseline_momentum"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            make()


# ---------------------------------------------------------------------------------------------------
# The no-sync behaviour, exercised on the CPU under torch.compile (where the eager CPU checks are skipped, as on
# CUDA they always are).


def test_invalid_num_items_in_batch_tensor_gives_nan_without_a_check():
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    step = torch.compile(
        lambda s, t, n: fdiv_ops.f_divergence_loss(s, t, num_items_in_batch=n), backend="aot_eager", fullgraph=True
    )
    for bad in (0.0, -3.0, math.nan, math.inf):
        assert torch.isnan(step(s, t, torch.tensor(bad))), bad
    torch.testing.assert_close(
        step(s, t, torch.tensor(8.0)), fdiv_ops.f_divergence_loss(s, t, num_items_in_batch=8), rtol=1e-6, atol=0
    )


def test_out_of_range_context_gives_nan_and_updates_nothing_without_a_check():
    compiled, eager = fdiv_ops.FDPG("js", num_contexts=2), fdiv_ops.FDPG("js", num_contexts=2)
    step = torch.compile(lambda m, p, t, c: m(p, t, context=c), backend="aot_eager", fullgraph=True)
    p, t = torch.randn(4), torch.randn(4)
    _, stats = step(compiled, p, t, torch.tensor([0, 5, 1, -2]))
    assert torch.isnan(stats["log_z"][[1, 3]]).all() and torch.isfinite(stats["log_z"][[0, 2]]).all()
    assert torch.isnan(stats["baseline"][[1, 3]]).all()
    eager(p[[0, 2]], t[[0, 2]], context=torch.tensor([0, 1]))  # the valid samples alone
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, rtol=1e-12, atol=0, msg=key)
