"""``pgn``: train, evaluate, predict with and inspect PGN adapters on frozen ViTs."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from ..errors import PGNError

DEMO_NOTE = "adapts the embedded backbone to ELPV with PGN and with a linear probe at the same budget"


def resolve_defaults(args) -> None:
    """Fill the options the user did not set from the preset (``--preset``, else ``cpu``): pgn.presets."""
    from ..presets import preset

    chosen = preset(getattr(args, "preset", None) or "cpu", getattr(args, "backbone", "") or "")
    for key, value in chosen.options().items():
        if key in vars(args) and vars(args)[key] is None:  # an option of this command the user left unset
            setattr(args, key, value)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from ..backbones import DEFAULT_BACKBONE, list_backbones
    from ..methods import HEAD_NORMS, HEADS, LAYOUTS, list_methods

    g = _group(p, "model")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"{', '.join(list_backbones())} (`pgn info --backbone NAME` describes one), or "
                        "timm:<model> (default: %(default)s)")
    g.add_argument("--weights", default=None, help="local weights file for the backbone")
    g.add_argument("--method", default="pgn", choices=list_methods(),
                   help="pgn | iip (input-independent prompts) | vp (pixel padding) | linear (probe) | "
                        "finetune (whole backbone) | zeroshot (CLIP, eval only)")
    g.add_argument("--preset", default=None, choices=("cpu", "paper"),
                   help="cpu (default): 112 px, 10 epochs, lr 0.01; paper: the published recipe (pgn.presets)")
    g.add_argument("--head", default=None, choices=HEADS,
                   help="linear (default; on a scores-only classifier, the learned readout of its scores), zeroshot "
                        "(CLIP backbones), labelmap-flm / labelmap-first (a classifier's own scores, mapped)")
    g.add_argument("--head-norm", default=None, choices=HEAD_NORMS,
                   help="linear head input: batchnorm (affine-free BatchNorm, default) or none (raw CLS features)")
    g.add_argument("--num-prompts", "-K", type=int, default=None, help="prompt tokens K (default 16)")
    g.add_argument("--library-size", "-N", type=int, default=None, help="token library size N (default 128; paper CLIP 256)")
    g.add_argument("--generator", dest="arch", default=None, choices=("resnet10", "resnet18"), help="default resnet10")
    g.add_argument("--generator-size", type=int, default=None, help="generator input resolution (default 112; paper 224)")
    g.add_argument("--generator-widths", dest="widths", type=_widths, default=None, help="resnet10 stage widths (default 16,32,64,128)")
    g.add_argument("--mixing", default=None, choices=("softmax", "sigmoid"), help="default softmax")
    g.add_argument("--library-space", default=None, choices=("latent", "pixel"),
                   help="latent: D-dim tokens (paper); pixel: RGB patches, exact input-space deployment")
    g.add_argument("--layout", default=None, choices=LAYOUTS,
                   help="append (default): extra tokens (paper, white-box); extend/frame/overlay: prompts as image "
                        "patches (overlay: on the border of the full-size image)")
    g.add_argument("--shared-frame", dest="shared_frame", type=int, default=None, metavar="PX",
                   help="pgn: a learned frame of PX pixels shared by every image, beside the per-image prompts")
    g.add_argument("--vp-pad", dest="pad", type=int, default=None, help="VP frame width in pixels (default: 30 at 224 px, scaled)")
    g.add_argument("--vp-bounded", dest="bounded", action="store_const", const=True, default=None,
                   help="VP: clamp the prompted image to valid pixels, so what an 8-bit canvas carries is what trained")


def _add_data_args(p: argparse.ArgumentParser, default: str | None = "elpv") -> None:
    g = _group(p, "data")
    g.add_argument("--dataset", default=default,
                   help="elpv | elpv4 | fashion-mnist | digits | the paper's 12 (cifar10, ..., see docs/datasets.md) | "
                        "folder:PATH | json:PATH" + (f" (default: {default})" if default else ""))
    g.add_argument("--data-root", default=None, help="directory holding the dataset files, where it needs one")
    g.add_argument("--download", action="store_true", help="let torchvision download datasets it knows (needs internet)")
    g.add_argument("--img-size", type=int, default=None, help="backbone input resolution (default 112; paper 224)")
    g.add_argument("--train-limit", type=int, default=None, help="use a stratified subset of this many training images")
    g.add_argument("--test-limit", type=int, default=None, help="use a stratified subset of this many test images")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = _group(p, "optimisation")
    g.add_argument("--epochs", type=_positive_int, default=None, help="default 10 (a CPU run); paper 100")
    g.add_argument("--batch-size", type=_positive_int, default=32)
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate of everything trained (default 0.01 for the 10-epoch CPU run; paper 0.1, SGD)")
    g.add_argument("--head-lr", type=float, default=None, help="head learning rate (default: --lr, as in the paper)")
    g.add_argument("--backbone-lr", type=float, default=None, help="backbone learning rate for finetune (default: --lr)")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    g.add_argument("--prompt-optimizer", default=None, choices=("sgd", "adamw"),
                   help="the prompts' own optimiser (e.g. adamw beside an sgd head; default: --optimizer)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-epochs", type=float, default=None, help="default: half the run (paper: 50 of 100)")
    g.add_argument("--grad-clip", type=float, default=None, help="max gradient norm; 0 disables (default and paper: off)")
    g.add_argument("--head-init", default="default", choices=("default", "zero"),
                   help="linear head init: PyTorch's default, or zero (an ablation: no signal to the prompts at first)")
    _add_precision_arg(g)
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK when available, else cpu)")
    g.add_argument("--lr-scaling", default="none", choices=("none", "linear"),
                   help="with torchrun: none = --lr is for the global batch; linear = --lr x processes")
    g.add_argument("--augment", action="store_true", default=None, help="the paper's train augmentation")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", dest="num_workers", type=int, default=0, help="data-loading worker processes")
    g.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="score the test split every N epochs and after the last (0: after the last only; default 1)")
    g.add_argument("--preprocess-on-device", dest="on_device", action="store_true",
                   help="ship stored pixels and resize them on --device (in-memory datasets, no --augment)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_api_args(p) -> None:
    from ..client.endpoints import KINDS, TENSOR_FORMATS

    g = _group(p, "model API (with --api)")
    g.add_argument("--api-kind", default="pgn", choices=KINDS,
                   help="pgn: pgn serve; oip: the Open Inference Protocol (KServe, MLServer, Triton)")
    g.add_argument("--api-model", default=None, help="oip: the model's name on the server")
    g.add_argument("--api-input", default="input", help="oip: the model's input tensor name (default: input)")
    g.add_argument("--api-tensor-format", default="uint8-hwc", choices=TENSOR_FORMATS,
                   help="oip: uint8-hwc sends canvases as they are; float-chw normalises them on the client")
    g.add_argument("--api-output", default=None, help="oip: the output tensor to read (default: the first)")


def _add_zeroth_order_args(p) -> None:
    """``pgn train --api URL --zeroth-order``: pgn.train_through_api's settings (pgn.blackbox)."""
    from ..blackbox.spsa import SPSAConfig
    from ..blackbox.trainer import ANSWERS, TRAINABLE

    d = SPSAConfig()
    g = _group(p, "zeroth-order training through --api (pgn.blackbox)")
    g.add_argument("--zeroth-order", action="store_true",
                   help="train through --api with SPSA-GC: every forward is a call with 8-bit canvases")
    g.add_argument("--steps", type=_positive_int, default=None, help="SPSA steps (default: --epochs over the data)")
    g.add_argument("--max-queries", type=_positive_int, default=None, help="the most images the run sends, all told")
    g.add_argument("--max-calls", type=_positive_int, default=None, help="the most calls the run sends, all told")
    for name, help_ in (("a", "step gain a: a_k = a / (k + o)^alpha"), ("c", "perturbation c: c_k = c / k^gamma"),
                        ("o", "step gain offset o"), ("alpha", "step decay alpha"), ("gamma", "perturbation decay gamma"),
                        ("momentum", "gradient correction's beta")):
        g.add_argument(f"--spsa-{name}", type=float, default=None, help=f"{help_} (default {getattr(d, name)}, BlackVIP)")
    g.add_argument("--spsa-q", type=_positive_int, default=None, help=f"directions per step, 2 calls each (default {d.q})")
    g.add_argument("--no-gradient-correction", dest="spsa_gradient_correction", action="store_const", const=False,
                   default=None, help="plain SPSA (no look-ahead)")
    g.add_argument("--subspace", dest="spsa_subspace", type=int, default=None, metavar="D",
                   help="search a random D-dimensional subspace of the prompt (0: all of it; default 0)")
    g.add_argument("--trainable", default=None, choices=TRAINABLE, help="which prompt parameters are searched (all)")
    g.add_argument("--answers", default=None, choices=ANSWERS, help="what the API's scores are (default logits)")
    g.add_argument("--readout-epochs", type=_positive_int, default=None, help="--method linear: passes over the scores")
    g.add_argument("--readout-warmup", action="store_const", const=True, default=None,
                   help="first fit a prompt's readout on its canvases as built (one query per training image)")
    g.add_argument("--retries", type=int, default=None, help="retries of a failed call (default 3)")
    g.add_argument("--backoff", type=float, default=None, help="seconds before the first retry, doubled after (0.5)")
    g.add_argument("--api-timeout", dest="timeout", type=float, default=None, help="seconds per call (default 60)")
    g.add_argument("--init", default=None, help="warm-start from this adapter (same method and sizes)")
    g.add_argument("--mean", type=_floats3, default=None, help="the model's normalisation mean R,G,B (non-pgn APIs)")
    g.add_argument("--std", type=_floats3, default=None, help="the model's normalisation std R,G,B (non-pgn APIs)")
    g.add_argument("--cell-size", type=_positive_int, default=None, help="prompt cell side in px (non-pgn APIs: 16)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps between checkpoints (1)")
    g.add_argument("--log-every", type=_positive_int, default=None, help="steps per metrics row (10)")
    g.add_argument("--no-final-eval", dest="evaluate", action="store_const", const=False, default=None,
                   help="do not score the test split through the API at the end")


