"""Elementwise ops: arithmetic, matmul, activations, comparisons, casts and device moves.

``forward`` works on NumPy or CuPy arrays alike (array methods, or
``xp = get_array_module(x)``; never ``cupy`` by name). ``backward`` is written with Tensor
ops, so a backward run with ``create_graph=True`` is itself differentiable.
"""

from __future__ import annotations

import math

import numpy as np

from ..autograd.engine import Function
from .. import backend
from ..backend import get_array_module, to_device
from ..tensor import Tensor, _as_tensor
from .common import as_float, constant
from .reduce import unbroadcast


# ----------------------------------------------------------------------------- binary


class Add(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, a, b):
        return a + b

    def backward(self, grad, output):
        a, b = self.inputs
        return unbroadcast(grad, a.data.shape), unbroadcast(grad, b.data.shape)


class Sub(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, a, b):
        return a - b

    def backward(self, grad, output):
        a, b = self.inputs
        return (unbroadcast(grad, a.data.shape),
                unbroadcast(-grad, b.data.shape) if self.needs_input_grad[1] else None)


class Mul(Function):
    def forward(self, a, b):
        return a * b

    def backward(self, grad, output):
        a, b = self.inputs
        return (unbroadcast(grad * b, a.shape) if self.needs_input_grad[0] else None,
                unbroadcast(grad * a, b.shape) if self.needs_input_grad[1] else None)


class Div(Function):
    def forward(self, a, b):
        return a / b

    def backward(self, grad, output):
        a, b = self.inputs
        # d(a/b)/da = 1/b;  d(a/b)/db = -a/b^2 = -(a/b)/b
        return (unbroadcast(grad / b, a.data.shape) if self.needs_input_grad[0] else None,
                unbroadcast(-(grad * output) / b, b.data.shape) if self.needs_input_grad[1] else None)


class Pow(Function):
    def forward(self, a, b):
        return a ** b

    def backward(self, grad, output):
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
            grad_b = Where.apply(zero, grad * output * a.log(), condition=(a.data == 0) & (b.data >= 0))
            grad_b = unbroadcast(grad_b, b.data.shape)
        return grad_a, grad_b


class MatMul(Function):
    """``a @ b`` with NumPy's rules: 1-D operands, and batch axes that broadcast."""

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

    def backward(self, grad, output):
        a, b = self.inputs
        needs = self.needs_input_grad
        if a.ndim == 2 and b.ndim == 2:  # two matrices, the common case: dA = G B^T, dB = A^T G
            return (grad @ b.T if needs[0] else None), (a.T @ grad if needs[1] else None)
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
        grad_a = unbroadcast(g2 @ b2.mT, a2.shape).reshape(a.shape) if needs[0] else None
        grad_b = unbroadcast(a2.mT @ g2, b2.shape).reshape(b.shape) if needs[1] else None
        return grad_a, grad_b


class Maximum(Function):
    """Elementwise max (``largest=True``) or min; at ties each side gets half the
    gradient (as torch.maximum/minimum)."""

    def forward(self, a, b, largest):
        self.largest = largest
        xp = get_array_module(a)
        return xp.maximum(a, b) if largest else xp.minimum(a, b)

    def backward(self, grad, output):
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

    def backward(self, grad, output):
        a, b = self.inputs
        zero = constant(get_array_module(grad.data).zeros((), dtype=grad.data.dtype), grad)
        return (unbroadcast(Where.apply(grad, zero, condition=self.condition), a.data.shape),
                unbroadcast(Where.apply(zero, grad, condition=self.condition), b.data.shape))


# ----------------------------------------------------------------------------- unary


class Neg(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x):
        return -x

    def backward(self, grad, output):
        return (-grad,)


class Exp(Function):
    def forward(self, x):
        return get_array_module(x).exp(as_float(x))

    def backward(self, grad, output):
        return (grad * output,)  # d e^x = e^x


class Log(Function):
    def forward(self, x):
        return get_array_module(x).log(as_float(x))

    def backward(self, grad, output):
        return (grad / self.inputs[0],)


class Sqrt(Function):
    def forward(self, x):
        return get_array_module(x).sqrt(as_float(x))

    def backward(self, grad, output):
        return (grad * 0.5 / output,)  # d sqrt(x) = 1 / (2 sqrt(x))


class SqrtOfVariance(Function):
    """``sqrt(v)`` as ``std`` takes it: the gradient is 0 where the result is 0 (a constant
    input has no spread to move), as torch's ``std``; plain ``sqrt`` would give
    ``inf * 0 = NaN`` there."""

    def forward(self, v):
        return get_array_module(v).sqrt(v)

    def backward(self, grad, output):
        zero_std = output.data == 0
        xp = get_array_module(grad.data)
        zero = constant(xp.zeros((), dtype=grad.data.dtype), grad)
        one = constant(xp.ones((), dtype=grad.data.dtype), grad)
        safe = Where.apply(one, output, condition=zero_std)  # no division by 0 (and no warning)
        return (Where.apply(zero, grad * 0.5 / safe, condition=zero_std),)


class Abs(Function):
    def forward(self, x):
        return abs(x)

    def backward(self, grad, output):
        x = self.inputs[0]
        return (grad * constant(get_array_module(x.data).sign(x.data), grad),)  # sign(0) = 0, as torch


