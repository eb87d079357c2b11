"""Prompt sources: the PGN (input-dependent) and the IIP baseline (input-independent)."""
from .generator import GeneratorConfig, InputIndependentPixelPrompts, InputIndependentPrompts, PromptGenerator, ResNet10
from .library import PixelTokenLibrary, TokenLibrary
from .official import load_official
from .padding import PaddingPrompt

__all__ = ["GeneratorConfig", "InputIndependentPixelPrompts", "InputIndependentPrompts", "PaddingPrompt",
           "PixelTokenLibrary", "PromptGenerator", "ResNet10", "TokenLibrary", "load_official"]
