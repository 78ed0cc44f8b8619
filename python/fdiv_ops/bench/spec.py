"""The interface every benchmarked op declares: one ``OpBench`` per file python/fdiv_ops/bench/<op>.py.

An op plugs into ``fdiv-ops bench`` by exposing a module-level ``BENCH = OpBench(...)`` and being listed in
``registry.OP_MODULES``; the registry shows it only once ``fdiv_ops.<api>`` exists, so a bench file can be
written before its op lands. The harness (runner.py) owns timing, memory, errors and the providers built
from these pieces:

    fdiv_ops  fused(case)                        the package's op
    eager     reference(case)                    fdiv_ops.reference, the float64-capable eager mirror
    compile   torch.compile(reference(case))     the strongest generic baseline on element-wise losses
    liger     liger(case, device)                the nearest Liger-Kernel op, or a note saying why not

Every provider takes the inputs' ``args`` positionally and returns one tensor (a loss, or per-token values);
forward+backward calls ``out.backward(ones_like(out))`` and reads the gradients of ``args[i]`` for
``i in grad_args``. The reference run in float64 on the same (upcast) inputs is the truth for max_rel_err.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# A provider: the inputs' args -> one output tensor.
Provider = Callable[..., torch.Tensor]


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
    reference: Callable[[Case], Provider | None]  # None: fdiv_ops.reference lacks this op yet
    liger: Callable[[Case, torch.device], Provider | str]  # a provider, or why there is none
    bytes_moved: Callable[[Case, torch.dtype], int]  # the minimum a fused forward+backward must move
    roofline_note: str = ""  # shown under the table, e.g. that an op is GEMM-bound, not memory-bound


def liger_unavailable(device: torch.device) -> str | None:
    """Why no Liger-Kernel provider can run here, or None when liger_kernel imports on a CUDA device."""
    if device.type != "cuda":
        return "liger-kernel is Triton/CUDA only"
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None
