"""OpenAI CLIP ViTs through open_clip, behind the frozen-backbone interface.

The split follows open_clip's ``VisionTransformer`` (``_embeds`` then ``forward``)::

    embed_patches   conv1 (no bias)                                  -> (B, h, w, D)
    add_position    [class_embedding, patches] + positional_embedding -> (B, 1 + h*w, D)
    <prompts are appended here, without positional embedding>
    encode          patch_dropout (eval: identity) -> ln_pre -> transformer -> ln_post -> CLS -> @ proj

so with no prompts ``encode(tokens(x))`` is bit-identical to ``model.encode_image(x)``. The text
tower stays inside the object (frozen) for :meth:`OpenCLIPViT.zero_shot_head`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import PGNError
from ..files import atomic_path
from ..heads import ClipZeroShotHead
from ..paths import pgn_home
from . import hub
from .base import FrozenBackbone, Preprocessing

# pgn name -> (open_clip architecture, Hugging Face repo open_clip fetches the OpenAI weights from)
OPENCLIP_MODELS: dict[str, tuple[str, str]] = {
    "clip-vit-b32": ("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.openai"),
    "clip-vit-b16": ("ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.openai"),
    "clip-vit-l14": ("ViT-L-14-quickgelu", "timm/vit_large_patch14_clip_224.openai"),
}
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
DEFAULT_TEMPLATE = "This is a photo of a {}."
_TEXT_BATCH = 256


def native_grid_error(name: str, grid: tuple[int, int], patch_size: int) -> PGNError:
    g, size = grid[0], grid[0] * patch_size
    return PGNError(f"{name} only accepts its native {g}x{g} grid ({size} px); use `img_size={size}` or `layout=frame`")


def fill_template(template: str, class_name: str) -> str:
    """``template`` with the class name in its ``{}`` (or ``{name}`` / ``{n}`` / ``{c}``) slot."""
    if "{}" in template:
        return template.replace("{}", class_name)
    try:
        text = template.format(name=class_name, n=class_name, c=class_name)
    except (KeyError, IndexError, ValueError) as e:
        raise PGNError(f"prompt template {template!r} is not usable ({e}); write it with one {{}} for the class name") from e
    if text == template:
        raise PGNError(f"prompt template {template!r} has no slot for the class name; write it with one {{}}")
    return text


class OpenCLIPViT(FrozenBackbone):
    """A frozen open_clip ``CLIP`` model whose image tower is a ``VisionTransformer``.

    ``model`` is the whole CLIP model (image and text towers). ``weights_id`` names the weights
    for the text-feature cache; without it a fingerprint of the text tower is used (random-init
    test models). ``arch`` picks open_clip's tokenizer; ``tokenizer`` overrides it.
    """

    has_zero_shot_head = True  # its text tower scores class names (zero_shot_head)

    def __init__(self, model: nn.Module, name: str, description: str = "", *, arch: str | None = None,
                 weights_id: str | None = None, tokenizer: Callable | None = None):
        super().__init__()
        from open_clip.transformer import VisionTransformer

        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer) or not callable(getattr(model, "encode_text", None)):
            raise PGNError(f"{name} is not an open_clip CLIP model with a ViT image tower "
                           f"(image tower: {type(visual).__name__}); pick a ViT CLIP such as ViT-B-32-quickgelu")
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise PGNError(f"{name} pools its image tower with {visual.pool_type!r}/attention pooling; "
                           "PGN needs a CLIP ViT that reads its CLS token (pool_type 'tok')")
        self.clip = model  # the only registered reference: image *and* text tower
        self.name = name
        self.description = description
        self.arch = arch
        self.weights_id = weights_id
        self._tokenizer = tokenizer
        self.patch_size = int(visual.patch_size[0])
        self.width = int(visual.conv1.out_channels)
        self.feature_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.preprocessing = Preprocessing(
            mean=tuple(float(m) for m in cfg.get("mean", OPENAI_DATASET_MEAN)),
            std=tuple(float(s) for s in cfg.get("std", OPENAI_DATASET_STD)),
            input_size=int(visual.image_size[0]),
        )
        self.freeze()

    @property
    def visual(self) -> nn.Module:
        """open_clip's ``VisionTransformer`` (the image tower)."""
        return self.clip.visual

    # --- patch embedding as a linear map ---
    family = "open_clip"

    @property
    def served_size(self):
        size = self.visual.image_size
        return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))

    def library_forward(self, images):
        """open_clip's ``encode_image``; CLIP's class scores come from its text tower (:meth:`zero_shot_head`)."""
        return self.clip.encode_image(images), None

    def finetune_parameters(self):
        return self.visual.parameters()  # the text tower stays frozen: it only builds the zero-shot head

    def patch_conv(self) -> nn.Module:
        return self.visual.conv1

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + H*W, D) positional embedding (CLS first); only the native grid exists."""
        if tuple(grid) != self.native_grid:
            raise native_grid_error(self.name, self.native_grid, self.patch_size)
        return self.visual.positional_embedding.unsqueeze(0)

    # --- split forward ---
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        x = self.visual.conv1(images)  # (B, D, h, w)
        return x.permute(0, 2, 3, 1)  # (B, h, w, D)

    def add_position(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        B, H, W, D = grid_tokens.shape
        if (H, W) != self.native_grid:
            raise native_grid_error(self.name, self.native_grid, self.patch_size)
        v = self.visual
        x = grid_tokens.reshape(B, H * W, D)
        # As open_clip's _embeds: concatenate the class embedding, then add the positional embedding.
        cls = v.class_embedding.view(1, 1, -1).expand(B, -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        return x + v.positional_embedding.to(x.dtype)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.patch_dropout(tokens)  # identity in eval (the backbone never trains)
        x = v.ln_pre(x)
        x = v.transformer(x)  # open_clip's Transformer handles batch_first itself; the image tower uses no mask
        if v.final_ln_after_pool:
            pooled = v.ln_post(x[:, 0])
        else:
            pooled = v.ln_post(x)[:, 0]
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled

    # --- zero-shot head from the frozen text tower ---
    def tokenizer(self) -> Callable:
        if self._tokenizer is None:
            import open_clip

            if self.arch is not None:
                self._tokenizer = open_clip.get_tokenizer(self.arch)
            else:
                from open_clip.tokenizer import SimpleTokenizer

                self._tokenizer = SimpleTokenizer(context_length=int(getattr(self.clip, "context_length", 77)))
        return self._tokenizer

    def weights_identity(self) -> str:
        """What the weights are, for cache keys: ``weights_id`` or a fingerprint of the text tower."""
        if self.weights_id is not None:
            return self.weights_id
        h = hashlib.sha256()
        with torch.no_grad():
            for k, p in self.clip.named_parameters():
                if k.startswith("visual."):
                    continue
                flat = p.detach().reshape(-1)
                sample = torch.cat([flat[:4096], flat[-4096:]]).float().cpu().contiguous()
                h.update(f"{k}:{tuple(p.shape)}:".encode())
                h.update(sample.numpy().tobytes())
        return f"fingerprint:{h.hexdigest()}"

    def text_feature_cache_path(self, class_names: Sequence[str], template: str) -> Path:
        key = json.dumps({"backbone": self.name, "weights": self.weights_identity(),
                          "classes": list(class_names), "template": template}, sort_keys=True)
        return pgn_home() / "text_features" / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"

    def text_features(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
        """(C, F) unnormalised text features, one prompt per class; computed once, then read from disk."""
        from safetensors.torch import load_file, save_file

        class_names = [str(c) for c in class_names]
        if not class_names:
            raise PGNError("the zero-shot head needs at least one class name")
        texts = [fill_template(template, c) for c in class_names]
        path = self.text_feature_cache_path(class_names, template)
        device = self.clip.logit_scale.device
        if path.is_file():
            try:
                feats = load_file(str(path))["text_features"]
                if feats.shape == (len(class_names), self.feature_dim):
                    return feats.to(device)
            except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed and rewritten
                logging.getLogger(__name__).warning("recomputing unreadable text-feature cache %s: %s", path, e)
        tok = self.tokenizer()
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), _TEXT_BATCH):
                ids = tok(texts[i:i + _TEXT_BATCH]).to(device)
                chunks.append(self.clip.encode_text(ids).float().cpu())
        feats = torch.cat(chunks).clone()  # clone outside inference mode: usable in autograd graphs later
        with atomic_path(path) as tmp:
            save_file({"text_features": feats.contiguous()}, str(tmp),
                      metadata={"backbone": self.name, "template": template, "num_classes": str(len(texts))})
        return feats.to(device)

    def zero_shot_head(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> ClipZeroShotHead:
        """CLIP's zero-shot classifier: ``logit_scale.exp() * cos(image, text(template.format(class)))``."""
        feats = self.text_features(class_names, template)
        bias = getattr(self.clip, "logit_bias", None)
        return ClipZeroShotHead(feats, self.clip.logit_scale.detach(), class_names=list(class_names),
                                logit_bias=None if bias is None else bias.detach())


