"""What the server runs: each library's own, unmodified image path, behind one small interface.

The server knows nothing about prompts. It receives images (prompted canvases, for input-space
deployment) and runs the model exactly as its library does:

* timm ``VisionTransformer``: ``forward_features`` (final norm included), CLS row as the
  embedding; ``forward_head`` for class scores when the model has a classifier;
* open_clip ``CLIP``: ``encode_image`` as the embedding; class scores from CLIP's zero-shot
  head over class-name prompts (``logit_scale.exp() * cos(image, text)``, as ``CLIP.forward``);
* torchvision ``VisionTransformer``: its ``forward``; the class scores are its ``heads``' output
  and the embedding is what enters ``heads`` (read with a forward pre-hook, so the library's own
  code runs unchanged).

open_clip and torchvision ViTs take their native input size only (their positional grid is fixed),
which is what the frame layout sends; timm ViTs (``dynamic_img_size``) take any multiple of the patch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..backbones.base import FrozenBackbone
from ..errors import PGNError

__all__ = ["ServedModel", "served_model", "read_class_file"]


class ServedModel:
    """One model's unmodified forward: (B, 3, H, W) normalised float32 -> embeddings and/or class scores.

    ``classes`` names the score columns (``None``: the model answers embeddings only);
    ``native_size`` is the only (H, W) accepted, or ``None`` for any multiple of the patch size.
    """

    family = "?"

    def __init__(self, backbone: FrozenBackbone, classes: Sequence[str] | None = None):
        self.backbone = backbone.eval()
        self.name = backbone.name
        self.description = getattr(backbone, "description", "")
        self.patch_size = int(backbone.patch_size)
        self.width = int(backbone.width)
        self.feature_dim = int(backbone.feature_dim)
        self.preprocessing = backbone.preprocessing
        self.classes = list(classes) if classes is not None else None
        self.native_size: tuple[int, int] | None = None
        self.template: str | None = None  # the zero-shot prompt its scores read (CLIP), reported by /info

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> ((B, F) embeddings, (B, C) logits of the model's own head or None)."""
        raise NotImplementedError

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) class scores, C = len(classes)."""
        raise NotImplementedError


class TimmServed(ServedModel):
    family = "timm"

    def __init__(self, backbone, classes=None):
        self.vit = backbone.vit
        self.num_classes = int(getattr(self.vit, "num_classes", 0) or 0)
        if classes is None and self.num_classes:
            classes = [str(i) for i in range(self.num_classes)]
        if classes is not None and len(classes) != self.num_classes:
            raise PGNError(f"{backbone.name} has {self.num_classes} classifier outputs but {len(classes)} class "
                           "names were given; a timm model scores with its own head")
        super().__init__(backbone, classes)

    def _head(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.vit.forward_head(feats)
        return out[:, 0] if out.ndim == 3 else out  # global_pool='' keeps every token; the CLS row predicts

    def embed(self, x):
        feats = self.vit.forward_features(x)
        return feats[:, 0], (self._head(feats) if self.num_classes else None)

    def scores(self, x):
        return self._head(self.vit.forward_features(x))


class PixelClassifierServed(ServedModel):
    """A classifier seen through its pixels and scores (:class:`~pgn.backbones.PixelClassifier`, e.g. a CNN):
    its scores are its own forward, and they are also what it answers as "embeddings"."""

    family = "classifier"

    def __init__(self, backbone, classes=None):
        if classes is None:
            classes = backbone.source_classes or [str(i) for i in range(backbone.feature_dim)]
        if len(classes) != backbone.feature_dim:
            raise PGNError(f"{backbone.name} has {backbone.feature_dim} classifier outputs but {len(classes)} class "
                           "names were given; a classifier scores with its own head")
        super().__init__(backbone, classes)

    def embed(self, x):
        scores = self.backbone(x)
        return scores, scores

    def scores(self, x):
        return self.backbone(x)


class OpenCLIPServed(ServedModel):
    family = "open_clip"

    def __init__(self, backbone, classes=None, template: str | None = None):
        super().__init__(backbone, classes)
        self.clip = backbone.clip
        size = backbone.visual.image_size
        self.native_size = (int(size[0]), int(size[1]))
        self.head = None
        if classes is not None:
            from ..backbones.openclip import DEFAULT_TEMPLATE

            # Text features are computed once, by CLIP's own text tower, and kept on the model's device.
            self.template = template or DEFAULT_TEMPLATE
            self.head = backbone.zero_shot_head(list(classes), self.template).to(self.device)

    def embed(self, x):
        return self.clip.encode_image(x), None

    def scores(self, x):
        return self.head(self.clip.encode_image(x).float())


class TorchvisionServed(ServedModel):
    family = "torchvision"

    def __init__(self, backbone, classes=None):
        self.vit = backbone.vit
        linear = _last_linear(self.vit.heads)
        if linear is None:  # a backbone built without its classifier: embeddings only
            if classes is not None:
                raise PGNError(f"{backbone.name} was built without a classifier head (its weights hold none), so it "
                               "cannot answer class scores; serve it without `classes`, or give weights with heads.*")
            outputs = 0
        else:
            outputs = linear.out_features
            if classes is None:
                classes = [str(i) for i in range(outputs)]
        if classes is not None and len(classes) != outputs:
            raise PGNError(f"{backbone.name} has {outputs} classifier outputs but {len(classes)} class names were "
                           "given; a torchvision model scores with its own head")
        super().__init__(backbone, classes)
        self.native_size = (int(self.vit.image_size), int(self.vit.image_size))
        self._seen: list[torch.Tensor] = []
        # What enters ``heads`` is the CLS representation: read it without touching torchvision's forward.
        self.vit.heads.register_forward_pre_hook(lambda _m, args: self._seen.append(args[0]))

    def embed(self, x):
        self._seen.clear()
        out = self.vit(x)  # torchvision's own forward; with an Identity head it ends at the CLS feature
        return self._seen.pop(), (out if self.classes is not None else None)

    def scores(self, x):
        return self.vit(x)


def _last_linear(module: torch.nn.Module) -> torch.nn.Linear | None:
    """The classifier layer in torchvision's ``heads`` (None when ``heads`` is an Identity)."""
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return layers[-1] if layers else None


