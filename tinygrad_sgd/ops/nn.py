"""The layers' ops: linear, convolution, pooling, batch norm, embedding, and the losses.

Coarse ops: each does in one ``forward`` what a composition of elementwise ops would do in
many, with a hand-written ``backward``. ``tinygrad_sgd.nn.functional`` checks the
arguments and calls them.

* ``Linear``: ``x @ W^T + b`` in one op.
* ``Conv2d`` with its two adjoints ``Conv2dInputGrad`` (the transposed convolution) and
  ``Conv2dWeightGrad``: im2col through a stride-tricks window view and one batched
  matmul; the backward's col2im adds one kernel offset at a time. Each of the three ops
  differentiates into the other two, so second derivatives come for free.
* ``MaxPool2d`` / ``AvgPool2d`` (+ ``AvgPool2dAdjoint``), ``BatchNormTrain``,
  ``Embedding`` (dense or row-sparse gradient), ``CrossEntropy`` / ``SoftCrossEntropy`` /
  ``NLLLoss`` / ``BinaryCrossEntropy`` (fused, stable losses).

``BatchNormTrain`` computes its plain backward from the normalised input it saved, and
recomputes that input with Tensor ops when the backward is recorded (``create_graph``),
so second derivatives through it stay exact.

**CPU fast paths.** On NumPy arrays the convolution and pooling ops run Numba kernels
(``cpu_kernels.py``, ``kernels/conv.py``): im2col into a ``(C*kh*kw, N*Ho*Wo)`` layout,
matrix products over the batch (forward, weight gradient) or per sample (input gradient),
col2im and pooling as serial loops over planes (no ``np.add.at``). The array code below
each ``if`` is the readable reference, held equal to the kernels by the tests, and the
code that runs on CuPy arrays.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd.engine import Function, is_grad_enabled
from ..sparse import SparseRowGrad
from . import cpu_kernels
from .common import constant
from .shape import IndexAdd

# ----------------------------------------------------------------------------- linear


class Linear(Function):
    """``y = x W^T + b`` for ``x`` of shape ``(*, in)``, ``W`` of ``(out, in)``, ``b`` of ``(out,)``.

    Backward: ``dx = g W``, ``dW = g^T x`` (leading axes flattened), ``db = sum(g)``.
    """

    def forward(self, x, weight, bias=None):
        out = x @ weight.T
        if bias is not None:
            out += bias  # in place: the matmul's result is a fresh array
        return out

    def backward(self, grad, output):
        x, weight = self.inputs[0], self.inputs[1]
        needs = self.needs_input_grad
        out_features, in_features = weight.shape
        g2 = grad.reshape(-1, out_features)  # leading axes flattened (a no-op for 2-D input)
        grad_x = grad @ weight if needs[0] else None
        grad_w = g2.T @ x.reshape(-1, in_features) if needs[1] else None
        grad_b = g2.sum(axis=0) if len(needs) > 2 and needs[2] else None
        return (grad_x, grad_w, grad_b)[:len(self.inputs)]


# ----------------------------------------------------------------------------- convolution


def _pad(x, pads: tuple, value=0.0):
    """Pad the last two axes by ``pads = (top, bottom, left, right)`` with ``value``."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    n, c, h, w = x.shape
    out = backend.get_array_module(x).full((n, c, h + top + bottom, w + left + right), value, dtype=x.dtype)
    out[:, :, top:top + h, left:left + w] = x
    return out


def _crop(padded, pads: tuple, hw: tuple):
    top, _, left, _ = pads
    return padded[:, :, top:top + hw[0], left:left + hw[1]]


