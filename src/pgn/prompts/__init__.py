"""Prompt sources: the PGN (input-dependent) and the IIP baseline (input-independent)."""
from .generator import GeneratorConfig, InputIndependentPrompts, PromptGenerator, ResNet10
from .library import PixelTokenLibrary, TokenLibrary
from .padding import PaddingPrompt
from .official import load_official

__all__ = ["GeneratorConfig", "InputIndependentPrompts", "PaddingPrompt", "PixelTokenLibrary", "PromptGenerator", "ResNet10", "TokenLibrary", "load_official"]
