"""The one place that chooses a fused kernel by array type, and the kernels' public API.

NumPy arrays go to the Numba CPU loops (``cpu.py``); CUDA arrays (CuPy arrays, Numba device
arrays, and the CUDA simulator's arrays) go to the Numba-CUDA kernels (``cuda.py``). Both
modules are imported on first use, so ``import tinygrad_sgd.kernels`` neither compiles
anything nor imports ``numba.cuda``.

Every update takes *lists* of arrays, one entry per parameter (PyTorch's ``_fused_adam``
interface): the parameters, their gradients and each state buffer, all of one dtype and
one device, any shapes (each state like its parameter), C-contiguous. The gradients are
only read. One call is one pass over memory for all of them (one ``prange`` loop on the
CPU, one launch on the GPU); see ``host.py`` for the chunk and pointer tables. The
readable specification of each update is the optimizer's ``_single_tensor_*`` function in
``tinygrad_sgd.optim``; ``grad_scale`` multiplies every gradient first (1/k for k
accumulated micro-batches x the clipping coefficient x 1/world size).
"""

from __future__ import annotations

import importlib

import numpy as np

from . import host


def _one_at_a_time(update, lists: dict, kwargs: dict) -> None:
    """``update`` once per list entry, in order: parameters that share memory are applied
    to it one after the other, like the reference (``host.tables`` found the overlap)."""
    n = len(lists["params"])
    for i in range(n):
        update(**{name: (None if arrays is None else [arrays[i]]) for name, arrays in lists.items()}, **kwargs)


def _kind(arrays, name: str = "params"):
    """``cpu`` or ``cuda``, from the first array of the list (the tables check the rest)."""
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays (one per parameter), got {type(arrays).__name__}")
    if not arrays:
        return None
    first = arrays[0]
    if isinstance(first, np.ndarray):
        key = ".cpu"
    elif hasattr(first, "__cuda_array_interface__") or hasattr(first, "copy_to_host"):
        key = ".cuda"
    else:
        raise TypeError(f"{name}[0] must be a NumPy or CUDA array, got {type(first).__name__}")
    module = _imported.get(key)
    if module is None:  # first use: import (and so compile or load) that side's kernels
        module = _imported[key] = importlib.import_module(key, __package__)
    return module


_imported: dict = {}  # ".cpu" / ".cuda" -> the module (import_module is a lookup too slow for every call)


def sgd_update(params, grads, momentum_buffers=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
               weight_decay=0.0, maximize=False, first_step=False, grad_scale=1.0) -> None:
    """In-place SGD step of every parameter (``optim.sgd._single_tensor_sgd``). With
    ``momentum != 0`` the buffers are required; ``first_step=True`` fills them from the
    gradient (their old contents are ignored), as torch does for a new buffer."""
    kind = _kind(params)
    if momentum != 0:
        host.require("momentum_buffers", momentum_buffers, "when momentum != 0")
    t = host.tables(kind, params, grads, [momentum_buffers if momentum != 0 else None], ("momentum_buffers",))
    if t is None:
        return
    if t is host.OVERLAP:
        return _one_at_a_time(sgd_update, dict(params=params, grads=grads, momentum_buffers=momentum_buffers),
                              dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                   weight_decay=weight_decay, maximize=maximize, first_step=first_step,
                                   grad_scale=grad_scale))
    ptrs, chunks, dtype, size = t
    scalars = host.sgd_scalars(dtype, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                               weight_decay=weight_decay, maximize=maximize, first_step=first_step,
                               grad_scale=grad_scale)
    with kind.launch(size, params[0], chunks.shape[0]) as run:
        run(kind.sgd_loop)(ptrs, chunks, *scalars)