def _windows(padded, kernel: tuple, stride: tuple, dilation: tuple, out_hw: tuple):
    """A read-only view ``v[n, c, i, j, y, x] = padded[n, c, y*sh + i*dh, x*sw + j*dw]``.

    No data is copied: the six axes are strides over the padded array. Reshaping it to
    ``(N, C*kh*kw, Ho*Wo)`` is the im2col copy.
    """
    n, c = padded.shape[:2]
    s_n, s_c, s_h, s_w = padded.strides
    xp = backend.get_array_module(padded)
    return xp.lib.stride_tricks.as_strided(
        padded, shape=(n, c, kernel[0], kernel[1], out_hw[0], out_hw[1]),
        strides=(s_n, s_c, s_h * dilation[0], s_w * dilation[1], s_h * stride[0], s_w * stride[1]))


def _col2im(cols, padded_shape: tuple, stride: tuple, dilation: tuple):
    """The adjoint of :func:`_windows`: add ``cols[n, c, i, j, y, x]`` back at its pixel.

    One strided slice addition per kernel offset ``(i, j)``: ``kh * kw`` vectorised adds.
    """
    kh, kw, ho, wo = cols.shape[2:]
    sh, sw = stride
    dh, dw = dilation
    out = backend.get_array_module(cols).zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw] += cols[:, :, i, j]
    return out


def _out_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


class Geometry:
    """Kernel, stride, padding and dilation of one convolution or pooling call."""

    __slots__ = ("kernel", "stride", "pads", "dilation")

    def __init__(self, kernel, stride, pads, dilation):
        self.kernel, self.stride, self.pads, self.dilation = kernel, stride, pads, dilation

    def out_hw(self, h: int, w: int) -> tuple:
        top, bottom, left, right = self.pads
        return (_out_size(h, self.kernel[0], self.stride[0], top + bottom, self.dilation[0]),
                _out_size(w, self.kernel[1], self.stride[1], left + right, self.dilation[1]))

    def padded_shape(self, x_shape: tuple) -> tuple:
        top, bottom, left, right = self.pads
        return (x_shape[0], x_shape[1], x_shape[2] + top + bottom, x_shape[3] + left + right)


def _conv_forward(x, weight, geometry: Geometry):
    n, c, h, w = x.shape
    out_channels = weight.shape[0]
    ho, wo = geometry.out_hw(h, w)
    windows = _windows(_pad(x, geometry.pads), geometry.kernel, geometry.stride, geometry.dilation, (ho, wo))
    cols = windows.reshape(n, c * geometry.kernel[0] * geometry.kernel[1], ho * wo)  # the im2col copy
    # (O, C*kh*kw) @ (N, C*kh*kw, Ho*Wo) -> (N, O, Ho*Wo): one batched GEMM, already NCHW.
    return (weight.reshape(out_channels, -1) @ cols).reshape(n, out_channels, ho, wo)


class Conv2d(Function):
    """``y[n, o] = sum_{c, i, j} W[o, c, i, j] * x_pad[n, c, y*s + i*d, x*s + j*d] + b[o]``."""

    def forward(self, x, weight, bias=None, *, geometry):
        self.geometry = geometry
        self.cols = None  # the im2col columns, kept for the weight gradient (fast path)
        if cpu_kernels.available(x, weight, bias):
            out, self.cols = cpu_kernels.conv_forward(x, weight, bias, geometry)
            return out
        out = _conv_forward(x, weight, geometry)
        if bias is not None:
            out += bias.reshape(1, -1, 1, 1)
        return out

    def backward(self, grad, output):
        x, weight = self.inputs[0], self.inputs[1]
        needs = self.needs_input_grad
        grad_x = grad_w = grad_b = None
        rows = None  # fast path: the gradient in the weight GEMM's layout, also summed for the bias
        if needs[1] and self.cols is not None and not is_grad_enabled() and cpu_kernels.available(grad.data):
            rows = cpu_kernels.nchw_to_rows(grad.data)
        if needs[0]:
            grad_x = Conv2dInputGrad.apply(grad, weight, x_shape=x.data.shape, geometry=self.geometry)
        if needs[1]:
            grad_w = Conv2dWeightGrad.apply(x, grad, geometry=self.geometry, cols=self.cols, grad_rows=rows)
        if len(needs) > 2 and needs[2]:
            grad_b = constant(rows.sum(axis=1), grad) if rows is not None else grad.sum(axis=(0, 2, 3))
        return (grad_x, grad_w, grad_b)[:len(self.inputs)]


