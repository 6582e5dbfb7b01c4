"""A strict CuPy stand-in for tests without a GPU: ``import cupy`` gets this package when
``tests/cupy_standin`` comes first on ``sys.path`` (``TINYGRAD_SGD_CUPY_STANDIN=1`` or
``pytest --cupy-standin``; see ``tests/conftest.py``). It is never installed or shipped.

Its job is to make the CuPy code path of tinygrad_sgd *run* on a machine without a GPU,
and to fail where real CuPy would fail. Each ``cupy.ndarray`` wraps a private NumPy array
(``_a``); it is deliberately **not** a ``numpy.ndarray`` subclass, so ``isinstance(x,
numpy.ndarray)`` is False for it, as for real CuPy arrays. The rules it copies from CuPy:

* Mixing it with a NumPy array in arithmetic or a ufunc raises ``TypeError`` (CuPy:
  "Unsupported type"), 0-d NumPy arrays included; NumPy scalars and Python numbers mix.
* NumPy turning it into a NumPy array implicitly (``np.asarray(x)``, ``np.testing`` on it)
  raises ``TypeError``; ``x.get()`` and ``cupy.asnumpy(x)`` copy it to the host.
* ``numpy.f(x)`` dispatches to ``cupy.f`` (``__array_function__``/``__array_ufunc__``) when
  the stand-in covers ``f``; an uncovered function raises :class:`NotCovered`.
* Reductions and integer indexing return 0-d arrays, never scalars; ``x[i]`` with integers
  and slices is a view; ``.base`` of a view is the array that owns the memory; ``out=``
  returns the very ``out`` object; ``astype(dtype, copy=False)`` returns ``x`` itself.
* ``x.flags`` has only ``c_contiguous``, ``f_contiguous`` and ``owndata`` (no
  ``writeable``); ``x.device.id``; ``x.__cuda_array_interface__``.
* ``cupy.asarray(numpy_array)`` copies (host to device); ``cupy.empty`` returns NaN-filled
  float memory, so code that reads memory it never wrote shows up.
* ``x[basic index] = numpy_array`` raises ``ValueError`` (CuPy fills through
  ``ndarray.fill``, which refuses a non-scalar NumPy array); advanced indices and NumPy
  index arrays are converted, as CuPy does.
* ``cupyx.scatter_add`` accepts only CuPy's atomicAdd dtypes (no int64).

What it covers is listed in :data:`CREATION`, :data:`UFUNCS`, :data:`FUNCTIONS`,
:data:`METHODS` and the names below them; ``cupy.cuda`` has one device, ``Device`` as a
context manager, streams with ``synchronize()``. Anything else is an ``AttributeError`` (a
module name) or :class:`NotCovered` (a NumPy function dispatched to it) naming the missing
function: add it here, with CuPy's behaviour, when the library starts to use it.

With ``NUMBA_ENABLE_CUDASIM=1`` it gives Numba's CUDA simulator ``cuda.as_cuda_array``
(a simulated device array over the same memory) and the two stream functions it lacks
(``_numba_simulator.py``), so the fused kernels run on its arrays; it does so when the
kernels' dispatcher first reads an array's ``__cuda_array_interface__``.

It cannot catch: kernel launch configuration, real memory limits, asynchronous errors
(every call runs synchronously on the CPU), CuPy's own numerical differences (its
reductions sum in another order), or performance.
"""

from __future__ import annotations

import builtins as _builtins  # the module defines its own any, all, max, min, sum, round
import os as _os
import sys as _sys

import numpy

from . import _numba_simulator, cuda

__version__ = "0.0.0+standin"
STANDIN = True  # what a caller can check (doctor, test headers) to tell it from real CuPy
_SIMULATOR = _os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


class NotCovered(NotImplementedError):
    """A CuPy function or method the stand-in does not provide (add it, or avoid it)."""


def _not_covered(what: str) -> NotCovered:
    return NotCovered(f"{what} is not covered by the CuPy stand-in (tests/cupy_standin/cupy): add it there "
                      "with CuPy's behaviour if real CuPy has it")


# ------------------------------------------------------------------ operand conversion

