"""Fitting a frozen classifier's label mapping (:class:`~pgn.heads.LabelMapHead`, FLM) on training images."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..heads import LabelMapHead
from ..precision import autocast


@torch.inference_mode()
def fit_label_map(model, dataset: Dataset, batch_size: int = 64, device: str | None = None,
                  precision: str = "fp32", transform=None) -> bool:
    """Set ``model``'s frequency label mapping from its predictions on ``dataset`` (images, labels), as built
    (before any training step: Bahng et al.'s FLM "at the start"). Returns False when there is nothing to fit
    (another head, a first-C mapping, or one fitted already: a saved mapping is kept). ``transform``: a
    DataSpec's ``device_transform``, where ``dataset`` yields stored pixels (pgn.data.device)."""
    head = model.head
    if not isinstance(head, LabelMapHead) or bool(head.fitted):
        return False
    device = device or str(next(model.parameters()).device)
    was_training = model.training
    model.eval()  # running statistics (the generator's BatchNorm) must not move while it only looks
    scores, targets = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images = images.to(device)
        images = images if transform is None else transform(images)
        with autocast(device, precision):
            scores.append(model.features(images).float().cpu())
        targets.append(torch.as_tensor(y))
    head.fit(torch.cat(scores), torch.cat(targets))
    model.train(was_training)
    return True
