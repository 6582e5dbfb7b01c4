"""Flat buffers: every parameter, gradient and state buffer of a group in one array each.

Why. An optimizer update is a handful of multiply-adds per number, so its cost is moving
memory plus a fixed price per call (Python, argument checks, waking threads or launching a
GPU kernel). Updating each parameter tensor on its own pays that price once per tensor:
with 10M parameters in 10,000 tensors, Adam took 36 ms per step where one fused call over
one flat buffer of the same 10M numbers took 5.9 ms (DESIGN.md, 2-core machine). So a
fused optimizer keeps, per parameter group and per (device, dtype)::

    param_flat   [ p_0 | p_1 | ... | p_k ]     p_i.data  is a view into it
    grad_flat    [ g_0 | g_1 | ... | g_k ]     p_i.grad  may be a view into it
    state_flat   [ m_0 | m_1 | ... | m_k ]     optimizer.state[p_i]["exp_avg"] is a view, ...

and one kernel call (one CUDA launch on the GPU) updates every parameter of the pack.
Views keep the rest of the library unchanged: a layer reads ``weight.data`` as before,
``state_dict()`` still returns one array per parameter, and ``load_state_dict`` copies
into the views.

What can go stale, and how it is caught:

* **Rebinding** ``p.data`` to a new array (``Module.to()``, ``p.data = ...``) would leave
  the optimizer updating its old copy. Each pack remembers the view it installed and
  :meth:`FlatGroup.stale` compares identities (``p.data is view``) at every ``step()`` and
  ``zero_grad()``; a rebound parameter makes the group *re-pack* (:meth:`FlatGroup.repack`:
  copy the new values into fresh buffers, moving and casting the state along when the
  device or dtype changed). A new shape raises: the state no longer fits.
* **Gradients** are whatever backward left in ``p.grad``. A gradient that already is the
  pack's view costs nothing; any other array is copied into the flat gradient buffer at
  ``step()``. Backward computes gradients straight into the views where it can (each
  parameter's ``_grad_buffer``, see ``FlatPack._offer_grad_buffers``); see
  :meth:`Optimizer.zero_grad` for when gradients become views.
* **State** entries replaced from outside (``load_state_dict``, the reference update of a
  sparse gradient, user code) are copied back into the flat state buffer
  (:meth:`FlatPack.adopt_state`) before the kernel runs.

When the parameters of a pack already lie back to back in one array, in order (a single
contiguous parameter always does), that memory becomes the flat buffer as it is: nothing
is copied and ``p.data`` is left alone.

What it buys (``opt.step()`` through this API, float32, 2-core development machine):
10M parameters in 10,000 tensors, Adam 351 ms -> 26 ms per step (77 ms when each step
first copies fresh gradients into the flat buffer); in 6 tensors 95 ms -> 11 ms (21 ms).
SGD with momentum on the 270k-parameter MLP is memory-bound and gains least: 0.65-0.7x
of the reference's time with gradient views, 0.85-1.0x when the gradients are copied.
"""

from __future__ import annotations

import operator
from itertools import repeat

import numpy as np

from .. import backend
from ..tensor import Tensor

FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_numba_ok: bool | None = None


def numba_available() -> bool:
    """True when Numba imports (checked once): the fused kernels need it."""
    global _numba_ok
    if _numba_ok is None:
        try:
            import numba  # noqa: F401
            _numba_ok = True
        except Exception:  # ImportError, or a broken llvmlite raising at import
            _numba_ok = False
    return _numba_ok


def unsupported_reason(p: Tensor) -> str | None:
    """Why the fused kernels cannot update ``p`` (None when they can)."""
    if p.dtype not in FUSED_DTYPES:
        return f"has dtype {p.dtype}; the fused kernels update float32 and float64 only"
    return None


class KernelContext:
    """Where a fused kernel called inside runs: a CuPy array's own GPU (the CPU kernels
    pick their thread count themselves, see ``kernels/cpu.py`` ``PARALLEL_MIN_SIZE``).
    (A plain class: a generator-based context manager costs microseconds per call.)"""

    __slots__ = ("array", "device")

    def __init__(self, array):
        self.array = array
        self.device = None

    def __enter__(self):
        if not isinstance(self.array, np.ndarray):
            self.device = backend.device_context(backend.device_of(self.array))
            self.device.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device is not None:
            return self.device.__exit__(*exc)
        return False


