"""The plumbing every op shares: how it reaches its kernels, how it is registered with torch, how its saved
gradient flows back, and how rows are weighted by a reduction.

* ``launch(kernel, device, **args)``: tensors pass to ``_C`` as they are (read through the DLPack C exchange table
  torch >= 2.10 publishes) or as DLPack capsules (``torch.utils.dlpack.to_dlpack``), never with a stream
  synchronisation, on torch's current CUDA stream, with torch's CPU thread count. The binding
  (csrc/bindings/<op>.cpp) checks every tensor against the others and binds the tensors' device for the launch.
* ``Op``: one ``torch.library.custom_op`` (what torch.compile, export and opcheck see) and its eager fast path
  from the same implementation, fake, setup_context and backward. The fast path is a plain
  ``torch.autograd.Function`` around the implementation, taken when nothing traces (no torch.compile, fake or
  functional tensors, dispatch or function modes, functorch transforms): it skips torch.library's dispatch and
  autograd layers. Measured with callgrind on a forward + backward of 4 x 64 fp32 inputs, the registered path
  costs 1.3-2.4x the instructions of the fast path (f_divergence_loss 876k vs 612k, fused_linear_f_divergence
  1.71M vs 0.92M, f_distill_loss 1.38M vs 0.57M). The cost is per call, not per element (f_divergence_loss at
  64 x 4096 saved the same ~0.18M instructions as at 4 x 64 against the previous bindings, 0.2% of that
  kernel), so it matters for small inputs only and costs large ones nothing: every op takes the fast path, and
  a call with nothing to differentiate skips the autograd.Function too.
* ``saved_gradient``: the "gradient written in forward, scaled by grad_output in backward" pattern.
* ``row_weights``: the per-row weights of a "batchmean"/"sum"/"none" reduction with ignored rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.dlpack import to_dlpack

from .. import _C
from .._cuda_status import require_cuda

# ---------------------------------------------------------------------------------------------------
# Reaching the kernels


def cuda_stream(device: torch.device) -> int:
    """The handle of torch's current stream on `device` (a CUDA device): the kernels launch there, unsynchronised."""
    return torch.cuda.current_stream(device).cuda_stream


# torch >= 2.10 publishes the DLPack C exchange table on its tensor type: the bindings then read each tensor in
# place (no capsule, no allocation) and take torch's current CUDA stream through it. Older torch: capsules from
# to_dlpack and the stream from torch.cuda.current_stream.
DIRECT_TENSORS = bool(_C.dlpack_exchange(torch.empty(0)))
_SIGNATURES: dict[object, tuple[str, ...] | None] = {}


def _parameters(kernel) -> tuple[str, ...] | None:
    """The parameter names of a _C entry point, in order (from its pybind11 signature), or None if unreadable."""
    if kernel not in _SIGNATURES:
        doc = (getattr(kernel, "__doc__", None) or "").split("\n", 1)[0]
        match = re.match(r"^\w+\((.*)\) ->", doc)
        _SIGNATURES[kernel] = tuple(re.findall(r"(\w+): ", match.group(1))) if match else None
    return _SIGNATURES[kernel]


def launch(kernel: Callable, device: torch.device, /, **args) -> None:
    """Call the ``_C`` entry point `kernel` with `args` (every parameter but stream and num_threads, by name): tensors
    as they are or as DLPack capsules (borrowed by the binding for the call), None and scalars as they are, plus the
    CUDA stream of `device` where the binding cannot ask torch itself, and the CPU thread count. The arguments go
    positionally where the signature is known (pybind11 matches keywords by building a string per parameter)."""
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"fdiv_ops runs on CPU and CUDA tensors, got a tensor on {device}")
    if device.type == "cuda":
        require_cuda(device)  # cached: says exactly why CUDA is unusable here and what to install
    if DIRECT_TENSORS:
        stream = None  # the binding takes torch's current stream of the tensors' device
    else:
        stream = cuda_stream(device) if device.type == "cuda" else 0
        for name, value in args.items():
            if isinstance(value, torch.Tensor):
                args[name] = to_dlpack(value)
    args["stream"] = stream
    args["num_threads"] = torch.get_num_threads()
    names = _parameters(kernel)
    if names is not None and len(names) == len(args):
        try:
            positional = [args[name] for name in names]
        except KeyError:
            pass
        else:
            kernel(*positional)
            return
    kernel(**args)


def scalar_tensor(value) -> torch.Tensor:
    """A number as a 0-dim float64 CPU tensor, formed by tensor arithmetic so that torch.compile keeps a value that
    changes between calls symbolic (a Python float passed to an op's float argument is specialised: one graph per
    value)."""
    return torch.ones((), dtype=torch.float64) * value


