"""pgn: Prompt Generation Networks for adapting frozen Vision Transformers.

Library layout (data flows one way)::

    data/        images -> normalised tensors
    prompts/     PromptGenerator (CNN -> mixtures over a TokenLibrary), IIP baseline, official checkpoints
    backbones/   frozen ViTs with a split forward: tokens() -> [+ prompts] -> encode()
    heads.py     linear head on the CLS feature
    model.py     PromptedClassifier = prompts + backbone + head
    adapter.py   save/load the trainable parts (safetensors + JSON)
    training/    the training loop and evaluation
    plots.py     pictures of runs
The command line (``pgn.cli``) sits on top; the library never imports it.
"""
from .errors import PGNError

__version__ = "0.1.0"
__all__ = ["PGNError", "__version__"]
