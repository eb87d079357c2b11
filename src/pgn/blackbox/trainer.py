"""Training an input adapter through a model's endpoint: no weights, only canvases sent and scores read.

Every forward is a call to the endpoint with 8-bit canvases, exactly what deployment sends
(:meth:`pgn.input_adapter.InputAdapter.canvases`). One step of a prompt (VP's bounded frame, IIP's pixel
patches, a PGN in a pixel layout)::

    B training images --adapter at w +/- c_k delta_j, j < q--> 2q batches of canvases (B, H, W, 3) uint8
        --endpoint--> 2q x (B, S) scores --head--> losses L+_j, L-_j  --SPSA-GC--> w
                                            \\--exact gradient on the client--> the readout head

The prompt's gradient is estimated (:mod:`.spsa`); the head's is exact, computed on the client from the
scores the endpoint answered: a learned linear readout of the model's scores (``head="linear"``), or the
frequency label mapping (``labelmap-flm``, nothing trained), fitted from the endpoint's answers on the
training images before the first step. Method ``linear`` (no prompt) is the baseline a prompt must beat:
each training image is sent once and the readout is trained on the client on its scores.

Queries are metered and capped (:mod:`.budget`): a step is sent only if it fits the budget whole, with the
final evaluation's cost held back, so the run stops cleanly at the budget and says so. A checkpoint is
written after the setup and every ``checkpoint_every`` steps (the run files of :mod:`pgn.training.checkpoint`:
``checkpoints/epoch-NNNN`` counts steps here); ``queries.json`` holds the ledger, written before every call.
A fault that outlives its retries stops the run with one line and a checkpoint of the last finished step;
a resume continues bit-exactly (the perturbations' generator state is checkpointed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapter_format import AdapterConfig, DeploySpec, read_adapter_config, read_adapter_weights
from ..backbones.base import PatchEmbedding, Preprocessing
from ..client.wire import check_answer
from ..errors import EndpointError, PGNError
from ..files import check_owned, mark_owned, run_lock, write_json
from ..heads import LabelMapHead, LinearHead
from ..input_adapter import InputAdapter
from ..training.checkpoint import latest_checkpoint, load_state, read_metrics, repair, save_checkpoint
from ..training.run_dir import remove_new_run
from .budget import BudgetExhausted, MeteredEndpoint, QueryBudget, QueryLedger
from .model_input import ModelInput
from .spsa import SPSA, HashedSubspace, SPSAConfig

__all__ = ["ANSWERS", "RESUMABLE", "TRAINABLE", "ZerothOrderConfig", "build_adapter", "load_trained", "train_zeroth_order"]

log = logging.getLogger(__name__)

ANSWERS = ("logits", "probabilities")
TRAINABLE = ("all", "library", "generator", "frame")  # which of the prompt's parameters SPSA searches
LEDGER_FILE = "queries.json"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ZerothOrderConfig:
    """How a prompt is trained through an endpoint.

    ``epochs``/``steps``: how long (``steps`` wins; the budget may stop it sooner); ``batch_size``: images
    per call (BlackVIP sends 128); ``spsa``: the optimiser (:class:`~.spsa.SPSAConfig`, BlackVIP's defaults);
    ``head_lr``: Adam's rate for the readout (exact gradients on the client); ``readout_epochs``: passes
    over the cached scores for method ``linear``, and for ``readout_warmup``: a prompt's readout first fitted
    on the scores of the prompt's canvases as built (one query per training image), before any SPSA step;
    ``answers``: what the endpoint's scores are, ``logits`` or
    ``probabilities`` (read as log-probabilities: for a softmax, the logits up to a constant per image);
    ``trainable``: which prompt parameters are searched (``all``; a PGN's pixel ``library``, its ``generator``,
    or its shared ``frame``; the rest stays as built or warm-started); ``max_queries``/``max_calls``: the
    budget (images / calls, everything the run sends, evaluation included); ``retries``/``backoff``: faults;
    ``evaluate``: score the test split through the endpoint at the end (its cost is held back from the
    training budget); ``checkpoint_every``/``log_every``: in steps.
    """

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 32
    spsa: SPSAConfig = field(default_factory=SPSAConfig)
    head_lr: float = 0.01
    readout_epochs: int = 20
    readout_warmup: bool = False
    answers: str = "logits"
    trainable: str = "all"
    max_queries: int | None = None
    max_calls: int | None = None
    retries: int = 3
    backoff: float = 0.5
    seed: int = 0
    evaluate: bool = True
    checkpoint_every: int = 1
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.spsa, dict):
            object.__setattr__(self, "spsa", SPSAConfig(**self.spsa))
        for name in ("epochs", "batch_size", "readout_epochs", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PGNError(f"`{name}` must be a positive whole number, got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise PGNError(f"`steps` must be a positive whole number, got {self.steps!r}")
        if self.answers not in ANSWERS:
            raise PGNError(f"`answers` is {self.answers!r}; choose {' or '.join(ANSWERS)}")
        if self.trainable not in TRAINABLE:
            raise PGNError(f"`trainable` is {self.trainable!r}; choose one of {', '.join(TRAINABLE)}")
        if not self.head_lr > 0:
            raise PGNError(f"`head_lr` must be positive, got {self.head_lr}")
        QueryBudget(self.max_queries, self.max_calls)  # its own checks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def budget(self) -> QueryBudget:
        return QueryBudget(self.max_queries, self.max_calls)


# --------------------------------------------------------------------------- the adapter, with no backbone


def check_method(method) -> None:
    """Only a prompt that lives in the pixels can be sent to a model as it is (or no prompt: the readout)."""
    name = method.method
    space = getattr(method, "library_space", "latent")
    layout = getattr(method, "layout", "append")
    if name == "vp" and not method.bounded:
        raise PGNError("VP trains through an endpoint only with its frame bounded to valid pixels (`bounded`): an "
                       "8-bit canvas carries nothing else")
    if name in ("pgn", "iip") and (space != "pixel" or layout == "append"):
        raise PGNError(f"{name} trains through an endpoint only with prompts in the pixels: `library_space=pixel` "
                       "and `layout=frame` (or overlay/extend)")
    if name not in ("pgn", "iip", "vp", "linear"):
        raise PGNError(f"method {name!r} cannot train through an endpoint; choose vp (bounded), iip or pgn (pixel "
                       "layouts), or linear (the readout of the model's scores)")
    head = getattr(method, "head", "linear")
    if head not in ("linear", "labelmap-flm", "labelmap-first"):
        raise PGNError(f"head {head!r} needs the model's own text tower; through an endpoint use `head=linear` "
                       "(the learned readout) or `head=labelmap-flm`")
    if name == "linear" and head != "linear":
        raise PGNError("method linear is the learned readout: its head is linear")


def build_adapter(method, class_names, model_input: ModelInput, outputs: int, *, seed: int = 0,
                  dataset: str | None = None) -> InputAdapter:
    """A freshly initialised adapter of ``method`` for a model known only by ``model_input``, answering
    ``outputs`` scores; built as an export is (:meth:`InputAdapter._from_state`), with its deploy section, so
    the trained adapter is what :class:`~pgn.client.RemoteClassifier` deploys."""
    check_method(method)
    pre = Preprocessing(model_input.mean, model_input.std, model_input.img_size)
    p = model_input.cell_size
    embedding = PatchEmbedding(torch.zeros(1, 3, p, p), torch.zeros(1), pre)  # pixel prompts are never embedded
    cfg = AdapterConfig(method_config=method, backbone=model_input.name, backbone_width=1,
                        class_names=list(class_names), img_size=model_input.img_size, mean=model_input.mean,
                        std=model_input.std, dataset=dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = InputAdapter.build(cfg, embedding, outputs, zero_shot_head=None)
    side = model_input.img_size // p
    hc, wc = adapter.layout.canvas_grid((side, side), cfg.num_prompts) if adapter.prompts is not None else (side, side)
    adapter.config = dataclasses.replace(cfg, deploy=DeploySpec(canvas_size=(hc * p, wc * p), patch_size=p,
                                                                answers="scores", outputs=outputs))
    return adapter.eval()  # the prompt's BatchNorm (a PGN's generator) reads its running statistics, as deployed


def load_trained(directory: str | Path) -> InputAdapter:
    """The adapter a zeroth-order run trained (a run directory, or a saved adapter), in eval mode, with no
    backbone: for :class:`~pgn.client.RemoteClassifier` and for warm starts."""
    from ..training.checkpoint import adapter_source

    source = adapter_source(directory)
    cfg = read_adapter_config(source)
    if cfg.deploy is None or cfg.deploy.answers != "scores":
        raise PGNError(f"{directory} is not an adapter trained through an endpoint (no deploy section reading scores)")
    mi = ModelInput(cfg.mean, cfg.std, cfg.img_size, cfg.deploy.patch_size, cfg.deploy.outputs, cfg.backbone)
    adapter = build_adapter(cfg.method_config, cfg.class_names, mi, cfg.deploy.outputs, dataset=cfg.dataset)
    adapter.load_state_dict(read_adapter_weights(source), strict=True)
    return adapter.eval()


def _searched(adapter: InputAdapter, trainable: str) -> list[nn.Parameter]:
    """The prompt parameters SPSA searches, in the adapter's order (never the head's)."""
    chosen = []
    for module_name in ("prompts", "input_prompt"):
        module = getattr(adapter, module_name)
        if module is None:
            continue
        for name, p in module.named_parameters():
            full = f"{module_name}.{name}"
            if trainable == "all" or (trainable == "library" and full.startswith("prompts.library.")) or (
                    trainable == "generator" and full.startswith("prompts.") and not full.startswith("prompts.library.")
            ) or (trainable == "frame" and module_name == "input_prompt"):
                chosen.append(p)
    if adapter.prompts is not None or adapter.input_prompt is not None:
        if not chosen:
            raise PGNError(f"`trainable={trainable}` selects none of this method's prompt parameters; use all")
    return chosen


def _warm_start(adapter: InputAdapter, source: str | Path) -> list[str]:
    """Copy every tensor of the adapter in ``source`` whose name and shape match (a prompt trained with gradients
    on a model the user has, or a readout trained through the endpoint). Returns the names copied."""
    from ..training.checkpoint import adapter_source

    state = read_adapter_weights(adapter_source(source))
    own = adapter.state_dict()
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not taken:
        raise PGNError(f"`init={source}` shares no tensor with this adapter; warm-start from an adapter of the same "
                       "method and sizes")
    adapter.load_state_dict({**own, **taken}, strict=True)
    return sorted(taken)


# --------------------------------------------------------------------------- the run


class _Run:
    """One zeroth-order run: the adapter, its searched vector, the head's optimiser, the endpoint and the data."""

    def __init__(self, adapter: InputAdapter, data, cfg: ZerothOrderConfig, metered: MeteredEndpoint, run_dir: Path):
        self.adapter, self.data, self.cfg, self.metered, self.run_dir = adapter, data, cfg, metered, run_dir
        self.head = adapter.head
        self.params = _searched(adapter, cfg.trainable)
        self.w0 = torch.cat([q.detach().reshape(-1) for q in self.params]).clone() if self.params else torch.zeros(0)
        self.subspace = (HashedSubspace(self.w0, cfg.spsa.subspace, cfg.seed + 2)
                         if cfg.spsa.subspace and self.params else None)
        dim = cfg.spsa.subspace if self.subspace is not None else self.w0.numel()
        self.x = torch.zeros(dim) if self.subspace is not None else self.w0.clone()  # what SPSA searches
        self.spsa = SPSA(cfg.spsa, dim)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)  # the perturbations
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=cfg.head_lr) if isinstance(self.head, LinearHead) \
            else None
        self.step = 0
        self.rows: list[dict] = []
        self.readout_scores: torch.Tensor | None = None  # method linear: every training image's scores, once
        n = len(data.train)
        self.steps_per_epoch = math.ceil(n / cfg.batch_size)
        prompted = adapter.prompts is not None or adapter.input_prompt is not None
        # A readout (no prompt) trains on the client: its "steps" are passes over the cached scores.
        self.total_steps = (cfg.steps or cfg.epochs * self.steps_per_epoch) if prompted else cfg.readout_epochs

    # ------------------------------------------------------------------ parameters

    def set_x(self, x: torch.Tensor) -> None:
        if self.params:
            w = self.subspace.expand(x) if self.subspace is not None else x
            with torch.no_grad():
                for p, chunk in zip(self.params, w.split([q.numel() for q in self.params])):
                    p.copy_(chunk.view(p.shape))

    # ------------------------------------------------------------------ data and calls

    def batch_indices(self, step: int) -> torch.Tensor:
        """The training images of ``step`` (0-based): epoch e's order is a permutation drawn from (seed, e)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch))
        return order[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]

    def images(self, split, indices) -> tuple[torch.Tensor, torch.Tensor]:
        items = [split[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, F) what the head reads: the endpoint's scores of the adapter's canvases
        (log-probabilities where it answers probabilities), checked."""
        raw = self.metered.scores(self.adapter.canvases(images))  # exactly what RemoteClassifier sends
        return read_scores(raw, len(images), self.adapter.deploy.outputs, self.metered.where, self.cfg.answers)

    # ------------------------------------------------------------------ one SPSA step

    def spsa_step(self) -> dict:
        """One step: 2q calls of one batch, the readout's exact step, SPSA-GC's step. Nothing changes (the
        parameters, the head, the generator) until every call has answered."""
        k = self.step + 1
        images, labels = self.images(self.data.train, self.batch_indices(self.step))
        gen_state = self.generator.get_state()
        try:
            deltas = self.spsa.directions(self.generator)
            _, c_k = self.cfg.spsa.gains(k)
            scores = []
            for delta in deltas:
                for side in (1.0, -1.0):
                    self.set_x(self.x + side * c_k * delta)
                    scores.append(self.query(images))
        except BaseException:
            self.generator.set_state(gen_state)  # the step is redone whole, with the same perturbations
            raise
        finally:
            self.set_x(self.x)
        logits, head_loss = self.head_forward(torch.cat(scores), labels.repeat(len(scores)))
        per_call = F.cross_entropy(logits, labels.repeat(len(scores)), reduction="none").view(len(scores), -1).mean(1)
        plus, minus = per_call[0::2].detach(), per_call[1::2].detach()
        self.head_step(head_loss)
        self.x = self.spsa.step(self.x, k, deltas, plus, minus)
        self.set_x(self.x)
        self.step = k
        correct = (logits.argmax(1) == labels.repeat(len(scores))).float().mean().item()
        return {"loss": float(per_call.mean()), "top1": correct, "flat": bool((plus == minus).all())}

    def head_forward(self, scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, F) scores -> (N, C) logits; with a readout, in training mode and with its loss's graph."""
        if self.head_opt is None:
            with torch.no_grad():
                return self.head(scores), None
        self.head.train()
        logits = self.head(scores)
        return logits.detach(), F.cross_entropy(logits, labels)

    def head_step(self, loss: torch.Tensor | None) -> None:
        if loss is None:
            return
        self.head_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.head_opt.step()

    # ------------------------------------------------------------------ state

    def state(self) -> dict:
        return {"optimizer": {"spsa": self.spsa.state_dict(), "head": self.head_opt.state_dict() if self.head_opt
                              else {}},
                "scheduler": {}, "epoch": self.step, "x": self.x.clone(), "w0": self.w0.clone(),
                "generator": self.generator.get_state(), "readout_scores": self.readout_scores}

    def load(self, state: dict) -> None:
        self.spsa.load_state_dict(state["optimizer"]["spsa"])
        if self.head_opt is not None and state["optimizer"]["head"]:
            self.head_opt.load_state_dict(state["optimizer"]["head"])
        self.step = int(state["epoch"])
        self.w0 = state["w0"]
        if self.subspace is not None:
            self.subspace.w0 = self.w0
        self.x = state["x"]
        self.generator.set_state(state["generator"])
        self.readout_scores = state.get("readout_scores")
        self.set_x(self.x)

    def checkpoint(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, lambda d: self.adapter.save_pretrained(d), self.state(),
                               self.rows)


