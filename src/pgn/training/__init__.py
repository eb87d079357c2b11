"""Training and evaluation."""
from .distributed import DistContext, init_distributed
from .evaluate import evaluate, native_bf16
from .schedule import warmup_cosine
from .trainer import TrainConfig, read_metrics, train

__all__ = ["DistContext", "TrainConfig", "evaluate", "init_distributed", "native_bf16", "read_metrics", "train",
           "warmup_cosine"]
