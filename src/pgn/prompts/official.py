"""Load the checkpoints released with the paper (official PGN code, MIT licence).

They are plain tensor state dicts (``tl_vectors``, ``model.input_net.*``,
``model.blocks.{i}.net.*``, ``model.blocks.{i}.downsample.*``, ``model.output_net.2.*``).
We map their keys onto :class:`PromptGenerator` and load strictly.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import PGNError
from .generator import GeneratorConfig, PromptGenerator

_KEY_MAP = [
    (re.compile(r"^tl_vectors$"), "library.tokens"),
    (re.compile(r"^model\.input_net\.(\d+)\.(.+)$"), r"net.stem.\1.\2"),
    (re.compile(r"^model\.blocks\.(\d+)\.net\.(\d+)\.(.+)$"), r"net.stages.\1.body.\2.\3"),
    (re.compile(r"^model\.blocks\.(\d+)\.downsample\.(.+)$"), r"net.stages.\1.shortcut.\2"),
    (re.compile(r"^model\.output_net\.2\.(.+)$"), r"net.head.2.\1"),
]


def map_official_key(key: str) -> str:
    for pattern, repl in _KEY_MAP:
        if pattern.match(key):
            return pattern.sub(repl, key)
    raise PGNError(f"unexpected key {key!r} in official checkpoint; is this a PGN checkpoint from the paper's code?")


def load_official(path: str | Path, input_size: int = 224) -> PromptGenerator:
    """Read a released ``.pt`` checkpoint into a :class:`PromptGenerator` (strict)."""
    path = Path(path)
    if not path.is_file():
        raise PGNError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise PGNError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}); re-download it") from e
    if not isinstance(raw, dict) or "tl_vectors" not in raw or "model.output_net.2.weight" not in raw:
        raise PGNError(f"{path} is not an official PGN checkpoint (no tl_vectors / model.output_net.2.weight)")
    expected = {"tl_vectors": 2, "model.output_net.2.weight": 2, **{f"model.blocks.{i}.net.0.weight": 4 for i in range(4)}}
    for key, ndim in expected.items():
        value = raw.get(key)
        if not isinstance(value, torch.Tensor):
            raise PGNError(f"{path}: {key} is missing; this is not a complete official PGN checkpoint")
        if value.ndim != ndim or min(value.shape) < 1:
            raise PGNError(f"{path}: {key} has shape {tuple(value.shape)}, expected {ndim} non-empty dimensions; "
                           "the file is damaged or not a PGN checkpoint")
    n, dim = raw["tl_vectors"].shape
    kn, width = raw["model.output_net.2.weight"].shape
    if kn % n:
        raise PGNError(f"{path}: output size {kn} is not a multiple of the library size {n}")
    widths = tuple(int(raw[f"model.blocks.{i}.net.0.weight"].shape[0]) for i in range(4))
    cfg = GeneratorConfig(num_prompts=kn // n, library_size=n, arch="resnet10", widths=widths,
                          input_size=input_size, channels_last=False)
    gen = PromptGenerator(cfg, dim)
    state = {map_official_key(k): v for k, v in raw.items()}
    try:
        gen.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PGNError(f"{path} does not match the resnet10 generator layout: {str(e).splitlines()[0]}") from e
    return gen
