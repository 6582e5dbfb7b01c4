"""SparseAdam: lazy Adam for row-sparse gradients (Embedding(sparse=True))."""

from __future__ import annotations

import math

from .. import backend
from .adam import adam_states
from .optimizer import Optimizer, check_betas, check_number


class SparseAdam(Optimizer):
    r"""Lazy Adam: the moments and parameters of a row change only when the row has a gradient.

    Paper: Kingma & Ba (2015), *Adam: A Method for Stochastic Optimization*; the lazy
    variant follows PyTorch's ``SparseAdam`` (and TensorFlow's ``LazyAdamOptimizer``).

    For a ``SparseRowGrad`` with (coalesced, i.e. summed per row) rows ``R`` and values
    ``g_R``, with ``t`` this parameter's step count from 1::

        g_R   = -g_R                                     if maximize
        m_R  <- beta1 * m_R + (1 - beta1) * g_R          exp_avg, rows R only
        v_R  <- beta2 * v_R + (1 - beta2) * g_R^2        exp_avg_sq, rows R only
        p_R  <- p_R - eta * sqrt(1 - beta2^t) / (1 - beta1^t) * m_R / (sqrt(v_R) + eps)

    **Not Adam.** Dense Adam would also decay the moments of the untouched rows and move
    them along their old momentum; here they are frozen until their row appears again
    (that is the point: the cost is proportional to the rows in the batch, not to the
    table). The bias corrections use the parameter's step count ``t``, not the row's.
    ``eps`` is added to the *uncorrected* ``sqrt(v)`` (PyTorch's SparseAdam formula),
    which differs slightly from :class:`Adam` where it is added after the correction.
    There is no weight decay (it would touch every row). Dense gradients are rejected
    (use :class:`Adam`), as in PyTorch.

    **No fused update**: the cost is already proportional to the touched rows, which a
    kernel over the whole table would not be. ``fused=None`` and ``False``
    take the reference; ``fused=True`` raises a ``ValueError``.
    """

    _has_fused_kernel = False
    _state_names = frozenset({"step", "exp_avg", "exp_avg_sq"})

    def __init__(self, params, lr: float = 1e-3, *, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 maximize: bool = False, fused=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults, fused=fused)

    def _validate_group(self, group: dict) -> None:
        group["lr"] = check_number("lr", group["lr"], low_open=True)     # torch: 0 < lr
        group["betas"] = check_betas(group["betas"])
        group["eps"] = check_number("eps", group["eps"], low_open=True)  # torch: 0 < eps
        group["maximize"] = bool(group["maximize"])

    def _check_sparse(self, group: dict) -> None:
        pass  # the only kind it takes

    def _check_dense(self, group: dict) -> None:
        raise RuntimeError("SparseAdam does not support dense gradients; use Adam (SparseAdam is for "
                           "parameters whose .grad is a SparseRowGrad, e.g. Embedding(sparse=True))")

    def _update_group(self, group: dict, params: list, grads: list, grad_scale: float) -> None:
        states = adam_states(self, params, amsgrad=False)
        beta1, beta2 = group["betas"]
        sparse_adam([p.data for p in params], grads, [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states], [s["step"] for s in states], lr=group["lr"], beta1=beta1,
                    beta2=beta2, eps=group["eps"], maximize=group["maximize"], grad_scale=grad_scale, fused=False)


def sparse_adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list, *, lr: float,
                beta1: float, beta2: float, eps: float, maximize: bool, grad_scale: float = 1.0,
                fused: bool = False) -> None:
    """Functional lazy Adam over raw arrays and ``SparseRowGrad``s: the reference only."""
    if fused:
        raise ValueError("sparse_adam has no fused update (it updates only the rows of a sparse gradient); "
                         "use fused=False")
    _single_tensor_sparse_adam(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1, beta2=beta2,
                               eps=eps, maximize=maximize, grad_scale=grad_scale)


def _single_tensor_sparse_adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list, *,
                               lr: float, beta1: float, beta2: float, eps: float, maximize: bool,
                               grad_scale: float = 1.0) -> None:
    """The readable reference: one parameter at a time, touched rows only."""
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        with backend.device_context(backend.device_of(param)):
            xp = backend.get_array_module(param)
            grad = grad.coalesce()                            # unique rows: the update is non-linear
            rows, values = grad.indices, grad.values
            if rows.shape[0] == 0:
                continue                                      # no row touched: nothing moves
            if grad_scale != 1:
                values = values * grad_scale                  # averaging, clipping, 1/world size
            if maximize:
                values = -values
            m = exp_avg[rows]
            m += (1 - beta1) * (values - m)                   # m_R = beta1 m_R + (1 - beta1) g_R
            exp_avg[rows] = m
            v = exp_avg_sq[rows]
            v += (1 - beta2) * (values * values - v)          # v_R = beta2 v_R + (1 - beta2) g_R^2
            exp_avg_sq[rows] = v
            step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            param[rows] -= step_size * (m / (xp.sqrt(v) + eps))
