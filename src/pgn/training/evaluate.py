"""Evaluation: top-1 / top-5 accuracy and loss under ``torch.inference_mode``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast
from .progress import Progress


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Number of rows of (B, C) ``logits`` whose label is among the k best."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


SUMS = ("loss_sum", "correct1", "correct5", "n")  # what evaluation adds up; pooled over ranks as they are


@torch.inference_mode()
def evaluation_sums(model: nn.Module, loader, device: str = "cpu", precision: str = "fp32",
                    progress: bool = True, desc: str = "eval") -> dict:
    """Summed loss, top-1 and top-5 hits and the count over ``loader`` (the :data:`SUMS`), in a resolved
    ``precision``: what :func:`metrics_of` turns into means, after adding up the shards of several ranks."""
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    for images, labels in Progress(loader, desc, progress):
        images, labels = images.to(device), labels.to(device)
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct1 += topk_correct(logits, labels, 1)
        correct5 += topk_correct(logits, labels, 5)
        n += labels.numel()
    model.train(was_training)
    return {"loss_sum": loss_sum, "correct1": correct1, "correct5": correct5, "n": n}


def metrics_of(sums: dict) -> dict:
    """Mean loss, top-1 and top-5 accuracy (and ``n``) from :func:`evaluation_sums`' sums."""
    n = max(int(sums["n"]), 1)
    return {"loss": sums["loss_sum"] / n, "top1": sums["correct1"] / n, "top5": sums["correct5"] / n, "n": n}


def evaluate_loader(model: nn.Module, loader, device: str = "cpu", precision: str = "fp32",
             progress: bool = True, desc: str = "eval") -> dict:
    """Mean loss, top-1 and top-5 accuracy of ``model`` over ``loader``, in a resolved ``precision``."""
    return metrics_of(evaluation_sums(model, loader, device, precision, progress, desc))


def has_mixtures(model: nn.Module) -> bool:
    """Whether ``model``'s prompts are image-dependent mixtures over a library (a PGN)."""
    from ..prompts import PromptGenerator

    return isinstance(getattr(model, "prompts", None), PromptGenerator)


def _features_with(model: nn.Module, images: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """(B, F) features of ``images`` prompted with the given (B, K, N) mixture ``coefficients``."""
    if not model.backbone.takes_tokens:  # prompted in pixels: the canvas with those patches
        return model.backbone(model.layout.compose(images, model.prompts.library.patches(coefficients)))
    prompts = model.prompts.library(coefficients)                                # (B, K, D)
    return model.backbone.encode(model.layout.latent_tokens(model.backbone, images, prompts))


@torch.inference_mode()
def mixture_ablation(model: nn.Module, loader, device: str = "cpu", precision: str = "fp32", seed: int = 0,
                     progress: bool = False) -> dict:
    """How much a PGN's answers depend on *which image's* mixtures it uses: top-1 with each test image's
    mixture coefficients replaced by the test split's mean mixture (the same prompts for every image: PGN
    turned into its own input-independent version, same library and head), and with the coefficients
    shuffled across images (a seeded permutation). The drop from ``top1`` is what input dependence adds.

    Returns ``{"top1_mean_mixture", "top1_shuffled"}``. Costs two more passes of the frozen ViT (the
    generator runs once, in the first pass).
    """
    was_training = model.training
    model.eval()
    coeffs = []
    for images, _ in Progress(loader, "mixtures", progress):
        with autocast(device, precision):
            coeffs.append(model.prompts.coefficients(images.to(device)).float())
    if not coeffs:
        model.train(was_training)
        return {"top1_mean_mixture": 0.0, "top1_shuffled": 0.0}
    all_coeffs = torch.cat(coeffs)                                   # (N, K, L)
    mean = all_coeffs.mean(0, keepdim=True)                          # (1, K, L)
    order = torch.randperm(len(all_coeffs), generator=torch.Generator().manual_seed(seed)).to(all_coeffs.device)
    shuffled = all_coeffs[order]
    n = correct_mean = correct_shuffled = 0
    for images, labels in loader:  # a test loader: the same order as the first pass
        images, labels = images.to(device), labels.to(device)
        b = len(labels)
        for which, c in (("mean", mean.expand(b, -1, -1)), ("shuffled", shuffled[n:n + b])):
            with autocast(device, precision):
                logits = model.head(_features_with(model, images, c)).float()
            hits = topk_correct(logits, labels, 1)
            if which == "mean":
                correct_mean += hits
            else:
                correct_shuffled += hits
        n += b
    model.train(was_training)
    return {"top1_mean_mixture": correct_mean / n, "top1_shuffled": correct_shuffled / n}
