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
