"""Dense layers, activations, dropout and embeddings (torch names, shapes and defaults)."""

from __future__ import annotations

import math

import numpy as np

from .. import tensor as _tensor
from ..tensor import Tensor
from . import functional as F
from . import init
from .module import Module, Parameter


def _new_parameter(shape: tuple, device, dtype) -> Parameter:
    """An uninitialised-looking (zero) Parameter; the layer's reset_parameters fills it."""
    dtype = np.dtype(dtype) if dtype is not None else _tensor.float32
    if dtype.kind != "f":
        raise TypeError(f"parameters must be floating point, got dtype {dtype}")
    return Parameter(_tensor.zeros(shape, dtype=dtype, device=device))


def _count(value, name: str, layer: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _uniform_fan_in_(weight: Parameter, bias: Parameter | None, fan_in: int) -> None:
    """torch's default for Linear and Conv: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)),
    and the bias U(+-1/sqrt(fan_in))."""
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(bias, -bound, bound)


class Linear(Module):
    """``y = x W^T + b`` over the last axis: ``(*, in_features) -> (*, out_features)``.

    ``weight`` is ``(out_features, in_features)`` and ``bias`` ``(out_features,)``, both
    initialised U(-1/sqrt(in_features), 1/sqrt(in_features)) like ``torch.nn.Linear``, so
    weights copied from torch give the same outputs and gradients. One fused op
    (``F.linear``) computes the product and the bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = _count(in_features, "in_features", "Linear", 0)
        self.out_features = _count(out_features, "out_features", "Linear", 0)
        self.weight = _new_parameter((self.out_features, self.in_features), device, dtype)
        if bias:
            self.bias = _new_parameter((self.out_features,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.weight, self.bias, self.in_features)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """Returns its input unchanged (a placeholder layer)."""

    def forward(self, input):
        return input


class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` into one (default: all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input: Tensor) -> Tensor:
        return input.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ----------------------------------------------------------------------------- activations


class ReLU(Module):
    """``max(x, 0)``; gradient 0 at 0 (as torch). ``inplace`` is accepted for torch
    compatibility; the result is always a new tensor (same values)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return input.relu()


class LeakyReLU(Module):
    """``x`` for ``x > 0``, else ``negative_slope * x``."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope, self.inplace = float(negative_slope), inplace

    def forward(self, input):
        return input.leaky_relu(self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Tanh(Module):
    """``tanh(x)``."""

    def forward(self, input):
        return input.tanh()


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` (computed without overflow)."""

    def forward(self, input):
        return input.sigmoid()


class SiLU(Module):
    """``x * sigmoid(x)``."""

    def forward(self, input):
        return F.silu(input)


class Softplus(Module):
    """``log(1 + exp(beta x)) / beta``, linear where ``beta x > threshold`` (torch's rule)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, input):
        return input.softplus(beta=self.beta, threshold=self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class GELU(Module):
    """``x * Phi(x)`` (``approximate='none'``, exact erf) or torch's tanh approximation."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input):
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate='{self.approximate}'"


class Softmax(Module):
    """``exp(x) / sum(exp(x))`` along ``dim`` (required: torch's implicit choice is deprecated)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return input.softmax(axis=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """``x - logsumexp(x)`` along ``dim``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return input.log_softmax(axis=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


# ----------------------------------------------------------------------------- dropout


class Dropout(Module):
    """Inverted dropout (Srivastava et al., JMLR 2014): in training each element is
    zeroed with probability ``p`` and the survivors scaled by ``1 / (1 - p)``, so the
    expected activation is unchanged and evaluation mode is the identity.

    Masks come from the global generator (``tg.manual_seed``) unless a
    ``numpy.random.Generator`` is given as ``generator``.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, generator=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability p must be a number in [0, 1], got {p!r}")
        self.p, self.inplace, self.generator = float(p), inplace, generator

    def forward(self, input):
        return F.dropout(input, self.p, self.training, generator=self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ----------------------------------------------------------------------------- embedding


class Embedding(Module):
    """A lookup table: integer ids ``(*)`` -> rows of ``weight`` ``(*, embedding_dim)``.

    ``weight`` is ``(num_embeddings, embedding_dim)`` initialised N(0, 1) (torch's
    default), with the ``padding_idx`` row zeroed and excluded from gradients. With
    ``sparse=True`` the weight's gradient is a
    :class:`~tinygrad_sgd.sparse.SparseRowGrad` holding only the looked-up rows (repeated
    ids add up), so an optimizer can update just those rows: the collaborative-filtering
    case, where a batch touches a few hundred of a million user rows.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 sparse: bool = False, device=None, dtype=None, _weight: Tensor | None = None):
        super().__init__()
        self.num_embeddings = _count(num_embeddings, "num_embeddings", "Embedding")
        self.embedding_dim = _count(embedding_dim, "embedding_dim", "Embedding")
        self.padding_idx = F._padding_index(padding_idx, self.num_embeddings, "Embedding")
        self.sparse = bool(sparse)
        if _weight is None:
            self.weight = _new_parameter((self.num_embeddings, self.embedding_dim), device, dtype)
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (self.num_embeddings, self.embedding_dim):
                raise ValueError(f"Embedding: _weight must have shape ({self.num_embeddings}, {self.embedding_dim}), "
                                 f"got {tuple(_weight.shape)}")
            self.weight = _weight if isinstance(_weight, Parameter) else Parameter(_weight)

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True, padding_idx: int | None = None,
                        sparse: bool = False) -> "Embedding":
        """An Embedding holding (a copy of) ``embeddings``; ``freeze`` turns off its gradient."""
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
            raise ValueError("Embedding.from_pretrained expects a 2-D Tensor (num_embeddings, embedding_dim)")
        weight = Parameter(embeddings.detach().clone(), requires_grad=not freeze)
        return cls(embeddings.shape[0], embeddings.shape[1], padding_idx=padding_idx, sparse=sparse, _weight=weight)

    def forward(self, input) -> Tensor:
        return F.embedding(input, self.weight, padding_idx=self.padding_idx, sparse=self.sparse)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        return text + (", sparse=True" if self.sparse else "")
