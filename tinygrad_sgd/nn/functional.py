"""Functional forms of the layers and losses (``tg.nn.functional``, imported as ``F``).

Names and arguments follow ``torch.nn.functional``. Each function checks its arguments
(naming the argument, shape, dtype or device that is wrong) and calls one op of
``tinygrad_sgd/ops`` -- or composes Tensor ops, for the small ones.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend, rng
from ..ops import nn as nn_ops
from ..ops.common import constant
from ..ops.elementwise import Erf, where
from ..tensor import Tensor


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


def _same_device(x: Tensor, value: Tensor, name: str, fn: str) -> None:
    if value.device != x.device:
        raise RuntimeError(f"{fn}: {name} is on {value.device} but the input is on {x.device} "
                           "(move the model or the input with .to())")


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
    return nn_ops.Linear.apply(input, weight) if bias is None else nn_ops.Linear.apply(input, weight, bias)


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


def _check_image_input(input: Tensor, fn: str) -> Tensor:
    _require_float(input, "input", fn)
    if input.ndim not in (3, 4):
        raise ValueError(f"{fn}: expected a 4-D input (N, C, H, W) or a 3-D unbatched one (C, H, W), "
                         f"got shape {input.shape}")
    return input


def _check_output_size(geometry: nn_ops.Geometry, hw: tuple, fn: str) -> tuple:
    out = geometry.out_hw(*hw)
    if min(out) < 1:
        top, bottom, left, right = geometry.pads
        reach = tuple(d * (k - 1) + 1 for d, k in zip(geometry.dilation, geometry.kernel))
        raise ValueError(f"{fn}: input of size {hw[0]}x{hw[1]} (padded to {hw[0] + top + bottom}x"
                         f"{hw[1] + left + right}) is smaller than the kernel's reach {reach[0]}x{reach[1]}")
    return out


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
    geometry = nn_ops.Geometry(kernel, stride_, _conv_pads(padding, kernel, stride_, dilation_, fn), dilation_)
    _check_output_size(geometry, input.shape[2:], fn)
    if bias is None:
        out = nn_ops.Conv2d.apply(input, weight, geometry=geometry)
    else:
        _require_float(bias, "bias", fn)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{fn}: bias must have shape ({weight.shape[0]},), got {bias.shape}")
        out = nn_ops.Conv2d.apply(input, weight, bias, geometry=geometry)
    return out.squeeze(0) if unbatched else out


def _pool_geometry(input: Tensor, kernel_size, stride, padding, fn: str) -> nn_ops.Geometry:
    kernel = _pair(kernel_size, "kernel_size", fn, 1)
    stride_ = kernel if stride is None else _pair(stride, "stride", fn, 1)
    ph, pw = _pair(padding, "padding", fn, 0)
    if 2 * ph > kernel[0] or 2 * pw > kernel[1]:
        raise ValueError(f"{fn}: padding {(ph, pw)} must be at most half the kernel size {kernel}")
    geometry = nn_ops.Geometry(kernel, stride_, (ph, ph, pw, pw), (1, 1))
    _check_output_size(geometry, input.shape[-2:], fn)
    return geometry


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max pooling over NCHW input; ``stride`` defaults to ``kernel_size``; padding is -inf."""
    _check_image_input(input, "max_pool2d")
    geometry = _pool_geometry(input, kernel_size, stride, padding, "max_pool2d")
    if input.ndim == 3:
        return nn_ops.MaxPool2d.apply(input.unsqueeze(0), geometry=geometry).squeeze(0)
    return nn_ops.MaxPool2d.apply(input, geometry=geometry)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> Tensor:
    """Average pooling over NCHW input; ``stride`` defaults to ``kernel_size``."""
    _check_image_input(input, "avg_pool2d")
    geometry = _pool_geometry(input, kernel_size, stride, padding, "avg_pool2d")
    if input.ndim == 3:
        return nn_ops.AvgPool2d.apply(input.unsqueeze(0), geometry=geometry,
                                count_include_pad=bool(count_include_pad)).squeeze(0)
    return nn_ops.AvgPool2d.apply(input, geometry=geometry, count_include_pad=bool(count_include_pad))


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
            _same_device(input, value, name, fn)
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
    return nn_ops.BatchNormTrain.apply(input, *affine, mean=mean, inv_std=inv_std, eps=eps,
                                 has_weight=weight is not None, has_bias=bias is not None)


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
    return nn_ops.Embedding.apply(weight, indices=indices, padding_idx=padding_idx, sparse=bool(sparse))


