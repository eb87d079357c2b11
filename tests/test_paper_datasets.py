"""The paper's 12 datasets, each on a tiny synthetic data root in its documented layout."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pgn.data import DATASETS, build_dataset
from pgn.data.base import DEFAULT_TEMPLATE
from pgn.data.paper import COOP, PAPER_DATASETS, _clevr_scenes, data_root, paper_name
from pgn.errors import PGNError

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

S = 32  # item size: small keeps the tests fast


def _image(path: Path, seed: int = 0, size=(20, 14)) -> Path:
    """A small random RGB image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _check_item(spec, n_classes: int):
    x, y = spec.train[0]
    assert x.shape == (3, S, S) and x.dtype == torch.float32 and isinstance(y, int)
    x, y = spec.test[len(spec.test) - 1]
    assert x.shape == (3, S, S) and 0 <= y < n_classes
    assert len(spec.class_names) == n_classes == spec.num_classes


def _one_line_error(match: str, *args, **kw) -> str:
    with pytest.raises(PGNError, match=match) as e:
        build_dataset(*args, img_size=S, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision verifies the md5 of CIFAR/SVHN files; synthetic files can only pass an existence check."""
    from torchvision.datasets import cifar, svhn

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(cifar, "check_integrity", exists)
    monkeypatch.setattr(svhn, "check_integrity", exists)


def test_names_and_data_root(tmp_path, monkeypatch):
    assert len(PAPER_DATASETS) == 12 and all(n in DATASETS for n in PAPER_DATASETS) and "json:PATH" in DATASETS
    assert paper_name("Oxford-Pets") == "oxford_pets" and paper_name("CLEVR-count") == "clevr_count"
    assert paper_name("oxford_flowers") == "flowers102" and paper_name("digits") is None
    monkeypatch.setenv("PGN_DATA", str(tmp_path))
    assert data_root() == tmp_path and data_root("/x") == Path("/x")
    monkeypatch.delenv("PGN_DATA")
    monkeypatch.setenv("PGN_HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / "data"
    msg = _one_line_error("unknown dataset", "imagenet-9000")
    assert all(n in msg for n in PAPER_DATASETS)


# --------------------------------------------------------------------------- torchvision

def _cifar_batch(path: Path, n: int, n_classes: int, label_key: str, seed: int):
    rng = np.random.default_rng(seed)
    batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, n_classes, n)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _write_cifar10(root: Path, per_batch=2, n_test=3):
    d = root / "cifar10" / "cifar-10-batches-py"
    for i in range(1, 6):
        _cifar_batch(d / f"data_batch_{i}", per_batch, 10, "labels", i)
    _cifar_batch(d / "test_batch", n_test, 10, "labels", 0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def test_cifar10(tmp_path, no_md5):
    _write_cifar10(tmp_path)
    spec = build_dataset("cifar10", root=str(tmp_path), img_size=S)
    assert spec.name == "cifar10" and spec.class_names[1] == "automobile"
    assert len(spec.train) == 10 and len(spec.test) == 3
    assert spec.template == DEFAULT_TEMPLATE == "This is a photo of a {}."
    _check_item(spec, 10)


def test_cifar10_missing_and_bad_checksum(tmp_path):
    msg = _one_line_error("does not exist", "cifar10", root=str(tmp_path / "nope"))
    assert str(tmp_path / "nope" / "cifar10" / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "`download`" in msg
    # Files present but not torchvision's originals: its md5 check fails -> one line, not RuntimeError.
    _write_cifar10(tmp_path)
    msg = _one_line_error("checksum", "cifar10", root=str(tmp_path))
    assert str(tmp_path / "cifar10") in msg


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    msg = _one_line_error("download into", "cifar10", root=tmp_path, download=True)
    assert str(tmp_path / "cifar10") in msg and "URLError" in msg


def test_cifar100(tmp_path, no_md5):
    d = tmp_path / "cifar100" / "cifar-100-python"
    _cifar_batch(d / "train", 6, 100, "fine_labels", 1)
    _cifar_batch(d / "test", 4, 100, "fine_labels", 2)
    names = ["aquarium_fish"] + [f"class{i}" for i in range(1, 100)]
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))
    spec = build_dataset("cifar100", root=tmp_path, img_size=S)
    assert spec.class_names[0] == "aquarium fish"
    assert len(spec.train) == 6 and len(spec.test) == 4
    assert spec.template == "A photo of a {}."
    _check_item(spec, 100)


def test_svhn(tmp_path, no_md5):
    sio = pytest.importorskip("scipy.io", reason="SVHN's .mat files need scipy")
    d = tmp_path / "svhn"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 3)):
        # SVHN's layout: X (32, 32, 3, N) uint8, y (N, 1) with digit 0 stored as 10.
        y = np.array([[10], [1], [2], [9], [10]][:n], dtype=np.uint8)
        sio.savemat(d / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": y})
    spec = build_dataset("svhn", root=tmp_path, img_size=S)
    assert spec.class_names == [str(i) for i in range(10)]
    assert len(spec.train) == 5 and len(spec.test) == 3
    assert spec.train.targets.tolist() == [0, 1, 2, 9, 0]
    assert spec.template == DEFAULT_TEMPLATE
    _check_item(spec, 10)


def test_svhn_missing(tmp_path):
    msg = _one_line_error("does not exist", "svhn", root=tmp_path)
    assert str(tmp_path / "svhn" / "train_32x32.mat") in msg and "`download`" in msg


# --------------------------------------------------------------------------- CoOp split files

COOP_CLASSES = {"dtd": 47, "eurosat": 10, "flowers102": 102, "food101": 101, "oxford_pets": 37,
                "sun397": 397, "ucf101": 101}


def _coop_split(n_classes: int, images: list[str]) -> dict:
    """One train entry per class, 2 val, 3 test; entries share the few image files."""
    def entry(i, label):
        return [images[i % len(images)], label, f"class_{label}"]

    return {"train": [entry(c, c) for c in range(n_classes)],
            "val": [entry(c, c) for c in (0, n_classes - 1)],
            "test": [entry(c, c) for c in (1, 2, n_classes - 1)]}


@pytest.mark.parametrize("name", sorted(COOP_CLASSES))
def test_coop_datasets(tmp_path, name):
    files = COOP[name]
    folder = tmp_path / files.folder
    images = ["a/one.jpg", "b/two.png"]
    for i, rel in enumerate(images):
        _image(folder / files.images / rel, seed=i)
    (folder / files.split).write_text(json.dumps(_coop_split(COOP_CLASSES[name], images)))
    spec = build_dataset(name.replace("_", "-"), root=tmp_path, img_size=S)
    n = COOP_CLASSES[name]
    assert spec.name == name and spec.class_names[0] == "class 0" and spec.class_names[-1] == f"class {n - 1}"
    assert len(spec.train) == n + 2 and len(spec.test) == 3  # train + val merged
    assert spec.template == DEFAULT_TEMPLATE
    _check_item(spec, n)


def test_coop_missing_files(tmp_path):
    msg = _one_line_error("does not exist", "dtd", root=tmp_path / "nope")
    assert str(tmp_path / "nope" / "dtd") in msg
    assert "only fetches" in _one_line_error("does not exist", "dtd", root=tmp_path / "nope", download=True)
    (tmp_path / "eurosat").mkdir()
    msg = _one_line_error("split_zhou_EuroSAT.json", "eurosat", root=tmp_path)
    assert str(tmp_path / "eurosat" / "split_zhou_EuroSAT.json") in msg
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(_coop_split(10, ["x.jpg"])))
    msg = _one_line_error("image folder", "eurosat", root=tmp_path)
    assert str(tmp_path / "eurosat" / "2750") in msg
    (tmp_path / "eurosat" / "2750").mkdir()
    msg = _one_line_error("x.jpg", "eurosat", root=tmp_path)
    assert str(tmp_path / "eurosat" / "2750" / "x.jpg") in msg


# --------------------------------------------------------------------------- json:PATH

def test_json_dataset(tmp_path):
    _image(tmp_path / "data" / "cat" / "1.jpg", 1)
    _image(tmp_path / "data" / "dog" / "2.png", 2)
    split = {"train": [["data/cat/1.jpg", 0, "tabby_cat"], ["data/dog/2.png", 1, "dog"]],
             "val": [["data/dog/2.png", 1, "dog"]],
             "test": [["data/cat/1.jpg", 0, "tabby_cat"]]}
    (tmp_path / "mine.json").write_text(json.dumps(split))
    spec = build_dataset(f"json:{tmp_path / 'mine.json'}", img_size=S)
    assert spec.name == f"json:{tmp_path / 'mine.json'}" and spec.class_names == ["tabby cat", "dog"]
    assert len(spec.train) == 3 and len(spec.test) == 1 and spec.template == DEFAULT_TEMPLATE
    _check_item(spec, 2)
    # "image_dir" moves the image folder; no "val" is fine.
    sub = {"image_dir": "data", "train": [["cat/1.jpg", 0, "cat"], ["dog/2.png", 1, "dog"]],
           "test": [["dog/2.png", 1, "dog"]]}
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    spec = build_dataset(f"json:{tmp_path / 'sub.json'}", img_size=S, train_limit=1)
    assert len(spec.train) == 1 and len(spec.test) == 1
    _check_item(spec, 2)


def test_json_dataset_errors(tmp_path):
    msg = _one_line_error("does not exist", f"json:{tmp_path / 'none.json'}")
    assert str(tmp_path / "none.json") in msg
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _one_line_error("not valid JSON", f"json:{bad}")
    bad.write_text(json.dumps({"train": [["a.jpg", "zero", "cat"]], "test": []}))
    _one_line_error(r"train\[0\]", f"json:{bad}")
    bad.write_text(json.dumps({"train": [["a.jpg", 0, "cat"], ["a.jpg", 0, "dog"]], "test": [["a.jpg", 0, "cat"]]}))
    _image(tmp_path / "a.jpg")
    _one_line_error("called both", f"json:{bad}")
    bad.write_text(json.dumps({"train": [["a.jpg", 0, "cat"], ["a.jpg", 2, "dog"]], "test": [["a.jpg", 0, "cat"]]}))
    _one_line_error("never occur", f"json:{bad}")


# --------------------------------------------------------------------------- resisc45

def test_resisc45(tmp_path):
    folder = tmp_path / "resisc45"
    classes = [f"class_{i:02d}" for i in range(45)]
    for i, c in enumerate(classes):
        _image(folder / "NWPU-RESISC45" / c / f"{c}_001.jpg", i, size=(16, 16))
    (folder / "resisc45-train.txt").write_text("".join(f"{c}/{c}_001.jpg\n" for c in classes))
    (folder / "resisc45-val.txt").write_text(f"{classes[3]}/{classes[3]}_001.jpg\n\n")
    # Bare file names (another common form of these lists): the class precedes "_NNN".
    (folder / "resisc45-test.txt").write_text(f"{classes[7]}_001.jpg\n{classes[44]}_001.jpg\n")
    spec = build_dataset("resisc45", root=tmp_path, img_size=S)
    assert spec.class_names[0] == "class 00" and len(spec.train) == 46 and len(spec.test) == 2
    assert spec.test.targets.tolist() == [7, 44] and spec.template == DEFAULT_TEMPLATE
    _check_item(spec, 45)
    (folder / "resisc45-val.txt").unlink()
    msg = _one_line_error("does not exist", "resisc45", root=tmp_path)
    assert str(folder / "resisc45-val.txt") in msg


# --------------------------------------------------------------------------- clevr_count

def test_clevr_count(tmp_path):
    clevr = tmp_path / "clevr" / "CLEVR_v1.0"

    def scenes(split, counts):
        names = [f"CLEVR_{split}_{i:06d}.png" for i in range(len(counts))]
        for i, name in enumerate(names):
            _image(clevr / "images" / split / name, i, size=(24, 16))
        data = {"info": {"split": split},
                "scenes": [{"image_index": i, "image_filename": n, "objects": [{"shape": "cube"}] * k}
                           for i, (n, k) in enumerate(zip(names, counts))]}
        (clevr / "scenes").mkdir(parents=True, exist_ok=True)
        (clevr / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps(data))

    scenes("train", [3, 4, 5, 6, 7, 8, 9, 10, 2, 11])  # 2 and 11 objects fall outside the 8 classes
    scenes("val", [10, 3, 5])
    _clevr_scenes.cache_clear()
    spec = build_dataset("clevr_count", root=tmp_path, img_size=S)
    assert spec.class_names == [str(n) for n in range(3, 11)]
    assert len(spec.train) == 8 and spec.train.targets.tolist() == list(range(8))
    assert len(spec.test) == 3 and spec.test.targets.tolist() == [7, 0, 2]
    assert spec.template == "This is a photo of {} objects."
    _check_item(spec, 8)
    build_dataset("clevr", root=tmp_path, img_size=S)  # scenes are parsed once per process
    assert _clevr_scenes.cache_info().hits == 2
    (clevr / "scenes" / "CLEVR_val_scenes.json").unlink()
    msg = _one_line_error("does not exist", "clevr_count", root=tmp_path)
    assert str(clevr / "scenes" / "CLEVR_val_scenes.json") in msg
