"""The interface every benchmarked op declares: one ``OpBench`` per file python/fdiv_ops/bench/<op>.py.

An op plugs into ``fdiv-ops bench`` by exposing a module-level ``BENCH = OpBench(...)`` and being listed in
``registry.OP_MODULES``; the registry shows it only once ``fdiv_ops.<api>`` exists, so a bench file can be
written before its op lands. The harness (runner.py) owns timing, memory, errors and the providers built
from these pieces, each answering "is this faster than what I use now?":

    fdiv_ops  fused(case)                    the package's op
    torch     idiomatic(case)                the eager PyTorch a user writes for this loss (F.kl_div on
                                             log_softmax, gather - logsumexp, the DMD2/FastGen loss, ...)
    compile   torch.compile(idiomatic(case)) the same expression compiled
    trl       trl(case)                      TRL's own function from the installed package, or why not
    liger     liger(case, device)            the nearest Liger-Kernel op, or why not

``reference(case)``, the package's generic float64-capable mirror (fdiv_ops.reference), is never timed: run
in float64 on the same (upcast) inputs it is the oracle of the max_rel_err column.

Every provider takes the inputs' ``args`` positionally and returns one tensor (a loss, or per-token values);
forward+backward calls ``out.backward(ones_like(out))`` and reads the gradients of ``args[i]`` for
``i in grad_args``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# A provider: the inputs' args -> one output tensor.
Provider = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Impl:
    """A runnable provider and what it is, in the words its users know it by (shown under the table)."""

    fn: Provider
    source: str


@dataclass(frozen=True)
class Case:
    """One size of one op: ``shape`` is what the table and the JSON show, ``params`` the op's settings."""

    shape: tuple[int, ...]
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        text = "x".join(map(str, self.shape))
        return text + "".join(f" {value}" for value in self.params.values())


@dataclass
class Inputs:
    """Positional arguments of every provider; the tensors at ``grad_args`` require gradients."""

    args: tuple
    grad_args: tuple[int, ...]


@dataclass(frozen=True)
class OpBench:
    """What one op declares to the harness (see the module docstring)."""

    name: str  # the op's name in the CLI and the JSON: "f_distill"
    api: str  # the fdiv_ops attribute that must exist for the op to be listed: "f_distill_loss"
    cases: Callable[[str, torch.device], list[Case]]  # preset ("tiny" | "quick" | "full"), device -> sizes
    make_inputs: Callable[[Case, torch.dtype, torch.device], Inputs]  # deterministic (seeded)
    fused: Callable[[Case], Provider]
    idiomatic: Callable[[Case], Impl | str]  # the `torch` provider (and `compile`'s input), or why none
    trl: Callable[[Case], Impl | str]  # imports trl lazily: called only when trl imports
    liger: Callable[[Case, torch.device], Impl | str]  # imports liger_kernel lazily: CUDA only
    reference: Callable[[Case], Provider | None]  # the float64 oracle; None: fdiv_ops.reference lacks this op
    bytes_moved: Callable[[Case, torch.dtype], int]  # the minimum a fused forward+backward must move
    # Elements of the largest tensor the float64 oracle materialises (rows x V for a loss on logits): the
    # runner skips the error check where ~16 such float64 tensors would not fit in the memory free.
    oracle_numel: Callable[[Case], int] | None = None
    roofline_note: str = ""  # shown under the table, e.g. that an op is GEMM-bound, not memory-bound
