"""Which torch device a stage runs on: the one ``--device`` choice of every stage."""

from __future__ import annotations

import torch

from recsys.cli import fail

#: Device types ``--device`` accepts (with ``cuda:N`` for one GPU of several).
DEVICES = ("auto", "cpu", "cuda")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``, checked: asking for a
    GPU that is not there is a user error, not a CPU run."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICES:
        raise fail(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise fail(f"--device {name}: no CUDA GPU is visible here; use --device auto or cpu")
    return device
