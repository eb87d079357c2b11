"""Numeric precision: a named choice (``fp32`` or ``bf16``), never an accident of the machine.

Every part of pgn that runs a forward pass (training, evaluation, serving, the demo, the
comparison) takes a precision and goes through this module:

* :data:`PRECISIONS` are what a caller may ask for: ``"fp32"``, ``"bf16"`` (bfloat16 autocast)
  and ``"auto"``; :data:`RESOLVED` are what actually runs.
* :func:`resolve` turns ``"auto"`` into ``"bf16"`` only on a CPU with native bfloat16
  (AVX512-BF16 / AMX) or a bf16-capable CUDA GPU, and into ``"fp32"`` on every other device
  (``meta``, ``mps``, ...). It is called once, where the run starts; the answer is printed and
  recorded (config.json, the server's ``/info``, every comparison record).
* :func:`autocast` is the forward's context for a resolved precision.

The library's default is ``"fp32"`` (as in open_clip's ``create_model_and_transforms``); the
command line's ``--precision`` defaults to ``auto`` and says what it chose.

``PGN_NATIVE_BF16=1`` (or ``0``) overrides the CPU detection: the test suite uses it to run
on both answers whatever the machine (``pytest --assume-native-bf16=yes|no``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Literal

import torch

from .errors import PGNError

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
RESOLVED = ("fp32", "bf16")
OVERRIDE_ENV = "PGN_NATIVE_BF16"
# Device types torch.autocast runs bfloat16 on for us; anything else is served in float32.
_BF16_DEVICE_TYPES = ("cpu", "cuda")


def device_type(device: str | torch.device) -> str:
    """``"cuda:1"`` -> ``"cuda"``."""
    return torch.device(device).type if not isinstance(device, torch.device) else device.type


def _cpu_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively; ``PGN_NATIVE_BF16`` overrides the answer."""
    forced = os.environ.get(OVERRIDE_ENV, "").strip().lower()
    if forced in ("1", "yes", "true"):
        return True
    if forced in ("0", "no", "false"):
        return False
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, so tolerate its absence
    return bool(check and check())


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bfloat16 natively: a CPU with AVX512-BF16/AMX or a bf16 CUDA GPU; else False."""
    kind = device_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return _cpu_native_bf16()
    return False  # meta, mps, xpu, ...: never guessed from the host CPU


def check(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line error."""
    if precision not in PRECISIONS:
        raise PGNError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def resolve(precision: str, device: str | torch.device = "cpu") -> Precision:
    """The precision that runs on ``device``: ``auto`` -> bf16 where native, else fp32.

    ``bf16`` asked for explicitly runs wherever autocast has it (a CPU without native bf16 emulates
    it, slowly, and a warning says so); on a device type without bf16 autocast it is an error.
    """
    check(precision)
    kind = device_type(device)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16":
        if kind not in _BF16_DEVICE_TYPES:
            raise PGNError(f"bf16 autocast is not available on device {str(device)!r}; use precision fp32 there")
        if kind == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise PGNError(f"{device} has no bfloat16 support; use precision fp32 (or auto)")
        if kind == "cpu" and not _cpu_native_bf16():
            logger.warning("note: this CPU has no native bfloat16; bf16 runs emulated and slower than fp32")
    return precision  # type: ignore[return-value]


def autocast(device: str | torch.device, precision: str):
    """The forward's context: bfloat16 autocast on ``device`` for ``"bf16"``, nothing for ``"fp32"``.

    Takes a resolved precision (``auto`` must go through :func:`resolve` first, where the run starts).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"autocast takes a resolved precision (fp32 or bf16), got {precision!r}")
    return torch.autocast(device_type=device_type(device), dtype=torch.bfloat16)


def describe(precision: str) -> str:
    """How a resolved precision is printed: ``bf16 autocast`` or ``fp32``."""
    return "bf16 autocast" if precision == "bf16" else "fp32"
