"""Stochastic gradient descent with (Nesterov) momentum: the reference and the fused update."""

from __future__ import annotations

from .. import backend, kernels
from ..sparse import SparseRowGrad
from .flat import KernelContext, as_flat
from .optimizer import Optimizer, check_number


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum.

    Papers: Robbins & Monro (1951), *A stochastic approximation method* (the SGD step);
    Polyak (1964), *Some methods of speeding up the convergence of iteration methods*
    (heavy-ball momentum); Nesterov (1983) and Sutskever, Martens, Dahl & Hinton (2013),
    *On the importance of initialization and momentum in deep learning* (Nesterov
    momentum for deep learning).

    Algorithm (PyTorch's, for the same arguments; :math:`g_t` is ``param.grad``,
    :math:`\eta` = ``lr``, :math:`\mu` = ``momentum``, :math:`\tau` = ``dampening``,
    :math:`\lambda` = ``weight_decay``)::

        g_t  = -g_t                       if maximize
        g_t  = g_t + lambda * p_{t-1}     if weight_decay != 0   (L2 penalty lambda/2 ||p||^2)
        if momentum != 0:
            v_t = g_t                               at the first step (no dampening there)
            v_t = mu * v_{t-1} + (1 - tau) * g_t    afterwards
            g_t = g_t + mu * v_t    if nesterov     else    g_t = v_t
        p_t  = p_{t-1} - eta * g_t

    **Momentum convention.** The buffer above, PyTorch's, accumulates *gradients* and the
    learning rate multiplies the whole buffer::

        PyTorch:   v = mu * v + g              p = p - eta * v
        textbook:  v = gamma * v + eta * g     p = p - v        (Polyak; Sutskever et al.)

    With a constant learning rate the two are the same algorithm (the textbook velocity
    is ``eta`` times PyTorch's, and ``gamma = mu``), so their trajectories coincide. They
    differ only when ``eta`` changes: PyTorch's step rescales the velocity already built
    up with the *new* rate at once, while the textbook velocity keeps the old rate in the
    old gradients and lets it decay away at ``gamma`` per step. Learning-rate schedules
    therefore act faster on PyTorch-style momentum.

    **Nesterov.** Sutskever et al. write ``v = mu v - eta grad f(p + mu v); p = p + v``;
    the form above is the same method rewritten in terms of the look-ahead point, which
    needs only the gradient at the current parameters.

    **Weight decay** is the coupled (L2) kind: ``lambda * p`` joins the gradient before
    momentum, exactly the gradient of ``loss + lambda/2 * ||p||^2`` (see
    ``tg.nn.utils.l2_penalty``). For plain SGD, coupled and decoupled decay coincide up to
    the factor ``eta``; for adaptive methods they do not (see ``AdamW``).

    **Sparse gradients** (``Embedding(sparse=True)`` gives a ``SparseRowGrad``): without
    momentum only the touched rows are updated, ``p[rows] -= eta * g[rows]``. With
    momentum the buffer is kept dense: every row that has ever been touched keeps moving
    on its velocity (the numbers PyTorch's sparse momentum buffer produces), so the
    step costs a dense update. ``weight_decay`` cannot be combined with sparse gradients
    (as in PyTorch): it would touch every row. A fused optimizer (``fused=None``) updates
    a parameter whose gradient arrives sparse with the reference update.

    **fused** (``None``: automatic): one Numba kernel call per parameter group updates
    every parameter at once, over flat buffers (see :mod:`tinygrad_sgd.optim.optimizer`).

    Example::

        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(self, params, lr: float = 1e-3, *, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False, fused=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, fused=fused)

    def _validate_group(self, group: dict) -> None:
        group["lr"] = check_number("lr", group["lr"])
        group["momentum"] = check_number("momentum", group["momentum"])
        group["dampening"] = check_number("dampening", group["dampening"], low=None)
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        group["nesterov"] = bool(group["nesterov"])
        group["maximize"] = bool(group["maximize"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")

    def _check_sparse(self, group: dict) -> None:
        if group["weight_decay"] != 0:
            raise RuntimeError("SGD: weight_decay cannot be combined with sparse gradients (it would "
                               "touch every row); use weight_decay=0 for Embedding(sparse=True)")

    def _update_group(self, group: dict, params: list, grads: list) -> None:
        momentum_buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        sgd([p.data for p in params], grads, momentum_buffers, lr=group["lr"], momentum=group["momentum"],
            dampening=group["dampening"], weight_decay=group["weight_decay"], nesterov=group["nesterov"],
            maximize=group["maximize"], fused=False)
        if group["momentum"] != 0:
            for p, buf in zip(params, momentum_buffers):
                self.state.setdefault(p, {})["momentum_buffer"] = buf

    def _fused_update(self, group: dict, pack, indices: list) -> None:
        use_momentum = group["momentum"] != 0
        # A parameter without a momentum buffer starts it from its gradient (first_step);
        # with momentum off, no state at all, as in the reference.
        has_buffer = (lambda i: "momentum_buffer" in self.state.get(pack.params[i], ())) if use_momentum else None
        for start, stop, buffered in pack.runs(indices, has_buffer):
            bufs = [pack.segment(pack.state_buffer("momentum_buffer"), start, stop) if use_momentum else None]
            sgd([pack.segment(pack.param_flat, start, stop)], [pack.segment(pack.grad_flat, start, stop)], bufs,
                lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
                fused=True, first_step=buffered is False)
            if buffered is False:
                for i in range(start, stop):
                    self.state.setdefault(pack.params[i], {})["momentum_buffer"] = pack.state_view("momentum_buffer", i)


def sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, momentum: float, dampening: float,
        weight_decay: float, nesterov: bool, maximize: bool, fused: bool = False, first_step: bool = False) -> None:
    """Functional SGD over raw arrays; new momentum buffers are written into ``momentum_buffers``.

    The one place that chooses the implementation: the reference loop
    (:func:`_single_tensor_sgd`) or, with ``fused=True``, one fused kernel call per list
    entry (:func:`_fused_sgd`; pass flat buffers to update many parameters in one call).
    ``first_step`` (fused only) says the given momentum buffers are new: the kernel
    fills them from the gradient, what the reference does for a ``None`` entry.
    """
    if fused:
        _fused_sgd(params, grads, momentum_buffers, lr=lr, momentum=momentum, dampening=dampening,
                   weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, first_step=first_step)
    else:
        _single_tensor_sgd(params, grads, momentum_buffers, lr=lr, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)


def _single_tensor_sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, momentum: float,
                       dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> None:
    """The readable reference: one parameter at a time, the formula line by line."""
    for i, (param, grad) in enumerate(zip(params, grads)):
        with backend.device_context(backend.device_of(param)):
            if isinstance(grad, SparseRowGrad):
                if momentum == 0:
                    # p[rows] -= lr * g[rows]; repeated rows add up (a scatter-add)
                    backend.index_add(param, grad.indices, (lr if maximize else -lr) * grad.values)
                    continue
                grad = grad.to_dense()  # dense momentum buffer: touched rows keep their velocity
            d_p = -grad if maximize else grad                 # ascend: follow +grad
            if weight_decay != 0:
                d_p = d_p + weight_decay * param              # grad of (wd/2)||p||^2 joins the gradient
            if momentum != 0:
                buf = momentum_buffers[i]
                if buf is None:
                    buf = d_p.copy()                          # v_1 = g_1 (PyTorch: no dampening at step 1)
                    momentum_buffers[i] = buf
                else:
                    buf *= momentum                           # v = mu * v + (1 - tau) * g
                    buf += (1 - dampening) * d_p
                d_p = d_p + momentum * buf if nesterov else buf   # Nesterov looks one step ahead
            param -= lr * d_p                                 # p = p - lr * d_p (in place)


def _fused_sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, momentum: float, dampening: float,
               weight_decay: float, nesterov: bool, maximize: bool, first_step: bool = False) -> None:
    """The fused update: per list entry, one pass over memory in one Numba kernel (one CUDA
    launch for CuPy arrays), the arithmetic of :func:`_single_tensor_sgd` element by
    element. A ``None`` momentum buffer is allocated here and started from the gradient."""
    for i, (param, grad) in enumerate(zip(params, grads)):
        if isinstance(grad, SparseRowGrad):
            raise TypeError("the fused SGD update takes dense gradients only, got a SparseRowGrad")
        buf, first = momentum_buffers[i], first_step
        with KernelContext(param):
            if momentum != 0 and buf is None:
                buf = momentum_buffers[i] = backend.get_array_module(param).empty(param.shape, dtype=param.dtype)
                first = True
            kernels.sgd_update(as_flat(param, "param"), as_flat(grad, "grad"),
                               as_flat(buf, "momentum_buffer") if momentum != 0 else None,
                               lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                               weight_decay=weight_decay, maximize=maximize, first_step=first)
