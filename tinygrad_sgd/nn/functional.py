"""Functional forms of the layers and losses (``tg.nn.functional``, imported as ``F``).

Names and arguments follow ``torch.nn.functional``. The ops the core lacks are
:class:`~tinygrad_sgd.tensor.Function` subclasses here, each with ``forward`` on raw
arrays next to ``backward``:

* ``_Linear``: ``x @ W^T + b`` in one op (one matmul, bias added in place).
* ``_Conv2d`` with its two adjoints ``_Conv2dInputGrad`` (the transposed convolution)
  and ``_Conv2dWeightGrad``: im2col through a stride-tricks window view and one batched
  matmul; the backward's col2im adds one kernel offset at a time (``kh * kw`` slice
  additions, never a loop over pixels). Each of the three ops differentiates into the
  other two, so second derivatives come for free.
* ``_MaxPool2d`` / ``_AvgPool2d`` (+ ``_AvgPool2dAdjoint``), ``_BatchNormTrain``,
  ``_Embedding`` (dense or row-sparse gradient), ``_Erf`` (exact GELU),
  ``_CrossEntropy`` / ``_SoftCrossEntropy`` / ``_NLLLoss`` (fused, stable losses).

Every ``backward`` is written with Tensor ops. Where a fused forward saved an
intermediate (softmax probabilities, the normalised input), backward uses the saved array
when it runs without a graph (the usual ``loss.backward()``) and recomputes it with Tensor
ops when a graph is being recorded (``create_graph=True``), so Hessian-vector products
through these ops stay exact.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend, rng
from ..ops import IndexAdd, constant, plain_operands, where
from ..sparse import SparseRowGrad
from ..tensor import Function, Tensor, is_grad_enabled

# ----------------------------------------------------------------------------- checks

_REDUCTIONS = ("mean", "sum", "none")


def _require_tensor(value, name: str, fn: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(value).__name__}")
    return value


def _require_float(value, name: str, fn: str) -> Tensor:
    _require_tensor(value, name, fn)
    if value.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must be floating point, got dtype {value.dtype} "
                        "(convert with .float() or .double())")
    return value


def _same_dtype(x: Tensor, w: Tensor, fn: str) -> None:
    if x.dtype != w.dtype:
        raise TypeError(f"{fn}: input dtype {x.dtype} does not match weight dtype {w.dtype} "
                        f"(convert the input with .to(dtype=...) or build the layer with dtype={x.dtype})")


def _check_reduction(reduction: str, fn: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _constant_like(value, like: Tensor, name: str, fn: str):
    """A raw array in ``like``'s dtype and device from a Tensor, array or list (no gradient)."""
    if isinstance(value, Tensor):
        if value.device != like.device:
            raise RuntimeError(f"{fn}: {name} is on {value.device} but the input is on {like.device}")
        value = value.data
    array = value if backend.is_array(value) else np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: {name} must be numeric, got dtype {array.dtype}")
    xp = backend.get_array_module(like.data)
    return xp.asarray(backend.to_device(array, like.device), dtype=like.dtype)


# ----------------------------------------------------------------------------- linear


