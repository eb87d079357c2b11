"""Preprocessing on the training device: the loader ships stored uint8 pixels, the GPU resizes them.

On a GPU the frozen ViT trains faster than worker processes can resize with PIL: full Fashion-MNIST
at 224 px fed 1,855 images/s to a step that runs at 4,604 (docs/comparison-gpu.md). With
``build_dataset(..., on_device=True)`` a split yields each image as it is stored, a (C, h, w) uint8
tensor (28x28x1 for Fashion-MNIST: 64x fewer bytes than the float 224 px image), and
:class:`DeviceTransform` turns a whole batch into the backbone's input where the model runs, with the
same operations as :func:`pgn.data.transforms.eval_transform`: Pillow's bicubic resize of the shorter
side (its own fixed-point coefficients, applied as matrix products, so the 8-bit result is Pillow's), a
centre crop, grey to RGB, ``x / 255`` and the normalisation (to the bit for square stored images, which
every in-memory dataset here has; see :func:`pillow_resize` on other shapes). torch's own ``interpolate(mode="bicubic",
antialias=True)`` matches Pillow when shrinking but not when enlarging (28 px to 224 px: up to 19 8-bit
steps apart), which is why it is not used.

:func:`on_device` wraps a DataLoader of such a split so that it yields device batches; everything that
iterates a loader (training, evaluation, the feature cache, the label map's fit) is then unchanged.
Augmentation stays on the CPU: a split is put on the device only without it.
"""
from __future__ import annotations

import functools
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = ["StoredPixels", "DeviceTransform", "DeviceLoader", "on_device"]


class StoredPixels:
    """PIL image -> (C, h, w) uint8 tensor at its stored size (C = 1 for grey, 3 for RGB): what crosses
    to the device. A class rather than a lambda so it pickles into DataLoader workers."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode not in ("L", "RGB"):
            from .base import to_rgb

            img = to_rgb(img)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(arr.copy())  # its own writable memory (np.asarray may view PIL's)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit resampling (libImaging/Resample.c)


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=64)
def pillow_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) int64: Pillow's bicubic resampling of one axis, its fixed-point coefficients.

    Computed as ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` do (the filter widened by the scale when
    shrinking, each row normalised to sum 1, then rounded to ``2**22`` steps), so that applying them as
    :func:`pillow_resize` does gives Pillow's own 8-bit result.
    """
    # In Resample.c's order of operations (double precision, the taps summed one by one), so that no
    # coefficient lands on the other side of a rounding step.
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale
    one = 1 << _PRECISION_BITS
    out = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        k = [_bicubic((x - center + 0.5) * ss) for x in range(xmin, xmax)]
        total = 0.0
        for w in k:
            total += w
        if total != 0.0:
            k = [w / total for w in k]
        out[xx, xmin:xmax] = [int(-0.5 + w * one) if w < 0 else int(0.5 + w * one) for w in k]  # C's (int) truncates
    return out


def pillow_resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) 8-bit values (any dtype) -> (B, C, H, W) float of 8-bit values, as Pillow's bicubic
    ``Image.resize((W, H))`` gives them: the rows, rounded and clipped to 8 bits, then the columns. Exact to the
    bit where both axes scale by the same factor, or one axis only (tested); see the note on other shapes.

    The fixed-point sums are exact in float64 (below 2**53), so the result is Pillow's to the bit.
    """
    h, w = pixels.shape[-2:]
    out_h, out_w = size
    x = pixels.to(torch.float64)
    half, one = float(1 << (_PRECISION_BITS - 1)), float(1 << _PRECISION_BITS)

    def rounded(v: torch.Tensor) -> torch.Tensor:  # Pillow's clip8: (sum + half) >> bits, clipped to 0..255
        return torch.floor((v + half) / one).clamp_(0, 255)

    def horizontal(v: torch.Tensor) -> torch.Tensor:
        kw = torch.from_numpy(pillow_weights(w, out_w)).to(v.device, torch.float64)
        return rounded(v @ kw.T)

    def vertical(v: torch.Tensor) -> torch.Tensor:
        kh = torch.from_numpy(pillow_weights(h, out_h)).to(v.device, torch.float64)
        return rounded((v.transpose(-1, -2) @ kh.T).transpose(-1, -2))

    # Pillow 13 resizes the rows first when both axes scale alike (every square image made square, as the
    # in-memory datasets here are); for other shapes its C code sometimes takes the columns first, by a rule
    # this does not reproduce (measured: then pixels may differ by a few 8-bit steps).
    for resample in [horizontal] * (out_w != w) + [vertical] * (out_h != h):
        x = resample(x)
    return x.float()


class DeviceTransform(nn.Module):
    """(B, C, h, w) uint8 (C = 1 or 3) -> (B, 3, S, S) float32 normalised, on the batch's device.

    The operations of ``eval_transform(S, mean, std)``, batched: every image of a batch has the same stored
    size (an in-memory dataset's), so one resize serves the batch.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.img_size = int(img_size)
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[-2:]
        s = self.img_size
        # torchvision's Resize(s): the shorter side becomes s, the longer keeps the aspect (truncated).
        size = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        x = pillow_resize(pixels, size) if (h, w) != size else pixels.float()
        top, left = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))  # torchvision's CenterCrop
        x = x[..., top:top + s, left:left + s]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        # ToTensor, then Normalize; contiguous as a collated batch is (the resize's passes leave it transposed,
        # and a convolution over another memory layout may sum in another order)
        return ((x / 255.0 - mean) / std).contiguous()

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}"


class DeviceLoader:
    """A DataLoader of stored pixels seen as one of device batches: ``(transform(x on device), y on device)``.

    ``len``, ``sampler`` and ``dataset`` are the wrapped loader's. On CUDA the copy is asynchronous (it
    overlaps only where the loader pins its memory, ``pin_memory=True``).
    """

    def __init__(self, loader, transform: DeviceTransform, device: str | torch.device):
        self.loader, self.transform, self.device = loader, transform, torch.device(device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The wrapped loader's iterator is made now, as iter(DataLoader) makes one (drawing the workers' base
        # seed from the loader's generator), not at the first batch: the draws, so the run, are then the same
        # whichever side preprocesses, whatever wraps the loader.
        batches = iter(self.loader)
        blocking = self.device.type != "cuda"
        return ((self.transform(x.to(self.device, non_blocking=not blocking)),
                 y.to(self.device, non_blocking=not blocking)) for x, y in batches)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def dataset(self):
        return self.loader.dataset


def on_device(loader, data, device: str | torch.device):
    """``loader`` as device batches where ``data`` (a DataSpec) ships stored pixels; else ``loader``."""
    transform = getattr(data, "device_transform", None)
    return loader if transform is None else DeviceLoader(loader, transform, device)
