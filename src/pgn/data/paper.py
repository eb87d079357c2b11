"""The paper's 12 benchmark datasets (Loedeman et al., BMVC 2024), read from one data root.

The data root is the ``root`` argument, else ``$PGN_DATA``, else ``$PGN_HOME/data``
(``~/.cache/pgn/data``). Each dataset lives in its own folder below it (layouts and
sources: docs/datasets.md):

* ``cifar10``, ``cifar100``, ``svhn``: torchvision's files in ``<root>/<name>``;
  ``download=True`` lets torchvision fetch them. Official train/test splits.
* ``dtd``, ``eurosat``, ``flowers102``, ``food101``, ``oxford_pets``, ``sun397``,
  ``ucf101``: images plus CoOp's split JSON (:mod:`pgn.data.coop`); train+val -> train.
* ``resisc45``: NWPU-RESISC45 images plus 60/20/20 split lists; train+val -> train.
* ``clevr_count``: CLEVR v1.0; label = number of objects (3..10); train -> train, val -> test.

Every split yields (tensor (3, S, S) float normalised, label int).
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgn.data.base import DEFAULT_TEMPLATE, ArrayImages, DataSpec, FileImages, Split
from pgn.data.coop import coop_dataset
from pgn.errors import PGNError

DATA_ENV = "PGN_DATA"

PAPER_DATASETS = (
    "cifar10", "cifar100", "svhn", "dtd", "eurosat", "flowers102", "food101",
    "oxford_pets", "sun397", "ucf101", "resisc45", "clevr_count",
)

# Zero-shot CLIP prompts that differ from DEFAULT_TEMPLATE (the paper's choices).
TEMPLATES = {"cifar100": "A photo of a {}.", "clevr_count": "This is a photo of {} objects."}

TORCHVISION_DATASETS = ("cifar10", "cifar100", "svhn")  # the only ones --download can fetch


@dataclass(frozen=True)
class CoOpFiles:
    """Where CoOp keeps a dataset: ``<root>/<folder>/<images>/...`` and ``<root>/<folder>/<split>``."""

    folder: str
    images: str
    split: str
    source: str  # the official image archive, named in error messages


COOP = {
    "dtd": CoOpFiles("dtd", "images", "split_zhou_DescribableTextures.json", "DTD (dtd-r1.0.1)"),
    "eurosat": CoOpFiles("eurosat", "2750", "split_zhou_EuroSAT.json", "EuroSAT RGB"),
    "flowers102": CoOpFiles("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "Oxford 102 Flowers"),
    "food101": CoOpFiles("food-101", "images", "split_zhou_Food101.json", "Food-101"),
    "oxford_pets": CoOpFiles("oxford_pets", "images", "split_zhou_OxfordPets.json", "Oxford-IIIT Pet"),
    "sun397": CoOpFiles("sun397", "SUN397", "split_zhou_SUN397.json", "SUN397"),
    "ucf101": CoOpFiles("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "UCF101 mid-frames"),
}

# Other spellings users type; keys are compared without "-", "_" and spaces.
_ALIASES = {"oxfordflowers": "flowers102", "oxfordflowers102": "flowers102", "pets": "oxford_pets",
            "clevr": "clevr_count", "nwpuresisc45": "resisc45"}

CLEVR_COUNTS = range(3, 11)  # CLEVR scenes hold 3..10 objects: 8 classes


def paper_name(name: str) -> str | None:
    """The canonical paper dataset name for ``name`` ("Oxford-Pets" -> "oxford_pets"), or None."""
    key = "".join(c for c in name.lower() if c not in "-_ ")
    for canon in PAPER_DATASETS:
        if key == canon.replace("_", ""):
            return canon
    return _ALIASES.get(key)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding all paper datasets: ``root``, else $PGN_DATA, else $PGN_HOME/data."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path(os.environ.get("PGN_HOME", Path.home() / ".cache" / "pgn")).expanduser() / "data"


def build_paper_dataset(name: str, *, root, download: bool, train_tf: Callable, test_tf: Callable) -> DataSpec:
    """DataSpec of paper dataset ``name`` (canonical, see :func:`paper_name`) under ``data_root(root)``."""
    top = data_root(root)
    if name in ("cifar10", "cifar100"):
        spec = _cifar(name, top / name, download, train_tf, test_tf)
    elif name == "svhn":
        spec = _svhn(top / name, download, train_tf, test_tf)
    elif name in COOP:
        spec = _coop(name, top, download, train_tf, test_tf)
    elif name == "resisc45":
        spec = _resisc45(top / "resisc45", download, train_tf, test_tf)
    elif name == "clevr_count":
        spec = _clevr_count(top / "clevr", download, train_tf, test_tf)
    else:
        raise PGNError(f"unknown paper dataset {name!r}; choose one of: {', '.join(PAPER_DATASETS)}")
    spec.template = TEMPLATES.get(name, DEFAULT_TEMPLATE)
    return spec


def _no_download(download: bool) -> str:
    """Suffix for missing-file errors of datasets that --download cannot fetch."""
    return f" (`download` only fetches {', '.join(TORCHVISION_DATASETS)})" if download else ""


def _require(path: Path, name: str, what: str, fix: str, download: bool = False) -> None:
    """Raise a one-line PGNError unless ``path`` exists."""
    if not path.exists():
        raise PGNError(f"{name}: {what} {path} does not exist; {fix}{_no_download(download)}")


def _spec(name: str, classes: list[str], train, test, train_tf, test_tf) -> DataSpec:
    """Whole base datasets of (PIL image, label) as the train and test Splits."""
    return DataSpec(name, classes, Split(train, np.arange(len(train)), train_tf),
                    Split(test, np.arange(len(test)), test_tf))


# --------------------------------------------------------------------------- torchvision: cifar, svhn

def _torchvision(name: str, folder: Path, download: bool, required: list[Path], make: Callable):
    """``make()`` (a torchvision dataset constructor), its failures turned into one-line PGNErrors.

    Without ``download``, files are checked here first so the error names the exact
    missing file; torchvision itself only says "Dataset not found or corrupted".
    """
    fix = f"pass `download` (needs internet) or put torchvision's {name} files under {folder}"
    if not download:
        missing = next((p for p in required if not p.is_file()), None)
        if missing is not None:
            raise PGNError(f"{name}: {missing} does not exist; {fix}")
    try:
        return make()
    except ImportError as e:  # SVHN's .mat files need scipy
        raise PGNError(f"{name} needs {e.name or 'scipy'} to read its files: pip install scipy") from None
    except RuntimeError as e:  # torchvision's md5 check failed (truncated or altered files)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PGNError(f"{name}: files under {folder} fail torchvision's checksum check ({reason}); "
                       f"delete them and {fix}") from None
    except Exception as e:  # network errors come in many types
        if not download:
            raise
        raise PGNError(f"{name}: download into {folder} failed ({type(e).__name__}); check internet access "
                       f"or put torchvision's {name} files under {folder}") from None


def _cifar(name: str, folder: Path, download: bool, train_tf, test_tf) -> DataSpec:
    """CIFAR10/100 from ``folder/cifar-10-batches-py`` resp. ``folder/cifar-100-python``."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    files = [f for f, _md5 in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    required = [folder / cls.base_folder / f for f in files]
    # Download once (with the train split): the archive holds both splits.
    tr = _torchvision(name, folder, download, required, lambda: cls(str(folder), train=True, download=download))
    te = _torchvision(name, folder, False, required, lambda: cls(str(folder), train=False))
    classes = [c.replace("_", " ") for c in tr.classes]  # CIFAR100: "aquarium_fish" -> "aquarium fish"
    # torchvision holds uint8 (N, 32, 32, 3) arrays: wrap them, no copy.
    return _spec(name, classes, ArrayImages(tr.data, tr.targets), ArrayImages(te.data, te.targets),
                       train_tf, test_tf)


