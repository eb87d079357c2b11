"""Datasets on real data: fashion-mnist (Debian package), elpv (pip package), digits, folders."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pgn.data import DATASETS, DataSpec, build_dataset, eval_transform, load_image, train_transform
from pgn.data.datasets import FASHION_MNIST_ROOT, read_idx
from pgn.errors import PGNError

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

needs_fmnist = pytest.mark.skipif(
    not Path(FASHION_MNIST_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist"
)


def _assert_normalised_item(item, size=112):
    x, y = item
    assert isinstance(y, int)
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    pixels = x * STD + MEAN  # undo Normalize: back to [0, 1]
    assert pixels.min() >= -1e-3 and pixels.max() <= 1 + 1e-3
    assert x.std() > 0.05  # not a blank image


def _proportions(targets, n_classes):
    return np.bincount(np.asarray(targets), minlength=n_classes) / len(targets)


# --------------------------------------------------------------------------- fashion-mnist

@needs_fmnist
def test_fashion_mnist_sizes_classes_and_items():
    spec = build_dataset("fashion-mnist")
    assert isinstance(spec, DataSpec) and spec.name == "fashion-mnist"
    assert len(spec.class_names) == 10 and spec.class_names[0] == "T-shirt/top"
    assert spec.class_names[-1] == "Ankle boot"
    assert len(spec.train) == 60000 and len(spec.test) == 10000
    assert sorted(set(np.asarray(spec.train.targets).tolist())) == list(range(10))
    _assert_normalised_item(spec.train[0])
    _assert_normalised_item(spec.test[123])
    # Grey input becomes three identical channels (before per-channel normalisation).
    pixels = spec.test[0][0] * STD + MEAN
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)


@needs_fmnist
def test_fashion_mnist_root_override_and_corrupt_idx(tmp_path):
    with pytest.raises(PGNError, match="does not exist"):
        build_dataset("fashion-mnist", root=str(tmp_path / "nope"))
    # Label file where an image file should be: wrong magic number.
    import shutil

    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    shutil.copy(Path(FASHION_MNIST_ROOT) / "t10k-labels-idx1-ubyte.gz", bad)
    with pytest.raises(PGNError, match="magic"):
        read_idx(bad, "images")
    # Not gzip at all.
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(PGNError, match="t10k-images-idx3-ubyte.gz"):
        read_idx(bad, "images")


@needs_fmnist
def test_train_limit_is_stratified_and_seeded():
    a = build_dataset("fashion-mnist", train_limit=100, test_limit=50, seed=1)
    b = build_dataset("fashion-mnist", train_limit=100, test_limit=50, seed=1)
    c = build_dataset("fashion-mnist", train_limit=100, seed=2)
    assert len(a.train) == 100 and len(a.test) == 50 and len(c.test) == 10000
    assert np.array_equal(a.train.indices, b.train.indices)
    assert not np.array_equal(a.train.indices, c.train.indices)
    assert np.bincount(a.train.targets, minlength=10).tolist() == [10] * 10
    _assert_normalised_item(a.train[99])


# --------------------------------------------------------------------------- elpv

def test_elpv_binary_and_four_class_share_a_stratified_deterministic_split():
    pytest.importorskip("elpv_dataset")
    binary, four = build_dataset("elpv"), build_dataset("elpv4")
    assert binary.class_names == ["functional", "defective"]
    assert four.class_names == ["0%", "33%", "67%", "100%"]
    assert len(binary.train) + len(binary.test) == 2624
    assert len(binary.test) == 656
    assert np.array_equal(binary.train.indices, four.train.indices)
    assert np.array_equal(binary.test.indices, four.test.indices)
    assert not set(binary.train.indices) & set(binary.test.indices)
    # Binary labels are derived from the 4-class ones: 0%/33% functional, 67%/100% defective.
    assert np.array_equal(binary.train.targets, (four.train.targets >= 2).astype(int))
    # Stratified: class proportions in train and test agree.
    assert np.abs(_proportions(four.train.targets, 4) - _proportions(four.test.targets, 4)).max() < 0.01
    # Deterministic across calls.
    again = build_dataset("elpv4")
    assert np.array_equal(again.test.indices, four.test.indices)
    _assert_normalised_item(binary.test[0], size=112)
    x, _ = build_dataset("elpv", img_size=64, test_limit=4).test[3]
    assert x.shape == (3, 64, 64)


# --------------------------------------------------------------------------- digits

def test_digits():
    spec = build_dataset("digits", img_size=32)
    assert spec.class_names == [str(i) for i in range(10)]
    assert len(spec.train) + len(spec.test) == 1797
    assert len(spec.test) == 450
    assert np.abs(_proportions(spec.train.targets, 10) - _proportions(spec.test.targets, 10)).max() < 0.02
    _assert_normalised_item(spec.train[5], size=32)


# --------------------------------------------------------------------------- folders

def _write_images(folder: Path, classes=("cat", "dog"), per_class=4, size=20):
    """Real PNG files with distinct content; the first image of each class is greyscale."""
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if i == 0:
                img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
            else:
                img = Image.fromarray(rng.integers(0, 256, (size, size + 5, 3), dtype=np.uint8))
            img.save(folder / c / f"{c}{i}.png")


def test_folder_without_split_is_split_75_25(tmp_path):
    _write_images(tmp_path, per_class=8)
    spec = build_dataset(f"folder:{tmp_path}", img_size=48)
    assert spec.name == f"folder:{tmp_path.resolve()}"
    assert spec.class_names == ["cat", "dog"]
    assert len(spec.train) == 12 and len(spec.test) == 4
    assert sorted(spec.test.targets.tolist()) == [0, 0, 1, 1]
    for ds in (spec.train, spec.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 48, 48) and y in (0, 1)
    assert np.array_equal(build_dataset(f"folder:{tmp_path}").test.indices, spec.test.indices)


def test_folder_with_train_and_test_subfolders(tmp_path):
    _write_images(tmp_path / "train", classes=("a", "b", "c"), per_class=3)
    _write_images(tmp_path / "val", classes=("a", "c"), per_class=2)  # val may lack a class
    spec = build_dataset(f"folder:{tmp_path}", img_size=16)
    assert spec.class_names == ["a", "b", "c"]
    assert len(spec.train) == 9 and len(spec.test) == 4
    assert sorted(spec.test.targets.tolist()) == [0, 0, 2, 2]  # "c" keeps its train index
    assert [spec.test[i][1] for i in range(4)] == sorted(spec.test.targets.tolist())
    assert spec.test[0][0].shape == (3, 16, 16)


def test_grey_image_becomes_rgb(tmp_path):
    _write_images(tmp_path, per_class=1)
    img = load_image(tmp_path / "cat" / "cat0.png")
    assert img.mode == "RGB"
    x = eval_transform(24, (0, 0, 0), (1, 1, 1))(img)
    assert x.shape == (3, 24, 24) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_corrupt_image_names_the_file(tmp_path):
    _write_images(tmp_path, per_class=4)
    bad = tmp_path / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    spec = build_dataset(f"folder:{tmp_path}")
    data = [spec.train, spec.test]
    with pytest.raises(PGNError, match="broken.png"):
        for ds in data:
            for i in range(len(ds)):
                ds[i]
    with pytest.raises(PGNError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    # A truncated (otherwise valid) PNG also fails with the file named.
    good = (tmp_path / "cat" / "cat1.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(PGNError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_folder_errors(tmp_path):
    with pytest.raises(PGNError, match="does not exist"):
        build_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(PGNError, match="no images"):
        build_dataset(f"folder:{tmp_path}")  # empty: no class folders
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(PGNError, match="no images"):
        build_dataset(f"folder:{tmp_path}")  # a class folder without images
    with pytest.raises(PGNError, match="folder:"):
        build_dataset("folder:")


# --------------------------------------------------------------------------- misc

def test_unknown_name_lists_known_names():
    with pytest.raises(PGNError) as e:
        build_dataset("imagenet-9000")
    msg = str(e.value)
    assert "imagenet-9000" in msg and all(n in msg for n in DATASETS) and "\n" not in msg


def test_bad_limits_and_size():
    with pytest.raises(PGNError, match="train_limit"):
        build_dataset("digits", train_limit=0)
    with pytest.raises(PGNError, match="image size"):
        build_dataset("digits", img_size=0)


def test_augment_varies_draws_but_not_shape():
    spec = build_dataset("digits", img_size=40, augment=True, train_limit=20)
    assert len(spec.train) == 20
    torch.manual_seed(0)
    draws = [spec.train[0][0] for _ in range(6)]
    assert all(d.shape == (3, 40, 40) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    # The test split is never augmented.
    assert torch.equal(spec.test[0][0], spec.test[0][0])
    # train_transform directly, on an RGB file-like image.
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    assert train_transform(24, (0.5,) * 3, (0.5,) * 3)(img).shape == (3, 24, 24)


# --------------------------------------------------------------------------- preprocessing on the device

@pytest.mark.parametrize("name,size", [("fashion-mnist", 112), ("elpv", 112), ("digits", 32), ("elpv", 56)])
def test_preprocessing_on_the_device_is_pillows_to_the_bit(name, size):
    """Enlarging (28 and 8 px) and shrinking (300 px): the device's batches equal the PIL pipeline's exactly
    (torch's own antialiased bicubic misses by up to 19 8-bit steps when enlarging)."""
    from torch.utils.data import DataLoader

    from pgn.data.device import on_device

    cpu = build_dataset(name, img_size=size, test_limit=24)
    dev = build_dataset(name, img_size=size, test_limit=24, on_device=True)
    stored = next(iter(DataLoader(dev.test, batch_size=24)))[0]
    assert stored.dtype == torch.uint8 and stored.shape[-1] != size  # what crosses is the stored image
    want = torch.cat([x for x, _ in DataLoader(cpu.test, batch_size=24)])
    got = torch.cat([x for x, _ in on_device(DataLoader(dev.test, batch_size=8), dev, "cpu")])
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert dev.recipe["on_device"] is True and dev.device_transform is not None


def test_preprocessing_on_the_device_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(PGNError, match="`on_device` preprocessing has no augmentation"):
        build_dataset("digits", img_size=32, augment=True, on_device=True)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8 + i, 8, 3), i, np.uint8)).save(tmp_path / c / f"{i}.png")
    with pytest.raises(PGNError, match="one stored size held in memory"):
        build_dataset(f"folder:{tmp_path}", img_size=32, on_device=True)


