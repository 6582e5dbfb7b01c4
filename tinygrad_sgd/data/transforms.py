r"""Standardisation fitted on the training data only.

Gradient descent converges fastest when the input features have similar scales: the
loss surface of a linear model has Hessian :math:`X^\top X / n`, and features of very
different variance make it ill-conditioned (long narrow valleys that force a small
learning rate). Standardising each feature to mean 0 and standard deviation 1,

.. math:: x' = \frac{x - \mu}{\sigma},

fixes the scales. :math:`\mu` and :math:`\sigma` must come from the training set alone:
computing them on train + test lets test-set information leak into training and makes
the test score optimistic. Hence the fit/transform split (scikit-learn's
``StandardScaler`` API, torchvision's ``Normalize`` name).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor


def _raw(x, what: str):
    if isinstance(x, Tensor):
        return x.data
    if backend.is_array(x):
        return x
    raise TypeError(f"Normalize.{what} expects a NumPy/CuPy array or a Tensor, got {type(x).__name__}")


class Normalize:
    """Per-feature standardisation ``(x - mean) / std``.

    ``Normalize()`` learns ``mean`` and ``std`` with :meth:`fit` (over ``axis``: 0 for a
    ``(samples, features)`` matrix — the default — or ``(0, 2, 3)`` for per-channel
    statistics of NCHW images). ``Normalize(mean=..., std=...)`` uses given statistics
    (e.g. the published per-channel ones) and needs no fit. ``std`` is the population
    standard deviation (``ddof=0``, as scikit-learn uses); a feature that is constant in
    the training data gets ``std = 1`` so it maps to 0 instead of dividing by zero.

    :meth:`transform` takes arrays or Tensors and returns the same kind, in the input's
    floating dtype (integer input becomes float32); it refuses to run before ``fit``.
    """

    def __init__(self, mean=None, std=None, axis=0):
        if (mean is None) != (std is None):
            raise ValueError("Normalize: give both mean= and std=, or neither (then call fit)")
        self.axis = axis
        self.mean = self.std = None
        if mean is not None:
            mean = np.asarray(mean, dtype=np.float64)
            std = np.asarray(std, dtype=np.float64)
            if mean.shape != std.shape:
                raise ValueError(f"Normalize: mean shape {mean.shape} differs from std shape {std.shape}")
            if not np.all(np.isfinite(std)) or np.any(std <= 0):
                raise ValueError("Normalize: std must be finite and positive")
            self.mean, self.std = mean, std

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def _axes(self, ndim: int) -> tuple:
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        out = []
        for a in axes:
            if not -ndim <= a < ndim:
                raise ValueError(f"Normalize: axis {a} is out of range for {ndim}-d data")
            out.append(a % ndim)
        return tuple(sorted(set(out)))

    def fit(self, x) -> "Normalize":
        """Learn ``mean`` and ``std`` from training data ``x``; returns ``self``."""
        data = backend.to_numpy(_raw(x, "fit"))
        if data.dtype.kind not in "biuf":
            raise TypeError(f"Normalize.fit: data must be numeric, got dtype {data.dtype}")
        axes = self._axes(data.ndim)
        if any(data.shape[a] == 0 for a in axes):
            raise ValueError(f"Normalize.fit: data of shape {data.shape} has no samples along axis {axes}")
        # Statistics in float64: float32 sums over many samples lose digits.
        mean = data.mean(axis=axes, dtype=np.float64, keepdims=True)
        std = data.std(axis=axes, dtype=np.float64, keepdims=True)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            raise ValueError("Normalize.fit: the data contains NaN or infinity")
        std[std == 0] = 1.0  # constant feature: map it to 0 rather than divide by zero
        self.mean, self.std = mean, std
        return self

    def _stats_for(self, data):
        if not self.fitted:
            raise RuntimeError("Normalize: call fit(train_data) before transform (statistics are learned "
                               "from the training set only)")
        mean, std = self.mean, self.std
        if mean.ndim != data.ndim:
            # Given statistics (e.g. one value per channel): lay them along the axes that
            # are not reduced over, so (3,) fits NCHW data as (1, 3, 1, 1).
            kept = [a for a in range(data.ndim) if a not in self._axes(data.ndim)]
            shape = tuple(data.shape[a] if a in kept else 1 for a in range(data.ndim))
            if mean.size != int(np.prod([data.shape[a] for a in kept])):
                raise ValueError(f"Normalize: statistics of shape {mean.shape} do not fit data of shape {data.shape} "
                                 f"normalised over axis {self.axis}")
            mean, std = mean.reshape(shape), std.reshape(shape)
        if any(m not in (1, d) for m, d in zip(mean.shape, data.shape)):
            raise ValueError(f"Normalize: statistics of shape {mean.shape} do not fit data of shape {data.shape}")
        dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float32)
        xp = backend.get_array_module(data)
        mean = backend.to_device(mean.astype(dtype), backend.device_of(data))
        std = backend.to_device(std.astype(dtype), backend.device_of(data))
        return xp, dtype, mean, std

    def transform(self, x):
        """``(x - mean) / std`` with the fitted statistics (same kind as ``x``)."""
        data = _raw(x, "transform")
        xp, dtype, mean, std = self._stats_for(data)
        out = (data.astype(dtype, copy=False) - mean) / std
        return Tensor._make(out, x.device) if isinstance(x, Tensor) else out

    __call__ = transform

    def fit_transform(self, x):
        """``fit(x)`` then ``transform(x)`` (for the training set only)."""
        return self.fit(x).transform(x)

    def inverse_transform(self, x):
        """``x * std + mean``: back to the original units."""
        data = _raw(x, "inverse_transform")
        xp, dtype, mean, std = self._stats_for(data)
        out = data.astype(dtype, copy=False) * std + mean
        return Tensor._make(out, x.device) if isinstance(x, Tensor) else out

    def state_dict(self) -> dict:
        """The fitted statistics (float64 NumPy arrays), to save beside a model."""
        if not self.fitted:
            raise RuntimeError("Normalize: not fitted, nothing to save")
        return {"mean": self.mean.copy(), "std": self.std.copy()}

    def load_state_dict(self, state: dict) -> None:
        restored = Normalize(mean=state["mean"], std=state["std"], axis=self.axis)
        self.mean, self.std = restored.mean, restored.std

    def __repr__(self) -> str:
        return f"Normalize(axis={self.axis}, fitted={self.fitted})"
