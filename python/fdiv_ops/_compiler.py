"""torch.compile markers that cost nothing at import time.

``torch.compiler.assume_constant_result`` imports torch._dynamo (about 2 s on a 2-core CPU) to set one
attribute on the function; fdiv_ops decorates functions at import, so every ``import fdiv_ops`` (and every
``fdiv-ops`` command, even one that fails on its arguments) would pay for it. Dynamo reads the attribute only
when it traces a call, by which time it is imported anyway. tests/test_compile.py checks that the marker is
the one torch's own decorator sets, and that fullgraph compiles still fold these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_F = TypeVar("_F", bound=Callable)

# the attribute torch._dynamo.decorators.assume_constant_result sets (torch 2.4 through 2.13)
DYNAMO_CONSTANT_MARK = "_dynamo_marked_constant"


def assume_constant_result(fn: _F) -> _F:
    """Mark `fn` (a pure function of constants) so that torch.compile evaluates it once while tracing and bakes
    the result into the graph, as torch.compiler.assume_constant_result does, without importing torch._dynamo."""
    setattr(fn, DYNAMO_CONSTANT_MARK, True)
    return fn
