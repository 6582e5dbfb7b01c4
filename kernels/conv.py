"""Numba CPU kernels of the convolution and pooling ops (``tinygrad_sgd.ops.nn``).

The readable specification of every kernel is the array code in ``ops/nn.py`` (im2col
through a stride-tricks view, col2im by strided slice additions, pooling over window
views), which also runs on the GPU with CuPy; the tests hold the two equal.

Layout. The convolution is im2col + matrix products, with the columns laid out
``cols[(c, i, j), (n, y, x)]`` -- one row per input channel and kernel offset, one column
per output pixel of the whole batch -- so that

* forward is ONE GEMM ``W (O, C*kh*kw) @ cols -> (O, N*Ho*Wo)``, brought to NCHW with
  the bias added by :func:`rows_to_nchw`;
* the weight gradient is ONE GEMM ``g (O, N*Ho*Wo) @ cols^T`` (BLAS reads the transposed
  operand in place), with ``g`` brought to that layout by :func:`nchw_to_rows`;
* the input gradient is ``W^T @ g[n]`` per sample, ``(N, C*kh*kw, Ho*Wo)``, followed by
  :func:`col2im`.

For the forward, one product over the whole batch lets BLAS use every core: with two
threads it beat the per-sample products (the earlier form) for both layers of the example
CNN; with one thread it was slower for the first layer and faster for the second. The
input gradient keeps the per-sample products, which measured faster on one thread
(docs/benchmarks.md).

The kernels are serial loops, run on the calling thread. They sit between the matrix
products, whose BLAS threads stay awake (spinning) for a while after each call; a Numba
parallel region started next to them fights those threads for the cores and slowed the
CNN's next matrix product about twofold on a 2-core machine (docs/benchmarks.md). The
cores belong to BLAS here, and the sums are added in a fixed order.

Padding is handled by bounds checks inside the loops: no padded copy of the input.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_OPTIONS = {"parallel": False, "cache": True, "error_model": "numpy", "fastmath": False}


@njit(inline="always", cache=True)
def _window(index, stride, pad, kernel, size):
    """The input rows (or columns) ``[start, stop)`` that output row (column) ``index`` of a
    pooling pools over, the padding cut off."""
    first = index * stride - pad
    return max(first, 0), min(first + kernel, size)


@njit(**_OPTIONS)
def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols):
    """``cols[(c*kh + i)*kw + j, (n*ho + y)*wo + x] = x_pad[n, c, y*sh + i*dh, x*sw + j*dw]``."""
    batch, channels, height, width = x.shape
    zero = x.dtype.type(0)
    for row in range(channels * kh * kw):
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        for n in range(batch):
            for y in range(ho):
                yy = y * sh + i * dh - ph
                start = (n * ho + y) * wo
                if yy < 0 or yy >= height:
                    for xo in range(wo):
                        cols[row, start + xo] = zero
                else:
                    for xo in range(wo):
                        xx = xo * sw + j * dw - pw
                        cols[row, start + xo] = x[n, c, yy, xx] if 0 <= xx < width else zero


@njit(**_OPTIONS)
def col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):
    """The adjoint of :func:`im2col`, from per-sample columns ``cols[n, (c*kh + i)*kw + j,
    y*wo + x]``: ``out[n, c, y*sh + i*dh - ph, x*sw + j*dw - pw] += cols[...]``.

    One ``(n, c)`` plane at a time, so each output element is summed in a fixed order."""
    batch, channels, height, width = out.shape
    zero = out.dtype.type(0)
    for plane in range(batch * channels):
        n = plane // channels
        c = plane % channels
        for yy in range(height):
            for xx in range(width):
                out[n, c, yy, xx] = zero
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for y in range(ho):
                    yy = y * sh + i * dh - ph
                    if yy < 0 or yy >= height:
                        continue
                    start = y * wo
                    for xo in range(wo):
                        xx = xo * sw + j * dw - pw
                        if 0 <= xx < width:
                            out[n, c, yy, xx] += cols[n, row, start + xo]


@njit(**_OPTIONS)
def nchw_to_rows(grad, rows):
    """``rows[o, n*P + p] = grad[n, o, p]``: the upstream gradient in the GEMM's layout."""
    batch, channels, pixels = grad.shape
    for o in range(channels):
        for n in range(batch):
            for p in range(pixels):
                rows[o, n * pixels + p] = grad[n, o, p]


@njit(**_OPTIONS)
def rows_to_nchw(rows, bias, out):
    """``out[n, o, p] = rows[o, n*P + p] + bias[o]``: the forward GEMM's result in NCHW,
    with the bias added on the way (the inverse of :func:`nchw_to_rows`)."""
    batch, channels, pixels = out.shape
    for n in range(batch):
        for o in range(channels):
            b = bias[o]
            for p in range(pixels):
                out[n, o, p] = rows[o, n * pixels + p] + b


# ----------------------------------------------------------------------------- pooling


