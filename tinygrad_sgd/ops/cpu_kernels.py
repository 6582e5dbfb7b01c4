"""The CPU fast paths of the layers' coarse ops: array-level calls into the Numba kernels
of ``tinygrad_sgd.kernels`` (``conv.py``: convolution and pooling; ``recurrent.py``: the
recurrent layers' gates; ``scatter.py``: the embedding's scatter-add).

Every op that has a fast path keeps its readable array code, which is the reference the
tests hold the kernels equal to, and the code that runs on CuPy arrays (GPU). An op takes
the fast path when :func:`available` says so: NumPy float32/float64 arrays, Numba
importable, and the switch ``enabled`` on. Set ``tinygrad_sgd.ops.cpu_kernels.enabled =
False`` to run every op on its reference code (the tests do, to compare).

The first use also asks glibc's malloc to keep freed memory (:func:`keep_freed_memory`).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

enabled = True

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_modules: dict = {}


def available(*arrays) -> bool:
    """True when the fast path can run on these arrays (all NumPy, one float dtype)."""
    if not enabled:
        return False
    first = arrays[0]
    if type(first) is not np.ndarray or first.dtype not in _DTYPES:
        return False
    for a in arrays[1:]:
        if a is not None and (type(a) is not np.ndarray or a.dtype != first.dtype):
            return False
    return kernel_module("conv") is not None


def kernel_module(name: str):
    """``tinygrad_sgd.kernels.<name>``, imported on first use (None without Numba)."""
    if not _modules:
        keep_freed_memory()
    if name not in _modules:
        try:
            import importlib

            _modules[name] = importlib.import_module(f"tinygrad_sgd.kernels.{name}")
        except ImportError:
            _modules[name] = None
    return _modules[name]


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse; True when it was set.

    A training step allocates and frees the same large arrays every step (activations,
    im2col columns, gradients: tens of MiB for the CIFAR-shaped CNN). By default glibc
    serves large allocations with fresh pages from the OS and hands freed heap tops back,
    so every step page-faults its arrays in anew, a sizeable part of a CNN step (figures
    in docs/benchmarks.md). After this call, allocations up to 32 MiB come from
    the heap, and up to 512 MiB of freed heap is kept. The cost: the process's resident
    memory stays near its high-water mark. ``TINYGRAD_SGD_KEEP_FREED_MEMORY=0`` leaves
    malloc alone; elsewhere than glibc this does nothing.
    """
    if os.environ.get("TINYGRAD_SGD_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; absent on macOS, Windows, musl
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 512 << 20))


# ----------------------------------------------------------------------------- convolution


def im2col(x, geometry, out_hw: tuple):
    """``cols`` of shape ``(C*kh*kw, N*Ho*Wo)`` (see ``kernels/conv.py`` for the layout)."""
    k = kernel_module("conv")
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.stride, geometry.dilation
    top, _, left, _ = geometry.pads
    ho, wo = out_hw
    cols = np.empty((c * kh * kw, n * ho * wo), dtype=x.dtype)
    k.im2col(np.ascontiguousarray(x), kh, kw, sh, sw, top, left, dh, dw, ho, wo, cols)
    return cols


