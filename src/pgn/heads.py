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


LABEL_MAPS = ("first", "flm")


class LabelMapHead(nn.Module):
    """(B, S) source-class scores of a frozen classifier -> (B, C) task logits: one source class per task class.

    Nothing is trained: the model's own head answers, and the task reads C of its S scores (VP's
    setting: Bahng et al. 2022). ``mapping`` (C,) holds the source class of each task class:

    ``"first"``  task class c reads source class c (the official PGN code's supervised-ViT head);
    ``"flm"``    frequency label mapping: each task class gets the source class the model predicts
                 most often on that class's training images, one-to-one, greedily by count
                 (:func:`frequency_label_map`); fitted once, before the first step (``fitted``).

    The mapping is a buffer, so it is saved with the adapter and travels with an export.
    """

    def __init__(self, num_source: int, num_classes: int, mode: str = "flm"):
        super().__init__()
        if mode not in LABEL_MAPS:
            raise ValueError(f"unknown label map {mode!r}; choose one of {', '.join(LABEL_MAPS)}")
        if num_classes > num_source:
            raise ValueError(f"{num_classes} task classes cannot each take one of {num_source} source classes")
        self.mode = mode
        self.register_buffer("mapping", torch.arange(num_classes))
        # "first" is complete as built; "flm" is fitted on training data (a saved mapping is loaded as is).
        self.register_buffer("fitted", torch.tensor(mode == "first"))

    @property
    def num_classes(self) -> int:
        return self.mapping.shape[0]

    def fit(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Set the FLM mapping from the model's (N, S) scores on N training images with their (N,) targets."""
        self.mapping.copy_(frequency_label_map(scores, targets, self.num_classes))
        self.fitted.fill_(True)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores[:, self.mapping]


def frequency_label_map(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) one-to-one map task class -> source class, by how often the source class is predicted.

    ``counts[c, s]`` counts the images of task class c whose top source class is s; the largest
    count is assigned first, its task class and source class are then taken, and so on. A task
    class whose images the model never assigns to a free source class gets the free source class
    it scores highest on average. Ties go to the lower index (deterministic).
    """
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores (N, S) and targets (N,) expected, got {tuple(scores.shape)}, {tuple(targets.shape)}")
    num_source = scores.shape[1]
    top = scores.argmax(1)
    counts = torch.zeros(num_classes, num_source, dtype=torch.float64)
    counts.index_put_((targets.long().cpu(), top.cpu()), torch.ones(len(top), dtype=torch.float64), accumulate=True)
    mean = torch.zeros(num_classes, num_source, dtype=torch.float64)
    mean.index_add_(0, targets.long().cpu(), scores.detach().double().cpu())
    # Counts decide; the mean score (scaled below one count) only breaks ties and fills never-predicted rows.
    mean = mean / counts.sum(1, keepdim=True).clamp(min=1)
    spread = (mean.max() - mean.min()).clamp(min=1e-12)
    key = counts + 0.5 * (mean - mean.min()) / spread
    mapping = torch.full((num_classes,), -1, dtype=torch.long)
    for _ in range(num_classes):
        flat = int(key.argmax())
        c, s = divmod(flat, num_source)
        mapping[c] = s
        key[c, :] = -1.0
        key[:, s] = -1.0
    return mapping
