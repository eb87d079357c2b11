"""Images are read as what they are: every Pillow mode through the one conversion (CLI, datasets, server)."""
import io

import numpy as np
import pytest
from PIL import Image

from pgn import PGNError
from pgn.data.base import load_image, to_rgb
from pgn.data.transforms import ToRGB

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

GREY = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)  # every 8-bit value once


def _saved(img: Image.Image, tmp_path, fmt: str):
    path = tmp_path / f"im.{fmt.lower()}"
    img.save(path, format=fmt)
    return path


def test_16_bit_grey_keeps_its_top_8_bits(tmp_path):
    wide = GREY.astype(np.uint16) * 256 + 3  # 0x0003, 0x0103 ...: the top byte is the 8-bit value
    path = _saved(Image.fromarray(wide), tmp_path, "PNG")
    assert Image.open(path).mode.startswith("I")  # Pillow opens it as a 16/32-bit integer image
    got = np.asarray(load_image(path))
    assert got.shape == (16, 16, 3) and np.array_equal(got[..., 0], GREY) and np.array_equal(got[..., 2], GREY)
    # Pillow's own convert("RGB") would have clipped almost every pixel to 255 (the defect this guards).
    assert (np.asarray(Image.open(path).convert("RGB"))[..., 0] == 255).mean() > 0.9


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_images_are_mapped_by_their_range(tmp_path, scale):
    values = GREY.astype(np.float32) / 255 * scale
    path = _saved(Image.fromarray(values, "F"), tmp_path, "TIFF")
    got = np.asarray(load_image(path))[..., 1]
    assert np.array_equal(got, GREY)


def test_float_images_out_of_range_and_non_finite_are_refused(tmp_path):
    for values, message in ((np.full((4, 4), -3.0, np.float32), "neither"),
                            (np.full((4, 4), np.nan, np.float32), "NaN")):
        path = _saved(Image.fromarray(values, "F"), tmp_path, "TIFF")
        with pytest.raises(PGNError, match=message):
            load_image(path)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "I;16", "I;16B", "I", "F",
                                  "RGBX", "LAB", "HSV"])
def test_every_pillow_mode_becomes_8_bit_rgb(mode):
    """Each mode Pillow knows: an (H, W, 3) uint8 image, grey values kept where the mode is grey."""
    base = Image.fromarray(GREY, "L")
    if mode in ("I;16", "I;16B"):
        wide = GREY.astype(np.uint16) * 256 + 7
        img = Image.frombytes(mode, (16, 16), wide.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    elif mode == "I":
        img = Image.fromarray(GREY.astype(np.int32), "I")
    elif mode == "F":
        img = Image.fromarray(GREY.astype(np.float32), "F")
    elif mode in ("LAB", "HSV"):
        img = Image.fromarray(np.stack([GREY] * 3, -1), "RGB").convert(mode) if mode == "HSV" else \
            Image.new("LAB", (16, 16), (128, 128, 128))
    else:
        img = base.convert(mode)
    assert img.mode == mode
    rgb = to_rgb(img)
    arr = np.asarray(rgb)
    assert rgb.mode == "RGB" and arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    if mode in ("L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "I;16", "I;16B", "I", "F"):
        assert np.array_equal(arr[..., 0], GREY), mode
    assert np.array_equal(np.asarray(ToRGB()(img)), arr)  # the datasets' transform is the same conversion


def test_the_server_decodes_16_bit_pngs_as_the_cli_does(tmp_path):
    from pgn.server.server import _decode

    wide = GREY.astype(np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    arr = _decode(buf.getvalue(), "upload", patch=16, max_side=64)
    assert np.array_equal(arr[..., 0], GREY)
