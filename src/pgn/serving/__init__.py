"""Input-space deployment: a plain HTTP inference server for a frozen ViT, and its client.

The server (:func:`create_app`, :func:`serve`) runs the backbone's own unmodified forward
on images it receives; it knows nothing about prompts. :class:`EmbeddingClient` talks to it.
"""
from .client import EmbeddingClient
from .server import create_app, serve

__all__ = ["EmbeddingClient", "create_app", "serve"]
