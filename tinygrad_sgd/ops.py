"""Every differentiable op, one class each: ``forward`` on raw arrays beside ``backward``.

``forward`` receives NumPy or CuPy arrays and returns an array; it uses array methods or
``xp = get_array_module(x)``, never ``cupy`` by name, so one definition serves both
devices. ``backward`` receives the upstream gradient as a Tensor and returns one
gradient per input, built from Tensor ops: run with grad mode on (``create_graph=True``)
the backward pass is itself recorded, which gives second derivatives with no extra code.

Broadcasting ops reduce their gradients through the one :func:`unbroadcast` helper.
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, index_add, to_device
from .tensor import Function, Tensor, _as_tensor, is_grad_enabled

# ----------------------------------------------------------------------------- helpers


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


def plain_operands(grad, *inputs: Tensor) -> tuple:
    """``(grad, *inputs)`` for the backward formula of an op that ``takes_raw_grad``: the
    raw arrays when nothing records the backward (a plain ``loss.backward()``, where
    ``grad`` already arrives as an array), else the Tensors themselves (``create_graph``).

    Tensors and NumPy/CuPy arrays share ``+ - * / @``, ``reshape``, ``sum(axis=,
    keepdims=)`` and ``shape``, so a formula written with those runs on either: recorded
    as Tensor ops when it must be differentiable, and without a Tensor dispatch per term
    when it need not be.
    """
    if is_grad_enabled():
        return (grad, *inputs)
    if len(inputs) == 1:  # spelled out: a comprehension is a function call in Python 3.11
        return grad, inputs[0].data
    if len(inputs) == 2:
        return grad, inputs[0].data, inputs[1].data
    return (grad, *[t.data for t in inputs])


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` (a Tensor or a raw array) down to ``shape``: the gradient of
    broadcasting ``shape`` up to grad's shape.

    Broadcasting copies a value along new leading axes and along size-1 axes, so its
    gradient adds up the copies: sum over the leading axes and over the axes where
    ``shape`` has 1 but ``grad`` does not.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if shape and 1 not in shape:  # only new leading axes (a bias over a batch): their sum has the shape
        axes = tuple(range(lead))
        return Sum.apply(grad, axis=axes, keepdims=False) if isinstance(grad, Tensor) else grad.sum(axis=axes)
    axes = tuple(range(lead)) + tuple(lead + i for i, size in enumerate(shape)
                                      if size == 1 and grad.shape[lead + i] != 1)
    if not axes:
        return grad.reshape(shape)
    if isinstance(grad, Tensor):
        return Sum.apply(grad, axis=axes, keepdims=True).reshape(shape)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def _keepdims_shape(shape: tuple, axes: tuple) -> tuple:
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


# ----------------------------------------------------------------------------- binary


class Add(Function):
    takes_raw_grad = True

    def forward(self, a, b):
        return a + b

    def backward(self, grad):
        a, b = self.inputs
        return unbroadcast(grad, a.data.shape), unbroadcast(grad, b.data.shape)


class Sub(Function):
    takes_raw_grad = True

    def forward(self, a, b):
        return a - b

    def backward(self, grad):
        a, b = self.inputs
        return (unbroadcast(grad, a.data.shape),
                unbroadcast(-grad, b.data.shape) if self.needs_input_grad[1] else None)


class Mul(Function):
    takes_raw_grad = True

    def forward(self, a, b):
        return a * b

    def backward(self, grad):
        grad, a, b = plain_operands(grad, *self.inputs)
        return (unbroadcast(grad * b, a.shape) if self.needs_input_grad[0] else None,
                unbroadcast(grad * a, b.shape) if self.needs_input_grad[1] else None)


class Div(Function):
    uses_output = True

    def forward(self, a, b):
        return a / b

    def backward(self, grad):
        a, b = self.inputs
        # d(a/b)/da = 1/b;  d(a/b)/db = -a/b^2 = -(a/b)/b
        return (unbroadcast(grad / b, a.data.shape) if self.needs_input_grad[0] else None,
                unbroadcast(-(grad * self.output) / b, b.data.shape) if self.needs_input_grad[1] else None)


class Pow(Function):
    uses_output = True

    def forward(self, a, b):
        return a ** b

    def backward(self, grad):
        a, b = self.inputs
        # d(a^b)/da = b a^(b-1);  d(a^b)/db = a^b log(a)  (only computed when b needs it:
        # log of a negative base would be NaN for the common constant exponent). Where
        # b = 0 (da) or a = 0 with b >= 0 (db) the formula gives 0 * inf; the derivative
        # there is 0, as torch has it.
        zero = constant(get_array_module(grad.data).zeros((), dtype=grad.data.dtype), grad)
        grad_a = grad_b = None
        if self.needs_input_grad[0]:
            grad_a = Where.apply(zero, grad * b * a ** (b - 1), condition=b.data == 0)
            grad_a = unbroadcast(grad_a, a.data.shape)
        if self.needs_input_grad[1]:
            grad_b = Where.apply(zero, grad * self.output * a.log(), condition=(a.data == 0) & (b.data >= 0))
            grad_b = unbroadcast(grad_b, b.data.shape)
        return grad_a, grad_b


class MatMul(Function):
    """``a @ b`` with NumPy's rules: 1-D operands, and batch axes that broadcast."""

    takes_raw_grad = True

    def forward(self, a, b):
        try:
            return a @ b
        except ValueError:  # say what is wrong in the user's terms (NumPy names a gufunc signature)
            if a.ndim == 0 or b.ndim == 0:
                raise ValueError("matmul does not take 0-d operands; use * for scaling") from None
            inner_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
            if a.shape[-1] != inner_b:
                raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned: "
                                 f"{a.shape[-1]} (last axis of a) != {inner_b} (first matrix axis of b)") from None
            raise  # batch axes that do not broadcast: NumPy's message says so

    def backward(self, grad):
        grad, a, b = plain_operands(grad, *self.inputs)
        needs = self.needs_input_grad
        grad_a = grad_b = None
        if a.ndim == 2 and b.ndim == 2:  # two matrices, the common case: dA = G B^T, dB = A^T G
            # An operand laid out column by column (``W.T`` of a row-major W: a step down
            # a column is shorter than a step along a row) gets its gradient computed
            # transposed, (B G^T)^T instead of G B^T: the same numbers, laid out like the
            # operand, so the gradient that reaches W is contiguous and the optimizer reads
            # it at full speed. (``.T`` works on Tensors and arrays alike.)
            a_strides, b_strides = self.inputs[0].data.strides, self.inputs[1].data.strides
            if needs[0]:
                grad_a = (b @ grad.T).T if a_strides[0] < a_strides[1] else grad @ b.T
            if needs[1]:
                grad_b = (grad.T @ a).T if b_strides[0] < b_strides[1] else a.T @ grad
            return grad_a, grad_b
        # Otherwise treat 1-D operands as a row (a) / column (b) matrix, so the same
        # formulas cover all cases, then sum out broadcast batch axes.
        a2 = a if a.ndim > 1 else a.reshape(1, -1)
        b2 = b if b.ndim > 1 else b.reshape(-1, 1)
        g_shape = grad.shape
        if a.ndim == 1:
            g_shape = g_shape[:-1] + (1,) + g_shape[-1:] if b.ndim > 1 else g_shape + (1,)
        if b.ndim == 1:
            g_shape = g_shape + (1,)
        g2 = grad.reshape(g_shape)
        if needs[0]:
            grad_a = unbroadcast(g2 @ _mT(b2), a2.shape).reshape(a.shape)
        if needs[1]:
            grad_b = unbroadcast(_mT(a2) @ g2, b2.shape).reshape(b.shape)
        return grad_a, grad_b


