"""Tensor: an n-dimensional array that records the ops applied to it, and reverse-mode
autodiff over that record.

How it works, in one paragraph. Every differentiable op is a :class:`Function` subclass
(in ``ops.py``) with ``forward`` on raw arrays and ``backward`` written with Tensor ops.
Calling an op makes a Function instance that remembers its input tensors; the output
tensor points back to it through ``_ctx``. ``loss.backward()`` sorts the recorded graph
topologically (iteratively, so a chain of 100,000 ops is fine), walks it from the loss
back to the leaves, and asks each Function for the gradient of each input. Because
``backward`` is written with Tensor ops, running it with grad mode on (``create_graph``)
records the backward pass too, which is how second derivatives (Hessian-vector products)
come out. With ``create_graph=False`` backward runs under ``no_grad`` and records
nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import sys
import weakref

import numpy as np

from . import backend, rng
from .sparse import SparseRowGrad

# ----------------------------------------------------------------------------- grad mode

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager: ops inside record no graph (evaluation, optimizer updates).

    Like ``torch.no_grad``. The mode is process-wide, not per thread.
    """
    return _grad_mode(False)


def enable_grad():
    """Context manager that turns recording back on inside a ``no_grad`` block."""
    return _grad_mode(True)


# ----------------------------------------------------------------------------- dtypes

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
float16 = np.dtype(np.float16)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)


def _check_dtype(dtype: np.dtype, what: str = "Tensor") -> np.dtype:
    """Allow bool, integer and real floating dtypes; name anything else in the error."""
    if dtype.kind not in "biuf":
        raise TypeError(f"{what}: unsupported dtype {dtype} (kind {dtype.kind!r}); tensors hold "
                        "bool, integer or floating-point numbers, not objects, strings or complex")
    return dtype


def as_raw_array(data, what: str):
    """``data`` (a NumPy/CuPy array, or a list/scalar made into a NumPy array) with its
    dtype checked; ``what`` names the caller in the errors."""
    if backend.is_array(data):
        array = data
    else:
        try:
            array = np.asarray(data)
        except (ValueError, TypeError) as error:
            raise TypeError(f"{what}: cannot build a tensor from {type(data).__name__}: {error}") from None
    _check_dtype(array.dtype, what)
    return array


def _default_dtype_for(array) -> np.dtype:
    """float data -> float32 (the deep-learning default); ints and bools keep their type."""
    return float32 if array.dtype.kind == "f" else array.dtype


# ----------------------------------------------------------------------------- Tensor

_new_object = object.__new__  # Tensor defines no __new__: this is what Tensor.__new__ runs


