"""Reductions: sum, mean, max/min, logsumexp, softmax, log-softmax, argmax/argmin, and
:func:`unbroadcast`, the one helper every broadcasting op reduces its gradient through."""

from __future__ import annotations

import numpy as np

from ..autograd.engine import Function
from ..backend import get_array_module
from ..tensor import Tensor
from .common import as_float, constant, keepdims_shape, normalize_axis


def unbroadcast(grad: Tensor, shape: tuple) -> Tensor:
    """Sum ``grad`` down to ``shape``: the gradient of broadcasting ``shape`` up to
    grad's shape.

    Broadcasting copies a value along new leading axes and along size-1 axes, so its
    gradient adds up the copies: sum over the leading axes and over the axes where
    ``shape`` has 1 but ``grad`` does not.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if shape and 1 not in shape:  # only new leading axes (a bias over a batch): one sum
        return Sum.apply(grad, axis=tuple(range(lead)), keepdims=False)
    axes = tuple(range(lead)) + tuple(lead + i for i, size in enumerate(shape)
                                      if size == 1 and grad.shape[lead + i] != 1)
    if not axes:
        return grad.reshape(shape)
    return Sum.apply(grad, axis=axes, keepdims=True).reshape(shape)


class Sum(Function):
    saves_inputs = False  # its backward reads only the input shape
    scale = 1.0  # Mean sets 1 / count

    def forward(self, x, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, grad, output):
        # Every summed element gets the upstream gradient (times 1/count for a mean).
        shape = self.inputs[0].shape
        if not self.keepdims and grad.ndim:  # (a 0-d gradient, of a full sum, broadcasts as it is)
            grad = grad.reshape(keepdims_shape(shape, self.axis))
        return ((grad * self.scale if self.scale != 1.0 else grad).broadcast_to(shape),)


class Mean(Sum):
    """The sum over ``axis`` times ``scale = 1 / count`` in one op (count 0 gives NaN)."""

    def forward(self, x, axis, keepdims, scale):
        self.axis, self.keepdims, self.scale = axis, keepdims, scale
        return x.sum(axis=axis, keepdims=keepdims) * scale


class Extremum(Function):
    """Max (``largest=True``) or min over ``axis``; tied extremes share the gradient
    equally (as torch.amax/amin)."""

    def forward(self, x, axis, keepdims, largest):
        if any(x.shape[a] == 0 for a in axis):
            raise ValueError(f"{'max' if largest else 'min'} over an empty axis (shape {x.shape}, axis {axis})")
        self.axis, self.keepdims = axis, keepdims
        return x.max(axis=axis, keepdims=keepdims) if largest else x.min(axis=axis, keepdims=keepdims)

    def backward(self, grad, output):
        x = self.inputs[0].data
        kept = keepdims_shape(x.shape, self.axis)
        is_extreme = x == output.data.reshape(kept)
        share = is_extreme / is_extreme.sum(axis=self.axis, keepdims=True)
        return (grad.reshape(kept) * constant(share.astype(grad.data.dtype, copy=False), grad),)


class LogSumExp(Function):
    """``log(sum(exp(x)))`` computed as ``m + log(sum(exp(x - m)))`` with m = max(x)."""

    def forward(self, x, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims
        xp = get_array_module(x)
        x = as_float(x)
        m = x.max(axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)  # all -inf (or inf) rows: do not subtract inf
        out = xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True)) + m
        return out if keepdims else out.reshape([s for i, s in enumerate(out.shape) if i not in axis])

    def backward(self, grad, output):
        x = self.inputs[0]
        kept = keepdims_shape(x.data.shape, self.axis)
        return (grad.reshape(kept) * (x - output.reshape(kept)).exp(),)  # softmax weights


class Softmax(Function):
    def forward(self, x, axis):
        self.axis = axis
        xp = get_array_module(x)
        x = as_float(x)
        if x.size == 0:  # max() of an empty axis raises; softmax of nothing is nothing (torch)
            return xp.empty_like(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def backward(self, grad, output):
        s = output
        # dx = s * (g - sum(g * s)): the Jacobian diag(s) - s s^T applied to g
        return (s * (grad - (grad * s).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    def forward(self, x, axis):
        self.axis = axis
        xp = get_array_module(x)
        x = as_float(x)
        if x.size == 0:  # as Softmax: an empty result, not max()'s error
            return xp.empty_like(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(self, grad, output):
        # dx = g - softmax(x) * sum(g), and softmax(x) = exp(log_softmax(x))
        return (grad - output.exp() * grad.sum(axis=self.axis, keepdims=True),)


def arg_reduce(name: str, x: Tensor, axis, keepdims: bool) -> Tensor:
    """``argmax``/``argmin`` (int64, no gradient); ``axis=None`` indexes the flattened tensor."""
    if axis is not None:
        axis = normalize_axis(axis, x.data.ndim)
    result = getattr(x.data, name)(axis=axis, keepdims=keepdims)
    xp = get_array_module(x.data)
    return Tensor._make(xp.asarray(result, dtype=np.int64), x._device)