def read_scores(raw, rows: int, width: int, where: str, answers: str) -> torch.Tensor:
    """The endpoint's (rows, width) answer as the head reads it, or one line saying what is missing: one score
    per class is needed (an endpoint that answers its top label only cannot be trained through)."""
    arr = np.asarray(raw, dtype=np.float64) if not isinstance(raw, np.ndarray) else raw
    if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1):
        raise PGNError(f"{where} answers one value per image (its top label?); training through it needs a score per "
                       "class, logits or probabilities")
    arr = check_answer(arr, rows, width, where, "scores")
    one_hot = np.isin(arr, (0.0, 1.0)).all(1) & (arr.sum(1) == 1)
    if rows > 1 and one_hot.all():
        raise PGNError(f"{where} answers one-hot rows (its top label only); training through it needs a score per "
                       "class, logits or probabilities")
    scores = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if answers == "probabilities":
        if (scores < 0).any() or (scores > 1 + 1e-4).any():
            raise PGNError(f"{where} answers values outside [0, 1], not probabilities; use `answers=logits`")
        scores = scores.clamp_min(1e-12).log()
    return scores


# --------------------------------------------------------------------------- the loop


def train_zeroth_order(endpoint, data, method, model_input: ModelInput, out: str | Path,
                       config: ZerothOrderConfig | None = None, *, init: str | Path | None = None,
                       resume: bool = False, endpoint_record: dict | None = None, log_line=None) -> dict:
    """Train ``method``'s adapter on ``data`` through ``endpoint`` into ``out``; returns the last metrics row.

    ``endpoint``: a :class:`~pgn.client.endpoints.Endpoint`; ``model_input``: the model's preprocessing
    (:class:`.model_input.ModelInput`); ``init``: a saved adapter to warm-start from (tensors of the same
    name and shape); ``resume``: continue the run in ``out`` (its settings must be these);
    ``endpoint_record``: how the endpoint was reached (url, kind, model), recorded for a resume from the
    command line.
    """
    config = config or ZerothOrderConfig()
    say = log_line or log.info
    out = Path(out)
    check_owned(out)
    if getattr(data, "augmented", False):
        raise PGNError("training through an endpoint is deterministic: give data without augmentation")
    check_method(method)
    started = (out / CONFIG_FILE).is_file() and (out / LEDGER_FILE).is_file()  # stopped before its first checkpoint
    new = latest_checkpoint(out) is None  # a run without a checkpoint starts over (keeping what it spent)
    if resume and new and not started:
        raise PGNError(f"{out} holds no run to resume; start the run without `resume`")
    with run_lock(out):
        fresh = not any(p.name != ".pgn.lock" for p in out.iterdir())
        if not resume and not fresh:
            raise PGNError(f"{out} already holds a run; resume it (`resume`) or choose a new directory")
        try:
            return _train(endpoint, data, method, model_input, out, config, init, new, endpoint_record or {}, say)
        except BaseException:
            if fresh and latest_checkpoint(out) is None:  # a run that failed before its first checkpoint leaves nothing
                (out / LEDGER_FILE).unlink(missing_ok=True)
                remove_new_run(out)
            raise


