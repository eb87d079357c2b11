"""Classification heads on the backbone's CLS feature."""
from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """(B, F) features -> (B, C) logits; trained jointly with the prompts."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.fc.weight)  # zero init: the first steps train prompts against a neutral head
        nn.init.zeros_(self.fc.bias)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)
