"""A data set from the user's own files, for ``tinygrad-sgd train --data PATH`` (and ``predict``).

:func:`read_data` recognises the format by extension and content:

- **CSV**: a header row, then one sample per row. The target is the column named by
  ``target`` (default: the last one); every other column is a numeric feature. Targets
  may be numbers or class names.
- **NumPy .npz**: arrays ``X`` and ``y``, or ``x_train`` and ``y_train`` with optional
  ``x_test`` and ``y_test``. Read without pickle.
- **IDX** (the MNIST format): an image file and a label file, given as the folder that
  holds them or as a glob matching both (``"data/train-*"``). A folder with MNIST's four
  files gives the training pair and the ``t10k``/``test`` pair.
- **CIFAR-10 binary batches**: a folder with ``data_batch_1.bin`` ... (and ``test_batch.bin``),
  or its parent.

Everything that cannot be read raises :class:`DataFileError` (a ``ValueError``) with one
line naming the file and the first problem: the row and column of a non-numeric or
missing cell, a ragged row, a missing target column, a label file shorter than its image
file. Values are checked here, before any training starts.
"""

from __future__ import annotations

import csv
import glob
import gzip
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .formats import _IDX_TYPES, read_cifar10_batch, read_idx

FORMATS = ("a CSV file with a header row, an .npz file with X/y or x_train/y_train, an IDX image/label "
           "pair (their folder or a glob), or a folder of CIFAR-10 batches")


class DataFileError(ValueError):
    """A file that cannot be read as a data set; the message names the file and the problem."""


@dataclass
class DataFile:
    """What :func:`read_data` found. ``y`` is None for a CSV without the target column when
    ``require_target=False`` (data to predict on). ``x_test``/``y_test`` are the file's own
    test part (npz ``x_test``, MNIST ``t10k``, CIFAR ``test_batch``), or None."""

    x: np.ndarray
    y: np.ndarray | None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    kind: str = ""                          # "CSV", "npz", "IDX" or "CIFAR-10"
    feature_names: list[str] | None = None  # CSV: the feature columns, in order
    target_name: str | None = None          # CSV: the target column


def read_data(path, *, target: str | None = None, require_target: bool = True,
              features: list[str] | None = None) -> DataFile:
    """Read the data set at ``path`` (a file, a folder or a glob); see the module docstring.
    ``require_target=False`` accepts a CSV without its target column (``y`` is then None);
    ``features`` picks a CSV's feature columns by name (other columns are ignored)."""
    path = os.fspath(path)
    if glob.has_magic(path) and not os.path.exists(path):
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            raise DataFileError(f"{path}: the pattern matches no file")
        return _read_idx_files(matches, path)
    if os.path.isdir(path):
        return _read_folder(path)
    if not os.path.exists(path):
        raise DataFileError(f"{path} does not exist")
    if _is_npz(path):
        return _read_npz(path)
    if _is_idx(path):
        raise DataFileError(f"{path} is one IDX file; give the folder that holds the image file and its label "
                            "file, or a glob matching both (e.g. 'data/train-*')")
    if _is_csv_path(path) or _looks_like_text(path):
        return read_csv(path, target=target, require_target=require_target, features=features)
    if target is not None:
        raise DataFileError(f"--target names a CSV column, but {path} is not a CSV file")
    raise DataFileError(f"{path}: not a data set this reads; --data takes {FORMATS}")


# ----------------------------------------------------------------------------- sniffing


def _head(path: str, size: int = 512) -> bytes:
    with open(path, "rb") as file:
        head = file.read(size)
    if head[:2] == b"\x1f\x8b":  # gzip: look at what it holds
        try:
            with gzip.open(path, "rb") as file:
                return file.read(size)
        except (OSError, EOFError):
            return head
    return head


def _is_csv_path(path: str) -> bool:
    return path.lower().endswith((".csv", ".csv.gz"))


