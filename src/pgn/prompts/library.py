"""The token library: N learned vectors that every prompt token is a mixture of."""
from __future__ import annotations

import torch
from torch import nn

from ..pixels import round8


class TokenLibrary(nn.Module):
    """N x D learned token vectors, initialised N(0, 0.02) as in the paper.

    ``forward(coefficients)`` mixes them: (B, K, N) -> (B, K, D).
    """

    def __init__(self, num_tokens: int, dim: int, init_std: float = 0.02):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_tokens, dim) * init_std)

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        return coefficients.to(self.tokens.dtype) @ self.tokens


class PixelTokenLibrary(nn.Module):
    """N RGB patches (N, 3, P, P), kept inside [0, 1] by a sigmoid: a library that lives in the input.

    Because the patch embedding is linear and softmax coefficients sum to 1, a mixture of
    library patches embeds to the same mixture of their embeddings:
    ``W(sum_i a_i x_i) + b = sum_i a_i (W x_i + b)``. So training mixes N embeddings
    (computed through W once per step, not per image), and deployment pastes the mixed
    patch into the image.

    With ``quantize`` (default) the mixed patch is rounded to 8-bit RGB, as a PNG canvas
    carries it, and the embedding of that rounding residual is added (no gradient: a
    straight-through estimator). The latent model then computes exactly what the deployed
    model receives; the residual costs one (B*K, 3P^2) x (3P^2, D) product per step.

    ``forward(coefficients)``: (B, K, N) -> (B, K, D) patch embeddings (no position).
    ``patches(coefficients)``: (B, K, N) -> (B, K, 3, P, P) normalised pixel patches.
    """

    def __init__(self, num_tokens: int, patch_size: int, weight: torch.Tensor, bias: torch.Tensor,
                 mean, std, init_std: float = 1.0, quantize: bool = True):
        super().__init__()
        self.quantize = quantize
        self.logits = nn.Parameter(torch.randn(num_tokens, 3, patch_size, patch_size) * init_std)
        # The frozen patch embedding, shared with the backbone (not saved with the adapter).
        self.register_buffer("weight", weight.detach(), persistent=False)  # (D, 3, P, P)
        self.register_buffer("bias", bias.detach(), persistent=False)      # (D,)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.logits.shape[0]

    def rgb(self) -> torch.Tensor:
        """(N, 3, P, P) library patches in [0, 1]."""
        return torch.sigmoid(self.logits.float())

    def normalized(self) -> torch.Tensor:
        """(N, 3, P, P) library patches in the backbone's normalised input space."""
        return (self.rgb() - self.mean) / self.std

    def embeddings(self) -> torch.Tensor:
        """(N, D) patch embeddings W x_i + b of the library patches."""
        w = self.weight.float().flatten(1)  # (D, 3P^2)
        return self.normalized().flatten(1) @ w.T + self.bias.float()

    def mixed_rgb(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, K, N) -> (B, K, 3, P, P) mixed patches in [0, 1] (not rounded)."""
        return torch.einsum("bkn,nchw->bkchw", coefficients.float(), self.rgb())

    def _rounding_residual(self, rgb: torch.Tensor) -> torch.Tensor:
        """(..., 3, P, P) RGB -> normalised residual of rounding it to 8 bits (no gradient)."""
        return ((round8(rgb) - rgb) / self.std).detach()

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        tokens = coefficients.float() @ self.embeddings()  # (B, K, D), through W once per step
        if self.quantize:
            residual = self._rounding_residual(self.mixed_rgb(coefficients))  # (B, K, 3, P, P)
            tokens = tokens + residual.flatten(2) @ self.weight.float().flatten(1).T
        return tokens

    def trainable_patches(self, coefficients: torch.Tensor) -> torch.Tensor:
        """:meth:`patches` with a gradient: (B, K, N) -> (B, K, 3, P, P) normalised, rounded to 8 bits
        with ``quantize`` by a straight-through estimator (for models prompted in pixels, e.g. a CNN)."""
        rgb = self.mixed_rgb(coefficients)
        out = (rgb - self.mean) / self.std
        return out + self._rounding_residual(rgb) if self.quantize else out

    def patches(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The normalised patches whose embeddings ``forward`` returns (8-bit exact with ``quantize``)."""
        rgb = self.mixed_rgb(coefficients)
        if self.quantize:
            rgb = round8(rgb)
        return (rgb - self.mean) / self.std