def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, lr=1e-3, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
                maximize=False, grad_scale=1.0) -> None:
    """In-place Adam/AdamW/AMSGrad step of every parameter, all at step count ``step``
    (``optim.adam._single_tensor_adam``)."""
    kind = _kind(params)
    host.require("exp_avgs", exp_avgs, "(first moments)")
    host.require("exp_avg_sqs", exp_avg_sqs, "(second moments)")
    if amsgrad:
        host.require("max_exp_avg_sqs", max_exp_avg_sqs, "when amsgrad=True")
    t = host.tables(kind, params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None],
                    ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"))
    if t is None:
        return
    if t is host.OVERLAP:
        return _one_at_a_time(adam_update, dict(params=params, grads=grads, exp_avgs=exp_avgs,
                                                exp_avg_sqs=exp_avg_sqs, max_exp_avg_sqs=max_exp_avg_sqs),
                              dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                   decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                                   maximize=maximize, grad_scale=grad_scale))
    ptrs, chunks, dtype, size = t
    scalars = host.adam_scalars(dtype, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                                amsgrad=amsgrad, maximize=maximize, grad_scale=grad_scale)
    with kind.launch(size, params[0], chunks.shape[0]) as run:
        run(kind.adam_loop)(ptrs, chunks, *scalars)


def rmsprop_update(params, grads, square_avgs, momentum_buffers=None, grad_avgs=None, *, lr=1e-2, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False,
                   grad_scale=1.0) -> None:
    """In-place RMSprop step of every parameter (``optim.rmsprop._single_tensor_rmsprop``)."""
    kind = _kind(params)
    host.require("square_avgs", square_avgs, "(running averages of squared gradients)")
    if momentum > 0:
        host.require("momentum_buffers", momentum_buffers, "when momentum > 0")
    if centered:
        host.require("grad_avgs", grad_avgs, "when centered=True")
    t = host.tables(kind, params, grads, [square_avgs, momentum_buffers if momentum > 0 else None,
                                          grad_avgs if centered else None],
                    ("square_avgs", "momentum_buffers", "grad_avgs"))
    if t is None:
        return
    if t is host.OVERLAP:
        return _one_at_a_time(rmsprop_update, dict(params=params, grads=grads, square_avgs=square_avgs,
                                                   momentum_buffers=momentum_buffers, grad_avgs=grad_avgs),
                              dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                   centered=centered, maximize=maximize, grad_scale=grad_scale))
    ptrs, chunks, dtype, size = t
    scalars = host.rmsprop_scalars(dtype, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                   momentum=momentum, centered=centered, maximize=maximize, grad_scale=grad_scale)
    with kind.launch(size, params[0], chunks.shape[0]) as run:
        run(kind.rmsprop_loop)(ptrs, chunks, *scalars)


def adagrad_update(params, grads, state_sums, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                   maximize=False, grad_scale=1.0) -> None:
    """In-place Adagrad step of every parameter, all at step count ``step``
    (``optim.adagrad._single_tensor_adagrad``)."""
    kind = _kind(params)
    host.require("state_sums", state_sums, "(sums of squared gradients)")
    t = host.tables(kind, params, grads, [state_sums], ("state_sums",))
    if t is None:
        return
    if t is host.OVERLAP:
        return _one_at_a_time(adagrad_update, dict(params=params, grads=grads, state_sums=state_sums),
                              dict(step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                   maximize=maximize, grad_scale=grad_scale))
    ptrs, chunks, dtype, size = t
    scalars = host.adagrad_scalars(dtype, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                   eps=eps, maximize=maximize, grad_scale=grad_scale)
    with kind.launch(size, params[0], chunks.shape[0]) as run:
        run(kind.adagrad_loop)(ptrs, chunks, *scalars)


def sum_of_squares(arrays) -> float:
    """``sum_i x_i^2`` over every element of every array of the list (the squared global
    norm that ``clip_grad_norm_`` clips by), in one pass: float64 accumulation on the CPU,
    a two-pass tree reduction in the arrays' dtype on the GPU. The arrays are only read."""
    kind = _kind(arrays, "arrays")
    t = host.tables(kind, arrays, arrays, [], [], read_only=True)
    if t is None:
        return 0.0
    ptrs, chunks, dtype, size = t
    return kind.sum_of_squares(ptrs, chunks, dtype, size)


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None) -> host.BatchGradStats:
    """Clipped mean of per-sample gradients and the batch's noise statistics (see
    ``reference.per_sample_grad_stats``)."""
    kinds = {_kind([per_sample_grads], "per_sample_grads"), _kind([mean_out], "mean_out")}
    if len(kinds) != 1:
        raise ValueError("per_sample_grads and mean_out must be on the same device")
    return kinds.pop().per_sample_grad_stats(per_sample_grads, mean_out, max_norm=max_norm)