def _floats3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}")
    return values


def _remote(args, adapter):
    """The RemoteClassifier for ``adapter`` behind ``--api`` of ``--api-kind``."""
    from ..client import RemoteClassifier, endpoint
    from ..input_adapter import InputAdapter

    exported = InputAdapter.from_pretrained(adapter)
    options = {}
    if args.api_kind == "oip":
        options = dict(model=args.api_model, input_name=args.api_input, tensor_format=args.api_tensor_format,
                       output=args.api_output, mean=exported.mean, std=exported.std)
    return RemoteClassifier(exported, endpoint(args.api, args.api_kind, **options))


def _add_precision_arg(p, default: str = "auto") -> None:
    """``--precision {auto,fp32,bf16}`` (default ``default``), with ``--bf16`` / ``--fp32`` as its aliases."""
    from ..precision import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help="auto (bf16 autocast where the device runs it natively, else fp32), fp32 or bf16 "
                        f"(default: {default}); the choice is printed and recorded")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="alias of --precision bf16")
    p.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="alias of --precision fp32")


def _add_backbone_override(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=None, help="run the adapter on this backbone instead of the one it names")
    p.add_argument("--weights", default=None, help="local weights file for --backbone")


def _load(directory, args):
    from ..backbones import create_backbone
    from ..model import PromptedClassifier

    if args.weights and not args.backbone:
        raise PGNError("--weights is the weights of --backbone; give --backbone too (the adapter's own backbone and "
                       "weights are used otherwise)")
    backbone = create_backbone(args.backbone, args.weights) if args.backbone else None
    model = PromptedClassifier.from_pretrained(directory, backbone=backbone)
    return model, model.config


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as pgn's (one line on stderr, exit status 2), and a record of its options.

    Each ``add_argument`` (on the parser, or on a group made with :func:`_group`) records the option's strings -> its dest in
    ``options``, and each subcommand made with :meth:`add_command` is kept in ``commands``: what
    :func:`flags_of` and :func:`given_options` read, rather than argparse's private attributes.
    ``keep_defaults=False`` builds the same parser with every option's default suppressed, so that a parse
    holds only the options typed.
    """

    def __init__(self, *args, keep_defaults: bool = True, **kwargs):
        self.keep_defaults = keep_defaults  # set before argparse's __init__, whose -h goes through add_argument
        self.options: dict[str, str] = {}
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"pgn: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)

    def add_argument(self, *names, **kwargs):
        return _recorded(self, super().add_argument, names, kwargs)

    def add_command(self, subparsers, name: str, **kwargs) -> _Parser:
        """``subparsers.add_parser(name, ...)``, recorded in ``commands`` and built as this parser is."""
        parser = subparsers.add_parser(name, keep_defaults=self.keep_defaults, **kwargs)
        self.commands[name] = parser
        return parser


class _Group:
    """An argument group of a :class:`_Parser` whose options that parser records (see :func:`_group`)."""

    def __init__(self, parser: _Parser, group):
        self.parser, self.group = parser, group

    def add_argument(self, *names, **kwargs):
        return _recorded(self.parser, self.group.add_argument, names, kwargs)


def _group(parser: _Parser, title: str) -> _Group:
    """``parser.add_argument_group(title)``, its options recorded by ``parser``."""
    return _Group(parser, parser.add_argument_group(title))


def _recorded(parser: _Parser, add, names: tuple, kwargs: dict):
    """``add(*names, **kwargs)``, with the option's strings recorded in ``parser.options``."""
    is_option = bool(names) and names[0][:1] in parser.prefix_chars
    if is_option and not parser.keep_defaults:
        kwargs = {**kwargs, "default": argparse.SUPPRESS}
    action = add(*names, **kwargs)
    for option in action.option_strings:
        parser.options[option] = action.dest
    return action


