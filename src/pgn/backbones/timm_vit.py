"""timm ``VisionTransformer`` behind the frozen-backbone interface."""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ..errors import PGNError
from .base import FrozenBackbone, Preprocessing


class TimmViT(FrozenBackbone):
    """Wraps a timm ViT built with ``dynamic_img_size=True`` (any multiple of the patch size).

    ``tokens`` calls timm's own ``patch_embed`` and ``_pos_embed`` so the K = 0 forward
    is bit-identical to ``forward_features``; the positional embedding resampled for a
    non-native grid is cached because the backbone is frozen.
    """

    def __init__(self, vit: VisionTransformer, name: str, description: str = ""):
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise PGNError(f"{name} is a {type(vit).__name__}, not a timm VisionTransformer; pick a ViT model")
        if getattr(vit, "global_pool", "token") not in ("token", "") or vit.cls_token is None:
            raise PGNError(f"{name} has no CLS token; PGN needs a ViT that classifies from its CLS token")
        if vit.reg_token is not None or vit.no_embed_class:
            # Prompt insertion and inversion below assume the classic layout [CLS, patches] + pos.
            raise PGNError(f"{name} uses register tokens or class-free positional embeddings, which pgn does not support yet")
        self.vit = vit
        self.name = name
        self.description = description
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.width = int(vit.embed_dim)
        self.feature_dim = self.width
        self.native_grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        cfg = getattr(vit, "pretrained_cfg", {}) or {}
        self.preprocessing = Preprocessing(
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            input_size=int(vit.patch_embed.img_size[0]),
        )
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.freeze()

    def patch_conv(self):
        return self.vit.patch_embed.proj

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + H*W, D) positional embedding (CLS first) as timm computes it for ``grid``."""
        grid = tuple(grid)
        if grid == self.native_grid:
            return self.vit.pos_embed
        if self.vit.pos_embed.requires_grad:  # being fine-tuned: resample with gradients, never cache
            return resample_abs_pos_embed(self.vit.pos_embed, new_size=grid, old_size=self.native_grid,
                                          num_prefix_tokens=self.vit.num_prefix_tokens)
        pe = self._pos_cache.get(grid)
        if pe is None or pe.device != self.vit.pos_embed.device or pe.dtype != self.vit.pos_embed.dtype:
            with torch.no_grad():
                pe = resample_abs_pos_embed(
                    self.vit.pos_embed, new_size=grid, old_size=self.native_grid,
                    num_prefix_tokens=self.vit.num_prefix_tokens,
                )
            self._pos_cache[grid] = pe
        return pe

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        x = self.vit.patch_embed(images)  # (B, H, W, D) with dynamic_img_size, else (B, H*W, D)
        if x.ndim == 3:
            x = x.reshape(x.shape[0], *self.native_grid, x.shape[-1])
        return x

    def add_position(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        B, H, W, D = grid_tokens.shape
        cls = self.vit.cls_token.expand(B, -1, -1)
        # Same order of operations as timm's _pos_embed: concatenate, then add.
        return torch.cat([cls, grid_tokens.reshape(B, H * W, D)], dim=1) + self.pos_embed_for((H, W))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(tokens)
        x = vit.blocks(x)
        x = vit.norm(x)
        return x[:, 0]

    family = "timm"

    @property
    def classifier_outputs(self) -> int:
        return int(getattr(self.vit, "num_classes", 0) or 0)

    def library_forward(self, images):
        """timm's ``forward_features`` (final norm included), its CLS row, and ``forward_head`` where there is one."""
        feats = self.vit.forward_features(images)
        if not self.classifier_outputs:
            return feats[:, 0], None
        out = self.vit.forward_head(feats)
        return feats[:, 0], (out[:, 0] if out.ndim == 3 else out)  # global_pool='': the CLS row predicts

    def _apply(self, fn, recurse=True):
        self._pos_cache = {}  # device/dtype moves invalidate cached resampled embeddings
        return super()._apply(fn, recurse)
