"""pgn: Prompt Generation Networks for adapting frozen Vision Transformers.

Library layout (data flows one way)::

    data/        images -> normalised tensors (datasets, transforms, the pixel budget)
    prompts/     PromptGenerator (CNN -> mixtures over a TokenLibrary), IIP, VP padding, official checkpoints
    backbones/   frozen ViTs with a split forward: tokens() -> [+ prompts] -> encode()
    layouts/     where prompts sit (append / extend / frame) and prompt inversion
    heads.py     linear head (BatchNorm-normalised features), CLIP zero-shot head
    model.py     PromptedClassifier = prompts + backbone + head (+ predict / save_pretrained)
    adapter.py   save/load the trainable parts (safetensors + JSON, validated on load)
    api.py       create_model / train / load: the Python entry point
    training/    the training loop, atomic checkpoints, optimiser monitor, evaluation, schedule, DDP
    comparison.py, analysis.py, plots.py   the method comparison, what a run learned, pictures
    deployment/, serving/                   input-space deployment and the model server
The command line (``pgn.cli``) sits on top; the library never imports it.
"""
from .errors import PGNError

__version__ = "0.1.0"
__all__ = ["PGNError", "__version__", "create_model", "load", "train"]


def __getattr__(name: str):
    # The API pulls in torch and the backbones: import it on first use, so ``import pgn`` stays cheap.
    if name in ("create_model", "load", "train"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pgn' has no attribute {name!r}")
