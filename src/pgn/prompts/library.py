"""The token library: N learned vectors that every prompt token is a mixture of."""
from __future__ import annotations

import torch
from torch import nn


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
    patch into the image: exact, up to uint8 rounding.

    ``forward(coefficients)``: (B, K, N) -> (B, K, D) patch embeddings (no position).
    ``patches(coefficients)``: (B, K, N) -> (B, K, 3, P, P) normalised pixel patches.
    """

    def __init__(self, num_tokens: int, patch_size: int, weight: torch.Tensor, bias: torch.Tensor,
                 mean, std, init_std: float = 1.0):
        super().__init__()
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

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        return coefficients.float() @ self.embeddings()

    def patches(self, coefficients: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bkn,nchw->bkchw", coefficients.float(), self.normalized())
