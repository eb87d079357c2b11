"""Shared dataset machinery: :class:`DataSpec`, image loading, base datasets, :class:`Split`.

A *base* dataset yields ``(PIL image, label int)`` for a whole pool of images and has
``.targets`` (int labels); :class:`Split` picks items of a base by index and applies a
transform, yielding ``(tensor (3, S, S) float normalised, label int)``.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    # Whether ``train`` yields randomly augmented images: the dataset decides, and a run never caches
    # features of an augmented split (the linear probe would train on one frozen draw of the augmentation).
    augmented: bool = False
    # How it was built (``build_dataset``'s arguments: name, limits, subset seed, augment, root), recorded
    # in a run's config.json so that a resumed run rebuilds exactly these images; empty when built by hand.
    recipe: dict = field(default_factory=dict)
    # Set where the splits yield stored uint8 pixels (``build_dataset(on_device=True)``): the module that
    # turns a batch of them into the backbone's input on the training device (pgn.data.device).
    device_transform: Callable | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def dataset_targets(ds) -> list[int] | None:
    """The integer labels of a dataset (through ``Subset``s), or None where it does not list them."""
    if getattr(ds, "targets", None) is not None:
        return [int(t) for t in ds.targets]
    if isinstance(ds, torch.utils.data.Subset):
        base = dataset_targets(ds.dataset)
        return None if base is None else [base[i] for i in ds.indices]
    return None


def check_classes(data: DataSpec) -> None:
    """A classifier needs two classes or more, each with training images; otherwise a PGNError names the gap."""
    if len(data.class_names) < 2:
        raise PGNError(f"dataset {data.name} has {len(data.class_names)} class ({', '.join(data.class_names) or 'none'});"
                       " a classifier needs at least 2 (for a folder dataset: one sub-folder of images per class)")
    targets = dataset_targets(data.train)
    if targets is None:
        return
    present = set(targets)
    missing = [name for i, name in enumerate(data.class_names) if i not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        if len(targets) < len(data.class_names):  # a subset too small to hold one image of each class
            raise PGNError(f"dataset {data.name}: {len(targets)} training image(s) cannot hold one of each of its "
                           f"{len(data.class_names)} classes; raise `train_limit` to at least {len(data.class_names)}")
        raise PGNError(f"dataset {data.name}: class {missing[0]!r}{more} has no training images; add images for it "
                       "or remove the class")


# --------------------------------------------------------------------------- images

# One pixel budget for every image pgn decodes (CLI, datasets, server): a small file that declares
# a huge canvas (a decompression bomb) is refused from its header, before any pixel is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
MAX_PIXELS_ENV = "PGN_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel budget per image: ``$PGN_MAX_IMAGE_PIXELS``, else :data:`DEFAULT_MAX_IMAGE_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise PGNError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive whole number of pixels")
    return value


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def pixel_budget():
    """Around ``Image.open``: Pillow's own decompression-bomb limit gives way to pgn's budget (:func:`check_pixels`,
    applied from the header right after), so ``$PGN_MAX_IMAGE_PIXELS`` can be raised past Pillow's default too.
    Pillow's setting is restored on exit (it is process-wide, hence the lock)."""
    with _PILLOW_LIMIT:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def check_pixels(width: int, height: int, label: str) -> None:
    """Raise PGNError when a declared ``width`` x ``height`` exceeds the pixel budget."""
    limit = max_image_pixels()
    if width * height > limit:
        raise PGNError(f"{label} declares {width}x{height} = {width * height:,} pixels, over the limit of {limit:,}; "
                       f"downscale it, or raise {MAX_PIXELS_ENV} if you trust the file")


def to_rgb(img: Image.Image, label: str = "image") -> Image.Image:
    """A decoded image of any Pillow mode as 8-bit RGB, read as what it is (the one conversion pgn uses).

    8-bit modes (L, P, RGBA, CMYK, ...) go through Pillow's own conversion. 16-bit integer images
    (``I;16*``, and ``I`` whose values fit in 16 bits) keep their top 8 bits (``>> 8``); an ``I`` image
    whose values all fit in 8 bits is taken as it is. Float images (``F``) are mapped by their range:
    [0, 1] is scaled by 255, [0, 255] taken as it is; any other range is refused, since no reading of it
    is the right one. Pillow's plain ``convert("RGB")`` clips 16-bit values at 255 and floats to black.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64 if mode == "F" else np.int64)
        if values.size == 0:
            return img.convert("RGB")
        lo, hi = float(values.min()), float(values.max())
        if mode == "F":
            if not np.isfinite(values).all():
                raise PGNError(f"{label} is a float image with NaN or infinite pixels; save it as 8-bit PNG")
            if lo >= 0 and hi <= 1:
                grey = np.rint(values * 255)
            elif lo >= 0 and hi <= 255:
                grey = np.rint(values)
            else:
                raise PGNError(f"{label} is a float image with values in [{lo:g}, {hi:g}], neither [0, 1] nor "
                               "[0, 255]; rescale it and save it as 8-bit PNG")
        elif lo < 0 or hi > 65535:
            raise PGNError(f"{label} is a 32-bit integer image with values in [{lo:g}, {hi:g}]; rescale it to "
                           "8 or 16 bits")
        elif mode.startswith("I;16") or hi > 255:
            grey = values >> 8  # 16 bits per pixel: the top 8
        else:
            grey = values
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB; a missing, corrupt, unsupported or oversized file raises PGNError."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PGNError(f"image file {path} does not exist; check the path") from None
    except OSError as e:
        raise PGNError(f"cannot read image {path} ({e.strerror}); check the path") from None
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or stream for ever
        kind = "folder" if stat.S_ISDIR(mode) else "special file (a pipe, socket or device)"
        raise PGNError(f"{path} is a {kind}, not an image file; pass image files")
    try:
        with pixel_budget():  # our own budget applies, just below
            img = Image.open(path)
        with img:
            check_pixels(*img.size, f"image {path}")  # from the header, before decoding
            img.load()  # decode now, so a truncated file fails here and not later
            return to_rgb(img, f"image {path}")
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
