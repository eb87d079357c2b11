"""What the server runs: each library's own, unmodified image path, behind one small interface.

Each backbone states its own face (``library_forward``, ``served_size``, ``classifier_outputs``, in
:mod:`pgn.backbones`); :class:`ServedModel` only wires it to the server's routes. The server knows
nothing about prompts. It receives images (prompted canvases, for input-space
deployment) and runs the model exactly as its library does:

* timm ``VisionTransformer``: ``forward_features`` (final norm included), CLS row as the
  embedding; ``forward_head`` for class scores when the model has a classifier;
* open_clip ``CLIP``: ``encode_image`` as the embedding; class scores from CLIP's zero-shot
  head over class-name prompts (``logit_scale.exp() * cos(image, text)``, as ``CLIP.forward``);
* torchvision ``VisionTransformer``: its ``forward``; the class scores are its ``heads``' output
  and the embedding is what enters ``heads`` (read with a forward pre-hook, so the library's own
  code runs unchanged);
* a pixel classifier (a CNN such as EfficientNet-Lite0): its forward, whose scores are all it answers.

open_clip and torchvision ViTs take their native input size only (their positional grid is fixed),
which is what the frame layout sends; timm ViTs (``dynamic_img_size``) take any multiple of the patch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..backbones.base import FrozenModel
from ..errors import PGNError

__all__ = ["ServedModel", "served_model", "read_class_file"]


class ServedModel:
    """One model's unmodified forward: (B, 3, H, W) normalised float32 -> embeddings and/or class scores.

    It is the backbone's own face (:meth:`~pgn.backbones.FrozenBackbone.library_forward`, ``served_size``,
    ``classifier_outputs``): no class per library here. ``classes`` names the score columns: the model's own
    classifier's (it must have as many outputs), or CLIP's zero-shot head over them (with ``template``).
    ``None`` answers embeddings only, unless the model has a classifier of its own, whose outputs are then
    named by index (or by the model's own class names). ``native_size`` is the only (H, W) accepted, or
    ``None`` for any multiple of the patch size.
    """

    def __init__(self, backbone: FrozenModel, classes: Sequence[str] | None = None, template: str | None = None):
        self.backbone = backbone.eval()
        self.name = backbone.name
        self.family = backbone.family
        self.description = backbone.description
        self.patch_size = int(backbone.patch_size)
        self.width = int(backbone.width)
        self.feature_dim = int(backbone.feature_dim)
        self.preprocessing = backbone.preprocessing
        self.native_size = backbone.served_size
        self.template: str | None = None  # the zero-shot prompt its scores read (CLIP), reported by /info
        self.head = None
        zero_shot = backbone.has_zero_shot_head
        if template is not None and not zero_shot:
            raise PGNError("a prompt template applies to CLIP's zero-shot head only")
        outputs = backbone.classifier_outputs
        if classes is not None and zero_shot:
            from ..backbones.openclip import DEFAULT_TEMPLATE

            # Text features are computed once, by CLIP's own text tower, and kept on the model's device.
            self.template = template or DEFAULT_TEMPLATE
            self.head = backbone.zero_shot_head(list(classes), self.template).to(self.device)
        elif classes is not None and not outputs:
            raise PGNError(f"{backbone.name} was built without a classifier head (its weights hold none), so it "
                           "cannot answer class scores; serve it without `classes`, or give weights with heads.*")
        elif classes is not None and len(classes) != outputs:
            raise PGNError(f"{backbone.name} has {outputs} classifier outputs but {len(classes)} class names were "
                           f"given; a {backbone.family} model scores with its own head")
        elif classes is None and outputs:
            classes = getattr(backbone, "source_classes", None) or [str(i) for i in range(outputs)]
        self.classes = list(classes) if classes is not None else None

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> ((B, F) embeddings, (B, C) logits of the model's own head or None)."""
        embedding, own = self.backbone.library_forward(x)
        return embedding, (own if self.head is None and self.classes is not None else None)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) class scores, C = len(classes)."""
        embedding, own = self.backbone.library_forward(x)
        return self.head(embedding.float()) if self.head is not None else own


def served_model(backbone: FrozenModel, classes: Sequence[str] | None = None,
                 template: str | None = None) -> ServedModel:
    """``backbone``'s own forward for the server; ``classes`` turns on class scores (CLIP: zero-shot)."""
    return ServedModel(backbone, classes, template)


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
