"""Adaptation methods: one config dataclass and one builder each, registered in one place.

A method is what gets trained on top of the frozen backbone. Its config is what an adapter saves
(``adapter_config.json``'s ``method_config``, tagged by ``method``), in the shape of PEFT's
per-method configs::

    pgn.create_model(backbone, PGNConfig(library_size=256), classes)   # typed
    pgn.create_model(backbone, "pgn", classes, library_size=256)       # by name, same config

Adding a method is writing a frozen dataclass with a ``method`` class variable and a builder
``(config, embedding, img_size) -> MethodParts``, and registering both. ``embedding`` is the model's
:class:`~pgn.backbones.PatchEmbedding` (cells, normalisation, W and b): all a method may know of the
model, so that an input adapter builds with no backbone (:mod:`pgn.input_adapter`)::

    @register_method(MyConfig)
    def build_mine(cfg, embedding, img_size):
        return MethodParts(input_prompt=MyPrompt(img_size))

Defaults are stated once: K=16 prompts and a library of N=128 tokens (the paper's, from
:class:`~pgn.prompts.GeneratorConfig`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Mapping, Union

from torch import nn

from .errors import PGNError
from .heads import HEAD_NORMS
from .layouts import LAYOUTS
from .prompts import GeneratorConfig, InputIndependentPixelPrompts, InputIndependentPrompts, PaddingPrompt, PromptGenerator

__all__ = ["PGNConfig", "IIPConfig", "VPConfig", "LinearConfig", "FinetuneConfig", "ZeroShotConfig",
           "MethodConfig", "MethodParts", "Method", "register_method", "list_methods", "get_method",
           "method_config_of", "method_options", "method_config_from_dict", "method_config_dict", "NUM_PROMPTS", "LIBRARY_SIZE",
           "LAYOUTS", "HEADS", "HEAD_NORMS"]

NUM_PROMPTS = GeneratorConfig.num_prompts    # K = 16, the paper's
LIBRARY_SIZE = GeneratorConfig.library_size  # N = 128, the paper's (256 for its CLIP runs: pgn.presets "paper")
# LAYOUTS: where prompt tokens sit, named once in pgn.layouts (re-exported here for method configs)
# A trained linear head; CLIP's frozen text tower; or a frozen classifier's own scores read through a
# label mapping (pgn.heads.LabelMapHead: the first C classes, or the frequency mapping FLM).
HEADS = ("linear", "zeroshot", "labelmap-first", "labelmap-flm")
FROZEN_HEADS = ("zeroshot", "labelmap-first", "labelmap-flm")  # a method trained nothing with these: zeroshot


def _choice(cfg, name: str, choices) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise PGNError(f"{cfg.method}: unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _check_head(cfg) -> None:
    _choice(cfg, "head", HEADS)
    _choice(cfg, "head_norm", HEAD_NORMS)


def _check_prompts(cfg) -> None:
    if not isinstance(cfg.num_prompts, int) or cfg.num_prompts < 1:
        raise PGNError(f"{cfg.method}: num_prompts must be >= 1, got {cfg.num_prompts}")
    _choice(cfg, "layout", LAYOUTS)


@dataclass(frozen=True)
class PGNConfig:
    """Prompt Generation Network: a CNN mixes K prompts from a library of N tokens, per image."""

    method: ClassVar[str] = "pgn"
    num_prompts: int = NUM_PROMPTS
    library_size: int = LIBRARY_SIZE
    library_space: str = "latent"       # "pixel": RGB patches, exact input-space deployment
    layout: str = "append"              # "extend" / "frame" / "overlay": prompts as image patches
    shared_frame: int = 0               # px of a learned frame shared by every image (bounded VP's), 0: none
    arch: str = "resnet10"
    widths: tuple[int, ...] = (16, 32, 64, 128)
    mixing: str = "softmax"
    generator_size: int | None = None   # the generator's input resolution (None: the model's img_size)
    library_init_std: float | None = None
    output_init: str = "default"
    output_init_scale: float = 1.0      # the generator's last layer at init x this (mixture sharpness at step 0)
    head: str = "linear"                # or "zeroshot" (CLIP's frozen text head)
    head_norm: str = "batchnorm"
    template: str | None = None         # the zero-shot head's prompt

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))  # JSON gives a list
        _check_prompts(self)
        _check_head(self)
        if not isinstance(self.shared_frame, int) or self.shared_frame < 0:
            raise PGNError(f"pgn: shared_frame is a width in pixels (0: none), got {self.shared_frame!r}")
        self.generator_config(self.generator_size or 224)  # GeneratorConfig's own value checks

    def resolved(self, img_size: int) -> "PGNConfig":
        """The config as saved: the generator's input size stated (default: the model's)."""
        return dataclasses.replace(self, generator_size=self.generator_size or img_size)

    def generator_config(self, img_size: int | None = None) -> GeneratorConfig:
        return GeneratorConfig(num_prompts=self.num_prompts, library_size=self.library_size, arch=self.arch,
                               widths=self.widths, input_size=self.generator_size or img_size, mixing=self.mixing,
                               library_space=self.library_space, library_init_std=self.library_init_std,
                               output_init=self.output_init, output_init_scale=self.output_init_scale)


@dataclass(frozen=True)
class IIPConfig:
    """Input-independent prompts: K free tokens, the same for every image."""

    method: ClassVar[str] = "iip"
    num_prompts: int = NUM_PROMPTS
    layout: str = "append"
    library_space: str = "latent"       # "pixel": K free RGB patches, deployable in the input
    head: str = "linear"
    head_norm: str = "batchnorm"
    template: str | None = None

    def __post_init__(self):
        _check_prompts(self)
        _check_head(self)
        _choice(self, "library_space", ("latent", "pixel"))


@dataclass(frozen=True)
class VPConfig:
    """Visual prompting (Bahng et al.): a learned pixel frame; ``pad`` defaults to 30 px at 224, scaled."""

    method: ClassVar[str] = "vp"
    pad: int | None = None
    bounded: bool = False               # clamp the prompted image to valid pixels: deployable in 8 bits exactly
    head: str = "linear"
    head_norm: str = "batchnorm"
    template: str | None = None

    def __post_init__(self):
        if self.pad is not None and (not isinstance(self.pad, int) or self.pad < 1):
            raise PGNError(f"vp: pad must be a positive number of pixels, got {self.pad}")
        _check_head(self)

    def resolved(self, img_size: int) -> "VPConfig":
        return dataclasses.replace(self, pad=self.pad or max(1, round(30 * img_size / 224)))


@dataclass(frozen=True)
class LinearConfig:
    """Linear probe: a head on the frozen CLS feature."""

    method: ClassVar[str] = "linear"
    head: ClassVar[str] = "linear"
    head_norm: str = "batchnorm"

    def __post_init__(self):
        _choice(self, "head_norm", HEAD_NORMS)


@dataclass(frozen=True)
class FinetuneConfig:
    """Full fine-tuning: the whole backbone (a copy of it) and a linear head."""

    method: ClassVar[str] = "finetune"
    head: ClassVar[str] = "linear"
    head_norm: str = "batchnorm"

    def __post_init__(self):
        _choice(self, "head_norm", HEAD_NORMS)


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot: nothing trained. CLIP's text tower scores ``template`` filled with each class name, or a
    classifier's own scores answer through a label mapping (``head="labelmap-flm"``/``"labelmap-first"``)."""

    method: ClassVar[str] = "zeroshot"
    head: str = "zeroshot"
    template: str | None = None

    def __post_init__(self):
        _choice(self, "head", FROZEN_HEADS)


