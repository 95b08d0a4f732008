"""Which torch device a stage runs on: the one ``--device`` choice of every stage."""

from __future__ import annotations

import torch
from loguru import logger

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


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX). Elsewhere
    bf16 is emulated, slower than float32, so it is no choice for training there."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:  # not Linux: no such file to tell, so no bf16 by default
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_precision(requested: str | None, accelerator: str = "auto") -> str:
    """Lightning precision for a run: ``requested``, or by default bf16-mixed on a GPU and on a
    CPU with native bf16 (matmuls in bf16; softmax, sums and optimizer state in float32),
    otherwise 32-true. bf16 asked for on a CPU without it falls back to 32-true, logged."""
    gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    native_bf16 = gpu or cpu_has_bf16()
    if requested is None:
        return "bf16-mixed" if native_bf16 else "32-true"
    if requested.startswith("bf16") and not native_bf16:
        logger.warning(
            f"--precision {requested}: this CPU has no native bf16 (AVX512-BF16 or AMX), where "
            "bf16 is slower than float32; training in 32-true instead"
        )
        return "32-true"
    return requested
