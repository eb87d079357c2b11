"""Evaluation: top-1 / top-5 accuracy and loss under ``torch.inference_mode``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..precision import autocast


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Number of rows of (B, C) ``logits`` whose label is among the k best."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: str = "cpu", precision: str = "fp32",
             progress: bool = True, desc: str = "eval") -> dict:
    """Mean loss, top-1 and top-5 accuracy of ``model`` over ``loader``, in a resolved ``precision``."""
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=None if progress else True, dynamic_ncols=True):
        images, labels = images.to(device), labels.to(device)
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct1 += topk_correct(logits, labels, 1)
        correct5 += topk_correct(logits, labels, 5)
        n += labels.numel()
    model.train(was_training)
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1": correct1 / n, "top5": correct5 / n, "n": n}