class Tensor:
    """An array on a device (NumPy on ``"cpu"``, CuPy on ``"cuda:N"``) with autograd.

    ``Tensor(data, requires_grad=False, dtype=None, device=None)`` copies ``data`` (a
    list, scalar, NumPy/CuPy array or Tensor), like ``torch.tensor``. Floating-point data
    becomes float32 unless ``dtype`` says otherwise (``dtype=tg.float64`` for gradient
    checks); integer and bool data keep their type (labels, indices, masks). Only
    floating-point tensors can require gradients.
    """

    __slots__ = ("data", "grad", "_requires_grad", "_ctx", "_device", "_retains_grad", "_grad_buffer",
                 "_version_counter", "_post_accumulate_grad_hooks", "__weakref__")

    # Let NumPy hand `ndarray * tensor` to Tensor.__rmul__ instead of looping over elements.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        target_device = backend.parse_device(device) if device is not None else (
            backend.device_of(data) if backend.is_array(data) else backend.default_device())
        xp = backend.get_array_module(target_device)
        array = backend.to_device(as_raw_array(data, "Tensor"), target_device)  # checked before any copy
        dtype = _check_dtype(np.dtype(dtype)) if dtype is not None else _default_dtype_for(array)
        with backend.device_context(target_device):
            array = xp.array(array, dtype=dtype, copy=True)
        self._init(array, target_device, requires_grad)

    def _init(self, array, device: str, requires_grad: bool) -> None:
        self.data = array
        self.grad = None
        self._ctx = None
        self._device = device
        self._retains_grad = False
        self._grad_buffer = None
        self._version_counter = [0]
        self._post_accumulate_grad_hooks = None
        self._requires_grad = False
        if requires_grad:
            self.requires_grad = True

    @classmethod
    def _make(cls, array, device: str, requires_grad: bool = False, ctx=None) -> "Tensor":
        """Wrap a raw array without copying or checks (the ops' fast path); ``ctx`` is
        the Function that produced it, for an op's recorded result."""
        tensor = _new_object(cls)
        tensor.data = array
        tensor.grad = None
        tensor._ctx = ctx
        tensor._device = device
        tensor._retains_grad = False
        tensor._grad_buffer = None
        tensor._version_counter = [0]
        tensor._post_accumulate_grad_hooks = None
        tensor._requires_grad = requires_grad
        return tensor

    @classmethod
    def from_array(cls, array, requires_grad: bool = False) -> "Tensor":
        """Wrap a NumPy/CuPy array *without copying* (like ``torch.from_numpy``)."""
        if not backend.is_array(array):
            raise TypeError(f"from_array expects a NumPy or CuPy array, got {type(array).__name__}")
        _check_dtype(array.dtype, "from_array")
        tensor = cls._make(array, backend.device_of(array))
        tensor.requires_grad = requires_grad
        return tensor

    # ------------------------------------------------------------------ attributes
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        value = bool(value)
        if value and self.data.dtype.kind != "f":
            raise RuntimeError(f"only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        if not value and self._ctx is not None:
            raise RuntimeError("requires_grad can only be switched off on a leaf tensor; use .detach()")
        self._requires_grad = value

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        self.requires_grad = requires_grad
        return self

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def device(self) -> str:
        return self._device

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def dim(self) -> int:
        return self.data.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def size(self, dim: int | None = None):
        """The shape (PyTorch's ``size()``); ``size(dim)`` is one axis' length.

        NumPy's ``.size`` attribute (element count) is ``numel()`` here.
        """
        return self.data.shape if dim is None else self.data.shape[dim]

    @property
    def is_leaf(self) -> bool:
        """True for tensors made by the user (or under no_grad): backward fills their .grad."""
        return self._ctx is None

    @property
    def grad_fn(self):
        """The Function that produced this tensor, or None for a leaf."""
        return self._ctx

    def register_post_accumulate_grad_hook(self, hook) -> None:
        """Call ``hook(tensor)`` each time ``backward()`` has added a gradient into this
        leaf's ``.grad`` (``torch.Tensor.register_post_accumulate_grad_hook``): how
        ``DistributedDataParallel`` starts averaging a gradient as soon as it is complete."""
        if self._ctx is not None:
            raise RuntimeError("post-accumulate-grad hooks can only be registered on leaf tensors")
        if not self._requires_grad:
            raise RuntimeError("cannot register a post-accumulate-grad hook on a tensor that does not require grad")
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        if self._post_accumulate_grad_hooks is None:
            self._post_accumulate_grad_hooks = []
        self._post_accumulate_grad_hooks.append(hook)

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (for inspection)."""
        if not self._requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        self._retains_grad = True

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __repr__(self) -> str:
        body = np.array2string(backend.to_numpy(self.data), separator=", ", precision=4, threshold=50)
        extras = []
        if self._device != "cpu":
            extras.append(f"device='{self._device}'")
        if self.data.dtype != float32:
            extras.append(f"dtype={self.data.dtype}")
        if self._ctx is not None:
            extras.append(f"grad_fn=<{type(self._ctx).__name__}>")
        elif self._requires_grad:
            extras.append("requires_grad=True")
        return f"Tensor({body}{''.join(', ' + e for e in extras)})"

    # Tensors compare elementwise, so hashing falls back to identity (like torch).
    __hash__ = object.__hash__

    # ------------------------------------------------------------------ conversion
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (the same memory on the CPU, a copy from a GPU)."""
        if self._requires_grad:
            raise RuntimeError("numpy() on a tensor that requires grad; call .detach().numpy()")
        return backend.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.data.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return backend.to_numpy(self.data).tolist()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with shape {self.data.shape} is ambiguous")
        return bool(self.item())

    def detach(self) -> "Tensor":
        """A new leaf sharing the same data (and version counter), cut from the graph."""
        tensor = Tensor._make(self.data, self._device)
        tensor._version_counter = self._version_counter
        return tensor

    @property
    def _version(self) -> int:
        """How many times the data was changed in place (PyTorch's ``_version``)."""
        return self._version_counter[0]

    def _mark_dirty(self) -> None:
        """Record an in-place change of the data (``x[...] = v``, an optimizer step):
        a backward that saved this tensor before the change then refuses to run."""
        self._version_counter[0] += 1

    def to(self, device=None, dtype=None) -> "Tensor":
        """Move to ``device`` and/or cast to ``dtype`` (differentiable, like torch)."""
        if isinstance(device, (np.dtype, type)) and dtype is None:
            device, dtype = None, device
        result = self
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            result = ops.Cast.apply(result, dtype=_check_dtype(np.dtype(dtype)))
        if device is not None:
            target = backend.parse_device(device)
            if target != result._device:
                result = ops.ToDevice.apply(result, device=target)
        return result

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self, index: int = 0) -> "Tensor":
        return self.to(f"cuda:{index}")

    def astype(self, dtype) -> "Tensor":
        return self.to(dtype=dtype)

    def float(self) -> "Tensor":
        return self.to(dtype=float32)

    def double(self) -> "Tensor":
        return self.to(dtype=float64)

    def long(self) -> "Tensor":
        return self.to(dtype=int64)

    def clone(self) -> "Tensor":
        return ops.Clone.apply(self)

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is the upstream gradient (needed unless ``self`` has one element).
        Gradients *add* into ``.grad`` across calls until they are zeroed: that is what
        makes gradient accumulation over micro-batches one line of user code (call
        ``backward`` k times, then step), and why training loops call ``zero_grad()``.
        The graph's saved arrays are freed afterwards unless ``retain_graph=True``;
        ``create_graph=True`` records the backward pass so the gradients can be
        differentiated again.
        """
        if not self._requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad and has no grad_fn "
                               "(set requires_grad=True on the leaves, and do not build the graph "
                               "under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() on a non-scalar tensor of shape {self.data.shape} needs "
                                   "grad= (the upstream gradient, same shape)")
        if retain_graph is None:
            retain_graph = create_graph
        run_backward([self], [grad], retain_graph=retain_graph, create_graph=create_graph)

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other):
        return ops.Add.apply(self, _as_tensor(other, self))

    def __radd__(self, other):
        return ops.Add.apply(_as_tensor(other, self), self)

    def __sub__(self, other):
        return ops.Sub.apply(self, _as_tensor(other, self))

    def __rsub__(self, other):
        return ops.Sub.apply(_as_tensor(other, self), self)

    def __mul__(self, other):
        return ops.Mul.apply(self, _as_tensor(other, self))

    def __rmul__(self, other):
        return ops.Mul.apply(_as_tensor(other, self), self)

    def __truediv__(self, other):
        return ops.Div.apply(self, _as_tensor(other, self))

    def __rtruediv__(self, other):
        return ops.Div.apply(_as_tensor(other, self), self)

    def __pow__(self, exponent):
        return ops.Pow.apply(self, _as_tensor(exponent, self))

    def __rpow__(self, base):
        return ops.Pow.apply(_as_tensor(base, self), self)

    def __matmul__(self, other):
        return ops.MatMul.apply(self, _as_tensor(other, self))

    def __rmatmul__(self, other):
        return ops.MatMul.apply(_as_tensor(other, self), self)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return ops.Abs.apply(self)

    # comparisons: non-differentiable bool tensors
    def __lt__(self, other):
        return ops.compare("less", self, other)

    def __le__(self, other):
        return ops.compare("less_equal", self, other)

    def __gt__(self, other):
        return ops.compare("greater", self, other)

    def __ge__(self, other):
        return ops.compare("greater_equal", self, other)

    def __eq__(self, other):
        return ops.compare("equal", self, other)

    def __ne__(self, other):
        return ops.compare("not_equal", self, other)

    def __invert__(self):
        if self.data.dtype != bool_:
            raise TypeError(f"~ needs a bool tensor, got dtype {self.data.dtype}")
        return Tensor._make(~self.data, self._device)

    def __and__(self, other):
        return ops.compare("logical_and", self, other)

    def __or__(self, other):
        return ops.compare("logical_or", self, other)

    # ------------------------------------------------------------------ elementwise
    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)

    def abs(self):
        return ops.Abs.apply(self)

    def tanh(self):
        return ops.Tanh.apply(self)

    def sigmoid(self):
        return ops.Sigmoid.apply(self)

    def relu(self):
        return ops.ReLU.apply(self)

    def leaky_relu(self, negative_slope: float = 0.01):
        return ops.LeakyReLU.apply(self, negative_slope=float(negative_slope))

    def softplus(self, beta: float = 1.0, threshold: float = 20.0):
        return ops.Softplus.apply(self, beta=float(beta), threshold=float(threshold))

    def pow(self, exponent):
        """``self ** exponent`` (``torch.Tensor.pow``)."""
        return self ** exponent

    def square(self):
        return ops.Mul.apply(self, self)

    def clip(self, min=None, max=None):
        """Limit values to [min, max] (torch's ``clamp``; either bound may be None)."""
        if min is None and max is None:
            raise ValueError("clip needs at least one of min and max")
        return ops.Clip.apply(self, low=min, high=max)

    clamp = clip

    def sign(self):
        """-1, 0 or 1 elementwise; a constant (zero gradient), returned detached."""
        return Tensor._make(backend.get_array_module(self.data).sign(self.data), self._device)

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims: bool = False):
        return ops.Sum.apply(self, axis=ops.normalize_axes(axis, self.data.ndim), keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False):
        axes = ops.normalize_axes(axis, self.data.ndim)
        count = 1
        for a in axes:
            count *= self.data.shape[a]
        return ops.Mean.apply(self, axis=axes, keepdims=keepdims, scale=1.0 / count if count else float("nan"))

    def max(self, axis=None, keepdims: bool = False):
        return ops.Extremum.apply(self, axis=ops.normalize_axes(axis, self.data.ndim), keepdims=keepdims,
                                  largest=True)

    def min(self, axis=None, keepdims: bool = False):
        return ops.Extremum.apply(self, axis=ops.normalize_axes(axis, self.data.ndim), keepdims=keepdims,
                                  largest=False)

    def var(self, axis=None, keepdims: bool = False, correction: int = 1):
        """Variance over ``axis``, dividing by ``N - correction``.

        PyTorch's default (``correction=1``, the unbiased estimate); NumPy's ``var``
        defaults to ``ddof=0``: pass ``correction=0`` for that.
        """
        axes = ops.normalize_axes(axis, self.data.ndim)
        count = 1
        for a in axes:
            count *= self.data.shape[a]
        divisor = count - correction  # N - correction <= 0 divides by 0, as torch and NumPy
        centered = self - self.mean(axis=axes, keepdims=True)
        squares = (centered * centered).sum(axis=axes, keepdims=keepdims)
        return squares * (1.0 / divisor) if divisor > 0 else squares / 0.0

    def std(self, axis=None, keepdims: bool = False, correction: int = 1):
        return self.var(axis=axis, keepdims=keepdims, correction=correction).sqrt()

    def logsumexp(self, axis=None, keepdims: bool = False):
        return ops.LogSumExp.apply(self, axis=ops.normalize_axes(axis, self.data.ndim), keepdims=keepdims)

    def softmax(self, axis: int = -1):
        return ops.Softmax.apply(self, axis=ops.normalize_axes(axis, self.data.ndim))

    def log_softmax(self, axis: int = -1):
        return ops.LogSoftmax.apply(self, axis=ops.normalize_axes(axis, self.data.ndim))

    def argmax(self, axis=None, keepdims: bool = False):
        return ops.arg_reduce("argmax", self, axis, keepdims)

    def argmin(self, axis=None, keepdims: bool = False):
        return ops.arg_reduce("argmin", self, axis, keepdims)

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape):
        shape = _shape_arg(shape)
        if shape == self.data.shape:
            return self
        return ops.Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        ndim = self.data.ndim
        if ndim == 0:
            return self.reshape(1)
        start, end = ops.normalize_axis(start_dim, ndim), ops.normalize_axis(end_dim, ndim)
        shape = self.data.shape
        return self.reshape(shape[:start] + (-1,) + shape[end + 1:])

    def unsqueeze(self, dim: int):
        dim = ops.normalize_axis(dim, self.data.ndim + 1)
        return self.reshape(self.data.shape[:dim] + (1,) + self.data.shape[dim:])

    def squeeze(self, dim=None):
        shape = self.data.shape
        if dim is None:
            return self.reshape(tuple(s for s in shape if s != 1))
        dims = ops.normalize_axes(dim, self.data.ndim)
        return self.reshape(tuple(s for i, s in enumerate(shape) if not (i in dims and s == 1)))

    def permute(self, *dims):
        dims = tuple(ops.normalize_axis(d, self.data.ndim) for d in _shape_arg(dims))
        if sorted(dims) != list(range(self.data.ndim)):
            raise ValueError(f"permute: {dims} is not a permutation of the {self.data.ndim} axes of shape {self.data.shape}")
        return ops.Permute.apply(self, axes=dims)

    def transpose(self, dim0: int | None = None, dim1: int | None = None):
        """Swap two axes (PyTorch's meaning); with no arguments reverse them all (NumPy's)."""
        ndim = self.data.ndim
        if dim0 is None and dim1 is None:
            return ops.Permute.apply(self, axes=tuple(range(ndim - 1, -1, -1)))
        if dim0 is None or dim1 is None:
            raise TypeError("transpose takes two axes to swap, or none to reverse all axes")
        axes = list(range(ndim))
        a, b = ops.normalize_axis(dim0, ndim), ops.normalize_axis(dim1, ndim)
        axes[a], axes[b] = axes[b], axes[a]
        return ops.Permute.apply(self, axes=tuple(axes))

    swapaxes = transpose

    @property
    def T(self):
        """All axes reversed (the matrix transpose for 2-D tensors)."""
        ndim = self.data.ndim
        return ops.Permute.apply(self, axes=(1, 0) if ndim == 2 else tuple(range(ndim - 1, -1, -1)))

    @property
    def mT(self):
        """The last two axes swapped (a batch of matrix transposes)."""
        return self.transpose(-2, -1)

    def broadcast_to(self, *shape):
        shape = _shape_arg(shape)
        if shape == self.data.shape:
            return self
        return ops.BroadcastTo.apply(self, shape=shape)

    expand = broadcast_to

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=ops.raw_index(index, self))

    def __setitem__(self, index, value):
        """In-place write, allowed where it cannot corrupt a recorded graph."""
        if self._ctx is not None or (self._requires_grad and _grad_enabled):
            raise RuntimeError("in-place assignment to a tensor that is part of the graph; "
                               "wrap it in `with tg.no_grad():` (leaves only)")
        if isinstance(value, Tensor):
            if value._requires_grad and _grad_enabled:
                raise RuntimeError("in-place assignment of a value that requires grad would drop its gradient; "
                                   "build the result with tg.where/tg.concat instead, or detach() the value")
            value = value.data
        self.data[ops.raw_index(index, self)] = value


