"""Drive any of the four updates through any implementation with one call.

The tests (fused against reference, CPU and simulated GPU) and
``benchmarks/optimizer_update.py`` run "optimizer X with options Y for N steps" through
the reference, the CPU and the CUDA modules alike; this module is that loop's state
bookkeeping, written once. An optimizer class keeps the same buffers in its state.
"""

from __future__ import annotations

OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")

# The state buffers of each update, in the order its kernels take them.
STATE_NAMES = {
    "sgd": ("momentum_buffer",),
    "adam": ("m", "v", "v_max"),
    "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"),
    "adagrad": ("state_sum",),
}


def needed_state(kind: str, hyper: dict) -> tuple:
    """The state buffers ``kind`` with hyperparameters ``hyper`` actually uses."""
    if kind == "sgd":
        return ("momentum_buffer",) if hyper.get("momentum", 0.0) != 0 else ()
    if kind == "adam":
        return ("m", "v", "v_max") if hyper.get("amsgrad", False) else ("m", "v")
    if kind == "rmsprop":
        names = ["square_avg"]
        if hyper.get("momentum", 0.0) > 0:
            names.append("momentum_buffer")
        if hyper.get("centered", False):
            names.append("grad_avg")
        return tuple(names)
    if kind == "adagrad":
        return ("state_sum",)
    raise ValueError(f"unknown optimizer {kind!r}; expected one of {OPTIMIZERS}")


def init_state(kind: str, p, hyper: dict, *, initial_accumulator_value: float = 0.0) -> dict:
    """Zero-filled state buffers like ``p`` (NumPy or CuPy; Adagrad's sum starts at
    ``initial_accumulator_value``, torch's default 0)."""
    state = {}
    for name in needed_state(kind, hyper):
        buf = p.copy()
        buf.fill(initial_accumulator_value if name == "state_sum" else 0.0)
        state[name] = buf
    return state


def update(module, kind: str, p, g, state: dict, step: int, hyper: dict, **extra) -> None:
    """One in-place update of ``p`` by ``module`` (``reference``, ``cpu``, ``cuda`` or
    ``dispatch``); ``step`` is 1-based; ``extra`` passes ``grad_scale``/``noise``."""
    if kind == "sgd":
        module.sgd_update(p, g, state.get("momentum_buffer"), first_step=step == 1, **hyper, **extra)
    elif kind == "adam":
        module.adam_update(p, g, state["m"], state["v"], state.get("v_max"), step=step, **hyper, **extra)
    elif kind == "rmsprop":
        module.rmsprop_update(p, g, state["square_avg"], state.get("momentum_buffer"), state.get("grad_avg"),
                              **hyper, **extra)
    elif kind == "adagrad":
        module.adagrad_update(p, g, state["state_sum"], step=step, **hyper, **extra)
    else:
        raise ValueError(f"unknown optimizer {kind!r}; expected one of {OPTIMIZERS}")
