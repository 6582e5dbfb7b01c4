"""Readable NumPy reference of every kernel, with the same signatures as ``cpu.py`` and
``cuda.py``.

These are the specifications the fused kernels are tested against: whole-array NumPy
expressions, one line per formula, in the operation order of torch.optim's single-tensor
("for-loop") implementations. They take the host scalars that ``host.py`` prepares (already
rounded to the buffers' dtype), so a float32 reference computes in float32 exactly like the
fused kernels do. They update the given buffers in place, as the kernels do, but allocate
temporaries: each line is a separate pass over memory (this is the "plain NumPy" column of
``benchmarks/optimizer_update.py``). They work on NumPy arrays and, since they are written
against the array module of their input, on CuPy arrays too.

Every update starts from the same gradient preamble::

    g <- grad_scale * g          # grad_scale: the clipping factor of clip_grad_norm_
    g <- g + noise               # optional pre-drawn gradient noise (see below)
    g <- -g                      # maximize=True
    g <- g + weight_decay * p    # L2 penalty ("coupled" weight decay; not for AdamW)

Gradient noise (Neelakantan et al. 2015, "Adding Gradient Noise Improves Learning for Very
Deep Networks"; DP-SGD's Gaussian mechanism) is passed as a pre-drawn array rather than
generated in the kernel. That keeps the one-generator rule of the project (draws come from
``tinygrad_sgd.rng.generator()`` on the CPU and are copied to the GPU, so a seed gives the
same noise on both devices), and keeps the kernels deterministic and checkable against this
reference to the last bit. The price is one extra read of P floats in the fused pass (1/7
more traffic for Adam) plus the draw, paid only when noise is on; an in-kernel counter-based
generator would save the traffic but costs a log, a sqrt and a cos per element, more than
the memory pass it saves on a CPU without vectorised transcendental functions, and would
give the CPU and GPU ulp-different noise.
"""

from __future__ import annotations

from . import host


def _xp(array):
    """The array module (numpy/cupy) of ``array``, without importing CuPy."""
    import numpy

    if isinstance(array, numpy.ndarray):
        return numpy
    import cupy  # only reached with a CuPy array

    return cupy


def _gradient(p, g, noise, grad_scale, weight_decay, has_noise, maximize, use_weight_decay):
    """The preamble above; returns a new array (``g`` itself is never modified)."""
    g = g * grad_scale
    if has_noise:
        g = g + noise
    if maximize:
        g = -g
    if use_weight_decay:
        g = g + weight_decay * p
    return g