def _svhn(folder: Path, download: bool, train_tf, test_tf) -> DataSpec:
    """SVHN from ``folder/{train,test}_32x32.mat`` (the "extra" split is not used)."""
    from torchvision.datasets import SVHN

    bases = []
    for split in ("train", "test"):
        required = [folder / SVHN.split_list[split][1]]
        ds = _torchvision("svhn", folder, download, required,
                          lambda split=split: SVHN(str(folder), split=split, download=download))
        # torchvision keeps (N, 3, 32, 32) with label 0 for digit 0; ArrayImages wants
        # (N, 32, 32, 3): a transposed view, no copy.
        bases.append(ArrayImages(ds.data.transpose(0, 2, 3, 1), ds.labels))
    return _spec("svhn", [str(d) for d in range(10)], *bases, train_tf, test_tf)


# --------------------------------------------------------------------------- CoOp split files

def _coop(name: str, top: Path, download: bool, train_tf, test_tf) -> DataSpec:
    f = COOP[name]
    folder = top / f.folder
    get = f"put the {f.source} images in {folder / f.images} and CoOp's {f.split} in {folder} (docs/datasets.md)"
    _require(folder, name, "folder", get, download)
    _require(folder / f.split, name, "CoOp split file", f"put CoOp's {f.split} there (docs/datasets.md)", download)
    return coop_dataset(name, folder / f.split, folder / f.images, train_tf, test_tf)


# --------------------------------------------------------------------------- resisc45

