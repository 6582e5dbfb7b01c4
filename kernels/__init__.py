"""Fused Numba (CPU) and Numba-CUDA (GPU) kernels over raw arrays, installed as
``tinygrad_sgd.kernels``. Kernels take NumPy/CuPy arrays, never Tensors; inside this
package use relative imports only (it is mapped from the top-level ``kernels/`` folder).

The functions exported here dispatch on the array type (``dispatch.py``): NumPy arrays run
the ``@njit(parallel=True)`` loops of ``cpu.py``, CUDA arrays the grid-stride kernels of
``cuda.py``. ``reference.py`` holds the readable NumPy version of each, with the same
signature, and the algorithms in its docstrings. All updates are in place, on flat 1-D
float32/float64 buffers (an optimizer keeps every parameter of a group in one buffer):

    sgd_update(p, g, momentum_buffer, *, lr, momentum, dampening, nesterov, ...)
    adam_update(p, g, m, v, v_max, *, step, lr, beta1, beta2, eps, weight_decay,
                decoupled_weight_decay, amsgrad, ...)
    rmsprop_update(p, g, square_avg, momentum_buffer, grad_avg, *, lr, alpha, eps, ...)
    adagrad_update(p, g, state_sum, *, step, lr, lr_decay, weight_decay, eps, ...)
    accumulate_grad(acc, g, *, first, scale); average_accumulated(acc, count)
    sum_of_squares(x); per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm)

Every update also takes ``maximize``, ``grad_scale`` (a clipping factor applied to the
gradient first) and ``noise`` (a pre-drawn array added to the gradient).
"""

from .dispatch import (accumulate_grad, adagrad_update, adam_update, average_accumulated, per_sample_grad_stats,
                       rmsprop_update, sgd_update, sum_of_squares)
from .host import BatchGradStats

__all__ = ["sgd_update", "adam_update", "rmsprop_update", "adagrad_update", "accumulate_grad",
           "average_accumulated", "sum_of_squares", "per_sample_grad_stats", "BatchGradStats"]
