"""Row chunking for the fused-linear ops: logits = hidden @ weight.T are produced one chunk of rows at a
time, so memory is O(chunk_size x V) instead of O(rows x V). Shared by fused_linear_sequence_logprobs and
(later) the fused-linear KD op."""

from __future__ import annotations

from collections.abc import Iterator

import torch

# torch.mm(a, b, out_dtype=torch.float32) (aten::mm.dtype: a 16-bit GEMM with an fp32 result) exists from torch
# 2.8; pyproject promises >= 2.4. Looked up once, in the operator registry, so that no call tries it and catches
# the TypeError, and nothing waits on the GPU: where it is missing, CUDA takes the CPU's path (the weight upcast
# once per call to an fp32 copy, then fp32 GEMMs), which costs V x H x 4 bytes more memory but gives the same
# fp32-accumulated logits.
HAS_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


def row_chunks(rows: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """[start, end) row ranges of at most chunk_size rows covering 0..rows."""
    for start in range(0, rows, chunk_size):
        yield start, min(start + chunk_size, rows)


def fp32_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight as the fp32 (or fp64) GEMM operand of `chunk_logits`.

    16-bit GEMMs must accumulate into fp32 logits (rounding logits to bf16 first costs 4-23% gradient error,
    docs/math.md §3). CUDA does that with out_dtype; the CPU has no such GEMM (nor CUDA before torch 2.8), so
    there the weight is upcast once per call (one V x H fp32 copy) rather than once per chunk.
    """
    if weight.dtype in (torch.float32, torch.float64) or _gemm_has_fp32_out(weight):
        return weight
    return weight.float()


def _gemm_has_fp32_out(tensor: torch.Tensor) -> bool:
    """Whether a 16-bit GEMM on this tensor's device can write fp32 directly (torch >= 2.8 on CUDA)."""
    return HAS_MM_OUT_DTYPE and tensor.device.type == "cuda"


def mm_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b with an fp32 (fp64 for fp64) result, never rounded to 16 bits on the way; written into `out` (of the
    result's shape and dtype) when given, except on CUDA's 16-bit out_dtype path, which returns a new tensor."""
    if a.dtype in (torch.float32, torch.float64) and b.dtype == a.dtype:
        return a @ b if out is None else torch.mm(a, b, out=out)
    if a.dtype == b.dtype and _gemm_has_fp32_out(a):
        return torch.mm(a, b, out_dtype=torch.float32)
    a32, b32 = a.float(), b.float()
    return a32 @ b32 if out is None else torch.mm(a32, b32, out=out)


def chunk_logits(
    hidden_chunk: torch.Tensor, weight_op: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, V) logits of one chunk in fp32 (fp64 for fp64 inputs): hidden_chunk @ weight.T (+ bias), in `out` when
    given and the GEMM can write there (see mm_fp32): the caller must use the returned tensor."""
    logits = mm_fp32(hidden_chunk, weight_op.t(), out)
    if bias is not None:
        logits += bias.to(logits.dtype)
    return logits


def chunk_buffer(rows: int, chunk_size: int, vocab: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """On the CPU, one (chunk_size, vocab) buffer that every chunk's logits reuse (its first n rows); None for a
    single chunk, and on CUDA, whose caching allocator already hands the freed chunk back to the next one.

    Large tensors come from mmap on the CPU and go back to the OS when freed, so a fresh logits tensor per chunk
    pays the page faults (and zeroing) of its whole size again in every chunk; one buffer pays them once."""
    if rows <= chunk_size or like.device.type != "cpu":
        return None
    return torch.empty((chunk_size, vocab), dtype=dtype, device=like.device)