class _Linear(Function):
    """``y = x W^T + b`` for ``x`` of shape ``(*, in)``, ``W`` of ``(out, in)``, ``b`` of ``(out,)``.

    Backward: ``dx = g W``, ``dW = g^T x`` (leading axes flattened), ``db = sum(g)``. In a
    plain backward ``dW`` and ``db`` are computed straight into the fused optimizer's flat
    gradient buffer when it offers one (:meth:`Function.grad_buffer`): no copy at ``step()``.
    """

    takes_raw_grad = True

    def forward(self, x, weight, bias=None):
        out = x @ weight.T
        if bias is not None:
            out += bias  # in place: the matmul's result is a fresh array
        return out

    def backward(self, grad):
        plain = not is_grad_enabled()  # nothing records this backward: same formulas, raw arrays
        grad, x, weight = plain_operands(grad, self.inputs[0], self.inputs[1])
        needs = self.needs_input_grad
        out_features, in_features = weight.shape
        grad_x = grad @ weight if needs[0] else None
        grad_w = grad_b = None
        if needs[1] or (len(needs) > 2 and needs[2]):
            g2 = grad if grad.ndim == 2 else grad.reshape(-1, out_features)  # leading axes flattened
            if needs[1]:
                out = self.grad_buffer(1) if plain else None
                x2 = x if x.ndim == 2 else x.reshape(-1, in_features)
                grad_w = g2.T @ x2 if out is None else backend.get_array_module(x2).matmul(g2.T, x2, out=out)
            if len(needs) > 2 and needs[2]:
                out = self.grad_buffer(2) if plain else None
                grad_b = g2.sum(axis=0) if out is None else g2.sum(axis=0, out=out)
        return (grad_x, grad_w, grad_b)[:len(self.inputs)]


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` (``torch.nn.functional.linear``); weight is ``(out, in)``."""
    # One combined test on the raw arrays (this runs for every layer of every step); the
    # checks that name the problem run only when it fails.
    try:
        x, w = input.data, weight.data
        fits = (x.dtype.kind == "f" and w.dtype == x.dtype and w.ndim == 2 and x.ndim > 0
                and x.shape[-1] == w.shape[1]
                and (bias is None or (bias.data.dtype == x.dtype and bias.data.shape == w.shape[:1])))
        fits = fits and isinstance(input, Tensor) and isinstance(weight, Tensor) and (
            bias is None or isinstance(bias, Tensor))
    except AttributeError:
        fits = False
    if not fits:
        _linear_argument_error(input, weight, bias)
    return _Linear.apply(input, weight) if bias is None else _Linear.apply(input, weight, bias)


def _linear_argument_error(input, weight, bias) -> None:
    """Raise the error that names what is wrong with ``linear``'s arguments."""
    _require_float(input, "input", "linear")
    _require_float(weight, "weight", "linear")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: expected input with last dimension {weight.shape[1]} (in_features), "
                         f"got shape {input.shape}")
    _same_dtype(input, weight, "linear")
    _require_float(bias, "bias", "linear")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if bias.dtype != input.dtype:
        raise TypeError(f"linear: bias dtype {bias.dtype} does not match input dtype {input.dtype}")
    raise TypeError("linear: unsupported arguments")  # not reached: a check above names the problem


# ----------------------------------------------------------------------------- conv helpers


def _pair(value, name: str, fn: str, minimum: int) -> tuple:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}: {name} must be at least {minimum}, got {value!r}")
    return pair


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


class _Geometry:
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


def _check_image_input(input: Tensor, fn: str) -> Tensor:
    _require_float(input, "input", fn)
    if input.ndim not in (3, 4):
        raise ValueError(f"{fn}: expected a 4-D input (N, C, H, W) or a 3-D unbatched one (C, H, W), "
                         f"got shape {input.shape}")
    return input


def _check_output_size(geometry: _Geometry, hw: tuple, fn: str) -> tuple:
    out = geometry.out_hw(*hw)
    if min(out) < 1:
        top, bottom, left, right = geometry.pads
        reach = tuple(d * (k - 1) + 1 for d, k in zip(geometry.dilation, geometry.kernel))
        raise ValueError(f"{fn}: input of size {hw[0]}x{hw[1]} (padded to {hw[0] + top + bottom}x"
                         f"{hw[1] + left + right}) is smaller than the kernel's reach {reach[0]}x{reach[1]}")
    return out


def _conv_forward(x, weight, geometry: _Geometry):
    n, c, h, w = x.shape
    out_channels = weight.shape[0]
    ho, wo = geometry.out_hw(h, w)
    windows = _windows(_pad(x, geometry.pads), geometry.kernel, geometry.stride, geometry.dilation, (ho, wo))
    cols = windows.reshape(n, c * geometry.kernel[0] * geometry.kernel[1], ho * wo)  # the im2col copy
    # (O, C*kh*kw) @ (N, C*kh*kw, Ho*Wo) -> (N, O, Ho*Wo): one batched GEMM, already NCHW.
    return (weight.reshape(out_channels, -1) @ cols).reshape(n, out_channels, ho, wo)


class _Conv2d(Function):
    """``y[n, o] = sum_{c, i, j} W[o, c, i, j] * x_pad[n, c, y*s + i*d, x*s + j*d] + b[o]``."""

    def forward(self, x, weight, bias=None, *, geometry):
        self.geometry = geometry
        out = _conv_forward(x, weight, geometry)
        if bias is not None:
            out += bias.reshape(1, -1, 1, 1)
        return out

    def backward(self, grad):
        x, weight = self.inputs[0], self.inputs[1]
        needs = self.needs_input_grad
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_x = _Conv2dInputGrad.apply(grad, weight, x_shape=x.data.shape, geometry=self.geometry)
        if needs[1]:
            grad_w = _Conv2dWeightGrad.apply(x, grad, geometry=self.geometry)
        if len(needs) > 2 and needs[2]:
            grad_b = grad.sum(axis=(0, 2, 3))
        return (grad_x, grad_w, grad_b)[:len(self.inputs)]


class _Conv2dInputGrad(Function):
    """The transposed convolution ``conv^T(g, W)``: the gradient of a conv w.r.t. its input.

    ``<h, conv^T(g, W)> = <conv(h, W), g>``, so its gradients are ``conv(h, W)`` for ``g``
    and ``conv_weight_grad(h, g)`` for ``W``.
    """

    def forward(self, grad_out, weight, *, x_shape, geometry):
        self.x_shape, self.geometry = x_shape, geometry
        n, out_channels, ho, wo = grad_out.shape
        _, c, kh, kw = weight.shape
        cols = weight.reshape(out_channels, -1).T @ grad_out.reshape(n, out_channels, ho * wo)
        padded = _col2im(cols.reshape(n, c, kh, kw, ho, wo), geometry.padded_shape(x_shape), geometry.stride,
                         geometry.dilation)
        return _crop(padded, geometry.pads, x_shape[2:])

    def backward(self, grad):
        grad_out, weight = self.inputs
        needs = self.needs_input_grad
        return (_Conv2d.apply(grad, weight, geometry=self.geometry) if needs[0] else None,
                _Conv2dWeightGrad.apply(grad, grad_out, geometry=self.geometry) if needs[1] else None)


class _Conv2dWeightGrad(Function):
    """``dW[o, c, i, j] = sum_{n, y, x} g[n, o, y, x] * x_pad[n, c, y*s + i*d, x*s + j*d]``.

    Linear in both arguments: ``<h, dW(x, g)> = <conv(x, h), g>``, so its gradients are
    ``conv^T(g, h)`` for ``x`` and ``conv(x, h)`` for ``g``.
    """

    def forward(self, x, grad_out, *, geometry):
        self.geometry = geometry
        n, c = x.shape[:2]
        out_channels, ho, wo = grad_out.shape[1:]
        kh, kw = geometry.kernel
        windows = _windows(_pad(x, geometry.pads), geometry.kernel, geometry.stride, geometry.dilation, (ho, wo))
        cols = windows.reshape(n, c * kh * kw, ho * wo)
        # per sample (O, L) @ (L, C*kh*kw), then summed over the batch
        per_sample = grad_out.reshape(n, out_channels, ho * wo) @ cols.transpose(0, 2, 1)
        return per_sample.sum(axis=0).reshape(out_channels, c, kh, kw)

    def backward(self, grad):
        x, grad_out = self.inputs
        needs = self.needs_input_grad
        return (_Conv2dInputGrad.apply(grad_out, grad, x_shape=x.data.shape, geometry=self.geometry)
                if needs[0] else None,
                _Conv2d.apply(x, grad, geometry=self.geometry) if needs[1] else None)


def _conv_pads(padding, kernel: tuple, stride: tuple, dilation: tuple, fn: str) -> tuple:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{fn}: padding='same' needs stride 1, got stride {stride}")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # an odd total pads one more at the end, as torch
            return tuple(pads)
        raise ValueError(f"{fn}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = _pair(padding, "padding", fn, 0)
    return (ph, ph, pw, pw)


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1) -> Tensor:
    """2-D convolution over NCHW input (``torch.nn.functional.conv2d`` with ``groups=1``).

    ``input`` is ``(N, C, H, W)`` (or unbatched ``(C, H, W)``), ``weight`` is
    ``(O, C, kh, kw)``; ``padding`` is an int, a pair, ``'valid'`` or ``'same'``.
    Output size per axis: ``(H + 2p - d (k - 1) - 1) // s + 1``.
    """
    fn = "conv2d"
    _check_image_input(input, fn)
    _require_float(weight, "weight", fn)
    if weight.ndim != 4:
        raise ValueError(f"{fn}: weight must be 4-D (out_channels, in_channels, kh, kw), got shape {weight.shape}")
    unbatched = input.ndim == 3
    if unbatched:
        input = input.unsqueeze(0)
    if input.shape[1] != weight.shape[1]:
        raise ValueError(f"{fn}: input has {input.shape[1]} channels (shape {input.shape}), but the weight "
                         f"{weight.shape} expects {weight.shape[1]} input channels")
    _same_dtype(input, weight, fn)
    kernel = tuple(weight.shape[2:])
    stride_, dilation_ = _pair(stride, "stride", fn, 1), _pair(dilation, "dilation", fn, 1)
    geometry = _Geometry(kernel, stride_, _conv_pads(padding, kernel, stride_, dilation_, fn), dilation_)
    _check_output_size(geometry, input.shape[2:], fn)
    if bias is None:
        out = _Conv2d.apply(input, weight, geometry=geometry)
    else:
        _require_float(bias, "bias", fn)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{fn}: bias must have shape ({weight.shape[0]},), got {bias.shape}")
        out = _Conv2d.apply(input, weight, bias, geometry=geometry)
    return out.squeeze(0) if unbatched else out


# ----------------------------------------------------------------------------- pooling


class _MaxPool2d(Function):
    """Max over each window; the gradient goes to the first maximum in the window (as torch;
    a window holding NaN outputs NaN and sends its gradient to its first element)."""

    def forward(self, x, *, geometry):
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

    def backward(self, grad):
        size = int(np.prod(self.padded_shape))
        padded = IndexAdd.apply(grad.reshape(-1), shape=(size,), index=self.index).reshape(self.padded_shape)
        if not any(self.geometry.pads):
            return (padded,)
        top, _, left, _ = self.geometry.pads
        return (padded[:, :, top:top + self.hw[0], left:left + self.hw[1]],)


class _AvgPool2d(Function):
    """Mean over each window (zero padding counted unless ``count_include_pad=False``)."""

    def forward(self, x, *, geometry, count_include_pad):
        self.geometry, self.count_include_pad, self.x_shape = geometry, count_include_pad, x.shape
        ho, wo = geometry.out_hw(*x.shape[2:])
        windows = _windows(_pad(x, geometry.pads), geometry.kernel, geometry.stride, (1, 1), (ho, wo))
        return windows.sum(axis=(2, 3)) / _pool_divisor(x, x.shape, geometry, count_include_pad, (ho, wo))

    def backward(self, grad):
        return (_AvgPool2dAdjoint.apply(grad, x_shape=self.x_shape, geometry=self.geometry,
                                        count_include_pad=self.count_include_pad),)


def _pool_divisor(like, x_shape: tuple, geometry: _Geometry, count_include_pad: bool, out_hw: tuple):
    """Window size, or per output position the number of non-padding elements it covers."""
    if count_include_pad or not any(geometry.pads):
        return float(geometry.kernel[0] * geometry.kernel[1])
    ones = backend.get_array_module(like).ones((1, 1) + tuple(x_shape[2:]), dtype=like.dtype)
    return _windows(_pad(ones, geometry.pads), geometry.kernel, geometry.stride, (1, 1), out_hw).sum(axis=(2, 3))


class _AvgPool2dAdjoint(Function):
    """The gradient of average pooling: spread ``g / divisor`` back over each window."""

    def forward(self, grad_out, *, x_shape, geometry, count_include_pad):
        self.geometry, self.count_include_pad = geometry, count_include_pad
        xp = backend.get_array_module(grad_out)
        n, c, ho, wo = grad_out.shape
        scaled = grad_out / _pool_divisor(grad_out, x_shape, geometry, count_include_pad, (ho, wo))
        cols = xp.broadcast_to(scaled[:, :, None, None], (n, c) + geometry.kernel + (ho, wo))
        padded = _col2im(cols, geometry.padded_shape(x_shape), geometry.stride, (1, 1))
        return _crop(padded, geometry.pads, x_shape[2:])

    def backward(self, grad):  # linear op: its adjoint is average pooling itself
        return (_AvgPool2d.apply(grad, geometry=self.geometry, count_include_pad=self.count_include_pad),)


def _pool_geometry(input: Tensor, kernel_size, stride, padding, fn: str) -> _Geometry:
    kernel = _pair(kernel_size, "kernel_size", fn, 1)
    stride_ = kernel if stride is None else _pair(stride, "stride", fn, 1)
    ph, pw = _pair(padding, "padding", fn, 0)
    if 2 * ph > kernel[0] or 2 * pw > kernel[1]:
        raise ValueError(f"{fn}: padding {(ph, pw)} must be at most half the kernel size {kernel}")
    geometry = _Geometry(kernel, stride_, (ph, ph, pw, pw), (1, 1))
    _check_output_size(geometry, input.shape[-2:], fn)
    return geometry


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max pooling over NCHW input; ``stride`` defaults to ``kernel_size``; padding is -inf."""
    _check_image_input(input, "max_pool2d")
    geometry = _pool_geometry(input, kernel_size, stride, padding, "max_pool2d")
    if input.ndim == 3:
        return _MaxPool2d.apply(input.unsqueeze(0), geometry=geometry).squeeze(0)
    return _MaxPool2d.apply(input, geometry=geometry)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> Tensor:
    """Average pooling over NCHW input; ``stride`` defaults to ``kernel_size``."""
    _check_image_input(input, "avg_pool2d")
    geometry = _pool_geometry(input, kernel_size, stride, padding, "avg_pool2d")
    if input.ndim == 3:
        return _AvgPool2d.apply(input.unsqueeze(0), geometry=geometry,
                                count_include_pad=bool(count_include_pad)).squeeze(0)
    return _AvgPool2d.apply(input, geometry=geometry, count_include_pad=bool(count_include_pad))


# ----------------------------------------------------------------------------- batch norm


class _BatchNormTrain(Function):
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

    def backward(self, grad):
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


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation over axis 1 (``torch.nn.functional.batch_norm``).

    Training: normalise with the batch mean and biased variance over every axis but 1,
    and update the running statistics in place (when given)::

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    (the *unbiased* variance goes into the running estimate, as torch). Evaluation:
    normalise with the running statistics.
    """
    fn = "batch_norm"
    _require_float(input, "input", fn)
    if input.ndim < 2:
        raise ValueError(f"{fn}: expected input of shape (N, C, ...), got shape {input.shape}")
    channels = input.shape[1]
    for name, value in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                        ("bias", bias)):
        if value is not None:
            _require_tensor(value, name, fn)
            if value.shape != (channels,):
                raise ValueError(f"{fn}: {name} must have shape ({channels},) for an input with {channels} "
                                 f"channels (shape {input.shape}), got {value.shape}")
    if weight is not None:
        _same_dtype(input, weight, fn)
    shape = (1, -1) + (1,) * (input.ndim - 2)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(f"{fn}: evaluation mode (training=False) needs running_mean and running_var")
        xp = backend.get_array_module(input.data)
        inv_std = (1.0 / xp.sqrt(running_var.data + eps)).astype(input.dtype, copy=False)
        out = input - constant(running_mean.data.reshape(shape).astype(input.dtype, copy=False), input)
        scale = constant(inv_std, input) if weight is None else weight * constant(inv_std, input)
        out = out * scale.reshape(shape)
        return out if bias is None else out + bias.reshape(shape)
    x = input.data
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.size // channels
    if count <= 1:
        raise ValueError(f"{fn}: expected more than 1 value per channel when training, got input shape {input.shape}")
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    if running_mean is not None:  # in place: running stats are buffers, outside the graph
        running_mean.data[...] = (1 - momentum) * running_mean.data + momentum * mean
    if running_var is not None:
        running_var.data[...] = (1 - momentum) * running_var.data + momentum * var * (count / (count - 1))
    xp = backend.get_array_module(x)
    inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)
    affine = [t for t in (weight, bias) if t is not None]
    return _BatchNormTrain.apply(input, *affine, mean=mean, inv_std=inv_std, eps=eps,
                                 has_weight=weight is not None, has_bias=bias is not None)


# ----------------------------------------------------------------------------- dropout


def dropout(input: Tensor, p: float = 0.5, training: bool = True, generator=None) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    The expectation is unchanged, so evaluation (``training=False``) is the identity. The
    mask comes from ``generator`` (default: the global generator, ``tg.manual_seed``).
    """
    _require_float(input, "input", "dropout")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability p must be a number in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    draw = (rng.generator() if generator is None else generator).random(input.shape)
    scale = (draw >= p).astype(input.dtype) * (1.0 / (1.0 - p))
    return input * constant(backend.to_device(scale, input.device), input)


# ----------------------------------------------------------------------------- embedding


class _Embedding(Function):
    """``out[...] = weight[indices[...]]``; the weight's gradient adds rows back per index.

    Dense: a scatter-add into a zero table. Sparse: a :class:`SparseRowGrad` holding only
    the looked-up rows (repeats kept; they add up). Rows at ``padding_idx`` get no gradient.
    """

    def forward(self, weight, *, indices, padding_idx, sparse):
        self.indices, self.padding_idx, self.sparse = indices, padding_idx, sparse
        return weight[indices]

    def backward(self, grad):
        weight = self.inputs[0]
        rows = grad.reshape(-1, weight.data.shape[1])
        flat = self.indices.reshape(-1)
        keep = None if self.padding_idx is None else flat != self.padding_idx
        if self.sparse:
            values = rows.data[keep] if keep is not None else rows.data.copy()
            indices = (flat[keep] if keep is not None else flat).astype(np.int64)
            return (SparseRowGrad(indices, values, weight.data.shape),)
        if keep is not None:
            rows = rows * constant(keep[:, None].astype(rows.data.dtype), rows)
        return (IndexAdd.apply(rows, shape=weight.data.shape, index=flat),)


def _index_array(input, num: int, fn: str, what: str = "indices"):
    """Validated integer index array (raw, on the caller's device) from a Tensor/array/list."""
    array = input.data if isinstance(input, Tensor) else (input if backend.is_array(input) else np.asarray(input))
    if array.dtype.kind not in "iu":
        raise TypeError(f"{fn}: {what} must be integers, got dtype {array.dtype}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= num:
            bad = low if low < 0 else high
            raise IndexError(f"{fn}: index {bad} is out of range for {num} embeddings (valid: 0..{num - 1})")
    return array


def embedding(input, weight: Tensor, padding_idx: int | None = None, sparse: bool = False) -> Tensor:
    """Rows of ``weight`` looked up by the integer ``input``: output shape ``input.shape + (D,)``."""
    fn = "embedding"
    _require_float(weight, "weight", fn)
    if weight.ndim != 2:
        raise ValueError(f"{fn}: weight must be 2-D (num_embeddings, embedding_dim), got shape {weight.shape}")
    if isinstance(input, Tensor) and input.device != weight.device:
        raise RuntimeError(f"{fn}: indices are on {input.device} but the weight is on {weight.device}")
    indices = _index_array(input, weight.shape[0], fn)
    indices = backend.to_device(indices, weight.device)
    padding_idx = _padding_index(padding_idx, weight.shape[0], fn)
    return _Embedding.apply(weight, indices=indices, padding_idx=padding_idx, sparse=bool(sparse))


def _padding_index(padding_idx, num: int, fn: str):
    if padding_idx is None:
        return None
    if not isinstance(padding_idx, (int, np.integer)) or isinstance(padding_idx, bool) or \
            not -num <= padding_idx < num:
        raise ValueError(f"{fn}: padding_idx must be an int in [-{num}, {num}), got {padding_idx!r}")
    return int(padding_idx) % num


# ----------------------------------------------------------------------------- activations


def relu(input: Tensor) -> Tensor:
    return input.relu()


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    return input.leaky_relu(negative_slope)


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def silu(input: Tensor) -> Tensor:
    """``x * sigmoid(x)`` (also called swish)."""
    return input * input.sigmoid()


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return input.softplus(beta=beta, threshold=threshold)


def softmax(input: Tensor, dim: int) -> Tensor:
    return input.softmax(axis=dim)


def log_softmax(input: Tensor, dim: int) -> Tensor:
    return input.log_softmax(axis=dim)


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


class _Erf(Function):
    """``erf(x)``; ``d erf(x)/dx = 2/sqrt(pi) exp(-x^2)``."""

    def forward(self, x):
        return _erf_array(x)

    def backward(self, grad):
        x = self.inputs[0]
        return (grad * (x * x * -1.0).exp() * (2.0 / math.sqrt(math.pi)),)


def erf(input: Tensor) -> Tensor:
    """The error function (float64-accurate to ~1e-15; see :func:`_erf_array`)."""
    return _Erf.apply(_require_float(input, "input", "erf"))


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit (Hendrycks & Gimpel, 2016), torch's two forms.

    ``approximate='none'``: ``x * Phi(x) = x/2 (1 + erf(x / sqrt(2)))`` with the exact
    error function (our own float64 series/continued fraction, ~1e-15 accurate).
    ``approximate='tanh'``: ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
    """
    _require_float(input, "input", "gelu")
    if approximate == "none":
        return input * 0.5 * (_Erf.apply(input * (1.0 / math.sqrt(2.0))) + 1.0)
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * math.sqrt(2.0 / math.pi)
        return input * 0.5 * (inner.tanh() + 1.0)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


# ----------------------------------------------------------------------------- class losses


def _class_target(input: Tensor, target, fn: str, ignore_index: int):
    """Validated class-index target: ``(array, may_ignore)`` with the raw int64 array of
    shape ``(N, d1, ...)``, and False when no entry can equal ``ignore_index``."""
    if isinstance(target, Tensor) and target.device != input.device:
        raise RuntimeError(f"{fn}: target is on {target.device} but the input is on {input.device}")
    array = target.data if isinstance(target, Tensor) else (target if backend.is_array(target) else np.asarray(target))
    classes = input.shape[1]
    if array.dtype.kind not in "iu":
        raise TypeError(f"{fn}: class-index targets must have an integer dtype, got {array.dtype} (shape "
                        f"{tuple(array.shape)}); for class probabilities pass a floating-point target with the "
                        f"input's shape {input.shape}")
    expected = (input.shape[0],) + input.shape[2:]
    if tuple(array.shape) != expected:
        raise ValueError(f"{fn}: target shape {tuple(array.shape)} does not match input shape {input.shape}: "
                         f"expected {expected} (the input without its class axis 1)")
    array = backend.to_device(array, input.device).astype(np.int64, copy=False)
    # The usual case in one comparison: seen as unsigned, a negative index is huge, so
    # ">= classes" flags both ends. Only then look for ignored entries and the culprit.
    outside = bool((array.view(np.uint64) >= classes).any())
    if outside:
        bad = (array != ignore_index) & ((array < 0) | (array >= classes))
        if bad.any():
            value = int(array[bad].reshape(-1)[0])
            raise IndexError(f"{fn}: target value {value} is out of range for {classes} classes "
                             f"(valid: 0..{classes - 1}, or ignore_index={ignore_index})")
    return array, outside or 0 <= ignore_index < classes


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
    return grad * (1.0 / denominator) if reduction == "mean" else grad


def _divide(total, denominator):
    """``total / denominator`` as torch: 0/0 (every target ignored) is NaN, without a warning."""
    return total / denominator if denominator != 0 else total * float("nan")


class _CrossEntropy(Function):
    """Fused log-softmax + NLL over class axis 1 with integer targets.

    Per sample (``w`` class weights, ``e`` = label_smoothing, ``C`` classes)::

        loss_i = (1 - e) w[y_i] (-log p_i[y_i]) + (e / C) sum_c w[c] (-log p_i[c])

    and ``dloss_i / dz_i = p_i ((1 - e) w[y_i] + (e / C) sum(w)) - ((1 - e) w[y_i] onehot(y_i) + (e / C) w)``
    (``p - q`` with the smoothed target ``q`` when unweighted). ``'mean'`` divides by
    the summed weights of the non-ignored targets (their count when unweighted).
    """

    takes_raw_grad = True

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
            return -picked.sum() / self.denominator if reduction == "mean" else -picked.sum()
        valid = target != ignore_index
        safe = xp.where(valid, target, 0)[:, None]
        picked = xp.take_along_axis(logp, safe, axis=1)[:, 0]
        class_w = xp.ones(classes, dtype=logits.dtype) if weight is None else weight
        w_y = class_w[safe[:, 0]] * valid  # 0 for ignored targets
        e = label_smoothing
        loss = -(1.0 - e) * w_y * picked
        w_shape = (1, -1) + (1,) * (logits.ndim - 2)
        if e > 0:
            loss = loss - (e / classes) * (logp * class_w.reshape(w_shape)).sum(axis=1) * valid
        self.logp, self.safe, self.valid, self.w_y = logp, safe, valid, w_y
        self.class_w, self.w_shape, self.e, self.reduction = class_w, w_shape, e, reduction
        self.denominator = float(w_y.sum()) if reduction == "mean" else 1.0
        if reduction == "none":
            return loss
        return _divide(loss.sum(), self.denominator) if reduction == "mean" else loss.sum()

    def backward(self, grad):
        logits = self.inputs[0]
        xp = backend.get_array_module(logits.data)
        if self.plain and not is_grad_enabled():  # dz = softmax(z) - onehot(y), on raw arrays
            core = xp.exp(self.logp)
            core[xp.arange(core.shape[0]), self.target] -= 1
            core *= _upstream(grad, self.reduction, self.denominator)
            return (core,)
        if self.plain:  # create_graph: the general formula below, with its Tensor ops
            self._general_state(logits.data.shape[1])
        classes, e = logits.data.shape[1], self.e
        # dz = p * a - b, with a (N, 1, ...) and b (N, C, ...) fixed by the targets
        dtype = self.logp.dtype
        valid = self.valid.astype(dtype)
        a = ((1.0 - e) * self.w_y + (e / classes) * float(self.class_w.sum()) * valid)[:, None]
        b = _one_hot(self.safe, classes, self.w_shape) * ((1.0 - e) * self.w_y)[:, None]
        if e > 0:
            b += (e / classes) * self.class_w.reshape(self.w_shape) * valid[:, None]
        if is_grad_enabled():
            core = logits.softmax(axis=1) * constant(a, logits) - constant(b, logits)
        else:
            core = xp.exp(self.logp) * a - b
        return (core * _upstream(grad, self.reduction, self.denominator),)


    def _general_state(self, classes: int) -> None:
        """What the general backward reads, for the plain case (unit weights, e = 0)."""
        xp = backend.get_array_module(self.logp)
        self.valid = xp.ones(self.target.shape, dtype=bool)
        self.safe = self.target[:, None]
        self.w_y = xp.ones(self.target.shape, dtype=self.logp.dtype)
        self.class_w = xp.ones(classes, dtype=self.logp.dtype)
        self.w_shape, self.e = (1, -1), 0.0


class _SoftCrossEntropy(Function):
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

    def backward(self, grad):
        logits, target = self.inputs
        classes, e = logits.data.shape[1], self.e
        logp = logits.log_softmax(axis=1) if is_grad_enabled() else constant(self.logp, logits)
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


def _class_weight(weight, input: Tensor, fn: str):
    if weight is None:
        return None
    array = _constant_like(weight, input, "weight", fn)
    if array.shape != (input.shape[1],):
        raise ValueError(f"{fn}: weight must have shape ({input.shape[1]},) (one per class), got {tuple(array.shape)}")
    return array


def _batched(input: Tensor, target, fn: str):
    """Unbatched ``(C,)`` input becomes ``(1, C)``; returns (input, target, was_unbatched)."""
    _require_float(input, "input", fn)
    if not isinstance(target, Tensor) and not backend.is_array(target):
        target = np.asarray(target)
    if input.ndim == 0:
        raise ValueError(f"{fn}: input must have a class axis, got a 0-d tensor")
    if input.ndim > 1:
        return input, target, False
    if isinstance(target, Tensor):
        return input.unsqueeze(0), target.unsqueeze(0), True
    return input.unsqueeze(0), target.reshape((1,) + target.shape), True


def cross_entropy(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between logits ``input`` (N, C, d1, ...) and ``target`` (torch's semantics).

    ``target`` is either integer class indices of shape (N, d1, ...) (values in
    ``[0, C)`` or ``ignore_index``) or class probabilities: a float tensor with the
    input's shape. Computed as one fused, stable log-softmax + NLL op (see
    :class:`_CrossEntropy`); ``reduction='none'`` gives the per-sample losses.
    """
    fn = "cross_entropy"
    _check_reduction(reduction, fn)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    input, target, unbatched = _batched(input, target, fn)
    class_w = _class_weight(weight, input, fn)
    if target.dtype.kind == "f" and tuple(target.shape) == input.shape:
        target_t = target if isinstance(target, Tensor) else Tensor(target, dtype=input.dtype, device=input.device)
        if target_t.device != input.device:
            raise RuntimeError(f"{fn}: target is on {target_t.device} but the input is on {input.device}")
        if target_t.dtype != input.dtype:
            target_t = target_t.to(dtype=input.dtype)
        out = _SoftCrossEntropy.apply(input, target_t, weight=class_w, reduction=reduction,
                                      label_smoothing=float(label_smoothing))
    else:
        indices, may_ignore = _class_target(input, target, fn, ignore_index)
        out = _CrossEntropy.apply(input, target=indices, weight=class_w, ignore_index=ignore_index,
                                  may_ignore=may_ignore, reduction=reduction,
                                  label_smoothing=float(label_smoothing))
    return out.reshape(()) if unbatched and reduction == "none" else out


class _NLLLoss(Function):
    """``loss_i = -w[y_i] input[i, y_i]`` (input holds log-probabilities); linear in input."""

    def forward(self, logp, *, target, weight, ignore_index, reduction):
        xp = backend.get_array_module(logp)
        valid = target != ignore_index
        safe = xp.where(valid, target, 0)[:, None]
        w_y = (xp.ones(logp.shape[1], dtype=logp.dtype) if weight is None else weight)[safe[:, 0]] * valid
        loss = -w_y * xp.take_along_axis(logp, safe, axis=1)[:, 0]
        self.safe, self.w_y, self.reduction = safe, w_y, reduction
        self.denominator = float(w_y.sum()) if reduction == "mean" else 1.0
        if reduction == "none":
            return loss
        return _divide(loss.sum(), self.denominator) if reduction == "mean" else loss.sum()

    def backward(self, grad):
        logp = self.inputs[0]
        b = _one_hot(self.safe, logp.data.shape[1], (1, -1) + (1,) * (logp.data.ndim - 2)) * -self.w_y[:, None]
        return (constant(b, logp) * _upstream(grad, self.reduction, self.denominator),)


def nll_loss(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of integer targets given log-probabilities ``input`` (N, C, ...)."""
    fn = "nll_loss"
    _check_reduction(reduction, fn)
    input, target, unbatched = _batched(input, target, fn)
    indices, _ = _class_target(input, target, fn, ignore_index)
    out = _NLLLoss.apply(input, target=indices, weight=_class_weight(weight, input, fn), ignore_index=ignore_index,
                         reduction=reduction)
    return out.reshape(()) if unbatched and reduction == "none" else out


# ----------------------------------------------------------------------------- regression losses


def _paired(input: Tensor, target, fn: str) -> Tensor:
    """``target`` as a Tensor of the input's dtype and shape (differentiable if it was)."""
    _require_float(input, "input", fn)
    if not isinstance(target, Tensor):
        target = Tensor(target, dtype=input.dtype, device=input.device)
    if target.device != input.device:
        raise RuntimeError(f"{fn}: target is on {target.device} but the input is on {input.device}")
    if target.shape != input.shape:
        raise ValueError(f"{fn}: input shape {input.shape} and target shape {target.shape} differ (broadcasting "
                         "them is almost always a bug, e.g. (N, 1) against (N,); reshape one of them)")
    return target if target.dtype == input.dtype else target.to(dtype=input.dtype)


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """``(input - target)^2``, reduced."""
    _check_reduction(reduction, "mse_loss")
    diff = input - _paired(input, target, "mse_loss")
    return _reduce(diff * diff, reduction)


def l1_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """``|input - target|``, reduced (gradient 0 where they are equal, as torch)."""
    _check_reduction(reduction, "l1_loss")
    return _reduce((input - _paired(input, target, "l1_loss")).abs(), reduction)


def huber_loss(input: Tensor, target, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """``0.5 d^2`` where ``|d| < delta``, else ``delta (|d| - delta / 2)``, ``d = input - target``."""
    fn = "huber_loss"
    _check_reduction(reduction, fn)
    if not delta > 0:
        raise ValueError(f"{fn}: delta must be positive, got {delta!r}")
    diff = input - _paired(input, target, fn)
    size = diff.abs()
    quadratic = diff * diff * 0.5
    linear = (size - 0.5 * delta) * delta
    return _reduce(where(size < delta, quadratic, linear), reduction)


def smooth_l1_loss(input: Tensor, target, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2`` (``huber_loss / beta``)."""
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta!r}")
    if beta == 0:
        return l1_loss(input, target, reduction)
    return huber_loss(input, target, reduction, delta=beta) * (1.0 / beta)


def binary_cross_entropy_with_logits(input: Tensor, target, weight=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """Sigmoid + binary cross-entropy in one stable expression (torch's formula).

    ``loss = (1 - y) x + (1 + (pos_weight - 1) y) softplus(-x)``, with
    ``softplus(-x) = log(1 + exp(-x))`` computed without overflow; ``weight`` rescales
    each element, ``pos_weight`` (per class, broadcast over the last axis) the positives.
    """
    fn = "binary_cross_entropy_with_logits"
    _check_reduction(reduction, fn)
    y = _paired(input, target, fn)
    softplus_neg = (-input).softplus(beta=1.0, threshold=math.inf)  # exact log1p(exp(-x)), stable
    if pos_weight is None:
        loss = (1.0 - y) * input + softplus_neg
    else:
        pw = Tensor._make(_constant_like(pos_weight, input, "pos_weight", fn), input.device)
        loss = (1.0 - y) * input + ((pw - 1.0) * y + 1.0) * softplus_neg
    if weight is not None:
        loss = loss * Tensor._make(_constant_like(weight, input, "weight", fn), input.device)
    return _reduce(loss, reduction)


class _BinaryCrossEntropy(Function):
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

    def backward(self, grad):
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


def binary_cross_entropy(input: Tensor, target, weight=None, reduction: str = "mean") -> Tensor:
    """``-(y log p + (1 - y) log(1 - p))`` on probabilities; each log clamped at -100 as torch."""
    fn = "binary_cross_entropy"
    _check_reduction(reduction, fn)
    y = _paired(input, target, fn)
    data = input.data
    if data.size and (float(data.min()) < 0 or float(data.max()) > 1):
        raise ValueError(f"{fn}: input must hold probabilities in [0, 1] (apply sigmoid first, or use "
                         "binary_cross_entropy_with_logits on the logits)")
    loss = _BinaryCrossEntropy.apply(input, y)
    if weight is not None:
        loss = loss * Tensor._make(_constant_like(weight, input, "weight", fn), input.device)
    return _reduce(loss, reduction)


__all__ = [
    "linear", "conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "dropout", "embedding", "relu", "leaky_relu",
    "tanh", "sigmoid", "silu", "softplus", "softmax", "log_softmax", "gelu", "erf", "cross_entropy", "nll_loss",
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy_with_logits",
    "binary_cross_entropy",
]