def _operand(x, inputs: list, *, allow_numpy: bool = False):
    """The NumPy value behind one argument; a NumPy array is refused (CuPy's rule)."""
    if type(x) is ndarray:
        inputs.append(x)
        return x._a
    if isinstance(x, numpy.ndarray):
        if allow_numpy:
            return x
        raise TypeError(f"Unsupported type {type(x)} (the CuPy stand-in, like CuPy, does not mix "
                        "numpy.ndarray with cupy.ndarray; move it with cupy.asarray or .get())")
    if isinstance(x, (list, tuple)):
        return type(x)(_operand(item, inputs, allow_numpy=allow_numpy) for item in x)
    return x


def _wrap(result, inputs: list):
    """Stand-in arrays for NumPy results: the input itself when NumPy returned its array
    (``out=``, ``copy=False``), a view of the input that owns the memory, or a new owner."""
    if isinstance(result, numpy.ndarray):
        for w in inputs:
            if result is w._a:
                return w
        if result.dtype.kind in "OUSV":
            raise ValueError(f"Unsupported dtype {result.dtype}")
        if result.base is not None:
            for w in inputs:
                root = w if w._base is None else w._base
                if numpy.may_share_memory(result, root._a):
                    return ndarray._make(result, root)
        return ndarray._make(result, None)
    if isinstance(result, (numpy.generic, bool, int, float, complex)):
        return ndarray._make(numpy.asarray(result), None)  # CuPy returns 0-d arrays
    if isinstance(result, (list, tuple)):
        return type(result)(_wrap(r, inputs) for r in result)
    return result


def _call(fn, args, kwargs, *, allow_numpy: bool = False, owner=None):
    inputs: list = [] if owner is None else [owner]
    args = [_operand(a, inputs, allow_numpy=allow_numpy) for a in args]
    kwargs = {k: _operand(v, inputs, allow_numpy=allow_numpy) for k, v in kwargs.items()}
    return _wrap(fn(*args, **kwargs), inputs)


# ------------------------------------------------------------------ ndarray

