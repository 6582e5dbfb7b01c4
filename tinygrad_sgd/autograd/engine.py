"""The autograd engine: recording ops, and running them backwards.

Read this file top to bottom; it is the whole of reverse-mode autodiff in the library.

1. **Grad mode.** While it is on (the default), every op on a tensor that requires grad
   is recorded. ``no_grad()`` turns it off (evaluation, optimizer updates).
2. **Function.** One differentiable op: ``forward`` on raw NumPy/CuPy arrays beside
   ``backward``, which receives the upstream gradient and the op's output as Tensors and
   returns one gradient Tensor (or None) per input. ``Function.apply`` runs ``forward``
   and, when a gradient can flow, records the op: the output tensor points back to its
   Function (``tensor._ctx``), which holds its input tensors. The recorded ops form a
   graph from the leaves (parameters, inputs) to the loss.
3. **Topological order.** Every recorded op gets a serial number, and an op's inputs
   always exist before it is recorded, so sorting the reachable tensors newest first puts
   every tensor before everything it was computed from.
4. **backward.** Walk that order from the loss: pop the gradient waiting at each tensor,
   ask its Function for the gradients of its inputs, and add those into the gradients
   waiting at the inputs. What is left at the end belongs to leaves: it goes into
   their ``.grad`` (:func:`accumulate_grad`).
5. **Version counters.** Changing a tensor's data in place after an op saved it would make
   that op's backward silently wrong, so every in-place change counts up the tensor's
   version (``Tensor._mark_dirty``), each op remembers the versions of the tensors it
   saved, and backward refuses to run when they differ (as PyTorch does).

A plain ``loss.backward()`` runs every op's backward with grad mode off, so nothing is
recorded. ``backward(create_graph=True)`` runs them with grad mode on, which records the
backward pass itself: because backward is written with Tensor ops, the gradients can then
be differentiated again (Hessian-vector products, ``gradgradcheck``).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from typing import Any

import numpy as np

from .. import backend
from ..sparse import SparseRowGrad
from ..tensor import Tensor

# ----------------------------------------------------------------------------- grad mode

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager: ops inside record no graph (evaluation, optimizer updates).

    Like ``torch.no_grad``. The mode is process-wide, not per thread.
    """
    return _grad_mode(False)


def enable_grad():
    """Context manager that turns recording back on inside a ``no_grad`` block."""
    return _grad_mode(True)


# ----------------------------------------------------------------------------- Function

_serial_numbers = itertools.count(1)


class Function:
    """One differentiable op. Subclasses define::

        def forward(self, *arrays, **params) -> array
            # raw NumPy/CuPy arrays in, one array out; keep what backward needs on self
        def backward(self, grad: Tensor, output: Tensor) -> tuple
            # one gradient Tensor (or None) per input, written with Tensor ops

    In ``backward``, ``self.inputs`` holds the input tensors and ``self.needs_input_grad``
    says which of them want a gradient.
    """

    # False for an op whose backward reads only its inputs' shapes, never their values
    # (add, reshape, sum, ...): changing such an input in place cannot spoil the gradient.
    saves_inputs = True
    released = False  # True once backward has freed what the op kept
    sequence = 0      # recording order (see topological_order)
    # Set by apply when the op is recorded:
    inputs: tuple[Tensor, ...]
    needs_input_grad: list[bool]
    saved_versions: list[int] | None  # the inputs' versions when saved (None: saves_inputs is False)

    @classmethod
    def apply(cls, *inputs: Tensor, **params) -> Tensor:
        """Run ``forward`` on the inputs' arrays; record the op if a gradient can flow."""
        device = inputs[0]._device
        for other in inputs[1:]:
            if other._device != device:
                raise RuntimeError(f"{cls.__name__}: expected all tensors on the same device, "
                                   f"found {device} and {other._device}")
        fn = cls.__new__(cls)
        arrays = [t._data for t in inputs]
        try:
            if device == "cpu":  # (a device context costs a call per op; NumPy needs none)
                out = fn.forward(*arrays, **params)
            else:
                with backend.device_context(device):
                    out = fn.forward(*arrays, **params)
        except ValueError as error:  # NumPy's shape errors, told in the user's terms
            shapes = ", ".join(str(t.shape) for t in inputs)
            raise ValueError(f"{cls.__name__}: {error} (input shapes {shapes})") from None
        if isinstance(out, np.generic):  # NumPy returns scalars for 0-d results
            out = np.asarray(out)
        device = fn.output_device(device)
        needs_grad = [t._requires_grad for t in inputs]
        # Record only when a gradient can flow: grad mode on, an input that wants one,
        # and a floating-point result (integer and bool results carry no gradient).
        if not (_grad_enabled and True in needs_grad and out.dtype.kind == "f"):
            return Tensor._make(out, device)
        fn.inputs = inputs
        fn.needs_input_grad = needs_grad
        fn.saved_versions = [t._version_counter[0] for t in inputs] if cls.saves_inputs else None
        fn.sequence = next(_serial_numbers)
        return Tensor._make(out, device, requires_grad=True, ctx=fn)

    def output_device(self, input_device: str) -> str:
        """The device of the result: the inputs' device (``ToDevice`` says otherwise)."""
        return input_device

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad: Tensor, output: Tensor) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self) -> None:
        """Drop the inputs and saved arrays (after a backward without retain_graph)."""
        self.__dict__.clear()
        self.released = True

    def check_versions(self, output: Tensor) -> None:
        """Raise if a tensor this op saved (or its output) was changed in place since."""
        changed = None
        if self.saved_versions is not None:
            for tensor, version in zip(self.inputs, self.saved_versions):
                if tensor._version != version:
                    changed = tensor
                    break
        if changed is None and output._version != 0:
            changed = output
        if changed is not None:
            raise RuntimeError(
                f"one of the tensors needed for the gradient of {type(self).__name__} (shape "
                f"{changed.shape}) was modified in place after it was used (version {changed._version}): "
                "backward() would compute a wrong gradient. Do the in-place change (x[...] = v, "
                "optimizer.step()) after backward(), or use an out-of-place op")


