"""Layouts: where the K prompt tokens sit in what the frozen model receives.

``append``  the paper's latent mode: K extra tokens after the positional embedding, with no
            position of their own. Needs a modified forward (white-box deployment only).
``extend``  the canvas is the image plus ceil(K / w) extra rows of prompt patches below it; an
            unmodified model embeds the whole canvas with its own positional embeddings for that
            grid (timm ``dynamic_img_size``).
``frame``   the canvas keeps the image's size; the image is resized into the inner cells and the
            prompt patches fill the border ring; zero extra tokens.
``overlay`` the canvas is the image at its full size; the prompt patches take the place of the
            image in K cells of its border ring (spread as in ``frame``); zero extra tokens, and the
            image is never resized (a pixel-only model sees every one of its pixels but the K cells).

For ``extend`` and ``frame``, :meth:`CanvasLayout.latent_tokens` builds exactly the token sequence
the unmodified model computes from :meth:`CanvasLayout.compose`'s canvas: image tokens at their
canvas cells with the canvas's positional embeddings, prompt tokens (patch embeddings ``W x + b``)
at their cells, and a constant fill patch (the uint8 colour nearest the normalisation mean) in
unused cells. Training in latent space therefore optimises what will be deployed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import PGNError
from ..pixels import round8

LAYOUTS = ("append", "extend", "frame", "overlay")


class AppendLayout:
    """The paper's latent mode. ``latent_tokens``: images (B,3,S,S), prompts (B,K,D) -> (B, 1+g*g+K, D)."""

    name = "append"

    def extra_tokens(self, grid: tuple[int, int], num_prompts: int) -> int:
        return num_prompts

    def latent_tokens(self, backbone, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        tokens = backbone.tokens(images)
        return torch.cat([tokens, prompts.to(tokens.dtype)], dim=1)


class CanvasLayout:
    """A layout that lives in the input image; subclasses choose the canvas and the cells."""

    name = "canvas"

    def __init__(self, patch_size: int, mean, std):
        self.patch_size = patch_size
        mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.mean, self.std = mean_t, std_t
        # Unused prompt cells hold the representable uint8 colour nearest the mean, so a PNG canvas
        # reproduces them exactly; in normalised space that is almost, not exactly, zero.
        fill_rgb = round8(mean_t)
        self.fill = ((fill_rgb - mean_t) / std_t).expand(3, patch_size, patch_size).contiguous()  # (3, P, P)

    # --- geometry, in cells; subclasses implement ---
    def canvas_grid(self, grid: tuple[int, int], num_prompts: int) -> tuple[int, int]:
        raise NotImplementedError

    def image_box(self, grid: tuple[int, int]) -> tuple[int, int, int, int]:
        """(row, col, height, width) of the image inside the canvas, in cells."""
        raise NotImplementedError

    def prompt_cells(self, grid: tuple[int, int], num_prompts: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def fill_cells(self, grid: tuple[int, int], num_prompts: int) -> list[tuple[int, int]]:
        hc, wc = self.canvas_grid(grid, num_prompts)
        r0, c0, h, w = self.image_box(grid)
        used = set(self.prompt_cells(grid, num_prompts))
        return [(r, c) for r in range(hc) for c in range(wc)
                if not (r0 <= r < r0 + h and c0 <= c < c0 + w) and (r, c) not in used]

    def extra_tokens(self, grid: tuple[int, int], num_prompts: int) -> int:
        hc, wc = self.canvas_grid(grid, num_prompts)
        return hc * wc - grid[0] * grid[1]

    def _grid_of(self, images: torch.Tensor) -> tuple[int, int]:
        H, W = images.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise PGNError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        return H // self.patch_size, W // self.patch_size

    def _placed_image(self, images: torch.Tensor, grid) -> torch.Tensor:
        _, _, h, w = self.image_box(grid)
        size = (h * self.patch_size, w * self.patch_size)
        if tuple(images.shape[-2:]) == size:
            return images
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        # Round the resized image to 8-bit RGB, so training sees exactly what a PNG canvas carries.
        m, s = self.mean.to(small), self.std.to(small)
        rgb = round8((small * s + m).clamp(0, 1))
        return (rgb - m) / s

    # --- the two views of one canvas ---
    def latent_tokens(self, backbone, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """images (B,3,S,S), prompts (B,K,D) patch embeddings -> (B, 1 + Hc*Wc, D) canvas tokens."""
        grid = self._grid_of(images)
        B, K, D = prompts.shape
        hc, wc = self.canvas_grid(grid, K)
        r0, c0, h, w = self.image_box(grid)
        image_tokens = backbone.embed_patches(self._placed_image(images, grid))  # (B, h, w, D)
        fill_token = backbone.embed_patches(self.fill.to(images)[None])[0, 0, 0]  # (D,)
        canvas = fill_token.to(image_tokens.dtype).expand(B, hc, wc, D).clone()
        canvas[:, r0:r0 + h, c0:c0 + w] = image_tokens
        rows, cols = zip(*self.prompt_cells(grid, K))
        canvas[:, list(rows), list(cols)] = prompts.to(canvas.dtype)
        return backbone.add_position(canvas)

    def compose(self, images: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """images (B,3,S,S) and prompt patches (B,K,3,P,P), both normalised -> canvas (B,3,Hc*P,Wc*P)."""
        grid = self._grid_of(images)
        B, K = patches.shape[:2]
        P = self.patch_size
        hc, wc = self.canvas_grid(grid, K)
        r0, c0, h, w = self.image_box(grid)
        cells = self.fill.to(images).expand(B, hc, wc, 3, P, P).clone()  # (B, Hc, Wc, 3, P, P)
        placed = self._placed_image(images, grid)                         # (B, 3, h*P, w*P)
        cells[:, r0:r0 + h, c0:c0 + w] = placed.reshape(B, 3, h, P, w, P).permute(0, 2, 4, 1, 3, 5)
        rows, cols = zip(*self.prompt_cells(grid, K))
        cells[:, list(rows), list(cols)] = patches.to(cells.dtype)
        return cells.permute(0, 3, 1, 4, 2, 5).reshape(B, 3, hc * P, wc * P)


class ExtendLayout(CanvasLayout):
    """Image on top, ceil(K / w) rows of prompt patches below, filled row by row."""

    name = "extend"

    def canvas_grid(self, grid, num_prompts):
        return grid[0] + math.ceil(num_prompts / grid[1]), grid[1]

    def image_box(self, grid):
        return 0, 0, grid[0], grid[1]

    def prompt_cells(self, grid, num_prompts):
        return [(grid[0] + k // grid[1], k % grid[1]) for k in range(num_prompts)]


class FrameLayout(CanvasLayout):
    """Canvas of the image's own size; image resized into the inner cells; prompts on the border ring.

    Ring cells are taken clockwise from the top-left corner and spread evenly when K is
    smaller than the ring.
    """

    name = "frame"

    def canvas_grid(self, grid, num_prompts):
        return grid

    def image_box(self, grid):
        if min(grid) < 3:
            raise PGNError(f"a frame needs a grid of at least 3x3 cells, got {grid[0]}x{grid[1]}; raise `img_size`")
        return 1, 1, grid[0] - 2, grid[1] - 2

    @staticmethod
    def ring(grid) -> list[tuple[int, int]]:
        h, w = grid
        top = [(0, c) for c in range(w)]
        right = [(r, w - 1) for r in range(1, h)]
        bottom = [(h - 1, c) for c in range(w - 2, -1, -1)]
        left = [(r, 0) for r in range(h - 2, 0, -1)]
        return top + right + bottom + left

    def prompt_cells(self, grid, num_prompts):
        ring = self.ring(grid)
        if num_prompts > len(ring):
            raise PGNError(f"a frame on a {grid[0]}x{grid[1]} grid has {len(ring)} border cells, fewer than "
                           f"K={num_prompts} prompts; lower `num_prompts` or raise `img_size`")
        return [ring[(k * len(ring)) // num_prompts] for k in range(num_prompts)]


class OverlayLayout(FrameLayout):
    """Canvas = the image at its own size; the K prompt patches replace it in K cells of its border ring.

    The frame's ring cells, with the image under them instead of the frame's shrunken image inside
    them: :meth:`CanvasLayout.compose` and :meth:`CanvasLayout.latent_tokens` place the image in every
    cell first and the prompts over it, so both views of the canvas agree by construction.
    """

    name = "overlay"

    def image_box(self, grid):
        super().image_box(grid)  # the same size check as the frame's
        return 0, 0, grid[0], grid[1]


def make_layout(name: str, backbone=None, patch_size: int | None = None, mean=None, std=None):
    """A layout by name; canvas layouts need the patch size and normalisation (from ``backbone`` or given)."""
    if name == "append":
        return AppendLayout()
    if name not in LAYOUTS:
        raise PGNError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    if backbone is not None:
        patch_size, mean, std = backbone.patch_size, backbone.preprocessing.mean, backbone.preprocessing.std
    cls = {"extend": ExtendLayout, "frame": FrameLayout, "overlay": OverlayLayout}[name]
    return cls(patch_size, mean, std)