def sgd_update(p, g, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
               maximize=False, first_step=False, grad_scale=1.0, noise=None) -> None:
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    With ``mu = momentum`` and ``tau = dampening``::

        g   <- preamble(g)
        b   <- g                          if first_step (torch: buffer created from g)
        b   <- mu * b + (1 - tau) * g     otherwise
        g   <- g + mu * b  (nesterov)  or  g <- b
        p   <- p - lr * g

    This is the PyTorch/Sutskever et al. (2013) momentum convention (lr multiplies the
    buffer, not the gradient inside it), not Polyak's ``v = mu*v - lr*g``; the two agree for
    a constant learning rate. ``momentum_buffer`` is required when ``momentum != 0``;
    ``first_step=True`` initialises it from the gradient (its old content is ignored).
    """
    a = host.sgd_args(p, g, momentum_buffer, noise, lr=lr, momentum=momentum, dampening=dampening,
                      nesterov=nesterov, weight_decay=weight_decay, maximize=maximize, first_step=first_step,
                      grad_scale=grad_scale)
    d_p = _gradient(p, g, noise, a.grad_scale, a.weight_decay, a.has_noise, a.maximize, a.use_weight_decay)
    if a.use_momentum:
        buf = momentum_buffer
        if a.first_step:
            buf[...] = d_p
        else:
            buf[...] = buf * a.momentum + a.one_minus_dampening * d_p
        d_p = d_p + a.momentum * buf if a.nesterov else buf
    p[...] = p + a.neg_lr * d_p


def adam_update(p, g, m, v, v_max=None, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled_weight_decay=False, amsgrad=False, maximize=False, grad_scale=1.0, noise=None) -> None:
    """Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization"), AMSGrad
    (Reddi et al. 2018, "On the Convergence of Adam and Beyond") and, with
    ``decoupled_weight_decay=True``, AdamW (Loshchilov & Hutter 2019, "Decoupled Weight
    Decay Regularization"), as ``torch.optim.Adam``/``AdamW``.

    ``step`` is t, the 1-based count including this update; the bias corrections
    ``bc1 = 1 - beta1^t`` and ``bc2 = 1 - beta2^t`` are computed on the host::

        g     <- preamble(g)       (L2 weight decay only when not decoupled)
        p     <- p * (1 - lr*wd)   (AdamW only)
        m     <- m + (1 - beta1) * (g - m)           # = beta1*m + (1-beta1)*g
        v     <- beta2 * v + (1 - beta2) * g * g
        v_max <- max(v_max, v);  v_hat = v_max        (amsgrad; else v_hat = v)
        denom <- sqrt(v_hat) / sqrt(bc2) + eps
        p     <- p - (lr / bc1) * m / denom
    """
    a = host.adam_args(p, g, m, v, v_max, noise, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                       maximize=maximize, grad_scale=grad_scale)
    xp = _xp(p)
    d_p = _gradient(p, g, noise, a.grad_scale, a.weight_decay, a.has_noise, a.maximize, a.l2_decay)
    if a.decoupled_decay:
        p[...] = p * a.decay_factor
    m[...] = m + a.one_minus_beta1 * (d_p - m)
    v[...] = v * a.beta2 + (a.one_minus_beta2 * d_p) * d_p
    v_hat = v
    if a.amsgrad:
        v_max[...] = xp.maximum(v_max, v)
        v_hat = v_max
    denom = xp.sqrt(v_hat) / a.bias_correction2_sqrt + a.eps
    p[...] = p + (a.neg_step_size * m) / denom


def rmsprop_update(p, g, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, momentum=0.0, centered=False, maximize=False, grad_scale=1.0,
                   noise=None) -> None:
    """RMSprop (Hinton, Srivastava & Swersky 2012, Coursera lecture 6e; the centered
    variant from Graves 2013, "Generating Sequences With Recurrent Neural Networks"), as
    ``torch.optim.RMSprop``::

        g   <- preamble(g)
        s   <- alpha * s + (1 - alpha) * g * g             # square_avg
        a   <- a + (1 - alpha) * (g - a)                   # grad_avg (centered only)
        avg <- sqrt(s - a*a) + eps   (centered)  or  sqrt(s) + eps
        b   <- mu * b + g / avg;  p <- p - lr * b          (momentum > 0)
        p   <- p - lr * g / avg                            (otherwise)

    Buffers start at zero (torch's convention; the momentum buffer is not seeded from g).
    """
    a = host.rmsprop_args(p, g, square_avg, momentum_buffer, grad_avg, noise, lr=lr, alpha=alpha, eps=eps,
                          weight_decay=weight_decay, momentum=momentum, centered=centered, maximize=maximize,
                          grad_scale=grad_scale)
    xp = _xp(p)
    d_p = _gradient(p, g, noise, a.grad_scale, a.weight_decay, a.has_noise, a.maximize, a.use_weight_decay)
    square_avg[...] = square_avg * a.alpha + (a.one_minus_alpha * d_p) * d_p
    if a.centered:
        grad_avg[...] = grad_avg + a.one_minus_alpha * (d_p - grad_avg)
        avg = xp.sqrt(square_avg - grad_avg * grad_avg)
    else:
        avg = xp.sqrt(square_avg)
    avg = avg + a.eps
    if a.use_momentum:
        momentum_buffer[...] = momentum_buffer * a.momentum + d_p / avg
        p[...] = p + a.neg_lr * momentum_buffer
    else:
        p[...] = p + (a.neg_lr * d_p) / avg


def adagrad_update(p, g, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
                   grad_scale=1.0, noise=None) -> None:
    """Adagrad (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization"), as ``torch.optim.Adagrad``::

        g   <- preamble(g)
        clr <- lr / (1 + (t - 1) * lr_decay)        # t = step, 1-based, on the host
        s   <- s + g * g                            # state_sum
        p   <- p - clr * g / (sqrt(s) + eps)

    ``state_sum`` starts at ``initial_accumulator_value``, which the caller fills in.
    """
    a = host.adagrad_args(p, g, state_sum, noise, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                          eps=eps, maximize=maximize, grad_scale=grad_scale)
    xp = _xp(p)
    d_p = _gradient(p, g, noise, a.grad_scale, a.weight_decay, a.has_noise, a.maximize, a.use_weight_decay)
    state_sum[...] = state_sum + d_p * d_p
    p[...] = p + (a.neg_clr * d_p) / (xp.sqrt(state_sum) + a.eps)


def accumulate_grad(acc, g, *, first=False, scale=1.0) -> None:
    """Add one micro-batch gradient into the accumulation buffer::

        acc <- scale * g         (first=True: overwrite, so no zeroing pass is needed)
        acc <- acc + scale * g   (otherwise)

    Gradient accumulation: with k micro-batches of B/k samples, each micro-batch
    gradient the mean over its samples, ``acc`` ends as the sum of the k means and
    :func:`average_accumulated` with ``count=k`` turns it into the mean over all B samples,
    the gradient of one batch of B. For unequal micro-batches pass ``scale=n_j`` (the
    micro-batch size) and ``count=sum n_j``.
    """
    acc_, g_, scale_, first_ = host.accumulate_args(acc, g, first=first, scale=scale)
    if first_:
        acc[...] = g * scale_
    else:
        acc[...] = acc + g * scale_


def average_accumulated(acc, count) -> None:
    """Finish an accumulation: ``acc <- acc / count`` (a true division, in acc's dtype).
    An optimizer can instead fold ``1/count`` into its ``grad_scale`` and save this pass."""
    _, count_ = host.average_args(acc, count)
    acc[...] = acc / count_


def sum_of_squares(x) -> float:
    """``sum_i x_i^2`` of a flat buffer, accumulated in float64 (the global gradient norm
    of ``clip_grad_norm_`` is its square root). The CUDA kernel accumulates in the buffer's
    dtype with a tree reduction instead (no float64 on the GPU)."""
    host.check_buffers([("x", x)])
    xp = _xp(x)
    x64 = x.astype(xp.float64)
    return float(xp.dot(x64, x64))


def per_sample_grad_stats(per_sample_grads, mean_out, *, max_norm=None) -> host.BatchGradStats:
    """Average B per-sample gradients (rows of ``per_sample_grads``, shape (B, P)) into
    ``mean_out`` and measure the gradient noise of the batch.

    With ``max_norm = C``, each sample is first clipped as in DP-SGD (Abadi et al. 2016):
    ``g_b <- g_b * min(1, C / |g_b|)``. Then::

        G_B       = (1/B) sum_b g_b                              -> mean_out
        tr(Sigma) ~ S = sum_b |g_b - G_B|^2 / (B - 1)              (unbiased)
        Var[G_B]  = tr(Sigma) / B                                  (variance of the estimate)
        |G|^2     ~ |G_B|^2 - S / B                                (unbiased)
        B_simple  = tr(Sigma) / |G|^2                              (McCandlish et al. 2018)

    the "simple noise scale" of McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model
    of Large-Batch Training": the batch size around which larger batches stop paying off.
    See :class:`host.BatchGradStats` and :func:`host.batch_stats` for the estimator. Norms,
    the mean and the sums are computed in float64 (the mean is rounded once when stored).
    """
    batch, _, max_norm = host.per_sample_args(per_sample_grads, mean_out, max_norm)
    xp = _xp(per_sample_grads)
    g64 = per_sample_grads.astype(xp.float64)
    norms = xp.sqrt((g64 * g64).sum(axis=1))
    norms = host.to_host(norms)
    factors = xp.asarray(host.clip_factors(norms, max_norm))
    clipped = g64 * factors[:, None]
    mean = clipped.sum(axis=0) / batch
    mean_out[...] = mean
    spread = float(((clipped - mean) ** 2).sum())
    mean_sq = float((mean * mean).sum())
    return host.batch_stats(norms, max_norm, batch, spread, mean_sq)
