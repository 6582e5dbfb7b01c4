"""Every differentiable op, one class each, ``forward`` beside ``backward``, split by kind:

* ``elementwise.py`` -- arithmetic, matmul, activations, comparisons, casts, device moves;
* ``reduce.py`` -- sum, mean, max/min, softmax, and ``unbroadcast``;
* ``shape.py`` -- reshape, permute, broadcast, indexing, concat;
* ``nn.py`` -- the layers' coarse ops: linear, convolution, pooling, batch norm,
  embedding, the losses;
* ``common.py`` -- helpers they share.

The contract every op follows is :class:`tinygrad_sgd.autograd.engine.Function`'s.
``Tensor``'s methods call these classes by name (``Tensor.__add__`` -> ``Add.apply``).
"""

from .common import as_float, constant, keepdims_shape, normalize_axes, normalize_axis
from .elementwise import (Abs, Add, Cast, Clip, Clone, Div, Erf, Exp, LeakyReLU, Log, MatMul, Maximum, Mul, Neg,
                          Pow, ReLU, Sigmoid, Softplus, Sqrt, SqrtOfVariance, Sub, Tanh, ToDevice, Where, compare,
                          maximum, minimum, where)
from .reduce import Extremum, LogSoftmax, LogSumExp, Mean, Softmax, Sum, arg_reduce, unbroadcast
from .shape import BroadcastTo, Concat, GetItem, IndexAdd, Permute, Reshape, concat, raw_index, stack
