"""``Module`` and ``Parameter``: the containers every layer is built from.

A :class:`Module` owns three ordered registries, filled by plain attribute assignment
(explicit, as in PyTorch):

* ``self.weight = Parameter(...)`` registers a trainable tensor;
* ``self.encoder = Linear(...)`` registers a sub-module;
* ``self.register_buffer("running_mean", tensor)`` registers state that is saved with the
  model but not trained (BatchNorm's running statistics).

Everything else (``parameters()``, ``state_dict()``, ``to(device)``, ``train()``) walks
those registries in registration order, so parameter order, state-dict keys and the
``repr`` match the torch module with the same structure.
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from .. import backend
from ..tensor import Tensor, _check_dtype, as_raw_array, float32, float64, no_grad


class Parameter(Tensor):
    """A tensor that a :class:`Module` registers as trainable (``requires_grad=True``).

    ``Parameter(data)`` wraps ``data`` *without copying* when it is a Tensor or a
    floating-point array (like ``torch.nn.Parameter``); other data (lists, integer
    arrays) is copied into a float32 tensor. Parameters are ordinary tensors:
    ``isinstance(p, Tensor)`` holds and every op accepts them.
    """

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:
            array, device = np.empty((0,), dtype=float32), "cpu"
        elif isinstance(data, Tensor):
            array, device = data.data, data.device
        elif backend.is_array(data) and data.dtype.kind == "f":
            array, device = data, backend.device_of(data)
        else:
            converted = Tensor(data, dtype=float32)
            array, device = converted.data, converted.device
        if array.dtype.kind != "f":
            raise TypeError(f"Parameter: data must be floating point, got dtype {array.dtype}")
        self._init(array, device, requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


# torch's repr name: IncompatibleKeys(missing_keys=..., unexpected_keys=...)
_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])  # type: ignore[name-match]


def _as_array(value, key: str):
    """A raw array from a state-dict value (NumPy/CuPy array, Tensor or nested list)."""
    if isinstance(value, Tensor):
        return value.data
    return as_raw_array(value, f"load_state_dict: value for '{key}'")


class Module:
    """Base class of every layer and model (``torch.nn.Module``'s API, minus hooks).

    Subclasses call ``super().__init__()`` first, assign parameters and sub-modules as
    attributes, and define ``forward``; calling the module calls ``forward``.
    """

    training: bool

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these registries to exist.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())

    # ------------------------------------------------------------------ registration
    def _registries(self, name: str):
        try:
            return self.__dict__["_parameters"], self.__dict__["_buffers"], self.__dict__["_modules"]
        except KeyError:
            raise AttributeError(f"cannot assign '{name}' before Module.__init__() is called "
                                 f"(call super().__init__() first in {type(self).__name__}.__init__)") from None

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, Parameter):
            params, buffers, modules = self._registries(name)
            buffers.pop(name, None)
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params, buffers, modules = self._registries(name)
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter '{name}' "
                                "(a Parameter or None expected)")
            self._parameters[name] = None
        elif "_modules" in self.__dict__ and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module '{name}' "
                                "(a Module or None expected)")
            self._modules[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer '{name}' (a Tensor or None expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: look in the registries (parameters first:
        # a layer's forward reads its weight and bias this way at every call).
        d = self.__dict__
        parameters = d.get("_parameters")
        if parameters is not None and name in parameters:
            return parameters[name]
        for registry in ("_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def _check_name(self, name: str, what: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"{what} name must be a non-empty string without '.', got {name!r}")
        if hasattr(self, name) and name not in self._parameters and name not in self._buffers \
                and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists on {type(self).__name__}")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or a placeholder ``None``, e.g. a disabled bias) as ``name``."""
        self._registries(name)
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot register {type(param).__name__} as parameter '{name}' "
                            "(a Parameter or None expected)")
        self._buffers.pop(name, None)
        self._modules.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register non-trainable state (saved in ``state_dict`` unless ``persistent=False``)."""
        self._registries(name)
        self._check_name(name, "buffer")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot register {type(tensor).__name__} as buffer '{name}' (a Tensor or None expected)")
        if isinstance(tensor, Parameter):
            raise TypeError(f"buffer '{name}' must not be a Parameter; use register_parameter")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register ``module`` as the child ``name`` (what attribute assignment does)."""
        self._registries(str(name))
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._check_name(str(name), "module")
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        self._modules[str(name)] = module

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "", memo: set | None = None):
        """``(name, module)`` for this module and every descendant, each module once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry: str, prefix: str, recurse: bool):
        seen = set()  # a tensor shared by two layers (tied weights) is listed once, as torch
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """``(dotted name, Parameter)`` in registration order (the optimizer's order)."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True):
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def apply(self, fn) -> "Module":
        """Call ``fn(module)`` on every sub-module (children first) and on ``self``."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active, BatchNorm uses batch statistics); returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode) expects a bool, got {type(mode).__name__}")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (``False``) or unfreeze every parameter."""
        for param in self.parameters():
            param.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient.

        ``set_to_none=True`` (torch's default) drops the gradients; ``False`` zeroes them
        in place, keeping the arrays (a gradient that is a view into an optimizer's flat
        buffer stays one). Row-sparse gradients are always dropped.
        """
        for param in self.parameters():
            if param.grad is None:
                continue
            if set_to_none or not isinstance(param.grad, Tensor):
                param.grad = None
            else:
                param.grad.data[...] = 0

    # ------------------------------------------------------------------ device / dtype
    def _cast_all(self, convert) -> None:
        """Replace the data of every parameter, gradient and buffer in place (same objects)."""
        for module in self.modules():
            for registry in (module._parameters, module._buffers):
                for tensor in registry.values():
                    if tensor is None:
                        continue
                    device, array = convert(tensor.data, tensor.device)
                    # the device first: the checked .data setter refuses an array on another device
                    tensor._device, tensor.data = device, array
                    grad = tensor.grad if isinstance(tensor.grad, Tensor) else None
                    if grad is not None:
                        grad._device, grad.data = device, convert(grad.data, grad.device)[1]
                    elif tensor.grad is not None:  # a SparseRowGrad cannot follow: drop it
                        tensor.grad = None

    def to(self, device=None, dtype=None) -> "Module":
        """Move (and/or cast floating-point) parameters and buffers in place; returns self.

        The Parameter objects stay the same (their ``.data`` is replaced), so an
        optimizer built before ``.to()`` still updates the right tensors. ``dtype``
        applies to floating-point tensors only (integer buffers such as
        ``num_batches_tracked`` keep their type), as in torch.
        """
        if isinstance(device, (np.dtype, type)) and dtype is None:
            device, dtype = None, device
        target = backend.parse_device(device) if device is not None else None
        dtype = _check_dtype(np.dtype(dtype), "Module.to") if dtype is not None else None
        if dtype is not None and dtype.kind != "f":
            raise TypeError(f"Module.to only casts to floating-point dtypes, got {dtype}")

        def convert(array, current):
            new_device = target or current
            if dtype is not None and array.dtype.kind == "f" and array.dtype != dtype:
                array = array.astype(dtype)
            return new_device, backend.to_device(array, new_device)

        with no_grad():
            self._cast_all(convert)
        return self

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self, index: int = 0) -> "Module":
        return self.to(f"cuda:{index}")

    def double(self) -> "Module":
        """Cast floating-point parameters and buffers to float64 (for gradient checks)."""
        return self.to(dtype=float64)

    def float(self) -> "Module":
        return self.to(dtype=float32)

    # ------------------------------------------------------------------ state
    def _state_items(self, prefix: str = ""):
        """``(key, tensor)`` for every saved tensor: each module's parameters, then its
        buffers, then its children's (torch's key order). Tied tensors appear under
        every name."""
        for name, param in self._parameters.items():
            if param is not None:
                yield prefix + name, param
        for name, buffer in self._buffers.items():
            if buffer is not None and name not in self._non_persistent:
                yield prefix + name, buffer
        for name, child in self._modules.items():
            if child is not None:
                yield from child._state_items(prefix + name + ".")

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter and persistent buffer as a NumPy array copy, by dotted name.

        Values are plain NumPy arrays on the CPU (copies, so training on afterwards does
        not change a saved state), ready for ``np.savez(path, **sd)``.
        """
        return OrderedDict((key, backend.to_numpy(tensor.data).copy()) for key, tensor in self._state_items())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy values from ``state_dict`` into the existing parameters and buffers.

        Every key is checked before anything changes: with ``strict=True`` a missing or
        unexpected key raises ``RuntimeError`` listing them, and a value whose shape
        differs raises naming the key and both shapes (also with ``strict=False``).
        Values are cast to each tensor's dtype and copied onto its device, into the same
        arrays; a float value that the cast makes infinite (a float64 beyond float32's
        range) raises ``ValueError``. Returns ``(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict expects a mapping of names to arrays, got {type(state_dict).__name__}")
        targets = OrderedDict(self._state_items())
        missing = [key for key in targets if key not in state_dict]
        unexpected = [key for key in state_dict.keys() if key not in targets]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(repr(k) for k in missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(repr(k) for k in unexpected))
            raise RuntimeError(f"error loading state_dict into {type(self).__name__}: " + "; ".join(parts))
        arrays = {}
        for key, tensor in targets.items():
            if key not in state_dict:
                continue
            array = _as_array(state_dict[key], key)
            if tuple(array.shape) != tuple(tensor.data.shape):
                raise RuntimeError(f"error loading state_dict into {type(self).__name__}: size mismatch for "
                                   f"'{key}': the checkpoint has shape {tuple(array.shape)}, the model has "
                                   f"shape {tuple(tensor.data.shape)}")
            if not getattr(tensor.data.flags, "writeable", True):  # found now, not after other keys were copied
                raise ValueError(f"load_state_dict: '{key}' holds a read-only array; give it a writeable one "
                                 "(e.g. p.data = p.data.copy()) before loading into it")
            if tensor.data.dtype.kind in "iub" and array.dtype.kind == "f":
                raise TypeError(f"load_state_dict: '{key}' holds {tensor.data.dtype} values; the checkpoint "
                                f"has floating-point dtype {array.dtype}")
            target = tensor.data.dtype
            if array.dtype.kind == "f" and target.kind == "f" and array.dtype.itemsize > target.itemsize:
                # float64 -> float32 turns values beyond float32's range into inf with only a
                # NumPy warning: cast here, before anything changes, and refuse what it loses.
                xp = backend.get_array_module(array)
                with np.errstate(over="ignore"):
                    cast = array.astype(target)
                lost = int(xp.count_nonzero(~xp.isfinite(cast))) - int(xp.count_nonzero(~xp.isfinite(array)))
                if lost:
                    raise ValueError(f"load_state_dict: '{key}' holds {lost} value(s) beyond the range of {target} "
                                     f"(the checkpoint has {array.dtype}); they would become inf")
                array = cast
            arrays[key] = array
        # Every check passed: now copy (tied tensors are simply written twice).
        for key, array in arrays.items():
            tensor = targets[key]
            source = backend.to_device(array, tensor.device)
            tensor.data[...] = source.astype(tensor.data.dtype, copy=False)
        return _IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ repr
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in ``repr`` (layers override it)."""
        return ""

    def __repr__(self) -> str:
        lines = [line for line in self.extra_repr().split("\n") if line]
        for name, child in self._modules.items():
            child_text = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {child_text}")
        if not self._modules and len(lines) <= 1:  # a leaf: Linear(in_features=2, ...)
            return f"{type(self).__name__}({''.join(lines)})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))


class Sequential(Module):
    """Modules applied one after another: ``Sequential(a, b, c)(x) == c(b(a(x)))``.

    Children are named ``"0"``, ``"1"``, ... (or by an ``OrderedDict``'s keys), so
    state-dict keys read ``"0.weight"`` like torch's.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            for index, module in enumerate(modules):
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential: argument {index} is a {type(module).__name__}, not a Module")
                self.add_module(str(index), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        modules = list(self._modules.values())
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"Sequential indices must be integers or slices, got {type(index).__name__}")
        if not -len(modules) <= index < len(modules):
            raise IndexError(f"index {index} is out of range for a Sequential of {len(modules)} modules")
        return modules[index]

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self._modules)), module)
        return self

    def forward(self, input):
        for module in self._modules.values():
            input = module(input)
        return input


class ModuleList(Module):
    """A list of sub-modules, registered as ``"0"``, ``"1"``, ... (no forward of its own)."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(modules[index])
        return modules[index]
