"""The providers of ``fdiv-ops bench`` (see spec.py) and the forward / forward+backward steps that time them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .peers import liger_unavailable, trl_unavailable
from .spec import Case, Impl, Inputs, OpBench, Provider

PROVIDERS = ("fdiv_ops", "torch", "compile", "trl", "liger")
BASELINES = ("torch", "compile", "trl")  # what a speed-up can be measured against (--baseline)


def build(bench: OpBench, case: Case, name: str, device: torch.device) -> Impl | str:
    """The provider ``name`` for one case, or a note saying why it cannot run here."""
    if name == "fdiv_ops":
        return Impl(bench.fused(case), f"fdiv_ops.{bench.api}")
    if name in ("torch", "compile"):
        idiom = bench.idiomatic(case)
        if isinstance(idiom, str) or name == "torch":
            return idiom
        # dynamic=False: one static graph per size, which is how a training loop with fixed shapes runs.
        return Impl(torch.compile(idiom.fn, dynamic=False), "torch.compile of the torch provider's expression")
    if name == "trl":
        why_not = trl_unavailable()
        return why_not if why_not is not None else bench.trl(case)
    if name == "liger":
        why_not = liger_unavailable(device)
        return why_not if why_not is not None else bench.liger(case, device)
    raise ValueError(f"unknown provider {name!r}; valid: {', '.join(PROVIDERS)}")


def clear_grads(inputs: Inputs) -> None:
    for index in inputs.grad_args:
        inputs.args[index].grad = None


def forward_step(fn: Provider, inputs: Inputs) -> Callable[[], object]:
    """One training forward: inputs require grad (so autograd saves what it needs), no backward."""

    def step():
        return fn(*inputs.args)

    return step


def forward_backward_step(fn: Provider, inputs: Inputs) -> Callable[[], object]:
    """Forward, then backward with an all-ones upstream gradient, into fresh .grad tensors."""

    def step():
        clear_grads(inputs)
        out = fn(*inputs.args)
        out.backward(torch.ones_like(out))
        return out

    return step


def require_grads(inputs: Inputs) -> Inputs:
    args = list(inputs.args)
    for index in inputs.grad_args:
        args[index] = args[index].detach().requires_grad_(True)
    return Inputs(tuple(args), inputs.grad_args)


def outputs_and_grads(fn: Provider, inputs: Inputs) -> list[torch.Tensor]:
    """[output, grad of each grad arg] of one forward+backward, detached."""
    out = forward_backward_step(fn, inputs)()
    return [out.detach()] + [inputs.args[i].grad.detach() for i in inputs.grad_args]


def upcast(inputs: Inputs) -> Inputs:
    """The same values in float64 (integer tensors such as labels kept), for the reference run."""
    args = tuple(
        a.detach().to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in inputs.args
    )
    return require_grads(Inputs(args, inputs.grad_args))


def max_rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """max over the output and every gradient of max|got - want| / max|want| (normwise, so entries near
    zero do not blow it up; a tensor whose reference is all zeros contributes its max abs error)."""
    worst = 0.0
    for g, w in zip(got, want):
        diff = (g.to(torch.float64) - w).abs().max().item()
        if not math.isfinite(diff):  # NaN or inf where the reference is finite: max() would hide NaN
            return math.inf
        scale = w.abs().max().item()
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst
