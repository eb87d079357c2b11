"""What the client must know of a model it cannot open: its preprocessing and the canvas's cells.

Training through an endpoint never builds the backbone (its weights are never loaded), so the adapter is
built from this alone, as :meth:`pgn.input_adapter.InputAdapter.from_pretrained` builds an export: a zero
patch embedding of the cell size and the model's normalisation. ``pgn serve`` publishes all of it
(``GET /info``: mean, std, input_size, patch_size, num_classes); for any other server (the Open Inference
Protocol has no standard field for preprocessing) or a callable, the caller states it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import PGNError

__all__ = ["ModelInput"]


@dataclass(frozen=True)
class ModelInput:
    """``mean``/``std``: the model's normalisation (R, G, B); ``img_size``: the side of the images the adapter
    prompts (the model's input for VP and the frame layout); ``cell_size``: the side of a prompt patch (the
    canvas's cells); ``outputs``: how many scores the model answers per image (None: learned from its
    first answer); ``name``: what the model is, recorded in the adapter (its config's ``backbone``)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    cell_size: int = 16
    outputs: int | None = None
    name: str = "api"

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise PGNError(f"`mean` and `std` need 3 values each (R, G, B), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise PGNError("`mean` must be finite and `std` finite and positive")
        if not isinstance(self.img_size, int) or not isinstance(self.cell_size, int) or self.cell_size < 1 \
                or self.img_size < self.cell_size or self.img_size % self.cell_size:
            raise PGNError(f"`img_size` {self.img_size} must be a positive multiple of `cell_size` {self.cell_size}")
        if self.outputs is not None and (not isinstance(self.outputs, int) or self.outputs < 2):
            raise PGNError(f"`outputs` is the number of scores the model answers, at least 2, got {self.outputs!r}")

    @classmethod
    def from_pgn_serve(cls, info: dict, img_size: int | None = None, cell_size: int | None = None) -> "ModelInput":
        """From ``pgn serve``'s ``GET /info``; ``img_size``/``cell_size`` override what it publishes."""
        try:
            return cls(mean=tuple(info["mean"]), std=tuple(info["std"]),
                       img_size=int(img_size or info["input_size"]), cell_size=int(cell_size or info["patch_size"]),
                       outputs=int(info["num_classes"]) or None, name=str(info.get("backbone") or "api"))
        except (KeyError, TypeError, ValueError):
            raise PGNError("the server's /info does not state the model's preprocessing (mean, std, input_size, "
                           "patch_size); give `mean`, `std`, `img_size` and `cell_size`") from None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
