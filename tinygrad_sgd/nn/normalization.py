"""Batch normalisation (Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", ICML 2015), with torch's semantics."""

from __future__ import annotations

import numpy as np

from .. import tensor as _tensor
from ..tensor import Tensor
from . import functional as F
from . import init
from .layers import _count, _new_parameter
from .module import Module


class _BatchNorm(Module):
    """Shared by BatchNorm1d/2d; subclasses say which input ranks they take.

    Training: ``y = (x - mean_B) / sqrt(var_B + eps) * weight + bias`` with the batch
    mean and biased variance per channel (axis 1, over every other axis), and the running
    estimates updated as ``r = (1 - momentum) r + momentum * stat`` where the variance
    statistic is the *unbiased* batch variance (``momentum=None``: a cumulative average,
    factor ``1 / num_batches_tracked``). Evaluation: the running estimates replace the
    batch statistics. ``track_running_stats=False`` keeps no estimates and always uses
    the batch. Same buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``), defaults and numbers as ``torch.nn.BatchNorm*d``.
    """

    _ranks: tuple = ()
    _shape_text = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        self.num_features = _count(num_features, "num_features", name)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if self.affine:
            self.weight = _new_parameter((self.num_features,), device, dtype)
            self.bias = _new_parameter((self.num_features,), device, dtype)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            float_dtype = np.dtype(dtype) if dtype is not None else _tensor.float32
            self.register_buffer("running_mean", _tensor.zeros(self.num_features, dtype=float_dtype, device=device))
            self.register_buffer("running_var", _tensor.ones(self.num_features, dtype=float_dtype, device=device))
            self.register_buffer("num_batches_tracked", _tensor.zeros((), dtype=_tensor.int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _check_input(self, input) -> None:
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.ndim not in self._ranks:
            raise ValueError(f"{name}: expected {self._shape_text} input, got shape {input.shape} "
                             f"({input.ndim}-D)")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels (num_features) at axis 1, "
                             f"got input shape {input.shape}")
        F._require_float(input, "input", name)
        for what in ("weight", "running_mean"):  # before forward changes num_batches_tracked
            value = getattr(self, what)
            if value is not None:
                F._same_device(input, value, what, name)
        if self.weight is not None:
            F._same_dtype(input, self.weight, name)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats and input.numel() // input.shape[1] <= 1:  # checked before any state changes
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when training, "
                             f"got input shape {input.shape}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data[...] += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.data)
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, use_batch_stats,
                            factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` input (statistics per channel C)."""

    _ranks = (2, 3)
    _shape_text = "2-D (N, C) or 3-D (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)`` input (statistics per channel C over N, H, W)."""

    _ranks = (4,)
    _shape_text = "4-D (N, C, H, W)"