class Conv2dInputGrad(Function):
    """The transposed convolution ``conv^T(g, W)``: the gradient of a conv w.r.t. its input.

    ``<h, conv^T(g, W)> = <conv(h, W), g>``, so its gradients are ``conv(h, W)`` for ``g``
    and ``conv_weight_grad(h, g)`` for ``W``.
    """

    def forward(self, grad_out, weight, *, x_shape, geometry):
        self.x_shape, self.geometry = x_shape, geometry
        if cpu_kernels.available(grad_out, weight):
            return cpu_kernels.conv_input_grad(grad_out, weight, x_shape, geometry)
        n, out_channels, ho, wo = grad_out.shape
        _, c, kh, kw = weight.shape
        cols = weight.reshape(out_channels, -1).T @ grad_out.reshape(n, out_channels, ho * wo)
        padded = _col2im(cols.reshape(n, c, kh, kw, ho, wo), geometry.padded_shape(x_shape), geometry.stride,
                         geometry.dilation)
        return _crop(padded, geometry.pads, x_shape[2:])

    def backward(self, grad, output):
        grad_out, weight = self.inputs
        needs = self.needs_input_grad
        return (Conv2d.apply(grad, weight, geometry=self.geometry) if needs[0] else None,
                Conv2dWeightGrad.apply(grad, grad_out, geometry=self.geometry) if needs[1] else None)


class Conv2dWeightGrad(Function):
    """``dW[o, c, i, j] = sum_{n, y, x} g[n, o, y, x] * x_pad[n, c, y*s + i*d, x*s + j*d]``.

    Linear in both arguments: ``<h, dW(x, g)> = <conv(x, h), g>``, so its gradients are
    ``conv^T(g, h)`` for ``x`` and ``conv(x, h)`` for ``g``.
    """

    def forward(self, x, grad_out, *, geometry, cols=None, grad_rows=None):
        """``cols``, ``grad_rows``: the forward's im2col columns of ``x`` and ``grad_out`` in
        the GEMMs' layout (fast path), or None."""
        self.geometry = geometry
        if cpu_kernels.available(x, grad_out):
            return cpu_kernels.conv_weight_grad(x, grad_out, geometry, cols, grad_rows)
        n, c = x.shape[:2]
        out_channels, ho, wo = grad_out.shape[1:]
        kh, kw = geometry.kernel
        windows = _windows(_pad(x, geometry.pads), geometry.kernel, geometry.stride, geometry.dilation, (ho, wo))
        cols = windows.reshape(n, c * kh * kw, ho * wo)
        # per sample (O, L) @ (L, C*kh*kw), then summed over the batch
        per_sample = grad_out.reshape(n, out_channels, ho * wo) @ cols.transpose(0, 2, 1)
        return per_sample.sum(axis=0).reshape(out_channels, c, kh, kw)

    def backward(self, grad, output):
        x, grad_out = self.inputs
        needs = self.needs_input_grad
        return (Conv2dInputGrad.apply(grad_out, grad, x_shape=x.data.shape, geometry=self.geometry)
                if needs[0] else None,
                Conv2d.apply(x, grad, geometry=self.geometry) if needs[1] else None)


# ----------------------------------------------------------------------------- pooling