# ----------------------------------------------------------------------------- helpers


def _shape_arg(shape) -> tuple:
    """Accept ``f(2, 3)``, ``f((2, 3))`` and ``f([2, 3])`` like torch and NumPy."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    try:
        return tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be integers, got {shape!r}") from None


def _as_tensor(value, like: Tensor) -> Tensor:
    """Turn a Python scalar or array operand into a constant tensor next to ``like``.

    A Python float keeps a float tensor's dtype (``x * 0.5`` stays float32, as in torch
    and NumPy 2). An integer tensor times a float scalar follows NumPy's promotion
    (int64 with a float gives float64; torch would give float32).
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        like_dtype = like.data.dtype
        if isinstance(value, (float, np.floating)) and like_dtype.kind != "f":
            dtype = float32
        elif isinstance(value, (bool, np.bool_)) and like_dtype.kind == "b":
            dtype = bool_
        else:
            dtype = like_dtype if like_dtype.kind != "b" else np.asarray(value).dtype
        xp = backend.get_array_module(like.data)
        return Tensor._make(xp.asarray(value, dtype=dtype), like._device)
    if backend.is_array(value) or isinstance(value, (list, tuple)):
        dtype = like.data.dtype if like.data.dtype.kind == "f" else None
        return Tensor(value, dtype=dtype, device=like._device)
    raise TypeError(f"unsupported operand type {type(value).__name__} for a Tensor op")


