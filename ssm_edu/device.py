"""Devices, and the sizes a notebook uses on each.

The chapters run unchanged on a laptop CPU (and in CI) and on a GPU: they ask
for "the sizes for this device" instead of hard-coding them::

    SIZES = for_device(cpu=dict(L=256, steps=200), gpu=dict(L=4096, steps=2000))
"""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["default_device", "on_gpu", "for_device", "device_name", "describe"]


def on_gpu() -> bool:
    """True when a CUDA GPU is visible to PyTorch."""
    return torch.cuda.is_available()


def default_device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if on_gpu() else "cpu")


def for_device(cpu, gpu):
    """Return ``gpu`` on a machine with a CUDA GPU, ``cpu`` otherwise.

    Setting the environment variable ``SSM_EDU_SIZES=cpu`` forces the small
    sizes on a GPU too (useful to time a chapter like CI does).
    """
    forced = os.environ.get("SSM_EDU_SIZES", "").lower()
    if forced in ("cpu", "gpu"):
        return gpu if forced == "gpu" else cpu
    return gpu if on_gpu() else cpu


def device_name(device: torch.device | str | None = None) -> str:
    """A human name for the device that produced a measurement."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {os.cpu_count()} cores)"


def describe() -> str:
    """One line for a notebook's set-up cell: device, and the library versions."""
    parts = [f"device: {device_name()}", f"torch {torch.__version__}"]
    try:
        import triton

        mode = "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "compiled"
        parts.append(f"triton {triton.__version__} ({mode})")
    except ImportError:
        parts.append("triton not installed")
    return " | ".join(parts)
