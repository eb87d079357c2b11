"""The frozen-model interfaces: what pgn needs of a model it adapts, and what each model declares it is.

:class:`FrozenModel` is every frozen model: its input (cell size, normalisation, the linear patch
embedding as a :class:`PatchEmbedding`), what it answers (features or its own scores), and two typed
capabilities, ``takes_tokens`` (prompt tokens can be inserted into its sequence) and
``has_zero_shot_head`` (it carries a text tower for CLIP's zero-shot head). A model that takes only
pixels (:class:`~pgn.backbones.PixelClassifier`) is a :class:`FrozenModel`; a ViT is a
:class:`FrozenBackbone`, which adds the split forward.

A prompted forward is split in two so prompt tokens can be inserted in between::

    tokens = backbone.tokens(images)             # (B, 1 + H*W, D): patch embed + CLS + pos embed
    tokens = torch.cat([tokens, prompts], 1)     # (B, 1 + H*W + K, D): the paper's "append" mode
    feats = backbone.encode(tokens)              # (B, F): pre-norm -> blocks -> final norm -> CLS

With no prompts this is exactly the library's own forward. Backbone parameters
never require gradients and the module stays in eval mode even when a parent
calls ``.train()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """How images must be normalised for this backbone."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # native square input resolution in pixels


@dataclass(frozen=True)
class PatchEmbedding:
    """A model's input cells and their linear embedding ``W x + b``: all of the model an input adapter needs.

    ``weight`` (D, 3, P, P) and ``bias`` (D,) embed a normalised P x P patch; a pixel library mixes its
    patches through them, and a latent library's tokens are inverted through them into pixels
    (:mod:`pgn.layouts.inversion`). ``preprocessing`` is how pixels are normalised for the model.
    A model that takes only pixels has no embedding: its map is a zero map of width 1 (never used:
    a pixel library's patches are pixels already).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    preprocessing: Preprocessing

    @property
    def patch_size(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def width(self) -> int:
        """D, the width of the tokens it embeds to."""
        return int(self.weight.shape[0])

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocessing.std


class FrozenModel(nn.Module):
    """Base class of every frozen model pgn adapts: parameters never train, the module stays in eval mode.

    Subclasses set ``name``, ``patch_size`` (the input's cell size), ``width`` (D, the token width),
    ``feature_dim`` (F, the width of what ``forward`` answers), ``native_grid``, ``preprocessing``,
    and the two capabilities, and implement ``forward`` and :meth:`patch_embedding`.
    """

    # What the model takes: True, a token sequence prompt tokens can join (a ViT's split forward);
    # False, only pixels (prompts must be composed into the image).
    takes_tokens: ClassVar[bool]
    # Whether it carries a text tower that scores class names (CLIP): :meth:`zero_shot_head`.
    has_zero_shot_head: ClassVar[bool] = False

    name: str
    patch_size: int
    width: int
    feature_dim: int
    native_grid: tuple[int, int]
    preprocessing: Preprocessing
    description: str = ""

    def freeze(self) -> "FrozenModel":
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "FrozenModel":  # noqa: ARG002 - always eval
        # A frozen backbone keeps dropout/BN statistics fixed whatever the parent does.
        return super().train(False)

    def finetune_parameters(self):
        """The parameters full fine-tuning trains (the image tower; CLIP keeps its text tower frozen)."""
        return self.parameters()

    def patch_embedding(self) -> PatchEmbedding:
        """The input cells' linear embedding and normalisation (shared with the model, not copied)."""
        raise NotImplementedError

    def zero_shot_head(self, class_names, template: str):
        """CLIP's zero-shot head for ``class_names`` (only where ``has_zero_shot_head``)."""
        from ..errors import PGNError

        raise PGNError(f"{self.name} has no text tower for a zero-shot head; use a clip-* backbone or `head=linear`")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, F): the unprompted feature (a classifier's scores)."""
        raise NotImplementedError

    # --- the model's own face, as a server runs it (pgn.server): its library's unmodified forward ---
    family: str = "pgn"  # the library whose forward serves it

    @property
    def classifier_outputs(self) -> int:
        """How many classes the model's own classifier scores (0: it has none)."""
        return 0

    @property
    def served_size(self) -> tuple[int, int] | None:
        """The only (H, W) its own forward takes, or None for any multiple of the patch size."""
        return None

    def library_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> ((B, F) embedding, (B, S) own classifier scores or None), by the library's own code."""
        return self(images), None

    def summary(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "patch_size": self.patch_size,
            "width": self.width,
            "feature_dim": self.feature_dim,
            "native_grid": list(self.native_grid),
            "input_size": self.preprocessing.input_size,
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "parameters": sum(p.numel() for p in self.parameters()),
        }


class FrozenBackbone(FrozenModel):
    """A frozen ViT image tower with a split forward: prompt tokens can join its token sequence."""

    takes_tokens: ClassVar[bool] = True

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (CLS, registers)."""
        return 1

    # --- the patch embedding, as a linear map (prompt inversion needs it) ---
    def patch_conv(self) -> nn.Conv2d:
        """The (P x P, stride P) convolution that embeds patches."""
        raise NotImplementedError

    def patch_embed_weight(self) -> torch.Tensor:
        """(D, 3, P, P) convolution weight of the patch embedding."""
        return self.patch_conv().weight

    def patch_embed_bias(self) -> torch.Tensor:
        """(D,) bias of the patch embedding (zeros if it has none, as in CLIP)."""
        conv = self.patch_conv()
        if conv.bias is not None:
            return conv.bias
        return torch.zeros(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    # --- the split forward ---
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, H/P, W/P, D) patch embeddings W x + b (no position)."""
        raise NotImplementedError

    def add_position(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) patch tokens -> (B, 1 + h*w, D): CLS prepended, positional embedding for an h x w grid added."""
        raise NotImplementedError

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1 + H/P * W/P, D) embedded tokens."""
        return self.add_position(self.embed_patches(images))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) tokens -> (B, F) image feature taken at the CLS position."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, F): the unprompted feature."""
        return self.encode(self.tokens(images))

    def patch_embedding(self) -> PatchEmbedding:
        return PatchEmbedding(self.patch_embed_weight(), self.patch_embed_bias(), self.preprocessing)
