"""Fused Numba (CPU) and Numba-CUDA (GPU) multi-tensor kernels over raw arrays, installed as
``tinygrad_sgd.kernels``. Kernels take NumPy/CuPy arrays, never Tensors; inside this
package use relative imports only (it is mapped from the top-level ``kernels/`` folder).

The functions exported here dispatch on the array type (``dispatch.py``): NumPy arrays run
the ``@njit(parallel=True)`` loops of ``cpu.py``, CUDA arrays the kernels of ``cuda.py``.
Each update takes lists (one entry per parameter, any shapes, one dtype and device) and
changes the parameters and state arrays in place; gradients are only read::

    sgd_update(params, grads, momentum_buffers, *, lr, momentum, dampening, nesterov, ...)
    adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, *, step, lr, beta1,
                beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, ...)
    rmsprop_update(params, grads, square_avgs, momentum_buffers, grad_avgs, *, lr, alpha, ...)
    adagrad_update(params, grads, state_sums, *, step, lr, lr_decay, weight_decay, eps, ...)
    sum_of_squares(arrays); per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm)

Every update also takes ``maximize`` and ``grad_scale`` (one factor applied to every
gradient first: 1/k accumulation x clipping coefficient x 1/world size). The readable
specification of each update is the optimizer's ``_single_tensor_*`` function in
``tinygrad_sgd.optim``; ``reference.py`` holds the NumPy versions of the two reductions.

The layers' ops have CPU kernels of their own, imported on first use by
``tinygrad_sgd.ops.cpu_kernels`` (not through this module): ``conv.py`` (im2col, col2im,
pooling), ``recurrent.py`` (the recurrent layers' gates), ``scatter.py`` (the dense
embedding gradient).
"""

from .dispatch import adagrad_update, adam_update, per_sample_grad_stats, rmsprop_update, sgd_update, sum_of_squares
from .host import CHUNK, BatchGradStats

__all__ = ["CHUNK", "sgd_update", "adam_update", "rmsprop_update", "adagrad_update", "sum_of_squares",
           "per_sample_grad_stats", "BatchGradStats"]
