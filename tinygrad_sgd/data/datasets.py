"""The bundled 8x8 digits data set, and seeded (stratified) train/test splits.

``load_digits`` needs no download: the package ships the 1,797 8x8 images of the UCI
"Optical Recognition of Handwritten Digits" test set (E. Alpaydin and C. Kaynak, 1998;
CC BY 4.0) in ``tinygrad_sgd/data/bundled/digits.npz`` — see ``bundled/README.md`` for
its origin and licence. It is small enough for the test suite and for notebooks that
train in seconds on a CPU, and real enough that over- and under-fitting show.
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend
from ..tensor import Tensor
from ._checks import resolve_seed
from .transforms import Normalize

DIGITS_PATH = os.path.join(os.path.dirname(__file__), "bundled", "digits.npz")


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, Tensor):
        array = array.detach().data
    if backend.is_array(array):
        return backend.to_numpy(array)
    return np.asarray(array)


def _test_count(test_size, n: int) -> int:
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        count = int(np.ceil(test_size * n))  # scikit-learn rounds the test share up
    elif isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool):
        count = int(test_size)
    else:
        raise TypeError(f"test_size must be a float fraction or an int count, got {test_size!r}")
    if not 0 < count < n:
        raise ValueError(f"test_size={test_size} leaves {n - count} training and {count} test samples of {n}; "
                         "both must be positive")
    return count


def _stratified_test_indices(labels: np.ndarray, n_test: int, gen: np.random.Generator) -> np.ndarray:
    """Pick ``n_test`` indices with each class's share as close to its overall share as
    integers allow (largest remainders), each class's members chosen at random."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ideal = counts * (n_test / labels.size)
    take = np.floor(ideal).astype(np.int64)
    remainder = ideal - take
    # Hand the leftover test slots to the classes with the largest fractional parts
    # (ties broken at random so no class is favoured by its label value).
    short = n_test - int(take.sum())
    order = np.lexsort((gen.random(classes.size), -remainder))
    take[order[:short]] += 1
    picked = []
    for k in range(classes.size):
        members = np.flatnonzero(inverse == k)
        picked.append(gen.choice(members, size=int(take[k]), replace=False))
    return np.concatenate(picked)


def train_test_split(*arrays, test_size=0.25, seed: int | None = None, stratify=None, shuffle: bool = True):
    """Split equal-length arrays into random train and test parts (scikit-learn's order).

    Returns ``[a_train, a_test, b_train, b_test, ...]`` as NumPy arrays. ``test_size``
    is a fraction (rounded up) or a count. ``stratify=labels`` keeps each class's share
    the same in both parts (as nearly as integers allow) — on small data sets a plain
    random split can leave a class almost absent from the test set. ``seed=None`` draws
    the seed from the engine's generator (``tg.manual_seed`` fixes it). With
    ``shuffle=False`` the last ``test_size`` samples are the test set.
    """
    if not arrays:
        raise ValueError("train_test_split needs at least one array")
    arrays = tuple(_as_numpy(a) for a in arrays)
    lengths = [a.shape[0] if a.ndim else None for a in arrays]
    if None in lengths or len(set(lengths)) > 1:
        raise ValueError(f"train_test_split: arrays must have equal lengths along axis 0, got {lengths}")
    n = arrays[0].shape[0]
    n_test = _test_count(test_size, n)
    if not shuffle:
        if stratify is not None:
            raise ValueError("train_test_split: stratify needs shuffle=True")
        test = np.arange(n - n_test, n)
        train = np.arange(n - n_test)
    else:
        gen = np.random.default_rng(resolve_seed(seed))
        if stratify is not None:
            labels = _as_numpy(stratify)
            if labels.shape != (n,):
                raise ValueError(f"train_test_split: stratify must have shape ({n},), got {labels.shape}")
            test = _stratified_test_indices(labels, n_test, gen)
        else:
            test = gen.permutation(n)[:n_test]
        mask = np.ones(n, dtype=np.bool_)
        mask[test] = False
        # Shuffle both parts so that classes (or the original order) are not in blocks.
        train = gen.permutation(np.flatnonzero(mask))
        test = gen.permutation(test)
    out: list[np.ndarray] = []
    for a in arrays:
        out.extend((a[train], a[test]))
    return out


def load_digits(*, normalize="scale", flatten: bool = True, split=None, seed: int | None = 0,
                stratify: bool = True, dtype=np.float32):
    """The 8x8 handwritten digits (1,797 images, 10 classes), bundled with the package.

    normalize
        ``"scale"`` (default): pixels / 16, in [0, 1]. ``"standardize"``: per-pixel mean
        0 and std 1, with statistics from the training part only when ``split`` is given
        (from all samples otherwise). ``None``: the stored counts 0..16.
    flatten
        ``True``: images as ``(N, 64)`` rows for an MLP; ``False``: ``(N, 1, 8, 8)``
        NCHW for a convolutional net.
    split
        ``None``: return ``(X, y)`` for all 1,797 samples. A fraction or count: return
        ``(X_train, y_train), (X_test, y_test)`` with that many test samples, stratified
        by class unless ``stratify=False``, shuffled with ``seed`` (default 0, so the
        split is the same everywhere; ``None`` draws it from ``tg.manual_seed``).
    dtype
        Dtype of the images (float32 by default; ``normalize=None`` with ``np.uint8``
        gives the stored bytes). Labels are int64.
    """
    with np.load(DIGITS_PATH) as archive:
        images, labels = archive["images"], archive["labels"].astype(np.int64)
    X = images.reshape(len(images), 64) if flatten else images.reshape(len(images), 1, 8, 8)
    if normalize not in (None, "scale", "standardize"):
        raise ValueError(f"load_digits: normalize must be None, 'scale' or 'standardize', got {normalize!r}")
    dtype = np.dtype(dtype)
    if normalize is not None and dtype.kind != "f":
        raise ValueError(f"load_digits: normalize={normalize!r} needs a floating dtype, got {dtype}")
    X = X.astype(dtype) / dtype.type(16) if normalize == "scale" else X.astype(dtype)
    # Standardise per pixel; for conv input (N,1,8,8) the pixel axes are kept too.
    scaler = Normalize(axis=0) if normalize == "standardize" else None
    if split is None:
        return (scaler.fit_transform(X), labels) if scaler else (X, labels)
    X_train, X_test, y_train, y_test = train_test_split(X, labels, test_size=split, seed=seed,
                                                        stratify=labels if stratify else None)
    if scaler:
        scaler.fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    return (X_train, y_train), (X_test, y_test)