def test_pillow_resize_is_pillows_on_many_sizes():
    """The coefficients against Pillow itself: square images enlarged and shrunk by awkward ratios, and one
    axis alone, grey and RGB (the shapes the in-memory datasets make; see pillow_resize on others)."""
    from pgn.data.device import pillow_resize

    rng = np.random.default_rng(0)
    sizes = [((28, 28), (224, 224)), ((300, 300), (112, 112)), ((8, 8), (33, 33)), ((5, 5), (2, 2)),
             ((101, 7), (101, 95)), ((101, 7), (13, 7)), ((224, 200), (224, 97))]
    sizes += [((int(a), int(a)), (int(b), int(b))) for a, b in rng.integers(1, 160, (10, 2))]
    sizes += [((int(a), int(c)), (int(b), int(c))) for a, b, c in rng.integers(1, 120, (5, 3))]
    for (h, w), (oh, ow) in sizes:
        for channels in (1, 3):
            arr = rng.integers(0, 256, (h, w) if channels == 1 else (h, w, 3), dtype=np.uint8)
            want = np.asarray(Image.fromarray(arr).resize((ow, oh), Image.BICUBIC), dtype=np.float32)
            x = torch.from_numpy(arr.copy()).reshape(1, h, w, channels).permute(0, 3, 1, 2)
            got = pillow_resize(x, (oh, ow))[0].permute(1, 2, 0).numpy().reshape(want.shape)
            assert np.array_equal(got, want), ((h, w), (oh, ow), channels, np.abs(got - want).max())
