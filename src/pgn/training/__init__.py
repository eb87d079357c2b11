"""Training and evaluation internals: the loop behind :func:`pgn.train` and ``pgn train``
(:func:`run_training`) and the evaluation over a loader behind :func:`pgn.evaluate` (:func:`evaluate_loader`).
Use :func:`pgn.train` and :func:`pgn.evaluate`; these are for the library's own callers, tests and benchmarks."""
from .config import TrainConfig
from .distributed import DistContext, init_distributed
from .evaluate import evaluate_loader
from .label_map import fit_label_map
from .schedule import warmup_cosine
from .trainer import read_metrics, run_training

__all__ = ["DistContext", "TrainConfig", "evaluate_loader", "fit_label_map", "init_distributed", "read_metrics",
           "run_training", "warmup_cosine"]
