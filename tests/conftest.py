import os

import fdiv_ops
import pytest
import torch
from fdiv_ops import _cuda_status


def pytest_configure(config):
    # Where torch sees a GPU, skipping every CUDA test because fdiv_ops cannot use it (an old driver, a build
    # without CUDA) would report a green run that tested nothing on the GPU: refuse instead, saying why.
    message = _cuda_status.gpu_but_unusable()
    if message and os.environ.get(_cuda_status.SKIP_ENV) != "1":
        raise pytest.UsageError(message)


def pytest_report_header(config):
    return [f"fdiv_ops {fdiv_ops.__version__}: " + "; ".join(_cuda_status.info_lines())]


def pytest_collection_modifyitems(config, items):
    if fdiv_ops.cuda_available():
        return
    reason = _cuda_status.unusable_reason() or "fdiv_ops.cuda_available() is False"
    skip = pytest.mark.skip(reason=f"needs a CUDA device usable by fdiv_ops: {reason}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
