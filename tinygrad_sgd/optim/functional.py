"""The four functional updates by name, with their state: "optimizer X with options Y for
one step" through the reference or the kernels, on raw arrays.

The kernel tests (fused against reference, on the CPU and the simulated GPU) and
``benchmarks/optimizer_update.py`` drive every update the same way; this module is that
loop's state bookkeeping, written once. It calls the optimizers' own functional updates
(``sgd``, ``adam``, ``rmsprop``, ``adagrad``): ``fused=False`` is the readable reference
(``_single_tensor_*``), ``fused=True`` the multi-tensor kernels. Hyperparameters use the
kernels' names (``beta1``, ``beta2``, ``decoupled_weight_decay``); the state keys are the
optimizers' (``exp_avg``, ``sum``, ...), each a list with one array per parameter.
"""

from __future__ import annotations

from .adagrad import adagrad
from .adam import adam
from .rmsprop import rmsprop
from .sgd import sgd

OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")

_DEFAULTS = {
    "sgd": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False),
    "adam": dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                 decoupled_weight_decay=False),
    "rmsprop": dict(alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False),
    "adagrad": dict(lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False),
}


def needed_state(kind: str, hyper: dict) -> tuple:
    """The state lists ``kind`` with hyperparameters ``hyper`` uses."""
    if kind == "sgd":
        return ("momentum_buffer",) if hyper.get("momentum", 0.0) != 0 else ()
    if kind == "adam":
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hyper.get("amsgrad") else ("exp_avg", "exp_avg_sq")
    if kind == "rmsprop":
        return (("square_avg",) + (("momentum_buffer",) if hyper.get("momentum", 0.0) > 0 else ())
                + (("grad_avg",) if hyper.get("centered") else ()))
    if kind == "adagrad":
        return ("sum",)
    raise ValueError(f"unknown optimizer {kind!r}; expected one of {OPTIMIZERS}")


def init_state(kind: str, params: list, hyper: dict, *, initial_accumulator_value: float = 0.0) -> dict:
    """Zero-filled state like the parameters (NumPy, CuPy or device arrays; Adagrad's sum
    starts at ``initial_accumulator_value``). SGD's momentum buffers start as ``None``: the
    first step creates them from the gradient, as torch does."""
    state = {}
    for name in needed_state(kind, hyper):
        if name == "momentum_buffer" and kind == "sgd":
            state[name] = [None] * len(params)
            continue
        buffers = []
        for p in params:
            buf = p.copy()
            buf[...] = initial_accumulator_value if name == "sum" else 0.0
            buffers.append(buf)
        state[name] = buffers
    return state


def update(kind: str, params: list, grads: list, state: dict, step: int, hyper: dict, *, fused: bool,
           grad_scale: float = 1.0) -> None:
    """One in-place update of every parameter; ``step`` is 1-based (all parameters at the
    same count); ``hyper`` needs ``lr`` and may set any other hyperparameter."""
    h = {**_DEFAULTS[kind], **hyper}
    n = len(params)
    if kind == "sgd":
        sgd(params, grads, state.get("momentum_buffer", [None] * n), **h, grad_scale=grad_scale, fused=fused)
    elif kind == "adam":
        adam(params, grads, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq", [None] * n),
             [step] * n, **h, grad_scale=grad_scale, fused=fused)
    elif kind == "rmsprop":
        rmsprop(params, grads, state["square_avg"], state.get("grad_avg", [None] * n),
                state.get("momentum_buffer", [None] * n), **h, grad_scale=grad_scale, fused=fused)
    elif kind == "adagrad":
        adagrad(params, grads, state["sum"], [step] * n, **h, grad_scale=grad_scale, fused=fused)
    else:
        raise ValueError(f"unknown optimizer {kind!r}; expected one of {OPTIMIZERS}")
