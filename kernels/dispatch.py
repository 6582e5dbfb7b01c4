"""The one place that chooses a fused kernel by array type.

NumPy arrays go to the Numba CPU kernels (``cpu.py``); CUDA arrays (CuPy arrays, Numba
device arrays, and the CUDA simulator's arrays) go to the Numba-CUDA kernels (``cuda.py``).
Both modules are imported on first use, so ``import tinygrad_sgd.kernels`` neither compiles
anything nor imports ``numba.cuda`` (which works without a GPU, but costs time and is only
needed once a GPU array shows up). Every function has the signature of its counterpart in
``reference.py``, whose docstrings hold the algorithms.
"""

from __future__ import annotations

import importlib

import numpy as np

from . import host


def _module(arrays):
    """``cpu`` or ``cuda`` for the given ``(name, array)`` pairs; all must live on one side."""
    on_gpu = None
    first_name = None
    for name, array in arrays:
        if array is None:
            continue
        if isinstance(array, np.ndarray):
            gpu = False
        elif hasattr(array, "__cuda_array_interface__") or hasattr(array, "copy_to_host"):
            gpu = True
        else:
            raise TypeError(f"{name} must be a NumPy or CUDA array, got {type(array).__name__}")
        if on_gpu is None:
            on_gpu, first_name = gpu, name
        elif gpu != on_gpu:
            where = ("GPU", "CPU") if on_gpu else ("CPU", "GPU")
            raise ValueError(f"{first_name} is on the {where[0]} but {name} is on the {where[1]}; "
                             f"one update works on one device")
    name = ".cuda" if on_gpu else ".cpu"
    module = _imported.get(name)
    if module is None:  # first use: import (and so compile or load) that side's kernels
        module = _imported[name] = importlib.import_module(name, __package__)
    return module


_imported: dict = {}  # ".cpu" / ".cuda" -> the module (import_module is a lookup too slow for every call)


def sgd_update(p, g, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
               maximize=False, first_step=False, grad_scale=1.0, noise=None) -> None:
    """Fused in-place SGD step (see ``reference.sgd_update``)."""
    mod = _module([("param", p), ("grad", g), ("momentum_buffer", momentum_buffer), ("noise", noise)])
    mod.sgd_update(p, g, momentum_buffer, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=weight_decay, maximize=maximize, first_step=first_step, grad_scale=grad_scale,
                   noise=noise)


def adam_update(p, g, m, v, v_max=None, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled_weight_decay=False, amsgrad=False, maximize=False, grad_scale=1.0, noise=None) -> None:
    """Fused in-place Adam/AdamW/AMSGrad step (see ``reference.adam_update``)."""
    mod = _module([("param", p), ("grad", g), ("m", m), ("v", v), ("v_max", v_max), ("noise", noise)])
    mod.adam_update(p, g, m, v, v_max, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                    weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                    maximize=maximize, grad_scale=grad_scale, noise=noise)


def rmsprop_update(p, g, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, momentum=0.0, centered=False, maximize=False, grad_scale=1.0,
                   noise=None) -> None:
    """Fused in-place RMSprop step (see ``reference.rmsprop_update``)."""
    mod = _module([("param", p), ("grad", g), ("square_avg", square_avg), ("momentum_buffer", momentum_buffer),
                   ("grad_avg", grad_avg), ("noise", noise)])
    mod.rmsprop_update(p, g, square_avg, momentum_buffer, grad_avg, lr=lr, alpha=alpha, eps=eps,
                       weight_decay=weight_decay, momentum=momentum, centered=centered, maximize=maximize,
                       grad_scale=grad_scale, noise=noise)


def adagrad_update(p, g, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
                   grad_scale=1.0, noise=None) -> None:
    """Fused in-place Adagrad step (see ``reference.adagrad_update``)."""
    mod = _module([("param", p), ("grad", g), ("state_sum", state_sum), ("noise", noise)])
    mod.adagrad_update(p, g, state_sum, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                       maximize=maximize, grad_scale=grad_scale, noise=noise)


def accumulate_grad(acc, g, *, first=False, scale=1.0) -> None:
    """Fused ``acc = scale*g`` / ``acc += scale*g`` (see ``reference.accumulate_grad``)."""
    _module([("acc", acc), ("grad", g)]).accumulate_grad(acc, g, first=first, scale=scale)


def average_accumulated(acc, count) -> None:
    """Fused ``acc /= count`` (see ``reference.average_accumulated``)."""
    _module([("acc", acc)]).average_accumulated(acc, count)


def sum_of_squares(x) -> float:
    """Sum of squares of a flat buffer (see ``reference.sum_of_squares``)."""
    return _module([("x", x)]).sum_of_squares(x)


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None) -> host.BatchGradStats:
    """Clipped mean of per-sample gradients and the batch's noise statistics (see
    ``reference.per_sample_grad_stats``)."""
    mod = _module([("per_sample_grads", per_sample_grads), ("mean_out", mean_out)])
    return mod.per_sample_grad_stats(per_sample_grads, mean_out, max_norm=max_norm)
