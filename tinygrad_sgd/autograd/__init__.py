"""Autograd: the engine (``engine.py``: Function, backward, version counters, grad mode)
and the functional tools (``functional.py``: ``grad``, ``gradcheck``, ``gradgradcheck``).

``tinygrad_sgd.tensor`` must be imported before this package (``import tinygrad_sgd``
does so): the engine works on Tensors.
"""

from .engine import Function, backward, enable_grad, is_grad_enabled, no_grad
from .functional import GradcheckError, grad, gradcheck, gradgradcheck

__all__ = ["Function", "backward", "enable_grad", "is_grad_enabled", "no_grad", "grad", "gradcheck",
           "gradgradcheck", "GradcheckError"]
