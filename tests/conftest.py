import fdiv_ops
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if fdiv_ops.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (fdiv_ops.cuda_available() is False)")
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
