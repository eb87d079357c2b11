"""What runs next to the model: the server side of input-space deployment.

The model server (:func:`create_app`, :func:`serve`, ``pgn serve``) runs the backbone's own unmodified
forward on the images it receives, with dynamic batching (:mod:`.batching`) and a hosted-classifier mode
(:mod:`.models`); it knows nothing about prompts. :func:`export_model` writes the model for
the servers people already run (Triton, KServe, MLServer). Nothing here imports :mod:`pgn.client`.
"""
from .model_repository import export_model
from .server import create_app, serve

__all__ = ["create_app", "export_model", "serve"]
