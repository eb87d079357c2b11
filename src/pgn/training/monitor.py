"""What the optimiser does to each trained part, per epoch: gradient norms, update sizes, mixture sharpness.

These are the numbers that explain a run that does not learn: a clipped global norm that
starves the generator, a head whose gradient dominates, mixtures that stay uniform. They go
into every row of ``metrics.jsonl`` and ``pgn analyze`` plots them.
"""
from __future__ import annotations

import math

import torch


def mixture_sharpness(coeffs: torch.Tensor) -> dict:
    """How far the softmax mixtures are from uniform: (..., N) coefficients.

    ``entropy``: mean entropy of a prompt's mixture divided by log N (1 = uniform over the
    library, 0 = a single token); ``max_coefficient``: mean of each mixture's largest weight
    (1/N when uniform).
    """
    c = coeffs.double()
    entropy = -(c * c.clamp_min(1e-12).log()).sum(-1) / math.log(c.shape[-1])
    return {"entropy": float(entropy.mean()), "max_coefficient": float(c.max(-1).values.mean())}


class OptimizerMonitor:
    """Accumulates, per parameter group and over one epoch, the mean of

    * ``grad_norm``: the L2 norm of the group's gradient (before any clipping);
    * ``update``: ``||theta_after - theta_before|| / max(||theta_before||, ||theta_after||)``, the relative
      size of the step the optimiser really took (after clipping, momentum and the learning rate; the
      larger norm keeps a zero-initialised start finite);

    plus, for a prompt generator, the mean normalised mixture entropy and largest coefficient
    of the training batches, and with clipping the mean factor the clip scaled gradients by.

    The update needs a copy of the group's parameters before the step. For the prompts and heads
    that is negligible next to the frozen ViT; a group larger than ``LARGE`` elements (fine-tuning's
    whole backbone) is copied and measured on every ``LARGE_EVERY``-th step only, and its mean is
    over those steps.
    """

    LARGE = 2_000_000
    LARGE_EVERY = 16

    def __init__(self, optimizer: torch.optim.Optimizer, generator: torch.nn.Module | None = None):
        self.optimizer = optimizer
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self._before: list[list[torch.Tensor] | None] = []

    def _groups(self):
        return [(g.get("name", str(i)), [p for p in g["params"] if p.requires_grad])
                for i, g in enumerate(self.optimizer.param_groups)]

    def _add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def _measured(self, params) -> bool:
        """Whether this step's update of a group is measured (always, unless the group is large)."""
        return sum(p.numel() for p in params) <= self.LARGE or self.steps % self.LARGE_EVERY == 0

    @torch.no_grad()
    def before_step(self) -> None:
        """After ``backward``, before clipping: record gradient norms, keep the parameters to diff against."""
        self._before = []
        for name, params in self._groups():
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            self._add(f"grad_norm/{name}", float(torch.stack(grads).norm()) if grads else 0.0)
            self._before.append([p.detach().clone() for p in params] if self._measured(params) else None)
        coeffs = getattr(self.generator, "last_coefficients", None)
        if coeffs is not None:
            for key, value in mixture_sharpness(coeffs).items():
                self._add(f"mixture_{key}", value)

    def clipped(self, total_norm: torch.Tensor, max_norm: float) -> None:
        """The factor ``clip_grad_norm_`` scaled this step's gradients by (1 = untouched)."""
        self._add("clip_factor", min(1.0, max_norm / (float(total_norm) + 1e-6)))

    @torch.no_grad()
    def after_step(self) -> None:
        for (name, params), before in zip(self._groups(), self._before):
            if before is None:  # a large group between its measured steps
                continue
            delta = sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(params, before))
            size = max(sum(float(b.float().pow(2).sum()) for b in before),
                       sum(float(p.detach().float().pow(2).sum()) for p in params))
            self._add(f"update/{name}", math.sqrt(delta) / (math.sqrt(size) + 1e-12))
        self._before = []
        self.steps += 1

    def epoch_summary(self) -> dict:
        """Means over the epoch's steps (as flat ``metrics.jsonl`` keys), then start a new epoch."""
        out = {k: v / max(self.counts[k], 1) for k, v in sorted(self.sums.items())}
        self.reset()
        return out