def as_flat(array, name: str):
    """A 1-D view of a C-contiguous array (a kernel argument); never a silent copy."""
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous for a fused update (got strides {array.strides}); "
                         "pass flat buffers or contiguous arrays")
    return array.reshape(-1)


# ----------------------------------------------------------------------------- adopting memory


def _owner(array):
    """The array that owns ``array``'s memory (the end of its ``.base`` chain)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _address(array) -> int:
    return array.__array_interface__["data"][0]


def _existing_span(arrays: list):
    """A 1-D array over the memory of ``arrays`` when they already lie back to back, in
    order, in one writeable NumPy array; else None (the caller copies)."""
    if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable and a.size
               for a in arrays):
        return None
    if len(arrays) == 1:
        return arrays[0].reshape(-1)
    owner = _owner(arrays[0])
    if not owner.flags.c_contiguous or any(_owner(a) is not owner for a in arrays):
        return None
    start = address = _address(arrays[0])
    for a in arrays:
        if _address(a) != address:
            return None
        address += a.nbytes
    dtype = arrays[0].dtype
    return np.ndarray(((address - start) // dtype.itemsize,), dtype, buffer=owner, offset=start - _address(owner))


# ----------------------------------------------------------------------------- one pack


class FlatPack:
    """The parameters of one group that share a device and a dtype, packed back to back.

    ``offsets[i]:offsets[i+1]`` is parameter ``i``'s segment in every flat buffer.
    Construction installs ``p.data`` views (copying the values in) unless the parameters
    already lie back to back in one array.
    """

    def __init__(self, params: list, device: str):
        self.params = params
        self.device = device
        self.xp = backend.get_array_module(device)
        self.dtype = params[0].data.dtype
        self.shapes = [tuple(p.data.shape) for p in params]
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.size = self.offsets[-1]
        self.index = {id(p): i for i, p in enumerate(params)}
        with backend.device_context(device):
            span = _existing_span([p.data for p in params])
            if span is not None:
                self.param_flat = span
                self.param_views = [p.data for p in params]
            else:
                self.param_flat = self.xp.empty(self.size, dtype=self.dtype)
                self.param_views = self._views(self.param_flat)
                for p, view in zip(params, self.param_views):
                    view[...] = p.data
                    p.data = view
            self.grad_flat = self.xp.zeros(self.size, dtype=self.dtype)
        self.grad_views = self._views(self.grad_flat)
        self.state_flat: dict[str, object] = {}
        self.state_views: dict[str, list] = {}
        self.all_indices = list(range(len(params)))
        # What adopt_state last verified (see there): the entry dicts, their sizes, and
        # every (dict, name, view) it found in place.
        self._known_dicts: list = []
        self._known_sizes: list = []
        self._known_views: tuple = ((), (), ())

    def _views(self, flat) -> list:
        return [flat[a:b].reshape(shape) for a, b, shape in zip(self.offsets, self.offsets[1:], self.shapes)]

    # ------------------------------------------------------------------ slices for one kernel call
    def segment(self, flat, start: int, stop: int):
        """Parameters ``start..stop-1`` of a flat buffer: one contiguous slice."""
        return flat[self.offsets[start]:self.offsets[stop]]

    def runs(self, indices: list, key=None):
        """Maximal runs ``(start, stop, key)`` of consecutive parameter indices from the
        sorted ``indices`` that share ``key(i)``: one kernel call each. Usually one run
        covers the whole pack; parameters without a gradient, or whose step counts
        differ (they skipped steps), split it."""
        keys = list(map(key, indices)) if key is not None else [None] * len(indices)
        if indices[-1] - indices[0] + 1 == len(indices) and keys.count(keys[0]) == len(keys):
            return [(indices[0], indices[-1] + 1, keys[0])]  # the usual case, without a loop
        out = []
        for i, k in zip(indices, keys):
            if out and out[-1][1] == i and out[-1][2] == k:
                out[-1][1] = i + 1
            else:
                out.append([i, i + 1, k])
        return [tuple(run) for run in out]

    # ------------------------------------------------------------------ state
    def state_buffer(self, name: str):
        """The flat state buffer ``name``, created (zero-filled) on first use."""
        flat = self.state_flat.get(name)
        if flat is None:
            with backend.device_context(self.device):
                flat = self.state_flat[name] = self.xp.zeros(self.size, dtype=self.dtype)
            self.state_views[name] = self._views(flat)
        return flat

    def state_view(self, name: str, i: int):
        self.state_buffer(name)
        return self.state_views[name][i]

    def new_state(self, name: str, i: int, fill: float = 0.0):
        """Parameter ``i``'s segment of state ``name``, filled with its initial value."""
        view = self.state_view(name, i)
        view.fill(fill)
        return view

    def adopt_state(self, state: dict) -> None:
        """Make every array in ``state[p]`` a view into this pack's flat state buffers,
        copying (and moving/casting) arrays that are not (yet) those views.

        Runs before every fused update, so it first checks, without a Python loop per
        parameter, that nothing changed since the last call (the same entry dicts, of the
        same sizes, holding the same view objects): with thousands of parameter tensors a
        per-parameter loop would cost more than the update itself.
        """
        dicts = list(map(state.get, self.params, repeat(_NO_STATE)))
        known_dicts, names, views = self._known_views
        try:
            if (len(dicts) == len(self._known_dicts) and all(map(operator.is_, dicts, self._known_dicts))
                    and list(map(len, dicts)) == self._known_sizes
                    and all(map(operator.is_, map(operator.getitem, known_dicts, names), views))):
                return
        except KeyError:  # an entry was replaced by another name: look at everything
            pass
        found_dicts, found_names, found_views = [], [], []
        for i, entries in enumerate(dicts):
            for name, value in list(entries.items()):
                if not backend.is_array(value) or value.ndim == 0:
                    continue
                current = self.state_views.get(name)
                if current is None or value is not current[i]:
                    view = self.state_view(name, i)
                    with backend.device_context(self.device):
                        view[...] = backend.to_device(value, self.device).astype(self.dtype, copy=False)
                    entries[name] = value = view
                found_dicts.append(entries)
                found_names.append(name)
                found_views.append(value)
        self._known_dicts = dicts
        self._known_sizes = list(map(len, dicts))
        self._known_views = (found_dicts, found_names, found_views)

    # ------------------------------------------------------------------ gradients
    def zero_grads(self) -> None:
        self.grad_flat.fill(0)

    def grads_in_place(self) -> bool:
        """True when every parameter's ``.grad`` holds this pack's view (the steady state
        after ``zero_grad(set_to_none=False)``): nothing to check or copy. One pass in C."""
        try:
            return all(map(operator.is_, map(_DATA, map(_GRAD, self.params)), self.grad_views))
        except AttributeError:  # a missing (None) or sparse gradient: the careful path
            return False


