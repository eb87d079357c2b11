"""Evaluation: top-1 / top-5 accuracy and loss under ``torch.inference_mode``."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Number of rows of (B, C) ``logits`` whose label is among the k best."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def bf16_autocast(device: str | torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when ``enabled``; otherwise nothing (so any device type works, meta too)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: str = "cpu", bf16: bool = False,
             progress: bool = True, desc: str = "eval") -> dict:
    """Mean loss, top-1 and top-5 accuracy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=None if progress else True, dynamic_ncols=True):
        images, labels = images.to(device), labels.to(device)
        with bf16_autocast(device, bf16):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct1 += topk_correct(logits, labels, 1)
        correct5 += topk_correct(logits, labels, 5)
        n += labels.numel()
    model.train(was_training)
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1": correct1 / n, "top5": correct5 / n, "n": n}


def native_bf16(device: str = "cpu") -> bool:
    """Whether bfloat16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, so tolerate its absence
    return bool(check and check())
