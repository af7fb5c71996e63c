"""Devices: one place that turns ``auto`` / ``cpu`` / ``cuda`` into a torch device and waits for it.

Used by the harness, the preflight, the run id (``device_kind``) and the cost measurements alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
"""What ``--device`` accepts (``cuda:N`` too)."""


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda``: the device kind a run id records (``auto`` resolved on this machine)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(device).startswith("cuda") else str(device)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error.

    Raises:
        DeviceError: ``cuda`` asked for on a machine where torch sees no CUDA device, or a name
            that is not a device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name in DEVICES or str(name).startswith("cuda:")):
        raise DeviceError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        built = "with" if torch.backends.cuda.is_built() else "without"
        raise DeviceError(
            f"device {name!r} was asked for, but torch {torch.__version__} (built {built} CUDA) "
            "sees no CUDA GPU on this machine; use --device cpu (or auto)"
        )
    return torch.device(name)


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock timings mean something (no-op on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (a no-op on a CPU)."""
    if torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
