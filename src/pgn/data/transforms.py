"""Image transforms: PIL image (any size, grey or RGB) -> float tensor (3, S, S), normalised.

The same pipelines serve files on disk and in-memory uint8 arrays (which are turned
into PIL images per item), so every dataset is preprocessed identically.
"""
from __future__ import annotations

from typing import Sequence

from PIL import Image
from torchvision import transforms as T

BICUBIC = T.InterpolationMode.BICUBIC

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToRGB:
    """PIL image of any mode -> RGB; a grey image gets its channel repeated three times.

    A class rather than a lambda so the transform pickles into DataLoader workers.
    """

    def __call__(self, img: Image.Image) -> Image.Image:
        from .base import to_rgb  # 16-bit and float images are read as what they are

        return to_rgb(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BoundedResize(T.Resize):
    """``T.Resize(size)`` (the shorter side to ``size``), refusing an image whose resized form would exceed the
    pixel budget (:func:`pgn.data.base.max_image_pixels`): a 100000 x 1 image passes the budget as a file but
    would grow to 11 million x 112 pixels. Its output is exactly ``T.Resize``'s."""

    def forward(self, img):
        from ..errors import PGNError
        from .base import MAX_PIXELS_ENV, max_image_pixels

        if isinstance(img, Image.Image):
            w, h = img.size
            if min(w, h) < 1:
                raise PGNError(f"the image is {w}x{h} pixels: it has no pixels to classify")
            side = self.size if isinstance(self.size, int) else min(self.size)
            grown = (max(w, h) * side / min(w, h)) * side
            limit = max_image_pixels()
            if grown > limit:
                raise PGNError(f"a {w}x{h} image would be resized to {grown:,.0f} pixels (its shorter side to {side}), "
                               f"over the limit of {limit:,}; crop it to a less extreme shape, or raise "
                               f"{MAX_PIXELS_ENV} if you trust it")
        return super().forward(img)


def eval_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Deterministic test pipeline: PIL image -> tensor (3, img_size, img_size).

    Resize (shorter side, bicubic) + centre crop to a square. Grey images are turned
    into RGB *after* resizing: the result is identical and resizing one channel is cheaper.
    """
    return T.Compose([
        BoundedResize(img_size, interpolation=BICUBIC),
        T.CenterCrop(img_size),
        ToRGB(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """The paper's training augmentation: PIL image -> tensor (3, img_size, img_size).

    RandomResizedCrop with scale=(1, 1) keeps the whole image and only jitters the aspect
    ratio; the colour augmentations need RGB (hue/saturation are no-ops on grey images),
    so ToRGB comes before them.
    """
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(1.0, 1.0), interpolation=BICUBIC),
        ToRGB(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.4)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomSolarize(threshold=128, p=0.2),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
