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
_MAX_DEPTH = 100  # fit's checkpoints nest about 6 deep; far below Python's recursion limit


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


def _decode(node, arrays, depth: int = 0):
    """The tree :func:`_encode` wrote; anything else raises ``CheckpointError``."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"the structure is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(node, list):
        return [_decode(v, arrays, depth + 1) for v in node]
    if isinstance(node, dict):
        if len(node) != 1:
            raise CheckpointError(f"unknown node with keys {sorted(node)[:5]}")
        (tag, value), = node.items()
        if tag == "__array__":
            if not isinstance(value, str) or value not in arrays:
                raise CheckpointError(f"the structure refers to an array {value!r} the file does not hold")
            return arrays[value]
        if tag == "__float__":
            if value not in ("nan", "inf", "-inf"):
                raise CheckpointError(f"bad special float {value!r}")
            return float(value)
        if tag == "__tuple__" and isinstance(value, list):
            return tuple(_decode(v, arrays, depth + 1) for v in value)
        if tag == "__dict__" and isinstance(value, list):
            result = {}
            for entry in value:
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], (str, int))
                        and not isinstance(entry[0], bool)):
                    raise CheckpointError(f"a dict entry must be a [key, value] pair, got {str(entry)[:60]}")
                result[entry[0]] = _decode(entry[1], arrays, depth + 1)
            return result
        raise CheckpointError(f"bad node {tag!r} holding a {type(value).__name__}")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise CheckpointError(f"unexpected {type(node).__name__} in the structure")  # pragma: no cover (JSON types only)


def check_writable(path) -> None:
    """Raise ``CheckpointError`` now if a checkpoint could not be written to ``path`` later
    (a folder in the way, a parent that is a file, a folder without write permission),
    so a run finds out before it trains, not after its first epoch. Creates nothing."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path!r} is a folder; name a file inside it")
    folder = os.path.dirname(path)
    while not os.path.exists(folder):  # save_checkpoint creates the missing folders
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"cannot write checkpoint {path!r}: {folder!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write checkpoint {path!r}: folder {folder!r} is not writable")
    if folder == os.path.dirname(path):  # it exists: try it (os.access says yes to root on a read-only mount)
        try:
            handle, temporary = tempfile.mkstemp(prefix=".checkpoint-probe-", dir=folder)
        except OSError as error:
            raise CheckpointError(f"cannot write checkpoint {path!r}: {error.strerror}") from None
        os.close(handle)
        os.unlink(temporary)


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
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles anything).

    Anything wrong with the file (missing, truncated, not a zip, not ours, a structure
    that does not match its arrays) raises :class:`CheckpointError` naming the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a folder, not a file")
    if not zipfile.is_zipfile(path):  # np.load would guess a pickle and suggest allow_pickle
        with open(path, "rb") as file:
            zip_magic = file.read(4) == b"PK\x03\x04"
        if zip_magic:
            raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt (an incomplete .npz archive)")
        raise CheckpointError(f"{path!r} is not a tinygrad_sgd checkpoint (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _FORMAT_KEY not in archive.files or str(archive[_FORMAT_KEY]) != FORMAT:
                raise CheckpointError(f"{path!r} is not a tinygrad_sgd checkpoint (no '{FORMAT}' marker)")
            arrays = {name: archive[name] for name in archive.files if name not in (_FORMAT_KEY, _STRUCTURE_KEY)}
            structure = json.loads(str(archive[_STRUCTURE_KEY]))
        return _decode(structure, arrays)
    except CheckpointError as error:
        if str(error).startswith(repr(path)) or str(error).startswith(f"checkpoint {path!r}"):
            raise
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {error}") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: its structure is nested too deeply") from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt: {error}") from None
