"""The ``Optimizer`` base class: parameter groups, per-parameter state, checkpoints.

An optimizer owns a list of *parameter groups*. Each group is a dict holding its
``"params"`` (a list of Tensors) and its own copy of every hyperparameter (``"lr"``,
``"momentum"``, ...), so different layers can learn at different rates and a learning-rate
schedule can change ``group["lr"]`` between steps. Per-parameter buffers (momentum,
moving averages, step counters) live in ``optimizer.state[param]``, a dict whose keys
follow the papers and PyTorch (``step``, ``momentum_buffer``, ``exp_avg``, ...), one
array per entry, shaped like the parameter.

``step()`` first checks everything (each group's hyperparameters, every gradient against
its parameter, every parameter's array is writeable, every state array's shape), then
hands each group to the subclass's ``_update_group``, which calls the optimizer's
functional update (``sgd(...)``, ``adam(...)``): the dispatcher between the readable
reference (``_single_tensor_*``, NumPy, one parameter at a time, the formula line by line)
and the fused update (``_fused_*``: one multi-tensor Numba kernel call per device, dtype
and step count for the whole group, see ``tinygrad_sgd.kernels``). ``step()`` ->
``_update_group`` -> ``adam`` -> ``_fused_adam`` -> the kernel: four Python hops.

Which path runs is decided once, by :func:`resolve_fused`, from the ``fused=`` argument:

* ``fused=None`` (default): fused when Numba imports and every parameter is a float32 or
  float64 tensor (on the CPU or a CUDA GPU); otherwise the reference. A parameter the
  kernels cannot take at a step (a sparse ``SparseRowGrad`` gradient, ``p.data`` rebound
  to a non-contiguous array) is updated by the reference for that step.
* ``fused=True``: fused, or a ``ValueError`` naming what the kernels cannot take (a
  float16 parameter, no Numba, ``SparseAdam``); a sparse gradient at ``step()`` raises.
* ``fused=False``: the reference.

The two paths compute the same numbers (float32: within 1e-5 relative over hundreds of
steps, ``tests/test_optim_fused.py``), keep the same ``state`` entries and the same
``state_dict()`` format, so a checkpoint of either loads into the other.

**What an update touches.** ``param.data`` is updated *in place* and never rebound, so
``w = lin.weight.data`` keeps following the parameter, and two parameters that share
memory (``Tensor.from_array`` twice on one array) are both applied to it, in list order,
on either path. Gradients are read-only inputs: an update never writes into an array a
``.grad`` points to, so a gradient kept from an earlier step keeps its values. After
updating a parameter, ``step()`` bumps its version counter (``p._mark_dirty()``), so a
graph recorded before the step refuses to run backward through the changed values.

**One scale per step.** ``step(grad_scale=s)`` multiplies every gradient by ``s`` inside
the update (the fused pass or the reference formula), without touching ``.grad``:
``s = (1/k) * clip_coef / world_size`` for k accumulated micro-batches, the global-norm
clipping coefficient and gradients summed over ``world_size`` workers. ``tg.train.fit``
passes it; ``tg.nn.utils.grad_scale_for_step`` computes it in one fused pass.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .. import backend
from ..sparse import SparseRowGrad
from ..tensor import Tensor, enable_grad

FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_numba_ok = None


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


def check_fused(fused):
    """The ``fused=`` argument as given: ``None``, ``True`` or ``False``."""
    if fused is not None and not isinstance(fused, (bool, np.bool_)):
        raise ValueError(f"invalid fused {fused!r}: must be None (automatic), True or False")
    return None if fused is None else bool(fused)


def resolve_fused(fused, params: list, owner: str, *, has_kernel: bool = True) -> bool:
    """Choose the update implementation: True for the fused kernels, False for the reference.

    The single place this choice is made. ``fused=None`` takes the kernels when they can
    update every parameter in ``params``; ``fused=True`` insists and raises a
    ``ValueError`` naming the first obstacle; ``fused=False`` keeps the reference.
    """
    fused = check_fused(fused)
    if fused is False:
        return False
    reason = None
    if not has_kernel:
        reason = f"{owner} has no fused update (it updates only the rows of a sparse gradient)"
    elif not numba_available():
        reason = "the fused kernels need Numba, which does not import here"
    else:
        for i, p in enumerate(params):
            why = unsupported_reason(p)
            if why is not None:
                reason = f"params[{i}] {why}"
                break
    if reason is not None and fused:
        raise ValueError(f"{owner}(fused=True): {reason}; use fused=None (automatic) or fused=False")
    return reason is None


class _Where:
    """"parameter i of param_groups[g] (shape ...)", formatted only when an error needs it."""

    __slots__ = ("i", "gi", "data")

    def __init__(self, i: int, gi: int, data):
        self.i, self.gi, self.data = i, gi, data

    def __str__(self) -> str:
        return f"parameter {self.i} of param_groups[{self.gi}] (shape {tuple(self.data.shape)})"

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731 (f-strings use __format__)


def kernel_obstacle(array, grad) -> str | None:
    """Why the fused kernels cannot update the parameter array ``array`` with ``grad``
    (None when they can)."""
    if isinstance(grad, SparseRowGrad):
        return "has a sparse gradient (SparseRowGrad)"
    if array.dtype not in FUSED_DTYPES:
        return f"has dtype {array.dtype}"
    if not array.flags.c_contiguous:
        return "has a non-contiguous array"
    return None


def kernel_batches(params: list, grads: list, *, key=None, strict: bool, owner: str):
    """Split one group's update into calls the fused kernels take: ``(batches, rest)``.

    ``batches`` lists index lists, one per (device, dtype, ``key(i)``), in first-seen
    order (``key`` separates parameters whose per-call scalars differ: Adam's step count,
    a new SGD momentum buffer); ``rest`` lists the indices the kernels cannot take (a
    sparse gradient, a non-contiguous ``p.data``, a dtype the kernels lack), which the
    caller hands to the reference. With ``strict=True`` (``fused=True``) those raise
    instead. A gradient the kernels could read only after a conversion (another dtype, a
    non-contiguous view) is replaced in ``grads`` by a contiguous copy: never written, so
    the user's array is left as it was.
    """
    batches: dict = {}
    rest = []
    for i, (p, g) in enumerate(zip(params, grads)):
        why = kernel_obstacle(p, g)
        if why is not None:
            if strict:
                raise RuntimeError(f"{owner}(fused=True): parameter {i} of the group {why}, which the fused "
                                   "kernels cannot update; use fused=None to update it with the reference, "
                                   "or fused=False")
            rest.append(i)
            continue
        if g.dtype != p.dtype or not g.flags.c_contiguous:
            with backend.device_context(backend.device_of(p)):
                grads[i] = backend.get_array_module(p).ascontiguousarray(g, dtype=p.dtype)
        k = (type(p), backend.device_of(p), p.dtype, None if key is None else key(i))
        batch = batches.get(k)
        if batch is None:
            batches[k] = [i]
        else:
            batch.append(i)
    return list(batches.values()), rest


def pick(items: list, indices: list) -> list:
    """``[items[i] for i in indices]`` (the lists of one kernel call)."""
    return [items[i] for i in indices]


# ----------------------------------------------------------------------------- validation


def check_number(name: str, value, *, low: float | None = 0.0, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real in the given range.

    The error names the hyperparameter and the allowed range, e.g.
    ``ValueError: invalid lr -0.1: must be >= 0``.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"invalid {name} {value!r}: must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"invalid {name} {value!r}: must be finite")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"invalid {name} {value!r}: must be {'>' if low_open else '>='} {low:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"invalid {name} {value!r}: must be {'<' if high_open else '<='} {high:g}")
    return value


def check_betas(betas) -> tuple:
    """Two coefficients, each in [0, 1)."""
    if not isinstance(betas, (tuple, list, np.ndarray)) or len(betas) != 2:
        raise ValueError(f"invalid betas {betas!r}: must be a pair (beta1, beta2)")
    return tuple(check_number(f"beta{i + 1}", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas))


def _plain(value):
    """A hyperparameter as a plain Python value (what a checkpoint can store)."""
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim else value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, list):
        value = tuple(_plain(v) for v in value)
    return value


def _group_like(saved: dict) -> dict:
    """Saved group hyperparameters, with values that went through ``.npz`` made plain again
    (0-d arrays -> numbers, 1-d arrays -> tuples such as ``betas``)."""
    return {key: _plain(value) for key, value in saved.items() if key != "params"}


# ----------------------------------------------------------------------------- base class


class Optimizer:
    """Base class of every optimizer (PyTorch's ``torch.optim.Optimizer`` interface).

    ``params`` is an iterable of Tensors, or of dicts that each define a parameter group
    (``{"params": [...], "lr": 0.01}``); hyperparameters a group leaves out come from
    ``defaults``. Every Tensor may appear once in the whole optimizer.

    ``fused`` chooses the update implementation (see the module docstring and
    :func:`resolve_fused`); ``optimizer.fused`` tells which one was taken.
    """

    #: False for an optimizer without a fused kernel (SparseAdam).
    _has_fused_kernel = True
    #: The names of the per-parameter state entries this optimizer keeps.
    _state_names: frozenset = frozenset()

    def __init__(self, params, defaults: dict, *, fused=None):
        self._fused_arg = check_fused(fused)
        self.fused = False  # decided below, once every group is known
        self.defaults = dict(defaults)
        self._validate_group(self.defaults)  # bad defaults fail even if every group overrides them
        self.state: dict[Tensor, dict] = {}
        self.param_groups: list[dict] = []
        if isinstance(params, (Tensor, dict)):
            raise ValueError("params must be an iterable of Tensors or of dicts (parameter groups), "
                             f"got a single {type(params).__name__}; wrap it in a list")
        try:
            params = list(params)
        except TypeError:
            raise ValueError(f"params must be an iterable of Tensors or dicts, got {type(params).__name__}") from None
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)
        everything = [p for group in self.param_groups for p in group["params"]]
        self.fused = resolve_fused(self._fused_arg, everything, type(self).__name__,
                                   has_kernel=self._has_fused_kernel)

    # ------------------------------------------------------------------ groups
    def _validate_group(self, group: dict) -> None:
        """Check (and normalise in place) one group's hyperparameters; subclasses extend."""

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (e.g. a layer unfrozen later).

        Raises ``ValueError`` naming the problem when an entry is not a Tensor, is not a
        leaf, appears twice, or already belongs to another group, or when a
        hyperparameter is out of range. Nothing changes when it raises.
        """
        if not isinstance(param_group, dict):
            raise ValueError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a parameter group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise ValueError("a group's params must be an ordered sequence (a list), not a set: "
                             "the order defines the indices used by state_dict()")
        else:
            params = list(params)
        seen: set[int] = set()
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise ValueError(f"optimizer can only optimize Tensors, but params[{i}] is a {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"params[{i}] is not a leaf Tensor (it was computed from other tensors); "
                                 "an optimizer updates leaves only")
            if p.dtype.kind != "f":
                raise ValueError(f"params[{i}] has dtype {p.dtype}; an optimizer updates floating-point tensors")
            if id(p) in seen:
                raise ValueError(f"params[{i}] appears more than once in the same parameter group")
            seen.add(id(p))
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if seen & existing:
            raise ValueError("some parameters appear in more than one parameter group")
        group = {key: value for key, value in param_group.items() if key != "params"}
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._validate_group(group)
        if self.fused and self._fused_arg:  # a group added later must suit the kernels too
            for i, p in enumerate(params):
                why = unsupported_reason(p)
                if why is not None:
                    raise ValueError(f"{type(self).__name__}(fused=True): params[{i}] of the new group {why}")
        group["params"] = params
        self.param_groups.append(group)

    # ------------------------------------------------------------------ gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient before the next ``backward()``.

        ``set_to_none=True`` (the default, like torch) drops ``.grad``; the next backward
        then stores a fresh array and parameters that got no gradient are skipped by
        ``step()``. ``set_to_none=False`` writes zeros into the existing ``.grad`` array in
        place (torch's ``grad.zero_()``), so backward then accumulates into it; a gradient
        array kept by the user from before changes with it. A sparse gradient
        (``SparseRowGrad``) has no "zero array" to keep, so it is always dropped; a
        gradient recorded with ``create_graph=True`` is replaced by fresh zeros instead of
        being written into (it is part of a graph).
        """
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if set_to_none or isinstance(grad, SparseRowGrad):
                    p.grad = None
                elif grad.grad_fn is not None:
                    p.grad = Tensor._make(backend.get_array_module(grad.data).zeros_like(grad.data), grad.device)
                else:
                    grad.data[...] = 0
                    grad._mark_dirty()

    def _gather(self, gi: int, group: dict):
        """The group's parameters that have a gradient, and those gradients (raw arrays or
        ``SparseRowGrad``), each checked against its parameter; the parameter's array must
        be writeable and its state arrays must still have its shape. Changes nothing
        (except that state arrays follow a parameter moved to another dtype or device)."""
        params, grads = [], []
        dense_checked = False
        for i, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            data = p.data
            where = _Where(i, gi, data)  # formatted only for an error message
            if isinstance(grad, Tensor):  # the usual case, checked with raw attributes (this runs every step)
                if not dense_checked:
                    self._check_dense(group)
                    dense_checked = True
                if grad.data.shape != data.shape:
                    raise ValueError(f"gradient of shape {grad.shape} for {where}")
                if grad._device != p._device:
                    raise ValueError(f"gradient on {grad.device} for {where} on {p.device}")
                grads.append(grad.data)
            elif isinstance(grad, SparseRowGrad):
                self._check_sparse(group)
                if grad.shape != p.shape:
                    raise ValueError(f"sparse gradient of shape {grad.shape} for {where}")
                if grad.device != p.device:
                    raise ValueError(f"sparse gradient on {grad.device} for {where} on {p.device}")
                grads.append(grad)
            else:
                raise ValueError(f"param.grad must be a Tensor or SparseRowGrad, got {type(grad).__name__}")
            # fused=True: what the kernels cannot take raises here, before any change
            if self._fused_arg and self.fused:
                why = kernel_obstacle(data, grads[-1])
                if why is not None:
                    raise RuntimeError(f"{type(self).__name__}(fused=True): {where} {why}, which the fused kernels "
                                       "cannot update; use fused=None to update it with the reference, or fused=False")
            if not getattr(data.flags, "writeable", True):
                raise ValueError(f"{where} has a read-only .data array; the optimizer updates parameters in "
                                 "place: give it a writeable array (e.g. p.data = p.data.copy())")
            state = self.state.get(p)
            if state:
                self._check_state(p, state, where)
            params.append(p)
        return params, grads

    @staticmethod
    def _check_state(p: Tensor, state: dict, where) -> None:
        """State arrays must have the parameter's shape (``p.data`` rebound to another shape
        is refused before any change); they follow a change of dtype or device."""
        data = p.data
        kind, shape, dtype = type(data), data.shape, data.dtype
        for name, value in state.items():
            if type(value) is kind and value.shape == shape and value.dtype == dtype and kind is np.ndarray:
                continue  # the usual case, in three attribute checks (this runs every step)
            if not backend.is_array(value) or value.ndim == 0:
                continue
            if value.shape != data.shape:
                raise ValueError(f"state {name!r} of {where} has shape {tuple(value.shape)}: the parameter was "
                                 "rebound to another shape after the optimizer saw it; build a new optimizer")
            if value.dtype != data.dtype or backend.device_of(value) != p.device:
                with backend.device_context(p.device):  # module.to(float64 / "cuda") after the optimizer
                    state[name] = backend.to_device(value, p.device).astype(data.dtype)

    def _check_sparse(self, group: dict) -> None:
        """Raise unless this optimizer (with this group's settings) takes ``SparseRowGrad``."""
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (SparseRowGrad); "
                           "use SGD, Adagrad or SparseAdam for Embedding(sparse=True)")

    def _check_dense(self, group: dict) -> None:
        """Raise unless this optimizer takes dense gradients (all but SparseAdam do)."""

    def _check_hyperparameters(self, gi: int, group: dict) -> None:
        """The group's hyperparameters as they are *now*: a learning rate set by hand or by
        a scheduler (``LambdaLR`` returning NaN or a negative factor) is checked at every
        ``step()``, once per group, before anything changes."""
        try:
            self._validate_group(group)
        except (ValueError, TypeError) as error:
            raise ValueError(f"param_groups[{gi}] of {type(self).__name__}: {error} (checked at step(); "
                             "was it set by hand or by a learning-rate scheduler?)") from None

    # ------------------------------------------------------------------ stepping
    def step(self, closure=None, *, grad_scale: float = 1.0):
        """Update every parameter that has a gradient; return ``closure()``'s loss if given.

        ``closure`` re-evaluates the model and returns the loss (with gradients
        recorded), as in torch; most training loops call ``backward()`` themselves and
        pass nothing. ``grad_scale`` multiplies every gradient inside the update, without
        changing ``.grad`` (see the module docstring: averaging k micro-batches, the
        clipping coefficient, 1/world size). Everything is checked before any parameter
        changes; each updated parameter's version counter is bumped.
        """
        if isinstance(grad_scale, bool) or not isinstance(grad_scale, Real) or not math.isfinite(grad_scale) \
                or grad_scale < 0:
            raise ValueError(f"invalid grad_scale {grad_scale!r}: must be a finite number >= 0")
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        work = []
        for gi, group in enumerate(self.param_groups):
            self._check_hyperparameters(gi, group)
            work.append(self._gather(gi, group))
        for group, (params, grads) in zip(self.param_groups, work):
            if params:
                self._update_group(group, params, grads, float(grad_scale))
                for p in params:
                    p._mark_dirty()
        return loss

    def _update_group(self, group: dict, params: list, grads: list, grad_scale: float) -> None:  # pragma: no cover
        """Create missing state, then call the functional update (``adam(...)``) for one
        group's parameters that have a gradient, with ``fused=self.fused``."""
        raise NotImplementedError

    def _fused_mode(self):
        """The functional updates' ``fused`` argument: False (reference), True (kernels,
        raising on what they cannot take) or None (kernels, reference for the rest)."""
        return (True if self._fused_arg else None) if self.fused else False

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The optimizer's state as plain data (like torch's, with copies, not references).

        ``{"optimizer": class name, "state": {index: {name: ndarray or number}},
        "param_groups": [{hyperparameters..., "params": [indices]}]}``. Parameters are
        numbered in group order; arrays are NumPy copies (from the GPU too) and everything
        else is a Python number, bool, string or tuple of numbers, so a checkpoint can store
        it in an ``.npz`` with ``allow_pickle=False``. The class name lets
        :meth:`load_state_dict` refuse the state of another optimizer.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {key: _plain(value) for key, value in group.items() if key != "params"}
            start = len(index)
            for p in group["params"]:
                index[id(p)] = len(index)
            packed["params"] = list(range(start, len(index)))
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {
                        name: (backend.to_numpy(value).copy() if backend.is_array(value) else _plain(value))
                        for name, value in self.state[p].items()}
        return {"optimizer": type(self).__name__, "state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict, *, converting_from: str | None = None) -> None:
        """Restore a ``state_dict()`` so training continues bit for bit.

        The saved hyperparameters replace the current ones (the parameters stay). Every
        check (optimizer class, group count, parameters per group, state array shapes,
        hyperparameter ranges, values that fit the parameter's dtype) runs before anything
        changes. Arrays are copied onto each parameter's device and cast to its dtype; a
        value that the cast makes non-finite (a float64 beyond float32's range) is refused.
        Numbers that went through an ``.npz`` file (0-d arrays) come back as Python numbers.

        **Another optimizer's state is refused**: ``AdamW().load_state_dict(adam.state_dict())``
        would silently reinterpret ``weight_decay`` (Adam's L2 term becomes AdamW's decoupled
        decay). To convert on purpose, name the class the state comes from::

            adamw.load_state_dict(adam.state_dict(), converting_from="Adam")

        Then the saved state arrays are kept when this optimizer uses entries of the same
        names (Adam <-> AdamW: ``exp_avg``, ``exp_avg_sq``, ``step``), a saved entry this
        optimizer does not know is refused, and hyperparameters this optimizer lacks in
        the saved groups keep their current values; the saved ones (``lr``,
        ``weight_decay``, ...) are taken *as numbers*, with this optimizer's meaning.
        A state dict without a class name (written before the name was recorded) loads.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_class = state_dict.get("optimizer")
        saved_class = None if saved_class is None else str(_plain(saved_class))
        mine = type(self).__name__
        if converting_from is not None:
            if saved_class is not None and saved_class != converting_from:
                raise ValueError(f"converting_from={converting_from!r}, but the state dict was saved by {saved_class}")
            saved_class = mine
        if saved_class is not None and saved_class != mine:
            raise ValueError(f"the state dict was saved by {saved_class}, this optimizer is {mine}; the "
                             f"hyperparameters and state would change meaning. Convert explicitly with "
                             f"load_state_dict(state_dict, converting_from={saved_class!r})")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        id_map: dict[int, Tensor] = {}
        new_groups = []
        for i, (saved, current) in enumerate(zip(saved_groups, self.param_groups)):
            saved_params = list(saved["params"])
            if len(saved_params) != len(current["params"]):
                raise ValueError(f"parameter group {i} has {len(current['params'])} parameters, "
                                 f"the loaded state dict has {len(saved_params)}")
            for index, p in zip(saved_params, current["params"]):
                id_map[int(index)] = p
            group = _group_like(saved)
            if converting_from is not None:  # keep what this optimizer knows, current values for the rest
                group = {**{k: v for k, v in current.items() if k != "params"},
                         **{k: v for k, v in group.items() if k in self.defaults}}
            missing = sorted(set(self.defaults) - set(group))
            if missing:
                raise ValueError(f"parameter group {i} of the loaded state dict lacks {missing} "
                                 f"(saved from a different optimizer than {type(self).__name__}?)")
            self._validate_group(group)
            group["params"] = current["params"]
            new_groups.append(group)
        new_state: dict[Tensor, dict] = {}
        for index, entries in state_dict["state"].items():
            index = int(index)
            if index not in id_map:
                raise ValueError(f"state for parameter index {index}, which no parameter group lists")
            p = id_map[index]
            restored = {}
            for name, value in entries.items():
                if converting_from is not None and name not in self._state_names:
                    raise ValueError(f"state {name!r} of parameter {index} has no meaning for {mine} (it keeps "
                                     f"{sorted(self._state_names)}); cannot convert from {converting_from}")
                if backend.is_array(value) and value.ndim > 0:
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(f"state {name!r} of parameter {index} has shape {tuple(value.shape)}, "
                                         f"the parameter has shape {tuple(p.shape)}")
                    with backend.device_context(p.device):
                        array = backend.to_device(value, p.device)
                        xp = backend.get_array_module(array)
                        with np.errstate(over="ignore"):  # refused below with a clear message instead
                            cast = array.astype(p.dtype if array.dtype.kind == "f" else array.dtype, copy=True)
                        if cast.dtype.kind == "f" and cast.dtype.itemsize < array.dtype.itemsize:
                            lost = (int(xp.count_nonzero(~xp.isfinite(cast)))
                                    - int(xp.count_nonzero(~xp.isfinite(array))))
                            if lost:
                                raise ValueError(f"state {name!r} of parameter {index} holds {lost} value(s) beyond "
                                                 f"the range of {cast.dtype} (saved as {array.dtype}); they would "
                                                 "become inf")
                        restored[name] = cast
                else:
                    value = _plain(value)
                    if name == "step":
                        value = int(value)
                    restored[name] = value
            new_state[p] = restored
        self.param_groups[:] = new_groups
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def full_like_param(p: Tensor, value: float):
    """A buffer with the parameter's shape, dtype and device holding ``value`` (the state
    of a parameter the reference updates)."""
    with backend.device_context(p.device):
        return backend.get_array_module(p.data).full_like(p.data, value)


def empty_like(array):
    """An uninitialised array like ``array`` on its device (a state buffer the kernel fills)."""
    with backend.device_context(backend.device_of(array)):
        return backend.get_array_module(array).empty_like(array, order="C")
