"""Training and evaluation."""
from .evaluate import evaluate, native_bf16
from .schedule import warmup_cosine
from .trainer import TrainConfig, read_metrics, train

__all__ = ["TrainConfig", "evaluate", "native_bf16", "read_metrics", "train", "warmup_cosine"]
