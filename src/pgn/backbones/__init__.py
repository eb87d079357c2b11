"""Frozen ViT backbones by name: one factory, :func:`create_backbone`.

Names:
  ``dinov2-s14-imgfocus``  the embedded default (installs offline; see :mod:`.imgfocus`)
  ``timm:<model>``         any timm ViT, e.g. ``timm:vit_small_patch16_224.dino``; weights from the
                           Hugging Face hub, or from ``weights=PATH`` (a local .safetensors/.pth file)
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from ..errors import PGNError
from .base import FrozenBackbone, Preprocessing
from .timm_vit import TimmViT

DEFAULT_BACKBONE = "dinov2-s14-imgfocus"
BACKBONES = (DEFAULT_BACKBONE, "timm:<model name>")

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "FrozenBackbone", "Preprocessing", "TimmViT", "create_backbone"]


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick probe so an offline machine fails in milliseconds, not after a long HTTP timeout."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached_file(pretrained_cfg) -> str | None:
    """The locally cached hub weights for this timm model, if any."""
    hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for fname in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return hit
    return None


def _create_timm(model_name: str, weights: str | None):
    import timm

    if not timm.is_model(model_name.split(".")[0]) and not timm.is_model(model_name):
        raise PGNError(f"unknown timm model {model_name!r}; list ViTs with `python -c \"import timm; print(timm.list_models('vit_*'))\"`")
    kwargs = dict(num_classes=0, dynamic_img_size=True)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise PGNError(f"weights file {weights} does not exist; pass an existing .safetensors or .pth file to --weights")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
    else:
        cfg = timm.models.get_pretrained_cfg(model_name)
        cached = _hub_cached_file(cfg) if cfg is not None else None
        if cached:
            kwargs["pretrained_cfg_overlay"] = dict(file=cached)
        elif not _hub_reachable():
            raise PGNError(
                f"timm:{model_name} needs pretrained weights from the Hugging Face hub, which is not reachable; "
                "download them elsewhere and pass --weights PATH")
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PGNError(f"could not load weights for timm:{model_name}: {first[:300]}") from e


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None) -> FrozenBackbone:
    """Build a frozen backbone by name (see module docstring)."""
    if name == DEFAULT_BACKBONE:
        from . import imgfocus

        if weights is not None:
            raise PGNError(f"{DEFAULT_BACKBONE} brings its own weights; drop --weights or use timm:vit_small_patch14_dinov2")
        return TimmViT(imgfocus.create(), name=name, description=imgfocus.DESCRIPTION)
    if name.startswith("timm:"):
        model_name = name[len("timm:"):]
        vit = _create_timm(model_name, weights)
        return TimmViT(vit, name=name, description=f"timm {model_name}" + (f" with weights {weights}" if weights else ""))
    raise PGNError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
