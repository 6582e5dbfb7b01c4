"""Recurrent layers (RNN, LSTM, GRU) with torch's parameters, gate order and return values.

Each layer and direction is one op over the whole sequence
(``tinygrad_sgd.ops.recurrent.RecurrentLayer``: one input-projection product for every
step, one ``h W_hh^T`` and one fused gate kernel per step, hand-written backpropagation
through time). With ``FUSED = False`` the layers are instead unrolled over time with
ordinary Tensor ops (``ops.recurrent.reference_layer``), the readable reference the tests
hold the op equal to. Per time step ``t`` and layer ``k`` (``W_ih``, ``W_hh``, ``b_ih``,
``b_hh`` = ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``):

* RNN:  ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or relu);
* LSTM: gates ``[i, f, g, o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh`` (torch's
  order i, f, g, o), ``c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)``,
  ``h_t = sigmoid(o) tanh(c_t)`` (Hochreiter & Schmidhuber, 1997);
* GRU: ``[r, z, n]`` order, ``n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))``,
  ``h_t = (1 - z) n + z h_{t-1}`` (Cho et al., 2014).

All weights start U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as in torch, so a state
dict copied from a torch module gives the same outputs and gradients.

Cost note (reference only): when the *input* sequence requires grad (e.g. it comes from
an Embedding), each step's slice of it sends back a gradient the size of the whole input,
so that part of the backward grows with the square of the sequence length.
"""

from __future__ import annotations

import math

from .. import ops
from ..ops.recurrent import RecurrentLayer, output_rows, reference_layer
from ..tensor import Tensor, zeros
from . import functional as F
from . import init
from .layers import _count, _new_parameter
from .module import Module

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}

FUSED = True  # False: unroll every layer with Tensor ops (the reference; slow)


