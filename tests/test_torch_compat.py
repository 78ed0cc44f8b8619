"""fdiv_ops promises torch >= 2.4; torch.mm(..., out_dtype=) exists only from 2.8. The fused-linear GEMM must
choose its path from the operator registry once (no try/except per call, no host sync) and give the same fp32
logits either way."""

from types import SimpleNamespace

import pytest
import torch
from fdiv_ops.ops import _chunking


def test_out_dtype_detected_from_the_registry():
    assert _chunking.HAS_MM_OUT_DTYPE == ("dtype" in torch.ops.aten.mm.overloads())
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    if (major, minor) >= (2, 8):
        assert _chunking.HAS_MM_OUT_DTYPE


def test_without_out_dtype_cuda_takes_the_upcast_path(monkeypatch):
    cuda_tensor = SimpleNamespace(device=torch.device("cuda", 0))
    assert _chunking._gemm_has_fp32_out(cuda_tensor) == _chunking.HAS_MM_OUT_DTYPE
    assert not _chunking._gemm_has_fp32_out(SimpleNamespace(device=torch.device("cpu")))
    monkeypatch.setattr(_chunking, "HAS_MM_OUT_DTYPE", False)
    assert not _chunking._gemm_has_fp32_out(cuda_tensor)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_both_paths_give_fp32_logits(device, dtype, monkeypatch):
    hidden = torch.randn(7, 64, device=device).to(dtype)
    weight = torch.randn(300, 64, device=device).to(dtype)
    bias = torch.randn(300, device=device).to(dtype)
    exact = hidden.double() @ weight.double().t() + bias.double()
    results = []
    for has_out_dtype in (_chunking.HAS_MM_OUT_DTYPE, False):
        monkeypatch.setattr(_chunking, "HAS_MM_OUT_DTYPE", has_out_dtype)
        logits = _chunking.chunk_logits(hidden, _chunking.fp32_weight(weight), bias)
        assert logits.dtype == torch.float32
        results.append(logits)
    for logits in results:
        torch.testing.assert_close(logits.double(), exact, rtol=1e-5, atol=1e-4)