# ----------------------------------------------------------------------------- Function

_op_serial_numbers = itertools.count(1)  # Function.sequence: recording order
_data_of = operator.attrgetter("data")
_requires_grad_of = operator.attrgetter("_requires_grad")


class Function:
    """One differentiable op: ``forward`` on raw arrays, ``backward`` with Tensor ops.

    Subclasses define ``forward(self, *arrays, **params) -> array`` and
    ``backward(self, grad: Tensor) -> tuple`` returning one gradient (Tensor or None)
    per input. Built from Tensor ops, a backward can itself be recorded
    (``create_graph=True``). When it is not (``is_grad_enabled()`` is False, the usual
    ``loss.backward()``), an op may apply the same formulas to the raw arrays instead
    (``ops.plain_operands``) and return raw arrays, which skips one Tensor dispatch per
    formula term; the engine accepts either. An op whose formulas run on both declares
    ``takes_raw_grad = True`` and then also receives ``grad`` as an array in a plain
    backward. ``self.inputs`` holds the input tensors, ``self.needs_input_grad`` which
    inputs want a gradient, and ``self.output`` the output tensor (while it is alive) for
    an op that declares ``uses_output = True``.
    """

    released = False  # set once backward has freed what the op saved
    # True for an op whose backward also takes the upstream gradient as a raw array: in a
    # plain backward (nothing records it) the engine then hands over the array itself
    # instead of wrapping it in a Tensor first. Such a backward uses formulas that run on
    # Tensors and arrays alike (see ``ops.plain_operands``).
    takes_raw_grad = False
    # True for an op whose backward reads ``self.output``: only those keep a (weak)
    # reference to the tensor they produced.
    uses_output = False
    sequence = 0  # the op's serial number; an op's inputs were always made before it

    @classmethod
    def apply(cls, *inputs: Tensor, **params) -> Tensor:
        # This runs for every op, forward and backward: keep it lean. One and two inputs
        # are spelled out, more go through map() with C-level getters: a comprehension is
        # a function call in Python 3.11.
        first = inputs[0]
        device = first._device
        if len(inputs) == 1:
            arrays = (first.data,)
            needs_grad = (first._requires_grad,)
        elif len(inputs) == 2:
            second = inputs[1]
            if second._device != device:
                raise RuntimeError(f"{cls.__name__}: expected all tensors on the same device, "
                                   f"found {device} and {second._device}")
            arrays = (first.data, second.data)
            needs_grad = (first._requires_grad, second._requires_grad)
        else:
            for other in inputs:
                if other._device != device:
                    raise RuntimeError(f"{cls.__name__}: expected all tensors on the same device, "
                                       f"found {device} and {other._device}")
            arrays = tuple(map(_data_of, inputs))
            needs_grad = tuple(map(_requires_grad_of, inputs))
        fn = object.__new__(cls)
        try:
            if device == "cpu" or device == "cuda:0":
                out = fn.forward(*arrays, **params)
            else:
                with backend.device_context(device):
                    out = fn.forward(*arrays, **params)
        except ValueError as error:
            shapes = ", ".join(str(t.data.shape) for t in inputs)
            raise ValueError(f"{cls.__name__}: {error} (input shapes {shapes})") from None
        if out.__class__ is not np.ndarray and isinstance(out, np.generic):  # NumPy gives scalars for 0-d
            out = np.asarray(out)
        # Record the op only when a gradient can flow: grad mode on, a floating-point
        # result (integer/bool results carry no gradient) and an input that wants one.
        if _grad_enabled and True in needs_grad and out.dtype.kind == "f":
            result = Tensor._make(out, device, True, fn)
            fn.inputs = inputs
            fn.needs_input_grad = needs_grad
            fn.sequence = next(_op_serial_numbers)
            if cls.uses_output:
                fn._output_ref = weakref.ref(result)
            return result
        return Tensor._make(out, device)

    @property
    def output(self) -> Tensor:
        """The tensor this op produced (alive whenever its backward runs; kept only by
        ops that declare ``uses_output``)."""
        try:
            return self._output_ref()
        except AttributeError:
            raise AttributeError(f"{type(self).__name__}.output is not kept: set uses_output = True "
                                 "on the class of an op whose backward reads its output") from None

    def grad_buffer(self, index: int):
        """An array that input ``index``'s gradient may be written into (``out=``), or None.

        A fused optimizer gives each parameter a :class:`GradBuffer`, its segment of the
        flat gradient buffer. An op that computes a leaf's whole gradient in one array
        op (``Linear``: ``dW = g^T x``) writes it there, and ``optimizer.step()`` then
        finds the gradient in place instead of copying it. Handed out only in a plain
        backward, to a leaf without a ``.grad``, once per backward pass (a weight used
        twice gets a fresh array the second time), and only while nothing outside
        holds that memory (see :meth:`GradBuffer.unshared`).
        """
        tensor = self.inputs[index]
        buffer = tensor._grad_buffer
        if (buffer is None or _open_grad_buffers is None or tensor.grad is not None or tensor._ctx is not None
                or id(buffer) in _open_grad_buffers or not buffer.unshared()):
            return None
        _open_grad_buffers.add(id(buffer))
        return buffer.array

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad: Tensor) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self) -> None:
        """Drop the inputs and saved arrays (called after backward without retain_graph)."""
        self.__dict__.clear()
        self.released = True