def _settings(data, method, model_input: ModelInput, config: ZerothOrderConfig, init, endpoint_record: dict) -> dict:
    from ..methods import method_config_dict

    return {"method": method.method, "method_config": method_config_dict(method), "model_input": model_input.to_dict(),
            "zeroth_order": config.to_dict(), "init": None if init is None else str(init),
            "data": dict(getattr(data, "recipe", {}) or {"name": data.name}), "endpoint": endpoint_record}


def _train(endpoint, data, method, model_input: ModelInput, out: Path, cfg: ZerothOrderConfig, init, new: bool,
           endpoint_record: dict, say) -> dict:
    from tqdm.auto import tqdm

    ledger_path = out / LEDGER_FILE
    if not new:
        repair(out)
    # What the run spent so far, also before a kill that came ahead of its first checkpoint (the budget is the user's).
    ledger = QueryLedger.from_dict(json.loads(ledger_path.read_text()), str(ledger_path)) \
        if ledger_path.is_file() else QueryLedger()
    metered = MeteredEndpoint(endpoint, cfg.budget, ledger, retries=cfg.retries, backoff=cfg.backoff,
                              on_send=lambda led: write_json(ledger_path, led.to_dict()))
    budget = cfg.budget
    n_train, n_test = len(data.train), len(data.test) if cfg.evaluate else 0
    reserve = (math.ceil(n_test / cfg.batch_size), n_test)  # the final evaluation: (calls, images), held back

    if new:
        outputs = model_input.outputs
        setup = _setup_cost(method, n_train, cfg.batch_size, outputs is None, cfg.readout_warmup)
        if not budget.fits(ledger, setup[0] + reserve[0], setup[1] + reserve[1]):
            raise PGNError(f"the query budget ({budget.describe(QueryLedger())} allowed) does not cover the setup "
                           f"({setup[1]} images in {setup[0]} calls) and the final evaluation ({reserve[1]} images); "
                           "raise `max_queries`/`max_calls`, or evaluate less (`test_limit`)")
        mark_owned(out)
        settings = _settings(data, method, model_input, cfg, init, endpoint_record)
        if outputs is None:  # one image tells how many scores the model answers
            x, _ = data.train[0]
            probe = build_adapter(method, data.class_names, model_input, max(2, len(data.class_names)), seed=cfg.seed,
                                  dataset=data.name)
            answer = np.asarray(metered.scores(probe.canvases(x[None])))
            if answer.ndim != 2 or answer.shape[1] < 2:
                read_scores(answer, 1, 2, metered.where, cfg.answers)  # the one-line error
            outputs = int(answer.shape[1])
            model_input = dataclasses.replace(model_input, outputs=outputs)
            settings["model_input"] = model_input.to_dict()
        adapter = build_adapter(method, data.class_names, model_input, outputs, seed=cfg.seed, dataset=data.name)
        if init is not None:
            say(f"warm start from {init}: {', '.join(_warm_start(adapter, init))}")
        write_json(out / CONFIG_FILE, {"adapter": adapter.config.to_dict(), "train": settings["zeroth_order"],
                                       "zeroth_order": settings})
    else:
        recorded = json.loads((out / CONFIG_FILE).read_text())["zeroth_order"]
        asked = _settings(data, method, model_input, cfg, init, endpoint_record)
        _check_same(recorded, asked)
        whole = json.loads((out / CONFIG_FILE).read_text())
        whole["zeroth_order"]["zeroth_order"] = whole["train"] = cfg.to_dict()  # the resumable ones as asked now
        write_json(out / CONFIG_FILE, whole)
        model_input = ModelInput(**{**recorded["model_input"], "mean": tuple(recorded["model_input"]["mean"]),
                                    "std": tuple(recorded["model_input"]["std"])})
        adapter = build_adapter(method, data.class_names, model_input, model_input.outputs, seed=cfg.seed,
                                dataset=data.name)
    adapter.eval()  # the prompt's BatchNorm (a PGN's generator) reads its running statistics, as deployed
    run = _Run(adapter, data, cfg, metered, out)
    if not new:
        checkpoint = latest_checkpoint(out)
        adapter.load_state_dict(read_adapter_weights(checkpoint), strict=True)
        run.rows = read_metrics(out)
        run.load(load_state(checkpoint))
        say(f"resumed {out} at step {run.step} ({budget.describe(ledger)} spent)")
    else:
        try:
            _setup(run, method, say)
        except BudgetExhausted as e:
            raise PGNError(f"{e}; nothing was trained") from None
        if ledger.calls_sent:  # step 0: the setup's answers (the probe, a label mapping) are never bought twice
            run.checkpoint()
    return _loop(run, method, budget, reserve, say, tqdm)