def _mT(x):
    """The last two axes swapped, of a Tensor or a raw array."""
    return x.mT if isinstance(x, Tensor) else x.swapaxes(-1, -2)


class Maximum(Function):
    """Elementwise max (``largest=True``) or min; at ties each side gets half the
    gradient (as torch.maximum/minimum)."""

    def forward(self, a, b, largest):
        self.largest = largest
        xp = get_array_module(a)
        return xp.maximum(a, b) if largest else xp.minimum(a, b)

    def backward(self, grad):
        a, b = self.inputs
        wins = a.data > b.data if self.largest else a.data < b.data
        share_a = (wins + 0.5 * (a.data == b.data)).astype(grad.data.dtype, copy=False)
        return (unbroadcast(grad * constant(share_a, grad), a.data.shape),
                unbroadcast(grad * constant(1 - share_a, grad), b.data.shape))


class Where(Function):
    """``where(condition, a, b)``; ``condition`` is a raw bool array (no gradient)."""

    def forward(self, a, b, condition):
        self.condition = condition
        return get_array_module(a).where(condition, a, b)

    def backward(self, grad):
        a, b = self.inputs
        zero = constant(get_array_module(grad.data).zeros((), dtype=grad.data.dtype), grad)
        return (unbroadcast(Where.apply(grad, zero, condition=self.condition), a.data.shape),
                unbroadcast(Where.apply(zero, grad, condition=self.condition), b.data.shape))