def _resisc_relpath(line: str) -> str:
    """A split-list line -> "<class>/<file>"; bare file names carry the class before "_NNN"."""
    rel = line.replace("\\", "/").removeprefix("NWPU-RESISC45/")
    if "/" in rel:
        return rel
    return f"{rel.rsplit('_', 1)[0]}/{rel}"  # "baseball_diamond_001.jpg" -> class "baseball_diamond"


def _resisc45(folder: Path, download: bool, train_tf, test_tf) -> DataSpec:
    """NWPU-RESISC45 with the 18,900 / 6,300 / 6,300 split lists; train+val -> train."""
    image_dir = folder / "NWPU-RESISC45"
    get = "put the NWPU-RESISC45 images and the resisc45-{train,val,test}.txt split lists there (docs/datasets.md)"
    _require(folder, "resisc45", "folder", get, download)
    rels = {}
    for split in ("train", "val", "test"):
        path = folder / f"resisc45-{split}.txt"
        _require(path, "resisc45", "split list", "put the 60/20/20 split lists there (docs/datasets.md)", download)
        with open(path, encoding="utf-8") as fh:
            rels[split] = [_resisc_relpath(s.strip()) for s in fh if s.strip()]
        if not rels[split]:
            raise PGNError(f"resisc45: split list {path} is empty; expected one image per line")
    _require(image_dir, "resisc45", "image folder", "put the NWPU-RESISC45/<class>/<image>.jpg files there", download)
    classes = sorted({r.split("/", 1)[0] for lines in rels.values() for r in lines})
    label = {c: i for i, c in enumerate(classes)}

    def base(lines: list[str]) -> FileImages:
        if not (image_dir / lines[0]).is_file():  # one check per split catches a wrong folder cheaply
            raise PGNError(f"resisc45: image {image_dir / lines[0]} does not exist; "
                           f"put the NWPU-RESISC45/<class>/<image>.jpg files under {folder}")
        return FileImages([image_dir / r for r in lines], [label[r.split("/", 1)[0]] for r in lines])

    tr, te = base(rels["train"] + rels["val"]), base(rels["test"])
    return _spec("resisc45", [c.replace("_", " ") for c in classes], tr, te, train_tf, test_tf)


# --------------------------------------------------------------------------- clevr_count

@functools.lru_cache(maxsize=4)
def _clevr_scenes(path: str, stamp: tuple[int, int]) -> tuple[tuple[str, ...], np.ndarray]:
    """(image file names, object counts int64 (N,)) of a CLEVR scenes file.

    Cached per process: the train file is hundreds of MB of JSON and takes seconds to
    parse. ``stamp`` (mtime, size) makes an edited file parse again.
    """
    try:
        with open(path, encoding="utf-8") as f:
            scenes = json.load(f)["scenes"]
        names = tuple(s["image_filename"] for s in scenes)
        counts = np.array([len(s["objects"]) for s in scenes], dtype=np.int64)
    except json.JSONDecodeError as e:
        raise PGNError(f"clevr_count: {path} is not valid JSON ({e}); re-download CLEVR v1.0") from None
    except (KeyError, TypeError) as e:
        raise PGNError(f"clevr_count: {path} is not a CLEVR scenes file (missing {e}); "
                       "expected {'scenes': [{'image_filename', 'objects'}, ...]}") from None
    return names, counts


def _clevr_count(folder: Path, download: bool, train_tf, test_tf) -> DataSpec:
    """CLEVR v1.0 object counting: train -> train, val -> test; class k is "3 + k objects"."""
    clevr = folder / "CLEVR_v1.0"
    get = "unpack CLEVR_v1.0 (images/ and scenes/) there (docs/datasets.md)"
    _require(folder, "clevr_count", "folder", get, download)
    bases = []
    for split in ("train", "val"):
        scenes = clevr / "scenes" / f"CLEVR_{split}_scenes.json"
        images = clevr / "images" / split
        _require(scenes, "clevr_count", "scenes file", get, download)
        _require(images, "clevr_count", "image folder", get, download)
        st = scenes.stat()
        names, counts = _clevr_scenes(str(scenes), (st.st_mtime_ns, st.st_size))
        keep = np.flatnonzero((counts >= CLEVR_COUNTS.start) & (counts < CLEVR_COUNTS.stop))
        if len(keep) == 0:
            raise PGNError(f"clevr_count: {scenes} has no scene with 3..10 objects; is it CLEVR v1.0?")
        first = images / names[keep[0]]
        if not first.is_file():  # one check per split catches a wrong folder cheaply
            raise PGNError(f"clevr_count: image {first} does not exist; {get}")
        bases.append(FileImages([images / names[i] for i in keep], counts[keep] - CLEVR_COUNTS.start))
    return _spec("clevr_count", [str(n) for n in CLEVR_COUNTS], *bases, train_tf, test_tf)
