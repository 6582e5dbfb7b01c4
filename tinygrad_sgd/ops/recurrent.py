"""The recurrent layers' op: one RNN, LSTM or GRU layer, one direction, over a whole sequence.

``tg.nn.RNN``/``LSTM``/``GRU`` call :class:`RecurrentLayer` once per layer and direction.
Per time step ``t`` (torch's gate order and names; ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh``):

* RNN:  ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or relu);
* LSTM: ``[i, f, g, o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``, activated by
  sigmoid, sigmoid, tanh, sigmoid; ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``
  (Hochreiter & Schmidhuber, 1997);
* GRU: ``[r, z] = sigmoid(x W_i{r,z}^T + b_i{r,z} + h W_h{r,z}^T + b_h{r,z})``,
  ``n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))``, ``h_t = (1 - z) n + z h_{t-1}``
  (Cho et al., 2014).

How the op runs (the cuDNN recipe, Appleyard et al. 2016):

* **Forward.** The input projection of every time step is ONE matrix product,
  ``X (L*N, H_in) @ W_ih^T``. Then per step: one ``h_{t-1} @ W_hh^T`` and one fused
  elementwise kernel for the gates (``kernels/recurrent.py`` on the CPU; the array
  functions ``*_step`` below on the GPU, which are also the kernels' readable spec).
* **Backward** is hand-written backpropagation through time over the saved gates: per step
  (last to first) one gate kernel and one ``dgates @ W_hh`` for ``h_{t-1}``; then the
  weight gradients are summed over the whole sequence by one matrix product each
  (``dW_hh = dG^T H_prev``, ``dW_ih = dG^T X``) and ``dX = dG W_ih``.
* **create_graph.** A backward that is itself recorded differentiates
  :func:`reference_layer` instead -- the same layer composed of Tensor ops, one cell per
  step -- so second derivatives come from the engine. That composition is also the
  readable reference the tests hold this op equal to.

The op's single output packs everything a layer returns, ``(L + 1 [+1], N, H)``: the
states in time order with ``h_0`` where the recursion starts -- ``[h_0, h_1, ..., h_L]``,
or ``[h_1, ..., h_L, h_0]`` in the reverse direction -- and, for an LSTM, the last cell
state after them. The module slices it (:func:`output_rows`).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd.engine import Function, enable_grad, is_grad_enabled
from . import cpu_kernels
from .common import constant
from .nn import Linear
from .shape import stack

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def output_rows(steps: int, reverse: bool) -> slice:
    """The rows of the packed output that hold ``h_1..h_L`` (time order)."""
    return slice(0, steps) if reverse else slice(1, steps + 1)


def _slots(t: int, steps: int, reverse: bool) -> tuple:
    """(row of h_{t-1}, row of h_t) for step ``t`` -- "previous" in processing order."""
    return (t + 1, t) if reverse else (t, t + 1)


# ----------------------------------------------------------------------------- one step, as array code


def _sigmoid(xp, x):
    e = xp.exp(-abs(x))  # never overflows; the two branches are the same function rearranged
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def lstm_forward_step(xw, hw, c_prev, gates, c_out, tanh_c, h_out):
    """One LSTM step from ``xw`` (``x_t W_ih^T + b``) and ``hw`` (``h_{t-1} W_hh^T``):
    the activated gates, ``c_t``, ``tanh(c_t)`` and ``h_t`` into the given arrays."""
    xp = backend.get_array_module(xw)
    hidden = c_prev.shape[1]
    pre = xw + hw
    gates[:, :2 * hidden] = _sigmoid(xp, pre[:, :2 * hidden])
    gates[:, 2 * hidden:3 * hidden] = xp.tanh(pre[:, 2 * hidden:3 * hidden])
    gates[:, 3 * hidden:] = _sigmoid(xp, pre[:, 3 * hidden:])
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    c_out[...] = f * c_prev + i * g
    tanh_c[...] = xp.tanh(c_out)
    h_out[...] = o * tanh_c


def _lstm_forward_step_cpu(xw, hw, c_prev, gates, c_out, tanh_c, h_out):
    """:func:`lstm_forward_step` as two Numba passes around NumPy's vectorised tanh."""
    kernels = cpu_kernels.kernel_module("recurrent")
    hidden = c_prev.shape[1]
    kernels.lstm_preactivations(xw, hw, gates)
    np.tanh(gates, out=gates)
    kernels.lstm_cell(gates, c_prev, c_out)
    np.tanh(c_out, out=tanh_c)
    np.multiply(gates[:, 3 * hidden:], tanh_c, out=h_out)