# ----------------------------------------------------------------------------- backward


def topological_order(roots: list[Tensor]) -> list[Tensor]:
    """The recorded (non-leaf) tensors reachable from ``roots``, each before every
    tensor it was computed from.

    Collect them with an explicit stack (a chain of 100,000 ops cannot hit Python's
    recursion limit), then sort by their op's serial number, newest first. The walk also
    checks every op before any gradient is computed, so a graph that cannot be run
    backwards raises before anything changes.
    """
    reachable: dict[Tensor, None] = {}  # an ordered set; Tensors hash by identity
    stack = [root for root in roots if root._ctx is not None]
    while stack:
        tensor = stack.pop()
        if tensor in reachable:
            continue
        fn = tensor._ctx
        assert fn is not None  # the stack holds recorded tensors only
        if fn.released:
            raise RuntimeError("trying to backward through the graph a second time: its saved values "
                               "were freed by the first backward(); pass retain_graph=True to the "
                               "first call if you need two")
        fn.check_versions(tensor)
        reachable[tensor] = None
        for t in fn.inputs:
            if t._ctx is not None:
                stack.append(t)
    return sorted(reachable, key=_op_sequence, reverse=True)


_op_sequence = operator.attrgetter("_ctx.sequence")


def backward(roots: list[Tensor], root_grads: list, *, retain_graph: bool, create_graph: bool,
             inputs: list[Tensor] | None = None) -> list | None:
    """Backpropagate from ``roots`` (the engine behind ``Tensor.backward`` and
    ``autograd.grad``).

    ``root_grads`` holds the upstream gradient of each root (None: ones, for a scalar).
    With ``inputs=None`` the gradients go into the ``.grad`` of the leaves (and of tensors
    that called ``retain_grad()``). With ``inputs`` given, nothing is written to ``.grad``:
    the gradient of each input is returned (None where unused), and only the part of the
    graph that leads to those inputs is run.
    """
    pending: dict[Tensor, Any] = {}  # the gradient waiting at each tensor
    for root, g in zip(roots, root_grads):
        _add_pending(pending, root, _root_grad(g, root))
    # The gradients the caller passed in are theirs: a leaf must never get one as its .grad.
    # Arrays are keyed by id() and kept in the dict, so that no new array can take the id
    # of one that has died during this backward (which would force a needless copy).
    handed_out = {id(owner): owner for owner in (_memory_owner(g.data) for g in pending.values())}
    order = topological_order(roots)
    wanted = None if inputs is None else {t: i for i, t in enumerate(inputs)}
    captured: list[Any] = [] if inputs is None else [None] * len(inputs)
    if wanted is not None:  # run only the ops that lead to a wanted tensor
        above = _above(order, wanted)
        order = [t for t in order if t in above or t in wanted]

    with _grad_mode(create_graph):
        for tensor in order:
            g = pending.pop(tensor, None)
            fn = tensor._ctx
            assert fn is not None  # the order holds recorded tensors only
            if wanted is not None and tensor in wanted:
                captured[wanted[tensor]] = g
                if tensor not in above:
                    continue  # nothing wanted below it: leave that part of the graph alone
            if g is not None:
                if tensor._retains_grad and wanted is None:
                    accumulate_grad(tensor, g, handed_out)
                input_grads = fn.backward(g, tensor)
                for t, tg in zip(fn.inputs, input_grads):
                    if tg is not None and t._requires_grad:
                        _add_pending(pending, t, tg)
            if not retain_graph:
                fn.release()
        # What is left belongs to leaves (and to roots that were leaves themselves).
        for tensor, g in pending.items():
            if wanted is not None:
                if tensor in wanted:
                    captured[wanted[tensor]] = _as_dense(g, tensor)
            elif tensor._ctx is None:
                accumulate_grad(tensor, g, handed_out)
                for hook in tensor._post_accumulate_grad_hooks or ():
                    hook(tensor)
    return None if inputs is None else captured


