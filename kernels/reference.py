"""Readable NumPy versions of the two reductions that ``cpu.py`` and ``cuda.py`` compute
(the fused kernels are tested against them): the sum of squares of a list of arrays (the
global gradient norm of ``clip_grad_norm_``) and the per-sample gradient statistics of the
gradient noise scale. They work on NumPy arrays and, written against the array module of
their input, on CuPy arrays too.

The optimizer updates have their readable specification next to the optimizers themselves:
the ``_single_tensor_*`` functions of ``tinygrad_sgd.optim`` (the formula written once, in
NumPy, line by line), which the element bodies of ``cpu.py`` compute element by element.
"""

from __future__ import annotations

from . import host


def _xp(array):
    """The array module (numpy/cupy) of ``array``, without importing CuPy."""
    import numpy

    if isinstance(array, numpy.ndarray):
        return numpy
    import cupy  # only reached with a CuPy array

    return cupy


def sum_of_squares(arrays) -> float:
    """``sum_i x_i^2`` over every element of every array, accumulated in float64 (the
    global gradient norm of ``clip_grad_norm_`` is its square root). The CUDA kernel
    accumulates in the arrays' dtype with a tree reduction instead (no float64 on the GPU)."""
    total = 0.0
    for x in arrays:
        xp = _xp(x)
        x64 = x.astype(xp.float64).reshape(-1)
        total += float(xp.dot(x64, x64))
    return total


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None) -> host.BatchGradStats:
    """Average B per-sample gradients (rows of ``per_sample_grads``, shape (B, P)) into
    ``mean_out`` and measure the gradient noise of the batch.

    With ``max_norm = C``, each sample is first clipped as in DP-SGD (Abadi et al. 2016):
    ``g_b <- g_b * min(1, C / |g_b|)``. Then::

        G_B       = (1/B) sum_b g_b                              -> mean_out
        tr(Sigma) ~ S = sum_b |g_b - G_B|^2 / (B - 1)              (unbiased)
        Var[G_B]  = tr(Sigma) / B                                  (variance of the estimate)
        |G|^2     ~ |G_B|^2 - S / B                                (unbiased)
        B_simple  = tr(Sigma) / |G|^2                              (McCandlish et al. 2018)

    the "simple noise scale" of McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model
    of Large-Batch Training": the batch size around which larger batches stop paying off.
    See :class:`host.BatchGradStats` and :func:`host.batch_stats` for the estimator. Norms,
    the mean and the sums are computed in float64 (the mean is rounded once when stored).
    """
    batch, _, max_norm = host.per_sample_args(per_sample_grads, mean_out, max_norm)
    xp = _xp(per_sample_grads)
    g64 = per_sample_grads.astype(xp.float64)
    norms = xp.sqrt((g64 * g64).sum(axis=1))
    norms = host.to_host(norms)
    factors = xp.asarray(host.clip_factors(norms, max_norm))
    clipped = g64 * factors[:, None]
    mean = clipped.sum(axis=0) / batch
    mean_out[...] = mean
    spread = float(((clipped - mean) ** 2).sum())
    mean_sq = float((mean * mean).sum())
    return host.batch_stats(norms, max_norm, batch, spread, mean_sq)