def _padding_index(padding_idx, num: int, fn: str):
    if padding_idx is None:
        return None
    if not isinstance(padding_idx, (int, np.integer)) or isinstance(padding_idx, bool) or \
            not -num <= padding_idx < num:
        raise ValueError(f"{fn}: padding_idx must be an int in [-{num}, {num}), got {padding_idx!r}")
    return int(padding_idx) % num


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


def erf(input: Tensor) -> Tensor:
    """The error function (float64-accurate to ~1e-15; see :func:`_erf_array`)."""
    return Erf.apply(_require_float(input, "input", "erf"))


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit (Hendrycks & Gimpel, 2016), torch's two forms.

    ``approximate='none'``: ``x * Phi(x) = x/2 (1 + erf(x / sqrt(2)))`` with the exact
    error function (our own float64 series/continued fraction, ~1e-15 accurate).
    ``approximate='tanh'``: ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
    """
    _require_float(input, "input", "gelu")
    if approximate == "none":
        return input * 0.5 * (Erf.apply(input * (1.0 / math.sqrt(2.0))) + 1.0)
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * math.sqrt(2.0 / math.pi)
        return input * 0.5 * (inner.tanh() + 1.0)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


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
    if target.ndim != 0 and not (target.dtype.kind == "f" and tuple(target.shape) == input.shape):
        raise ValueError(f"{fn}: a 1-D input of shape {input.shape} is one unbatched sample of {input.shape[0]} class "
                         f"scores, so the target must be one class index (0-d), got shape {tuple(target.shape)}; "
                         f"for a batch of N samples pass input of shape (N, {input.shape[0]})")
    if isinstance(target, Tensor):
        return input.unsqueeze(0), target.unsqueeze(0), True
    return input.unsqueeze(0), target.reshape((1,) + target.shape), True


def cross_entropy(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between logits ``input`` (N, C, d1, ...) and ``target`` (torch's semantics).

    ``target`` is either integer class indices of shape (N, d1, ...) (values in
    ``[0, C)`` or ``ignore_index``) or class probabilities: a float tensor with the
    input's shape. Computed as one fused, stable log-softmax + NLL op (see
    :class:`CrossEntropy`); ``reduction='none'`` gives the per-sample losses.
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
        out = nn_ops.SoftCrossEntropy.apply(input, target_t, weight=class_w, reduction=reduction,
                                      label_smoothing=float(label_smoothing))
    else:
        indices, may_ignore = _class_target(input, target, fn, ignore_index)
        out = nn_ops.CrossEntropy.apply(input, target=indices, weight=class_w, ignore_index=ignore_index,
                                  may_ignore=may_ignore, reduction=reduction,
                                  label_smoothing=float(label_smoothing))
    return out.reshape(()) if unbatched and reduction == "none" else out


def nll_loss(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of integer targets given log-probabilities ``input`` (N, C, ...)."""
    fn = "nll_loss"
    _check_reduction(reduction, fn)
    input, target, unbatched = _batched(input, target, fn)
    indices, _ = _class_target(input, target, fn, ignore_index)
    out = nn_ops.NLLLoss.apply(input, target=indices, weight=_class_weight(weight, input, fn),
                               ignore_index=ignore_index, reduction=reduction)
    return out.reshape(()) if unbatched and reduction == "none" else out


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


def binary_cross_entropy(input: Tensor, target, weight=None, reduction: str = "mean") -> Tensor:
    """``-(y log p + (1 - y) log(1 - p))`` on probabilities; each log clamped at -100 as torch."""
    fn = "binary_cross_entropy"
    _check_reduction(reduction, fn)
    y = _paired(input, target, fn)
    data = input.data
    if data.size and (float(data.min()) < 0 or float(data.max()) > 1):
        raise ValueError(f"{fn}: input must hold probabilities in [0, 1] (apply sigmoid first, or use "
                         "binary_cross_entropy_with_logits on the logits)")
    loss = nn_ops.BinaryCrossEntropy.apply(input, y)
    if weight is not None:
        loss = loss * Tensor._make(_constant_like(weight, input, "weight", fn), input.device)
    return _reduce(loss, reduction)


__all__ = [
    "linear", "conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "dropout", "embedding", "relu", "leaky_relu",
    "tanh", "sigmoid", "silu", "softplus", "softmax", "log_softmax", "gelu", "erf", "cross_entropy", "nll_loss",
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy_with_logits",
    "binary_cross_entropy",
]
