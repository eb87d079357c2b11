"""pgn: Prompt Generation Networks for adapting frozen Vision Transformers.

Library layout (data flows one way)::

    data/          images -> normalised tensors (datasets, transforms, the pixel budget)
    prompts/       PromptGenerator (CNN -> mixtures over a TokenLibrary), IIP, VP padding, official checkpoints
    backbones/     frozen models: FrozenModel (what a model takes, tokens or pixels only, and whether it has
                   a zero-shot head), ViTs with a split forward tokens() -> [+ prompts] -> encode(), and
                   PixelClassifier (a model seen through pixels and scores only)
    layouts/       where prompts sit (append / extend / frame) and prompt inversion
    methods.py     one config and one builder per method (PGNConfig, IIPConfig, VPConfig, LinearConfig, ...)
    heads.py       linear head (BatchNorm-normalised features), CLIP zero-shot head, label mappings
    input_adapter.py  InputAdapter: everything trained (prompts, input prompt, layout, head), no backbone;
                   loaded alone from an export, the client of input-space deployment
    adapter_format.py the one saved format (adapter_config.json + adapter.safetensors; an export adds `deploy`)
    model.py       PromptedClassifier = frozen backbone + InputAdapter (+ predict / save_pretrained / deployable)
    pixels.py      8-bit RGB <-> normalised tensors, the one place (exact input-space deployment needs it)
    presets.py     budgets: the cpu default and the paper's recipe (sizes + TrainConfig)
    api.py         create_model / train / resume / evaluate / load: the Python entry point
    precision.py   fp32 / bf16 / auto, resolved once; devices.py: the default device and absent ones
    training/      the training loop, atomic checkpoints, optimiser monitor, evaluation, schedule, DDP
    blackbox/      training through a model's endpoint (no weights): SPSA-GC / subspace SPSA, the query
                   budget and its ledger, retries, exact resume
    multi.py       one PGN over several datasets (a head per dataset)
    released.py    the paper's released checkpoints as adapters
    analysis.py, plots.py, demo.py   what a run learned, pictures, `make demo`
    server/        runs next to the model: the model server (each library's own forward, dynamic batching,
                   hosted-classifier mode) and the model-repository export for Triton / KServe / MLServer
    client/        runs on the client: endpoints (pgn serve, the Open Inference Protocol, a callable), the
                   contract every answer meets (wire.py), RemoteClassifier, the pgn app page;
                   server/ and client/ never import each other
    web/           the HTTP plumbing both sides' web servers share (bounded uploads, loopback binding)
    files.py, validation.py, paths.py, errors.py   atomic writes and run locks, typed configs, cache dir, PGNError
The command line (``pgn.cli``) sits on top; the library never imports it. The method comparison
(``pgn-bench``) is a separate package in ``study/``, not part of this one.
"""
from .errors import PGNError

__version__ = "0.1.0"
_METHOD_CONFIGS = ("PGNConfig", "IIPConfig", "VPConfig", "LinearConfig", "FinetuneConfig", "ZeroShotConfig")
_API = ("create_model", "evaluate", "load", "resume", "train", "train_through_api", "resume_through_api")
__all__ = ["InputAdapter", "PGNError", "__version__", *_API, *_METHOD_CONFIGS]


def __getattr__(name: str):
    # The API pulls in torch and the backbones: import it on first use, so ``import pgn`` stays cheap.
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "InputAdapter":
        from .input_adapter import InputAdapter

        return InputAdapter
    if name in _METHOD_CONFIGS:
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'pgn' has no attribute {name!r}")
