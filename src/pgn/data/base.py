"""Shared dataset machinery: :class:`DataSpec`, image loading, base datasets, :class:`Split`.

A *base* dataset yields ``(PIL image, label int)`` for a whole pool of images and has
``.targets`` (int labels); :class:`Split` picks items of a base by index and applies a
transform, yielding ``(tensor (3, S, S) float normalised, label int)``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from pgn.errors import PGNError

# Train/test splits of datasets without an official one always use this seed, so the
# test set never changes between runs; ``seed`` only picks the *_limit subsets.
SPLIT_SEED = 0
TEST_FRACTION = 0.25

# CLIP zero-shot prompt of every dataset unless it names its own (the paper's default).
DEFAULT_TEMPLATE = "This is a photo of a {}."


@dataclass
class DataSpec:
    """Everything a run needs to know about a dataset."""

    name: str  # canonical name, e.g. "elpv", "fashion-mnist", "folder:/abs/path", "cifar100"
    class_names: list[str]
    train: Dataset  # yields (image tensor (3, S, S) float normalised, label int)
    test: Dataset
    template: str = DEFAULT_TEMPLATE  # CLIP zero-shot prompt; "{}" is replaced by a class name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------- images

def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB; a missing, corrupt or unsupported file raises PGNError."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            return img.convert("RGB")
    except FileNotFoundError:
        raise PGNError(f"image file {path} does not exist; check the path") from None
    except UnidentifiedImageError:
        raise PGNError(f"cannot read image {path}: not a supported image format; remove or replace it") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # Truncated/corrupt data; PIL's message says what broke (one line).
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PGNError(f"cannot read image {path} ({reason}); remove or replace the file") from None


# --------------------------------------------------------------------------- datasets

class ArrayImages(Dataset):
    """In-memory uint8 images (N, H, W) or (N, H, W, 3) -> (PIL image, label int)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int]):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), int(self.targets[i])


class FileImages(Dataset):
    """Image files on disk -> (PIL RGB image, label int), read lazily through :func:`load_image`."""

    def __init__(self, paths: Sequence[str | os.PathLike], targets: Sequence[int]):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} labels")
        self.paths = [str(p) for p in paths]
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return load_image(self.paths[i]), int(self.targets[i])


class Split(Dataset):
    """Items ``indices`` of a base dataset of (PIL image, label), passed through ``transform``.

    Yields (tensor (3, S, S) float, label int). ``targets`` holds the labels (int64 array).
    """

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.targets = np.asarray(base.targets, dtype=np.int64)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[int(self.indices[i])]
        return self.transform(img), int(label)

    def subset(self, n: int, seed: int) -> Split:
        """A deterministic, stratified subset of ``n`` items (all items if n >= len)."""
        if n >= len(self):
            return self
        keep = _stratified_pick(self.targets, n, seed)
        return Split(self.base, self.indices[keep], self.transform)


def _stratified_pick(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` of ``targets``, class proportions kept where possible."""
    from sklearn.model_selection import train_test_split

    pos = np.arange(len(targets))
    try:
        keep, _ = train_test_split(pos, train_size=n, stratify=targets, random_state=seed)
    except ValueError:
        # Too few items per class (or n < number of classes) to stratify: plain random pick.
        keep = np.random.default_rng(seed).permutation(len(targets))[:n]
    return np.sort(keep)


def _split_indices(targets: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified 75/25 split of positions 0..N-1 -> (train, test), sorted."""
    from sklearn.model_selection import train_test_split

    pos = np.arange(len(targets))
    if len(pos) < 2:
        raise PGNError(f"{where} has {len(pos)} image(s); need at least 2 to split into train and test")
    try:
        tr, te = train_test_split(pos, test_size=TEST_FRACTION, stratify=targets, random_state=SPLIT_SEED)
    except ValueError:
        # A class with a single image cannot be stratified; fall back to an unstratified split.
        tr, te = train_test_split(pos, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    return np.sort(tr), np.sort(te)
