"""Adapters: build a classifier from its config, save it, load it, import the paper's released checkpoints.

The format itself (config schema, files) is :mod:`pgn.adapter_format`; the classifier and its
``from_config`` / ``from_pretrained`` / ``save_pretrained`` are :class:`pgn.model.PromptedClassifier`.
These functions are the same operations by name, for the trainer, the CLI and the deployment code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .adapter_format import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, AdapterConfig, adapter_config, check_state, read_adapter_config
from .backbones import FrozenBackbone
from .errors import PGNError
from .methods import PGNConfig
from .model import PromptedClassifier

__all__ = ["build_classifier", "adapter_state", "save_adapter", "load_adapter", "import_official",
           # the format, under the names the rest of pgn has always imported them by
           "AdapterConfig", "adapter_config", "read_adapter_config", "check_state", "FORMAT_VERSION", "CONFIG_FILE",
           "WEIGHTS_FILE"]


def build_classifier(cfg: AdapterConfig, backbone: FrozenBackbone, seed: int | None = None) -> PromptedClassifier:
    """A freshly initialised classifier for ``cfg`` on ``backbone`` (see :meth:`PromptedClassifier.from_config`)."""
    return PromptedClassifier.from_config(cfg, backbone, seed=seed)


def adapter_state(model: PromptedClassifier) -> dict[str, torch.Tensor]:
    """The trainable parts (and their buffers, e.g. BatchNorm statistics), never the backbone."""
    return model.adapter_state()


def save_adapter(model: PromptedClassifier, cfg: AdapterConfig, directory: str | Path) -> Path:
    from .adapter_format import write_adapter

    return write_adapter(model.adapter_state(), cfg, directory)


def load_adapter(directory: str | Path, backbone: FrozenBackbone | None = None,
                 map_location: str = "cpu") -> tuple[PromptedClassifier, AdapterConfig]:
    """Rebuild the classifier saved in ``directory`` (on ``backbone``, or the one it names), in eval mode."""
    model = PromptedClassifier.from_pretrained(directory, backbone, map_location=map_location)
    return model, model.config


def import_official(checkpoint: str | Path, backbone: FrozenBackbone, class_names: list[str], dataset: str | None = None,
                    template: str | None = None, img_size: int = 224) -> tuple[PromptedClassifier, AdapterConfig]:
    """A released PGN checkpoint (paper's code) as a pgn adapter on ``backbone``.

    CLIP checkpoints get the zero-shot head (the paper's setting, so the adapter is complete);
    the releases hold no linear head for other backbones, so theirs starts untrained and
    ``cfg.extra["head_trained"]`` says so.
    """
    from .prompts import load_official

    gen = load_official(checkpoint, input_size=img_size)
    width = gen.library.tokens.shape[1]
    if width != backbone.width:
        raise PGNError(f"{checkpoint} holds prompts of width {width}, but {backbone.name} has width {backbone.width}; "
                       "pick the backbone it was trained for")
    zero_shot = hasattr(backbone, "zero_shot_head")
    g = gen.config
    method = PGNConfig(num_prompts=g.num_prompts, library_size=g.library_size, library_space=g.library_space,
                       arch=g.arch, widths=g.widths, mixing=g.mixing, generator_size=g.input_size,
                       library_init_std=g.library_init_std, output_init=g.output_init, output_init_scale=g.output_init_scale,
                       head="zeroshot" if zero_shot else "linear", template=template)
    cfg = adapter_config(backbone, method, class_names, img_size=img_size, dataset=dataset,
                         extra={"imported_from": Path(checkpoint).name, "head_trained": zero_shot})
    model = build_classifier(cfg, backbone)
    model.prompts.load_state_dict(gen.state_dict(), strict=True)
    return model, cfg
