"""tinygrad_sgd: a from-scratch autograd engine for learning and verifying mini-batch SGD.

    import tinygrad_sgd as tg
    tg.manual_seed(0)
    w = tg.randn(3, 1, requires_grad=True)
    loss = ((tg.Tensor(x) @ w - tg.Tensor(y)) ** 2).mean()
    loss.backward()          # w.grad now holds d loss / d w
"""

from . import tensor as _tensor_module  # first: the engine and the ops build on Tensor
from . import autograd, backend, data, distributed, nn, optim, train
from . import federated  # after train: fedavg reports a History
from .backend import gpu_available, set_default_device
from .ops import concat, maximum, minimum, stack, where
from .rng import get_rng_state, manual_seed, set_rng_state
from .tensor import (Tensor, arange, bool_, enable_grad, eye, float16, float32, float64, full, full_like,
                     int32, int64, is_grad_enabled, no_grad, ones, ones_like, rand, randint, randn, tensor,
                     uint8, zeros, zeros_like)

cat = concat  # torch's name

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "manual_seed", "get_rng_state",
    "set_rng_state", "zeros", "ones", "full", "eye", "randn", "rand", "randint", "arange", "zeros_like",
    "ones_like", "full_like", "concat", "cat", "stack", "where", "maximum", "minimum", "float16", "float32",
    "float64", "int32", "int64", "uint8", "bool_", "autograd", "backend", "nn", "optim", "data", "train",
    "distributed", "federated", "gpu_available", "set_default_device",
]
