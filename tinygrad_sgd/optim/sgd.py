"""Stochastic gradient descent with (Nesterov) momentum: the reference and the fused update."""

from __future__ import annotations

from .. import backend, kernels
from ..sparse import SparseRowGrad
from .optimizer import Optimizer, check_number, empty_like, kernel_batches, pick


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

    **fused** (``None``: automatic): one multi-tensor kernel call updates every parameter
    of a group at once (per device and dtype; parameters whose momentum buffer is new in a
    separate call), reading each gradient where backward left it (see
    :mod:`tinygrad_sgd.optim.optimizer`).

    Example::

        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(self, params, lr: float = 1e-3, *, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False, fused=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, fused=fused)

    _state_names = frozenset({"momentum_buffer"})

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

    def _update_group(self, group: dict, params: list, grads: list, grad_scale: float) -> None:
        momentum_buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        sgd([p.data for p in params], grads, momentum_buffers, lr=group["lr"], momentum=group["momentum"],
            dampening=group["dampening"], weight_decay=group["weight_decay"], nesterov=group["nesterov"],
            maximize=group["maximize"], grad_scale=grad_scale, fused=self._fused_mode())
        if group["momentum"] != 0:
            for p, buf in zip(params, momentum_buffers):
                self.state.setdefault(p, {})["momentum_buffer"] = buf


def sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, momentum: float, dampening: float,
        weight_decay: float, nesterov: bool, maximize: bool, grad_scale: float = 1.0,
        fused: bool | None = False) -> None:
    """Functional SGD over raw arrays; new momentum buffers are written into ``momentum_buffers``
    (a ``None`` entry: the buffer starts from this step's gradient).

    The one place that chooses the implementation (PyTorch's split): the reference loop
    (:func:`_single_tensor_sgd`, ``fused=False``) or the multi-tensor kernels
    (:func:`_fused_sgd`; ``fused=True`` raises on a parameter they cannot take,
    ``fused=None`` gives it to the reference). ``grad_scale`` multiplies every gradient
    first; the gradient arrays are only read.
    """
    kw: dict = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                    maximize=maximize, grad_scale=grad_scale)
    if fused is False:
        _single_tensor_sgd(params, grads, momentum_buffers, **kw)
    else:
        _fused_sgd(params, grads, momentum_buffers, strict=bool(fused), **kw)


def _single_tensor_sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, momentum: float,
                       dampening: float, weight_decay: float, nesterov: bool, maximize: bool,
                       grad_scale: float = 1.0) -> None:
    """The readable reference (the specification the kernel's ``sgd_element`` computes
    element by element): one parameter at a time, the formula line by line."""
    for i, (param, grad) in enumerate(zip(params, grads)):
        with backend.device_context(backend.device_of(param)):
            if isinstance(grad, SparseRowGrad):
                if grad_scale != 1:
                    grad = SparseRowGrad(grad.indices, grad.values * grad_scale, grad.shape)
                if momentum == 0:
                    # p[rows] -= lr * g[rows]; repeated rows add up (a scatter-add)
                    backend.index_add(param, grad.indices, (lr if maximize else -lr) * grad.values)
                    continue
                grad = grad.to_dense()  # dense momentum buffer: touched rows keep their velocity
            elif grad_scale != 1:
                grad = grad * grad_scale                      # averaging, clipping, 1/world size (a new array)
            d_p = -grad if maximize else grad                 # ascend: follow +grad
            if weight_decay != 0:
                d_p = d_p + weight_decay * param              # grad of (wd/2)||p||^2 joins the gradient
            if momentum != 0:
                buf = momentum_buffers[i]
                if buf is None:
                    buf = backend.get_array_module(param).array(d_p, copy=True)  # v_1 = g_1 (no dampening at step 1)
                    momentum_buffers[i] = buf
                else:
                    buf *= momentum                           # v = mu * v + (1 - tau) * g
                    buf += (1 - dampening) * d_p
                d_p = d_p + momentum * buf if nesterov else buf   # Nesterov looks one step ahead
            param -= lr * d_p                                 # p = p - lr * d_p (in place)


def _fused_sgd(params: list, grads: list, momentum_buffers: list, *, lr: float, momentum: float, dampening: float,
               weight_decay: float, nesterov: bool, maximize: bool, grad_scale: float, strict: bool) -> None:
    """The fused update: one pass over memory for all parameters of one device and dtype,
    in one multi-tensor kernel call (one CUDA launch for CuPy arrays), the arithmetic of
    :func:`_single_tensor_sgd` element by element. A ``None`` momentum buffer is allocated
    here and the kernel starts it from the gradient (``first_step``), in a call of its own."""
    grads = list(grads)
    new = [momentum != 0 and buf is None for buf in momentum_buffers]
    batches, rest = kernel_batches(params, grads, key=new.__getitem__, strict=strict, owner="SGD")
    for idx in batches:
        first = new[idx[0]]
        if first:
            for i in idx:
                momentum_buffers[i] = empty_like(params[i])
        kernels.sgd_update(pick(params, idx), pick(grads, idx), pick(momentum_buffers, idx) if momentum != 0 else None,
                           lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                           weight_decay=weight_decay, maximize=maximize, first_step=first, grad_scale=grad_scale)
    if rest:
        buffers = pick(momentum_buffers, rest)
        _single_tensor_sgd(pick(params, rest), pick(grads, rest), buffers, lr=lr, momentum=momentum,
                           dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                           grad_scale=grad_scale)
        for i, buf in zip(rest, buffers):
            momentum_buffers[i] = buf
