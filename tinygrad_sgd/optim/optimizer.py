"""The ``Optimizer`` base class: parameter groups, per-parameter state, checkpoints.

An optimizer owns a list of *parameter groups*. Each group is a dict holding its
``"params"`` (a list of Tensors) and its own copy of every hyperparameter (``"lr"``,
``"momentum"``, ...), so different layers can learn at different rates and a learning-rate
schedule can change ``group["lr"]`` between steps. Per-parameter buffers (momentum,
moving averages, step counters) live in ``optimizer.state[param]``, a dict whose keys
follow the papers and PyTorch (``step``, ``momentum_buffer``, ``exp_avg``, ...).

``step()`` gathers the parameters that have a gradient (checking every gradient before
anything changes) and hands each group to the subclass: ``_update_group`` creates missing
state and calls the optimizer's functional update (``sgd(...)``, ``adam(...)``) with
``fused=False``, the readable reference (``_single_tensor_*``), one parameter at a time;
``_fused_update`` does the same over the flat buffers of ``flat.py`` with ``fused=True``:
one Numba kernel call (one CUDA launch on the GPU) per parameter group, device and dtype,
chosen by the array type in ``tinygrad_sgd.kernels``. Which of the two an optimizer uses is
decided once, by :func:`resolve_fused`, from its ``fused=`` argument:

* ``fused=None`` (default): fused when Numba imports and every parameter is a float32 or
  float64 tensor (on the CPU or a CUDA GPU); otherwise the reference. A parameter whose
  gradient arrives sparse (``SparseRowGrad``) is updated by the reference for that step.
* ``fused=True``: fused, or a ``ValueError`` naming what the kernels cannot take (a
  float16 parameter, no Numba, ``SparseAdam``); a sparse gradient at ``step()`` raises.
* ``fused=False``: the reference.

The two paths compute the same numbers (float32: within 1e-6 relative over hundreds of
steps; ``tests/test_optim_fused.py``), keep the same ``state`` entries and the same
``state_dict()`` format, so a checkpoint of either loads into the other.

Updates write into ``param.data`` *in place*: a parameter may be a view into one flat
buffer (what the fused kernels update in one call), and rebinding ``param.data`` would cut
that view loose; a fused optimizer notices a rebinding and re-packs (``flat.py``).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .. import backend
from ..sparse import SparseRowGrad
from ..tensor import Tensor, enable_grad
from .flat import FlatGroup, numba_available, unsupported_reason


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

    def __init__(self, params, defaults: dict, *, fused=None):
        self._fused_arg = check_fused(fused)
        self.fused = False  # decided below, once every group is known
        self._flat_groups: list = []  # a FlatGroup per parameter group (None: reference update)
        self._grads_persist = False   # the last zero_grad() kept gradients (set_to_none=False)
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
        if self.fused:
            self._flat_groups = [FlatGroup(group["params"]) for group in self.param_groups]

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
        flat = None
        if self.fused:  # a group added after construction: packed too, when the kernels take it
            reasons = [(i, unsupported_reason(p)) for i, p in enumerate(params)]
            reasons = [(i, why) for i, why in reasons if why is not None]
            if reasons and self._fused_arg:
                i, why = reasons[0]
                raise ValueError(f"{type(self).__name__}(fused=True): params[{i}] of the new group {why}")
            flat = None if reasons else FlatGroup(params)  # fused=None: that group takes the reference
        group["params"] = params
        self.param_groups.append(group)
        self._flat_groups.append(flat)

    # ------------------------------------------------------------------ gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient before the next ``backward()``.

        ``set_to_none=True`` (the default, like torch) drops ``.grad``; the next backward
        then stores a fresh array and parameters that got no gradient are skipped by
        ``step()``. ``set_to_none=False`` writes zeros into the existing array in place
        (keeping views into a flat gradient buffer alive). A sparse gradient
        (``SparseRowGrad``) has no "zero array" to keep, so it is always dropped.

        **Fused optimizers.** The semantics are the same (a parameter whose ``.grad`` is
        None is skipped, exactly as by the reference). What differs is the cost:

        * ``set_to_none=True``: on the CPU, an op that computes a parameter's whole
          gradient in one array op (``Linear``'s ``dW`` and ``db``) writes it straight
          into the parameter's segment of the flat gradient buffer, unless something
          outside still holds that memory (a ``.grad`` kept from an earlier step keeps
          its values: ``Function.grad_buffer``). Any other gradient arrives as a fresh
          array and ``step()`` copies it into the buffer (one pass over it).
        * ``set_to_none=False``: after the next ``step()`` each ``.grad`` holds a view into
          the flat gradient buffer (the same Tensor object, same values); from then on
          this call zeroes the whole buffer at once, backward accumulates straight into
          it, and ``step()`` copies nothing. A gradient Tensor kept from an earlier
          step then changes with the buffer, as a kept gradient always does with
          ``set_to_none=False``.
        """
        if self.fused:
            self._sync_flat()
            self._grads_persist = not set_to_none
            if not set_to_none:
                for flat in self._flat_groups:
                    for pack in flat.packs if flat is not None else ():
                        pack.zero_grads()  # the views; other arrays are zeroed below
        for gi, group in enumerate(self.param_groups):
            flat = self._flat_groups[gi] if self.fused else None
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if not set_to_none and flat is not None and isinstance(grad, Tensor):
                    pack, i = flat.where[id(p)]
                    if grad.data is pack.grad_views[i] and grad.grad_fn is None:
                        continue  # zeroed with its whole buffer above
                if set_to_none or isinstance(grad, SparseRowGrad):
                    p.grad = None
                elif grad.grad_fn is not None:  # a create_graph gradient: do not write into the graph
                    p.grad = Tensor._make(backend.get_array_module(grad.data).zeros_like(grad.data), grad.device)
                else:
                    grad.data[...] = 0

    def _gather(self, group: dict, flat: FlatGroup | None = None):
        """The group's parameters that have a gradient, and those gradients (raw arrays or
        ``SparseRowGrad``), each checked against its parameter. A gradient that is the
        view a fused optimizer installed fits its parameter by construction."""
        params, grads = [], []
        where = flat.where if flat is not None else {}
        dense_checked = False
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if isinstance(grad, Tensor):  # the usual case, checked with raw attributes (this runs every step)
                if where:
                    pack, i = where[id(p)]
                    if grad.data is pack.grad_views[i]:
                        params.append(p)
                        grads.append(grad.data)
                        continue
                if not dense_checked:
                    self._check_dense(group)
                    dense_checked = True
                if grad.data.shape != p.data.shape:
                    raise ValueError(f"gradient of shape {grad.shape} for a parameter of shape {p.shape}")
                if grad._device != p._device:
                    raise ValueError(f"gradient on {grad.device} for a parameter on {p.device}")
                grads.append(grad.data)
            elif isinstance(grad, SparseRowGrad):
                self._check_sparse(group)
                if grad.shape != p.shape:
                    raise ValueError(f"sparse gradient of shape {grad.shape} for a parameter of shape {p.shape}")
                if grad.device != p.device:
                    raise ValueError(f"sparse gradient on {grad.device} for a parameter on {p.device}")
                grads.append(grad)
            else:
                raise ValueError(f"param.grad must be a Tensor or SparseRowGrad, got {type(grad).__name__}")
            params.append(p)
        return params, grads

    def _check_sparse(self, group: dict) -> None:
        """Raise unless this optimizer (with this group's settings) takes ``SparseRowGrad``."""
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (SparseRowGrad); "
                           "use SGD, Adagrad or SparseAdam for Embedding(sparse=True)")

    def _check_dense(self, group: dict) -> None:
        """Raise unless this optimizer takes dense gradients (all but SparseAdam do)."""

    # ------------------------------------------------------------------ stepping
    def step(self, closure=None):
        """Update every parameter that has a gradient; return ``closure()``'s loss if given.

        ``closure`` re-evaluates the model and returns the loss (with gradients
        recorded), as in torch; most training loops call ``backward()`` themselves and
        pass nothing. Every gradient is checked before any parameter changes.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        if not self.fused:
            gathered = [self._gather(group) for group in self.param_groups]
            for group, (params, grads) in zip(self.param_groups, gathered):
                if params:
                    self._update_group(group, params, grads)
            return loss
        self._sync_flat()
        plans = [self._plan(gi) for gi in range(len(self.param_groups))]  # every check before any change
        for group, (dense, reference_params, reference_grads) in zip(self.param_groups, plans):
            for pack, indices, copies in dense:
                self._load_grads(pack, copies)
                pack.adopt_state(self.state)
                self._fused_update(group, pack, indices)
            if reference_params:  # a group the kernels cannot take, or sparse gradients (fused=None)
                self._update_group(group, reference_params, reference_grads)
        return loss

    def _update_group(self, group: dict, params: list, grads: list) -> None:  # pragma: no cover - abstract
        """Create missing state, then call the functional reference update for one group."""
        raise NotImplementedError

    def _fused_update(self, group: dict, pack, indices: list) -> None:  # pragma: no cover - abstract
        """Create missing state, then call the functional fused update over the flat
        buffers of ``pack`` for the parameters ``indices`` (those with a gradient, already
        in ``pack.grad_flat``): one call per run of ``pack.runs``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ flat buffers
    def _sync_flat(self) -> None:
        """Catch rebound parameters (``p.data`` no longer the installed view) and re-pack
        their group; a rebinding to a dtype the kernels cannot take raises with
        ``fused=True`` and hands the group to the reference with ``fused=None``."""
        for gi, flat in enumerate(self._flat_groups):
            if flat is None:
                continue
            stale = flat.stale()
            if not stale:
                continue
            flat.check_rebound(stale, gi)
            params = self.param_groups[gi]["params"]
            reasons = [(i, unsupported_reason(p)) for i, p in enumerate(params)]
            reasons = [(i, why) for i, why in reasons if why is not None]
            if reasons:
                i, why = reasons[0]
                if self._fused_arg:
                    raise RuntimeError(f"{type(self).__name__}(fused=True): parameter {i} of parameter group {gi} "
                                       f"was rebound to an array the fused kernels cannot update: it {why}")
                for p in params:  # the reference keeps each state array like its parameter
                    for name, value in self.state.get(p, {}).items():
                        if backend.is_array(value) and value.ndim > 0:
                            with backend.device_context(p.device):
                                self.state[p][name] = backend.to_device(value, p.device).astype(p.dtype)
                self._flat_groups[gi] = None
                continue
            flat.repack(self.state)

    def _plan(self, gi: int):
        """One group's work: ``(dense, reference_params, reference_grads)`` where ``dense``
        lists ``(pack, indices, copies)``: the parameters of each pack that have a dense
        gradient, and the gradients among them that are not yet the pack's views. The
        rest goes to the reference update (all of a group without packs; a sparse
        gradient with ``fused=None``). Checks every gradient and changes nothing."""
        group, flat = self.param_groups[gi], self._flat_groups[gi]
        if flat is None:
            params, grads = self._gather(group)
            return [], params, grads
        if all(pack.grads_in_place() for pack in flat.packs):  # the steady state: nothing to look at
            return [(pack, pack.all_indices, []) for pack in flat.packs], [], []
        params, grads = self._gather(group, flat)
        dense: dict[int, tuple] = {}
        sparse_params, sparse_grads = [], []
        for p, grad in zip(params, grads):
            if isinstance(grad, SparseRowGrad):
                if self._fused_arg:
                    i = flat.position[id(p)]
                    raise RuntimeError(
                        f"{type(self).__name__}(fused=True): parameter {i} of parameter group {gi} has a sparse "
                        "gradient (SparseRowGrad), which the fused kernels cannot update; use fused=None to "
                        "update sparse gradients with the reference, or fused=False")
                sparse_params.append(p)
                sparse_grads.append(grad)
                continue
            pack, i = flat.where[id(p)]
            entry = dense.get(id(pack))
            if entry is None:
                entry = dense[id(pack)] = (pack, [], [])
            entry[1].append(i)
            if grad is not pack.grad_views[i]:
                entry[2].append((i, grad))
        return list(dense.values()), sparse_params, sparse_grads

    def _load_grads(self, pack, copies: list) -> None:
        """Copy gradients that are not views into the pack's flat gradient buffer; after
        ``zero_grad(set_to_none=False)`` the ``.grad`` Tensor then takes the view."""
        with backend.device_context(pack.device):
            for i, grad in copies:
                view = pack.grad_views[i]
                view[...] = grad
                if self._grads_persist:
                    tensor = pack.params[i].grad
                    if (isinstance(tensor, Tensor) and tensor.data is grad and tensor.grad_fn is None
                            and grad.dtype == view.dtype):
                        tensor.data = view

    def _new_state(self, p: Tensor, name: str, fill: float = 0.0):
        """A new state buffer for ``p`` holding ``fill``: its segment of the flat state
        buffer ``name`` when ``p`` is packed, else a fresh array like ``p``."""
        for flat in self._flat_groups:
            where = flat.where.get(id(p)) if flat is not None else None
            if where is not None:
                pack, i = where
                return pack.new_state(name, i, fill)
        return full_like_param(p, fill)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The optimizer's state as plain data (like torch's, with copies, not references).

        ``{"state": {index: {name: ndarray or number}}, "param_groups": [{hyperparameters...,
        "params": [indices]}]}``. Parameters are numbered in group order; arrays are NumPy
        copies (from the GPU too) and everything else is a Python number, bool, string or
        tuple of numbers, so a checkpoint can store it in an ``.npz`` with
        ``allow_pickle=False``.
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
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()`` so training continues bit for bit.

        The saved hyperparameters replace the current ones (the parameters stay). Every
        check (group count, parameters per group, state array shapes, hyperparameter
        ranges) runs before anything changes. Arrays are copied onto each parameter's
        device and cast to its dtype; numbers that went through an ``.npz`` file (0-d
        arrays) come back as Python numbers.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
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
                if backend.is_array(value) and value.ndim > 0:
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(f"state {name!r} of parameter {index} has shape {tuple(value.shape)}, "
                                         f"the parameter has shape {tuple(p.shape)}")
                    with backend.device_context(p.device):
                        array = backend.to_device(value, p.device)
                        restored[name] = array.astype(p.dtype if array.dtype.kind == "f" else array.dtype, copy=True)
                else:
                    value = _plain(value)
                    if name == "step":
                        value = int(value)
                    restored[name] = value
            new_state[p] = restored
        self.param_groups[:] = new_groups
        self.state = new_state
        for flat in self._flat_groups:  # fused: the loaded arrays move into the flat state buffers
            for pack in flat.packs if flat is not None else ():
                pack.adopt_state(self.state)

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