class Tanh(Function):
    def forward(self, x):
        return get_array_module(x).tanh(as_float(x))

    def backward(self, grad, output):
        out = output
        return (grad * (1.0 - out * out),)


class Sigmoid(Function):
    def forward(self, x):
        xp = get_array_module(x)
        x = as_float(x)
        # exp(-|x|) never overflows; the two branches are the same function rearranged.
        e = xp.exp(-abs(x))
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def backward(self, grad, output):
        out = output
        return (grad * out * (1.0 - out),)


class ReLU(Function):
    def forward(self, x):
        return get_array_module(x).maximum(x, 0)

    def backward(self, grad, output):
        return (grad * constant(self.inputs[0].data > 0, grad),)


class LeakyReLU(Function):
    def forward(self, x, negative_slope):
        self.negative_slope = negative_slope
        return get_array_module(x).where(x > 0, x, x * negative_slope)

    def backward(self, grad, output):
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

    def backward(self, grad, output):
        x = self.inputs[0]
        linear = constant(x.data * self.beta > self.threshold, grad)
        return (Where.apply(grad, grad * (x * self.beta).sigmoid(), condition=linear.data),)


class Clip(Function):
    def forward(self, x, low, high):
        self.low, self.high = low, high
        return get_array_module(x).clip(x, low, high)

    def backward(self, grad, output):
        x = self.inputs[0].data
        inside = get_array_module(x).ones(x.shape, dtype=bool)
        if self.low is not None:
            inside &= x >= self.low
        if self.high is not None:
            inside &= x <= self.high
        return (grad * constant(inside, grad),)


_ERF_SERIES_TERMS = 30   # |x| < 2: the series' terms fall below 1e-17 of its sum by then


_ERF_FRACTION_DEPTH = 40  # |x| >= 2: the continued fraction has converged to ~1e-16 by then


def _erf_array(x):
    """The error function in float64 with ~1e-15 absolute accuracy, on any array module.

    NumPy has no ``erf``. For ``|x| < 2`` the everywhere-positive series
    ``erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (2n+1)!!`` (no cancellation);
    for ``|x| >= 2`` the continued fraction
    ``erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))``
    evaluated bottom-up at fixed depth; odd symmetry for negative ``x``.
    """
    xp = backend.get_array_module(x)
    a = xp.abs(x.astype(np.float64))
    out = xp.empty_like(a)
    small = a < 2.0
    s = a[small]
    s2 = s * s
    term, total = s.copy(), s.copy()
    for n in range(1, _ERF_SERIES_TERMS):
        term *= (2.0 / (2 * n + 1)) * s2
        total += term
    out[small] = (2.0 / math.sqrt(math.pi)) * xp.exp(-s2) * total
    large = ~small
    b = a[large]
    with np.errstate(over="ignore", invalid="ignore"):  # inf in: 1/inf is fine, erf(inf) = 1
        fraction = b.copy()
        for k in range(_ERF_FRACTION_DEPTH, 0, -1):
            fraction = b + (0.5 * k) / fraction
        out[large] = 1.0 - xp.exp(-b * b) / (math.sqrt(math.pi) * fraction)
    out = xp.where(xp.isnan(a), a, out)
    return (xp.sign(x) * out).astype(x.dtype, copy=False)


class Erf(Function):
    """``erf(x)``; ``d erf(x)/dx = 2/sqrt(pi) exp(-x^2)``."""

    def forward(self, x):
        return _erf_array(x)

    def backward(self, grad, output):
        x = self.inputs[0]
        return (grad * (x * x * -1.0).exp() * (2.0 / math.sqrt(math.pi)),)


# ----------------------------------------------------------------------------- casts and moves


class Cast(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x, dtype):
        return x.astype(dtype)

    def backward(self, grad, output):
        source = self.inputs[0].data.dtype
        return (grad.to(dtype=source) if source.kind == "f" else None,)


class ToDevice(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x, device):
        self.device = device
        return to_device(x, device)

    def output_device(self, input_device: str) -> str:
        return self.device

    def backward(self, grad, output):
        return (grad.to(self.inputs[0]._device),)


class Clone(Function):
    saves_inputs = False  # its backward reads no input values

    def forward(self, x):
        return x.copy()

    def backward(self, grad, output):
        return (grad,)


# ----------------------------------------------------------------------------- functions


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
                "bitwise_and", "bitwise_or"}


def compare(name: str, a: Tensor, other) -> Tensor:
    """A comparison (a bool tensor), or ``&`` / ``|`` (``bitwise_and`` / ``bitwise_or``:
    logical on bool tensors, bitwise on integer ones, as torch); outside the graph."""
    assert name in _COMPARISONS
    b = _as_tensor(other, a)
    if b._device != a._device:
        raise RuntimeError(f"{name}: expected both tensors on the same device, found {a._device} and {b._device}")
    if name.startswith("bitwise") and not (a.data.dtype.kind in "biu" and b.data.dtype.kind in "biu"):
        raise TypeError(f"{name}: needs bool or integer tensors, got dtypes {a.data.dtype} and {b.data.dtype}")
    xp = get_array_module(a.data)
    return Tensor._make(getattr(xp, name)(a.data, b.data), a._device)
