"""8-bit RGB and the normalised tensors a ViT reads: every conversion between them, in one place.

Input-space deployment is exact only if training, the client and the server agree to the bit on
how pixels become tensors. They all use these functions:

* :func:`round8` rounds RGB in [0, 1] to the 256 levels a PNG can carry (``round(x * 255) / 255``);
* :func:`to_uint8`: normalised (B, 3, H, W) -> (B, H, W, 3) uint8, what is written into a PNG;
* :func:`from_uint8`: (B, H, W, 3) uint8 -> normalised (B, 3, H, W) float32, as torchvision's
  ``ToTensor`` (x / 255) then ``Normalize`` ((x - mean) / std) compute it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["round8", "to_uint8", "from_uint8"]


def round8(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the nearest of the 256 levels 8-bit images hold (same shape)."""
    return torch.round(rgb * 255) / 255


def _stats(mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, like: torch.Tensor):
    m = torch.as_tensor(mean, dtype=torch.float32).to(like.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).to(like.device).view(1, 3, 1, 1)
    return m, s


def to_uint8(images: torch.Tensor, mean, std) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, H, W, 3) uint8 RGB (clamped to the pixel range, then rounded)."""
    m, s = _stats(mean, std, images)
    rgb = (images.float() * s + m).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 normalised: ToTensor then Normalize."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32).div(255)
    m, s = _stats(mean, std, x)
    return x.sub(m).div(s).contiguous()