class MaxPool2d(Function):
    """Max over each window; the gradient goes to the first maximum in the window (as torch;
    a window holding NaN outputs NaN and sends its gradient to its first element)."""

    def forward(self, x, *, geometry):
        self.geometry, self.hw, self.argmax = geometry, x.shape[2:], None
        if cpu_kernels.available(x):
            out, self.argmax = cpu_kernels.max_pool(x, geometry)
            return out
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        kw = geometry.kernel[1]
        ho, wo = geometry.out_hw(h, w)
        padded_shape = geometry.padded_shape(x.shape)
        windows = _windows(_pad(x, geometry.pads, -np.inf), geometry.kernel, geometry.stride, (1, 1), (ho, wo))
        # Max over the kh*kw kernel offsets, each a strided view of the input: a few
        # passes over output-sized arrays instead of copying every window out.
        count = geometry.kernel[0] * kw
        best = windows[:, :, 0, 0].copy()
        for offset in range(1, count):
            xp.maximum(best, windows[:, :, offset // kw, offset % kw], out=best)  # NaN wins, as torch
        # The first offset holding the max (torch's tie rule): walk the offsets backwards,
        # overwriting with a branch-free arithmetic select (masked writes are ~5x slower).
        arg_dtype = np.uint8 if count <= 256 else np.int32
        arg = xp.zeros(best.shape, dtype=arg_dtype)
        for offset in range(count - 1, -1, -1):
            hit = (windows[:, :, offset // kw, offset % kw] == best).astype(arg_dtype)
            arg *= 1 - hit
            arg += hit * offset
        # Flat position of each chosen element in the padded input, for the backward scatter.
        rows = xp.arange(ho).reshape(-1, 1) * geometry.stride[0] + arg // kw
        cols = xp.arange(wo) * geometry.stride[1] + arg % kw
        planes = xp.arange(n * c).reshape(n, c, 1, 1) * (padded_shape[2] * padded_shape[3])
        self.index = (planes + rows * padded_shape[3] + cols).reshape(-1)
        self.padded_shape, self.geometry, self.hw = padded_shape, geometry, (h, w)
        return best

    def backward(self, grad, output):
        if self.argmax is not None:  # fast path: argmax indexes each plane of the input
            x_shape = self.inputs[0].data.shape
            if not is_grad_enabled():
                return (constant(cpu_kernels.max_pool_backward(grad.data, self.argmax, x_shape, self.geometry), grad),)
            planes = np.arange(x_shape[0] * x_shape[1]).reshape(x_shape[:2] + (1, 1)) * (x_shape[2] * x_shape[3])
            index = (planes + self.argmax).reshape(-1)  # create_graph: a differentiable scatter
            return (IndexAdd.apply(grad.reshape(-1), shape=(int(np.prod(x_shape)),), index=index).reshape(x_shape),)
        size = int(np.prod(self.padded_shape))
        padded = IndexAdd.apply(grad.reshape(-1), shape=(size,), index=self.index).reshape(self.padded_shape)
        if not any(self.geometry.pads):
            return (padded,)
        top, _, left, _ = self.geometry.pads
        return (padded[:, :, top:top + self.hw[0], left:left + self.hw[1]],)


class AvgPool2d(Function):
    """Mean over each window (zero padding counted unless ``count_include_pad=False``)."""

    def forward(self, x, *, geometry, count_include_pad):
        self.geometry, self.count_include_pad, self.x_shape = geometry, count_include_pad, x.shape
        if cpu_kernels.available(x):
            return cpu_kernels.avg_pool(x, geometry, count_include_pad)
        ho, wo = geometry.out_hw(*x.shape[2:])
        windows = _windows(_pad(x, geometry.pads), geometry.kernel, geometry.stride, (1, 1), (ho, wo))
        return windows.sum(axis=(2, 3)) / _pool_divisor(x, x.shape, geometry, count_include_pad, (ho, wo))

    def backward(self, grad, output):
        return (AvgPool2dAdjoint.apply(grad, x_shape=self.x_shape, geometry=self.geometry,
                                        count_include_pad=self.count_include_pad),)


def _pool_divisor(like, x_shape: tuple, geometry: Geometry, count_include_pad: bool, out_hw: tuple):
    """Window size, or per output position the number of non-padding elements it covers."""
    if count_include_pad or not any(geometry.pads):
        return float(geometry.kernel[0] * geometry.kernel[1])
    ones = backend.get_array_module(like).ones((1, 1) + tuple(x_shape[2:]), dtype=like.dtype)
    return _windows(_pad(ones, geometry.pads), geometry.kernel, geometry.stride, (1, 1), out_hw).sum(axis=(2, 3))


class AvgPool2dAdjoint(Function):
    """The gradient of average pooling: spread ``g / divisor`` back over each window."""

    def forward(self, grad_out, *, x_shape, geometry, count_include_pad):
        self.geometry, self.count_include_pad = geometry, count_include_pad
        if cpu_kernels.available(grad_out):
            return cpu_kernels.avg_pool_backward(grad_out, x_shape, geometry, count_include_pad)
        xp = backend.get_array_module(grad_out)
        n, c, ho, wo = grad_out.shape
        scaled = grad_out / _pool_divisor(grad_out, x_shape, geometry, count_include_pad, (ho, wo))
        cols = xp.broadcast_to(scaled[:, :, None, None], (n, c) + geometry.kernel + (ho, wo))
        padded = _col2im(cols, geometry.padded_shape(x_shape), geometry.stride, (1, 1))
        return _crop(padded, geometry.pads, x_shape[2:])

    def backward(self, grad, output):  # linear op: its adjoint is average pooling itself
        return (AvgPool2d.apply(grad, geometry=self.geometry, count_include_pad=self.count_include_pad),)


# ----------------------------------------------------------------------------- batch norm


class BatchNormTrain(Function):
    """``y = (x - mean) / sqrt(var + eps) * w + b`` with the batch's mean and biased var.

    Statistics are per channel (axis 1) over every other axis, ``m`` values each. With
    ``xhat`` the normalised input and ``r = 1 / sqrt(var + eps)``:
    ``dx = w r (g - mean(g) - xhat mean(g xhat))``, ``dw = sum(g xhat)``, ``db = sum(g)``.
    """

    def forward(self, x, *affine, mean, inv_std, eps, has_weight, has_bias):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        self.axes = (0,) + tuple(range(2, x.ndim))
        self.shape, self.eps, self.has_weight, self.has_bias = shape, eps, has_weight, has_bias
        self.inv_std = inv_std.reshape(shape)
        self.xhat = (x - mean.reshape(shape)) * self.inv_std
        out = self.xhat
        if has_weight:
            out = out * affine[0].reshape(shape)
        if has_bias:
            out = out + affine[-1].reshape(shape)
        return out if (has_weight or has_bias) else out.copy()

    def backward(self, grad, output):
        x = self.inputs[0]
        axes, count = self.axes, x.data.size // x.data.shape[1]
        if is_grad_enabled():  # recording a graph: rebuild xhat from x so it is differentiable
            centered = x - x.mean(axis=axes, keepdims=True)
            inv_std = 1.0 / ((centered * centered).mean(axis=axes, keepdims=True) + self.eps).sqrt()
            xhat = centered * inv_std
        else:
            xhat, inv_std = constant(self.xhat, x), constant(self.inv_std, x)
        grad_sum = grad.sum(axis=axes, keepdims=True)
        grad_xhat_sum = (grad * xhat).sum(axis=axes, keepdims=True)
        needs = self.needs_input_grad
        grads = []
        if needs[0]:
            scale = inv_std * self.inputs[1].reshape(self.shape) if self.has_weight else inv_std
            grads.append((grad - grad_sum * (1.0 / count) - xhat * (grad_xhat_sum * (1.0 / count))) * scale)
        else:
            grads.append(None)
        if self.has_weight:
            grads.append(grad_xhat_sum.reshape(-1) if needs[1] else None)
        if self.has_bias:
            grads.append(grad_sum.reshape(-1) if needs[-1] else None)
        return tuple(grads)


# ----------------------------------------------------------------------------- embedding


class Embedding(Function):
    """``out[...] = weight[indices[...]]``; the weight's gradient adds rows back per index.

    Dense: a scatter-add into a zero table. Sparse: a :class:`SparseRowGrad` holding only
    the looked-up rows (repeats kept; they add up). Rows at ``padding_idx`` get no gradient.
    """

    def forward(self, weight, *, indices, padding_idx, sparse):
        self.indices, self.padding_idx, self.sparse = indices, padding_idx, sparse
        return weight[indices]

    def backward(self, grad, output):
        weight = self.inputs[0]
        rows = grad.reshape(-1, weight.data.shape[1])
        flat = self.indices.reshape(-1)
        keep = None if self.padding_idx is None else flat != self.padding_idx
        if self.sparse:
            values = rows.data[keep] if keep is not None else rows.data.copy()
            indices = (flat[keep] if keep is not None else flat).astype(np.int64)
            return (SparseRowGrad(indices, values, weight.data.shape),)
        if not is_grad_enabled() and cpu_kernels.available(rows.data):  # fast path: no np.add.at
            return (constant(cpu_kernels.embedding_backward(rows.data, flat, weight.data.shape, self.padding_idx),
                             grad),)
        if keep is not None:
            rows = rows * constant(keep[:, None].astype(rows.data.dtype), rows)
        return (IndexAdd.apply(rows, shape=weight.data.shape, index=flat),)


# ----------------------------------------------------------------------------- losses


def _log_softmax_array(logits):
    xp = backend.get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def _one_hot(safe, classes: int, class_shape: tuple):
    """Bool ``(N, C, d1, ...)``: True at each target's class (``safe`` is ``(N, 1, d1, ...)``)."""
    return backend.get_array_module(safe).arange(classes).reshape(class_shape) == safe


def _upstream(grad, reduction: str, denominator: float):
    """Upstream gradient broadcastable over ``(N, C, d1, ...)`` (a Tensor or a raw array)."""
    if reduction == "none":
        return grad.reshape(grad.shape[:1] + (1,) + grad.shape[1:])
    if reduction != "mean":
        return grad
    # A mean over no target (all ignored, or an empty batch) is NaN, but nothing was
    # averaged, so no logit moves it: torch's gradient is 0 there, not a ZeroDivisionError.
    return grad * (1.0 / denominator if denominator != 0 else 0.0)


def _divide(total, denominator):
    """``total / denominator`` as torch: 0/0 (every target ignored) is NaN, without a warning."""
    return total / denominator if denominator != 0 else total * float("nan")


class CrossEntropy(Function):
    """Fused log-softmax + NLL over class axis 1 with integer targets.

    Per sample (``w`` class weights, ``e`` = label_smoothing, ``C`` classes)::

        loss_i = (1 - e) w[y_i] (-log p_i[y_i]) + (e / C) sum_c w[c] (-log p_i[c])

    and ``dloss_i / dz_i = p_i ((1 - e) w[y_i] + (e / C) sum(w)) - ((1 - e) w[y_i] onehot(y_i) + (e / C) w)``
    (``p - q`` with the smoothed target ``q`` when unweighted). ``'mean'`` divides by
    the summed weights of the non-ignored targets (their count when unweighted).
    """

    def forward(self, logits, *, target, weight, ignore_index, may_ignore, reduction, label_smoothing):
        xp = backend.get_array_module(logits)
        classes = logits.shape[1]
        logp = _log_softmax_array(logits)
        # The common case -- (N, C) logits, no class weights, no smoothing, no ignored
        # target -- is the textbook loss -log p[y] with gradient softmax - onehot; it gets
        # a short path of a few array ops (this loss runs once per training step).
        self.plain = (weight is None and label_smoothing == 0 and logits.ndim == 2
                      and not (may_ignore and bool((target == ignore_index).any())))
        if self.plain:
            self.logp, self.target, self.reduction = logp, target, reduction
            picked = logp[xp.arange(logits.shape[0]), target]
            self.denominator = float(logits.shape[0]) if reduction == "mean" else 1.0
            if reduction == "none":
                return -picked
            return _divide(-picked.sum(), self.denominator) if reduction == "mean" else -picked.sum()
        valid = target != ignore_index
        safe = xp.where(valid, target, 0)[:, None]
        # An ignored row contributes 0 even when its logits are NaN (torch): select, do not
        # multiply by a zero weight (0 * NaN is NaN).
        picked = xp.where(valid, xp.take_along_axis(logp, safe, axis=1)[:, 0], 0)
        class_w = xp.ones(classes, dtype=logits.dtype) if weight is None else weight
        w_y = class_w[safe[:, 0]] * valid  # 0 for ignored targets
        e = label_smoothing
        loss = -(1.0 - e) * w_y * picked
        w_shape = (1, -1) + (1,) * (logits.ndim - 2)
        if e > 0:
            loss = loss - (e / classes) * xp.where(valid, (logp * class_w.reshape(w_shape)).sum(axis=1), 0)
        self.logp, self.safe, self.valid, self.w_y = logp, safe, valid, w_y
        self.class_w, self.w_shape, self.e, self.reduction = class_w, w_shape, e, reduction
        self.denominator = float(w_y.sum()) if reduction == "mean" else 1.0
        if reduction == "none":
            return loss
        return _divide(loss.sum(), self.denominator) if reduction == "mean" else loss.sum()

    def backward(self, grad, output):
        # dz = softmax(z) * a - b, with a (N, 1, ...) and b (N, C, ...) fixed by the
        # targets. softmax is recomputed from the logits with Tensor ops (not taken from
        # the forward's log-probabilities), so this backward is differentiable too.
        logits = self.inputs[0]
        a, b = self._coefficients(logits.shape[1])
        p = logits.softmax(axis=1)
        core = (p if a is None else p * constant(a, logits)) - constant(b, logits)
        return (core * _upstream(grad, self.reduction, self.denominator),)

    def _coefficients(self, classes: int) -> tuple:
        """``(a, b)`` of the gradient ``softmax * a - b``; ``a`` is None when it is 1."""
        xp = backend.get_array_module(self.logp)
        dtype = self.logp.dtype
        if self.plain:  # a = 1, b = onehot(y): the textbook softmax - onehot
            b = xp.zeros(self.logp.shape, dtype=dtype)
            b[xp.arange(b.shape[0]), self.target] = 1
            return None, b
        e = self.e
        valid = self.valid.astype(dtype)
        a = ((1.0 - e) * self.w_y + (e / classes) * float(self.class_w.sum()) * valid)[:, None]
        b = _one_hot(self.safe, classes, self.w_shape) * ((1.0 - e) * self.w_y)[:, None]
        if e > 0:
            b += (e / classes) * self.class_w.reshape(self.w_shape) * valid[:, None]
        return a, b.astype(dtype, copy=False)


class SoftCrossEntropy(Function):
    """Cross-entropy against class probabilities ``q`` (a float target, input's shape).

    ``loss_i = -sum_c w[c] q'_ic log p_ic`` with ``q' = (1 - e) q + e / C``;
    ``dz = p sum_c(w q') - w q'``, ``dq = -(1 - e) w log p``. ``'mean'`` divides by the
    number of samples (every axis but the class axis), as torch.
    """

    def forward(self, logits, target, *, weight, reduction, label_smoothing):
        classes = logits.shape[1]
        self.w_shape = (1, -1) + (1,) * (logits.ndim - 2)
        self.logp = _log_softmax_array(logits)
        self.weight, self.e, self.reduction = weight, label_smoothing, reduction
        q = target * (1.0 - label_smoothing) + label_smoothing / classes if label_smoothing > 0 else target
        wq = q if weight is None else q * weight.reshape(self.w_shape)
        loss = -(wq * self.logp).sum(axis=1)
        self.denominator = float(loss.size)
        if reduction == "none":
            return loss
        return loss.sum() / self.denominator if reduction == "mean" else loss.sum()

    def backward(self, grad, output):
        logits, target = self.inputs
        classes, e = logits.data.shape[1], self.e
        logp = logits.log_softmax(axis=1)  # recomputed with Tensor ops: differentiable
        w = None if self.weight is None else constant(self.weight.reshape(self.w_shape), logits)
        upstream = _upstream(grad, self.reduction, self.denominator)
        grad_logits = grad_target = None
        if self.needs_input_grad[0]:
            q = target * (1.0 - e) + e / classes if e > 0 else target
            wq = q if w is None else q * w
            grad_logits = (logp.exp() * wq.sum(axis=1, keepdims=True) - wq) * upstream
        if self.needs_input_grad[1]:
            weighted_logp = logp if w is None else logp * w
            grad_target = weighted_logp * (-(1.0 - e)) * upstream
        return grad_logits, grad_target


class NLLLoss(Function):
    """``loss_i = -w[y_i] input[i, y_i]`` (input holds log-probabilities); linear in input."""

    def forward(self, logp, *, target, weight, ignore_index, reduction):
        xp = backend.get_array_module(logp)
        valid = target != ignore_index
        safe = xp.where(valid, target, 0)[:, None]
        w_y = (xp.ones(logp.shape[1], dtype=logp.dtype) if weight is None else weight)[safe[:, 0]] * valid
        # select, not multiply by the zero weight: an ignored row's NaN gives 0 (torch)
        loss = -w_y * xp.where(valid, xp.take_along_axis(logp, safe, axis=1)[:, 0], 0)
        self.safe, self.w_y, self.reduction = safe, w_y, reduction
        self.denominator = float(w_y.sum()) if reduction == "mean" else 1.0
        if reduction == "none":
            return loss
        return _divide(loss.sum(), self.denominator) if reduction == "mean" else loss.sum()

    def backward(self, grad, output):
        logp = self.inputs[0]
        b = _one_hot(self.safe, logp.data.shape[1], (1, -1) + (1,) * (logp.data.ndim - 2)) * -self.w_y[:, None]
        return (constant(b, logp) * _upstream(grad, self.reduction, self.denominator),)


class BinaryCrossEntropy(Function):
    """``-(y max(log p, -100) + (1 - y) max(log(1 - p), -100))``, elementwise (torch's clamp).

    Backward as torch: ``dp = (p - y) / max(p (1 - p), eps)`` (finite at p = 0 or 1),
    ``dy = max(log(1 - p), -100) - max(log p, -100)`` (clamped like the forward, so finite;
    torch leaves this one unclamped, infinite at p = 0 or 1).
    """

    def forward(self, p, y):
        xp = backend.get_array_module(p)
        with np.errstate(divide="ignore"):  # log(0) = -inf, clamped just below
            log_p = xp.maximum(xp.log(p), -100.0)
            log_q = xp.maximum(xp.log(1.0 - p), -100.0)
        return -(y * log_p + (1.0 - y) * log_q)

    def backward(self, grad, output):
        p, y = self.inputs
        grad_p = grad_y = None
        if self.needs_input_grad[0]:
            grad_p = grad * (p - y) / (p * (1.0 - p)).clip(min=_BCE_EPSILON)
        if self.needs_input_grad[1]:
            with np.errstate(divide="ignore"):  # log(0) = -inf, clamped
                grad_y = grad * ((1.0 - p).log().clip(min=-100.0) - p.log().clip(min=-100.0))
        return grad_p, grad_y


# torch's EPSILON = 1e-12 reaches the clamp as a float32 (9.99999996e-13); the same
# number keeps our gradient at p = 0 or 1 equal to torch's to the last digit.
_BCE_EPSILON = float(np.float32(1e-12))
