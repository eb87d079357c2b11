"""VP baseline (Bahng et al. 2022): a learned pixel frame added around the image."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PGNError


class PaddingPrompt(nn.Module):
    """A learnable border of ``pad`` pixels added to (normalised) images; the centre is untouched.

    At 224 px with ``pad=30`` this has 2*3*30*224 + 2*3*30*164 = 69,840 parameters, as in the
    paper's VP baseline. ``forward``: (B, 3, S, S) -> (B, 3, S, S).
    """

    def __init__(self, image_size: int, pad: int = 30, bounded_by: tuple | None = None, quantize: bool = False):
        """``bounded_by``: the images' normalisation (mean, std), three values each. With it the prompted
        image is clamped to valid pixels (0 to 1 before normalising), what an 8-bit canvas can carry, so
        training sees the deployed input (a deviation from Bahng et al., whose frame is unbounded).
        ``quantize`` (with ``bounded_by``): the prompted image is also rounded to 8-bit RGB with a
        straight-through gradient, so training computes exactly what a PNG canvas carries (a PGN's shared
        frame; VP keeps Bahng et al.'s continuous frame)."""
        super().__init__()
        if quantize and bounded_by is None:
            raise PGNError("an 8-bit frame needs the images' normalisation (bounded_by)")
        if not 0 < 2 * pad < image_size:
            raise PGNError(f"VP padding {pad} does not fit a {image_size} px image; choose 0 < pad < {image_size // 2}")
        self.image_size, self.pad = image_size, pad
        inner = image_size - 2 * pad
        self.top = nn.Parameter(torch.zeros(1, 3, pad, image_size))
        self.bottom = nn.Parameter(torch.zeros(1, 3, pad, image_size))
        self.left = nn.Parameter(torch.zeros(1, 3, inner, pad))
        self.right = nn.Parameter(torch.zeros(1, 3, inner, pad))
        self.bounded, self.quantize = bounded_by is not None, quantize
        if self.bounded:
            mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in bounded_by)
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std, persistent=False)
            self.register_buffer("low", -mean / std, persistent=False)  # pixel 0, normalised
            self.register_buffer("high", (1 - mean) / std, persistent=False)  # pixel 1

    def frame(self) -> torch.Tensor:
        """(1, 3, S, S) additive prompt, zero in the centre."""
        inner = self.image_size - 2 * self.pad
        centre = torch.zeros(1, 3, inner, inner, device=self.top.device, dtype=self.top.dtype)
        middle = torch.cat([self.left, centre, self.right], dim=3)
        return torch.cat([self.top, middle, self.bottom], dim=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise PGNError(f"VP was built for {self.image_size} px images, got {tuple(images.shape[-2:])}")
        prompted = images + self.frame().to(images.dtype)
        if self.bounded:  # the exact gradient of the clamp: a pixel pushed past black or white stops there
            prompted = torch.maximum(torch.minimum(prompted, self.high.to(images.dtype)), self.low.to(images.dtype))
        if self.quantize:  # what the 8-bit canvas holds, with the clamp's gradient passed straight through
            mean, std = self.mean.to(images.dtype), self.std.to(images.dtype)
            levels = ((prompted * std + mean) * 255).round() / 255
            prompted = prompted + ((levels - mean) / std - prompted).detach()
        return prompted
