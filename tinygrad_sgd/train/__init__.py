"""Training: the fit loop, its History, metrics and checkpoints (tg.train)."""

from . import metrics
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .history import History
from .loop import Callback, EarlyStopping, NonFiniteError, TrainState, evaluate, fit

__all__ = ["fit", "evaluate", "History", "Callback", "EarlyStopping", "TrainState", "NonFiniteError", "metrics",
           "save_checkpoint", "load_checkpoint", "CheckpointError"]
