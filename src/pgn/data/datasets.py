"""Image-classification datasets for adapting a frozen ViT: the :func:`build_dataset` entry point.

Every dataset is built in two layers (see :mod:`pgn.data.base`):

* a *base* dataset yielding ``(PIL image, label)`` for the whole pool of images
  (in-memory uint8 arrays, image files listed by a split file, or an ImageFolder), and
* :class:`Split`, a subset of a base (list of indices) that applies a transform and
  yields ``(tensor (3, S, S) float normalised, label int)``.

So train/test splits and ``*_limit`` subsets are just index arrays: the raw images are
kept once in memory, never copied per split. This module holds the small built-in
datasets; the paper's 12 benchmarks live in :mod:`pgn.data.paper`.
"""
from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pgn.data import paper
from pgn.data.base import (  # noqa: F401  (re-exported: the public names used to live here)
    SPLIT_SEED,
    TEST_FRACTION,
    ArrayImages,
    DataSpec,
    FileImages,
    Split,
    _split_indices,
    _stratified_pick,
    load_image,
)
from pgn.data.coop import json_dataset
from pgn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from pgn.errors import PGNError
from pgn.paths import pgn_home

DATASETS = ("elpv", "elpv4", "fashion-mnist", "digits", "folder:PATH", *paper.PAPER_DATASETS, "json:PATH")

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
ELPV_CLASSES = ["functional", "defective"]
ELPV4_CLASSES = ["0%", "33%", "67%", "100%"]


# --------------------------------------------------------------------------- fashion-mnist

_IDX_MAGIC = {"images": 2051, "labels": 2049}  # uint8 data, 3 resp. 1 dims


