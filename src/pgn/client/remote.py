"""Classify through a model you can only send images to: the client side of input-space deployment.

:class:`RemoteClassifier` holds an exported adapter (:class:`~pgn.input_adapter.InputAdapter`:
generator, prompt library, and a linear head unless the model's own head scores) and a model endpoint
(:mod:`pgn.client.endpoints`: ``pgn serve``, an Open Inference Protocol server, or a Python callable). For each batch it composes the
prompted canvases locally, sends only images, and turns what comes back into class scores: the
endpoint's embeddings through the exported head, or, for a hosted classifier, its own scores as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import PGNError
from ..input_adapter import InputAdapter
from .endpoints import Endpoint, PgnServeEndpoint
from .wire import check_answer

__all__ = ["RemoteClassifier"]


class RemoteClassifier:
    """``RemoteClassifier(export_dir, endpoint)``; ``logits(images)``: (B, 3, S, S) normalised -> (B, C).

    ``endpoint``: a URL of ``pgn serve``, or any :mod:`pgn.client.endpoints` endpoint (the Open
    Inference Protocol of KServe/MLServer/Triton, or a Python callable around a vendor's API).
    """

    def __init__(self, adapter: str | Path | InputAdapter, endpoint: str | Endpoint, *, batch: int = 16,
                 timeout: float = 60):
        self.adapter = adapter if isinstance(adapter, InputAdapter) else InputAdapter.from_pretrained(adapter)
        if self.adapter.deploy is None:
            raise PGNError("this adapter has no deploy section; export it (`pgn export`) and load the export")
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else PgnServeEndpoint(endpoint, timeout=timeout)
        self.batch = batch
        self.class_names = self.adapter.class_names
        if self.adapter.reads_scores:
            self._check_remote_classes()

    @property
    def composer(self) -> InputAdapter:
        """The exported adapter (this name is kept for callers of earlier versions)."""
        return self.adapter

    @property
    def client(self):
        """The ``pgn serve`` client, where the endpoint is one."""
        return getattr(self.endpoint, "client", None)

    def _check_remote_classes(self) -> None:
        where = self.endpoint.url or self.endpoint.kind
        served = self.endpoint.classes()
        if self.adapter.head is not None:  # a label mapping or a learned readout reads the classifier's own scores
            want = self.adapter.deploy.outputs
            if served is not None and len(served) != want:
                raise PGNError(f"{where} scores {len(served)} classes, but this adapter's head reads a "
                               f"classifier of {want}; serve the model it was trained on "
                               f"({self.adapter.config.backbone})")
            return
        if served is None and self.endpoint.kind == "pgn":
            raise PGNError(f"{where} answers embeddings only, but this adapter was trained against the "
                           "model's own head: serve it as a hosted classifier (`pgn serve --classes FILE`)")
        if served is not None and list(served) != list(self.class_names):
            raise PGNError(f"{where} scores the classes {served[:5]}..., not the adapter's "
                           f"{self.class_names[:5]}...; serve it with the adapter's class names, in its order")
        # A zero-shot head's scores depend on its prompt template: one training never saw is another model.
        from ..backbones.openclip import DEFAULT_TEMPLATE

        served_template = self.endpoint.template()
        trained = self.adapter.config.template
        if served_template is not None or (trained is not None and self.endpoint.kind == "pgn"):
            trained = trained or DEFAULT_TEMPLATE
            if served_template != trained:
                raise PGNError(f"{where} scores with the prompt template {served_template!r}, but the "
                               f"adapter was trained with {trained!r}; serve it with 'template: {trained}' as the "
                               "class file's first line")

    def close(self) -> None:
        self.endpoint.close()

    def __enter__(self) -> "RemoteClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def transform(self):
        """PIL image -> (3, S, S) normalised tensor, the adapter's preprocessing."""
        from ..data import eval_transform

        return eval_transform(self.adapter.img_size, self.adapter.mean, self.adapter.std)

    def scores_of_canvases(self, canvases: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 canvases the model receives as they are -> (B, C) class scores (the model's
        own head through the endpoint, or the exported head on the endpoint's embeddings)."""
        if self.adapter.reads_scores:
            return self._mapped(self.endpoint.scores(canvases), len(canvases))
        return self._logits(self.endpoint.embeddings(canvases), len(canvases))

    @property
    def _where(self) -> str:
        return f"{self.endpoint.url or self.endpoint.kind}" + (f" (model {self.endpoint.model!r})"
                                                               if getattr(self.endpoint, "model", None) else "")

    def _mapped(self, scores, rows: int) -> torch.Tensor:
        """The server's own (rows, S) scores as the task's: through the adapter's label mapping or learned readout,
        where it has one, else as they are. Checked first (:func:`pgn.client.wire.check_answer`): one row per
        image, S columns, finite numbers."""
        what = ("scores (the adapter's head reads a classifier's)" if self.adapter.head is not None
                else "class scores (one per class of the adapter)")
        return self.adapter.logits(check_answer(scores, rows, self.adapter.deploy.outputs, self._where, what))

    def _logits(self, embeddings, rows: int) -> torch.Tensor:
        """The exported head on the endpoint's (rows, F) embeddings, after the same checks (F: the head's width)."""
        embeddings = check_answer(embeddings, rows, self.adapter.deploy.outputs, self._where,
                                  "embedding values (the exported head reads them)")
        return self.adapter.logits(embeddings)

    def scores_of_pngs(self, pngs: list[bytes]) -> torch.Tensor:
        """PNG images as they are -> (B, C) class scores; ``pgn serve`` takes the files, others the pixels."""
        if isinstance(self.endpoint, PgnServeEndpoint):  # it takes the files as they are
            if self.adapter.reads_scores:
                return self._mapped(self.endpoint.scores_of_pngs(pngs), len(pngs))
            return self._logits(self.endpoint.embeddings_of_pngs(pngs), len(pngs))
        import io

        from PIL import Image

        return self.scores_of_canvases(np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs]))

    def canvases(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) normalised -> (B, Hc, Wc, 3) uint8: the prompted images the model receives."""
        return self.adapter.canvases(images)

    def logits(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, C) class scores; only PNG canvases are sent."""
        images = list(images)
        out = []
        for i in range(0, len(images), self.batch):
            out.append(self.scores_of_canvases(self.canvases(torch.stack(images[i:i + self.batch]))))
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def predict(self, paths: Sequence[str | Path], top_k: int = 1) -> list[list[tuple[str, float]]]:
        """Image files -> per image, the ``top_k`` (class name, probability) pairs, best first."""
        from ..data import load_image

        tf = self.transform
        probs = self.logits([tf(load_image(p)) for p in paths]).float().softmax(-1)
        top = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [[(self.class_names[int(i)], float(p)) for p, i in zip(ps, idx)] for ps, idx in zip(top.values, top.indices)]

    def evaluate(self, split, batch: int = 64, progress: bool = True) -> dict:
        """Top-1 accuracy over a dataset split of (normalised image, label), every image through the API."""
        from tqdm.auto import tqdm

        correct = n = 0
        for start in tqdm(range(0, len(split), batch), desc="api eval", leave=False, disable=None if progress else True):
            items = [split[i] for i in range(start, min(start + batch, len(split)))]
            labels = torch.tensor([y for _, y in items])
            correct += int((self.logits([x for x, _ in items]).argmax(-1) == labels).sum())
            n += len(items)
        return {"top1": correct / max(n, 1), "n": n}
