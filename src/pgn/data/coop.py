"""CoOp-style split files: a JSON listing which image belongs to train, val and test.

Format (Zhou et al.'s CoOp, also accepted for a user's own data via ``json:PATH``)::

    {"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}

``relpath`` is relative to an image folder, ``label`` an int in 0..C-1 and ``classname``
the readable class name (underscores are shown as spaces). The paper trains on train+val
merged and tests on test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pgn.data.base import DataSpec, FileImages, Split
from pgn.errors import PGNError

TRAIN_KEYS = ("train", "val")  # merged for training (the paper's protocol)
TEST_KEY = "test"


def read_split_json(path: Path) -> dict:
    """The parsed JSON object of a split file; missing or malformed files raise PGNError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PGNError(f"split file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PGNError(f"cannot read split file {path} ({type(e).__name__}); check the file") from None
    except json.JSONDecodeError as e:
        raise PGNError(f"split file {path} is not valid JSON ({e}); re-download or fix it") from None
    if not isinstance(data, dict):
        raise PGNError(f"split file {path} must hold a JSON object with 'train' and 'test' lists")
    return data


def _entries(data: dict, key: str, path: Path, required: bool) -> list[tuple[str, int, str]]:
    """The [relpath, label, classname] entries under ``key``, checked and typed."""
    if key not in data:
        if required:
            raise PGNError(f"split file {path} has no '{key}' list; expected keys train, val (optional), test")
        return []
    items = data[key]
    if not isinstance(items, list):
        raise PGNError(f"split file {path}: '{key}' must be a list of [relpath, label, classname]")
    out = []
    for i, item in enumerate(items):
        ok = (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)
              and isinstance(item[1], int) and not isinstance(item[1], bool) and isinstance(item[2], str))
        if not ok or item[1] < 0:
            raise PGNError(f"split file {path}: {key}[{i}] = {str(item)[:80]} is not "
                           "[relpath, label >= 0, classname]")
        out.append((item[0], item[1], item[2]))
    return out


def _class_names(entries: list[tuple[str, int, str]], path: Path) -> list[str]:
    """Class names ordered by label (0..C-1), underscores replaced by spaces."""
    names: dict[int, str] = {}
    for rel, label, cname in entries:
        if names.setdefault(label, cname) != cname:
            raise PGNError(f"split file {path}: label {label} is called both {names[label]!r} and "
                           f"{cname!r} (at {rel}); one name per label")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise PGNError(f"split file {path}: labels must be 0..{max(names)} but {missing[:5]} never "
                       "occur; renumber the labels")
    return [names[i].replace("_", " ") for i in range(len(names))]


def coop_dataset(name: str, split_path: Path, image_dir: Path, train_tf, test_tf,
                 template: str | None = None, data: dict | None = None) -> DataSpec:
    """DataSpec from a CoOp split file; images at ``image_dir / relpath``.

    train = "train" + "val" entries, test = "test" entries; both yield
    (tensor (3, S, S), label int). ``data``: the already parsed file, if at hand.
    """
    if data is None:
        data = read_split_json(split_path)
    train = [e for key in TRAIN_KEYS for e in _entries(data, key, split_path, required=key == "train")]
    test = _entries(data, TEST_KEY, split_path, required=True)
    if not train or not test:
        raise PGNError(f"split file {split_path} lists no {'train' if not train else 'test'} images")
    if not image_dir.is_dir():
        raise PGNError(f"{name}: image folder {image_dir} does not exist (the images listed in {split_path} "
                       "are looked up there)")
    # Checking every file would stat up to ~100k images; one per split catches a wrong folder.
    for rel, _, _ in (train[0], test[0]):
        if not (image_dir / rel).is_file():
            raise PGNError(f"{name}: image {image_dir / rel} listed in {split_path.name} does not exist; "
                           f"put the images under {image_dir}")
    classes = _class_names(train + test, split_path)

    def base(entries):
        return FileImages([image_dir / rel for rel, _, _ in entries], [label for _, label, _ in entries])

    tr, te = base(train), base(test)
    spec = DataSpec(name, classes, Split(tr, np.arange(len(tr)), train_tf), Split(te, np.arange(len(te)), test_tf))
    if template is not None:
        spec.template = template
    return spec


def json_dataset(path_str: str, train_tf, test_tf) -> DataSpec:
    """``json:PATH``: a user's CoOp-style split file.

    Images are relative to the JSON's folder, or to its optional "image_dir" key
    (itself relative to the JSON's folder unless absolute).
    """
    if not path_str:
        raise PGNError("json dataset needs a path: use json:/path/to/split.json")
    path = Path(path_str).expanduser().resolve()
    if not path.is_file():
        raise PGNError(f"split file {path} does not exist; check the path after 'json:'")
    data = read_split_json(path)
    image_dir = path.parent
    if "image_dir" in data:
        if not isinstance(data["image_dir"], str):
            raise PGNError(f"split file {path}: 'image_dir' must be a folder path (string)")
        image_dir = path.parent / Path(data["image_dir"]).expanduser()  # an absolute one wins
    return coop_dataset(f"json:{path}", path, image_dir, train_tf, test_tf, data=data)
