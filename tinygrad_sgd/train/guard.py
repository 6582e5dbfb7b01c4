"""The step guard of :func:`tg.train.fit`: an optimizer step that leaves a NaN or Inf in a
parameter is caught before anything records it, and optionally undone.

A finite loss and a finite gradient do not make a finite update: SGD with ``lr=1e39``
turns a gradient of 0.1 into a float32 weight of ``inf``. So ``fit`` checks the
*parameters* after every step, and a step that made one non-finite raises before any
History row, callback or checkpoint sees it:

1. ``save()`` before the step (only with ``undo=True``) copies every parameter and every
   array of the optimizer's state into buffers kept from step to step (no allocation
   after the first step);
2. ``finite()`` after the step checks the parameters (``isfinite(p).all()`` per array:
   vectorised, exact, and faster here than a fused float64 sum of squares);
3. ``restore()`` (only with ``undo=True``) copies the saved values back into the same
   arrays (so anything holding ``p.data`` or a state array sees the old values) and the
   saved scalars (Adam's step count) back into the optimizer's state.

The check costs a few percent of an MLP step, the copies of ``undo=True`` several times
more: ``docs/benchmarks.md`` (``benchmarks/step_guard.py``). That is why undoing is
``fit(..., undo_nonfinite_step=True)`` and not the default.
"""

from __future__ import annotations

import numpy as np

from .. import backend


def all_finite(arrays: list) -> bool:
    """True when no array holds a NaN or an Inf."""
    return all(bool(backend.get_array_module(a).isfinite(a).all()) for a in arrays)


class StepGuard:
    """Save the parameters and optimizer state before a step; check and undo it after."""

    def __init__(self, params: list, optimizer, *, undo: bool = True):
        self.params, self.optimizer, self.undo = params, optimizer, undo
        self._buffers: dict = {}  # (id(owner), name) -> a buffer reused from step to step
        self._saved_params: list = []
        self._saved_state: dict = {}

    def _copy(self, key, array):
        buffer = self._buffers.get(key)
        if (buffer is None or type(buffer) is not type(array) or buffer.shape != array.shape
                or buffer.dtype != array.dtype
                or (type(array) is not np.ndarray and backend.device_of(buffer) != backend.device_of(array))):
            with backend.device_context(backend.device_of(array)):
                buffer = backend.get_array_module(array).empty_like(array)
            self._buffers[key] = buffer
        buffer[...] = array
        return buffer

    def save(self) -> None:
        """Copy every parameter and every optimizer state entry (arrays into buffers)."""
        if not self.undo:
            return
        self._saved_params = [(p, p.data, self._copy((id(p), None), p.data)) for p in self.params]
        saved_state = {}
        for p, entries in self.optimizer.state.items():
            saved_state[p] = {name: ((value, self._copy((id(p), name), value)) if backend.is_array(value)
                                     else (value, None)) for name, value in entries.items()}
        self._saved_state = saved_state

    def finite(self) -> bool:
        """True when every parameter holds only finite values."""
        return all_finite([p.data for p in self.params])

    def restore(self) -> bool:
        """Put back what :meth:`save` copied: the values into the arrays that held them
        (the same objects), the scalars into the state, and no state for a parameter
        that had none. Returns whether it did (False with ``undo=False``)."""
        if not self.undo:
            return False
        for p, array, buffer in self._saved_params:
            if p.data is not array:  # rebound during the step (the optimizers never do)
                p.data = array
            array[...] = buffer
            p._mark_dirty()
        state = self.optimizer.state
        for p in [p for p in state if p not in self._saved_state]:
            del state[p]  # created by the failed step
        for p, entries in self._saved_state.items():
            for value, buffer in entries.values():
                if buffer is not None:
                    value[...] = buffer  # the array object the state held before the step
            state[p] = {name: value for name, (value, _) in entries.items()}
        return True