def scalar_arg(op: str, name: str, value: object) -> float:
    """An op's scalar argument as a Python number, from a number (the eager fast path) or a 0-dim CPU tensor (the
    registered op, see Op): reading a CPU tensor is no device synchronisation."""
    if not isinstance(value, torch.Tensor):
        return value  # type: ignore[return-value]
    if value.dim() != 0 or value.device.type != "cpu" or not value.dtype.is_floating_point:
        raise ValueError(
            f"fdiv_ops::{op}: {name} must be a 0-dim floating CPU tensor, got {value.dtype} {tuple(value.shape)} "
            f"on {value.device}"
        )
    return value.item()


def operand(value, like: torch.Tensor):
    """A number used as an operand of `like` (a clamp bound, a fill value): itself in eager mode, a 0-dim tensor on
    like's device under torch.compile, so that a value that changes between calls does not recompile."""
    if not torch.compiler.is_compiling():
        return value
    return like.new_ones((), dtype=like.dtype) * value


def tensor_arg(op: str, name: str, value: object, ndim: int | range | tuple[int, ...] | None = None) -> torch.Tensor:
    """The defensive first look of an op implementation (and its fake) at a tensor argument, before it allocates
    anything: a clear TypeError/ValueError rather than an unpacking or indexing error. The binding checks the rest."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"fdiv_ops::{op}: {name} must be a tensor, got {type(value).__name__}")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and value.dim() not in allowed:
        if isinstance(allowed, range):
            want = f"{allowed.start} to {allowed.stop - 1}"
        else:
            want = " or ".join(str(n) for n in allowed)
        raise ValueError(f"fdiv_ops::{op}: {name} must have {want} dimensions, got shape {tuple(value.shape)}")
    return value


# ---------------------------------------------------------------------------------------------------
# Registration and the eager fast path


def _plain(value: object) -> bool:
    return type(value) is torch.Tensor or type(value) is torch.nn.Parameter


def _needs_dispatch(args: Sequence[object]) -> bool:
    """Whether a call must go through torch.library: anything that traces or intercepts ops would miss a call
    that bypassed the dispatcher."""
    if (
        torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or torch._C._is_torch_function_mode_enabled()
        or torch.jit.is_tracing()
        or _get_current_dispatch_mode() is not None
    ):
        return True
    return any(isinstance(a, torch.Tensor) and not _plain(a) for a in args)


class Op:
    """A custom op ``fdiv_ops::<name>`` built from an implementation (type-annotated: torch infers the schema),
    a fake, and optionally a setup_context/backward pair; calling it takes the eager fast path when nothing
    traces, else the registered op. ``.op`` is the CustomOpDef (for opcheck); ``torch.ops.fdiv_ops.<name>`` is
    the same op.

    ``scalars``: the positions of float arguments a caller may change between calls (a temperature, an eps). The
    registered op takes them as 0-dim CPU tensors (Tensor in the schema), which torch.compile keeps symbolic;
    callers pass numbers and Op converts them where it dispatches. The implementation reads either form with
    scalar_arg."""

    def __init__(
        self,
        name: str,
        impl: Callable,
        *,
        fake: Callable,
        setup_context: Callable | None = None,
        backward: Callable | None = None,
        scalars: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.impl = impl
        self.scalars = scalars
        self.op = torch.library.custom_op(f"fdiv_ops::{name}", mutates_args=())(impl)
        self.op.register_fake(fake)
        self._eager: type[torch.autograd.Function] | None = None
        if backward is not None:
            self.op.register_autograd(backward, setup_context=setup_context)

            def forward(ctx, *args):
                output = impl(*args)
                setup_context(ctx, args, output)
                return output

            self._eager = type(
                f"{name}_eager",
                (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)},
            )

    def op_args(self, *args) -> tuple:
        """The arguments as the registered op takes them: the numbers at `scalars` as 0-dim CPU tensors."""
        return tuple(
            scalar_tensor(a) if i in self.scalars and not isinstance(a, torch.Tensor) else a for i, a in enumerate(args)
        )

    def __call__(self, *args):
        if _needs_dispatch(args):
            return self.op(*self.op_args(*args) if self.scalars else args)
        if self._eager is None or not (
            torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        ):
            return self.impl(*args)  # nothing to differentiate (or a backward op): the implementation alone
        return self._eager.apply(*args)


# ---------------------------------------------------------------------------------------------------
# Backward


def refuse_double_backward(public_name: str, grad_output: torch.Tensor) -> None:
    """A clear error where a second derivative would silently be wrong: backward with create_graph=True runs with
    grad mode on, and these backwards are not themselves differentiable (a kernel wrote the gradient)."""
    if torch.is_grad_enabled() and _plain(grad_output) and not torch.compiler.is_compiling():
        raise RuntimeError(
            f"fdiv_ops.{public_name}: double backward (create_graph=True) is not supported: the gradient comes "
            "from a fused kernel and is not itself differentiable, so a second derivative would be silently "
            "wrong; differentiate the eager reference (fdiv_ops.reference) for higher-order gradients"
        )


def saved_gradient(public_name: str, slots: Sequence[tuple[int, int]]) -> tuple[Callable, Callable]:
    """(setup_context, backward) of an op whose forward returns a loss (output 0: a scalar, or one value per row)
    and, in the outputs named by `slots` as (output index, input index), the gradient of that loss's sum with
    respect to those inputs. Backward scales each by grad_output on the device (no host sync).

    Eager, for 16/32-bit gradients, the scaling is in place (no second copy of a rows x V or V x H gradient),
    hence one backward per forward: a second one (retain_graph=True) is refused. float64, the checking dtype,
    scales out of place, so gradcheck's repeated backward works; so does every traced call (AOT autograd
    rejects mutating a saved output). An output slot whose tensor is empty (a gradient the caller did not ask
    for) gives None. Double backward is refused (refuse_double_backward)."""

    def setup_context(ctx, inputs, output):
        kept = [(o, i) for o, i in slots if inputs[i] is not None and output[o].dim() == inputs[i].dim()]
        ctx.save_for_backward(*(output[o] for o, _ in kept))
        ctx.slot_inputs = [i for _, i in kept]
        ctx.num_inputs = len(inputs)
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # unused outputs send None, not a zero tensor
        ctx.backward_done = False
        ctx.scale_in_place = output[slots[0][0]].dtype != torch.float64

    def backward(ctx, grad_loss, *_unused):
        grads: list[torch.Tensor | None] = [None] * ctx.num_inputs
        if grad_loss is None:
            return tuple(grads)
        refuse_double_backward(public_name, grad_loss)
        if ctx.backward_done and ctx.scale_in_place:
            raise RuntimeError(
                f"fdiv_ops.{public_name}: backward ran twice through the same graph (retain_graph=True); the "
                "gradient is scaled in place, recompute the loss instead"
            )
        ctx.backward_done = True
        saved = ctx.saved_tensors
        in_place = ctx.scale_in_place and _plain(grad_loss) and not torch.compiler.is_compiling()
        # loss.backward() on CPU sends a 0-dim 1: the saved gradient is already the answer, and skipping the
        # multiply saves a full read and write of it (rows x V). Reading a CPU scalar is no device sync.
        unit = in_place and grad_loss.dim() == 0 and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0
        for index, grad in zip(ctx.slot_inputs, saved, strict=True):
            if not ctx.needs_input_grad[index]:
                continue
            if unit and _plain(grad):
                grads[index] = grad
                continue
            # one value per row scales that row; a 0-dim grad_output stays 0-dim (a scalar in type promotion)
            factor = grad_loss if grad_loss.dim() == 0 else grad_loss.reshape(grad_loss.shape + (1,) * (grad.dim() - 1))
            grads[index] = grad.mul_(factor) if in_place and _plain(grad) else (grad * factor).to(grad.dtype)
        return tuple(grads)

    return setup_context, backward


# ---------------------------------------------------------------------------------------------------
# Row weights of a reduction


def row_weights(
    labels: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    num_items_in_batch: float | torch.Tensor | None,
    rows: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(rows,) weights in `dtype`: 0 at ignored rows (label == ignore_index), else 1 for "sum"/"none", and for
    "batchmean" 1 / (number of counted rows, at least 1) or 1 / num_items_in_batch.

    A num_items_in_batch tensor is read on the device (no host sync): where it is not a finite number > 0 the
    weights, and so the loss, are NaN. (The public functions raise ValueError for such a value first where
    checking costs nothing: a CPU tensor in eager mode.)"""
    if labels is None:
        weight = torch.ones(rows, dtype=dtype, device=device)
    else:
        weight = (labels.reshape(rows) != ignore_index).to(dtype)
    if reduction != "batchmean":
        return weight
    if num_items_in_batch is None:
        return weight / weight.sum().clamp_min(1.0)  # all rows ignored: 0 / 1, never NaN
    if isinstance(num_items_in_batch, torch.Tensor):
        count = num_items_in_batch.to(device=device, dtype=dtype).reshape(())
        valid = (count > 0) & (count < math.inf)
        return weight / torch.where(valid, count, torch.full_like(count, math.nan))
    return weight / num_items_in_batch
