"""AdamW: Adam with decoupled weight decay."""

from __future__ import annotations

from .adam import Adam


class AdamW(Adam):
    r"""Adam with *decoupled* weight decay.

    Paper: Loshchilov & Hutter (2019), *Decoupled Weight Decay Regularization* (ICLR).

    Algorithm (PyTorch's, for the same arguments; ``t`` counts this parameter's steps
    from 1)::

        g_t = -g_t                               if maximize
        p   = p_{t-1} * (1 - eta * lambda)       decay first, by the *scheduled* rate eta
        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        vmax_t = max(vmax_{t-1}, v_t)            if amsgrad (then v_t -> vmax_t below)
        p_t = p - (eta / (1 - beta1^t)) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

    **Weight-decay convention.** In :class:`Adam`, ``weight_decay`` adds ``lambda * p`` to
    the gradient (L2 regularisation), which the adaptive denominator then shrinks for
    parameters with large gradients: heavily-used weights are barely regularised. AdamW
    takes the decay out of the gradient and shrinks every weight by the same factor
    ``1 - eta * lambda`` per step, as SGD's weight decay does. Note that PyTorch (and
    this class) multiply ``lambda`` by the learning rate ``eta``; the paper multiplies by
    a separate schedule multiplier ``eta_t`` only. The ``betas`` momentum convention is
    Adam's. The default ``weight_decay`` is 1e-2 (PyTorch's).
    """

    _decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, *, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False, fused=None):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, fused=fused)
