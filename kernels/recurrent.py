"""Numba CPU kernels of the recurrent layer op (``tinygrad_sgd.ops.recurrent``): one time
step's gates, forward and backward, in one pass over ``(N, H)``.

Each kernel is the fused form of part of the array function of the same name in
``ops/recurrent.py`` (the readable specification, and the code that runs on CuPy), which
the tests hold it equal to. Transcendental functions are left to NumPy's vectorised
``tanh`` where a step is hot (the LSTM's forward; the plain RNN's forward is NumPy's
add and tanh alone); Numba's scalar libm calls cost ~15 ns each, which the GRU's forward
kernel still pays. The matrix products (``h @ W_hh^T`` per step, and the weight
gradients over the whole sequence) are BLAS calls made by the op; these kernels do the
elementwise work between them, which unfused would be a dozen array passes per step.

Arguments are 2-D ``(N, k*H)`` views of one time step. Gate blocks follow torch's order:
LSTM ``i, f, g, o``; GRU ``r, z, n``. Constants are taken from the arrays' dtype
(``one``), so float32 stays float32 throughout; the loops are serial (one step is a few
thousand elements: waking threads would cost more than it saves).
"""

from __future__ import annotations

import math

from numba import njit

_OPTIONS = {"cache": True, "error_model": "numpy", "fastmath": False}


@njit(**_OPTIONS, inline="always")
def _sigmoid(x, one):
    # exp(-|x|) never overflows; both branches are the same function rearranged
    e = math.exp(-abs(x))
    return one / (one + e) if x >= 0 else e / (one + e)


@njit(**_OPTIONS)
def lstm_preactivations(xw, hw, pre):
    """``pre = xw + hw`` with the sigmoid gates' blocks (i, f, o) halved: as
    ``sigmoid(x) = (1 + tanh(x / 2)) / 2``, one vectorised ``tanh`` over all four blocks
    (NumPy's, SIMD; Numba's scalar ``math.tanh`` is 50x slower) then activates every
    gate, finished by :func:`lstm_cell`."""
    batch, hidden = xw.shape[0], xw.shape[1] // 4
    half = pre.dtype.type(0.5)
    for b in range(batch):
        for j in range(4 * hidden):
            value = xw[b, j] + hw[b, j]
            pre[b, j] = value if 2 * hidden <= j < 3 * hidden else value * half


@njit(**_OPTIONS)
def lstm_cell(gates, c_prev, c_out):
    """``gates`` holds ``tanh`` of :func:`lstm_preactivations`: turn the i, f, o blocks
    into sigmoids (in place) and compute ``c = f c_prev + i g``."""
    batch, hidden = c_prev.shape
    half = c_prev.dtype.type(0.5)
    for b in range(batch):
        for j in range(hidden):
            i = half + half * gates[b, j]
            f = half + half * gates[b, hidden + j]
            gates[b, j] = i
            gates[b, hidden + j] = f
            gates[b, 3 * hidden + j] = half + half * gates[b, 3 * hidden + j]
            c_out[b, j] = f * c_prev[b, j] + i * gates[b, 2 * hidden + j]


@njit(**_OPTIONS)
def lstm_backward_step(dh_out, dh_next, dc, gates, c_prev, tanh_c, dgates):
    """With ``dh = dh_out + dh_next`` (this step's output gradient plus what the next step
    sent back through ``W_hh``) and ``dc`` the cell gradient from the next step: the
    gradients of the four pre-activations into ``dgates``, and ``dc`` becomes the
    gradient of ``c_prev`` (in place). ``tanh_c`` was kept by the forward pass."""
    batch, hidden = c_prev.shape
    one = c_prev.dtype.type(1)
    for b in range(batch):
        for j in range(hidden):
            i = gates[b, j]
            f = gates[b, hidden + j]
            g = gates[b, 2 * hidden + j]
            o = gates[b, 3 * hidden + j]
            dh = dh_out[b, j] + dh_next[b, j]
            tc = tanh_c[b, j]
            dcell = dc[b, j] + dh * o * (one - tc * tc)
            dgates[b, j] = dcell * g * (i * (one - i))
            dgates[b, hidden + j] = dcell * c_prev[b, j] * (f * (one - f))
            dgates[b, 2 * hidden + j] = dcell * i * (one - g * g)
            dgates[b, 3 * hidden + j] = dh * tc * (o * (one - o))
            dc[b, j] = dcell * f


@njit(**_OPTIONS)
def gru_forward_step(xw, hw, b_hh, h_prev, gates, h_out):
    """``r = sigmoid(xw_r + hw_r)``, ``z = sigmoid(xw_z + hw_z)``,
    ``n = tanh(xw_n + r (hw_n + b_hn))``, ``h = n + z (h_prev - n)``; ``xw`` holds
    ``b_ih``, ``hw`` is ``h_prev W_hh^T`` without its bias, which arrives as ``b_hh``.
    Keeps ``r, z, n`` and ``hw_n + b_hn`` (4 blocks)."""
    batch, hidden = h_prev.shape
    one = h_prev.dtype.type(1)
    for b in range(batch):
        for j in range(hidden):
            r = _sigmoid(xw[b, j] + (hw[b, j] + b_hh[j]), one)
            z = _sigmoid(xw[b, hidden + j] + (hw[b, hidden + j] + b_hh[hidden + j]), one)
            hn = hw[b, 2 * hidden + j] + b_hh[2 * hidden + j]
            n = math.tanh(xw[b, 2 * hidden + j] + r * hn)
            h_out[b, j] = n + z * (h_prev[b, j] - n)
            gates[b, j] = r
            gates[b, hidden + j] = z
            gates[b, 2 * hidden + j] = n
            gates[b, 3 * hidden + j] = hn


@njit(**_OPTIONS)
def gru_backward_step(dh_out, dh_next, dh_direct, gates, h_prev, dgi, dgh):
    """``dh = dh_out + dh_next + dh_direct``; the gradients of the input-side (``dgi``)
    and hidden-side (``dgh``) pre-activations, and ``dh_direct = dh z`` (in place): the
    part of ``h_prev``'s gradient that skips ``W_hh``."""
    batch, hidden = h_prev.shape
    one = h_prev.dtype.type(1)
    for b in range(batch):
        for j in range(hidden):
            r = gates[b, j]
            z = gates[b, hidden + j]
            n = gates[b, 2 * hidden + j]
            hn = gates[b, 3 * hidden + j]
            dh = dh_out[b, j] + dh_next[b, j] + dh_direct[b, j]
            dn = dh * (one - z) * (one - n * n)
            dr = dn * hn * (r * (one - r))
            dz = dh * (h_prev[b, j] - n) * (z * (one - z))
            dgi[b, j] = dr
            dgi[b, hidden + j] = dz
            dgi[b, 2 * hidden + j] = dn
            dgh[b, j] = dr
            dgh[b, hidden + j] = dz
            dgh[b, 2 * hidden + j] = dn * r
            dh_direct[b, j] = dh * z


@njit(**_OPTIONS)
def rnn_backward_step(dh_out, dh_next, h, relu, dpre):
    """``dpre = (dh_out + dh_next) act'``, from the step's output ``h``."""
    batch, hidden = h.shape
    one = h.dtype.type(1)
    zero = h.dtype.type(0)
    for b in range(batch):
        for j in range(hidden):
            dh = dh_out[b, j] + dh_next[b, j]
            hj = h[b, j]
            dpre[b, j] = (dh if hj > zero else zero) if relu else dh * (one - hj * hj)
