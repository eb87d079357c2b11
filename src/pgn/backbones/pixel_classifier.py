"""A frozen classifier seen only through its input pixels and its output scores (a CNN, or any model).

A hosted model's API takes an image and answers class scores; it has no tokens to insert prompts
into. What can be adapted is the image: VP's pixel frame, or a canvas whose border cells hold
prompt patches (``layout="frame"`` with a pixel library, :mod:`pgn.layouts`). So this backbone
has no split forward. Its ``forward`` is the model's own, (B, 3, H, W) normalised -> (B, S)
scores, and :class:`~pgn.model.PromptedClassifier` composes the canvas in pixels before calling it.

``patch_size`` is the canvas's cell size (the prompt patches' side), a choice rather than part of
the model. The patch embedding is a zero map of width 1 because a pixel library's patches are
pixels already and are never embedded.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PGNError
from .base import FrozenModel, PatchEmbedding, Preprocessing


class PixelClassifier(FrozenModel):
    """``model``: (B, 3, H, W) normalised -> (B, S) scores, frozen. ``forward`` is exactly ``model``'s."""

    takes_tokens = False  # PromptedClassifier composes canvases in pixels for it

    def __init__(self, model: nn.Module, name: str, preprocessing: Preprocessing, num_scores: int,
                 cell_size: int = 16, description: str = "", class_names: list[str] | None = None):
        super().__init__()
        if preprocessing.input_size % cell_size:
            raise PGNError(f"{name}: its input of {preprocessing.input_size} px is not a multiple of the canvas cell "
                           f"size {cell_size}")
        self.model = model
        self.name, self.description, self.preprocessing = name, description, preprocessing
        self.patch_size = cell_size
        self.width = 1             # no tokens: the zero embedding's width (what its adapters record)
        self.feature_dim = num_scores
        self.native_grid = (preprocessing.input_size // cell_size,) * 2
        self.source_classes = class_names  # what each score is (ImageNet's 1000 for the real model)
        self.register_buffer("_zero_embed", torch.zeros(1, 3, cell_size, cell_size), persistent=False)
        self.freeze()

    family = "classifier"

    @property
    def classifier_outputs(self) -> int:
        return self.feature_dim

    def library_forward(self, images):
        scores = self.model(images)
        return scores, scores  # its scores are all it answers

    def patch_embedding(self) -> PatchEmbedding:
        return PatchEmbedding(self._zero_embed, self._zero_embed.new_zeros(1), self.preprocessing)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)