def nchw_to_rows(grad):
    """``(N, O, Ho, Wo) -> (O, N*Ho*Wo)``: the upstream gradient in the GEMMs' layout."""
    n, o = grad.shape[:2]
    rows = np.empty((o, grad.size // o), dtype=grad.dtype)
    kernel_module("conv").nchw_to_rows(np.ascontiguousarray(grad).reshape(n, o, -1), rows)
    return rows


def conv_forward(x, weight, bias, geometry):
    """``(output, cols)``: the convolution, and the columns its weight gradient reuses.

    ONE matrix product over the whole batch, ``W (O, C*kh*kw) @ cols -> (O, N*Ho*Wo)``,
    which BLAS spreads over every core, then one pass to NCHW that adds the bias."""
    n = x.shape[0]
    out_channels = weight.shape[0]
    ho, wo = geometry.out_hw(*x.shape[2:])
    cols = im2col(x, geometry, (ho, wo))
    rows = weight.reshape(out_channels, -1) @ cols
    out = np.empty((n, out_channels, ho * wo), dtype=x.dtype)
    if bias is None:  # -0.0 is the exact identity of + (a +0.0 would turn -0.0 results into +0.0)
        bias = np.full(out_channels, -0.0, dtype=x.dtype)
    kernel_module("conv").rows_to_nchw(rows, bias, out)
    return out.reshape(n, out_channels, ho, wo), cols


def conv_weight_grad(x, grad_out, geometry, cols=None, grad_rows=None):
    """``dW = g (O, N*Ho*Wo) @ cols^T``, reshaped to the weight's shape."""
    out_channels, ho, wo = grad_out.shape[1:]
    if cols is None:
        cols = im2col(x, geometry, (ho, wo))
    rows = nchw_to_rows(grad_out) if grad_rows is None else grad_rows
    return (rows @ cols.T).reshape((out_channels, x.shape[1]) + tuple(geometry.kernel))


def conv_input_grad(grad_out, weight, x_shape: tuple, geometry):
    """``col2im(W^T @ g[n])``: the transposed convolution."""
    n, out_channels, ho, wo = grad_out.shape
    cols = np.matmul(weight.reshape(out_channels, -1).T, grad_out.reshape(n, out_channels, ho * wo))
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.stride, geometry.dilation
    top, _, left, _ = geometry.pads
    out = np.empty(x_shape, dtype=grad_out.dtype)
    kernel_module("conv").col2im(cols, kh, kw, sh, sw, top, left, dh, dw, ho, wo, out)
    return out


# ----------------------------------------------------------------------------- pooling


def _pool_args(geometry) -> tuple:
    (kh, kw), (sh, sw) = geometry.kernel, geometry.stride
    return kh, kw, sh, sw, geometry.pads[0], geometry.pads[2]


def max_pool(x, geometry):
    """``(output, argmax)``: argmax is each chosen element's flat index in its plane."""
    n, c = x.shape[:2]
    ho, wo = geometry.out_hw(*x.shape[2:])
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = np.empty((n, c, ho, wo), dtype=np.int32 if x.shape[2] * x.shape[3] < 2 ** 31 else np.int64)
    if geometry.kernel == (2, 2) and not any(geometry.pads):
        kernel_module("conv").max_pool_2x2(np.ascontiguousarray(x), *geometry.stride, out, argmax)
    else:
        kernel_module("conv").max_pool(np.ascontiguousarray(x), *_pool_args(geometry), out, argmax)
    return out, argmax


def max_pool_backward(grad, argmax, x_shape: tuple, geometry):
    out = np.empty(x_shape, dtype=grad.dtype)
    tiles = geometry.kernel == (2, 2) and geometry.stride == (2, 2) and not any(geometry.pads)
    kernel = kernel_module("conv").max_pool_2x2_backward if tiles else kernel_module("conv").max_pool_backward
    kernel(np.ascontiguousarray(grad), argmax, out)
    return out


def avg_pool(x, geometry, count_include_pad: bool):
    n, c = x.shape[:2]
    ho, wo = geometry.out_hw(*x.shape[2:])
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    kernel_module("conv").avg_pool(np.ascontiguousarray(x), *_pool_args(geometry), bool(count_include_pad), out)
    return out


def avg_pool_backward(grad, x_shape: tuple, geometry, count_include_pad: bool):
    out = np.empty(x_shape, dtype=grad.dtype)
    kernel_module("conv").avg_pool_backward(np.ascontiguousarray(grad), *_pool_args(geometry),
                                            bool(count_include_pad), out)
    return out


# ----------------------------------------------------------------------------- embedding


def embedding_backward(rows, index, shape: tuple, padding_idx):
    """The dense gradient of an embedding table: zeros of ``shape`` with ``rows`` added
    at ``index`` (``padding_idx``'s rows skipped)."""
    out = np.zeros(shape, dtype=rows.dtype)
    kernel_module("scatter").scatter_add_rows(np.ascontiguousarray(rows), np.ascontiguousarray(index),
                                              -1 if padding_idx is None else padding_idx, out)
    return out
