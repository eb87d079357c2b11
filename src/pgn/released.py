"""The checkpoints released with the paper (its official code's PGN generators) as pgn adapters."""
from __future__ import annotations

from pathlib import Path

from .adapter_format import AdapterConfig, adapter_config
from .backbones import FrozenBackbone
from .errors import PGNError
from .methods import PGNConfig
from .model import PromptedClassifier

__all__ = ["import_official"]


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
    zero_shot = backbone.has_zero_shot_head
    g = gen.config
    method = PGNConfig(num_prompts=g.num_prompts, library_size=g.library_size, library_space=g.library_space,
                       arch=g.arch, widths=g.widths, mixing=g.mixing, generator_size=g.input_size,
                       library_init_std=g.library_init_std, output_init=g.output_init, output_init_scale=g.output_init_scale,
                       head="zeroshot" if zero_shot else "linear", template=template)
    cfg = adapter_config(backbone, method, class_names, img_size=img_size, dataset=dataset,
                         extra={"imported_from": Path(checkpoint).name, "head_trained": zero_shot})
    model = PromptedClassifier.from_config(cfg, backbone)
    model.prompts.load_state_dict(gen.state_dict(), strict=True)
    return model, cfg
