"""The paper's method comparison on real data: linear probe, IIP, VP, PGN and full fine-tuning.

Protocol (the same for every method):

* every method gets the same epochs and schedule (SGD momentum 0.9, warm-up then cosine,
  batch 32, one precision for every run (``fp32``, or ``bf16`` autocast when asked for; it is part of
  every run's cache key and recorded in its result);
* each method's learning rate is chosen from :data:`CANDIDATES` on a validation split carved
  from train (20 %, stratified, seed 0), never on test; ties go to the smaller rate;
* the chosen rate is then trained on the full train split with ``seeds`` seeds and tested.

Every run is cached as ``<runs>/<dataset>-<ntrain>x<ntest>-<px>px-e<epochs>[-b<batch>][-bf16]/<method>/
<split>-lr<lr>[-seed<s>].json`` (no precision suffix: fp32), so an interrupted comparison resumes where it stopped and a finished one
re-renders its report without training anything.

Used by ``pgn-bench`` and ``benchmarks/compare_methods.py``.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Subset

from pgn.adapter_format import AdapterConfig, adapter_config
from pgn.backbones.base import FrozenBackbone
from pgn.data import DataSpec
from pgn.errors import DivergedError, PGNError
from pgn.files import write_json
from pgn.model import PromptedClassifier
from pgn.training import TrainConfig, run_training

logger = logging.getLogger(__name__)

# One grid for every method that trains prompts and a head at one tied rate (the paper's recipe:
# one rate for everything it trains). The linear probe's head searches the same grid.
GRID = [0.003, 0.01, 0.03, 0.1]

# Learning-rate candidates per method: the rate of everything it trains, except for VP's pixels and
# fine-tuning's backbone, which need rates of another order; their head then takes the rate the
# linear probe chose on the same validation split (the same head, tuned once).
CANDIDATES: dict[str, list[float]] = {
    "linear": GRID,                  # the head itself
    "iip": GRID,
    "vp": [1.0, 10.0, 40.0],         # pixel-space padding: Bahng et al. use 40
    "pgn": GRID,                     # latent library, append layout
    "pgn-frame": GRID,               # pixel library, frame layout: deployable in the input alone
    "finetune": [1e-4, 1e-3],        # backbone rate
}
# ``pgn-bench --quick``: two candidates per method, the ends of the grid that matter most (minutes, not hours).
QUICK_CANDIDATES: dict[str, list[float]] = {"linear": [0.01, 0.1], "iip": [0.01, 0.1], "vp": [1.0, 40.0],
                                            "pgn": [0.01, 0.1], "pgn-frame": [0.01, 0.1], "finetune": [1e-4, 1e-3]}
OWN_HEAD_RATE = ("vp", "finetune")   # methods whose head rate is the linear probe's choice
METHODS = tuple(CANDIDATES)

# ELPV's 4-class task has the same images as the binary one: when both are compared in one call
# and the binary task comes first, the 4-class task reuses its validation choice of learning rate.
LR_FROM = {"elpv4": "elpv"}

# The default datasets and the fixed subsets that keep the full comparison near 90 minutes on 2 cores.
DATASETS = ("elpv", "fashion-mnist", "elpv4")
SUBSETS = {"fashion-mnist": (1000, 1000)}  # stratified, seed 0: (train images, test images)

VAL_FRACTION = 0.2


@dataclass
class ComparisonConfig:
    """What to compare and at which budget."""

    methods: Sequence[str] = METHODS
    epochs: int = 10
    seeds: int = 3
    val_epochs: int | None = None  # budget of the validation runs that choose the rates (None: ``epochs``)
    img_size: int = 112
    precision: str = "fp32"  # resolved: "fp32" or "bf16" (autocast); part of every run's cache key
    runs: Path = Path("runs/bench-compare")
    candidates: dict[str, list[float]] = field(default_factory=lambda: dict(CANDIDATES))
    batch_size: int = 32     # the CPU protocol's; a GPU run may take more (part of the cache key when not 32)
    device: str = "cpu"
    num_workers: int = 0     # data-loading processes (a GPU needs several to be fed)
    render_only: bool = False  # report what the cache holds; train nothing
    # Test scoring after every Nth epoch (TrainConfig.eval_every). The comparison reads the last epoch's
    # alone, and a skipped pass changes nothing else, so by default it scores after the last epoch only
    # (a quarter to a third of a CPU run saved). Not part of the cache key: the result is the same.
    eval_every: int = 0
    # A second home for every finished run's result (the small JSON only, no weights), laid out like
    # ``runs``: meant to be committed, so a comparison longer than one session resumes from a fresh clone.
    record: Path | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in CANDIDATES]
        if unknown:
            raise PGNError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if self.epochs < 1 or self.seeds < 1 or (self.val_epochs is not None and self.val_epochs < 1):
            raise PGNError(f"epochs, validation epochs and seeds must be at least 1, got {self.epochs}, "
                           f"{self.val_epochs} and {self.seeds}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise PGNError(f"batch size must be >= 1 and workers >= 0, got {self.batch_size} and {self.num_workers}")
        empty = [m for m in self.methods if not self.candidates.get(m)]
        if empty:
            raise PGNError(f"no learning-rate candidates for {', '.join(empty)}")
        if self.precision not in ("fp32", "bf16"):
            raise PGNError(f"the comparison runs in one resolved precision, fp32 or bf16 (got {self.precision!r}; "
                           "resolve 'auto' with pgn.precision.resolve first)")
        self.runs = Path(self.runs)
        self.record = None if self.record is None else Path(self.record)


@dataclass(frozen=True)
class Variant:
    """A named change to the recipe, for ablations: fields of the adapter, the generator and the training."""

    name: str = "recipe"
    adapter: dict = field(default_factory=dict)    # e.g. {"head_norm": "none"}
    generator: dict = field(default_factory=dict)  # e.g. {"library_init_std": 0.2}
    train: dict = field(default_factory=dict)      # e.g. {"grad_clip": 1.0}


RECIPE = Variant()


# The compared methods that are a registered method with options (pgn.methods); others are the method itself.
STUDY_METHODS = {"pgn-frame": ("pgn", {"layout": "frame", "library_space": "pixel"})}


def method_config(method: str, backbone: FrozenBackbone, data: DataSpec, img_size: int,
                  variant: Variant = RECIPE) -> AdapterConfig:
    """The adapter of one compared method (the methods' own defaults: K 16, N 128), changed by ``variant``;
    ``pgn-frame`` is PGN with a pixel library in the frame layout."""
    base, options = STUDY_METHODS.get(method, (method, {}))
    options = {**options, **variant.adapter, **(variant.generator if base == "pgn" else {})}
    return adapter_config(backbone, base, data.class_names, img_size=img_size, dataset=data.name, **options)


def train_config(method: str, lr: float, epochs: int, seed: int, precision: str, head_lr: float | None = None,
                 variant: Variant = RECIPE, **loader) -> TrainConfig:
    """One schedule for all methods (warm-up over half the run, cosine, no clipping); ``lr`` is the rate of
    everything the method trains (the head's too), except VP's pixels and fine-tuning's backbone, whose
    head gets ``head_lr``. ``loader``: batch_size, device, num_workers, eval_every (the same for every method)."""
    common = dict(epochs=epochs, lr=lr, seed=seed, precision=precision, progress=False, **loader)
    if method == "finetune":
        cfg = dict(common, backbone_lr=lr, head_lr=head_lr)
    elif method == "vp":
        cfg = dict(common, head_lr=head_lr)
    else:
        cfg = common
    return TrainConfig(**{**cfg, **variant.train})


def validation_split(data: DataSpec, fraction: float = VAL_FRACTION) -> DataSpec:
    """Train split -> (train minus a stratified ``fraction``, that fraction as "test"); seed 0."""
    from sklearn.model_selection import train_test_split

    targets = list(data.train.targets)
    classes = len(set(targets))
    if int(len(targets) * fraction) < classes:
        raise PGNError(f"{data.name}: {len(targets)} training images are too few for a {int(100 * fraction)} % "
                       f"validation split with every one of its {classes} classes; use at least "
                       f"{-(-classes // fraction):.0f}")
    tr, va = train_test_split(range(len(targets)), test_size=fraction, stratify=targets, random_state=0)
    return DataSpec(name=data.name, class_names=data.class_names, train=Subset(data.train, tr),
                    test=Subset(data.train, va), device_transform=data.device_transform)


def run_key(root: Path, method: str, split: str, lr: float, seed: int | None = None, head_lr: float | None = None,
            variant: Variant = RECIPE) -> Path:
    """Directory of one run; its result is cached next to it as ``<name>.json``."""
    folder = method if variant.name == RECIPE.name else f"{method}@{variant.name}"
    return root / folder / (f"{split}-lr{lr}" + ("" if head_lr is None else f"-head{head_lr}")
                            + ("" if seed is None else f"-seed{seed}"))


def cached_result(key: Path) -> Path:
    return key.parent / f"{key.name}.json"  # not with_suffix: "lr0.003" has a dot of its own


def recorded_result(cfg: ComparisonConfig, key: Path) -> Path | None:
    """Where ``cfg.record`` keeps the result of run ``key`` (None without a record)."""
    return None if cfg.record is None else cfg.record / cached_result(key).relative_to(cfg.runs)


def finished_result(cfg: ComparisonConfig, key: Path) -> dict | None:
    """The result of run ``key`` from the cache or the record, or None if it was never finished."""
    for path in (cached_result(key), recorded_result(cfg, key)):
        if path is not None and path.is_file():
            return json.loads(path.read_text())
    return None


def input_dependence(result: dict | None) -> dict[str, float] | None:
    """What a PGN run's image-specific mixtures add, from its recorded last epoch: test top-1 minus the top-1
    with the mean mixture (``mean_mixture``) and with shuffled mixtures (``shuffled``), as fractions; None for a
    run without them (not PGN, diverged, or recorded before the mixture ablation existed)."""
    last = (result or {}).get("epochs") or [{}]
    row = last[-1]
    if "test_top1_mean_mixture" not in row or row.get("test_top1") is None:
        return None
    return {k: row["test_top1"] - row[f"test_top1_{k}"] for k in ("mean_mixture", "shuffled")}


def format_drops(means: dict[str, float]) -> str:
    """Input-dependence drops (fractions, as from :func:`input_dependence`) in points: "mean mixture / shuffled"."""
    return " / ".join(f"{100 * means[k]:+.2f}" for k in ("mean_mixture", "shuffled"))


class NotCached(Exception):
    """A run that a render-only comparison would have had to train."""


def device_name(device: str) -> str:
    """The accelerator a run used, in words (recorded with every cached result)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU ({_cpu_model()}{platform.machine()}, {torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    """The CPU's model name and ", " (Linux), or "": bf16 arithmetic differs between kinds of CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + ", "
    except OSError:
        pass
    return ""


class Runner:
    """Trains one configuration at a time on a shared frozen backbone (fine-tuning trains its own copy)."""

    def __init__(self, backbone: FrozenBackbone, cfg: ComparisonConfig, log: Callable[[str], None]):
        self.backbone, self.cfg, self.log = backbone, cfg, log
        self.trained = 0

    def __call__(self, key: Path, method: str, data: DataSpec, lr: float, seed: int, head_lr: float | None = None,
                 variant: Variant = RECIPE, epochs: int | None = None) -> dict:
        done = finished_result(self.cfg, key)
        if done is not None:
            return done
        if self.cfg.render_only:
            raise NotCached(key)
        if key.exists():  # an interrupted attempt: start it again cleanly
            shutil.rmtree(key)
        acfg = method_config(method, self.backbone, data, self.cfg.img_size, variant)
        # Built from the run's seed: a method's init never depends on which runs came before it.
        model = PromptedClassifier.from_config(acfg, self.backbone, seed=seed)
        tcfg = train_config(method, lr, epochs or self.cfg.epochs, seed, self.cfg.precision, head_lr, variant,
                            batch_size=self.cfg.batch_size, device=self.cfg.device, num_workers=self.cfg.num_workers,
                            eval_every=self.cfg.eval_every)
        t0 = time.perf_counter()
        diverged = None
        try:
            row = run_training(model, acfg, data, tcfg, key, log=lambda *_: None)
        except DivergedError as e:
            row, diverged = {"test_top1": None}, str(e)  # a diverging rate is a result, not a crash
        trainable = model.num_trainable()
        from pgn.training import read_metrics

        result = {"top1": row["test_top1"], "trainable_parameters": trainable, "head_lr": tcfg.head_lr or tcfg.lr,
                  "seconds": round(time.perf_counter() - t0, 1), "device": device_name(tcfg.device),
                  "batch_size": tcfg.batch_size, "precision": tcfg.precision,
                  # every epoch's row (losses, accuracy, per-part gradient norms, update sizes, mixture entropy):
                  # small, and what explains a run that went wrong once its weights are gone
                  "epochs": read_metrics(key),
                  **({"diverged": diverged} if diverged else {})}
        write_json(cached_result(key), result)
        if self.cfg.record is not None:
            write_json(recorded_result(self.cfg, key), result)
        self.trained += 1
        self.log(f"{key.relative_to(self.cfg.runs)}: " + (f"diverged ({diverged})" if diverged else
                 f"top-1 {result['top1']:.4f}") + f" ({result['seconds']} s)")
        return result


def compare(backbone: FrozenBackbone, datasets: dict[str, DataSpec], cfg: ComparisonConfig,
            log: Callable[[str], None] | None = None) -> dict:
    """Run (or read from the cache) the comparison; returns ``{dataset: {method: summary}}``.

    A summary holds the validation top-1 per candidate rate, the chosen rate, the test top-1 per
    seed with mean and std, the trainable parameters and the split sizes.
    """
    log = log or logger.info
    runner = Runner(backbone, cfg, log)
    results: dict = {}
    probe_lr: dict[str, float] = {}  # the linear probe's chosen rate per task, once known

    def probe_rate(task: str) -> float:
        """The rate the linear probe chose on ``task`` (VP's and fine-tuning's head train at it).

        A task that reuses another's rates (``LR_FROM``) reuses its probe's too, whether or not this
        call trains the probe; otherwise the probe's validation runs decide (from the cache where done).
        """
        if task not in probe_lr:
            source = LR_FROM.get(task) if LR_FROM.get(task) in results else None
            if source:
                probe_lr[task] = probe_rate(source)
            else:
                d = datasets[task]
                probe_lr[task] = select_and_test(
                    runner, run_root(cfg, task, d), "linear", d, validation_split(d), cfg.candidates["linear"], seeds=0,
                    val_root=run_root(cfg, task, d, cfg.val_epochs), val_epochs=cfg.val_epochs)["lr"]
        return probe_lr[task]

    for name, data in datasets.items():
        root = run_root(cfg, name, data)
        # Validation runs at a shorter budget are cached with the runs of that budget (where a study of
        # that budget finds them too).
        val_at = dict(val_root=run_root(cfg, name, data, cfg.val_epochs), val_epochs=cfg.val_epochs)
        lr_from = LR_FROM.get(name) if LR_FROM.get(name) in results else None
        val = validation_split(data) if not lr_from else None
        # VP and fine-tuning train the linear probe's head at the rate the probe chose: run the probe first.
        order = sorted(cfg.methods, key=lambda m: m != "linear")
        for method in order:
            try:
                head_lr = probe_rate(name) if method in OWN_HEAD_RATE else None
                if lr_from and method in results[lr_from]:
                    chosen = results[lr_from][method]["lr"]
                    summary = select_and_test(runner, root, method, data, None, [chosen], cfg.seeds, head_lr)
                    summary["lr_chosen_on"] = f"{lr_from} validation split"
                else:
                    summary = select_and_test(runner, root, method, data, val, cfg.candidates[method], cfg.seeds,
                                              head_lr, **val_at)
            except NotCached as missing:
                log(f"{name} {method}: not in the cache ({missing}); left out of the report")
                continue
            results.setdefault(name, {})[method] = summary
            if method == "linear":
                probe_lr[name] = summary["lr"]
        done = results.pop(name, {})
        if done:
            results[name] = {m: done[m] for m in cfg.methods if m in done}  # the caller's order
    return {"results": results, "runs_trained": runner.trained}


def run_root(cfg: ComparisonConfig, name: str, data: DataSpec, epochs: int | None = None) -> Path:
    """The cache folder of one dataset at one budget."""
    batch = "" if cfg.batch_size == 32 else f"-b{cfg.batch_size}"
    precision = "" if cfg.precision == "fp32" else f"-{cfg.precision}"  # runs recorded before the suffix were fp32
    return cfg.runs / (f"{name}-{len(data.train)}x{len(data.test)}-{cfg.img_size}px-e{epochs or cfg.epochs}{batch}"
                       f"{precision}")


def select_and_test(runner: "Runner", root: Path, method: str, data: DataSpec, val: DataSpec | None,
                    candidates: Sequence[float], seeds: int, head_lr: float | None = None,
                    variant: Variant = RECIPE, epochs: int | None = None, val_root: Path | None = None,
                    val_epochs: int | None = None) -> dict:
    """Choose ``method``'s rate on ``val`` (skipped with one candidate), then train ``seeds`` seeds and test.

    The validation runs train ``val_epochs`` (default: ``epochs``) and are cached under ``val_root``
    (default: ``root``). Returns the validation top-1 per rate, the chosen rate, the test top-1 per seed
    with mean and std.
    """
    kw = dict(head_lr=head_lr, variant=variant, epochs=epochs)
    if len(candidates) > 1:
        val_kw = dict(kw, epochs=val_epochs or epochs)
        scores = {lr: runner(run_key(val_root or root, method, "val", lr, None, head_lr, variant), method, val, lr, 0,
                             **val_kw)["top1"] for lr in candidates}
        # highest validation top-1 (a diverged rate counts as -1); ties go to the smaller rate
        best = max(scores, key=lambda lr: (-1 if scores[lr] is None else scores[lr], -lr))
    else:
        scores, best = {}, candidates[0]
    tests = [runner(run_key(root, method, "test", best, s, head_lr, variant), method, data, best, s, **kw)
             for s in range(seeds)]
    accs = [t["top1"] for t in tests]
    done = [a for a in accs if a is not None]
    dependence = [d for t in tests if (d := input_dependence(t)) is not None]  # PGN runs that measured it
    return {"val_top1_by_lr": scores, "lr": best, "head_lr": head_lr if head_lr is not None else best,
            "lr_chosen_on": f"{data.name} validation split" if scores else "given",
            "test_top1": accs, "diverged_seeds": len(accs) - len(done),
            "mean": statistics.mean(done) if done else None,
            "std": statistics.stdev(done) if len(done) > 1 else 0.0,
            "trainable_parameters": tests[0]["trainable_parameters"] if tests else None,
            "device": tests[0].get("device") if tests else None, "batch_size": tests[0].get("batch_size") if tests else None,
            # A result recorded before precision was stored says nothing about it: shown as such, not as a default.
            "precision": ", ".join(sorted({t.get("precision", "not recorded") for t in tests})) if tests else None,
            "seconds": round(sum(t["seconds"] for t in tests), 1),
            "train_sizes": [len(data.train), len(data.test)],
            # per seed that measured it (fractions): what the image-specific mixtures add over the mean / shuffled
            "input_dependence": {k: [d[k] for d in dependence] for k in ("mean_mixture", "shuffled")}}


def _cell(summary: dict) -> str:
    """'mean ± std' in %, saying how many seeds diverged (those are left out of the mean)."""
    if summary["mean"] is None:
        return "diverged"
    cell = f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}"
    k = summary.get("diverged_seeds", 0)
    return cell + (f" ({k} of {len(summary['test_top1'])} seeds diverged)" if k else "")


def accuracy_table(results: dict, methods: Sequence[str] = METHODS) -> list[str]:
    """Markdown rows: test top-1 (%) mean ± std per dataset and method, then parameters and rates."""
    methods = [m for m in methods if any(m in res for res in results.values())]
    lines = ["| dataset (train/test) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name, res in results.items():
        sizes = next(iter(res.values()))["train_sizes"]
        cells = [_cell(res[m]) if m in res else "n/a" for m in methods]
        lines.append(f"| {name} ({sizes[0]}/{sizes[1]}) | " + " | ".join(cells) + " |")
    for name, res in results.items():
        lines.append(f"| chosen lr, {name} | " + " | ".join(
            f"{res[m]['lr']:g}" if m in res else "n/a" for m in methods) + " |")
    for name, res in results.items():  # what each cell ran in, read from its own records
        lines.append(f"| precision, {name} | " + " | ".join(
            (res[m].get("precision") or "not recorded") if m in res else "n/a" for m in methods) + " |")
    for name, res in results.items():  # PGN's input dependence, where its runs measured it
        if any((res[m].get("input_dependence") or {}).get("mean_mixture") for m in methods if m in res):
            lines.append(f"| input dependence, {name}: drop with mean / shuffled mixtures (points) | " + " | ".join(
                _dependence_cell(res[m]) if m in res else "n/a" for m in methods) + " |")
    first_name, first = next(iter(results.items()))
    lines.append(f"| trainable parameters ({first_name}) | " + " | ".join(
        f"{first[m]['trainable_parameters']:,}" if m in first else "n/a" for m in methods) + " |")
    return lines


def _dependence_cell(summary: dict) -> str:
    """Mean drops in points over the seeds that measured them ('-' for a method without mixtures)."""
    d = summary.get("input_dependence") or {}
    if not d.get("mean_mixture"):
        return "-"
    n, seeds = len(d["mean_mixture"]), len(summary["test_top1"])
    return format_drops({k: statistics.mean(v) for k, v in d.items()}) + ("" if n == seeds else f" ({n} of {seeds} seeds)")


# The baselines a PGN row is judged against, in the and the paper's order.
BASELINES = ("linear", "vp", "iip")


def standing(results: dict, method: str = "pgn", baselines: Sequence[str] = BASELINES) -> dict:
    """Where ``method`` is ahead of each baseline, over the tasks that have both.

    Per task: the difference of mean test top-1 (fractions) and the combined spread
    ``sqrt(std_a^2 + std_b^2)`` of the two seed sets; per baseline: the number of tasks compared, the number
    where ``method``'s mean is higher, and the number where it is higher by more than the combined spread
    (a lead the seeds do not explain away). Diverged cells (mean None) are not compared.
    """
    out = {}
    for base in baselines:
        per_task = {}
        for name, res in results.items():
            a, b = res.get(method), res.get(base)
            if a is None or b is None or a["mean"] is None or b["mean"] is None:
                continue
            per_task[name] = {"difference": a["mean"] - b["mean"], "spread": math.hypot(a["std"], b["std"])}
        if per_task:
            out[base] = {"tasks": len(per_task),
                         "ahead": sum(t["difference"] > 0 for t in per_task.values()),
                         "ahead_beyond_spread": sum(t["difference"] > t["spread"] for t in per_task.values()),
                         "per_task": per_task}
    return out


def standing_table(results: dict, method: str = "pgn") -> list[str]:
    """Markdown rows of :func:`standing`: per baseline, tasks ahead, and each task's difference ± spread."""
    table = standing(results, method)
    if not table:
        return []
    names = list(results)
    lines = [f"| {method} against | tasks ahead (mean) | ahead by more than the seeds' spread | "
             + " | ".join(f"{n}: difference ± spread (points)" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for base, s in table.items():
        cells = [f"{100 * t['difference']:+.2f} ± {100 * t['spread']:.2f}" if (t := s["per_task"].get(n)) else "n/a"
                 for n in names]
        lines.append(f"| {base} | {s['ahead']} of {s['tasks']} | {s['ahead_beyond_spread']} of {s['tasks']} | "
                     + " | ".join(cells) + " |")
    return lines


def differences(results: dict, method: str = "pgn") -> list[str]:
    """Markdown rows: ``method``'s mean test top-1 minus every other method's, in points, per dataset."""
    others = [m for m in METHODS if m != method and any(m in res for res in results.values())]
    lines = [f"| {method} minus ... (points) | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for name, res in results.items():
        if method in res:
            lines.append(f"| {name} | " + " | ".join(
                f"{100 * (res[method]['mean'] - res[m]['mean']):+.2f}"
                if m in res and None not in (res[method]["mean"], res[m]["mean"]) else "n/a" for m in others) + " |")
    return lines


def speed_summary(throughput: dict) -> list[str]:
    """Markdown rows from ``benchmarks/throughput.py``'s JSON: training step time over the floor."""
    meta, rows = throughput["meta"], throughput["results"]
    methods = [m for m in ("pgn", "iip", "vp", "finetune") if m in rows[0]["train"]]
    lines = ["| size | floor images/s | " + " | ".join(f"{m} / floor" for m in methods) +
             " | generator FLOPs / backbone |", "|---|---|" + "---|" * (len(methods) + 1)]
    for r in rows:
        lines.append(f"| {r['size']} px | {r['train']['floor']['images_per_s']:.1f} | " + " | ".join(
            f"{r['train'][m]['ratio_to_floor']:.2f}" for m in methods) +
            f" | {100 * r['flops_per_image']['generator_share']:.2f} % |")
    lines += ["", f"Command: `{meta['command']}` ({meta['seconds']} s on {meta['machine']}, {meta['precision']}); "
                  f"batch {rows[0]['batch']}, median of interleaved rounds, ratios from the same process."]
    return lines


def write_report(path: Path, comparison: dict, meta: dict, throughput: dict | None = None) -> None:
    """Write the comparison (and, given ``throughput``, the speed summary) as Markdown, atomically."""
    from pgn.files import atomic_path

    results = comparison["results"]
    tasks = ", ".join(results)
    lines = [f"# The method comparison: {tasks}, {meta['img_size']} px, {meta['epochs']} epochs on {meta['machine']}", "",
             "## Accuracy: the paper's comparison on the embedded backbone", "",
             f"Command: `{meta['command']}` on {meta['machine']}, {meta['precision']}; backbone "
             f"{meta['backbone']} at {meta['img_size']} px. The runs below took {meta['seconds_of_all_runs']:,} s "
             f"of training and testing in all; this call trained {meta['runs_trained_this_call']} of them "
             f"({meta['seconds']:,} s wall), the rest came from its cache. Each method: " +
             ("learning rate given on the command line (one candidate: no validation runs), then " if
              meta.get("rates_given") else "learning rate chosen on a validation split carved from train "
              f"({int(100 * VAL_FRACTION)} %, stratified, seed 0" + (f", validation runs of {meta['val_epochs']} epochs"
              if meta.get("val_epochs") not in (None, meta["epochs"]) else "") + "), then ") +
             f"{meta['epochs']} epochs on the full train split with {meta['seeds']} seed(s), SGD momentum 0.9, "
             f"batch {meta.get('batch_size', 32)}, the paper's recipe: one rate for everything a method trains "
             "(VP's pixels and fine-tuning's backbone excepted: their head takes the linear probe's chosen rate), "
             "linear warm-up over half the run then cosine to lr/100, no gradient clipping; every linear head reads BatchNorm-normalised "
             "features (the named deviation, docs/results.md). Test top-1 (%), mean ± std over seeds; raw numbers in "
             f"[{meta['json']}]({meta['json']}).", ""]
    lines += accuracy_table(results)
    for method, what in (("pgn", "latent library, append layout"), ("pgn-frame", "pixel library, frame layout")):
        if any(method in res for res in results.values()):
            lines += ["", f"{method} ({what}) against each other method, mean test top-1:", ""]
            lines += differences(results, method)
            if rows := standing_table(results, method):
                lines += ["", f"Where {method} is ahead (the spread is sqrt(std_a² + std_b²) of the two cells):", ""]
                lines += rows
    notes = [f"{name}: {res[m]['lr_chosen_on']}" for name, res in results.items() for m in list(res)[:1]
             if not res[m]["lr_chosen_on"].startswith(name + " ")]
    if notes:
        lines += ["", "Learning rates reused from another task's validation split (same images, other labels): "
                  + "; ".join(notes) + "."]
    if throughput is not None:
        lines += ["", "## Speed against the floor", ""] + speed_summary(throughput)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def benchmark(datasets: Sequence[str], cfg: ComparisonConfig, out: Path, *, command: str,
              backbone: str = "dinov2-s14-imgfocus", weights: str | None = None,
              subsets: dict[str, tuple[int, int]] | None = None, data_root: str | None = None,
              throughput: Path | None = None, log: Callable[[str], None] | None = None,
              on_device: bool = False) -> dict:
    """Build the backbone and datasets, compare, write ``out.json`` (raw) and ``out.md`` (report).

    ``subsets`` maps a dataset name to (train, test) sizes of a stratified seed-0 subset;
    ``throughput`` is a JSON file of ``benchmarks/throughput.py`` to summarise next to the accuracy.
    ``on_device``: the loaders ship stored pixels and the training device resizes them (pgn.data.device;
    the same inputs to the bit, so the same cache).
    """
    import platform

    from pgn.backbones import create_backbone
    from pgn.data import build_dataset

    log = log or logger.info
    subsets = SUBSETS if subsets is None else subsets
    t0 = time.perf_counter()
    model = create_backbone(backbone, weights)
    pre = model.preprocessing
    specs = {}
    for name in datasets:
        train_limit, test_limit = subsets.get(name, (None, None))
        specs[name] = build_dataset(name, img_size=cfg.img_size, mean=pre.mean, std=pre.std, root=data_root,
                                    train_limit=train_limit, test_limit=test_limit, on_device=on_device)
    comparison = compare(model, specs, cfg, log)
    if not comparison["results"]:
        raise PGNError(f"nothing to report: no run of {', '.join(cfg.methods)} is in {cfg.runs}")
    out = Path(out)
    meta = {"command": command, "backbone": model.name, "img_size": cfg.img_size, "epochs": cfg.epochs,
            "val_epochs": cfg.val_epochs or cfg.epochs,
            "seeds": cfg.seeds, "precision": _precisions(comparison["results"]) or cfg.precision,
            "batch_size": cfg.batch_size,
            "rates_given": all(len(cfg.candidates[m]) == 1 for m in cfg.methods),
            "machine": _machines(comparison["results"]) or
            f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "seconds": round(time.perf_counter() - t0), "runs_trained_this_call": comparison["runs_trained"],
            "seconds_of_all_runs": round(sum(r["seconds"] for res in comparison["results"].values()
                                             for r in res.values()) + _validation_seconds(cfg, specs)),
            "json": out.with_suffix(".json").name}
    # the summary a reader (or the README) quotes: per method with mixtures, where it is ahead of each baseline
    summary = {m: st for m in ("pgn", "pgn-frame") if (st := standing(comparison["results"], m))}
    write_json(out.with_suffix(".json"), {"meta": meta, **comparison, "standing": summary})
    speed = json.loads(Path(throughput).read_text()) if throughput and Path(throughput).is_file() else None
    write_report(out.with_suffix(".md"), comparison, meta, speed)
    return {"meta": meta, **comparison}


def _precisions(results: dict) -> str:
    """The precision(s) the reported runs ran in, from their results (never the rendering call's)."""
    seen = sorted({r["precision"] for res in results.values() for r in res.values() if r.get("precision")})
    return " and ".join(seen)


def _machines(results: dict) -> str:
    """Where the reported runs ran, from their cached results (a report may be rendered elsewhere)."""
    seen = sorted({r["device"] for res in results.values() for r in res.values() if r.get("device")})
    return " and ".join(seen)


def _validation_seconds(cfg: ComparisonConfig, specs: dict[str, DataSpec]) -> float:
    """Seconds the cached validation runs took (for the report's total)."""
    total = 0.0
    for name, data in specs.items():
        root = run_root(cfg, name, data, cfg.val_epochs)
        for method in cfg.methods:
            names = {p.name: p for base in (cfg.record, cfg.runs) if base is not None
                     for p in (base / root.relative_to(cfg.runs) / method).glob("val-*.json")}
            total += sum(json.loads(p.read_text())["seconds"] for p in names.values())
    return total
