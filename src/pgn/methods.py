"""One small config per method: what each adaptation method needs, and nothing else.

``pgn.create_model(backbone, PGNConfig(library_size=256), classes, img_size=224)`` is the typed
form of ``pgn.create_model(backbone, "pgn", classes, library_size=256, img_size=224)``; both give the
same :class:`~pgn.adapter.AdapterConfig` (the on-disk format does not change). A method config is
one of the tagged union :data:`MethodConfig`; its ``method`` names the tag.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Union

__all__ = ["PGNConfig", "IIPConfig", "VPConfig", "LinearConfig", "FinetuneConfig", "ZeroShotConfig",
           "MethodConfig", "method_config_of"]


@dataclass(frozen=True)
class PGNConfig:
    """Prompt Generation Network: a CNN mixes K prompts from a library of N tokens, per image."""

    method: ClassVar[str] = "pgn"
    num_prompts: int = 16
    library_size: int = 128
    library_space: str = "latent"       # "pixel": RGB patches, exact input-space deployment
    layout: str = "append"              # "extend" / "frame": prompts as image patches
    arch: str = "resnet10"
    widths: tuple[int, ...] = (16, 32, 64, 128)
    mixing: str = "softmax"
    generator_size: int | None = None   # the generator's input resolution (default: the model's)
    library_init_std: float | None = None
    output_init: str = "default"
    head: str = "linear"                # or "zeroshot" (CLIP's frozen text head)
    head_norm: str = "batchnorm"
    template: str | None = None         # the zero-shot head's prompt

    def adapter_kwargs(self, img_size: int) -> dict:
        own = ("num_prompts", "layout", "generator_size", "head", "head_norm", "template")
        gen = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in own}
        gen["input_size"] = self.generator_size or img_size
        return dict(num_prompts=self.num_prompts, generator=gen, layout=self.layout, head=self.head,
                    head_norm=self.head_norm, template=self.template)


@dataclass(frozen=True)
class IIPConfig:
    """Input-independent prompts: K free tokens, the same for every image."""

    method: ClassVar[str] = "iip"
    num_prompts: int = 16
    head: str = "linear"
    head_norm: str = "batchnorm"
    template: str | None = None

    def adapter_kwargs(self, img_size: int) -> dict:
        return dict(num_prompts=self.num_prompts, head=self.head, head_norm=self.head_norm, template=self.template)


@dataclass(frozen=True)
class VPConfig:
    """Visual prompting (Bahng et al.): a learned pixel frame; ``pad`` defaults to 30 px at 224, scaled."""

    method: ClassVar[str] = "vp"
    pad: int | None = None
    head: str = "linear"
    head_norm: str = "batchnorm"
    template: str | None = None

    def adapter_kwargs(self, img_size: int) -> dict:
        return dict(vp_pad=self.pad, head=self.head, head_norm=self.head_norm, template=self.template)


@dataclass(frozen=True)
class LinearConfig:
    """Linear probe: a head on the frozen CLS feature."""

    method: ClassVar[str] = "linear"
    head_norm: str = "batchnorm"

    def adapter_kwargs(self, img_size: int) -> dict:
        return dict(head_norm=self.head_norm)


@dataclass(frozen=True)
class FinetuneConfig:
    """Full fine-tuning: the whole backbone and a linear head."""

    method: ClassVar[str] = "finetune"
    head_norm: str = "batchnorm"

    def adapter_kwargs(self, img_size: int) -> dict:
        return dict(head_norm=self.head_norm)


@dataclass(frozen=True)
class ZeroShotConfig:
    """CLIP zero-shot: nothing trained; the text tower scores ``template`` filled with each class name."""

    method: ClassVar[str] = "zeroshot"
    template: str | None = None

    def adapter_kwargs(self, img_size: int) -> dict:
        return dict(template=self.template)


MethodConfig = Union[PGNConfig, IIPConfig, VPConfig, LinearConfig, FinetuneConfig, ZeroShotConfig]
_BY_NAME = {c.method: c for c in (PGNConfig, IIPConfig, VPConfig, LinearConfig, FinetuneConfig, ZeroShotConfig)}


def method_config_of(name: str, **options) -> MethodConfig:
    """The config of method ``name`` with ``options`` (its own fields only)."""
    from .errors import PGNError

    if name not in _BY_NAME:
        raise PGNError(f"unknown method {name!r}; choose from {', '.join(_BY_NAME)}")
    cls = _BY_NAME[name]
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise PGNError(f"unknown option(s) {', '.join(unknown)} for method {name!r}; it takes "
                       f"{', '.join(sorted(allowed)) or 'none'}")
    return cls(**options)