def _is_npz(path: str) -> bool:
    return os.path.isfile(path) and zipfile.is_zipfile(path)


def _is_idx(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    head = _head(path, 4)
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_TYPES and head[3] > 0


def _looks_like_text(path: str) -> bool:
    head = _head(path)
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"," in head


# ----------------------------------------------------------------------------- CSV

_MISSING = ("", "nan", "na", "n/a", "null", "none", "?")  # how spreadsheets write a missing value


def read_csv(path, *, target: str | None = None, require_target: bool = True,
             features: list[str] | None = None) -> DataFile:
    """A CSV with a header row: float32 features and the target column (numbers, or class
    names as strings). ``target=None`` takes the last column, unless ``require_target`` is
    False (then every column is a feature). ``features`` names the feature columns to take
    (the others are ignored); the target is then read when its column is there.

    Rows are converted as they are read, so a file of 60,000 x 785 numbers needs the
    float32 array and not a Python string per cell."""
    path = os.fspath(path)
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None:
                raise DataFileError(f"{path} is empty (expected a header row, then one sample per row)")
            header = [name.strip() for name in header]
            target_index, feature_columns = _columns(path, header, target, require_target, features)
            names = [header[j] for j in feature_columns]
            rows, target_cells, lines = [], [], []  # lines: each row's line in the file, for messages
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines
                if len(row) != len(header):
                    raise DataFileError(f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
                                        f"{len(header)} (ragged rows)")
                rows.append(_numeric_row([row[j] for j in feature_columns], f"{path}, line {reader.line_num}",
                                         names))
                if target_index is not None:
                    target_cells.append(row[target_index])
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise DataFileError(f"{path}: not a UTF-8 text file, so not a CSV") from None
    except csv.Error as error:
        raise DataFileError(f"{path}: not a readable CSV file ({error})") from None
    if not rows:
        raise DataFileError(f"{path} has a header but no rows")
    y = None if target_index is None else _targets(np.array(target_cells, dtype=str), path, lines,
                                                   header[target_index])
    return DataFile(x=np.stack(rows), y=y, kind="CSV", feature_names=names,
                    target_name=None if target_index is None else header[target_index])


def _columns(path: str, header: list[str], target, require_target: bool, features):
    """``(target index or None, feature column indices)`` from the header."""
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataFileError(f"{path}: the header names column(s) {duplicates} more than once")
    target_index: int | None
    if target is None and require_target:
        if len(header) < 2:
            raise DataFileError(f"{path} has one column; a data set needs features and a target (the last column)")
        target_index = len(header) - 1
    elif target is not None and target in header:
        target_index = header.index(target)
    elif target is not None and require_target:
        raise DataFileError(f"--target {target!r} is not a column of {path} (columns: {', '.join(header)})")
    else:
        target_index = None
    if features is not None:
        missing = [name for name in features if name not in header]
        if missing:
            raise DataFileError(f"{path} lacks the feature column(s) {missing} (it has {header})")
        feature_columns = [header.index(name) for name in features]
    else:
        feature_columns = [j for j in range(len(header)) if j != target_index]
    if not feature_columns:
        raise DataFileError(f"{path}: no feature columns besides the target")
    return target_index, feature_columns


def _numeric_row(cells: list[str], where: str, names: list[str]) -> np.ndarray:
    """One row's feature cells as float32; the first cell that is not a finite number is named."""
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values.astype(np.float32)
    for cell, name in zip(cells, names):
        _check_cell(cell, f"{where}, column {name!r}")
    raise AssertionError("unreachable: some cell failed the vectorised conversion")


def _check_cell(cell: str, where: str) -> float:
    text = cell.strip()
    if text.lower() in _MISSING:
        raise DataFileError(f"{where}: missing value {cell!r}; fill or drop missing values first")
    try:
        value = float(text)
    except ValueError:
        raise DataFileError(f"{where}: {cell!r} is not a number (features must be numeric)") from None
    if not np.isfinite(value):
        raise DataFileError(f"{where}: {cell!r} is not a finite number")
    return value


def _targets(cells: np.ndarray, path: str, lines: list[int], name: str) -> np.ndarray:
    """int64 when every target is an integer literal, float32 when they are numbers,
    else the strings themselves (class names). Missing targets are refused."""
    for i, cell in enumerate(cells):
        if str(cell).strip().lower() in _MISSING:
            raise DataFileError(f"{path}, line {lines[i]}, column {name!r}: missing target {str(cell)!r}")
    try:
        return cells.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        values = cells.astype(np.float64)
    except ValueError:
        return np.char.strip(cells)  # class names
    if not np.isfinite(values).all():
        bad = int(np.argmax(~np.isfinite(values)))
        raise DataFileError(f"{path}, line {lines[bad]}, column {name!r}: target {str(cells[bad])!r} is not finite")
    return values.astype(np.float32)


# ----------------------------------------------------------------------------- npz


def _read_npz(path: str) -> DataFile:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as error:  # object arrays (pickle) and malformed members
        raise DataFileError(f"{path}: cannot be read without pickle or is malformed ({error})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataFileError(f"{path}: truncated or corrupt .npz file ({error})") from None
    if "X" in arrays and "y" in arrays:
        x, y, x_test, y_test = arrays["X"], arrays["y"], None, None
    elif "x_train" in arrays and "y_train" in arrays:
        x, y = arrays["x_train"], arrays["y_train"]
        if ("x_test" in arrays) != ("y_test" in arrays):
            raise DataFileError(f"{path}: has one of x_test and y_test but not the other")
        x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    else:
        raise DataFileError(f"{path}: expected arrays X and y, or x_train and y_train (optionally x_test and "
                            f"y_test); the file has {sorted(arrays)}")
    names = ("X", "y") if "X" in arrays and "y" in arrays else ("x_train", "y_train")
    x, y = _check_pair(x, y, path, *names)
    if x_test is not None:
        x_test, y_test = _check_pair(x_test, arrays["y_test"], path, "x_test", "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataFileError(f"{path}: x_test samples have shape {x_test.shape[1:]}, x_train samples "
                                f"{x.shape[1:]}")
    return DataFile(x=x, y=y, x_test=x_test, y_test=y_test, kind="npz")


def _check_pair(x: np.ndarray, y: np.ndarray, path: str, x_name: str, y_name: str):
    if x.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: {x_name} must be numeric, got dtype {x.dtype}")
    if y.dtype.kind not in "biufU":
        raise DataFileError(f"{path}: {y_name} must be numbers or class names, got dtype {y.dtype}")
    if x.ndim < 2:
        raise DataFileError(f"{path}: {x_name} must have one row per sample (2-D or more), got shape {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataFileError(f"{path}: {y_name} must hold one target per sample (1-D), got shape {y.shape}")
    if len(x) != len(y):
        raise DataFileError(f"{path}: {x_name} has {len(x)} samples but {y_name} has {len(y)}")
    if len(x) == 0:
        raise DataFileError(f"{path}: {x_name} has no samples")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataFileError(f"{path}: {x_name}{list(bad)} is {x[tuple(bad)]} (NaN or infinite)")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = int(np.argmax(~np.isfinite(y)))
        raise DataFileError(f"{path}: {y_name}[{bad}] is {y[bad]} (NaN or infinite)")
    return x, y


# ----------------------------------------------------------------------------- IDX and CIFAR-10


def _read_folder(folder: str) -> DataFile:
    for candidate in (folder, os.path.join(folder, "cifar-10-batches-bin")):
        if glob.glob(os.path.join(glob.escape(candidate), "data_batch_*.bin")) or \
                os.path.isfile(os.path.join(candidate, "test_batch.bin")):
            return _read_cifar(candidate)
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    idx_files = [f for f in files if _is_idx(f)]
    if idx_files:
        return _read_idx_files(idx_files, folder)
    raise DataFileError(f"{folder}: a folder with neither IDX files nor CIFAR-10 batches; --data takes {FORMATS}")


def _read_cifar(folder: str) -> DataFile:
    train_files = sorted(glob.glob(os.path.join(glob.escape(folder), "data_batch_*.bin")))
    test_file = os.path.join(folder, "test_batch.bin")
    parts = [read_cifar10_batch(f) for f in train_files]
    test = read_cifar10_batch(test_file) if os.path.isfile(test_file) else None
    if not parts:  # only the test batch: that is the data
        assert test is not None
        return DataFile(x=test[0], y=test[1], kind="CIFAR-10")
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return DataFile(x=x, y=y, x_test=None if test is None else test[0], y_test=None if test is None else test[1],
                    kind="CIFAR-10")


def _is_test_name(name: str) -> bool:
    name = os.path.basename(name).lower()
    return "t10k" in name or "test" in name


def _read_idx_files(paths: list[str], given: str) -> DataFile:
    """Pair IDX image files (2-D or more) with label files (1-D). Files whose names say
    ``t10k`` or ``test`` form the test pair, the others the training pair; within each,
    the one image file goes with the one label file (or, with more, ``...images...`` with
    ``...labels...`` as MNIST names them)."""
    arrays = {}
    for p in paths:
        if not _is_idx(p):
            raise DataFileError(f"{p} (matched by {given}) is not an IDX file")
        try:
            arrays[p] = read_idx(p)
        except ValueError as error:
            raise DataFileError(str(error)) from None
    images = [p for p in paths if arrays[p].ndim >= 2]
    labels = [p for p in paths if arrays[p].ndim == 1]
    if not images or not labels:
        raise DataFileError(f"{given}: an IDX data set needs an image file and a label file; found "
                            f"{len(images)} image file(s) and {len(labels)} label file(s)")
    pairs = []
    for is_test in (False, True):
        group_images = [p for p in images if _is_test_name(p) == is_test]
        group_labels = [p for p in labels if _is_test_name(p) == is_test]
        if len(group_images) == 1 and len(group_labels) == 1:
            pairs.append((group_images[0], group_labels[0]))
            continue
        for image in group_images:
            wanted = os.path.basename(image).replace("images", "labels").replace("idx3", "idx1")
            match = [lab for lab in group_labels if os.path.basename(lab) == wanted]
            if not match:
                raise DataFileError(f"{image}: no label file {wanted!r} beside it to pair with")
            pairs.append((image, match[0]))
    if not pairs:  # e.g. training images with only test labels
        raise DataFileError(f"{given}: no image file with a label file of the same part (train or test) "
                            f"among {[os.path.basename(p) for p in paths]}")
    train = [pair for pair in pairs if not _is_test_name(pair[0])]
    test = [pair for pair in pairs if _is_test_name(pair[0])]
    if len(train) > 1 or len(test) > 1:
        raise DataFileError(f"{given}: more than one training or test pair of IDX files ({pairs}); "
                            "give a glob that matches one pair")
    for image, label in pairs:
        if len(arrays[label]) != len(arrays[image]):
            raise DataFileError(f"{label} has {len(arrays[label])} labels but {image} has "
                                f"{len(arrays[image])} images")
    if train:
        x, y = arrays[train[0][0]], arrays[train[0][1]]
        x_test, y_test = (arrays[test[0][0]], arrays[test[0][1]]) if test else (None, None)
    else:  # only a test pair: that is the data
        x, y, x_test, y_test = arrays[test[0][0]], arrays[test[0][1]], None, None
    if y.dtype.kind not in "iu":
        raise DataFileError(f"{given}: IDX labels must be integers, got {y.dtype}")
    return DataFile(x=x, y=y.astype(np.int64), x_test=x_test,
                    y_test=None if y_test is None else y_test.astype(np.int64), kind="IDX")
