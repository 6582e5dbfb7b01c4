"""The data of one ``tinygrad-sgd`` run: read, task, train/validation/test split,
normalisation, and the *spec* that ``predict`` needs later.

- The **test** split is held out until the end: the file's own test part (npz ``x_test``,
  MNIST ``t10k``, CIFAR ``test_batch``) or ``--test-fraction`` of the samples. It is never
  used to choose anything.
- The **validation** split, ``--val-fraction`` of what remains, is what training looks at:
  the per-epoch ``val_*`` columns, early stopping and the plateau schedule.
- **Normalisation** is fitted on the training split alone, ``x' = (x - mean) / std`` per
  feature (per channel for images), and stored in the spec, so evaluation and ``predict``
  apply the very same numbers. Regression targets are standardised the same way (SGD
  with one learning rate wants outputs of order 1); predictions are mapped back.

The spec is a dict of JSON values and arrays that goes into every checkpoint (``fit``'s
``checkpoint_extra``): the task, the classes, the input layout, the normalisation, the
CSV columns, and the model's options.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from .data import files
from .data.datasets import load_digits, train_test_split

TASKS = ("auto", "classification", "regression")


class DataError(ValueError):
    """Data that does not fit the options (a CNN on tabular data, one class, ...)."""


@dataclass
class RunData:
    """Model-ready splits (float32 inputs; int64 class indices or float32 standardised
    targets of shape (N, 1)) and the spec that turns raw inputs into them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    spec: dict
    name: str  # for messages: "the digits", or the path

    @property
    def task(self) -> str:
        return self.spec["task"]


def load_run_data(args) -> RunData:
    """Read ``args.data`` (the bundled digits when None) and prepare the three splits."""
    if args.data is None:
        if args.target is not None:
            raise DataError("--target names a column of a CSV given with --data")
        # The digits as stored (counts 0..16), split as load_digits always split them;
        # mean 0 and std 16 reproduce its "scale" normalisation exactly.
        (x, y), (x_test, y_test) = load_digits(split=args.test_fraction, seed=args.seed, normalize=None,
                                               flatten=args.model == "mlp")
        raw = files.DataFile(x=x, y=y, x_test=x_test, y_test=y_test, kind="digits")
        name = "the digits"
    else:
        raw = files.read_data(args.data, target=args.target)
        name = str(args.data)
        if args.target is not None and raw.kind != "CSV":
            raise DataError(f"--target names a CSV column, but {name} is {raw.kind} data")
    assert raw.y is not None  # read_data requires the target by default
    task = _task(raw.y, args.task, name)
    layout = _layout(raw.x, args.model, name)
    y_all = raw.y if raw.y_test is None else np.concatenate([raw.y, raw.y_test])
    classes = _classes(y_all, name) if task == "classification" else None
    x, y = raw.x, raw.y
    stratify = task == "classification"
    if raw.x_test is None:
        x, x_test, y, y_test = train_test_split(x, y, test_size=args.test_fraction, seed=args.seed,
                                                stratify=y if stratify else None)
    else:
        x_test, y_test = raw.x_test, raw.y_test
    x_val = y_val = None
    if args.val_fraction > 0:
        x, x_val, y, y_val = train_test_split(x, y, test_size=args.val_fraction, seed=args.seed + 1,
                                              stratify=y if stratify else None)
    x = _shape(x, layout)
    if raw.kind == "digits":
        mean, std = np.zeros((1,) * (x.ndim - 1), np.float32), np.full((1,) * (x.ndim - 1), 16.0, np.float32)
    else:
        mean, std = _statistics(x, layout)
    spec: dict = {
        "source": raw.kind, "task": task, "classes": classes, "layout": layout,
        "input_shape": list(x.shape[1:]), "mean": mean, "std": std,
        "feature_names": raw.feature_names, "target": raw.target_name,
        "model": {"model": args.model, "hidden": args.hidden, "dropout": args.dropout},
    }
    if task == "regression":
        y_float = np.asarray(y, dtype=np.float64)
        spec["target_mean"] = float(y_float.mean())
        spec["target_std"] = float(y_float.std()) or 1.0
    x_val_in = None if x_val is None else inputs(x_val, spec)
    y_val_in = None if y_val is None else targets(y_val, spec)
    return RunData(inputs(x, spec, shaped=True), targets(y, spec), x_val_in, y_val_in,
                   inputs(x_test, spec), targets(y_test, spec), spec, name)


# ----------------------------------------------------------------------------- the spec, applied


