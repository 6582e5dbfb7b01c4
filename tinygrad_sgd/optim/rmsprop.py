"""RMSprop: divide the gradient by a running root-mean-square of recent gradients."""

from __future__ import annotations

from .. import backend, kernels
from .optimizer import Optimizer, check_number, full_like_param, kernel_batches, pick


class RMSprop(Optimizer):
    r"""RMSprop, optionally centred and with momentum.

    Source: Tieleman & Hinton (2012), *Lecture 6.5 — RMSProp: divide the gradient by a
    running average of its recent magnitude*, COURSERA: Neural Networks for Machine
    Learning. The centred variant is from Graves (2013), *Generating Sequences With
    Recurrent Neural Networks*.

    Algorithm (PyTorch's, for the same arguments; :math:`\eta` = ``lr``, :math:`\alpha`
    = ``alpha``, :math:`\mu` = ``momentum``, :math:`\lambda` = ``weight_decay``)::

        g_t = -g_t                          if maximize
        g_t = g_t + lambda * p_{t-1}        if weight_decay != 0  (coupled L2 decay)
        s_t = alpha * s_{t-1} + (1 - alpha) * g_t^2                square_avg
        if centered:
            a_t = alpha * a_{t-1} + (1 - alpha) * g_t              grad_avg
            r_t = sqrt(s_t - a_t^2) + eps                          (a running standard deviation)
        else:
            r_t = sqrt(s_t) + eps
        if momentum > 0:
            b_t = mu * b_{t-1} + g_t / r_t                         momentum_buffer
            p_t = p_{t-1} - eta * b_t
        else:
            p_t = p_{t-1} - eta * g_t / r_t

    ``eps`` is added *outside* the square root (PyTorch's and Keras' convention; some
    texts put it inside). There is no bias correction, so the first steps are large: with
    ``alpha = 0.99``, ``s_1 = 0.01 g_1^2`` and the first step is ``10 * eta`` per
    coordinate. **Momentum convention:** PyTorch's, the buffer accumulates the
    *normalised* gradient and ``eta`` multiplies the whole buffer (as in :class:`SGD`).
    **Weight decay** is coupled (L2). Sparse gradients are rejected.

    **fused** (``None``: automatic): one multi-tensor kernel call updates every parameter
    of a group at once (per device and dtype), reading each gradient where backward left
    it (see :mod:`tinygrad_sgd.optim.optimizer`).
    """

    _state_names = frozenset({"step", "square_avg", "momentum_buffer", "grad_avg"})

    def __init__(self, params, lr: float = 1e-2, *, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False, fused=None):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults, fused=fused)

    def _validate_group(self, group: dict) -> None:
        group["lr"] = check_number("lr", group["lr"])
        # alpha > 1 would give (1 - alpha) < 0 and a negative "mean square": rejected (torch only checks >= 0)
        group["alpha"] = check_number("alpha", group["alpha"], high=1.0)
        group["eps"] = check_number("eps", group["eps"])
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        group["momentum"] = check_number("momentum", group["momentum"])
        group["centered"] = bool(group["centered"])
        group["maximize"] = bool(group["maximize"])

    def _init_state(self, group: dict, params: list) -> list:
        """Create missing state (zeros) and count this step, for the parameters updated now."""
        states = []
        for p in params:
            state = self.state.get(p)
            if not state:
                state = self.state[p] = {"step": 0, "square_avg": full_like_param(p, 0.0)}
            # created on first need, so a momentum switched on later (CyclicLR) starts from zero
            if group["momentum"] > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = full_like_param(p, 0.0)
            if group["centered"] and "grad_avg" not in state:
                state["grad_avg"] = full_like_param(p, 0.0)
            state["step"] += 1
            states.append(state)
        return states

    @staticmethod
    def _hyper(group: dict) -> dict:
        return dict(lr=group["lr"], alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                    momentum=group["momentum"], centered=group["centered"], maximize=group["maximize"])

    def _update_group(self, group: dict, params: list, grads: list, grad_scale: float) -> None:
        states = self._init_state(group, params)
        rmsprop([p.data for p in params], grads, [s["square_avg"] for s in states],
                [s.get("grad_avg") for s in states], [s.get("momentum_buffer") for s in states],
                **self._hyper(group), grad_scale=grad_scale, fused=self._fused_mode())


