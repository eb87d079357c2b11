"""The backbone registry (timm's ``@register_model`` shape): a name -> a factory of a frozen backbone.

Its own module so that a backbone module registers itself without importing the package that lists it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import FrozenBackbone


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone: its factory (``weights`` path or None -> a frozen backbone) and what it is."""

    name: str
    factory: Callable[[str | None], FrozenBackbone]
    description: str = ""
    test: bool = False  # a tiny random-init model for tests and examples, not a pretrained one


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, description: str = "", *, test: bool = False):
    """Decorator: register ``factory(weights) -> FrozenBackbone`` under ``name`` (as timm's ``@register_model``)."""
    def deco(factory: Callable[[str | None], FrozenBackbone]):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered already")
        _REGISTRY[name] = BackboneEntry(name, factory, description, test)
        return factory
    return deco