# ----------------------------------------------------------------------------- unary


class Neg(Function):
    takes_raw_grad = True

    def forward(self, x):
        return -x

    def backward(self, grad):
        return (-grad,)


def as_float(x):
    """Integer and bool inputs of exp, log, sigmoid, ... compute in float32 (torch's rule)."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)


class Exp(Function):
    uses_output = True

    def forward(self, x):
        return get_array_module(x).exp(as_float(x))

    def backward(self, grad):
        return (grad * self.output,)  # d e^x = e^x


class Log(Function):
    def forward(self, x):
        return get_array_module(x).log(as_float(x))

    def backward(self, grad):
        return (grad / self.inputs[0],)


class Sqrt(Function):
    uses_output = True

    def forward(self, x):
        return get_array_module(x).sqrt(as_float(x))

    def backward(self, grad):
        return (grad * 0.5 / self.output,)  # d sqrt(x) = 1 / (2 sqrt(x))


class Abs(Function):
    def forward(self, x):
        return abs(x)

    def backward(self, grad):
        x = self.inputs[0]
        return (grad * constant(get_array_module(x.data).sign(x.data), grad),)  # sign(0) = 0, as torch


class Tanh(Function):
    uses_output = True

    def forward(self, x):
        return get_array_module(x).tanh(as_float(x))

    def backward(self, grad):
        out = self.output
        return (grad * (1.0 - out * out),)


class Sigmoid(Function):
    uses_output = True

    def forward(self, x):
        xp = get_array_module(x)
        x = as_float(x)
        # exp(-|x|) never overflows; the two branches are the same function rearranged.
        e = xp.exp(-abs(x))
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def backward(self, grad):
        out = self.output
        return (grad * out * (1.0 - out),)


class ReLU(Function):
    takes_raw_grad = True

    def forward(self, x):
        return get_array_module(x).maximum(x, 0)

    def backward(self, grad):
        mask = self.inputs[0].data > 0
        return (grad * constant(mask, grad) if is_grad_enabled() else grad * mask,)


class LeakyReLU(Function):
    def forward(self, x, negative_slope):
        self.negative_slope = negative_slope
        return get_array_module(x).where(x > 0, x, x * negative_slope)

    def backward(self, grad):
        x = self.inputs[0].data
        slope = get_array_module(x).where(x > 0, 1.0, self.negative_slope).astype(grad.data.dtype)
        return (grad * constant(slope, grad),)


class Softplus(Function):
    """``log(1 + exp(beta x)) / beta``, linear where ``beta x > threshold`` (as torch)."""

    def forward(self, x, beta, threshold):
        self.beta, self.threshold = beta, threshold
        xp = get_array_module(x)
        x = as_float(x)
        z = x * beta
        return xp.where(z > threshold, x, xp.logaddexp(0, z) / beta).astype(x.dtype, copy=False)

    def backward(self, grad):
        x = self.inputs[0]
        linear = constant(x.data * self.beta > self.threshold, grad)
        return (Where.apply(grad, grad * (x * self.beta).sigmoid(), condition=linear.data),)


class Clip(Function):
    def forward(self, x, low, high):
        self.low, self.high = low, high
        return get_array_module(x).clip(x, low, high)

    def backward(self, grad):
        x = self.inputs[0].data
        inside = get_array_module(x).ones(x.shape, dtype=bool)
        if self.low is not None:
            inside &= x >= self.low
        if self.high is not None:
            inside &= x <= self.high
        return (grad * constant(inside, grad),)


class Cast(Function):
    def forward(self, x, dtype):
        return x.astype(dtype)

    def backward(self, grad):
        source = self.inputs[0].data.dtype
        return (grad.to(dtype=source) if source.kind == "f" else None,)


class ToDevice(Function):
    def forward(self, x, device):
        return to_device(x, device)

    def backward(self, grad):
        return (grad.to(self.inputs[0]._device),)


class Clone(Function):
    def forward(self, x):
        return x.copy()

    def backward(self, grad):
        return (grad,)


# ----------------------------------------------------------------------------- reductions


class Sum(Function):
    takes_raw_grad = True
    scale = 1.0  # Mean sets 1 / count

    def forward(self, x, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, grad):
        # Every summed element gets the upstream gradient (times 1/count for a mean).
        shape = self.inputs[0].data.shape
        if not self.keepdims and grad.ndim:  # (a 0-d gradient, of a full sum, broadcasts as it is)
            grad = grad.reshape(_keepdims_shape(shape, self.axis))
        if isinstance(grad, Tensor):
            return ((grad * self.scale if self.scale != 1.0 else grad).broadcast_to(shape),)
        # Filled, not a broadcast view: np.broadcast_to costs ~5 us of Python, and a
        # read-only view would be copied anyway if it became a leaf's .grad.
        xp = get_array_module(grad)
        out = xp.empty(shape, dtype=grad.dtype)
        if self.scale != 1.0:
            xp.multiply(grad, self.scale, out=out)  # scaled and broadcast in one pass
        else:
            out[...] = grad
        return (out,)


class Mean(Sum):
    """The sum over ``axis`` times ``scale = 1 / count`` in one op (count 0 gives NaN)."""

    def forward(self, x, axis, keepdims, scale):
        self.axis, self.keepdims, self.scale = axis, keepdims, scale
        return x.sum(axis=axis, keepdims=keepdims) * scale


class Extremum(Function):
    """Max (``largest=True``) or min over ``axis``; tied extremes share the gradient
    equally (as torch.amax/amin)."""

    uses_output = True

    def forward(self, x, axis, keepdims, largest):
        if any(x.shape[a] == 0 for a in axis):
            raise ValueError(f"{'max' if largest else 'min'} over an empty axis (shape {x.shape}, axis {axis})")
        self.axis, self.keepdims = axis, keepdims
        return x.max(axis=axis, keepdims=keepdims) if largest else x.min(axis=axis, keepdims=keepdims)

    def backward(self, grad):
        x = self.inputs[0].data
        kept = _keepdims_shape(x.shape, self.axis)
        is_extreme = x == self.output.data.reshape(kept)
        share = is_extreme / is_extreme.sum(axis=self.axis, keepdims=True)
        return (grad.reshape(kept) * constant(share.astype(grad.data.dtype, copy=False), grad),)


class LogSumExp(Function):
    """``log(sum(exp(x)))`` computed as ``m + log(sum(exp(x - m)))`` with m = max(x)."""

    uses_output = True

    def forward(self, x, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims
        xp = get_array_module(x)
        x = as_float(x)
        m = x.max(axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)  # all -inf (or inf) rows: do not subtract inf
        out = xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True)) + m
        return out if keepdims else out.reshape([s for i, s in enumerate(out.shape) if i not in axis])

    def backward(self, grad):
        x = self.inputs[0]
        kept = _keepdims_shape(x.data.shape, self.axis)
        return (grad.reshape(kept) * (x - self.output.reshape(kept)).exp(),)  # softmax weights


class Softmax(Function):
    uses_output = True

    def forward(self, x, axis):
        self.axis = axis
        xp = get_array_module(x)
        x = as_float(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def backward(self, grad):
        s = self.output
        # dx = s * (g - sum(g * s)): the Jacobian diag(s) - s s^T applied to g
        return (s * (grad - (grad * s).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    takes_raw_grad = True
    uses_output = True

    def forward(self, x, axis):
        self.axis = axis
        xp = get_array_module(x)
        x = as_float(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(self, grad):
        # dx = g - softmax(x) * sum(g)
        if is_grad_enabled():
            return (grad - self.output.exp() * grad.sum(axis=self.axis, keepdims=True),)
        return (grad - get_array_module(grad).exp(self.output.data) * grad.sum(axis=self.axis, keepdims=True),)


# ----------------------------------------------------------------------------- shape


class Reshape(Function):
    takes_raw_grad = True

    def forward(self, x, shape):
        return x.reshape(shape)

    def backward(self, grad):
        return (grad.reshape(self.inputs[0].data.shape),)


class Permute(Function):
    takes_raw_grad = True

    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, grad):
        # Input axis a went to the position i where axes[i] == a: sorting the positions by
        # the axis they hold gives, for each input axis in turn, where to take it from.
        inverse = tuple(sorted(range(len(self.axes)), key=self.axes.__getitem__))
        if is_grad_enabled():
            return (Permute.apply(grad, axes=inverse),)
        return (grad.transpose(inverse),)


class BroadcastTo(Function):
    takes_raw_grad = True

    def forward(self, x, shape):
        return get_array_module(x).broadcast_to(x, shape)

    def backward(self, grad):
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
            if part._device != tensor._device:
                raise RuntimeError(f"index tensor is on {part._device} but the indexed tensor is on {tensor._device}")
            if part.data.dtype.kind not in "biu":
                raise IndexError(f"tensors used as indices must be integer or bool, got dtype {part.data.dtype}")
            return part.data
        if isinstance(part, list):
            return xp.asarray(part)
        return part

    return tuple(convert(p) for p in index) if isinstance(index, tuple) else convert(index)


class GetItem(Function):
    takes_raw_grad = True

    def forward(self, x, index):
        self.index = index
        return x[index]

    def backward(self, grad):
        shape = self.inputs[0].data.shape
        if is_grad_enabled():
            return (IndexAdd.apply(grad, shape=shape, index=self.index),)
        return (_scatter(grad, shape, self.index),)


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

    def forward(self, values, shape, index):
        self.index = index
        return _scatter(values, shape, index)

    def backward(self, grad):
        return (GetItem.apply(grad, index=self.index),)


class Concat(Function):
    def forward(self, *arrays, axis):
        self.axis = axis
        return get_array_module(arrays[0]).concatenate(arrays, axis=axis)

    def backward(self, grad):
        grads, start = [], 0
        prefix = (slice(None),) * self.axis
        for tensor, needed in zip(self.inputs, self.needs_input_grad):
            stop = start + tensor.data.shape[self.axis]
            grads.append(grad[prefix + (slice(start, stop),)] if needed else None)
            start = stop
        return tuple(grads)


# ----------------------------------------------------------------------------- functions


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


def where(condition, a, b) -> Tensor:
    """Elements of ``a`` where ``condition`` holds, else of ``b`` (gradients to a and b)."""
    like = next((v for v in (a, b, condition) if isinstance(v, Tensor)), None)
    if like is None:
        raise TypeError("where needs at least one Tensor argument")
    a, b = _as_tensor(a, like), _as_tensor(b, like)
    if a.data.dtype != b.data.dtype and a.data.dtype.kind == b.data.dtype.kind == "f":
        raise TypeError(f"where: a and b have different dtypes {a.data.dtype} and {b.data.dtype}")
    cond = condition.data if isinstance(condition, Tensor) else get_array_module(like.data).asarray(condition)
    if isinstance(condition, Tensor) and condition._device != like._device:
        raise RuntimeError(f"where: condition is on {condition._device} but the values on {like._device}")
    if cond.dtype != np.bool_:
        raise TypeError(f"where: condition must be bool, got dtype {cond.dtype}")
    return Where.apply(a, b, condition=cond)


def maximum(a, b) -> Tensor:
    """Elementwise maximum; ties split the gradient in half (as torch.maximum)."""
    like = a if isinstance(a, Tensor) else b
    return Maximum.apply(_as_tensor(a, like), _as_tensor(b, like), largest=True)


def minimum(a, b) -> Tensor:
    """Elementwise minimum; ties split the gradient in half (as torch.minimum)."""
    like = a if isinstance(a, Tensor) else b
    return Maximum.apply(_as_tensor(a, like), _as_tensor(b, like), largest=False)


_COMPARISONS = {"less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
                "logical_and", "logical_or"}


def compare(name: str, a: Tensor, other) -> Tensor:
    """A comparison or logical op: a bool tensor outside the graph."""
    assert name in _COMPARISONS
    b = _as_tensor(other, a)
    if b._device != a._device:
        raise RuntimeError(f"{name}: expected both tensors on the same device, found {a._device} and {b._device}")
    xp = get_array_module(a.data)
    return Tensor._make(getattr(xp, name)(a.data, b.data), a._device)


def arg_reduce(name: str, x: Tensor, axis, keepdims: bool) -> Tensor:
    """``argmax``/``argmin`` (int64, no gradient); ``axis=None`` indexes the flattened tensor."""
    if axis is not None:
        axis = normalize_axis(axis, x.data.ndim)
    result = getattr(x.data, name)(axis=axis, keepdims=keepdims)
    xp = get_array_module(x.data)
    return Tensor._make(xp.asarray(result, dtype=np.int64), x._device)
