"""Functional autograd: ``grad`` (gradients as values, Hessian-vector products) and the
finite-difference checks ``gradcheck`` / ``gradgradcheck`` that the test suite uses to
verify every op.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor, float64
from .engine import backward


def _as_tuple(values, what: str) -> tuple:
    values = (values,) if isinstance(values, Tensor) else tuple(values)
    for v in values:
        if not isinstance(v, Tensor):
            raise TypeError(f"{what} must be Tensors, got {type(v).__name__}")
    return values


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool = False) -> tuple:
    """The gradients of ``sum(outputs * grad_outputs)`` with respect to each of ``inputs``.

    Like ``torch.autograd.grad``: nothing is written to ``.grad``; a tuple with one
    tensor per input comes back. With ``create_graph=True`` the result is itself
    differentiable, so a Hessian-vector product is two calls::

        g, = tg.autograd.grad(loss, w, create_graph=True)
        hv, = tg.autograd.grad(g, w, grad_outputs=v)       # H v
    """
    outputs = _as_tuple(outputs, "outputs")
    inputs = _as_tuple(inputs, "inputs")
    if grad_outputs is None:
        grad_outputs = (None,) * len(outputs)
    else:
        grad_outputs = (grad_outputs,) if not isinstance(grad_outputs, (tuple, list)) else tuple(grad_outputs)
        if len(grad_outputs) != len(outputs):
            raise ValueError(f"got {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    for out, g in zip(outputs, grad_outputs):
        if g is None and out.numel() != 1:
            raise RuntimeError(f"grad(): an output of shape {out.shape} is not a scalar; pass grad_outputs "
                               "(the upstream gradient, same shape)")
    for out in outputs:
        if not out.requires_grad:
            raise RuntimeError("grad(): an output does not require grad (no input it depends on does, "
                               "or it was computed under no_grad)")
    for t in inputs:
        if not t.requires_grad:
            raise RuntimeError(f"grad(): an input of shape {t.shape} does not require grad")
    if retain_graph is None:
        retain_graph = create_graph
    results = backward(list(outputs), list(grad_outputs), retain_graph=retain_graph,
                       create_graph=create_graph, inputs=list(inputs))
    assert results is not None  # with inputs given, backward returns one entry per input
    if not allow_unused and any(r is None for r in results):
        raise RuntimeError("grad(): one of the inputs was not used to compute the outputs "
                           "(pass allow_unused=True to get None for it)")
    return tuple(results)


class GradcheckError(RuntimeError):
    """Analytical and numerical gradients disagree."""


def _outputs_tuple(value) -> tuple:
    return (value,) if isinstance(value, Tensor) else tuple(value)


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, seed: int = 0) -> bool:
    """Compare backward with central finite differences, in float64.

    For a random vector ``v`` per output, the analytical ``v^T J`` (one backward pass) is
    compared with ``(f(x + eps e_i) - f(x - eps e_i)) . v / (2 eps)`` for every element
    ``i`` of every input that requires grad. A wrong Jacobian entry shows up unless the
    error happens to be orthogonal to the random ``v`` (probability zero). Passes when
    ``|analytical - numerical| <= atol + rtol |numerical|`` everywhere.
    """
    inputs = _as_tuple(inputs, "inputs")
    checked = [t for t in inputs if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for t in checked:
        if t.dtype != float64:
            raise ValueError(f"gradcheck needs float64 inputs (finite differences in float32 are "
                             f"too noisy), got {t.dtype} for an input of shape {t.shape}")
    outputs = _outputs_tuple(fn(*inputs))
    generator = np.random.default_rng(seed)
    projections = [generator.standard_normal(out.shape) for out in outputs]
    differentiable = [(out, v) for out, v in zip(outputs, projections) if out.requires_grad]
    if differentiable:
        analytical = grad([o for o, _ in differentiable],
                          checked, grad_outputs=[Tensor(v, dtype=o.dtype, device=o.device) for o, v in differentiable],
                          allow_unused=True)
    else:
        analytical = (None,) * len(checked)

    def projected() -> float:
        values = _outputs_tuple(fn(*inputs))  # with grad mode on: gradgradcheck's fn needs it
        return float(sum(np.sum(backend.to_numpy(o.data).astype(np.float64) * v) for o, v in zip(values, projections)))

    for number, (t, g) in enumerate(zip(checked, analytical)):
        expected = np.zeros(t.shape) if g is None else backend.to_numpy(g.data)
        numerical = np.zeros(t.shape)
        flat = t.data.reshape(-1)  # a view: perturb in place, restore after
        for i in range(flat.size):
            original = flat[i].item()
            flat[i] = original + eps
            plus = projected()
            flat[i] = original - eps
            minus = projected()
            flat[i] = original
            numerical.reshape(-1)[i] = (plus - minus) / (2 * eps)
        bad = ~(np.abs(expected - numerical) <= atol + rtol * np.abs(numerical))
        if bad.any():
            where = np.unravel_index(int(np.argmax(bad)), t.shape) if t.ndim else ()
            message = (f"gradcheck failed for input {number} (shape {t.shape}) at index {where}: "
                       f"analytical {expected[where]:.6g} vs numerical {numerical[where]:.6g}; "
                       f"max abs difference {np.max(np.abs(expected - numerical)):.3g}")
            if raise_exception:
                raise GradcheckError(message)
            return False
    return True


def gradgradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
                  raise_exception: bool = True, seed: int = 0) -> bool:
    """Check second derivatives: ``gradcheck`` of the (create_graph) gradient of ``fn``."""
    inputs = _as_tuple(inputs, "inputs")
    checked = [t for t in inputs if t.requires_grad]
    generator = np.random.default_rng(seed + 1)
    outputs = _outputs_tuple(fn(*inputs))
    weights = [generator.standard_normal(o.shape) for o in outputs]

    def first_derivative(*args):
        outs = _outputs_tuple(fn(*args))
        wanted = [a for a in args if a.requires_grad]
        grads = grad(outs, wanted, grad_outputs=[Tensor(w, dtype=o.dtype, device=o.device)
                                                  for o, w in zip(outs, weights)],
                     create_graph=True, allow_unused=True)
        return tuple(g if g is not None else Tensor(np.zeros(a.shape), dtype=a.dtype, device=a.device)
                     for g, a in zip(grads, wanted))

    if not checked:
        raise ValueError("gradgradcheck: no input requires grad")
    return gradcheck(first_derivative, inputs, eps=eps, atol=atol, rtol=rtol,
                     raise_exception=raise_exception, seed=seed)
