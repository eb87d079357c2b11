"""The training recipe: :class:`TrainConfig` (the paper's defaults, the ``cpu`` preset's budget) and seeding."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PGNError
from ..precision import check as check_precision

LR_SCALINGS = ("none", "linear")


@dataclass
class TrainConfig:
    """Optimisation settings. The defaults are the official PGN code's recipe for prompt methods.

    SGD momentum 0.9, lr 0.1 for everything that is trained (the head too: the official
    supervised-ViT run trains its head at the prompts' rate), no weight decay, no gradient
    clipping, linear warm-up over the first half of the run, then cosine to lr/100, 100 epochs.
    The one deviation, the normalised linear head, belongs to the adapter (``head_norm``);
    see docs/results.md. ``TrainConfig.paper()`` states the recipe explicitly.
    """

    epochs: int = 100
    batch_size: int = 32
    lr: float = 0.1                   # prompts (generator + library, or IIP vectors, or VP pixels)
    head_lr: float | None = None      # linear head; None: tied to ``lr`` (paper)
    backbone_lr: float | None = None  # full fine-tuning only; defaults to ``lr``
    optimizer: str = "sgd"            # "sgd" (momentum 0.9, paper) or "adamw"
    prompt_optimizer: str | None = None  # the prompt groups' own ("adamw" prompts beside an SGD head); None: `optimizer`
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float | None = None  # None: half the run (paper: 50 of 100 epochs)
    final_lr_ratio: float = 0.01      # cosine decays to lr * final_lr_ratio (paper: lr/100)
    grad_clip: float | None = None    # max global grad norm; None: no clipping (paper)
    head_init: str = "default"        # linear head: "default" (PyTorch's init) or "zero" (an ablation)
    precision: str = "fp32"           # "fp32", "bf16" (autocast) or "auto" (bf16 where native), resolved at the start
    seed: int = 0
    num_workers: int = 0
    device: str | None = "cpu"        # None: cuda:LOCAL_RANK where a GPU is visible, else cpu (pgn.train's default)
    progress: bool = True
    cache_features: bool = True       # linear probe on un-augmented data: run the frozen ViT once
    # Score the test split after every Nth epoch and always after the last; 0: after the last only. A skipped
    # evaluation changes nothing else (evaluation draws no random number): the run, weights and final
    # metrics are the same whatever N. It costs a test pass per epoch: 25-38 % of a 10-epoch CPU run at 1,000 images (README, Speed).
    eval_every: int = 1
    # Data-parallel runs (torchrun): ``batch_size`` is per process, the global batch is batch_size x processes.
    # "none": the learning rates are used as given (they are for the global batch);
    # "linear": they are multiplied by the number of processes (Goyal et al., 2017).
    lr_scaling: str = "none"

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise PGNError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0) or (self.head_lr is not None and not self.head_lr > 0):
            raise PGNError(f"learning rates must be positive (got lr={self.lr}, head_lr={self.head_lr})")
        for name in ("optimizer", "prompt_optimizer"):
            value = getattr(self, name)
            if value not in ("sgd", "adamw") and not (name == "prompt_optimizer" and value is None):
                raise PGNError(f"unknown {name} {value!r}; choose sgd or adamw")
        if self.lr_scaling not in LR_SCALINGS:
            raise PGNError(f"unknown lr scaling {self.lr_scaling!r}; choose none or linear")
        if self.head_init not in ("default", "zero"):
            raise PGNError(f"unknown head init {self.head_init!r}; choose default or zero")
        check_precision(self.precision)
        # Numbers that would quietly wreck a run (a negative clip reverses every step) are refused here.
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise PGNError(f"grad_clip must be a positive number or None (no clipping), got {self.grad_clip}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise PGNError(f"weight decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise PGNError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise PGNError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        if self.eval_every < 0:
            raise PGNError(f"eval_every must be >= 0 (0: evaluate after the last epoch only), got {self.eval_every}")
        if self.num_workers < 0:
            raise PGNError(f"data-loading workers must be >= 0, got {self.num_workers}")
        for name in ("lr", "head_lr", "backbone_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PGNError(f"{name} must be a positive finite number, got {value}")
        if self.warmup_epochs is not None and not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise PGNError(f"`warmup_epochs` must be a finite number >= 0, got {self.warmup_epochs}")
        # NumPy's seeding takes 0 .. 2**32 - 1; outside it a run would fail after its data was built.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise PGNError(f"`seed` must be an integer in 0..{2**32 - 1}, got {self.seed}")

    @classmethod
    def paper(cls, **overrides) -> "TrainConfig":
        """The official code's recipe, spelled out (equal to the defaults)."""
        recipe = dict(epochs=100, lr=0.1, head_lr=None, optimizer="sgd", momentum=0.9, weight_decay=0.0,
                      warmup_epochs=50.0, final_lr_ratio=0.01, grad_clip=None, head_init="default")
        return cls(**{**recipe, **overrides})

    @property
    def warmup(self) -> float:
        """Warm-up length in epochs (half the run unless set)."""
        return self.epochs / 2 if self.warmup_epochs is None else self.warmup_epochs

    def lr_scale(self, world_size: int) -> int:
        """What the learning rates are multiplied by when training on ``world_size`` processes."""
        return world_size if self.lr_scaling == "linear" else 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