def accumulate_grad(tensor: Tensor, g, handed_out: dict) -> None:
    """Add the gradient ``g`` (a Tensor, or a ``SparseRowGrad``) into ``tensor.grad``.

    The aliasing rules, which keep every ``.grad`` independent of every other array:

    * **The first gradient becomes ``.grad`` without a copy** -- unless its memory is
      shared: a broadcast view (a zero stride: one element standing for many), memory
      already handed to another ``.grad`` in this backward (``Add`` passes one gradient to
      both of its inputs), or the caller's own ``grad=``. Those are copied.
    * **A later gradient is added into the existing ``.grad`` in place**, as PyTorch's
      AccumulateGrad does, so the ``.grad`` Tensor keeps its identity across backward
      calls (gradient accumulation). The optimizer never writes into a ``.grad``, and
      ``zero_grad()`` drops it by default, so a ``.grad`` kept from an earlier step keeps
      its values.
    * **Under create_graph** the gradient carries a graph, and adding into it in place
      would corrupt that graph: it is added out of place instead.
    """
    if isinstance(g, Tensor) and g.dtype != tensor.dtype:
        g = g.to(dtype=tensor.dtype)
    if tensor.grad is None:
        if isinstance(g, SparseRowGrad):
            tensor.grad = g
            return
        owner = _memory_owner(g.data)
        if id(owner) in handed_out or _is_broadcast_view(g.data):
            g = Tensor._make(g.data.copy(), g._device, requires_grad=g._requires_grad) if g._ctx is None \
                else g.clone()
            owner = g.data
        handed_out[id(owner)] = owner
        tensor.grad = g
        return
    if isinstance(g, SparseRowGrad) and isinstance(tensor.grad, SparseRowGrad):
        tensor.grad = tensor.grad + g
    elif isinstance(tensor.grad, SparseRowGrad):  # a dense gradient joins a sparse one
        tensor.grad = Tensor._make(tensor.grad.to_dense(), tensor._device) + g
    elif isinstance(g, SparseRowGrad):
        backend.index_add(tensor.grad.data, g.indices, g.values)
        tensor.grad._mark_dirty()
    elif _grad_enabled or tensor.grad._ctx is not None:  # create_graph: out of place
        tensor.grad = tensor.grad + g
    else:
        tensor.grad.data += g.data
        tensor.grad._mark_dirty()


# ----------------------------------------------------------------------------- helpers


def _root_grad(g, root: Tensor) -> Tensor:
    """The upstream gradient of a root: ones for a scalar, else the caller's, checked."""
    if g is None:
        if root.numel() != 1:
            raise RuntimeError(f"backward() on a non-scalar tensor of shape {root.shape} needs grad= "
                               "(the upstream gradient, same shape)")
        xp = backend.get_array_module(root.data)
        with backend.device_context(root._device):
            return Tensor._make(xp.ones(root.shape, dtype=root.dtype), root._device)
    g = g if isinstance(g, Tensor) else Tensor(g, dtype=root.dtype, device=root._device)
    if g.shape != root.shape:
        raise RuntimeError(f"grad has shape {g.shape} but the output has shape {root.shape}")
    if g._device != root._device:
        raise RuntimeError(f"grad is on {g._device} but the output is on {root._device}")
    return g


def _add_pending(pending: dict, tensor: Tensor, g) -> None:
    """Add ``g`` into the gradient waiting at ``tensor`` (out of place: the waiting
    gradient may be an array another op also received)."""
    waiting = pending.get(tensor)
    if waiting is None:
        pending[tensor] = g
    elif isinstance(waiting, SparseRowGrad) and isinstance(g, SparseRowGrad):
        pending[tensor] = waiting + g
    else:
        pending[tensor] = _as_dense(waiting, tensor) + _as_dense(g, tensor)


def _as_dense(g, like: Tensor) -> Tensor:
    if isinstance(g, SparseRowGrad):
        if _grad_enabled:
            raise RuntimeError("sparse gradients support backward() only, not create_graph")
        return Tensor._make(g.to_dense(), like._device)
    return g


def _above(order: list[Tensor], wanted: dict) -> set:
    """The tensors of ``order`` that have a wanted tensor somewhere below them (``order``
    lists consumers first, so walk it backwards)."""
    above: set[Tensor] = set()
    for tensor in reversed(order):
        fn = tensor._ctx
        assert fn is not None  # the order holds recorded tensors only
        if any(t in wanted or t in above for t in fn.inputs):
            above.add(tensor)
    return above


def _memory_owner(array):
    """The array that owns ``array``'s memory (NumPy and CuPy point ``base`` at it)."""
    return array if array.base is None else array.base


def _is_broadcast_view(array) -> bool:
    """True for a view in which one element stands for many (``broadcast_to``): a stride
    of 0 along an axis longer than 1. (CuPy arrays have no ``writeable`` flag.)"""
    return 0 in array.strides and any(stride == 0 and size > 1 for stride, size in zip(array.strides, array.shape))