def served_model(backbone: FrozenBackbone, classes: Sequence[str] | None = None,
                 template: str | None = None) -> ServedModel:
    """Wrap ``backbone`` in its library's serving path; ``classes`` turns on class scores (CLIP: zero-shot)."""
    from ..backbones.openclip import OpenCLIPViT
    from ..backbones.timm_vit import TimmViT
    from ..backbones.torchvision_vit import TorchvisionViT

    if template is not None and not isinstance(backbone, OpenCLIPViT):
        raise PGNError("a prompt template applies to CLIP's zero-shot head only")
    if isinstance(backbone, OpenCLIPViT):
        return OpenCLIPServed(backbone, classes, template)
    if isinstance(backbone, TimmViT):
        return TimmServed(backbone, classes)
    if isinstance(backbone, TorchvisionViT):
        return TorchvisionServed(backbone, classes)
    if getattr(backbone, "pixel_only", False):
        return PixelClassifierServed(backbone, classes)
    raise PGNError(f"cannot serve a {type(backbone).__name__}; serve a timm, open_clip or torchvision ViT")


def read_class_file(path: str | Path) -> tuple[list[str], str | None]:
    """Class names, one per line; an optional first line ``template: a photo of a {}.`` sets the prompt."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise PGNError(f"cannot read the class file {path} ({e}); write one class name per line") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    template = None
    if lines and lines[0].lower().startswith("template:"):
        template = lines.pop(0).split(":", 1)[1].strip()
    if len(lines) < 2:
        raise PGNError(f"{path} names {len(lines)} class(es); a classifier needs at least 2, one per line")
    if len(set(lines)) != len(lines):
        dup = sorted({c for c in lines if lines.count(c) > 1})
        raise PGNError(f"{path} names a class twice: {', '.join(dup)}")
    return lines, template