# ----------------------------------------------------------------------------- backward


class GradBuffer:
    """Memory that a leaf's next gradient may be computed into (see
    :meth:`Function.grad_buffer`): ``array``, a view into ``owner``.

    The buffer is reused step after step, so it may only be handed out while no one
    outside holds it: a ``.grad`` Tensor kept from an earlier step, or any NumPy view of
    that memory, would see its values change. Every such reference raises the reference
    count of ``array`` (a Tensor or memoryview of it) or of ``owner`` (NumPy views keep a
    reference to the array that owns the memory). :meth:`calibrate` records both counts
    once every holder that belongs to the optimizer is in place; :meth:`unshared` is
    True while they are unchanged.
    """

    __slots__ = ("array", "owner", "_array_refs", "_owner_refs")

    def __init__(self, array, owner):
        self.array, self.owner = array, owner
        self._array_refs = self._owner_refs = -1

    def calibrate(self) -> None:
        self._array_refs = sys.getrefcount(self.array)
        self._owner_refs = sys.getrefcount(self.owner)

    def unshared(self) -> bool:
        return sys.getrefcount(self.array) == self._array_refs and sys.getrefcount(self.owner) == self._owner_refs


# ids of the GradBuffers handed out in the plain backward pass now running; None outside one
_open_grad_buffers: set | None = None


