"""Where a run computes: the default device, and a one-line error for one this machine does not have."""
from __future__ import annotations

import os

import torch

from .errors import PGNError


def default_device() -> str:
    """``cuda:LOCAL_RANK`` where a CUDA GPU is visible (one per torchrun process), else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return "cpu"


def resolve_device(device: str | torch.device | None = None) -> str:
    """``device`` checked against this machine (:func:`check_device`), or the default where it is None
    or ``"auto"`` (:func:`default_device`). What every entry point (train, evaluate, load, serve) calls."""
    return default_device() if device in (None, "", "auto") else check_device(device)


def check_device(device: str | torch.device) -> str:
    """``device`` as a string if this machine has it; otherwise a PGNError saying what is here instead."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PGNError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N, mps or meta") from None
    kind = dev.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PGNError(f"device {str(device)!r}: no CUDA GPU is visible on this machine; use `device=cpu`")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise PGNError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise PGNError(f"device {str(device)!r}: Apple's MPS is not available on this machine; use `device=cpu`")
    elif kind not in ("cpu", "meta"):
        backend = getattr(torch, kind, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise PGNError(f"device {str(device)!r} is not available on this machine; use `device=cpu`")
    return str(device)