def create_openclip(name: str, weights: str | None = None) -> OpenCLIPViT:
    """``clip-vit-b32`` / ``clip-vit-b16`` / ``clip-vit-l14`` with the OpenAI weights (QuickGELU)."""
    if name not in OPENCLIP_MODELS:
        raise PGNError(f"unknown CLIP backbone {name!r}; choose one of: {', '.join(OPENCLIP_MODELS)}")
    arch, repo = OPENCLIP_MODELS[name]
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PGNError(f"weights file {weights} does not exist; pass an existing open_clip {arch} "
                           "checkpoint (.safetensors or .bin) as `weights=PATH`")
        pretrained, weights_id, source = str(path), hub.file_identity(path), str(path)
    else:
        cached = hub.hf_cached_file(repo, _HF_WEIGHT_FILES)
        if cached:
            pretrained, weights_id, source = cached, "openai", f"hf-hub:{repo} (cached)"
        elif not hub.reachable("huggingface.co"):
            raise PGNError(
                f"{name} needs the OpenAI CLIP weights (open_clip {arch}, pretrained='openai'), but the Hugging Face "
                f"hub is not reachable; download {_HF_WEIGHT_FILES[0]} from https://huggingface.co/{repo} "
                "elsewhere and pass `weights=PATH`")
        else:
            pretrained, weights_id, source = "openai", "openai", f"hf-hub:{repo}"
    import open_clip

    try:
        model = open_clip.create_model(arch, pretrained=pretrained)
    except Exception as e:  # noqa: BLE001 - a foreign, corrupt or truncated weights file, whatever its format
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PGNError(f"could not load weights for {name} (open_clip {arch}): {first[:300]}; "
                       f"pass `weights=PATH` naming an open_clip checkpoint such as {repo}/{_HF_WEIGHT_FILES[0]}") from e
    return OpenCLIPViT(model, name=name, arch=arch, weights_id=weights_id,
                       description=f"OpenAI CLIP {arch} via open_clip, weights {source}")
