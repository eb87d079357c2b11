"""pgn: Prompt Generation Networks for adapting frozen Vision Transformers.

Library layout (data flows one way)::

    data/        images -> normalised tensors (datasets, transforms, the pixel budget)
    prompts/     PromptGenerator (CNN -> mixtures over a TokenLibrary), IIP, VP padding, official checkpoints
    backbones/   frozen ViTs with a split forward: tokens() -> [+ prompts] -> encode()
    layouts/     where prompts sit (append / extend / frame) and prompt inversion
    heads.py     linear head (BatchNorm-normalised features), CLIP zero-shot head
    model.py     PromptedClassifier = prompts + backbone + head (+ predict / save_pretrained)
    adapter.py   save/load the trainable parts (safetensors + JSON, validated on load)
    pixels.py    8-bit RGB <-> normalised tensors, the one place (exact input-space deployment needs it)
    presets.py   budgets: the cpu default and the paper's recipe (sizes + TrainConfig)
    methods.py   one small config per method (PGNConfig, IIPConfig, VPConfig, LinearConfig, ...)
    api.py       create_model / train / resume / evaluate / load: the Python entry point
    precision.py fp32 / bf16 / auto, resolved once; devices.py: the default device and absent ones
    training/    the training loop, atomic checkpoints, optimiser monitor, evaluation, schedule, DDP
    multi.py     one PGN over several datasets (a head per dataset)
    comparison.py, analysis.py, plots.py, demo.py   the method comparison, what a run learned, pictures, make demo
    deployment/  export, canvas composer, RemoteClassifier (an API client), the pgn app page
    serving/     the model server: each library's own forward, dynamic batching, hosted-classifier mode
    files.py, validation.py, paths.py, errors.py   atomic writes and run locks, typed configs, cache dir, PGNError
The command line (``pgn.cli``) sits on top; the library never imports it.
"""
from .errors import PGNError

__version__ = "0.1.0"
_METHOD_CONFIGS = ("PGNConfig", "IIPConfig", "VPConfig", "LinearConfig", "FinetuneConfig", "ZeroShotConfig")
__all__ = ["PGNError", "__version__", "create_model", "evaluate", "load", "resume", "train", *_METHOD_CONFIGS]


def __getattr__(name: str):
    # The API pulls in torch and the backbones: import it on first use, so ``import pgn`` stays cheap.
    if name in ("create_model", "evaluate", "load", "resume", "train"):
        from . import api

        return getattr(api, name)
    if name in _METHOD_CONFIGS:
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'pgn' has no attribute {name!r}")