def _topological_order(roots: list[Tensor]) -> list[Tensor]:
    """Non-leaf tensors reachable from ``roots``, each after every tensor that uses it.

    Every recorded op has a serial number (``Function.sequence``), and an op's inputs
    always exist before it is recorded, so a consumer's number is larger than that of
    anything it consumes: collecting the reachable tensors (an explicit stack, so deep
    graphs cannot hit Python's recursion limit) and sorting them newest first is a
    valid order.
    """
    # Tensors as keys: a Tensor hashes by identity, and a dict compares keys by identity
    # before it would ever call Tensor.__eq__ (distinct live objects never share a hash).
    reachable: dict[Tensor, None] = {}  # an ordered set
    stack = [root for root in roots if root._ctx is not None]
    while stack:
        tensor = stack.pop()
        if tensor in reachable:
            continue
        ctx = tensor._ctx
        if ctx.released:
            raise RuntimeError("trying to backward through the graph a second time: its saved "
                               "values were freed by the first backward(); pass "
                               "retain_graph=True to the first call if you need two")
        reachable[tensor] = None
        for parent in ctx.inputs:
            if parent._ctx is not None:  # (a recorded result always requires grad)
                stack.append(parent)
    return sorted(reachable, key=_sequence_of_ctx, reverse=True)


_sequence_of_ctx = operator.attrgetter("_ctx.sequence")


def _as_grad_tensor(grad, like: Tensor) -> Tensor:
    if grad is None:
        xp = backend.get_array_module(like.data)
        return Tensor._make(xp.ones(like.data.shape, dtype=like.data.dtype), like._device)
    grad = grad if isinstance(grad, Tensor) else Tensor(grad, dtype=like.data.dtype, device=like._device)
    if grad.data.shape != like.data.shape:
        raise RuntimeError(f"grad has shape {grad.data.shape} but the output has shape {like.data.shape}")
    if grad._device != like._device:
        raise RuntimeError(f"grad is on {grad._device} but the output is on {like._device}")
    return grad


def _owner(array):
    """The array that owns ``array``'s memory (NumPy and CuPy keep ``base`` flattened)."""
    return array if array.base is None else array.base


