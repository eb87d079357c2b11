"""Zeroth-order optimisers: SPSA with gradient correction (BlackVIP's SPSA-GC), in full or in a random subspace.

SPSA estimates a gradient from two losses: for a random direction delta (one entry per parameter),
``ghat = (L(w + c_k delta) - L(w - c_k delta)) / (2 c_k delta)`` (element-wise), averaged over ``q``
directions. BlackVIP (Oh et al., CVPR 2023) adds a Nesterov-style look-ahead, the "gradient correction":
``m_k = beta m_{k-1} + ghat_k`` and the step ``w -= a_k (ghat_k + beta m_k)``, with the decaying gains
``a_k = a / (k + o)^alpha`` and ``c_k = c / k^gamma`` (k counts steps from 1). The names and defaults
below are BlackVIP's, read in github.com/changdaeoh/BlackVIP ``trainers/blackvip.py``
(``SPSA_PARAMS = [o, c, a, alpha, gamma]``, ``MOMS``, ``SP_AVG``, the segmented-uniform perturbation)
and ``configs/trainers/BLACKVIP/vit_b16.yaml`` (``[1.0, 0.01, 0.01, 0.4, 0.1]``, ``MOMS 0.9``,
``SP_AVG 5``).

A random subspace (:class:`HashedSubspace`) makes SPSA's estimate usable for a large prompt network:
the trained parameters become ``w = w0 + s * z[h]``, each parameter tied to one of ``d`` coordinates
``z`` with a random sign (a sparse random projection: the hashing trick), and SPSA searches ``z``. The
variance of SPSA's estimate grows with the dimension it searches, not with the network's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PGNError

__all__ = ["HashedSubspace", "SPSA", "SPSAConfig"]


@dataclass(frozen=True)
class SPSAConfig:
    """SPSA-GC's settings; defaults are BlackVIP's (``trainers/blackvip.py``, ``vit_b16.yaml``).

    ``a``: step gain (``a_k = a / (k + o)^alpha``); ``c``: perturbation size (``c_k = c / k^gamma``), in
    the units of what is searched (normalised pixels for VP's frame and IIP's patches: one 8-bit level is
    about ``1 / (255 std)``, 0.016 for std 0.25, and a smaller perturbation is rounded away in the canvas);
    ``o``: the step gain's stability offset (Spall's A); ``alpha``, ``gamma``: the gains' decay;
    ``q``: directions averaged per step (each costs two calls); ``momentum``: the gradient correction's
    beta; ``gradient_correction``: False is plain SPSA; ``subspace``: 0 searches every trained parameter,
    d > 0 a random d-dimensional subspace of them (:class:`HashedSubspace`).
    """

    a: float = 0.01
    c: float = 0.01
    o: float = 1.0
    alpha: float = 0.4
    gamma: float = 0.1
    q: int = 5
    momentum: float = 0.9
    gradient_correction: bool = True
    subspace: int = 0

    def __post_init__(self):
        if not (self.a > 0 and self.c > 0):
            raise PGNError(f"SPSA's gains must be positive, got `spsa_a` {self.a} and `spsa_c` {self.c}")
        if self.o < 0 or self.alpha < 0 or self.gamma < 0:
            raise PGNError("SPSA's `spsa_o`, `spsa_alpha` and `spsa_gamma` must not be negative")
        if not isinstance(self.q, int) or self.q < 1:
            raise PGNError(f"`spsa_q` is the number of directions per step, at least 1, got {self.q!r}")
        if not 0 <= self.momentum < 1:
            raise PGNError(f"`spsa_momentum` must be in [0, 1), got {self.momentum}")
        if not isinstance(self.subspace, int) or self.subspace < 0:
            raise PGNError(f"`spsa_subspace` is a dimension (0: none), got {self.subspace!r}")

    def gains(self, step: int) -> tuple[float, float]:
        """(a_k, c_k) at ``step`` (1-based)."""
        return self.a / (step + self.o) ** self.alpha, self.c / step ** self.gamma


class SPSA:
    """SPSA-GC over a (n,) float32 vector. ``directions(generator)`` draws q perturbations;
    ``step(w, k, deltas, plus, minus)`` applies the update from their 2q losses and returns the new w.

    The perturbation is BlackVIP's segmented uniform: each entry uniform in [-1, -0.5] or [0.5, 1] with
    equal odds (its inverse, which the estimate divides by, stays bounded)."""

    def __init__(self, config: SPSAConfig, dim: int):
        self.config, self.dim = config, dim
        self.m: torch.Tensor | None = None  # the gradient correction's running sum (None before step 1)

    def directions(self, generator: torch.Generator) -> torch.Tensor:
        """(q, n) perturbations drawn from ``generator`` (its state is the run's: checkpointed)."""
        q, n = self.config.q, self.dim
        size = (torch.rand(q, n, generator=generator) + 1) / 2               # [0.5, 1)
        sign = torch.randint(0, 2, (q, n), generator=generator) * 2 - 1      # -1 or +1
        return size * sign

    def estimate(self, deltas: torch.Tensor, plus: torch.Tensor, minus: torch.Tensor, c_k: float) -> torch.Tensor:
        """(n,) the gradient estimate from (q, n) directions and their (q,) losses on either side."""
        return ((plus - minus)[:, None] / (2 * c_k * deltas)).mean(0)

    def step(self, w: torch.Tensor, k: int, deltas: torch.Tensor, plus: torch.Tensor,
             minus: torch.Tensor) -> torch.Tensor:
        """The updated (n,) vector after step ``k`` (1-based)."""
        a_k, c_k = self.config.gains(k)
        ghat = self.estimate(deltas, plus, minus, c_k)
        if self.config.gradient_correction:
            beta = self.config.momentum
            self.m = ghat.clone() if self.m is None else beta * self.m + ghat
            ghat = ghat + beta * self.m  # the look-ahead
        return w - a_k * ghat

    def state_dict(self) -> dict:
        return {"m": self.m}

    def load_state_dict(self, state: dict) -> None:
        self.m = state.get("m")


class HashedSubspace:
    """A fixed random d-dimensional subspace of n parameters: ``w = w0 + s * z[h]`` (the hashing trick).

    ``h`` (n,) ties each parameter to one of d coordinates, ``s`` (n,) gives it a random sign; both are drawn
    from ``seed`` alone, so a resumed run rebuilds the same subspace. Memory is O(n), not O(n d)."""

    def __init__(self, w0: torch.Tensor, dim: int, seed: int):
        if dim < 1:
            raise PGNError(f"a subspace needs at least one dimension, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.w0 = w0.detach().clone()
        self.dim = dim
        self.bucket = torch.randint(0, dim, (w0.numel(),), generator=g)
        self.sign = (torch.randint(0, 2, (w0.numel(),), generator=g) * 2 - 1).to(w0.dtype)

    def expand(self, z: torch.Tensor) -> torch.Tensor:
        """(d,) subspace coordinates -> (n,) parameters."""
        return self.w0 + self.sign * z[self.bucket]
