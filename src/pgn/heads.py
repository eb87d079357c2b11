"""Classification heads on the backbone's CLS feature: a trained linear head, or CLIP's zero-shot text head."""
from __future__ import annotations

import torch
from torch import nn

HEAD_NORMS = ("batchnorm", "none")


class LinearHead(nn.Module):
    """(B, F) features -> (B, C) logits; trained jointly with the prompts.

    ``norm="batchnorm"`` (the default) puts ``BatchNorm1d(affine=False)`` before the linear
    layer, as the field's linear probes do (MAE, DINO): the ViT's CLS features have a norm of
    about 43 on the embedded backbone, and a linear layer trained at the prompts' learning rate
    on them diverges without gradient clipping (docs/ablations.md). The official PGN code never
    trains a classifier on raw CLS features either: CLIP's head reads L2-normalised features,
    supervised ViT its pretrained head. ``norm="none"`` is the raw linear layer of older
    adapters. The linear layer keeps PyTorch's default initialisation: a zero-initialised one
    passes exactly zero gradient to the features, so the prompts would get no signal at first.
    """

    def __init__(self, feature_dim: int, num_classes: int, norm: str = "batchnorm"):
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"unknown head norm {norm!r}; choose one of {', '.join(HEAD_NORMS)}")
        self.norm = nn.BatchNorm1d(feature_dim, affine=False) if norm == "batchnorm" else None
        self.fc = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            if self.training and features.shape[0] == 1:
                # A batch of one has no batch statistics: normalise with the running ones.
                features = nn.functional.batch_norm(features, self.norm.running_mean, self.norm.running_var,
                                                    training=False, eps=self.norm.eps)
            else:
                features = self.norm(features)
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