def run_backward(outputs: list[Tensor], grad_outputs: list, *, retain_graph: bool, create_graph: bool,
                 inputs: list[Tensor] | None = None) -> list | None:
    """The engine behind ``Tensor.backward`` and ``autograd.grad``.

    With ``inputs=None`` gradients accumulate into the ``.grad`` of leaves (and of
    tensors that called ``retain_grad``). With ``inputs`` given, nothing is written to
    ``.grad``: the gradient of each input is returned instead (None where unused), and
    only the part of the graph between the outputs and those inputs is run (and freed).
    """
    # Without create_graph nothing records the backward, so the gradients travel as raw
    # arrays (wrapped in a Tensor only to become a .grad, and to call the backward of an
    # op that does not declare ``takes_raw_grad``); with create_graph they are Tensors
    # whose ops are recorded.
    plain = not create_graph
    grads: dict[Tensor, object] = {}  # the gradient waiting at each tensor (keys as in _topological_order)
    for out, g in zip(outputs, grad_outputs):
        g = _as_grad_tensor(g, out)
        if plain:
            g = g.data
        grads[out] = grads[out] + g if out in grads else g
    order = _topological_order(outputs)
    wanted = {id(t): i for i, t in enumerate(inputs)} if inputs is not None else None
    captured: list = [None] * len(inputs) if inputs is not None else None
    above_wanted = _above(order, wanted) if wanted is not None else None
    # Gradient arrays are passed along without copying (`Add` hands the same array to
    # both of its inputs), so two rules keep leaves' .grad independent:
    # - memory already handed to some leaf's .grad in this pass (by the id of the array
    #   that owns it) is copied before a second leaf gets it -- the caller's own grad
    #   arrays count as handed out, so .grad never aliases them either;
    # - a leaf whose .grad was set in this pass (`borrowed`) may share that array with
    #   gradients still waiting to be used, so more gradient for it is added out of
    #   place. A .grad that existed before the call is the leaf's own and is added to in
    #   place, which keeps views into a fused optimizer's flat buffer views.
    handed_out: set[int] = {id(_owner(g if plain else g.data)) for g in grads.values()}
    borrowed: set[int] = set()

    def deliver(tensor: Tensor, g) -> None:
        """Hand ``g`` (a raw array when ``plain``, else a Tensor; or a SparseRowGrad) to
        ``tensor``: into its ``.grad``, or into ``captured`` for autograd.grad."""
        if isinstance(g, SparseRowGrad):  # Embedding(sparse=True): only touched rows
            if create_graph or wanted is not None:
                raise RuntimeError("sparse gradients support backward() only, not create_graph or autograd.grad")
            if tensor.grad is None or isinstance(tensor.grad, SparseRowGrad):
                tensor.grad = g if tensor.grad is None else tensor.grad + g
            elif id(tensor) in borrowed:
                dense = tensor.grad.data.copy()
                backend.index_add(dense, g.indices, g.values)
                tensor.grad = Tensor._make(dense, tensor._device)
                borrowed.discard(id(tensor))
            else:
                backend.index_add(tensor.grad.data, g.indices, g.values)
            return
        if plain:
            if g.dtype != tensor.data.dtype:
                g = g.astype(tensor.data.dtype)
        elif g.data.dtype != tensor.data.dtype:
            g = g.to(dtype=tensor.data.dtype)
        if wanted is not None:
            index = wanted.get(id(tensor))
            if index is not None:
                if plain:
                    g = Tensor._make(g, tensor._device)
                captured[index] = g if captured[index] is None else captured[index] + g
            return
        if tensor.grad is None:  # the usual case: the first gradient of this leaf
            array = g if plain else g.data
            owner = _owner(array)
            buffer = tensor._grad_buffer
            if ((buffer is None or array is not buffer.array)  # (the leaf's own buffer is never copied)
                    and (not array.flags.writeable or id(owner) in handed_out)):
                # read-only broadcast view, or memory another leaf holds: copy it
                g = array.copy() if plain else ops.Clone.apply(g)
                owner = array = g if plain else g.data
            handed_out.add(id(owner))
            borrowed.add(id(tensor))
            tensor.grad = Tensor._make(g, tensor._device) if plain else g
            return
        if isinstance(tensor.grad, SparseRowGrad):  # a dense gradient joins a sparse one
            tensor.grad = Tensor._make(tensor.grad.to_dense(), tensor._device)
        if create_graph:  # a graph-carrying grad is never updated in place
            tensor.grad = tensor.grad + g
        elif id(tensor) in borrowed:
            tensor.grad = Tensor._make(tensor.grad.data + g, tensor._device)  # now its own array
            borrowed.discard(id(tensor))
        else:
            tensor.grad.data += g  # accumulate in place: .grad may be a view into a flat buffer

    global _grad_enabled, _open_grad_buffers
    previous_mode, _grad_enabled = _grad_enabled, create_graph
    previous_buffers = _open_grad_buffers
    _open_grad_buffers = set() if plain and wanted is None else None
    try:
        for out in outputs:  # a root that is itself a leaf or an input
            if out._ctx is None and out in grads:
                deliver(out, grads.pop(out))
        for tensor in order:
            if wanted is not None and id(tensor) not in above_wanted and id(tensor) not in wanted:
                continue  # nothing asked for lies below: leave this part of the graph alone
            g = grads.pop(tensor, None)
            ctx = tensor._ctx
            if g is None:  # not on a path from the outputs that carries gradient
                if not retain_graph:
                    ctx.release()
                continue
            if tensor._retains_grad or (wanted is not None and id(tensor) in wanted):
                deliver(tensor, g)
                if wanted is not None and id(tensor) not in above_wanted:
                    continue  # an asked-for intermediate with nothing asked for below it
            if plain and not ctx.takes_raw_grad:  # a backward written with Tensor ops only
                input_grads = [pg.data if isinstance(pg, Tensor) else pg
                               for pg in ctx.backward(Tensor._make(g, tensor._device))]
            else:
                input_grads = ctx.backward(g)
            for parent, pg in zip(ctx.inputs, input_grads):
                if pg is None or not parent._requires_grad:
                    continue
                if parent._ctx is None:
                    deliver(parent, pg)
                    if parent._post_accumulate_grad_hooks is not None and wanted is None:
                        for hook in parent._post_accumulate_grad_hooks:
                            hook(parent)
                else:
                    pending = grads.get(parent)
                    grads[parent] = pg if pending is None else pending + pg
            if not retain_graph:
                ctx.release()
    finally:
        _grad_enabled, _open_grad_buffers = previous_mode, previous_buffers
    return captured


