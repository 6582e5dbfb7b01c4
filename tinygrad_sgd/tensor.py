"""Tensor: an n-dimensional array on a device (NumPy on the CPU, CuPy on a GPU) that
records the ops applied to it.

This module is the Tensor API: creation, properties, conversion and the operator methods,
each of which calls one op of ``tinygrad_sgd/ops`` by name. How the recorded ops are run
backwards lives in ``tinygrad_sgd/autograd/engine.py``.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

import numpy as np

from . import backend, rng
from .sparse import SparseRowGrad

if TYPE_CHECKING:
    from .autograd.engine import Function

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
    floating-point tensors can require gradients. Without ``device``, a Tensor or a CuPy
    array keeps its device and host data (lists, scalars, NumPy arrays) goes to the
    default device, as ``torch.tensor`` does.
    """

    __slots__ = ("_data", "_grad", "_requires_grad", "_ctx", "_device", "_retains_grad", "_version_counter",
                 "_post_accumulate_grad_hooks", "__weakref__")
    _ctx: Function | None  # the op that recorded this tensor; None for a leaf
    _post_accumulate_grad_hooks: list | None

    # Let NumPy hand `ndarray * tensor` to Tensor.__rmul__ instead of looping over elements.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        if device is not None:
            target_device = backend.parse_device(device)
        elif isinstance(data, Tensor):  # a Tensor keeps its device
            target_device = data._device
        elif backend.is_array(data) and backend.device_of(data) != "cpu":  # so does a GPU array
            target_device = backend.device_of(data)
        else:  # host data (lists, scalars, NumPy arrays) goes to the default device
            target_device = backend.default_device()
        if isinstance(data, Tensor):
            data = data.data
        xp = backend.get_array_module(target_device)
        array = backend.to_device(as_raw_array(data, "Tensor"), target_device)  # checked before any copy
        dtype = _check_dtype(np.dtype(dtype)) if dtype is not None else _default_dtype_for(array)
        with backend.device_context(target_device):
            array = xp.array(array, dtype=dtype, copy=True)
        self._init(array, target_device, requires_grad)

    def _init(self, array, device: str, requires_grad: bool) -> None:
        self._data = array
        self._grad = None
        self._ctx = None
        self._device = device
        self._retains_grad = False
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
        tensor._data = array
        tensor._grad = None
        tensor._ctx = ctx
        tensor._device = device
        tensor._retains_grad = False
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
    def data(self):
        """The raw ``numpy.ndarray`` / ``cupy.ndarray`` (shared, not a copy).

        Assigning a new array is checked like ``Tensor(...)``: a supported dtype on the
        tensor's device, and floating point while the tensor requires grad. It counts as
        an in-place change (see ``_mark_dirty``). Writing into the array itself
        (``x.data[...] = v``) bypasses every check, the version counter included: use
        ``x[...] = v`` under ``no_grad`` instead, which is checked.
        """
        return self._data

    @data.setter
    def data(self, array) -> None:
        if isinstance(array, Tensor):
            array = array._data
        if not backend.is_array(array):
            raise TypeError(f"Tensor.data must be a NumPy or CuPy array, got {type(array).__name__}")
        _check_dtype(array.dtype, "Tensor.data")
        if backend.device_of(array) != self._device:
            raise RuntimeError(f"Tensor.data: the new array is on {backend.device_of(array)} but the tensor is "
                               f"on {self._device}; move the tensor with .to() instead")
        if self._requires_grad and array.dtype.kind != "f":
            raise TypeError(f"Tensor.data: a tensor that requires grad must hold floating-point data, got dtype "
                            f"{array.dtype}")
        self._data = array
        self._mark_dirty()

    @property
    def grad(self):
        """The gradient accumulated by ``backward()``: a Tensor like this one, a
        ``SparseRowGrad`` (``Embedding(sparse=True)``), or None."""
        return self._grad

    @grad.setter
    def grad(self, value) -> None:
        if value is not None:
            if isinstance(value, Tensor):
                ok = value._data.shape == self._data.shape and value._data.dtype.kind == "f" \
                    and value._device == self._device
            elif isinstance(value, SparseRowGrad):
                ok = value.shape == self._data.shape and value.device == self._device
            else:
                raise TypeError(f"Tensor.grad must be a Tensor, a SparseRowGrad or None, got {type(value).__name__}")
            if not ok:
                what = "a sparse gradient" if isinstance(value, SparseRowGrad) else f"a {value.dtype} gradient"
                raise RuntimeError(f"cannot assign {what} of shape {tuple(value.shape)} on {value.device} to .grad "
                                   f"of a tensor of shape {self.shape}, dtype {self.dtype} on {self._device}: the "
                                   "shapes and devices must match and the gradient must be floating point")
        self._grad = value

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
        if retain_graph is None:
            retain_graph = create_graph
        engine.backward([self], [grad], retain_graph=retain_graph, create_graph=create_graph)

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other):
        return ops.Add.apply(*_promoted(self, _as_tensor(other, self)))

    def __radd__(self, other):
        return ops.Add.apply(*_promoted(_as_tensor(other, self), self))

    def __sub__(self, other):
        return ops.Sub.apply(*_promoted(self, _as_tensor(other, self)))

    def __rsub__(self, other):
        return ops.Sub.apply(*_promoted(_as_tensor(other, self), self))

    def __mul__(self, other):
        return ops.Mul.apply(*_promoted(self, _as_tensor(other, self)))

    def __rmul__(self, other):
        return ops.Mul.apply(*_promoted(_as_tensor(other, self), self))

    def __truediv__(self, other):
        return ops.Div.apply(*_promoted(self, _as_tensor(other, self), true_divide=True))

    def __rtruediv__(self, other):
        return ops.Div.apply(*_promoted(_as_tensor(other, self), self, true_divide=True))

    def __pow__(self, exponent):
        return ops.Pow.apply(*_promoted(self, _as_tensor(exponent, self)))

    def __rpow__(self, base):
        return ops.Pow.apply(*_promoted(_as_tensor(base, self), self))

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
        """Logical not of a bool tensor, bitwise not of an integer one (as torch)."""
        if self.data.dtype.kind not in "biu":  # the same rule as & and | (ops.compare)
            raise TypeError(f"~ needs a bool or integer tensor, got dtype {self.data.dtype}")
        return Tensor._make(~self.data, self._device)

    def __and__(self, other):
        return ops.compare("bitwise_and", self, other)

    def __or__(self, other):
        return ops.compare("bitwise_or", self, other)

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

    def leaky_relu(self, negative_slope: builtins.float = 0.01):
        return ops.LeakyReLU.apply(self, negative_slope=float(negative_slope))

    def softplus(self, beta: builtins.float = 1.0, threshold: builtins.float = 20.0):
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
        return ops.SqrtOfVariance.apply(self.var(axis=axis, keepdims=keepdims, correction=correction))

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
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                             f"(a tensor of shape {self.shape})")
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
            raise ValueError(f"permute: {dims} is not a permutation of the {self.data.ndim} axes of shape "
                             f"{self.data.shape}")
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

    def expand(self, *sizes):
        """``broadcast_to`` with torch's ``-1``: keep that axis's size (torch's ``expand``)."""
        sizes = _shape_arg(sizes)
        lead = len(sizes) - self.data.ndim  # new axes come first, as in broadcasting
        if any(s == -1 for s in sizes[:max(lead, 0)]):
            raise ValueError(f"expand: -1 keeps an existing size; it cannot stand for a new leading "
                             f"dimension (sizes {sizes} for a tensor of shape {self.shape})")
        return self.broadcast_to(tuple(self.data.shape[i - lead] if s == -1 and i >= lead else s
                                       for i, s in enumerate(sizes)))

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=ops.raw_index(index, self))

    def __setitem__(self, index, value):
        """In-place write, allowed where it cannot corrupt a recorded graph."""
        if self._ctx is not None or (self._requires_grad and is_grad_enabled()):
            raise RuntimeError("in-place assignment to a tensor that is part of the graph; "
                               "wrap it in `with tg.no_grad():` (leaves only)")
        if isinstance(value, Tensor):
            if value._requires_grad and is_grad_enabled():
                raise RuntimeError("in-place assignment of a value that requires grad would drop its gradient; "
                                   "build the result with tg.where/tg.concat instead, or detach() the value")
            value = value.data
        self._data[ops.raw_index(index, self)] = value
        self._mark_dirty()


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
    and NumPy 2); with an integer tensor it becomes a float32 tensor, which
    :func:`_promoted` then casts the integers to (float32, as torch).
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        like_dtype = like.data.dtype
        dtype: np.dtype | None
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