def rmsprop(params: list, grads: list, square_avgs: list, grad_avgs: list, momentum_buffers: list, *, lr: float,
            alpha: float, eps: float, weight_decay: float, momentum: float, centered: bool, maximize: bool,
            grad_scale: float = 1.0, fused: bool | None = False) -> None:
    """Functional RMSprop over raw arrays; the one place that chooses the implementation
    (PyTorch's split): the reference loop (:func:`_single_tensor_rmsprop`, ``fused=False``)
    or the multi-tensor kernels (:func:`_fused_rmsprop`; ``fused=True`` raises on a
    parameter they cannot take, ``fused=None`` gives it to the reference)."""
    kw: dict = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                    maximize=maximize, grad_scale=grad_scale)
    if fused is False:
        _single_tensor_rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, **kw)
    else:
        _fused_rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, strict=bool(fused), **kw)


def _single_tensor_rmsprop(params: list, grads: list, square_avgs: list, grad_avgs: list, momentum_buffers: list,
                           *, lr: float, alpha: float, eps: float, weight_decay: float, momentum: float,
                           centered: bool, maximize: bool, grad_scale: float = 1.0) -> None:
    """The readable reference (the specification the kernel's ``rmsprop_element`` computes
    element by element): one parameter at a time, the formula line by line."""
    for param, grad, square_avg, grad_avg, buf in zip(params, grads, square_avgs, grad_avgs, momentum_buffers):
        with backend.device_context(backend.device_of(param)):
            xp = backend.get_array_module(param)
            if grad_scale != 1:
                grad = grad * grad_scale                      # averaging, clipping, 1/world size (a new array)
            if maximize:
                grad = -grad
            if weight_decay != 0:
                grad = grad + weight_decay * param            # coupled L2 decay
            square_avg *= alpha                               # s = alpha s + (1 - alpha) g^2
            square_avg += (1 - alpha) * (grad * grad)
            if centered:
                grad_avg += (1 - alpha) * (grad - grad_avg)   # a = alpha a + (1 - alpha) g
                avg = xp.sqrt(square_avg - grad_avg * grad_avg) + eps   # sqrt(E[g^2] - E[g]^2) + eps
            else:
                avg = xp.sqrt(square_avg) + eps               # RMS of recent gradients + eps
            if momentum > 0:
                buf *= momentum                               # b = mu b + g / r
                buf += grad / avg
                param -= lr * buf
            else:
                param -= lr * (grad / avg)                    # p -= lr g / r


def _fused_rmsprop(params: list, grads: list, square_avgs: list, grad_avgs: list, momentum_buffers: list, *,
                   lr: float, alpha: float, eps: float, weight_decay: float, momentum: float, centered: bool,
                   maximize: bool, grad_scale: float, strict: bool) -> None:
    """The fused update: one pass over memory for all parameters of one device and dtype,
    in one multi-tensor kernel call (one CUDA launch for CuPy arrays), the arithmetic of
    :func:`_single_tensor_rmsprop` element by element."""
    grads = list(grads)
    batches, rest = kernel_batches(params, grads, strict=strict, owner="RMSprop")
    for idx in batches:
        kernels.rmsprop_update(pick(params, idx), pick(grads, idx), pick(square_avgs, idx),
                               pick(momentum_buffers, idx) if momentum > 0 else None,
                               pick(grad_avgs, idx) if centered else None, lr=lr, alpha=alpha, eps=eps,
                               weight_decay=weight_decay, momentum=momentum, centered=centered, maximize=maximize,
                               grad_scale=grad_scale)
    if rest:
        _single_tensor_rmsprop(pick(params, rest), pick(grads, rest), pick(square_avgs, rest), pick(grad_avgs, rest),
                               pick(momentum_buffers, rest), lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                               momentum=momentum, centered=centered, maximize=maximize, grad_scale=grad_scale)
