"""What runs on the client: adapt a model you can only send images to.

:class:`RemoteClassifier` holds an exported adapter (:class:`~pgn.input_adapter.InputAdapter`) and an
endpoint (:mod:`.endpoints`: ``pgn serve`` through :class:`EmbeddingClient`, any Open Inference Protocol
server, or a Python callable): it composes the prompted canvases locally, sends only images, and reads
the model's answer. :mod:`.app` is ``pgn app``, a page that shows this to a person. Nothing here imports
:mod:`pgn.server`.
"""
from .endpoints import CallableEndpoint, Endpoint, OpenInferenceEndpoint, PgnServeEndpoint, endpoint
from .pgn_serve import EmbeddingClient
from .remote import RemoteClassifier

__all__ = ["CallableEndpoint", "EmbeddingClient", "Endpoint", "OpenInferenceEndpoint", "PgnServeEndpoint",
           "RemoteClassifier", "endpoint"]