def read_idx(path: str | os.PathLike, kind: str) -> np.ndarray:
    """Parse a gzipped idx file: images -> uint8 (N, H, W), labels -> uint8 (N,)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise PGNError(f"{path} does not exist; reinstall dataset-fashion-mnist or fix `root`") from None
    except (OSError, EOFError) as e:
        raise PGNError(f"{path} is not a readable gzip file ({e}); re-download it") from None
    ndim = 3 if kind == "images" else 1
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise PGNError(f"{path} is truncated (no idx header); re-download it")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        raise PGNError(f"{path} has idx magic number {magic}, expected {_IDX_MAGIC[kind]} for {kind}; "
                       "is it the right file?")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise PGNError(f"{path} holds {data.size} bytes of data but its header says {dims}; re-download it")
    return data.reshape(dims)


@functools.lru_cache(maxsize=4)
def _fashion_mnist_arrays(root: str | None) -> dict[str, np.ndarray]:
    """{"train_x", "train_y", "test_x", "test_y"}; images uint8 (N, 28, 28), labels (N,)."""
    folder = Path(root or FASHION_MNIST_ROOT).expanduser()
    if folder.is_dir():
        out = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", "images")
            y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", "labels")
            if len(x) != len(y):
                raise PGNError(f"{folder}: {len(x)} {split} images but {len(y)} labels; re-download the files")
            if y.size and y.max() >= len(FASHION_MNIST_CLASSES):
                raise PGNError(f"{folder}: {split} label {y.max()} out of range; re-download the files")
            out[f"{split}_x"], out[f"{split}_y"] = x, y
        return out
    if root is not None:  # an explicit root must exist; don't silently download elsewhere
        raise PGNError(f"fashion-mnist folder {folder} does not exist; fix `root`")
    # Debian package not installed: try torchvision's download into the pgn cache.
    try:
        from torchvision.datasets import FashionMNIST

        cache = pgn_home() / "data"
        tr = FashionMNIST(root=str(cache), train=True, download=True)
        te = FashionMNIST(root=str(cache), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise PGNError(
            f"fashion-mnist not found at {FASHION_MNIST_ROOT} and download failed ({type(e).__name__}); "
            "run `apt-get install dataset-fashion-mnist` or pass `root=DIR` with the idx .gz files"
        ) from None
    return {"train_x": tr.data.numpy(), "train_y": tr.targets.numpy(),
            "test_x": te.data.numpy(), "test_y": te.targets.numpy()}


def _fashion_mnist(root, train_tf, test_tf) -> DataSpec:
    a = _fashion_mnist_arrays(str(root) if root is not None else None)
    train = ArrayImages(a["train_x"], a["train_y"])
    test = ArrayImages(a["test_x"], a["test_y"])
    return DataSpec("fashion-mnist", list(FASHION_MNIST_CLASSES),
                    Split(train, np.arange(len(train)), train_tf),
                    Split(test, np.arange(len(test)), test_tf))


# --------------------------------------------------------------------------- elpv

@functools.lru_cache(maxsize=1)
def _elpv_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (2624, 300, 300), 4-class labels int64 (2624,)); loading takes seconds."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise PGNError("the elpv dataset needs its package: pip install elpv-dataset==1.0.0.post1") from None
    try:
        images, probs, _types = load_dataset()
    except OSError as e:
        raise PGNError(f"elpv-dataset is installed but its files are unreadable ({e}); "
                       "reinstall: pip install --force-reinstall elpv-dataset==1.0.0.post1") from None
    # Defect probabilities are 0, 1/3, 2/3, 1 -> classes 0..3.
    labels4 = np.rint(np.asarray(probs) * 3).astype(np.int64)
    return np.asarray(images, dtype=np.uint8), labels4


def _elpv(four_class: bool, train_tf, test_tf) -> DataSpec:
    images, labels4 = _elpv_arrays()
    # Split stratified on the 4-class label, so elpv and elpv4 share the same images.
    tr, te = _split_indices(labels4, "elpv")
    if four_class:
        name, classes, labels = "elpv4", list(ELPV4_CLASSES), labels4
    else:  # probability >= 0.5 (i.e. 2/3 or 1) counts as defective
        name, classes, labels = "elpv", list(ELPV_CLASSES), (labels4 >= 2).astype(np.int64)
    base = ArrayImages(images, labels)
    return DataSpec(name, classes, Split(base, tr, train_tf), Split(base, te, test_tf))


# --------------------------------------------------------------------------- digits

def _digits(train_tf, test_tf) -> DataSpec:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    base = ArrayImages(images, d.target)
    tr, te = _split_indices(base.targets, "digits")
    return DataSpec("digits", [str(i) for i in range(10)], Split(base, tr, train_tf), Split(base, te, test_tf))


# --------------------------------------------------------------------------- folder

def _refuse_folder_links(path: Path) -> None:
    """One line for a link to a folder anywhere under ``path``: ImageFolder follows them, so a link to the
    parent would relabel files and put the same files in both splits."""
    import os

    for top, dirs, _ in os.walk(path, followlinks=False):
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                raise PGNError(f"dataset folder {path}: {Path(top, d)} is a link to a folder, which pgn does not "
                               "follow (it may lead outside the dataset or loop); copy the images in, or point "
                               "folder: at the link's target")


def _image_folder(path: Path):
    """torchvision ImageFolder of (PIL image, label) read through :func:`load_image`; links to folders refused."""
    from torchvision.datasets import ImageFolder

    _refuse_folder_links(path)
    try:
        return ImageFolder(str(path), loader=load_image)
    except FileNotFoundError as e:  # no class folders, or no image files in them
        raise PGNError(f"{path} holds no images in class subfolders ({e}); "
                       "expected PATH/<class>/<image>.png") from None


def _folder(path_str: str, train_tf, test_tf) -> DataSpec:
    if not path_str:
        raise PGNError("folder dataset needs a path: use folder:/path/to/images")
    path = Path(path_str).expanduser().resolve()
    if not path.exists():
        raise PGNError(f"dataset folder {path} does not exist; check the path after 'folder:'")
    if not path.is_dir():
        raise PGNError(f"dataset path {path} is not a folder; use folder:DIR with DIR/<class>/<image>")
    name = f"folder:{path}"
    test_dir = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        train, test = _image_folder(path / "train"), _image_folder(test_dir)
        unknown = sorted(set(test.classes) - set(train.classes))
        if unknown:
            raise PGNError(f"{test_dir} has classes {unknown} that {path / 'train'} lacks; "
                           "make the class folders match")
        # Map test labels onto the train class indices (test may lack some classes).
        remap = [train.class_to_idx[c] for c in test.classes]
        test.samples = [(p, remap[y]) for p, y in test.samples]
        test.imgs = test.samples
        test.targets = [y for _, y in test.samples]
        return DataSpec(name, list(train.classes),
                        Split(train, np.arange(len(train)), train_tf),
                        Split(test, np.arange(len(test)), test_tf))
    # A lone train/ folder is split like a flat folder.
    root = path / "train" if (path / "train").is_dir() else path
    base = _image_folder(root)
    tr, te = _split_indices(np.asarray(base.targets), str(root))
    return DataSpec(name, list(base.classes), Split(base, tr, train_tf), Split(base, te, test_tf))


# --------------------------------------------------------------------------- entry point

def build_dataset(
    name: str,
    *,
    img_size: int = 112,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: bool = False,
    root: str | os.PathLike | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    download: bool = False,
    on_device: bool = False,
) -> DataSpec:
    """Build train and test datasets yielding (tensor (3, img_size, img_size), label int).

    ``name`` is one of :data:`DATASETS` (``folder:PATH`` for an ImageFolder directory,
    ``json:PATH`` for a CoOp-style split file). ``root`` is the data root of the paper's
    datasets (default ``$PGN_DATA``, else ``~/.cache/pgn/data``; see
    :mod:`pgn.data.paper`) and the folder of fashion-mnist's idx files. ``download``
    lets torchvision fetch cifar10/cifar100/svhn into the data root when missing.
    ``augment`` applies the training augmentation to the train split only.
    ``train_limit``/``test_limit`` keep a stratified subset of that many items, chosen
    by ``seed`` (the train/test split itself is fixed, so the test set does not depend
    on ``seed``). ``on_device``: the splits yield the images as stored ((C, h, w) uint8) and
    ``spec.device_transform`` resizes and normalises a batch of them where the model runs
    (:mod:`pgn.data.device`); for in-memory datasets of one image size, without augmentation.
    """
    if not isinstance(img_size, int) or img_size < 1:
        raise PGNError(f"image size must be a positive integer, got {img_size!r}")
    for what, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise PGNError(f"{what} must be a positive number of images, got {limit}")
    if on_device and augment:
        raise PGNError("`on_device` preprocessing has no augmentation; leave `augment` off, or preprocess on the CPU")
    train_tf = train_transform(img_size, mean, std) if augment else eval_transform(img_size, mean, std)
    test_tf = eval_transform(img_size, mean, std)
    if on_device:
        from .device import StoredPixels

        train_tf = test_tf = StoredPixels()

    raw = name.strip()
    if raw.lower().startswith("folder:"):
        spec = _folder(raw[len("folder:"):], train_tf, test_tf)
    elif raw.lower().startswith("json:"):
        spec = json_dataset(raw[len("json:"):], train_tf, test_tf)
    elif paper.paper_name(raw) is not None:
        spec = paper.build_paper_dataset(paper.paper_name(raw), root=root, download=download,
                                         train_tf=train_tf, test_tf=test_tf)
    else:
        key = raw.lower().replace("_", "-")
        if key in ("fashion-mnist", "fashionmnist"):
            spec = _fashion_mnist(root, train_tf, test_tf)
        elif key in ("elpv", "elpv4"):
            spec = _elpv(key == "elpv4", train_tf, test_tf)
        elif key == "digits":
            spec = _digits(train_tf, test_tf)
        else:
            raise PGNError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")

    if train_limit is not None:
        spec.train = spec.train.subset(train_limit, seed)
    if test_limit is not None:
        spec.test = spec.test.subset(test_limit, seed)
    spec.augmented = bool(augment)
    spec.recipe = {"name": raw, "train_limit": train_limit, "test_limit": test_limit, "seed": seed,
                   "augment": bool(augment), "root": None if root is None else str(root)}
    if on_device:
        from .device import DeviceTransform

        _check_one_size(spec)
        spec.device_transform = DeviceTransform(img_size, mean, std)
        spec.recipe["on_device"] = True
    return spec


def _check_one_size(spec: DataSpec) -> None:
    """A batch of stored pixels needs one image size: in-memory arrays have it, files may not."""
    bases = {id(split.base): split.base for split in (spec.train, spec.test)}
    if not all(isinstance(getattr(b, "images", None), np.ndarray) for b in bases.values()):
        raise PGNError(f"`on_device` preprocessing needs images of one stored size held in memory; {spec.name}'s "
                       "are files of any size: preprocess them on the CPU (leave `on_device` off)")