# What a resumed run may be given anew: how long it runs, what it may spend, how it retries and shows progress.
# Everything else is the run's own (config.json); another value is a ResumeMismatch naming it.
RESUMABLE = ("epochs", "steps", "max_queries", "max_calls", "retries", "backoff", "progress", "log_every",
             "checkpoint_every", "evaluate")


def _flat(settings: dict) -> dict:
    """The comparable settings of a run, one name each (the library's names: `spsa_c`, `train_limit`, ...)."""
    zo = dict(settings["zeroth_order"])
    out = {f"spsa_{k}": v for k, v in zo.pop("spsa").items()}
    out.update({k: v for k, v in zo.items() if k not in RESUMABLE})
    out.update({k: v for k, v in settings["method_config"].items()})
    out["method"], out["init"] = settings["method"], settings["init"]
    mi = dict(settings["model_input"])
    out.update({k: mi[k] for k in ("mean", "std", "img_size", "cell_size")})
    if mi.get("outputs") is not None:
        out["outputs"] = mi["outputs"]
    data = dict(settings["data"])
    out["dataset"] = data.pop("name", None)
    out.update({k: data[k] for k in ("train_limit", "test_limit") if k in data})
    return json.loads(json.dumps(out))  # tuples as lists, as recorded


def _check_same(recorded: dict, asked: dict) -> None:
    """A resumed run keeps its own settings: one asked differently is named (:data:`RESUMABLE` may change)."""
    from ..errors import ResumeMismatch

    rec, new = _flat(recorded), _flat(asked)
    if "outputs" not in new:
        rec.pop("outputs", None)
    for key in sorted(set(rec) | set(new)):
        if key in new and rec.get(key) != new[key]:
            raise ResumeMismatch(key, new[key], rec.get(key), RESUMABLE)