def _promoted(a: Tensor, b: Tensor, *, true_divide: bool = False) -> tuple:
    """The operands of a binary op, cast where torch's type promotion differs from NumPy's:
    an integer or bool tensor meeting a float one takes the float one's dtype (NumPy would
    widen int64 with float32 to float64), and ``/`` of two integer tensors gives float32
    (torch's default float; NumPy gives float64). Integer tensors carry no gradient."""
    dtype_a, dtype_b = a.data.dtype, b.data.dtype
    kind_a, kind_b = dtype_a.kind, dtype_b.kind
    # (A bool mask times a float tensor already gives the float dtype in NumPy: no cast.)
    if kind_a == "f" and kind_b in "biu" and np.result_type(dtype_a, dtype_b) != dtype_a:
        return a, b.to(dtype=a.dtype)
    if kind_b == "f" and kind_a in "biu" and np.result_type(dtype_a, dtype_b) != dtype_b:
        return a.to(dtype=b.dtype), b
    if true_divide and kind_a in "biu" and kind_b in "biu":
        return a.to(dtype=float32), b.to(dtype=float32)
    return a, b


# The engine and the ops need Tensor defined first, so they are imported last; the Tensor
# methods above look them up when called.
from .autograd import engine  # noqa: E402
from .autograd.engine import Function, enable_grad, is_grad_enabled, no_grad  # noqa: E402,F401  (re-exported)
from . import ops  # noqa: E402


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