# ----------------------------------------------------------------------------- one group


class FlatGroup:
    """The packs of one parameter group (one per device and dtype, in parameter order)."""

    def __init__(self, params: list):
        self.params = params
        self.position = {id(p): k for k, p in enumerate(params)}
        self._build()

    def _build(self) -> None:
        by_key: dict[tuple, list] = {}
        for p in self.params:
            by_key.setdefault((p.device, p.data.dtype), []).append(p)
        self.packs = [FlatPack(ps, device) for (device, _), ps in by_key.items()]
        self.where = {id(p): (pack, i) for pack in self.packs for i, p in enumerate(pack.params)}

    def stale(self) -> list:
        """Indices (in the group) of parameters whose ``.data`` is no longer the installed view."""
        out = []
        for pack in self.packs:
            if not all(map(operator.is_, map(_DATA, pack.params), pack.param_views)):
                out += [self.position[id(p)] for p, view in zip(pack.params, pack.param_views) if p.data is not view]
        return sorted(out)

    def check_rebound(self, stale: list, group_index: int) -> None:
        """Raise (changing nothing) when a rebound parameter changed shape."""
        for i in stale:
            p = self.params[i]
            pack, j = self.where[id(p)]
            if tuple(p.data.shape) != pack.shapes[j]:
                raise RuntimeError(
                    f"parameter {i} of parameter group {group_index} was rebound to an array of shape "
                    f"{tuple(p.data.shape)}, but the optimizer packed it with shape {pack.shapes[j]} (and its "
                    "state has that shape); create a new optimizer for parameters that change shape")

    def repack(self, state: dict) -> None:
        """Build fresh packs from the parameters' current ``.data`` (their values are copied
        into new buffers unless they already lie back to back, as at construction), then
        move the state (views into the old buffers) into the new ones, moving and casting
        it when the device or dtype changed."""
        self._build()
        for pack in self.packs:
            pack.adopt_state(state)


_NO_STATE: dict = {}  # what state.get gives for a parameter without state (never written to)
_GRAD = operator.attrgetter("grad")
_DATA = operator.attrgetter("data")
