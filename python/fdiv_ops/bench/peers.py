"""Whether the peers' packages can run here, decided without importing them (importing trl takes seconds)."""

from __future__ import annotations

import importlib.util
import os

import torch


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def trl_unavailable() -> str | None:
    """Why no TRL provider can run, or None when the trl package is installed."""
    if not _installed("trl"):
        return "trl is not installed (pip install trl)"
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKD lives in trl.experimental, which warns on import
    return None


def liger_unavailable(device: torch.device) -> str | None:
    """Why no Liger-Kernel provider can run here, or None when liger_kernel is installed and the device is CUDA."""
    if device.type != "cuda":
        return "liger-kernel is Triton/CUDA only"
    if not _installed("liger_kernel"):
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def trl_gkd_loss():
    """TRL's GKD ``generalized_jsd_loss`` (a static method of GKDTrainer: trl.experimental.gkd in TRL 1.x,
    the top-level package before)."""
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    return GKDTrainer.generalized_jsd_loss
