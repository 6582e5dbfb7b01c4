"""Classification and regression metrics, computed on the host in float64.

Inputs may be Tensors or arrays. ``predictions`` for classification are class ids of
shape (N,) or scores/logits of shape (N, C) (the arg-max is taken). Precision, recall and
F1 follow the usual definitions; a class that is never predicted (or never present) has
precision (recall) 0, as scikit-learn's ``zero_division=0``:

    precision_c = TP_c / (TP_c + FP_c)     recall_c = TP_c / (TP_c + FN_c)
    F1_c = 2 precision_c recall_c / (precision_c + recall_c)
    macro average = unweighted mean over classes
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor


def _host(values) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.data
    return backend.to_numpy(values) if backend.is_array(values) else np.asarray(values)


def _class_ids(predictions) -> np.ndarray:
    predictions = _host(predictions)
    if predictions.ndim == 2:
        return predictions.argmax(axis=1)
    if predictions.ndim != 1:
        raise ValueError(f"predictions must be class ids (N,) or scores (N, C), got shape {predictions.shape}")
    return predictions


def _pair(predictions, targets) -> tuple[np.ndarray, np.ndarray]:
    predicted, actual = _class_ids(predictions), _host(targets)
    if actual.ndim != 1 or actual.shape[0] != predicted.shape[0]:
        raise ValueError(f"targets must have shape ({predicted.shape[0]},), got {actual.shape}")
    if actual.dtype.kind not in "iub" or predicted.dtype.kind not in "iub":
        raise TypeError(f"class ids must be integers, got {predicted.dtype} predictions and {actual.dtype} targets")
    return predicted.astype(np.int64), actual.astype(np.int64)


def accuracy(predictions, targets) -> float:
    """Fraction of samples whose predicted class equals the target."""
    predicted, actual = _pair(predictions, targets)
    if actual.size == 0:
        raise ValueError("accuracy of an empty batch")
    return float(np.mean(predicted == actual))


def confusion_matrix(predictions, targets, num_classes: int | None = None) -> np.ndarray:
    """``M[i, j]`` = number of samples of true class i predicted as class j (int64)."""
    predicted, actual = _pair(predictions, targets)
    if num_classes is None:
        num_classes = int(max(predicted.max(initial=-1), actual.max(initial=-1))) + 1
    for name, ids in (("predictions", predicted), ("targets", actual)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"{name} hold class ids outside [0, {num_classes})")
    # One bincount over the pair index i*C + j: no Python loop over samples.
    return np.bincount(actual * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes,
                                                                                             num_classes)


def _per_class(matrix: np.ndarray):
    true_positive = np.diag(matrix).astype(np.float64)
    predicted_count = matrix.sum(axis=0).astype(np.float64)  # column sums: TP + FP
    actual_count = matrix.sum(axis=1).astype(np.float64)  # row sums: TP + FN
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, true_positive / predicted_count, 0.0)
        recall = np.where(actual_count > 0, true_positive / actual_count, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def _average(values: np.ndarray, average: str | None):
    if average is None:
        return values
    if average == "macro":
        return float(values.mean())
    raise ValueError(f"average must be 'macro' or None (per class), got {average!r}")


def precision(predictions, targets, num_classes: int | None = None, average: str | None = "macro"):
    """Precision per class (``average=None``) or its macro average."""
    return _average(_per_class(confusion_matrix(predictions, targets, num_classes))[0], average)


def recall(predictions, targets, num_classes: int | None = None, average: str | None = "macro"):
    """Recall per class (``average=None``) or its macro average."""
    return _average(_per_class(confusion_matrix(predictions, targets, num_classes))[1], average)


def f1_score(predictions, targets, num_classes: int | None = None, average: str | None = "macro"):
    """F1 per class (``average=None``) or its macro average."""
    return _average(_per_class(confusion_matrix(predictions, targets, num_classes))[2], average)


def _regression_pair(predictions, targets) -> tuple[np.ndarray, np.ndarray]:
    predicted, actual = _host(predictions).astype(np.float64), _host(targets).astype(np.float64)
    if predicted.shape != actual.shape:
        raise ValueError(f"predictions {predicted.shape} and targets {actual.shape} must have the same shape")
    return predicted, actual


def mean_squared_error(predictions, targets) -> float:
    """MSE = mean((prediction - target)^2)."""
    predicted, actual = _regression_pair(predictions, targets)
    return float(np.mean((predicted - actual) ** 2))


def mean_absolute_error(predictions, targets) -> float:
    """MAE = mean(|prediction - target|)."""
    predicted, actual = _regression_pair(predictions, targets)
    return float(np.mean(np.abs(predicted - actual)))


def r2_score(predictions, targets) -> float:
    """Coefficient of determination, R^2 = 1 - sum((y - y_hat)^2) / sum((y - mean(y))^2): the
    share of the targets' variance the model explains (1 is perfect, 0 is as good as
    predicting the mean, negative is worse). NaN when the targets are all equal. Pooled
    over all outputs for multi-output targets."""
    predicted, actual = _regression_pair(predictions, targets)
    spread = float(np.sum((actual - actual.mean()) ** 2))
    return 1.0 - float(np.sum((predicted - actual) ** 2)) / spread if spread > 0 else float("nan")
