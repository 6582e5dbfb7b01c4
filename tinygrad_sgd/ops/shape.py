"""Shape ops: reshape, permute, broadcast, indexing (and its adjoint, a scatter-add), concat."""

from __future__ import annotations

import numpy as np

from ..autograd.engine import Function
from ..backend import get_array_module, index_add, to_device
from ..tensor import Tensor
from .common import normalize_axis
from .reduce import unbroadcast


class Reshape(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x, shape):
        return x.reshape(shape)

    def backward(self, grad, output):
        return (grad.reshape(self.inputs[0].data.shape),)


class Permute(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, grad, output):
        # Input axis a went to the position i where axes[i] == a: sorting the positions by
        # the axis they hold gives, for each input axis in turn, where to take it from.
        inverse = tuple(sorted(range(len(self.axes)), key=self.axes.__getitem__))
        return (Permute.apply(grad, axes=inverse),)


class BroadcastTo(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x, shape):
        return get_array_module(x).broadcast_to(x, shape)

    def backward(self, grad, output):
        return (unbroadcast(grad, self.inputs[0].data.shape),)


def _is_basic_index(index) -> bool:
    """Ints, slices, None and Ellipsis only: such an index selects each element once."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


def raw_index(index, tensor: Tensor):
    """Replace Tensors (and lists) inside an index with raw arrays on ``tensor``'s device."""
    xp = get_array_module(tensor.data)

    def convert(part):
        if isinstance(part, Tensor):
            if part._device not in (tensor._device, "cpu"):  # a CPU index moves (as in PyTorch)
                raise RuntimeError(f"index tensor is on {part._device} but the indexed tensor is on {tensor._device}")
            if part.data.dtype.kind not in "biu":
                raise IndexError(f"tensors used as indices must be integer or bool, got dtype {part.data.dtype}")
            return to_device(part.data, tensor._device)
        if isinstance(part, list):
            return xp.asarray(part)
        return part

    return tuple(convert(p) for p in index) if isinstance(index, tuple) else convert(index)


class GetItem(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x, index):
        self.index = index
        return x[index]

    def backward(self, grad, output):
        return (IndexAdd.apply(grad, shape=self.inputs[0].shape, index=self.index),)


def _scatter(values, shape: tuple, index):
    """Zeros of ``shape`` with ``values`` added at ``index`` (repeated indices add up)."""
    out = get_array_module(values).zeros(shape, dtype=values.dtype)
    if _is_basic_index(index):
        out[index] = values
    else:
        index_add(out, index, values)
    return out


class IndexAdd(Function):
    """Scatter ``values`` into zeros of ``shape`` at ``index``; repeated indices add up.

    The backward of ``x[index]``; its own backward is ``grad[index]``.
    """
    saves_inputs = False  # its backward reads no input values

    def forward(self, values, shape, index):
        self.index = index
        return _scatter(values, shape, index)

    def backward(self, grad, output):
        return (GetItem.apply(grad, index=self.index),)


class Concat(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, *arrays, axis):
        self.axis = axis
        return get_array_module(arrays[0]).concatenate(arrays, axis=axis)

    def backward(self, grad, output):
        grads, start = [], 0
        prefix = (slice(None),) * self.axis
        for tensor, needed in zip(self.inputs, self.needs_input_grad):
            stop = start + tensor.data.shape[self.axis]
            grads.append(grad[prefix + (slice(start, stop),)] if needed else None)
            start = stop
        return tuple(grads)


def _tensors(values, what: str) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"{what} needs at least one tensor")
    for v in values:
        if not isinstance(v, Tensor):
            raise TypeError(f"{what} expects Tensors, got {type(v).__name__}")
    return values


def concat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis (``torch.cat`` / ``numpy.concatenate``)."""
    tensors = _tensors(tensors, "concat")
    ndim = tensors[0].data.ndim
    for t in tensors:
        if t.data.ndim != ndim:
            raise ValueError(f"concat: all tensors need the same rank, got shapes {[x.shape for x in tensors]}")
    return Concat.apply(*tensors, axis=normalize_axis(axis, ndim))


def stack(tensors, axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis."""
    tensors = _tensors(tensors, "stack")
    shapes = {t.data.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors need the same shape, got {[t.shape for t in tensors]}")
    axis = normalize_axis(axis, tensors[0].data.ndim + 1)
    return Concat.apply(*[t.unsqueeze(axis) for t in tensors], axis=axis)