def _above(order: list[Tensor], wanted: dict) -> set[int]:
    """Ids of the tensors in ``order`` that have a wanted tensor somewhere below them
    (``order`` lists consumers before what they consume, so walk it backwards)."""
    above: set[int] = set()
    for tensor in reversed(order):
        if any(id(p) in wanted or id(p) in above for p in tensor._ctx.inputs):
            above.add(id(tensor))
    return above


from . import ops  # noqa: E402  (ops needs Tensor and Function defined above)


# ----------------------------------------------------------------------------- creation


def _creation_dtype(dtype, default=float32) -> np.dtype:
    return _check_dtype(np.dtype(dtype)) if dtype is not None else default


def _new(array_fn, shape, dtype, device, requires_grad) -> Tensor:
    device = backend.parse_device(device)
    xp = backend.get_array_module(device)
    with backend.device_context(device):
        array = array_fn(xp, _shape_arg(shape), dtype)
    tensor = Tensor._make(array, device)
    if requires_grad:  # the setter checks the dtype
        tensor.requires_grad = True
    return tensor


def zeros(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _new(lambda xp, s, d: xp.zeros(s, dtype=d), shape, _creation_dtype(dtype), device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _new(lambda xp, s, d: xp.ones(s, dtype=d), shape, _creation_dtype(dtype), device, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    if dtype is None:
        dtype = float32 if isinstance(fill_value, float) else np.asarray(fill_value).dtype
    return _new(lambda xp, s, d: xp.full(s, fill_value, dtype=d), (shape,) if isinstance(shape, int) else shape,
                _creation_dtype(dtype), device, requires_grad)


def eye(n: int, m: int | None = None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _new(lambda xp, s, d: xp.eye(s[0], s[1], dtype=d), (n, n if m is None else m),
                _creation_dtype(dtype), device, requires_grad)


def _random(draw, shape, dtype, device, requires_grad) -> Tensor:
    # Drawn on the CPU from the global generator: the same seed gives the same numbers
    # on every device.
    array = draw(rng.generator(), _shape_arg(shape)).astype(_creation_dtype(dtype), copy=False)
    return _new(lambda xp, s, d: xp.asarray(array), shape, None, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples from the global generator (seed with ``tg.manual_seed``)."""
    return _random(lambda g, s: g.standard_normal(s), shape, dtype, device, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1) from the global generator."""
    return _random(lambda g, s: g.random(s), shape, dtype, device, requires_grad)


def randint(low: int, high: int, size, dtype=None, device=None) -> Tensor:
    """Integers uniform in [low, high) from the global generator (int64 by default)."""
    size = (size,) if isinstance(size, int) else tuple(size)
    return _random(lambda g, s: g.integers(low, high, s), size, dtype or int64, device, False)


def arange(start, stop=None, step=1, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Like ``numpy.arange``; integer arguments give int64, any float gives float32."""
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = float32 if isinstance(start, float) or isinstance(stop, float) or isinstance(step, float) else int64
    return _new(lambda xp, s, d: xp.arange(start, stop, step, dtype=d), (), _creation_dtype(dtype), device,
                requires_grad)


def zeros_like(tensor: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return zeros(tensor.shape, dtype=dtype or tensor.dtype, device=device or tensor.device,
                 requires_grad=requires_grad)


def ones_like(tensor: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return ones(tensor.shape, dtype=dtype or tensor.dtype, device=device or tensor.device,
                requires_grad=requires_grad)


def full_like(tensor: Tensor, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return full(tensor.shape, fill_value, dtype=dtype or tensor.dtype, device=device or tensor.device,
                requires_grad=requires_grad)


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """``tg.tensor(data)``: the same as ``Tensor(data, ...)`` (torch's spelling)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)