class Flags:
    """CuPy's flags: ``c_contiguous``, ``f_contiguous``, ``owndata``; nothing else."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, c_contiguous, f_contiguous, owndata):
        self.c_contiguous, self.f_contiguous, self.owndata = c_contiguous, f_contiguous, owndata

    def __getitem__(self, name):
        try:
            return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                    "OWNDATA": self.owndata}[name]
        except KeyError:
            raise KeyError(f"{name} is not defined for cupy.ndarray.flags") from None


class MemoryPointer:
    """``ndarray.data``: only the address (``ptr``)."""

    def __init__(self, ptr: int):
        self.ptr = ptr


#: ndarray methods that delegate to NumPy's method of the same name (results wrapped).
METHODS = ("copy", "view", "reshape", "ravel", "flatten", "transpose", "swapaxes", "squeeze", "sum", "prod",
           "mean", "var", "std", "max", "min", "argmax", "argmin", "all", "any", "cumsum", "clip", "dot",
           "repeat", "nonzero", "sort", "argsort", "round", "diagonal", "fill", "take")


class ndarray:
    """A CuPy array on the one simulated device: a private NumPy array and, for a view,
    the stand-in array that owns the memory (``base``)."""

    __slots__ = ("__weakref__", "_a", "_base")
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise _not_covered("cupy.ndarray(memptr=..., strides=...)")
        self._a = _garbage(numpy.empty(shape, dtype=dtype, order=order))
        self._base = None

    @classmethod
    def _make(cls, a: numpy.ndarray, base):
        obj = object.__new__(cls)
        obj._a = a
        obj._base = base
        return obj

    # ---- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    base = property(lambda self: self._base)
    device = property(lambda self: cuda.Device(0))
    data = property(lambda self: MemoryPointer(self._a.ctypes.data))

    @property
    def T(self):
        return self if self.ndim < 2 else self.transpose()

    @property
    def flags(self):
        return Flags(self._a.flags.c_contiguous, self._a.flags.f_contiguous, self._base is None)

    @property
    def __cuda_array_interface__(self):
        # The kernels' dispatcher reads this first: the moment to give Numba's simulator what it
        # lacks (not at import, which would import numba.cuda where the real path does not).
        if _SIMULATOR:
            _numba_simulator.install()
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "descr": a.dtype.descr, "version": 3,
                "strides": None if a.flags.c_contiguous else a.strides, "stream": None,
                "data": (a.ctypes.data if a.size else 0, False)}

    # ---- conversion
    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            if not isinstance(out, numpy.ndarray) or out.shape != self.shape:
                raise ValueError("out must be a numpy.ndarray of the same shape")
            out[...] = self._a
            return out
        return numpy.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, numpy.ndarray) or arr.shape != self.shape:
            raise ValueError("set() needs a numpy.ndarray of the same shape")
        self._a[...] = arr

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if casting is not None:
            raise TypeError("casting is not supported yet")
        if subok is not None:
            raise TypeError("subok is not supported yet")
        return _wrap(self._a.astype(dtype, order=order, copy=copy), [self])

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                        "construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        mine = UFUNCS_BY_NAME.get(ufunc.__name__)
        if mine is None or method != "__call__":
            return NotImplemented
        return mine(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        mine = _FUNCTIONS_BY_NAME.get(func.__name__)
        if mine is None:
            raise _not_covered(f"numpy.{func.__name__} on a cupy.ndarray (cupy.{func.__name__})")
        return mine(*args, **kwargs)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # ---- container
    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def __getitem__(self, key):
        key = _index(key)
        if not _is_advanced(key):  # integers keep a view (CuPy), where NumPy returns a scalar
            key = (key if isinstance(key, tuple) else (key,))
            if not _builtins.any(k is Ellipsis for k in key):
                key = key + (Ellipsis,)
        return _wrap(self._a[key], [self])

    def __setitem__(self, key, value):
        key = _index(key)
        if isinstance(value, numpy.ndarray) and value.ndim > 0 and not _is_advanced(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        inputs: list = []
        self._a[key] = _operand(value, inputs, allow_numpy=True)

    def scatter_add(self, slices, value):
        scatter_add(self, slices, value)

    # ---- numbers
    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __complex__(self):
        return complex(self.item())

    def __getattr__(self, name):  # only reached for names the class does not define
        raise AttributeError(f"cupy.ndarray.{name} is not covered by the CuPy stand-in "
                             "(tests/cupy_standin/cupy); add it there with CuPy's behaviour if real CuPy has it")

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)


def _method(name):
    def method(self, *args, **kwargs):
        return _call(getattr(self._a, name), args, kwargs, owner=self)
    method.__name__ = name
    return method


for _name in METHODS:
    setattr(ndarray, _name, _method(_name))


def _index(key):
    """An index with stand-in arrays unwrapped; NumPy index arrays are accepted (CuPy
    converts them to device arrays)."""
    inputs: list = []
    if isinstance(key, tuple):
        return tuple(_operand(k, inputs, allow_numpy=True) for k in key)
    return _operand(key, inputs, allow_numpy=True)


def _is_advanced(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return _builtins.any(isinstance(k, (numpy.ndarray, list, bool, numpy.bool_)) for k in keys)


def _garbage(a: numpy.ndarray) -> numpy.ndarray:
    """Uninitialised GPU memory holds anything: NaN for floats makes a read show."""
    if a.dtype.kind in "fc":
        a.fill(numpy.nan)
    return a


# ------------------------------------------------------------------ operators and ufuncs

class ufunc:
    """A CuPy ufunc: called on stand-in arrays, NumPy scalars and Python numbers only."""

    def __init__(self, name: str):
        self.__name__ = name
        self._np = getattr(numpy, name)
        self.nin, self.nout = self._np.nin, self._np.nout

    def __call__(self, *args, **kwargs):
        return _call(self._np, args, kwargs)

    def __getattr__(self, name):  # reduce, accumulate, at, outer
        raise AttributeError(f"cupy.{self.__name__}.{name}: not covered by the CuPy stand-in")

    def __repr__(self):
        return f"<ufunc '{self.__name__}' (CuPy stand-in)>"


#: Elementwise functions (CuPy ufuncs), delegated to NumPy's ufunc of the same name.
UFUNCS = ("add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "power", "negative",
          "positive", "absolute", "exp", "expm1", "exp2", "log", "log1p", "log2", "log10", "sqrt", "square",
          "reciprocal", "sign", "tanh", "sinh", "cosh", "sin", "cos", "tan", "arctan", "arctanh", "maximum",
          "minimum", "fmax", "fmin", "greater", "greater_equal", "less", "less_equal", "equal", "not_equal",
          "logical_and", "logical_or", "logical_not", "logical_xor", "isnan", "isinf", "isfinite", "floor",
          "ceil", "rint", "trunc", "remainder", "fmod", "logaddexp", "signbit", "copysign", "bitwise_and",
          "bitwise_or", "bitwise_xor", "invert")
UFUNCS_BY_NAME = {name: ufunc(name) for name in UFUNCS}
UFUNCS_BY_NAME["abs"] = UFUNCS_BY_NAME["absolute"]
UFUNCS_BY_NAME["mod"] = UFUNCS_BY_NAME["remainder"]
globals().update(UFUNCS_BY_NAME)


def _binary(name, reflected=False):
    fn = UFUNCS_BY_NAME[name]

    def op(self, other):
        if getattr(other, "__array_ufunc__", 0) is None:  # defer to types that opt out (CuPy's rule)
            return NotImplemented
        return fn(other, self) if reflected else fn(self, other)
    return op


def _inplace(name):
    fn = UFUNCS_BY_NAME[name]

    def op(self, other):
        return fn(self, other, out=self)
    return op


for _dunder, _name in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                       ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"),
                       ("and", "bitwise_and"), ("or", "bitwise_or"), ("xor", "bitwise_xor")]:
    setattr(ndarray, f"__{_dunder}__", _binary(_name))
    setattr(ndarray, f"__r{_dunder}__", _binary(_name, reflected=True))
    setattr(ndarray, f"__i{_dunder}__", _inplace(_name))
for _dunder, _name in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                       ("eq", "equal"), ("ne", "not_equal")]:
    setattr(ndarray, f"__{_dunder}__", _binary(_name))
ndarray.__neg__ = lambda self: UFUNCS_BY_NAME["negative"](self)
ndarray.__pos__ = lambda self: UFUNCS_BY_NAME["positive"](self)
ndarray.__abs__ = lambda self: UFUNCS_BY_NAME["absolute"](self)
ndarray.__invert__ = lambda self: UFUNCS_BY_NAME["invert"](self)


def _matmul(self, other, reflected=False):
    if getattr(other, "__array_ufunc__", 0) is None:
        return NotImplemented
    matmul = _FUNCTIONS_BY_NAME["matmul"]
    return matmul(other, self) if reflected else matmul(self, other)


ndarray.__matmul__ = _matmul
ndarray.__rmatmul__ = lambda self, other: _matmul(self, other, reflected=True)


# ------------------------------------------------------------------ module functions

def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, blocking=False):
    """``cupy.array``: a stand-in array is copied unless ``copy=False`` allows the same
    object; anything else (NumPy arrays, lists, scalars) is transferred, so always copied."""
    if type(obj) is ndarray:
        if not copy and (dtype is None or numpy.dtype(dtype) == obj.dtype) and ndmin <= obj.ndim:
            return obj
        return _wrap(numpy.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin), [])
    inputs: list = []
    value = _operand(obj, inputs, allow_numpy=True)
    return _wrap(numpy.array(value, dtype=dtype, copy=True, order=order, ndmin=ndmin), [])


def asarray(a, dtype=None, order=None, *, blocking=False):
    return array(a, dtype=dtype, copy=False, order=order or "K")


def ascontiguousarray(a, dtype=None):
    if type(a) is ndarray and a.flags.c_contiguous and (dtype is None or numpy.dtype(dtype) == a.dtype):
        return a
    return array(a, dtype=dtype, copy=True, order="C")


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if type(a) is ndarray:
        return a.get(stream=stream, order=order, out=out)
    return numpy.asarray(a, order=order)


def get_array_module(*args):
    return _this_module if _builtins.any(type(a) is ndarray for a in args) else numpy


def empty(shape, dtype=float, order="C"):
    return ndarray._make(_garbage(numpy.empty(shape, dtype=dtype, order=order)), None)


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    if type(prototype) is not ndarray:
        raise TypeError(f"Unsupported type {type(prototype)}")
    return ndarray._make(_garbage(numpy.empty_like(prototype._a, dtype=dtype, order=order, shape=shape)), None)


def scatter_add(a, slices, value):
    """``cupyx.scatter_add``: ``a[slices] += value`` adding once per repeated index."""
    if type(a) is not ndarray:
        raise TypeError(f"scatter_add needs a cupy.ndarray, got {type(a)}")
    if a.dtype not in _ATOMIC_ADD_DTYPES:
        raise TypeError("scatter_add only supports int32, float16, float32, float64, uint32, uint64, "
                        "as data type")
    numpy.add.at(a._a, _index(slices), _operand(value, [], allow_numpy=True))


_ATOMIC_ADD_DTYPES = tuple(numpy.dtype(t) for t in (numpy.int32, numpy.float16, numpy.float32, numpy.float64,
                                                     numpy.uint32, numpy.uint64))

#: Creation functions that take no array (delegated to NumPy, result wrapped).
CREATION = ("zeros", "ones", "full", "arange", "linspace", "eye", "identity")
#: Functions on stand-in arrays, delegated to NumPy's function of the same name.
FUNCTIONS = ("zeros_like", "ones_like", "full_like", "sum", "prod", "mean", "var", "std", "max", "amax",
             "min", "amin", "argmax", "argmin", "all", "any", "cumsum", "clip", "where", "dot", "matmul",
             "tensordot", "einsum", "outer", "reshape", "ravel", "transpose", "swapaxes", "moveaxis",
             "expand_dims", "squeeze", "broadcast_to", "broadcast_arrays", "concatenate", "stack", "split",
             "pad", "take", "take_along_axis", "repeat", "tile", "flip", "roll", "sort", "argsort", "unique",
             "bincount", "count_nonzero", "nonzero", "flatnonzero", "diag", "tril", "triu", "isclose",
             "allclose", "array_equal", "around", "round", "nan_to_num", "atleast_1d", "atleast_2d")


def _delegate(name, allow_numpy=False):
    np_fn = getattr(numpy, name)

    def fn(*args, **kwargs):
        return _call(np_fn, args, kwargs, allow_numpy=allow_numpy)
    fn.__name__ = name
    return fn


_FUNCTIONS_BY_NAME = {name: _delegate(name) for name in CREATION + FUNCTIONS}
_FUNCTIONS_BY_NAME["take"] = _delegate("take", allow_numpy=True)  # CuPy converts NumPy indices
_FUNCTIONS_BY_NAME.update(array=array, asarray=asarray, ascontiguousarray=ascontiguousarray, empty=empty,
                          empty_like=empty_like)
globals().update(_FUNCTIONS_BY_NAME)
_FUNCTIONS_BY_NAME.update(UFUNCS_BY_NAME)


class _StrideTricks:
    @staticmethod
    def as_strided(x, shape=None, strides=None):
        if type(x) is not ndarray:
            raise TypeError(f"Unsupported type {type(x)}")
        return _wrap(numpy.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides), [x])


class lib:  # CuPy's module name
    stride_tricks = _StrideTricks


#: Names CuPy shares with NumPy: dtypes, constants, dtype helpers.
SHARED = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool_", "intp", "complex64", "complex128", "dtype", "newaxis", "inf", "nan", "pi", "e",
          "integer", "floating", "number", "signedinteger", "unsignedinteger", "generic", "issubdtype",
          "result_type", "promote_types", "can_cast", "finfo", "iinfo", "isscalar")
globals().update({name: getattr(numpy, name) for name in SHARED})


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_POOL = _MemoryPool()


def get_default_memory_pool():
    return _POOL


def __getattr__(name):
    raise AttributeError(f"cupy.{name} is not covered by the CuPy stand-in (tests/cupy_standin/cupy); "
                         "add it there with CuPy's behaviour if real CuPy has it")


_this_module = _sys.modules[__name__]
