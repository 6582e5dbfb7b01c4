"""Helpers shared by the ops: axis normalisation, constants, dtype promotion."""

from __future__ import annotations

import numpy as np

from ..tensor import Tensor


def normalize_axis(axis: int, ndim: int) -> int:
    """A non-negative axis index, or an error that names the axis and the rank."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    bound = max(ndim, 1)  # a 0-d tensor accepts axis 0 and -1, as torch
    if not -bound <= axis < bound:
        raise np.exceptions.AxisError(f"axis {axis} is out of bounds for a tensor with {ndim} dimension(s)")
    return int(axis) % bound


def normalize_axes(axis, ndim: int) -> tuple:
    """``None`` -> every axis; an int or a tuple -> sorted non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if axis.__class__ is int and 0 <= axis < ndim:  # the common case: one valid axis
        return (axis,)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    normalized = tuple(sorted(normalize_axis(a, ndim) for a in axes))
    if ndim == 0:
        return ()  # a 0-d tensor takes axis 0 or -1 and reduces nothing (as torch)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"repeated axis in {axis!r}")
    return normalized


def constant(array, like: Tensor) -> Tensor:
    """A tensor that carries no gradient (masks, scale factors) on ``like``'s device."""
    return Tensor._make(array, like._device)


def keepdims_shape(shape: tuple, axes: tuple) -> tuple:
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def as_float(x):
    """Integer and bool inputs of exp, log, sigmoid, ... compute in float32 (torch's rule)."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)