MethodConfig = Union[PGNConfig, IIPConfig, VPConfig, LinearConfig, FinetuneConfig, ZeroShotConfig]


@dataclass(frozen=True)
class MethodParts:
    """What a method adds to the frozen backbone (:class:`~pgn.model.PromptedClassifier`'s parts).

    ``prompts``: (B, 3, H, W) images -> (B, K, D) tokens, placed by ``layout``; ``input_prompt``:
    images -> images; ``finetune``: the backbone (a copy) is trained too.
    """

    prompts: nn.Module | None = None
    input_prompt: nn.Module | None = None
    finetune: bool = False
    layout: str = "append"


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    build: Callable[..., MethodParts]


_REGISTRY: dict[str, Method] = {}


def register_method(config: type) -> Callable:
    """Decorator: register ``builder(cfg, embedding, img_size) -> MethodParts`` for the method of ``config``."""
    name = getattr(config, "method", None)
    if not isinstance(name, str) or not dataclasses.is_dataclass(config):
        raise TypeError("a method config is a dataclass with a class variable `method` naming it")

    def register(builder: Callable[..., MethodParts]) -> Callable[..., MethodParts]:
        _REGISTRY[name] = Method(name, config, builder)
        return builder

    return register


def list_methods() -> list[str]:
    """The names of the registered methods, in registration order."""
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise PGNError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_config_of(name: str, defaults: Mapping | None = None, **options) -> MethodConfig:
    """The config of method ``name`` with ``options`` over ``defaults``.

    ``options`` are settings asked for: each must be a field of this method's config (another is a PGNError
    naming it). ``defaults`` are a budget's sizes (pgn.presets: ``num_prompts``, ``img_size``...): each is
    used where the method has that field and ignored where it has not, so one preset serves every method.
    """
    cls = get_method(name).config
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        takes = ", ".join(f"`{a}`" for a in sorted(allowed)) or "no options"
        verb = "does" if len(unknown) == 1 else "do"
        raise PGNError(f"{', '.join(f'`{u}`' for u in unknown)} {verb} not apply to `method={name}`; it takes {takes}")
    chosen = {k: v for k, v in (defaults or {}).items() if k in allowed and v is not None}
    return cls(**{**chosen, **options})


