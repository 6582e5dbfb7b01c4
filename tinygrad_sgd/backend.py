"""The one place that knows NumPy from CuPy.

Every op is written once against an "array module" ``xp`` (``numpy`` or ``cupy``); this
module decides which one an array or a device string belongs to, parses device strings,
detects a GPU without ever crashing at import, and moves arrays between devices.

Device strings follow PyTorch: ``"cpu"``, ``"cuda"`` (the current GPU, stored as
``"cuda:0"``) and ``"cuda:N"``. The default device is ``"cpu"``; set the environment
variable ``TINYGRAD_SGD_DEVICE`` (e.g. ``TINYGRAD_SGD_DEVICE=cuda``) or call
:func:`set_default_device` to change it.
"""

from __future__ import annotations

import contextlib
import os

import numpy

DEVICE_ENV_VAR = "TINYGRAD_SGD_DEVICE"

# CuPy is optional. Importing it succeeds on machines without a GPU (the first device use
# then raises), so "importable" and "usable" are checked separately and lazily.
try:  # pragma: no cover - depends on the machine
    import cupy as _cupy
except Exception:  # ImportError, or a broken CUDA install raising at import
    _cupy = None

_gpu_count: int | None = None


def gpu_count() -> int:
    """Number of CUDA devices CuPy can use (0 when CuPy, the driver or a GPU is missing)."""
    global _gpu_count
    if _gpu_count is None:
        if _cupy is None:
            _gpu_count = 0
        else:
            try:
                _gpu_count = int(_cupy.cuda.runtime.getDeviceCount())
            except Exception:  # CUDARuntimeError without a driver/device
                _gpu_count = 0
    return _gpu_count


def gpu_available() -> bool:
    """True when at least one CUDA device is usable through CuPy."""
    return gpu_count() > 0


def parse_device(device) -> str:
    """Return the canonical device string (``"cpu"`` or ``"cuda:N"``) for ``device``.

    ``None`` means the default device. Raises ``ValueError`` for an unknown string and
    ``RuntimeError`` when a CUDA device is asked for but is not available.
    """
    if device is None:
        return default_device()
    if not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {type(device).__name__}")
    name = device.strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name[5:] if name.startswith("cuda:") else "0"
        if not index_text.isdigit():
            raise ValueError(f"invalid device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        index = int(index_text)
        count = gpu_count()
        if index >= count:
            reason = "CuPy is not installed" if _cupy is None else f"{count} CUDA device(s) found"
            raise RuntimeError(f"device {device!r} is not available: {reason}")
        return f"cuda:{index}"
    raise ValueError(f"invalid device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


_default_device: str | None = None


def default_device() -> str:
    """The device new tensors go to when none is given (``TINYGRAD_SGD_DEVICE`` or cpu)."""
    global _default_device
    if _default_device is None:
        requested = os.environ.get(DEVICE_ENV_VAR, "").strip()
        _default_device = "cpu"  # set first so parse_device(None) below cannot recurse
        if requested:
            _default_device = parse_device(requested)
    return _default_device


def set_default_device(device) -> None:
    """Make ``device`` the default for new tensors (like ``torch.set_default_device``)."""
    global _default_device
    _default_device = parse_device(device if device is not None else "cpu")


def best_device() -> str:
    """``"cuda:0"`` when a GPU is usable, else ``"cpu"`` (what the CLI's main job uses)."""
    return "cuda:0" if gpu_available() else "cpu"


def get_array_module(array_or_device):
    """``numpy`` or ``cupy``: the module that owns an array, or that serves a device string."""
    if array_or_device.__class__ is numpy.ndarray:  # the common case, checked first
        return numpy
    if isinstance(array_or_device, str):
        return numpy if array_or_device == "cpu" else _require_cupy()
    if _cupy is not None and isinstance(array_or_device, _cupy.ndarray):
        return _cupy
    return numpy


def device_of(array) -> str:
    """The canonical device string of a raw NumPy/CuPy array."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return f"cuda:{array.device.id}"
    return "cpu"


def is_array(obj) -> bool:
    """True for a NumPy or CuPy ndarray."""
    return isinstance(obj, numpy.ndarray) or (_cupy is not None and isinstance(obj, _cupy.ndarray))


def _require_cupy():
    if _cupy is None:
        raise RuntimeError("a CUDA device was requested but CuPy is not installed "
                           "(pip install 'tinygrad_sgd[gpu]')")
    return _cupy


_NO_CONTEXT = contextlib.nullcontext()  # reusable: it holds no state


def device_context(device: str):
    """A context manager that makes ``device`` CuPy's current device inside its block
    (it does nothing for the CPU)."""
    if device == "cpu":
        return _NO_CONTEXT
    return _require_cupy().cuda.Device(int(device.split(":")[1]))


def to_device(array, device: str):
    """Return ``array`` on ``device`` (the same object when it is already there)."""
    if device_of(array) == device:
        return array
    if device == "cpu":
        return _cupy.asnumpy(array)
    with device_context(device):
        return _require_cupy().asarray(array)


def to_numpy(array) -> numpy.ndarray:
    """A NumPy array with the data of ``array`` (copied from the GPU when needed)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return numpy.asarray(array)  # ndarrays as they are; NumPy scalars and lists as arrays


def index_add(target, index, values) -> None:
    """``target[index] += values`` that adds once per occurrence of a repeated index.

    Plain ``target[index] += values`` keeps only one of the repeated writes; the gradient
    of an indexing op needs every occurrence summed (a scatter-add).
    """
    if isinstance(target, numpy.ndarray):
        numpy.add.at(target, index, values)
    else:
        import cupyx  # only reached with CuPy arrays

        cupyx.scatter_add(target, index, values)