def _setup_cost(method, n_train: int, batch: int, probe: bool, warmup: bool) -> tuple[int, int]:
    """(calls, images) sent before the first step: the probe, and one pass over the training images where the
    label mapping is fitted from the endpoint's answers or the readout caches them (or warms up)."""
    calls, images = (1, 1) if probe else (0, 0)
    head = getattr(method, "head", "")
    if method.method == "linear" or head == "labelmap-flm" or (warmup and head == "linear"):
        calls, images = calls + math.ceil(n_train / batch), images + n_train
    return calls, images


@torch.no_grad()
def _pass(run: _Run, split) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``split`` through the adapter as it is and the endpoint: (N, F) scores, (N,) labels."""
    scores, labels = [], []
    for start in range(0, len(split), run.cfg.batch_size):
        images, y = run.images(split, range(start, min(start + run.cfg.batch_size, len(split))))
        scores.append(run.query(images))
        labels.append(y)
    return torch.cat(scores), torch.cat(labels)


def _setup(run: _Run, method, say) -> None:
    if method.method == "linear":
        run.readout_scores, _ = _pass(run, run.data.train)
        say(f"readout: {len(run.readout_scores)} training images scored through the endpoint, one query each")
    elif isinstance(run.head, LabelMapHead) and not bool(run.head.fitted):
        scores, labels = _pass(run, run.data.train)
        run.head.fit(scores, labels)
        say(f"label mapping fitted from the endpoint's answers on {len(labels)} training images")
    elif run.cfg.readout_warmup and isinstance(run.head, LinearHead):
        run.readout_scores, _ = _pass(run, run.data.train)
        fit = _train_readout(run)
        run.readout_scores = None  # the prompt moves on: these scores are not the next step's
        say(f"readout warmed up on the prompt's canvases as built: {len(run.data.train)} images, train top1 "
            f"{fit['train_top1']:.4f}")


def _train_readout(run: _Run) -> dict:
    """Method linear: the readout trained on the client with exact gradients on the cached scores."""
    scores = run.readout_scores
    labels = torch.tensor([int(run.data.train[i][1]) for i in range(len(run.data.train))])
    g = torch.Generator().manual_seed(run.cfg.seed)
    run.head.train()
    loss_sum = correct = seen = 0
    for _ in range(run.cfg.readout_epochs):
        loss_sum = correct = seen = 0
        for idx in torch.randperm(len(scores), generator=g).split(run.cfg.batch_size):
            logits = run.head(scores[idx])
            loss = F.cross_entropy(logits, labels[idx])
            run.head_step(loss)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
            seen += len(idx)
    return {"train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1)}


def _loop(run: _Run, method, budget: QueryBudget, reserve: tuple[int, int], say, tqdm) -> dict:
    cfg, ledger = run.cfg, run.metered.ledger
    last = run.rows[-1] if run.rows else {}
    if last.get("stopped") and last.get("step") == run.step and (
            run.step >= run.total_steps or not _next_step_fits(run, budget, reserve)):
        return last  # a finished run, or one stopped at a budget that is still spent: nothing to send
    if method.method == "linear":
        summed = _train_readout(run)
        run.step = run.total_steps
        return _finish(run, _row(run, [], **summed), "done", budget, reserve, say)
    # A fresh run with no checkpoint yet (nothing sent before its first step) is removed if that step fails.
    stopped, last_saved, window = "done", run.step if latest_checkpoint(run.run_dir) else -1, []
    bar = tqdm(total=run.total_steps, initial=min(run.step, run.total_steps), desc="zeroth-order", leave=False,
               disable=None if cfg.progress else True, dynamic_ncols=True)
    try:
        while run.step < run.total_steps:
            if not _next_step_fits(run, budget, reserve):
                stopped = "budget"  # a step is sent whole or not at all
                break
            try:
                window.append(run.spsa_step())
            except BudgetExhausted:  # retries spent what the step needed
                stopped = "budget"
                break
            except EndpointError as e:
                if run.step != last_saved:
                    run.checkpoint()
                raise PGNError(f"{e} (stopped before step {run.step + 1}; the checkpoint holds step {run.step}: "
                               "`resume` continues from it)") from None
            if run.step == 1 and window[-1]["flat"]:
                log.warning("step 1: every perturbation gave the same loss on both sides; the canvases may not have "
                            "changed (8-bit rounding): raise `spsa_c`")
            bar.update()
            bar.set_postfix(calls=ledger.calls_sent, images=ledger.images_sent,
                            acc=f"{np.mean([w['top1'] for w in window]):.3f}")
            if run.step % cfg.log_every == 0 and run.step < run.total_steps:
                run.rows.append(_row(run, window))
                window = []
            if run.step % cfg.checkpoint_every == 0:
                run.checkpoint()
                last_saved = run.step
    finally:
        bar.close()
    if stopped == "budget":
        say(f"stopped at the query budget after step {run.step}: {budget.describe(ledger)} sent; the next step needs "
            f"{2 * cfg.spsa.q} calls" + (f" (and the final evaluation {reserve[1]} images)" if reserve[1] else ""))
    return _finish(run, _row(run, window), stopped, budget, reserve, say)


def _next_step_fits(run: _Run, budget: QueryBudget, reserve: tuple[int, int]) -> bool:
    batch = len(run.batch_indices(run.step))
    calls = 2 * run.cfg.spsa.q
    return budget.fits(run.metered.ledger, calls + reserve[0], calls * batch + reserve[1])


def _finish(run: _Run, row: dict, stopped: str, budget: QueryBudget, reserve, say) -> dict:
    """The final evaluation (its cost was held back), the last row and checkpoint, and one line saying so."""
    ledger = run.metered.ledger
    if run.cfg.evaluate:
        try:
            row.update(_evaluate(run))
        except BudgetExhausted as e:  # retries spent what was held back for it
            say(f"the final evaluation was not run: {e}")
        except EndpointError as e:
            run.checkpoint()
            raise PGNError(f"{e} (training finished at step {run.step}; its evaluation failed: `resume` runs it)") \
                from None
    row.update(_spent(ledger), stopped=stopped)
    run.rows.append(row)
    run.checkpoint()
    test = f", test top1 {row['test_top1']:.4f}" if "test_top1" in row else ""
    say(f"step {run.step}: train loss {row.get('train_loss', float('nan')):.4f} acc "
        f"{row.get('train_top1', float('nan')):.4f}{test}; {budget.describe(ledger)} sent, "
        f"{ledger.calls_failed} failed")
    return row


def _spent(ledger: QueryLedger) -> dict:
    return {"calls": ledger.calls_sent, "images_sent": ledger.images_sent, "images_answered": ledger.images_answered,
            "calls_failed": ledger.calls_failed}


def _row(run: _Run, window: list[dict], **extra) -> dict:
    a_k, c_k = run.cfg.spsa.gains(max(run.step, 1))
    row = {"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 4)}
    if window:
        row.update(train_loss=float(np.mean([w["loss"] for w in window])),
                   train_top1=float(np.mean([w["top1"] for w in window])), a_k=a_k, c_k=c_k)
    row.update(extra)
    return {**row, **_spent(run.metered.ledger)}


@torch.no_grad()
def _evaluate(run: _Run) -> dict:
    """Top-1 and loss on the test split, every image through the endpoint (the cost held back for it)."""
    run.head.eval()
    scores, labels = _pass(run, run.data.test)
    logits = run.head(scores)
    return {"test_loss": float(F.cross_entropy(logits, labels)),
            "test_top1": float((logits.argmax(1) == labels).float().mean()), "test_images": len(labels)}