def method_options() -> set[str]:
    """Every setting some registered method's config has (``num_prompts``, ``pad``...)."""
    return {f.name for m in _REGISTRY.values() for f in fields(m.config)}


def method_config_dict(cfg) -> dict:
    """The JSON form of a method config (its fields; the tag is saved beside it)."""
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v) for f in fields(cfg)}


def method_config_from_dict(name: str, raw, source: str) -> MethodConfig:
    """The config of method ``name`` read from ``raw`` (parsed JSON), or a one-line error about ``source``."""
    from .validation import validated

    return validated(get_method(name).config, raw, f"{source} (method_config)")


# --------------------------------------------------------------------------- the builders


@register_method(PGNConfig)
def build_pgn(cfg: PGNConfig, embedding, img_size: int) -> MethodParts:
    # A shared frame (sample-specific prompts plus one learned pattern for all images, as Cai et al. 2024 pair
    # them): bounded VP's frame, rounded to 8 bits as the canvas carries it, drawn on the image before the layout.
    pre = embedding.preprocessing
    frame = (PaddingPrompt(img_size, cfg.shared_frame, bounded_by=(pre.mean, pre.std), quantize=True)
             if cfg.shared_frame else None)
    return MethodParts(prompts=PromptGenerator(cfg.generator_config(img_size), embedding.width, embedding=embedding),
                       input_prompt=frame, layout=cfg.layout)


@register_method(IIPConfig)
def build_iip(cfg: IIPConfig, embedding, img_size: int) -> MethodParts:
    prompts = (InputIndependentPixelPrompts(cfg.num_prompts, embedding) if cfg.library_space == "pixel"
               else InputIndependentPrompts(cfg.num_prompts, embedding.width))
    return MethodParts(prompts=prompts, layout=cfg.layout)


@register_method(VPConfig)
def build_vp(cfg: VPConfig, embedding, img_size: int) -> MethodParts:
    pre = embedding.preprocessing
    return MethodParts(input_prompt=PaddingPrompt(img_size, cfg.resolved(img_size).pad,
                                                  bounded_by=(pre.mean, pre.std) if cfg.bounded else None))


@register_method(LinearConfig)
def build_linear(cfg: LinearConfig, embedding, img_size: int) -> MethodParts:
    return MethodParts()


@register_method(FinetuneConfig)
def build_finetune(cfg: FinetuneConfig, embedding, img_size: int) -> MethodParts:
    return MethodParts(finetune=True)


@register_method(ZeroShotConfig)
def build_zeroshot(cfg: ZeroShotConfig, embedding, img_size: int) -> MethodParts:
    return MethodParts()
