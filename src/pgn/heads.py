"""Classification heads on the backbone's CLS feature: a trained linear head, or CLIP's zero-shot text head."""
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


class ClipZeroShotHead(nn.Module):
    """(B, F) CLIP image features -> (B, C) logits against fixed text features (no trainable parameters).

    ``logits = logit_scale.exp() * normalize(image) @ normalize(text).T``, in the same order of
    operations as open_clip's ``CLIP.forward``. The text features (one prompt per class) are
    normalised once and kept as a buffer; ``logit_scale`` is the model's log-space temperature.
    """

    def __init__(self, text_features: torch.Tensor, logit_scale, class_names=None, logit_bias=None):
        super().__init__()
        if text_features.ndim != 2:
            raise ValueError(f"text_features must be (num_classes, feature_dim), got {tuple(text_features.shape)}")
        text = nn.functional.normalize(text_features.detach(), dim=-1).clone()
        self.register_buffer("text_features", text)
        self.register_buffer("logit_scale", torch.as_tensor(logit_scale, dtype=text.dtype, device=text.device)
                             .detach().clone().reshape(()))
        if logit_bias is not None:
            logit_bias = torch.as_tensor(logit_bias, dtype=text.dtype, device=text.device).detach().clone().reshape(())
        self.register_buffer("logit_bias", logit_bias)
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != text.shape[0]:
            raise ValueError(f"{len(self.class_names)} class names for {text.shape[0]} text features")

    @property
    def num_classes(self) -> int:
        return self.text_features.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.text_features.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image = nn.functional.normalize(features, dim=-1)
        logits = self.logit_scale.exp() * image @ self.text_features.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits
