"""Adagrad: per-coordinate step sizes from the sum of all past squared gradients."""

from __future__ import annotations

from .. import backend, kernels
from ..sparse import SparseRowGrad
from .optimizer import Optimizer, check_number, full_like_param, kernel_batches, pick


class Adagrad(Optimizer):
    r"""Adagrad: coordinates that have seen large gradients take small steps.

    Paper: Duchi, Hazan & Singer (2011), *Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization*, JMLR 12.

    Algorithm (PyTorch's, for the same arguments; :math:`\eta` = ``lr``, :math:`\lambda`
    = ``weight_decay``, ``t`` counts this parameter's steps from 1)::

        g_t   = -g_t                              if maximize
        g_t   = g_t + lambda * p_{t-1}            if weight_decay != 0  (coupled L2 decay)
        eta_t = eta / (1 + (t - 1) * lr_decay)
        S_t   = S_{t-1} + g_t^2                   sum, starting at initial_accumulator_value
        p_t   = p_{t-1} - eta_t * g_t / (sqrt(S_t) + eps)

    The accumulator only grows, so every coordinate's step size decays; coordinates of
    rare features (rows of an embedding touched by few batches) keep larger steps, which
    is what Adagrad was designed for. There is no momentum. **Weight decay** is coupled
    (L2) and cannot be combined with sparse gradients.

    **Sparse gradients** (``SparseRowGrad``, PyTorch's sparse Adagrad semantics): repeated
    rows are summed first (the update is non-linear), then only those rows of ``sum``
    and of the parameter change; every other row keeps its accumulator and value. Since
    Adagrad has no decay of ``S``, this is *exactly* the dense update (an untouched row has
    zero gradient and would not move; with ``eps = 0`` and a zero accumulator the dense
    update would even compute 0/0 there).

    **fused** (``None``: automatic): one multi-tensor kernel call updates every parameter
    of a group at once (per device, dtype and step count, which ``lr_decay`` needs),
    reading each gradient where backward left it (see :mod:`tinygrad_sgd.optim.optimizer`);
    a parameter whose gradient arrives sparse is updated by the reference (touched rows
    only).
    """

    _state_names = frozenset({"step", "sum"})

    def __init__(self, params, lr: float = 1e-2, *, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, maximize: bool = False, fused=None):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize)
        super().__init__(params, defaults, fused=fused)

    def _validate_group(self, group: dict) -> None:
        group["lr"] = check_number("lr", group["lr"])
        group["lr_decay"] = check_number("lr_decay", group["lr_decay"])
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        group["initial_accumulator_value"] = check_number("initial_accumulator_value",
                                                          group["initial_accumulator_value"])
        group["eps"] = check_number("eps", group["eps"])
        group["maximize"] = bool(group["maximize"])

    def _check_sparse(self, group: dict) -> None:
        if group["weight_decay"] != 0:
            raise RuntimeError("Adagrad: weight_decay cannot be combined with sparse gradients (it would "
                               "touch every row); use weight_decay=0 for Embedding(sparse=True)")

    def _init_state(self, group: dict, params: list) -> list:
        """Create missing state (the accumulator's start value) and count this step."""
        states = []
        for p in params:
            state = self.state.get(p)
            if not state:
                # The constructor's value, as torch.optim.Adagrad: a param group's own
                # initial_accumulator_value is accepted there but not used.
                start = self.defaults["initial_accumulator_value"]
                state = self.state[p] = {"step": 0, "sum": full_like_param(p, start)}
            state["step"] += 1
            states.append(state)
        return states

    @staticmethod
    def _hyper(group: dict) -> dict:
        return dict(lr=group["lr"], lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=group["maximize"])

    def _update_group(self, group: dict, params: list, grads: list, grad_scale: float) -> None:
        states = self._init_state(group, params)
        adagrad([p.data for p in params], grads, [s["sum"] for s in states], [s["step"] for s in states],
                **self._hyper(group), grad_scale=grad_scale, fused=self._fused_mode())


def adagrad(params: list, grads: list, state_sums: list, steps: list, *, lr: float, lr_decay: float,
            weight_decay: float, eps: float, maximize: bool, grad_scale: float = 1.0,
            fused: bool | None = False) -> None:
    """Functional Adagrad over raw arrays; the one place that chooses the implementation
    (PyTorch's split): the reference loop (:func:`_single_tensor_adagrad`, ``fused=False``)
    or the multi-tensor kernels (:func:`_fused_adagrad`; ``fused=True`` raises on a
    parameter they cannot take, ``fused=None`` gives it, e.g. a sparse gradient, to the
    reference)."""
    kw: dict = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize,
                    grad_scale=grad_scale)
    if fused is False:
        _single_tensor_adagrad(params, grads, state_sums, steps, **kw)
    else:
        _fused_adagrad(params, grads, state_sums, steps, strict=bool(fused), **kw)


def _single_tensor_adagrad(params: list, grads: list, state_sums: list, steps: list, *, lr: float,
                           lr_decay: float, weight_decay: float, eps: float, maximize: bool,
                           grad_scale: float = 1.0) -> None:
    """The readable reference (the specification the kernel's ``adagrad_element`` computes
    element by element): one parameter at a time, the formula line by line."""
    for param, grad, state_sum, step in zip(params, grads, state_sums, steps):
        with backend.device_context(backend.device_of(param)):
            xp = backend.get_array_module(param)
            clr = lr / (1 + (step - 1) * lr_decay)            # eta_t = eta / (1 + (t - 1) lr_decay)
            if isinstance(grad, SparseRowGrad):
                grad = grad.coalesce()                        # unique rows: the update is non-linear
                rows, values = grad.indices, grad.values
                if grad_scale != 1:
                    values = values * grad_scale
                if maximize:
                    values = -values
                state_sum[rows] += values * values            # S[rows] += g^2
                std = xp.sqrt(state_sum[rows]) + eps
                param[rows] -= clr * (values / std)           # only the touched rows move
                continue
            if grad_scale != 1:
                grad = grad * grad_scale                      # averaging, clipping, 1/world size (a new array)
            if maximize:
                grad = -grad
            if weight_decay != 0:
                grad = grad + weight_decay * param            # coupled L2 decay
            state_sum += grad * grad                          # S = S + g^2
            std = xp.sqrt(state_sum) + eps
            param -= clr * (grad / std)                       # p -= eta_t g / (sqrt(S) + eps)


def _fused_adagrad(params: list, grads: list, state_sums: list, steps: list, *, lr: float, lr_decay: float,
                   weight_decay: float, eps: float, maximize: bool, grad_scale: float, strict: bool) -> None:
    """The fused update: one pass over memory for all parameters of one device, dtype and
    step count, in one multi-tensor kernel call (one CUDA launch for CuPy arrays), the
    arithmetic of :func:`_single_tensor_adagrad` element by element; sparse gradients go
    to the reference."""
    grads = list(grads)
    batches, rest = kernel_batches(params, grads, key=steps.__getitem__, strict=strict, owner="Adagrad")
    for idx in batches:
        kernels.adagrad_update(pick(params, idx), pick(grads, idx), pick(state_sums, idx), step=steps[idx[0]], lr=lr,
                               lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize,
                               grad_scale=grad_scale)
    if rest:
        _single_tensor_adagrad(pick(params, rest), pick(grads, rest), pick(state_sums, rest), pick(steps, rest), lr=lr,
                               lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize,
                               grad_scale=grad_scale)