@njit(**_OPTIONS)
def max_pool(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """Max over each window, and the flat index (``y*W + x`` within its plane) of the
    element chosen, with torch's rule: scan the window row by row, take an element when it
    is greater than the best so far or NaN (so a NaN wins, and the last NaN is kept);
    padding is never chosen."""
    batch, channels, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for plane in range(batch * channels):
        n = plane // channels
        c = plane % channels
        for y in range(ho):
            y_start, y_stop = _window(y, sh, ph, kh, height)
            for xo in range(wo):
                x_start, x_stop = _window(xo, sw, pw, kw, width)
                best = -np.inf
                where = y_start * width + x_start
                for yy in range(y_start, y_stop):
                    for xx in range(x_start, x_stop):
                        value = x[n, c, yy, xx]
                        if value > best or math.isnan(value):
                            best = value
                            where = yy * width + xx
                out[n, c, y, xo] = best
                argmax[n, c, y, xo] = where


@njit(**_OPTIONS)
def max_pool_2x2(x, sh, sw, out, argmax):
    """:func:`max_pool` for the common 2x2 window without padding, written out so the
    compiler unrolls it (a window loop of unknown length costs 3x as much)."""
    batch, channels, _, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for plane in range(batch * channels):
        n = plane // channels
        c = plane % channels
        for y in range(ho):
            for xo in range(wo):
                best = x.dtype.type(-np.inf)
                where = y * sh * width + xo * sw  # (an all -inf window keeps its first element)
                for i in range(2):
                    for j in range(2):
                        yy = y * sh + i
                        xx = xo * sw + j
                        value = x[n, c, yy, xx]
                        if value > best or math.isnan(value):
                            best = value
                            where = yy * width + xx
                out[n, c, y, xo] = best
                argmax[n, c, y, xo] = where


@njit(**_OPTIONS)
def max_pool_backward(grad, argmax, out):
    """``out[n, c].flat[argmax[n, c, y, x]] += grad[n, c, y, x]``, plane by plane."""
    batch, channels, height, width = out.shape
    ho, wo = grad.shape[2], grad.shape[3]
    zero = out.dtype.type(0)
    for plane in range(batch * channels):
        n = plane // channels
        c = plane % channels
        for yy in range(height):
            for xx in range(width):
                out[n, c, yy, xx] = zero
        for y in range(ho):
            for xo in range(wo):
                where = argmax[n, c, y, xo]
                out[n, c, where // width, where % width] += grad[n, c, y, xo]


@njit(**_OPTIONS)
def max_pool_2x2_backward(grad, argmax, out):
    """:func:`max_pool_backward` for 2x2 windows at stride 2 (they tile the input): one pass
    that writes every element once -- the gradient at each window's chosen element, zero
    at the other three and in an odd last row or column."""
    batch, channels, height, width = out.shape
    ho, wo = grad.shape[2], grad.shape[3]
    zero = out.dtype.type(0)
    for plane in range(batch * channels):
        n = plane // channels
        c = plane % channels
        for y in range(ho):
            for i in range(2):
                yy = 2 * y + i
                for xo in range(wo):
                    where = argmax[n, c, y, xo]
                    g = grad[n, c, y, xo]
                    for j in range(2):
                        xx = 2 * xo + j
                        out[n, c, yy, xx] = g if where == yy * width + xx else zero
                for xx in range(2 * wo, width):
                    out[n, c, yy, xx] = zero
        for yy in range(2 * ho, height):
            for xx in range(width):
                out[n, c, yy, xx] = zero


@njit(**_OPTIONS)
def avg_pool(x, kh, kw, sh, sw, ph, pw, count_include_pad, out):
    """Mean over each window; the divisor is ``kh*kw``, or with ``count_include_pad``
    False the number of the window's elements inside the input."""
    batch, channels, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for plane in range(batch * channels):
        n = plane // channels
        c = plane % channels
        for y in range(ho):
            y_start, y_stop = _window(y, sh, ph, kh, height)
            for xo in range(wo):
                x_start, x_stop = _window(xo, sw, pw, kw, width)
                total = out.dtype.type(0)
                for yy in range(y_start, y_stop):
                    for xx in range(x_start, x_stop):
                        total += x[n, c, yy, xx]
                count = kh * kw if count_include_pad else (y_stop - y_start) * (x_stop - x_start)
                out[n, c, y, xo] = total / out.dtype.type(count)


@njit(**_OPTIONS)
def avg_pool_backward(grad, kh, kw, sh, sw, ph, pw, count_include_pad, out):
    """The adjoint of :func:`avg_pool`: spread ``grad / divisor`` over each window."""
    batch, channels, height, width = out.shape
    ho, wo = grad.shape[2], grad.shape[3]
    zero = out.dtype.type(0)
    for plane in range(batch * channels):
        n = plane // channels
        c = plane % channels
        for yy in range(height):
            for xx in range(width):
                out[n, c, yy, xx] = zero
        for y in range(ho):
            y_start, y_stop = _window(y, sh, ph, kh, height)
            for xo in range(wo):
                x_start, x_stop = _window(xo, sw, pw, kw, width)
                count = kh * kw if count_include_pad else (y_stop - y_start) * (x_stop - x_start)
                share = grad[n, c, y, xo] / out.dtype.type(count)
                for yy in range(y_start, y_stop):
                    for xx in range(x_start, x_stop):
                        out[n, c, yy, xx] += share
