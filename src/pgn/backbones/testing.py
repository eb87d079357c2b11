"""Tiny random-init backbones of each family, registered by name for tests and examples (as timm's ``test_vit``).

They are the real libraries' architectures at toy sizes, initialised from seed 0 (the same weights in every
process), or from ``weights=PATH`` (a state dict of the same architecture). Never pretrained: they exist so
that tests can write ``create_model("test-vit-timm", ...)`` and the CLI can run in seconds.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PGNError
from .base import FrozenBackbone, Preprocessing
from .registry import register_backbone

TEST_SIZE = 96  # the fixed-grid families' native input (patch 16: a 6x6 grid)


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _load(module: torch.nn.Module, weights: str | None, name: str) -> None:
    if weights is None:
        return
    from .torchvision_vit import _read_state_dict

    path = Path(weights)
    if not path.is_file():
        raise PGNError(f"weights file {weights} does not exist")
    try:
        module.load_state_dict(_read_state_dict(path), strict=True)
    except RuntimeError as e:
        raise PGNError(f"{path} does not fit {name}: {str(e).splitlines()[0]}") from None


@register_backbone("test-vit-timm", "timm test_vit (patch 16, width 64, 6 blocks), random init", test=True)
def test_vit_timm(weights: str | None = None) -> FrozenBackbone:
    import timm

    from .timm_vit import TimmViT

    vit = _seeded(lambda: timm.create_model("test_vit", pretrained=False, dynamic_img_size=True, num_classes=0))
    _load(vit, weights, "test-vit-timm")
    return TimmViT(vit, name="test-vit-timm", description="timm test_vit, random init (tests only)")


@register_backbone("test-vit-clip", "open_clip CLIP (vision width 64, 2 layers; text width 32), random init",
                   test=True)
def test_vit_clip(weights: str | None = None) -> FrozenBackbone:
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from .openclip import OpenCLIPViT

    model = _seeded(lambda: CLIP(
        embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=TEST_SIZE),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1), quick_gelu=True))
    _load(model, weights, "test-vit-clip")
    return OpenCLIPViT(model.eval(), name="test-vit-clip", tokenizer=open_clip.get_tokenizer("ViT-B-32"),
                       description="open_clip CLIP at toy size, random init (tests only)")


@register_backbone("test-vit-torchvision", "torchvision VisionTransformer (width 64, 2 layers, 10 classes), "
                   "random init", test=True)
def test_vit_torchvision(weights: str | None = None) -> FrozenBackbone:
    from torchvision.models.vision_transformer import VisionTransformer

    from .torchvision_vit import TorchvisionViT

    model = _seeded(lambda: VisionTransformer(image_size=TEST_SIZE, patch_size=16, num_layers=2, num_heads=2,
                                              hidden_dim=64, mlp_dim=128, num_classes=10))
    _load(model, weights, "test-vit-torchvision")
    return TorchvisionViT(model.eval(), name="test-vit-torchvision",
                          description="torchvision ViT at toy size, random init (tests only)")


@register_backbone("test-cnn-timm", "timm test_efficientnet (a CNN with 1000 scores), random init", test=True)
def test_cnn_timm(weights: str | None = None) -> FrozenBackbone:
    import timm

    from .pixel_classifier import PixelClassifier

    cnn = _seeded(lambda: timm.create_model("test_efficientnet", pretrained=False, num_classes=1000))
    _load(cnn, weights, "test-cnn-timm")
    return PixelClassifier(cnn.eval(), name="test-cnn-timm", preprocessing=Preprocessing((0.5,) * 3, (0.5,) * 3, 64),
                           num_scores=1000, cell_size=8, description="timm test_efficientnet, random init (tests only)")
