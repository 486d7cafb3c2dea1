"""`padfree train`: packed-row fine-tuning of Qwen3.5-family models from local data and checkpoints."""

from padfree.train.config import TrainConfig, load
from padfree.train.errors import TrainError
from padfree.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "load", "train"]