class RNNBase(Module):
    """The shared machinery: parameters, input checks, the unrolled loop over layers."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None):
        super().__init__()
        name = type(self).__name__
        self.mode = mode
        self.input_size = _count(input_size, "input_size", name)
        self.hidden_size = _count(hidden_size, "hidden_size", name)
        self.num_layers = _count(num_layers, "num_layers", name)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{name}: dropout must be a probability in [0, 1], got {dropout!r}")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        directions = 2 if self.bidirectional else 1
        gate_size = _GATES[mode] * self.hidden_size
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                setattr(self, "weight_ih" + suffix, _new_parameter((gate_size, layer_input), device, dtype))
                setattr(self, "weight_hh" + suffix, _new_parameter((gate_size, self.hidden_size), device, dtype))
                if self.bias:
                    setattr(self, "bias_ih" + suffix, _new_parameter((gate_size,), device, dtype))
                    setattr(self, "bias_hh" + suffix, _new_parameter((gate_size,), device, dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            init.uniform_(param, -bound, bound)

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _layer_params(self, layer: int, direction: int) -> tuple:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        if self.bias:
            return (getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix),
                    getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix))
        return getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix), None, None

    # ------------------------------------------------------------------ checks
    def _check_input(self, input) -> tuple:
        """(batched input as (N, L, H_in) or (L, N, H_in), was it unbatched)."""
        name = type(self).__name__
        F._require_float(input, "input", name)
        if input.ndim not in (2, 3):
            layout = "(N, L, H_in)" if self.batch_first else "(L, N, H_in)"
            raise ValueError(f"{name}: expected a 3-D input {layout} or a 2-D unbatched (L, H_in), "
                             f"got shape {input.shape}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected input with last dimension {self.input_size} (input_size), "
                             f"got shape {input.shape}")
        F._same_dtype(input, self.weight_ih_l0, name)
        time_axis = (1 if self.batch_first else 0) if input.ndim == 3 else 0
        if input.shape[time_axis] == 0:
            raise ValueError(f"{name}: the input sequence is empty (length 0 along axis {time_axis}, shape "
                             f"{input.shape}); a recurrent layer needs at least one time step")
        if input.ndim == 2:  # unbatched (L, H_in): add the batch axis where the layout has it
            return input.unsqueeze(0 if self.batch_first else 1), True
        return input, False

    def _check_state(self, state, batch: int, unbatched: bool, what: str, like: Tensor) -> Tensor:
        name = type(self).__name__
        layers = self.num_layers * self._directions
        if state is None:
            return zeros((layers, batch, self.hidden_size), dtype=like.dtype, device=like.device)
        F._require_float(state, what, name)
        expected = (layers, self.hidden_size) if unbatched else (layers, batch, self.hidden_size)
        if state.shape != expected:
            raise ValueError(f"{name}: expected {what} of shape {expected}, got {state.shape}")
        if state.device != like.device:
            raise RuntimeError(f"{name}: {what} is on {state.device} but the input is on {like.device}")
        if state.dtype != like.dtype:
            raise TypeError(f"{name}: {what} has dtype {state.dtype} but the input has dtype {like.dtype}")
        return state.unsqueeze(1) if unbatched else state

    # ------------------------------------------------------------------ the layers
    def _run(self, input: Tensor, states: list) -> tuple:
        """Run every layer and direction. ``states`` holds the initial state tensors, each
        (layers*directions, N, H); returns (output, final states per kind)."""
        steps = input.shape[1 if self.batch_first else 0]
        layer_input = input  # batch-first only for the first layer: the op returns time-major rows
        finals: list = [[] for _ in states]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self._directions):
                index = layer * self._directions + direction
                params = [p for p in self._layer_params(layer, direction) if p is not None]
                options = {"mode": self.mode, "reverse": bool(direction), "has_bias": self.bias,
                           "batch_first": self.batch_first and layer == 0}
                inputs = [layer_input, *(s[index] for s in states), *params]
                packed = RecurrentLayer.apply(*inputs, **options) if FUSED else reference_layer(inputs, **options)
                outputs.append(packed[output_rows(steps, bool(direction))])
                finals[0].append(packed[0 if direction else steps])  # h_n: where the recursion ended
                if self.mode == "LSTM":
                    finals[1].append(packed[steps + 1])
            layer_input = outputs[0] if self._directions == 1 else ops.concat(outputs, axis=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout)
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, [ops.stack(final, axis=0) for final in finals]

    def _forward(self, input: Tensor, hx) -> tuple:
        input, unbatched = self._check_input(input)
        batch = input.shape[0 if self.batch_first else 1]
        kinds = ("h_0", "c_0") if self.mode == "LSTM" else ("h_0",)
        if hx is None:
            given = (None,) * len(kinds)
        elif self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("LSTM: hx must be a tuple (h_0, c_0)")
            given = tuple(hx)
        else:
            given = (hx,)
        states = [self._check_state(s, batch, unbatched, what, input) for s, what in zip(given, kinds)]
        output, finals = self._run(input, states)
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            finals = [f.squeeze(1) for f in finals]
        return output, finals

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            text += ", nonlinearity='relu'"
        if not self.bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.bidirectional:
            text += ", bidirectional=True"
        return text


class RNN(RNNBase):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    ``forward(input, h_0=None) -> (output, h_n)`` with torch's shapes: ``input``
    ``(L, N, H_in)`` (``(N, L, H_in)`` with ``batch_first=True``, or unbatched
    ``(L, H_in)``), ``output`` the last layer's ``h_t`` for every t, ``h_n``
    ``(num_layers * directions, N, H)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple:
        output, (h_n,) = self._forward(input, hx)
        return output, h_n


class LSTM(RNNBase):
    """Long short-term memory, torch's gate order (i, f, g, o) and parameter names.

    ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))``; shapes as :class:`RNN`
    (``batch_first=True`` for ``(N, L, H_in)`` input). ``weight_ih_l{k}`` is
    ``(4 H, H_in)``, ``weight_hh_l{k}`` ``(4 H, H)``, biases ``(4 H,)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype)

    def forward(self, input: Tensor, hx: tuple | None = None) -> tuple:
        output, (h_n, c_n) = self._forward(input, hx)
        return output, (h_n, c_n)


class GRU(RNNBase):
    """Gated recurrent unit, torch's gate order (r, z, n) and parameter names.

    ``forward(input, h_0=None) -> (output, h_n)``; ``weight_ih_l{k}`` is ``(3 H, H_in)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple:
        output, (h_n,) = self._forward(input, hx)
        return output, h_n
