"""Checkpoints: every piece of training state in one ``.npz``, written atomically.

What goes in: the model's, optimizer's, scheduler's and data loader's ``state_dict()``,
the engine's RNG state and anything else the training loop needs (epoch, step, history).
Arrays are stored as arrays; everything else (numbers, strings, lists, dicts with int or
string keys) goes into one JSON document stored beside them, so the file loads with
``allow_pickle=False``: opening a checkpoint never runs code from it.

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed
over the destination (``os.replace`` is atomic on POSIX and Windows): a crash mid-write
leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .. import backend

FORMAT = "tinygrad_sgd-checkpoint-v1"
_STRUCTURE_KEY = "__structure__"
_FORMAT_KEY = "__format__"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not ours."""


def _encode(value, arrays: dict, path: str):
    """A JSON-able tree; arrays are replaced by a reference to their npz entry."""
    if backend.is_array(value):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint: array of dtype {value.dtype} at {path} cannot be stored without pickle")
        key = f"a{len(arrays)}"
        arrays[key] = backend.to_numpy(value)
        return {"__array__": key}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            return {"__float__": repr(value)}  # JSON has no NaN/inf
        return value
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        entries = []
        for k, v in value.items():
            if not isinstance(k, (str, int, np.integer)) or isinstance(k, bool):
                raise TypeError(f"checkpoint: dict key {k!r} at {path} must be a string or an integer")
            entries.append([k if isinstance(k, str) else int(k), _encode(v, arrays, f"{path}.{k}")])
        return {"__dict__": entries}
    if hasattr(value, "data") and backend.is_array(value.data):  # a Tensor
        return _encode(value.data, arrays, path)
    raise TypeError(f"checkpoint: cannot store a {type(value).__name__} at {path}")


def _decode(node, arrays):
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__float__" in node:
            return float(node["__float__"])
        if "__tuple__" in node:
            return tuple(_decode(v, arrays) for v in node["__tuple__"])
        return {k: _decode(v, arrays) for k, v in node["__dict__"]}
    return node


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (a dict of state_dicts, numbers, strings) to ``path`` atomically."""
    path = os.fspath(path)
    arrays: dict = {}
    structure = _encode(state, arrays, "state")  # raises before any file is touched
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **{_FORMAT_KEY: np.array(FORMAT), _STRUCTURE_KEY: np.array(json.dumps(structure)),
                              **arrays})
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles anything)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _FORMAT_KEY not in archive.files or str(archive[_FORMAT_KEY]) != FORMAT:
                raise CheckpointError(f"{path!r} is not a tinygrad_sgd checkpoint (no '{FORMAT}' marker)")
            arrays = {name: archive[name] for name in archive.files if name not in (_FORMAT_KEY, _STRUCTURE_KEY)}
            structure = json.loads(str(archive[_STRUCTURE_KEY]))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt: {error}") from None
    return _decode(structure, arrays)
