"""The CUDA status messages for machines CI cannot be: no driver, an old driver, no device, a GPU."""

import fdiv_ops
import pytest
from fdiv_ops import _C, _cuda_status


def facts(status, runtime=13000, driver=0, devices=0, error=""):
    return {
        "built": status != "not_built",
        "runtime_version": runtime,
        "min_driver_version": (runtime // 1000) * 1000,
        "driver_version": driver,
        "device_count": devices,
        "status": status,
        "error": error,
    }


def test_probe_matches_this_machine():
    probe = _C.cuda_probe()
    assert set(probe) == set(facts("ok"))
    info = fdiv_ops.build_info()
    assert info["cuda"] == probe["built"]
    if not probe["built"]:
        assert probe["status"] == "not_built" and info["cuda_status"] == "fdiv_ops was built without CUDA"
    elif probe["driver_version"] == 0:
        assert probe["status"] == "no_driver" and info["cuda_status"] == "no NVIDIA driver"
        assert info["cuda_driver_version"] is None
    if probe["built"]:
        assert probe["min_driver_version"] == (probe["runtime_version"] // 1000) * 1000
        assert info["cuda_runtime_version"] == _cuda_status.cuda_version(probe["runtime_version"])
    assert (probe["status"] == "ok") == (info["cuda_status"] == "ok")


def test_no_driver_says_install_the_driver():
    message = _cuda_status.problem(facts("no_driver"))
    assert message.startswith("no NVIDIA driver")
    assert "580.65.06" in message and "CUDA 13.0 runtime" in message
    assert "insufficient" not in message


def test_old_driver_names_found_and_needed():
    message = _cuda_status.problem(facts("driver_too_old", runtime=13000, driver=12020))
    assert "found a driver for CUDA 12.2 (R535)" in message
    assert "needs >= CUDA 13.0 (R580, 580.65.06 or newer)" in message
    assert "no newer than CUDA 12.2" in message


def test_cuda12_build_needs_only_r525():
    # minor-version compatibility: a CUDA 12.9 runtime runs on any CUDA 12.x driver
    message = _cuda_status.problem(facts("no_driver", runtime=12090))
    assert "CUDA 12.0 (R525, 525.60.13 or newer)" in message


def test_no_device_and_errors():
    assert _cuda_status.problem(facts("no_device", driver=13000)).startswith("no CUDA device")
    error = "cudaErrorSystemNotReady: system not yet initialized"
    assert error in _cuda_status.problem(facts("cuda_error", driver=13000, error=error))
    assert "built without CUDA" in _cuda_status.problem(facts("not_built", runtime=0))
    assert _cuda_status.problem(facts("ok", driver=13000, devices=1)) is None


@pytest.mark.parametrize(
    "status, driver, expect",
    [("no_driver", 0, "no NVIDIA driver"), ("driver_too_old", 12040, "too old"), ("not_built", 0, "without CUDA")],
)
def test_suite_refuses_to_skip_when_torch_sees_a_gpu(status, driver, expect):
    message = _cuda_status.gpu_but_unusable(facts(status, driver=driver), ("12.8", True))
    assert message is not None and expect in message and _cuda_status.SKIP_ENV in message
    # no GPU in torch's eyes: skipping the CUDA tests is right, no error
    assert _cuda_status.gpu_but_unusable(facts(status, driver=driver), (None, False)) is None
    assert _cuda_status.gpu_but_unusable(facts("ok", driver=13000, devices=1), ("13.0", True)) is None


def test_info_lines_per_machine():
    no_driver = _cuda_status.info_lines(facts("no_driver"), ("13.0", False))
    assert "NVIDIA driver: none found" in no_driver and no_driver[-1].startswith("fdiv_ops on CUDA: not usable: no")
    old = _cuda_status.info_lines(facts("driver_too_old", driver=12020), ("12.6", True))
    assert "NVIDIA driver: CUDA 12.2 (R535)" in old and "too old" in old[-1]
    gpu = _cuda_status.info_lines(facts("ok", driver=13000, devices=2), ("13.0", True))
    assert "CUDA devices: 2" in gpu and gpu[-1] == "fdiv_ops on CUDA: usable"
    cpu_torch = _cuda_status.info_lines(facts("ok", driver=13000, devices=1), (None, False))
    assert "CPU-only build" in cpu_torch[-1]


def test_cuda_tensor_error_names_device_and_cause():
    message = _cuda_status.cuda_tensor_error("cuda:1", facts("driver_too_old", driver=12020))
    assert message.startswith("fdiv_ops cannot run on the CUDA tensor on cuda:1: NVIDIA driver too old")


def test_require_cuda_raises_the_message_here(monkeypatch):
    monkeypatch.setattr(_cuda_status, "probe", lambda: facts("no_driver"))
    with pytest.raises(RuntimeError, match=r"CUDA tensor on cuda:0: no NVIDIA driver"):
        _cuda_status.require_cuda("cuda:0")
    monkeypatch.setattr(_cuda_status, "probe", lambda: facts("ok", driver=13000, devices=1))
    _cuda_status.require_cuda("cuda:0")