def inputs(x: np.ndarray, spec: dict, shaped: bool = False) -> np.ndarray:
    """Raw samples -> model inputs: the layout's shape, then ``(x - mean) / std`` in float32."""
    if not shaped:
        x = _shape(x, spec["layout"])
        if x.ndim == 2 and len(spec["input_shape"]) > 1 and x.shape[1] == np.prod(spec["input_shape"]):
            x = x.reshape(len(x), *spec["input_shape"])  # flat rows of an image model's pixels
    if list(x.shape[1:]) != list(spec["input_shape"]):
        raise DataError(f"samples of shape {tuple(x.shape[1:])}, but the model takes {tuple(spec['input_shape'])}")
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)


def targets(y: np.ndarray, spec: dict) -> np.ndarray:
    """Raw targets -> what the loss takes: class indices (int64), or standardised values
    of shape (N, 1) (float32) for regression."""
    if spec["task"] == "classification":
        classes = np.asarray(spec["classes"])
        values = _as_class_values(y, classes)
        index = np.searchsorted(classes, values)
        index = np.minimum(index, len(classes) - 1)
        unknown = classes[index] != values
        if unknown.any():
            raise DataError(f"label {values[np.argmax(unknown)]!r} is not one of the {len(classes)} classes "
                            "the model was trained on")
        return index.astype(np.int64)
    y = (np.asarray(y, dtype=np.float64) - spec["target_mean"]) / spec["target_std"]
    return y.astype(np.float32).reshape(-1, 1)


def outputs_to_predictions(outputs: np.ndarray, spec: dict):
    """Model outputs -> ``(predictions, probabilities or None)`` in the data's own terms:
    class labels (with the softmax of the logits), or values in the target's units."""
    if spec["task"] == "classification":
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return np.asarray(spec["classes"])[outputs.argmax(axis=1)], probabilities
    return outputs[:, 0].astype(np.float64) * spec["target_std"] + spec["target_mean"], None


def model_options(spec: dict) -> argparse.Namespace:
    """The options ``make_model`` reads, as the run had them."""
    return argparse.Namespace(**spec["model"])


def n_outputs(spec: dict) -> int:
    return len(spec["classes"]) if spec["task"] == "classification" else 1


# ----------------------------------------------------------------------------- decisions


def _task(y: np.ndarray, wanted: str, name: str) -> str:
    """Integers and class names mean classification, floats regression; ``--task`` overrides."""
    if wanted == "regression":
        if y.dtype.kind == "U":
            raise DataError(f"--task regression needs numeric targets, but {name} has class names such as "
                            f"{str(y[0])!r}")
        return "regression"
    if wanted == "classification":
        if y.dtype.kind == "f" and not np.all(y == np.round(y)):
            bad = y[np.argmax(y != np.round(y))]
            raise DataError(f"--task classification needs integer labels or class names, but {name} has the "
                            f"target {float(bad)!r}")
        return "classification"
    return "regression" if y.dtype.kind == "f" else "classification"


def _classes(y: np.ndarray, name: str) -> list:
    values = np.unique(_as_class_values(y, None))
    if len(values) < 2:
        raise DataError(f"{name}: every target is {values[0]!r}; classification needs at least 2 classes")
    return values.tolist()


def _as_class_values(y: np.ndarray, classes) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind == "f":  # integral floats (checked by _task) name integer classes
        return y.astype(np.int64)
    if y.dtype.kind == "U" or (classes is not None and classes.dtype.kind == "U"):
        return y.astype(str)
    return y.astype(np.int64)


def _layout(x: np.ndarray, model: str, name: str) -> str:
    """``flat``: one feature vector per sample (MLP); ``image``: (C, H, W) per sample (CNN)."""
    if model != "cnn":
        return "flat"
    if x.ndim not in (3, 4):
        raise DataError(f"--model cnn needs images, (N, H, W) or (N, C, H, W), but {name} has samples of shape "
                        f"{tuple(x.shape[1:])}; use --model mlp")
    if x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] > 4:
        raise DataError(f"{name} looks channels-last, samples of shape {tuple(x.shape[1:])} (H, W, C); --model cnn "
                        "takes (C, H, W): save x.transpose(0, 3, 1, 2)")
    height, width = x.shape[-2:]
    if min(height, width) < 4:
        raise DataError(f"--model cnn pools twice by 2 and needs images of at least 4x4, got {height}x{width}")
    return "image"


def _shape(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "flat":
        return x.reshape(len(x), -1)
    return x[:, None] if x.ndim == 3 else x


def _statistics(x: np.ndarray, layout: str):
    """Mean and std of the training split: per feature (flat), per channel (images); a
    constant feature gets std 1 (it maps to 0 instead of dividing by zero)."""
    axes = (0,) if layout == "flat" else (0, 2, 3)
    values = x.astype(np.float64)
    mean = values.mean(axis=axes, keepdims=True)[0]
    std = values.std(axis=axes, keepdims=True)[0]
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
