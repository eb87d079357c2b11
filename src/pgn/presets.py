"""Budgets: the model sizes and training recipe that go together, in one place.

``cpu`` is what the command line uses when no preset is named: the paper's recipe at a budget a
2-core machine finishes (112 px, 10 epochs, lr 0.01: the rate validation chose at that budget,
docs/results.md). ``paper`` is the published setting (224 px, 100 epochs, lr 0.1, the paper's
augmentation; CLIP runs use a 256-token library and the zero-shot head). Values come from
:class:`~pgn.training.TrainConfig` and :class:`~pgn.prompts.GeneratorConfig`; nothing is restated.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import PGNError
from .methods import LIBRARY_SIZE, NUM_PROMPTS
from .prompts import GeneratorConfig
from .training import TrainConfig

__all__ = ["Preset", "PRESETS", "preset"]


@dataclass(frozen=True)
class Preset:
    """Model-side sizes and the :class:`TrainConfig` of one budget."""

    name: str
    img_size: int
    generator_size: int
    augment: bool
    train: TrainConfig
    num_prompts: int = NUM_PROMPTS
    library_size: int = LIBRARY_SIZE
    head: str | None = None  # None: the method's own (linear; zero-shot for method zeroshot)
    clip: dict = field(default_factory=dict)  # overrides for clip-* backbones

    def for_backbone(self, backbone: str) -> "Preset":
        if not str(backbone).startswith("clip-") or not self.clip:
            return self
        return Preset(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **self.clip, "clip": {}})

    def options(self) -> dict:
        """Every option this preset sets, by its command-line name (``epochs``, ``lr``, ``img_size``...)."""
        train = {k: getattr(self.train, k) for k in ("epochs", "lr", "warmup_epochs", "grad_clip")}
        return {"img_size": self.img_size, "generator_size": self.generator_size, "augment": self.augment,
                "num_prompts": self.num_prompts, "library_size": self.library_size, "head": self.head, **train}


PRESETS = {
    "cpu": Preset("cpu", img_size=112, generator_size=GeneratorConfig.input_size, augment=False,
                  train=TrainConfig(epochs=10, lr=0.01)),
    "paper": Preset("paper", img_size=224, generator_size=224, augment=True, train=TrainConfig.paper(),
                    clip={"library_size": 256, "head": "zeroshot"}),
}


def preset(name: str, backbone: str = "") -> Preset:
    """The preset ``name``, adjusted for ``backbone`` (the paper's CLIP runs differ)."""
    if name not in PRESETS:
        raise PGNError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].for_backbone(backbone)
