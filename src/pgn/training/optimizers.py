"""The optimiser of a run: one parameter group per trained part, each with its own rate.

The parts are named as they are logged: a PGN's prompts split into ``generator`` and ``library``;
``head`` and (fine-tuning only) ``backbone``; IIP's vectors and VP's pixels are ``prompts``.
Everything but the head and the backbone is a *prompt group*. ``TrainConfig.prompt_optimizer``
may give the prompt groups another algorithm than the head's (AdamW for the prompts, SGD for the
head: an ablation, not the paper's recipe), in which case two optimisers step as one.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PGNError
from ..model import PromptedClassifier
from ..prompts import PromptGenerator
from .config import TrainConfig

NOT_PROMPTS = ("head", "backbone")


def param_groups(model: PromptedClassifier) -> dict[str, nn.Module]:
    """The trained parts by name, in the model's order: a PGN's prompts split into generator and library."""
    parts = {}
    for name, module in model.trainable_modules().items():
        if name == "prompts" and isinstance(module, PromptGenerator):
            parts["generator"], parts["library"] = module.net, module.library
        else:
            parts[name] = module
    return parts


class PerGroupOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped, zeroed, saved and restored as one.

    ``param_groups`` holds the sub-optimisers' own group dicts (in the model's order), so a scheduler
    or a gradient clip that reads or sets a group's ``lr`` reaches the optimiser that uses it.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], order: list[dict]):
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self.optimizers = optimizers
        self.param_groups = order  # the same dicts the sub-optimisers step with

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise PGNError("PerGroupOptimizer does not take a closure")
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            raise ValueError(f"expected the states of {len(self.optimizers)} optimisers (prompts and head apart)")
        names = [g["name"] for g in self.param_groups]
        for o, s in zip(self.optimizers, saved):
            o.load_state_dict(s)  # replaces the optimiser's group dicts with new ones: point at those
        by_name = {g["name"]: g for o in self.optimizers for g in o.param_groups}
        self.param_groups = [by_name[n] for n in names]


def _make(algorithm: str, groups: list[dict], base: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    if algorithm == "sgd":
        return torch.optim.SGD(groups, lr=base, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=base, weight_decay=cfg.weight_decay)


def build_optimizer(model: PromptedClassifier, cfg: TrainConfig, scale: int = 1) -> torch.optim.Optimizer:
    """SGD (momentum, the paper) or AdamW over every trained part; ``scale`` multiplies every rate
    (data-parallel linear scaling). The head's rate is ``head_lr``, the backbone's ``backbone_lr``,
    both defaulting to ``lr`` as in the paper."""
    base = cfg.lr * scale if scale != 1 else cfg.lr
    lrs = {name: (lr * scale if scale != 1 else lr) for name, lr in
           (("head", cfg.head_lr or cfg.lr), ("backbone", cfg.backbone_lr or cfg.lr))}
    groups = []
    for name, module in param_groups(model).items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lrs.get(name, base), "name": name})
    if not groups:
        raise PGNError("nothing to train: this method has no trainable parameters (zero-shot needs only `pgn eval`)")
    prompts_with = cfg.prompt_optimizer or cfg.optimizer
    prompt_groups = [g for g in groups if g["name"] not in NOT_PROMPTS]
    others = [g for g in groups if g["name"] in NOT_PROMPTS]
    if not others:  # prompts only (a frozen head): the prompts' algorithm
        return _make(prompts_with, groups, base, cfg)
    if prompts_with == cfg.optimizer or not prompt_groups:
        return _make(cfg.optimizer, groups, base, cfg)
    return PerGroupOptimizer([_make(cfg.optimizer, others, base, cfg), _make(prompts_with, prompt_groups, base, cfg)],
                             order=groups)
