"""Learning-rate schedule: linear warm-up, then cosine decay, stepped every iteration."""
from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  final_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """lr(t) = base * t/warmup during warm-up, then cosine from base to base * final_ratio.

    The paper decays to lr/100 (``final_ratio=0.01``).
    """
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
