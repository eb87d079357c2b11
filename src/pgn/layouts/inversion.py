"""Prompt inversion: turn patch-embedding tokens back into pixel patches.

A ViT's patch embedding is linear: for a flattened normalised patch x (3P^2 values),
``token = W x + b``. To make an unmodified model produce a wanted token t we solve
``W x = t - b``. With 3P^2 >= D and W of full row rank the solutions form an affine set
of dimension 3P^2 - D; the minimum-norm one is ``W^+ (t - b)``. The rest of that set (W's
null space) is free, and we use it to bring x inside the valid pixel box (RGB in [0, 1]
after de-normalising) by alternating projections between the affine set and the box,
which converge to a point of the intersection whenever it is not empty. What remains
is reported as a residual: ``|W clamp(x) + b - t|``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Inversion:
    """Result of :func:`invert_tokens` for targets of shape (..., D)."""

    patches: torch.Tensor        # (..., 3, P, P) normalised pixels, inside the box
    residual: torch.Tensor       # (...,) max |W x + b - t| per token after clamping to the box
    min_norm_in_box: torch.Tensor  # (...,) bool: the minimum-norm solution was already valid
    rank_deficient: bool         # 3P^2 < D (e.g. ViT-L/14): only a least-squares fit exists


def pixel_box(mean, std, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds (3,) of normalised pixels whose RGB value lies in [0, 1]."""
    mean = torch.tensor(mean, dtype=dtype)
    std = torch.tensor(std, dtype=dtype)
    return (0 - mean) / std, (1 - mean) / std


class PatchInverter:
    """Precomputed pseudo-inverse of a patch embedding, reused for every batch of tokens."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean, std):
        self.D, _, self.P, _ = weight.shape
        self.W = weight.detach().double().flatten(1)  # (D, n), n = 3P^2
        self.b = bias.detach().double()
        self.W_pinv = torch.linalg.pinv(self.W)      # (n, D)
        lo, hi = pixel_box(mean, std)
        self.lo = lo.repeat_interleave(self.P * self.P)  # (n,), channel-major like the flattened conv weight
        self.hi = hi.repeat_interleave(self.P * self.P)
        self.rank_deficient = self.W.shape[1] < self.D

    def __call__(self, targets: torch.Tensor, iters: int = 500, tol: float = 1e-7) -> Inversion:
        shape = targets.shape[:-1]
        y = targets.detach().double().reshape(-1, self.D) - self.b  # (M, D)
        x = y @ self.W_pinv.T                                       # minimum-norm solutions (M, n)
        lo, hi = self.lo.to(x), self.hi.to(x)
        in_box = ((x >= lo - tol) & (x <= hi + tol)).all(dim=1)
        todo = ~in_box
        if todo.any() and not self.rank_deficient:
            z, yt = x[todo], y[todo]
            for _ in range(iters):
                z = z.clamp(lo, hi)
                z = z - (z @ self.W.T - yt) @ self.W_pinv.T        # back onto the affine set
                if ((z >= lo - tol) & (z <= hi + tol)).all():
                    break
            x[todo] = z
        x = x.clamp(lo, hi)
        residual = (x @ self.W.T - y).abs().amax(dim=1)
        return Inversion(
            patches=x.to(targets.dtype).reshape(*shape, 3, self.P, self.P),
            residual=residual.to(targets.dtype).reshape(shape),
            min_norm_in_box=in_box.reshape(shape),
            rank_deficient=self.rank_deficient,
        )


def invert_tokens(targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean, std,
                  iters: int = 500) -> Inversion:
    """Pixel patches (..., 3, P, P) that the patch embedding (``weight`` (D,3,P,P), ``bias`` (D,))
    maps onto ``targets`` (..., D), kept inside the valid pixel box. See :class:`PatchInverter`."""
    return PatchInverter(weight, bias, mean, std)(targets, iters=iters)