def lstm_backward_step(dh_out, dh_next, dc, gates, c_prev, tanh_c, dgates):
    hidden = c_prev.shape[1]
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dh = dh_out + dh_next
    tc = tanh_c
    dcell = dc + dh * o * (1 - tc * tc)
    dgates[:, :hidden] = dcell * g * (i * (1 - i))
    dgates[:, hidden:2 * hidden] = dcell * c_prev * (f * (1 - f))
    dgates[:, 2 * hidden:3 * hidden] = dcell * i * (1 - g * g)
    dgates[:, 3 * hidden:] = dh * tc * (o * (1 - o))
    dc[...] = dcell * f


def gru_forward_step(xw, hw, b_hh, h_prev, gates, h_out):
    xp = backend.get_array_module(xw)
    hidden = h_prev.shape[1]
    gh = hw + b_hh
    r = _sigmoid(xp, xw[:, :hidden] + gh[:, :hidden])
    z = _sigmoid(xp, xw[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
    n = xp.tanh(xw[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
    h_out[...] = n + z * (h_prev - n)
    gates[:, :hidden], gates[:, hidden:2 * hidden], gates[:, 2 * hidden:3 * hidden] = r, z, n
    gates[:, 3 * hidden:] = gh[:, 2 * hidden:]


def gru_backward_step(dh_out, dh_next, dh_direct, gates, h_prev, dgi, dgh):
    hidden = h_prev.shape[1]
    r, z, n, hn = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dh = dh_out + dh_next + dh_direct
    dn = dh * (1 - z) * (1 - n * n)
    dr = dn * hn * (r * (1 - r))
    dz = dh * (h_prev - n) * (z * (1 - z))
    dgi[:, :hidden], dgi[:, hidden:2 * hidden], dgi[:, 2 * hidden:] = dr, dz, dn
    dgh[:, :hidden], dgh[:, hidden:2 * hidden], dgh[:, 2 * hidden:] = dr, dz, dn * r
    dh_direct[...] = dh * z


def rnn_forward_step(xw, hw, relu, h_out):
    xp = backend.get_array_module(xw)
    xp.add(xw, hw, out=h_out)
    (xp.maximum(h_out, 0, out=h_out) if relu else xp.tanh(h_out, out=h_out))  # already two vectorised passes


def rnn_backward_step(dh_out, dh_next, h, relu, dpre):
    dh = dh_out + dh_next
    dpre[...] = dh * (h > 0) if relu else dh * (1 - h * h)


class _ArraySteps:
    """The step functions above under the kernels' names (the GPU's, and the reference)."""
    lstm_forward_step = staticmethod(lstm_forward_step)
    lstm_backward_step = staticmethod(lstm_backward_step)
    gru_forward_step = staticmethod(gru_forward_step)
    gru_backward_step = staticmethod(gru_backward_step)
    rnn_forward_step = staticmethod(rnn_forward_step)
    rnn_backward_step = staticmethod(rnn_backward_step)


class _CpuSteps:
    """The Numba kernels (``kernels/recurrent.py``), and the LSTM's forward step composed
    of kernels and NumPy's tanh."""

    def __init__(self, kernels):
        self.lstm_forward_step = _lstm_forward_step_cpu
        self.lstm_backward_step = kernels.lstm_backward_step
        self.gru_forward_step = kernels.gru_forward_step
        self.gru_backward_step = kernels.gru_backward_step
        self.rnn_forward_step = rnn_forward_step
        self.rnn_backward_step = kernels.rnn_backward_step


def _steps(*arrays):
    if cpu_kernels.available(*arrays):
        return _CpuSteps(cpu_kernels.kernel_module("recurrent"))
    return _ArraySteps


# ----------------------------------------------------------------------------- the op


class RecurrentLayer(Function):
    """One layer, one direction, over the whole sequence. Inputs: ``x`` (``(L, N, H_in)``,
    or ``(N, L, H_in)`` with ``batch_first``), ``h0`` ``(N, H)``, ``c0`` (LSTM only),
    ``W_ih``, ``W_hh`` and, with ``has_bias``, ``b_ih``, ``b_hh``. Output: the packed
    states described in the module docstring."""

    def forward(self, x, *arrays, mode, reverse, batch_first, has_bias):
        xp = backend.get_array_module(x)
        lstm = mode == "LSTM"
        h0, c0 = arrays[0], (arrays[1] if lstm else None)
        w_ih, w_hh, *biases = arrays[2 if lstm else 1:]
        seq = x.transpose(1, 0, 2) if batch_first else x
        steps, batch, _ = seq.shape
        hidden = w_hh.shape[1]
        self.mode, self.reverse, self.batch_first, self.has_bias = mode, reverse, batch_first, has_bias
        self.x2d = xp.ascontiguousarray(seq).reshape(steps * batch, -1)
        xw = self.x2d @ w_ih.T  # every step's input projection: one matrix product
        if has_bias:
            xw += biases[0] if mode == "GRU" else biases[0] + biases[1]  # (GRU: b_hh sits inside n's product)
        xw = xw.reshape(steps, batch, -1)
        kernels = _steps(x, *arrays)
        packed = xp.empty((steps + 1 + lstm, batch, hidden), dtype=x.dtype)
        first = steps if reverse else 0  # the row of h0
        packed[first] = h0
        w_hh_t = xp.ascontiguousarray(w_hh.T)
        hw = xp.empty((batch, w_hh.shape[0]), dtype=x.dtype)
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        if mode in ("LSTM", "GRU"):
            self.gates = xp.empty((steps, batch, 4 * hidden), dtype=x.dtype)
        if lstm:
            self.cells = xp.empty((steps + 1, batch, hidden), dtype=x.dtype)  # same rows as packed
            self.cells[first] = c0
            self.tanh_cells = xp.empty((steps, batch, hidden), dtype=x.dtype)
        b_hh = (biases[1] if has_bias else xp.zeros(w_hh.shape[0], dtype=x.dtype)) if mode == "GRU" else None
        for t in order:
            prev, row = _slots(t, steps, reverse)
            xp.matmul(packed[prev], w_hh_t, out=hw)
            if lstm:
                kernels.lstm_forward_step(xw[t], hw, self.cells[prev], self.gates[t], self.cells[row],
                                          self.tanh_cells[t], packed[row])
            elif mode == "GRU":
                kernels.gru_forward_step(xw[t], hw, b_hh, packed[prev], self.gates[t], packed[row])
            else:
                kernels.rnn_forward_step(xw[t], hw, mode == "RNN_RELU", packed[row])
        if lstm:
            packed[-1] = self.cells[0 if reverse else steps]
        return packed

    def backward(self, grad, output):
        if is_grad_enabled():
            return self._backward_by_composition(grad)
        lstm, gru = self.mode == "LSTM", self.mode == "GRU"
        x = self.inputs[0]
        w_ih, w_hh = self.inputs[3 if lstm else 2].data, self.inputs[4 if lstm else 3].data
        g, packed = grad.data, output.data
        xp = backend.get_array_module(g)
        steps, batch, hidden = packed.shape[0] - 1 - lstm, packed.shape[1], packed.shape[2]
        kernels = _steps(g, packed, w_hh)
        dgates = xp.empty((steps, batch, w_hh.shape[0]), dtype=g.dtype)  # pre-activations (input side)
        dgates_h = xp.empty_like(dgates) if gru else dgates                # hidden side (differs for GRU)
        dh_next = xp.zeros((batch, hidden), dtype=g.dtype)
        dh_direct = xp.zeros((batch, hidden), dtype=g.dtype) if gru else None
        dc = g[-1].copy() if lstm else None
        order = range(steps) if self.reverse else range(steps - 1, -1, -1)  # the forward's order, reversed
        for t in order:
            prev, row = _slots(t, steps, self.reverse)
            if lstm:
                kernels.lstm_backward_step(g[row], dh_next, dc, self.gates[t], self.cells[prev], self.tanh_cells[t],
                                           dgates[t])
            elif gru:
                kernels.gru_backward_step(g[row], dh_next, dh_direct, self.gates[t], packed[prev], dgates[t],
                                          dgates_h[t])
            else:
                kernels.rnn_backward_step(g[row], dh_next, packed[row], self.mode == "RNN_RELU", dgates[t])
            xp.matmul(dgates_h[t], w_hh, out=dh_next)
        dh0 = dh_next + g[steps if self.reverse else 0]  # (h0's row of the output is h0 itself)
        if gru:
            dh0 += dh_direct
        flat = dgates.reshape(steps * batch, -1)
        flat_h = dgates_h.reshape(steps * batch, -1)
        h_prev = packed[1:steps + 1] if self.reverse else packed[:steps]
        needs = self.needs_input_grad
        grads = [None] * len(self.inputs)
        if needs[0]:
            dx = (flat @ w_ih).reshape(steps, batch, -1)
            grads[0] = constant(dx.transpose(1, 0, 2) if self.batch_first else dx, x)
        grads[1] = constant(dh0, x) if needs[1] else None
        k = 2
        if lstm:
            grads[2] = constant(dc, x) if needs[2] else None
            k = 3
        if needs[k]:
            grads[k] = constant(flat.T @ self.x2d, x)
        if needs[k + 1]:
            grads[k + 1] = constant(flat_h.T @ h_prev.reshape(steps * batch, hidden), x)
        if self.has_bias and (needs[k + 2] or needs[k + 3]):
            db_ih = flat.sum(axis=0)
            db_hh = flat_h.sum(axis=0) if gru else db_ih.copy()  # (the same sum unless GRU)
            grads[k + 2] = constant(db_ih, x) if needs[k + 2] else None
            grads[k + 3] = constant(db_hh, x) if needs[k + 3] else None
        return tuple(grads)

    def _backward_by_composition(self, grad):
        """create_graph: differentiate :func:`reference_layer` (recorded Tensor ops)."""
        from ..autograd.functional import grad as autograd_grad

        with enable_grad():
            packed = reference_layer(self.inputs, mode=self.mode, reverse=self.reverse,
                                     batch_first=self.batch_first, has_bias=self.has_bias)
        wanted = [t for t, need in zip(self.inputs, self.needs_input_grad) if need]
        found = iter(autograd_grad(packed, wanted, grad_outputs=grad, create_graph=True, allow_unused=True))
        return tuple(next(found) if need else None for need in self.needs_input_grad)


# ----------------------------------------------------------------------------- the reference


def _affine(x, weight, bias):
    return Linear.apply(x, weight) if bias is None else Linear.apply(x, weight, bias)


def reference_cell(mode: str, x, state: list, w_ih, w_hh, b_ih, b_hh) -> list:
    """One time step written with Tensor ops; ``state`` is ``[h]`` (``[h, c]`` for LSTM)."""
    h = state[0]
    if mode == "LSTM":
        hidden = h.shape[-1]
        gates = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)  # (N, 4H): i, f, g, o
        i = gates[:, :hidden].sigmoid()
        f = gates[:, hidden:2 * hidden].sigmoid()
        g = gates[:, 2 * hidden:3 * hidden].tanh()
        o = gates[:, 3 * hidden:].sigmoid()
        c = f * state[1] + i * g
        return [o * c.tanh(), c]
    if mode == "GRU":
        hidden = h.shape[-1]
        gi, gh = _affine(x, w_ih, b_ih), _affine(h, w_hh, b_hh)
        r = (gi[:, :hidden] + gh[:, :hidden]).sigmoid()
        z = (gi[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden]).sigmoid()
        n = (gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:]).tanh()
        return [n + z * (h - n)]  # = (1 - z) n + z h
    pre = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    return [pre.tanh() if mode == "RNN_TANH" else pre.relu()]


def reference_layer(inputs, *, mode, reverse, batch_first, has_bias):
    """:class:`RecurrentLayer`'s output, packed the same way, composed of Tensor ops: one
    :func:`reference_cell` per step, so the engine differentiates it (any order)."""
    lstm = mode == "LSTM"
    x, h0 = inputs[0], inputs[1]
    state = [h0, inputs[2]] if lstm else [h0]
    w_ih, w_hh, *biases = inputs[3 if lstm else 2:]
    b_ih, b_hh = biases if has_bias else (None, None)
    steps = x.shape[1 if batch_first else 0]
    outputs = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        x_t = x[:, t] if batch_first else x[t]
        state = reference_cell(mode, x_t, state, w_ih, w_hh, b_ih, b_hh)
        outputs[t] = state[0]
    rows = [*outputs, h0] if reverse else [h0, *outputs]
    if lstm:
        rows.append(state[1])
    return stack(rows, axis=0)
