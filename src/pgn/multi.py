"""One PGN for several datasets: a shared generator and token library, a head per dataset.

The datasets are concatenated with their labels offset into one label space; batches are
drawn by shuffling the union, so each dataset contributes in proportion to its (possibly
``--train-limit``-ed) size. The loss of a sample only sees its own dataset's classes
(:meth:`MultiDatasetHead.loss`), so the heads never compete with each other.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from .data import DataSpec
from .heads import LinearHead


class OffsetLabels(Dataset):
    """A dataset whose labels are shifted by ``offset`` (into a shared label space)."""

    def __init__(self, dataset, offset: int):
        self.dataset, self.offset = dataset, offset
        self.targets = [int(t) + offset for t in dataset.targets]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, int(y) + self.offset


def combine(specs: list[DataSpec]) -> tuple[DataSpec, list[dict]]:
    """Concatenate datasets; returns the combined spec and ``[{name, classes, offset}]`` per dataset."""
    parts, offset = [], 0
    for s in specs:
        parts.append({"name": s.name, "classes": list(s.class_names), "offset": offset})
        offset += len(s.class_names)

    def cat(split):
        ds = ConcatDataset([OffsetLabels(getattr(s, split), p["offset"]) for s, p in zip(specs, parts)])
        ds.targets = [t for d in ds.datasets for t in d.targets]
        return ds

    names = [f"{p['name']}/{c}" for p in parts for c in p["classes"]]
    spec = DataSpec(name=",".join(s.name for s in specs), class_names=names, train=cat("train"), test=cat("test"),
                    augmented=any(s.augmented for s in specs),
                    recipe={"datasets": [s.recipe for s in specs]} if all(s.recipe for s in specs) else {})
    return spec, parts


class MultiDatasetHead(nn.Module):
    """A linear head per dataset on the shared feature; (B, F) -> (B, sum C_d) concatenated logits."""

    def __init__(self, feature_dim: int, parts: list[dict], norm: str = "batchnorm"):
        super().__init__()
        self.parts = parts
        self.heads = nn.ModuleList(LinearHead(feature_dim, len(p["classes"]), norm=norm) for p in parts)
        owner = torch.cat([torch.full((len(p["classes"]),), i) for i, p in enumerate(parts)])
        self.register_buffer("owner", owner, persistent=False)  # class index -> dataset index

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(features) for h in self.heads], dim=1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over each sample's own dataset's classes only."""
        same = self.owner[None, :] == self.owner[labels][:, None]  # (B, C) allowed classes
        return F.cross_entropy(logits.masked_fill(~same, float("-inf")), labels)

    def dataset_logits(self, logits: torch.Tensor, index: int) -> torch.Tensor:
        """(B, sum C) -> (B, C_index): the logits of one dataset's head."""
        o = self.parts[index]["offset"]
        return logits[:, o:o + len(self.parts[index]["classes"])]


class DatasetView(nn.Module):
    """One dataset's classifier out of a multi-dataset model: (B, 3, S, S) -> (B, C_index) logits.

    Lets the one evaluation loop (:func:`pgn.training.evaluate_loader`) score each dataset of the model.
    """

    def __init__(self, model: nn.Module, index: int):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.head.dataset_logits(self.model(images), self.index)
