"""``pgn-bench``: the paper's method comparison (linear probe, IIP, VP, PGN, fine-tuning) as a study on top of pgn.

    pgn-bench --quick --methods linear pgn        # minutes
    pgn-bench --datasets elpv --epochs 10 --seeds 3

A learning rate per method is chosen on a validation split, then several seeds are tested; every run is
cached (``--runs``) and can be recorded (``--record``). The protocol is :mod:`pgn_study.comparison`; it
builds and trains its models through pgn's public API, as any user would.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pgn.devices import resolve_device
from pgn.errors import SETTING, PGNError
from pgn.precision import PRECISIONS, describe, resolve

from . import comparison
from .comparison import METHODS


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line on stderr and exit status 2 (as ``pgn``'s are); it also keeps
    each destination's long flag, so library messages can name the flags (:func:`as_flags`)."""

    def __init__(self, *args, **kwargs):
        self.flags: dict[str, str] = {}  # dest -> its first long option; filled by add_argument
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        long = [o for o in action.option_strings if o.startswith("--")]
        if long:
            self.flags.setdefault(action.dest, long[0])
        return action

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision {auto,fp32,bf16}`` (default auto), with ``--bf16`` / ``--fp32`` as its aliases."""
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default: bf16 autocast where the device runs it natively, else fp32), fp32 or bf16; "
                        "the choice is printed and recorded")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="alias of --precision bf16")
    p.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="alias of --precision fp32")


# Library names (pgn.errors: `setting` / `setting=value` in a message) whose flag here has another destination.
FLAG_OF = {"root": "data_root", "backbone_weights": "weights", "num_workers": "workers"}


def as_flags(message: str, parser: Parser) -> str:
    """A library message with each `setting` / `setting=value` it names as the flag that sets it here;
    a setting no flag sets keeps its library name, without the quoting."""

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        option = parser.flags.get(FLAG_OF.get(name, name))
        if option is None:
            return m.group(0)[1:-1]
        return option if value is None else f"{option} {value}"

    return SETTING.sub(flag, message)


def build_parser() -> Parser:
    p = Parser(prog="pgn-bench", description="the paper's comparison: linear probe, IIP, VP, PGN, fine-tuning; lr "
                                              "on a validation split, several seeds, cached per run")
    p.add_argument("--datasets", nargs="+", default=None, help="default: elpv fashion-mnist elpv4")
    p.add_argument("--methods", nargs="+", default=None, help="default: linear iip vp pgn pgn-frame finetune")
    p.add_argument("--backbone", default="dinov2-s14-imgfocus")
    p.add_argument("--weights", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val-epochs", type=int, default=None,
                   help="epochs of the validation runs that choose each rate (default: --epochs)")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--subset", action="append", default=None, metavar="NAME=TRAINxTEST",
                   help="stratified seed-0 subset of a dataset (default: fashion-mnist=1000x1000); repeatable")
    p.add_argument("--quick", action="store_true",
                   help="minutes: elpv only, 400/200 images, 1 epoch, 1 seed, two rates per method")
    add_precision_arg(p)
    p.add_argument("--runs", default="runs/bench-compare", help="cache of finished runs (resumes from it)")
    p.add_argument("--record", default=None, help="also keep each finished run's result JSON here, laid out like "
                                                   "--runs (small; commit it to resume from a fresh clone)")
    p.add_argument("--out", default=None, help="report path without suffix: writes .md and .json "
                                                "(default: <runs>/results)")
    p.add_argument("--throughput", default=None, help="JSON of benchmarks/throughput.py to summarise in the report")
    p.add_argument("--rate", action="append", default=None, metavar="METHOD=LR[,LR...]",
                   help="learning-rate candidates of a method (one: no validation runs); repeatable")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="score the test split every N epochs too (default 0: after the last only, all a report reads)")
    p.add_argument("--preprocess-on-device", dest="on_device", action="store_true",
                   help="ship stored pixels and resize them on --device (in-memory datasets; pgn.data.device)")
    p.add_argument("--render-only", action="store_true", help="write the report from the cache; train nothing")
    p.add_argument("--report-command", default=None, help=argparse.SUPPRESS)

    return p


def _parse_subset(text: str) -> tuple[str, tuple[int, int]]:
    name, _, sizes = text.partition("=")
    train, _, test = sizes.partition("x")
    if not (name and train.isdigit() and test.isdigit()):
        raise PGNError(f"--subset {text!r}: expected NAME=TRAINxTEST, e.g. fashion-mnist=1000x1000")
    return name, (int(train), int(test))


def _parse_rate(text: str) -> tuple[str, list[float]]:
    method, _, rates = text.partition("=")
    if method not in METHODS:
        raise PGNError(f"--rate {text!r}: unknown method {method!r}; choose from {', '.join(METHODS)}")
    try:
        return method, [float(r) for r in rates.split(",")]
    except ValueError:
        raise PGNError(f"--rate {text!r}: expected METHOD=LR[,LR...], e.g. pgn=0.01,0.03") from None


def run(args) -> int:
    subsets = dict(_parse_subset(s) for s in args.subset) if args.subset is not None else dict(comparison.SUBSETS)
    datasets = args.datasets or list(comparison.DATASETS)
    epochs, seeds, runs = args.epochs, args.seeds, args.runs
    if args.quick:
        datasets, epochs, seeds, runs = ["elpv"], 1, 1, args.runs + "-quick"
        subsets = {"elpv": (400, 200)}
    base = comparison.QUICK_CANDIDATES if args.quick else comparison.CANDIDATES
    rates = {**base, **dict(_parse_rate(r) for r in args.rate or [])}
    device = resolve_device(args.device)
    precision = resolve(args.precision, device)
    print(f"precision {describe(precision)}{' (auto)' if args.precision == 'auto' else ''} on {device}", flush=True)
    cfg = comparison.ComparisonConfig(methods=args.methods or comparison.METHODS, epochs=epochs, seeds=seeds,
                                      val_epochs=None if args.quick else args.val_epochs,
                                      img_size=args.img_size, precision=precision,
                                      runs=Path(runs), candidates=rates, batch_size=args.batch_size,
                                      device=args.device, num_workers=args.workers, render_only=args.render_only,
                                      eval_every=args.eval_every,
                                      record=args.record)
    out = Path(args.out) if args.out else Path(runs) / "results"
    command = args.report_command or "pgn-bench " + " ".join(args.argv)
    res = comparison.benchmark(datasets, cfg, out, command=command, backbone=args.backbone, weights=args.weights,
                               subsets=subsets, data_root=args.data_root, throughput=args.throughput,
                               log=lambda line: print(line, flush=True),  # progress shows up in a redirected log
                               on_device=args.on_device)
    print("\n".join(comparison.accuracy_table(res["results"])))
    print(f"report: {out.with_suffix('.md')}, raw: {out.with_suffix('.json')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except PGNError as e:
        print(f"pgn-bench: error: {as_flags(str(e), parser)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
