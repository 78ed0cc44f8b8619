"""Which ops ``fdiv-ops bench`` knows: every file bench/<op>.py named here whose fdiv_ops function exists.

Adding an op is adding its bench file and its name below. Ops still being written are listed too: until
``fdiv_ops.<api>`` exists they are simply absent from ``available()`` (their files import nothing from the
op at module level, so they cannot break anything).
"""

from __future__ import annotations

import importlib

import fdiv_ops

from .spec import OpBench

OP_MODULES = ("f_distill", "f_divergence", "sequence_logprobs", "fused_linear")


def declared() -> dict[str, OpBench]:
    """Every bench file's declaration, whether or not its op exists in this build."""
    return {name: importlib.import_module(f"{__package__}.{name}").BENCH for name in OP_MODULES}


def available() -> dict[str, OpBench]:
    """The declarations whose op exists: ``hasattr(fdiv_ops, bench.api)``."""
    return {name: bench for name, bench in declared().items() if hasattr(fdiv_ops, bench.api)}


def missing() -> dict[str, str]:
    """op name -> the fdiv_ops function it waits for, for the ops declared but not (yet) in fdiv_ops."""
    return {name: bench.api for name, bench in declared().items() if not hasattr(fdiv_ops, bench.api)}