def flags_of(parser: _Parser) -> dict[str, str]:
    """Each option's dest -> its (first) long flag, over ``parser`` and its commands."""
    flags: dict[str, str] = {}
    for p in (parser, *parser.commands.values()):
        for option, dest in p.options.items():
            if option.startswith("--"):
                flags.setdefault(dest, option)
    return flags


def given_options(argv: list[str]) -> set[str]:
    """The ``dest`` of every option the user typed for their command (argparse's unique prefixes included):
    ``argv`` parsed again by the same parser built with no defaults, so only what was typed is set."""
    bare = build_parser(keep_defaults=False)
    namespace = bare.parse_args(argv)
    return set(vars(namespace)) & set(bare.commands[namespace.command].options.values())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free port), got {value}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated stage widths, e.g. 16,32,64,128") from None
    if len(widths) != 4 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: resnet10 takes 4 positive stage widths, e.g. 16,32,64,128")
    return widths


def build_parser(keep_defaults: bool = True) -> _Parser:
    """The ``pgn`` parser (``keep_defaults=False``: every option's default suppressed; see :func:`given_options`)."""
    from ..backbones import list_backbones
    from ..methods import list_methods

    parser = _Parser(prog="pgn", description="Prompt Generation Networks for frozen Vision Transformers",
                     keep_defaults=keep_defaults)
    sub = parser.add_subparsers(dest="command", required=True)

    p = parser.add_command(sub, "train", help="train an adapter on a frozen backbone (--method: "
                                                f"{', '.join(m for m in list_methods() if m != 'zeroshot')})")
    _add_model_args(p)
    _add_data_args(p)
    _add_train_args(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/<method>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--api", default=None, help="train through a model's inference API at this URL (with "
                                               "--zeroth-order): its weights are never loaded")
    _add_api_args(p)
    _add_zeroth_order_args(p)

    p = parser.add_command(sub, "eval", help="evaluate a trained adapter on a dataset's test split")
    p.add_argument("run", nargs="?", help="run or adapter directory (with --api: an exported adapter)")
    p.add_argument("--api", default=None, help="evaluate through a model's inference API at this URL")
    _add_api_args(p)
    p.add_argument("--method", default=None, choices=("zeroshot",),
                   help="zeroshot: evaluate CLIP's zero-shot head on --backbone without any run")
    _add_data_args(p, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    _add_precision_arg(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    _add_backbone_override(p)

    p = parser.add_command(sub, "predict", help="classify images with a trained adapter")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--adapter", required=True, help="run or adapter directory (with --api: an exported adapter)")
    p.add_argument("--api", default=None, help="send composed canvases to a model's inference API at this URL")
    _add_api_args(p)
    p.add_argument("--top-k", type=_positive_int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON lines")
    _add_precision_arg(p, default="fp32")  # fp32, as predict ran before it had the flag (and as the library's)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    _add_backbone_override(p)

    p = parser.add_command(sub, "export", help="export a PGN adapter for input-space deployment (no backbone code needed)")
    p.add_argument("run", help="run or adapter directory trained with --layout extend or frame")
    p.add_argument("-o", "--out", required=True, help="output directory")

    p = parser.add_command(sub, "export-model", help="write a backbone's unmodified forward as ONNX in a Triton/KServe "
                                            "model repository (DIR/NAME/1/model.onnx + config.pbtxt)")
    p.add_argument("backbone", help=f"a registered backbone ({', '.join(list_backbones())}) or timm:<model>")
    p.add_argument("-o", "--out", required=True, help="the model repository (a folder; created if missing)")
    p.add_argument("--name", default=None, help="the model's name in the repository (default: the backbone's)")
    p.add_argument("--img-size", type=_positive_int, default=None,
                   help="the canvas side the server accepts (default: the model's native input)")
    p.add_argument("--weights", default=None, help="local weights file for the backbone")

    p = parser.add_command(sub, "compose", help="write prompted canvases: what an unmodified model receives")
    p.add_argument("images", nargs="+")
    p.add_argument("--adapter", required=True, help="exported adapter directory (pgn export)")
    p.add_argument("-o", "--out", required=True, help="output PNG (one image) or directory (several)")

    p = parser.add_command(sub, "serve", help="serve a backbone's unmodified forward over HTTP (knows nothing of prompts)")
    p.add_argument("--backbone", default="dinov2-s14-imgfocus")
    p.add_argument("--weights", default=None)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--max-side", type=int, default=1024, help="largest accepted image side in pixels")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="hosted classifier: class names, one per line (optional first line 'template: a photo of a {}.'); "
                        "answers class scores (CLIP: zero-shot head) and no embeddings")
    _add_precision_arg(p)
    p.add_argument("--forward-batch", type=int, default=32, help="images per forward, gathered from concurrent requests")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a forward waits to gather more images")
    p.add_argument("--max-request-pixels", type=int, default=None,
                   help="work one request may ask for (default: 16 inputs at the model's size, at least max-side^2)")

    p = parser.add_command(sub, "app", help="a web page: an image, the canvas the unmodified model receives, its answer "
                                   "with and without the adapter")
    p.add_argument("--adapter", required=True, help="exported adapter directory (pgn export)")
    p.add_argument("--api", required=True, help="the model server's URL (pgn serve)")
    p.add_argument("--samples", default=None,
                   help="a directory of example images to pick from (default: test images of the adapter's dataset)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=_port, default=7860)

    p = parser.add_command(sub, "import-official", help="turn a checkpoint released with the paper into a pgn adapter")
    p.add_argument("checkpoint", help="official .pt file (e.g. pgn_clip_cifar10.pt)")
    p.add_argument("--backbone", required=True, help="the backbone it was trained for (clip-vit-b32, dino-vit-s16, vit-b32)")
    p.add_argument("--weights", default=None)
    p.add_argument("--dataset", required=True, help="its dataset (for class names and the zero-shot template)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("-o", "--out", required=True)

    p = parser.add_command(sub, "analyze", help="pictures of a run: curves, token usage per class, input dependence, prompt patches")
    p.add_argument("run")
    p.add_argument("-o", "--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--max-images", type=int, default=1000, help="test images to analyse")

    p = parser.add_command(sub, "info", help="summarise a backbone, an adapter or an official checkpoint")
    p.add_argument("--backbone", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--adapter", default=None, help="run or adapter directory")
    p.add_argument("--official", default=None, help="a checkpoint released with the paper (.pt)")

    p = parser.add_command(sub, "demo", help=DEMO_NOTE)
    p.add_argument("--out", default=None, help="output directory (default: runs/demo-<time>)")
    p.add_argument("--epochs", type=int, default=None, help="default: 7 (under 10 minutes on 2 cores)")
    p.add_argument("--img-size", type=int, default=112)
    _add_precision_arg(p)
    p.add_argument("--seed", type=int, default=None, help="model initialisation and data order (default 0)")
    p.add_argument("--lr", type=float, default=0.01, help="rate of everything trained (default: chosen on validation)")
    p.add_argument("--train-images", type=int, default=1000, help="stratified ELPV training subset (0: all 1,968)")
    p.add_argument("--no-progress", action="store_true")
    return parser


# --------------------------------------------------------------------------- helpers

def _dataset(args, name: str, img_size: int, mean, std, test_limit=None):
    """A dataset for `eval --api` and `import-official` (``--data-root``, ``--download``)."""
    from ..data import build_dataset

    return build_dataset(name, img_size=img_size, mean=mean, std=std, root=args.data_root, test_limit=test_limit,
                         seed=getattr(args, "seed", 0), download=getattr(args, "download", False))




def _is_main() -> bool:
    """Rank 0 of a torchrun job (or a plain single process): the one that prints."""
    return os.environ.get("RANK", "0") == "0"




# --------------------------------------------------------------------------- commands

# `pgn train` options that are the command line's plumbing, not settings of the run: where the run is, and
# whether to continue it.
_PLUMBING = {"out", "resume"}

def _resume_free() -> set[str]:
    """The dests a resumed run may be given again with another value (pgn.api.RESUMABLE, and the plumbing);
    every other option given goes to the library to be checked against the run's own."""
    from ..api import RESUMABLE

    return {_DEST_OF.get(name, name) for name in RESUMABLE} | _PLUMBING


def cmd_train(args) -> int:
    """``pgn train``: a new run (pgn.api.train_run), or with ``--resume`` the rest of one (pgn.api.resume)."""
    from ..api import resume, train_run
    from ..methods import method_config_of, method_options
    from ..training import TrainConfig

    if args.method == "zeroshot":
        raise PGNError("zero-shot CLIP needs no training: run `pgn eval --method zeroshot --backbone clip-vit-b32 --dataset NAME`")
    if args.resume and not args.out:
        raise PGNError("--resume needs --out RUN_DIR naming the run to continue")
    if args.api or args.zeroth_order:
        return _train_through_api(args)
    stray = sorted(args.given & (set(_ZEROTH_ORDER + _API_ONLY) - {"epochs", "batch_size", "head_lr", "seed"}))
    if stray:
        raise PGNError(f"`{stray[0]}` applies to training through a model's API (--api URL --zeroth-order)")
    if args.resume:
        out = args.out
        row = resume(out, args.epochs if "epochs" in args.given else None, device=args.device,
                     changes={dest: getattr(args, dest) for dest in sorted(args.given - _resume_free())},
                     num_workers=args.num_workers if "num_workers" in args.given else None,
                     eval_every=args.eval_every if "eval_every" in args.given else None,
                     progress=not args.no_progress)
    else:
        names = method_options()  # typed ones must belong to --method; the preset's sizes apply where they do
        method = method_config_of(args.method, {n: getattr(args, n, None) for n in names},
                                  **{n: getattr(args, n) for n in sorted(args.given & names)})
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                             backbone_lr=args.backbone_lr, optimizer=args.optimizer,
                             prompt_optimizer=args.prompt_optimizer, weight_decay=args.weight_decay,
                             warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip or None,
                             head_init=args.head_init, precision=args.precision, seed=args.seed,
                             num_workers=args.num_workers, progress=not args.no_progress,
                             lr_scaling=args.lr_scaling, device=args.device, eval_every=args.eval_every)
        row, out = train_run(args.backbone, method, args.dataset, config, args.out, weights=args.weights,
                             img_size=args.img_size, augment=bool(args.augment), train_limit=args.train_limit,
                             test_limit=args.test_limit, root=args.data_root, download=args.download,
                             on_device=args.on_device)
    if _is_main():
        print(json.dumps({"run": str(out), **row}))
    return 0


# `pgn train --zeroth-order` options that go to pgn.train_through_api as they are named (given ones only: the
# presets' values are for gradient training).
_ZEROTH_ORDER = ("steps", "epochs", "batch_size", "head_lr", "seed", "max_queries", "max_calls", "spsa_a", "spsa_c",
                 "spsa_o", "spsa_alpha", "spsa_gamma", "spsa_q", "spsa_momentum", "spsa_gradient_correction",
                 "spsa_subspace", "trainable", "answers", "readout_epochs", "readout_warmup", "retries", "backoff",
                 "checkpoint_every", "log_every", "evaluate")
_API_ONLY = ("api_kind", "api_model", "api_input", "api_tensor_format", "api_output", "timeout", "init", "mean", "std",
             "cell_size")


def _train_through_api(args) -> int:
    """``pgn train --api URL --zeroth-order``: pgn.train_through_api, or with --resume pgn.resume_through_api."""
    from ..api import resume_through_api, train_through_api
    from ..methods import method_config_of, method_options

    if not args.zeroth_order:
        raise PGNError("training through --api estimates gradients from the API's answers: add --zeroth-order")
    given = {k: getattr(args, k) for k in _ZEROTH_ORDER if k in args.given or k in ("spsa_gradient_correction",
                                                                                      "evaluate")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.no_progress:
        given["progress"] = False
    if args.resume:
        row = resume_through_api(args.out, args.api, **given)
    else:
        if not args.api:
            raise PGNError("--zeroth-order trains through a model's API: give its URL with --api")
        names = method_options()
        method = method_config_of(args.method, {n: getattr(args, n, None) for n in names},
                                  **{n: getattr(args, n) for n in sorted(args.given & names)})
        img_size = args.img_size if "img_size" in args.given else None
        row = train_through_api(args.api, args.dataset, method, args.out, api_kind=args.api_kind,
                                api_model=args.api_model, api_input=args.api_input,
                                api_tensor_format=args.api_tensor_format, api_output=args.api_output,
                                timeout=args.timeout or 60, mean=args.mean, std=args.std, img_size=img_size,
                                cell_size=args.cell_size, train_limit=args.train_limit, test_limit=args.test_limit,
                                data_root=args.data_root, download=args.download, init=args.init, **given)
    print(json.dumps(row))
    return 0


def cmd_eval(args) -> int:
    from ..api import create_model, evaluate
    from ..devices import resolve_device
    from ..precision import resolve as resolve_precision

    if args.api is not None:  # an empty --api is an error (the endpoint says so), never a silent local run
        return _eval_api(args)
    if args.method == "zeroshot" and not args.dataset:
        raise PGNError("zero-shot evaluation needs --dataset")
    if args.method != "zeroshot" and not args.run:
        raise PGNError("pass a run directory to evaluate, or --method zeroshot with a clip-* --backbone")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)  # the JSON it prints names it
    if args.method == "zeroshot":  # CLIP's zero-shot head over the dataset's classes, nothing trained
        model = create_model(args.backbone or "clip-vit-b32", "zeroshot", dataset=args.dataset, weights=args.weights,
                             img_size=args.img_size, data_root=args.data_root, download=args.download)
    else:
        model, _ = _load(args.run, args)
    metrics = evaluate(model, args.dataset, test_limit=args.test_limit, batch_size=args.batch_size, device=device,
                       precision=precision, data_root=args.data_root, img_size=args.img_size, download=args.download)
    shown = {} if "datasets" in metrics else {"dataset": args.dataset or model.config.dataset}
    print(json.dumps({"run": args.run, **shown, "method": model.config.method, **metrics}))
    return 0


def _eval_api(args) -> int:
    with _remote(args, args.run) as remote:
        cfg = remote.adapter.config
        name = args.dataset or cfg.dataset
        if not name:
            raise PGNError(f"{args.run} does not record its dataset; pass --dataset")
        data = _dataset(args, name, cfg.img_size, cfg.mean, cfg.std, test_limit=args.test_limit)
        if list(data.class_names) != remote.class_names:
            raise PGNError(f"{name}'s classes differ from the adapter's ({cfg.dataset})")
        metrics = remote.evaluate(data.test)
        head = remote.adapter.head_description
    print(json.dumps({"run": args.run, "dataset": name, "api": args.api, "layout": cfg.layout, "head": head,
                      **metrics}))
    return 0


def cmd_predict(args) -> int:
    from ..devices import resolve_device
    from ..precision import autocast
    from ..precision import resolve as resolve_precision

    shown = {}
    if args.api is not None:  # the server runs the model at its own precision; an empty URL is an error
        with _remote(args, args.adapter) as remote:
            preds = remote.predict(args.images, top_k=args.top_k)
    else:
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)  # the JSON lines name it, as eval's does
        shown = {"precision": precision}
        model, _ = _load(args.adapter, args)
        model.to(device)
        with autocast(device, precision):
            preds = model.predict(args.images, top_k=args.top_k)
    for path, top in zip(args.images, preds):
        if args.json:
            print(json.dumps({"image": str(path), "top": [{"label": lab, "score": p} for lab, p in top], **shown}))
        else:
            print(f"{path}: " + ", ".join(f"{lab} {p:.3f}" for lab, p in top))
    return 0


def cmd_export(args) -> int:
    from ..input_adapter import InputAdapter, export_adapter

    out = export_adapter(args.run, args.out)
    parts = InputAdapter.from_pretrained(out).contents()
    print(f"exported {args.run} -> {out} ({', '.join(parts)}; nothing else of the model)")
    return 0


def cmd_export_model(args) -> int:
    from ..server.model_repository import export_model, read_model_info

    out = export_model(args.backbone, args.out, name=args.name, img_size=args.img_size, weights=args.weights)
    info = read_model_info(out)
    print(f"exported {info['backbone']} -> {out}/1/model.onnx: (B, {info['img_size']}, {info['img_size']}, 3) uint8 "
          f"'input' -> (B, {info['output_width']}) '{info['output']}'; ONNX Runtime vs PyTorch relative error "
          f"{info['onnx_vs_torch_relative_error']:.1e}")
    return 0


def cmd_compose(args) -> int:
    from PIL import Image

    from ..data import eval_transform, load_image
    from ..input_adapter import InputAdapter

    exported = InputAdapter.from_pretrained(args.adapter)
    tf = eval_transform(exported.img_size, exported.mean, exported.std)
    out = Path(args.out)
    many = len(args.images) > 1
    if many:
        out.mkdir(parents=True, exist_ok=True)
    elif out.suffix.lower() != ".png":
        raise PGNError(f"--out {out} must end in .png for one image (or pass several images and a directory)")
    from ..files import atomic_path

    for path in args.images:
        canvas = exported.canvases(tf(load_image(path)).unsqueeze(0))[0]
        target = out / (Path(path).stem + "_prompted.png") if many else out
        with atomic_path(target) as tmp:
            Image.fromarray(canvas, "RGB").save(tmp, format="PNG")
        print(f"{path} -> {target} ({canvas.shape[1]}x{canvas.shape[0]})")
    return 0


def cmd_serve(args) -> int:
    from ..devices import resolve_device
    from ..precision import resolve as resolve_precision
    from ..server import serve

    device = resolve_device(args.device)
    serve(args.backbone, args.weights, host=args.host, port=args.port,
          max_upload_bytes=int(args.max_upload_mb * 2**20), max_side=args.max_side,
          device=device, classes_file=args.classes, precision=resolve_precision(args.precision, device),  # logged by serve
          forward_batch=args.forward_batch,
          max_wait_ms=args.max_wait_ms, max_request_pixels=args.max_request_pixels)
    return 0


def cmd_app(args) -> int:
    from ..client.app import run_app

    run_app(args.adapter, args.api, samples=args.samples, host=args.host, port=args.port)
    return 0


def cmd_import_official(args) -> int:
    from ..backbones import create_backbone
    from ..released import import_official

    backbone = create_backbone(args.backbone, args.weights)
    pre = backbone.preprocessing
    data = _dataset(args, args.dataset, pre.input_size, pre.mean, pre.std)
    model, cfg = import_official(args.checkpoint, backbone, list(data.class_names), data.name,
                                 getattr(data, "template", None), img_size=pre.input_size)
    model.save_pretrained(args.out)
    print(f"imported {args.checkpoint} -> {args.out}: K={cfg.num_prompts}, N={cfg.generator['library_size']}, "
          f"{model.num_trainable():,} trainable parameters, head {cfg.head}")
    if not cfg.extra["head_trained"]:
        print("note: the release has no classifier head for this backbone; the adapter's linear head is untrained")
    return 0


def cmd_analyze(args) -> int:
    from ..analysis import analyze_run

    result = analyze_run(args.run, args.out, max_images=args.max_images)
    print(json.dumps(result, indent=2))
    return 0


def cmd_info(args) -> int:
    from ..backbones import create_backbone

    if not (args.backbone or args.adapter or args.official):
        args.backbone = "dinov2-s14-imgfocus"
    if args.backbone:
        print(json.dumps(create_backbone(args.backbone, args.weights).summary(), indent=2))
    if args.adapter:
        from ..model import PromptedClassifier

        model = PromptedClassifier.from_pretrained(args.adapter)
        cfg = model.config
        info = {"method": cfg.method, "backbone": cfg.backbone, "dataset": cfg.dataset,
                "classes": len(cfg.class_names), "img_size": cfg.img_size, "num_prompts": cfg.num_prompts,
                "generator": cfg.generator, "trainable_parameters": model.num_trainable(),
                "backbone_parameters": sum(p.numel() for p in model.backbone.parameters())}
        print(json.dumps(info, indent=2))
    if args.official:
        from ..prompts import load_official

        gen = load_official(args.official)
        c = gen.config
        print(json.dumps({"checkpoint": args.official, "num_prompts": c.num_prompts, "library_size": c.library_size,
                          "width": gen.library.tokens.shape[1], "widths": list(c.widths),
                          "parameters": sum(p.numel() for p in gen.parameters())}, indent=2))
    return 0


def cmd_demo(args) -> int:
    from ..demo import EPOCHS, SEED, run_demo

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    run_demo(out=out, epochs=args.epochs or EPOCHS, img_size=args.img_size, lr=args.lr,
             progress=not args.no_progress, precision=args.precision, train_images=args.train_images or None,
             seed=SEED if args.seed is None else args.seed)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "export": cmd_export,
            "export-model": cmd_export_model,
            "compose": cmd_compose, "serve": cmd_serve, "app": cmd_app, "import-official": cmd_import_official, "analyze": cmd_analyze,
            "info": cmd_info, "demo": cmd_demo}


# Library names of settings whose option's dest is named otherwise (the library's messages use its own names).
_DEST_OF = {"root": "data_root", "model": "api_model", "backbone_weights": "weights", "data": "dataset",
            "progress": "no_progress"}


def as_flags(message: str, parser: _Parser) -> str:
    """A library message with each `setting` / `setting=value` (pgn.errors) as the flag that sets it."""
    from ..errors import SETTING

    flags = flags_of(parser)

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        option = flags.get(_DEST_OF.get(name, name))
        if option is None:  # no flag sets it: the library's name, without the quoting
            return m.group(0)[1:-1]
        return option if value is None else f"{option} {value}"

    return SETTING.sub(flag, message)


class _FlagFormatter(logging.Formatter):
    """The library's log lines as they are, with its settings named by their flags (as errors are)."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("%(message)s")
        self.parser = parser

    def format(self, record: logging.LogRecord) -> str:
        return as_flags(super().format(record), self.parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for reports that quote their command
    # The library logs through ``logging`` (pgn.*); the command line shows its lines as they are, and
    # other libraries' (httpx logs every request at INFO) only from warnings up.
    pgn_log = logging.getLogger("pgn")
    if not pgn_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_FlagFormatter(parser))
        pgn_log.addHandler(handler)
        pgn_log.setLevel(logging.INFO)
        pgn_log.propagate = False
    if args.command == "train":
        args.given = given_options(args.argv)  # before presets fill the rest
        resolve_defaults(args)
    try:
        return COMMANDS[args.command](args)
    except PGNError as e:
        message = str(e)
        if "Original Traceback" in message:  # raised in a DataLoader worker: torch wraps it in the worker's trace
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        print(f"pgn: error: {as_flags(message, parser)}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only, permission denied ...: one place says which, for every command
        from ..files import os_error_line

        print(f"pgn: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pgn: interrupted; checkpoints written so far are complete", file=sys.stderr)
        return 130
