"""The adapted classifier: prompt source + frozen backbone + head."""
from __future__ import annotations

import torch
from torch import nn

from .backbones import FrozenBackbone
from .layouts import AppendLayout


class PromptedClassifier(nn.Module):
    """image -> [prompt source] -> frozen ViT (prompts placed by a layout) -> head -> logits.

    ``prompts`` is a module mapping (B, 3, H, W) images to (B, K, D) tokens
    (:class:`~pgn.prompts.PromptGenerator`, :class:`~pgn.prompts.InputIndependentPrompts`)
    or ``None`` for a linear probe. Only ``prompts`` and ``head`` hold trainable weights.
    """

    def __init__(self, backbone: FrozenBackbone, prompts: nn.Module | None, head: nn.Module, layout=None):
        super().__init__()
        self.backbone = backbone
        self.prompts = prompts
        self.head = head
        self.layout = layout if layout is not None else AppendLayout()  # where prompts sit (pgn.layouts)

    def trainable_modules(self) -> nn.ModuleDict:
        mods = {"head": self.head}
        if self.prompts is not None:
            mods["prompts"] = self.prompts
        return nn.ModuleDict(mods)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, F) prompted CLS features."""
        if self.prompts is None:
            # Nothing upstream of the head is trainable: skip building a graph through the ViT.
            with torch.no_grad():
                return self.backbone(images)
        prompts = self.prompts(images)                                          # (B, K, D)
        tokens = self.layout.latent_tokens(self.backbone, images, prompts)      # (B, T, D)
        return self.backbone.encode(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) logits."""
        return self.head(self.features(images))
