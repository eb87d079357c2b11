"""Layouts (where prompts sit in what the model receives) and prompt inversion (tokens -> pixels)."""
from .inversion import Inversion, PatchInverter, invert_tokens, pixel_box
from .layouts import LAYOUTS, AppendLayout, CanvasLayout, ExtendLayout, FrameLayout, OverlayLayout, make_layout

__all__ = ["LAYOUTS", "AppendLayout", "CanvasLayout", "ExtendLayout", "FrameLayout", "Inversion", "OverlayLayout",
           "PatchInverter", "invert_tokens", "make_layout", "pixel_box"]
