"""The adapted classifier: prompt source + frozen backbone + head."""
from __future__ import annotations

import torch
from torch import nn

from .backbones import FrozenBackbone
from .layouts import AppendLayout


class PromptedClassifier(nn.Module):
    """image -> [pixel prompt] -> [prompt tokens placed by a layout] -> ViT -> head -> logits.

    ``prompts`` maps (B, 3, H, W) images to (B, K, D) tokens
    (:class:`~pgn.prompts.PromptGenerator`, :class:`~pgn.prompts.InputIndependentPrompts`);
    ``input_prompt`` maps images to images (:class:`~pgn.prompts.PaddingPrompt`, the VP
    baseline). Either may be ``None``; with both ``None`` and a frozen backbone this is a
    linear probe (or zero-shot CLIP). The backbone is frozen unless ``finetune`` is set.
    """

    def __init__(self, backbone: FrozenBackbone, prompts: nn.Module | None, head: nn.Module, layout=None,
                 input_prompt: nn.Module | None = None, finetune: bool = False):
        super().__init__()
        self.backbone = backbone
        self.prompts = prompts
        self.input_prompt = input_prompt
        self.head = head
        self.layout = layout if layout is not None else AppendLayout()  # where prompts sit (pgn.layouts)
        self.finetune = finetune
        if finetune:
            for p in backbone.finetune_parameters():
                p.requires_grad_(True)

    def trainable_modules(self) -> nn.ModuleDict:
        """The modules an adapter saves: everything that was trained (and its buffers)."""
        mods = {"head": self.head}
        for name in ("prompts", "input_prompt"):
            if getattr(self, name) is not None:
                mods[name] = getattr(self, name)
        if self.finetune:
            mods["backbone"] = self.backbone
        return nn.ModuleDict(mods)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, F) prompted CLS features."""
        if self.input_prompt is not None:
            images = self.input_prompt(images)
        elif self.prompts is None and not self.finetune:
            # Nothing upstream of the head is trainable: skip building a graph through the ViT.
            with torch.no_grad():
                return self.backbone(images)
        if self.prompts is None:
            return self.backbone(images)
        prompts = self.prompts(images)                                          # (B, K, D)
        tokens = self.layout.latent_tokens(self.backbone, images, prompts)      # (B, T, D)
        return self.backbone.encode(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) logits."""
        return self.head(self.features(images))
