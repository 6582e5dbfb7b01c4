"""Learning-rate schedules (``tg.optim.lr_scheduler``), with PyTorch's names, arguments and numbers.

A scheduler owns no learning rate of its own: it writes ``group["lr"]`` of its optimizer's
parameter groups each time ``scheduler.step()`` is called (after ``optimizer.step()``; once
per epoch or once per batch, as the schedule intends). The ``t``-th call sets the rate for
the ``t``-th step that follows; constructing the scheduler performs call 0, so right after
construction ``group["lr"]`` already holds the schedule's first value.

**Chainable versus closed form.** Several PyTorch schedules are written *recursively*:
``StepLR`` multiplies the *current* ``group["lr"]`` by ``gamma`` at each boundary, and
``CosineAnnealingLR`` moves the current rate by the ratio of consecutive cosine values.
The recursion lets two schedules act on the same optimizer one after the other
(``SequentialLR``) or together. In exact arithmetic it equals the closed form written in
each docstring; in floating point it drifts by a few ulps, and this module reproduces
PyTorch's recursion operation for operation, so its sequences equal torch's (tests check
1e-12 relative in float64 over hundreds of steps, and the closed forms).

**Checkpoints.** ``state_dict()`` holds plain data (numbers, strings, lists, dicts;
never the optimizer, never a lambda). ``load_state_dict()`` checks the dict before changing
anything and then also writes the saved learning rates (and, for the cyclic schedules,
momenta) back into the optimizer, so a resumed run continues exactly whether the optimizer
was loaded before or after the scheduler was constructed — PyTorch's schedulers overwrite
the optimizer's rates at construction, a common source of wrong resumed runs, and
``SequentialLR`` is where this bites hardest.
"""

from __future__ import annotations

import copy
import math
from typing import Any
from bisect import bisect_right
from numbers import Real

from .optimizer import Optimizer

__all__ = [
    "LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR", "SequentialLR", "ReduceLROnPlateau",
]


def _check_optimizer(optimizer) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"a scheduler needs a tinygrad_sgd Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_real(name: str, value, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    # (numbers.Real declares no comparisons for mypy; the value is an int, float or the like)
    if (low is not None and value < low) or (high is not None and value > high):  # type: ignore[operator]
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return value  # type: ignore[return-value]


def _per_group(name: str, optimizer: Optimizer, value) -> list:
    """One value per parameter group: a list of that length, or a scalar repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"{name} has {len(value)} values, the optimizer has "
                             f"{len(optimizer.param_groups)} parameter groups")
        return list(value)
    return [value] * len(optimizer.param_groups)


class LRScheduler:
    """Base class: ``step()`` advances ``last_epoch`` and writes ``get_lr()`` into the groups.

    Attributes (PyTorch's): ``base_lrs`` (each group's ``initial_lr``, recorded in the
    group when the first scheduler is attached), ``last_epoch`` (index of the last
    ``step()``; 0 right after construction), ``_last_lr`` (what ``get_last_lr()`` returns).

    ``last_epoch=-1`` starts a schedule; a larger value is PyTorch's way of resuming
    (groups must then hold ``initial_lr``), kept for compatibility. Prefer
    ``load_state_dict``, which restores everything.
    """

    _unsaved: tuple = ("optimizer",)
    _is_initial = False  # True only during the constructor's step 0 (chainable forms keep the lr)

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        self.optimizer = _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise ValueError(f"param_groups[{i}] has no 'initial_lr', which resuming with "
                                     f"last_epoch={last_epoch} needs; load the optimizer's state_dict first, "
                                     "or construct with last_epoch=-1 and use load_state_dict")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        """Step 0, performed by the constructor (and by SequentialLR for its first schedule)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            del self._is_initial  # back to the class default, and not part of the state

    def get_lr(self) -> list:  # pragma: no cover - abstract
        """The learning rates for step ``last_epoch`` (call ``get_last_lr()`` to read them)."""
        raise NotImplementedError

    def get_last_lr(self) -> list:
        """The learning rates this scheduler set last, one per parameter group."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance the schedule by one step (call it after ``optimizer.step()``).

        When computing the new rates raises (a ``LambdaLR`` function's own error, a
        ``OneCycleLR`` stepped past ``total_steps``), the counters are put back: the
        scheduler and the groups' rates stay as they were."""
        step_count, last_epoch = self._step_count, self.last_epoch
        try:
            self._step_count += 1
            self._update_lr()
        except BaseException:
            self._step_count, self.last_epoch = step_count, last_epoch
            raise

    def _update_lr(self, epoch: int | None = None) -> None:
        """Set the rates for the next step, or (``epoch`` given, SequentialLR's restart) for
        step ``epoch`` from the closed form where the schedule has one."""
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            closed_form = getattr(self, "_get_closed_form_lr", None)
            values = closed_form() if closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Every attribute except the optimizer (and callables), as a deep copy of plain data."""
        return copy.deepcopy({key: value for key, value in vars(self).items() if key not in self._unsaved})

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()`` and write its learning rates back into the optimizer.

        Checks first (same keys, one value per parameter group), changes nothing on error.
        """
        self._check_state_dict(state_dict)
        self._apply_state_dict(state_dict)
        self._restore_optimizer()

    def _check_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict):
            raise ValueError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        expected = set(self.state_dict())
        missing, unknown = expected - set(state_dict), set(state_dict) - expected
        if missing or unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state dict does not match this scheduler "
                             f"(missing keys {sorted(missing)}, unexpected keys {sorted(unknown)})")
        n_groups = len(self.optimizer.param_groups)
        for key in ("base_lrs", "_last_lr"):
            if key in state_dict and len(state_dict[key]) != n_groups:
                raise ValueError(f"state dict has {len(state_dict[key])} {key}, the optimizer has {n_groups} "
                                 "parameter groups")

    def _apply_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(copy.deepcopy(state_dict))

    def _restore_optimizer(self) -> None:
        """Write the schedule's current values into the optimizer's groups."""
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


# ----------------------------------------------------------------------------- simple decays


class LambdaLR(LRScheduler):
    r"""``lr_t = base_lr * lr_lambda(t)``: any schedule written as a multiplier function.

    ``lr_lambda`` is a function of the step index, or a list with one per parameter group.
    Like PyTorch, the functions are not saved in ``state_dict()``: construct the
    scheduler with the same functions before loading.

    Example (linear warm-up over 100 steps)::

        LambdaLR(opt, lambda t: min(1.0, (t + 1) / 100))
    """

    _unsaved = ("optimizer", "lr_lambdas")

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1):
        _check_optimizer(optimizer)
        lambdas = _per_group("lr_lambda", optimizer, lr_lambda)
        for fn in lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda must be callable, got {type(fn).__name__}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    r"""Step decay: multiply the rate by ``gamma`` every ``step_size`` steps.

    Closed form: :math:`\eta_t = \eta_0 \gamma^{\lfloor t / s \rfloor}`. Chainable (the current
    rate is multiplied at each boundary), as in PyTorch. The classic "divide by 10 at fixed
    epochs" schedule of the ImageNet ResNets (He et al. 2016).
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = _check_int("step_size", step_size, 1)
        self.gamma = _check_real("gamma", gamma, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    r"""Multiply the rate by ``gamma`` at each milestone step (twice if listed twice).

    Closed form: :math:`\eta_t = \eta_0 \gamma^{\#\{m \in \text{milestones}: m \le t\}}`.
    Chainable, as in PyTorch. ``milestones`` is stored sorted.
    """

    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        milestones = list(milestones)
        for m in milestones:
            _check_int("each milestone", m, 0)
        self.milestones = sorted(milestones)
        self.gamma = _check_real("gamma", gamma, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        hits = self.milestones.count(self.last_epoch)
        if hits == 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma ** hits for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    r"""Exponential decay :math:`\eta_t = \eta_0 \gamma^t` (chainable: multiply by ``gamma`` each step)."""

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = _check_real("gamma", gamma, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self._is_initial:  # resuming with last_epoch > -1 must not decay one extra time
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    r"""Linear warm-up (or decay) of the multiplier from ``start_factor`` to ``end_factor``.

    Closed form: :math:`\eta_t = \eta_0 \left(f_s + (f_e - f_s)\frac{\min(t, T)}{T}\right)`
    with :math:`T` = ``total_iters``; constant afterwards. This is the gradual warm-up of
    Goyal et al. (2017), *Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour*,
    which makes the linearly scaled learning rate of large batches usable (see
    ``tg.optim.scale_lr_linearly``). Chainable: each step multiplies the current rate by
    the ratio of consecutive factors, as in PyTorch.
    """

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        _check_real("start_factor", start_factor)
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor!r}")
        self.start_factor = start_factor
        self.end_factor = _check_real("end_factor", end_factor, low=0.0, high=1.0)
        self.total_iters = _check_int("total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return [group["lr"] for group in self.optimizer.param_groups]
        # ratio of factor(t) to factor(t - 1)
        ratio = 1.0 + (self.end_factor - self.start_factor) / (
            self.total_iters * self.start_factor + (self.last_epoch - 1) * (self.end_factor - self.start_factor))
        return [group["lr"] * ratio for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


# ----------------------------------------------------------------------------- cosine


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the initial rate to ``eta_min`` over ``T_max`` steps (no restarts).

    Paper: Loshchilov & Hutter (2017), *SGDR: Stochastic Gradient Descent with Warm
    Restarts* (ICLR). Closed form:

    .. math:: \eta_t = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})\left(1 + \cos\frac{\pi t}{T_{max}}\right)

    PyTorch computes it *recursively* from the current rate,

    .. math::
        \eta_{t} = \eta_{min} + (\eta_{t-1} - \eta_{min})
                   \frac{1 + \cos(\pi t/T_{max})}{1 + \cos(\pi (t-1)/T_{max})}

    with an additive step where the denominator would vanish (at :math:`t = T_{max} + 1`,
    :math:`3T_{max} + 1`, ...). This class does the same, so its numbers equal torch's; past
    ``T_max`` the rate climbs back along the cosine (a period of ``2 T_max``), as in torch.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max = _check_int("T_max", T_max, 1)
        self.eta_min = _check_real("eta_min", eta_min, low=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        groups = self.optimizer.param_groups
        if self._is_initial:
            return [group["lr"] for group in groups]
        t, T = self.last_epoch, self.T_max
        if (t - 1 - T) % (2 * T) == 0:  # cos(pi (t-1)/T) = -1: the ratio is 0/0, step additively
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for base_lr, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (group["lr"] - self.eta_min) + self.eta_min for group in groups]

    def _get_closed_form_lr(self) -> list:
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""SGDR: cosine annealing restarted every ``T_i`` steps, with ``T_i`` growing by ``T_mult``.

    Paper: Loshchilov & Hutter (2017), *SGDR: Stochastic Gradient Descent with Warm
    Restarts* (ICLR).

    .. math:: \eta_t = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})\left(1 + \cos\frac{\pi T_{cur}}{T_i}\right)

    where :math:`T_{cur}` counts steps since the last restart, :math:`T_0` is the first
    period and :math:`T_{i+1} = T_{mult} T_i`. Closed form in the state ``T_cur``/``T_i``
    (not recursive). ``step(epoch)`` accepts a fractional epoch, as in PyTorch
    (``scheduler.step(epoch + i / iters_per_epoch)`` anneals within an epoch).
    """

    def __init__(self, optimizer: Optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1):
        self.T_0 = _check_int("T_0", T_0, 1)
        self.T_i: float = T_0
        self.T_mult = _check_int("T_mult", T_mult, 1)
        self.eta_min = _check_real("eta_min", eta_min, low=0.0)
        self.T_cur: float = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base_lr in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """One step, or jump to (possibly fractional) ``epoch``."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:  # restart
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            _check_real("epoch", epoch, low=0.0)
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    # restart n happened at T_0 (T_mult^n - 1) / (T_mult - 1)
                    n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** n
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self._step_count += 1
        self.last_epoch = math.floor(epoch)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


# ----------------------------------------------------------------------------- cyclical


def _momentum_key(optimizer: Optimizer) -> str:
    """'betas' (Adam-like: cycle beta1) or 'momentum' (SGD, RMSprop); error otherwise."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(f"cycle_momentum=True needs an optimizer with momentum or betas; "
                         f"{type(optimizer).__name__} has neither (pass cycle_momentum=False)")
    return "betas" if "betas" in optimizer.defaults else "momentum"


def _momentum_range(optimizer: Optimizer, base_momentum, max_momentum) -> tuple[list, list]:
    """Per-group momentum bounds of a cycling schedule, each checked to lie in [0, 1]."""
    return ([_check_real("base_momentum", v, 0.0, 1.0) for v in _per_group("base_momentum", optimizer, base_momentum)],
            [_check_real("max_momentum", v, 0.0, 1.0) for v in _per_group("max_momentum", optimizer, max_momentum)])


def _begin_momentum_cycle(optimizer: Optimizer, use_beta1: bool, base_momentums: list, max_momentums: list) -> None:
    """Start every group at its maximum momentum and record both bounds in the group (as torch)."""
    for m_max, m_base, group in zip(max_momentums, base_momentums, optimizer.param_groups):
        _set_momentum(group, use_beta1, m_max)
        group["max_momentum"] = m_max
        group["base_momentum"] = m_base


def _set_momentum(group: dict, use_beta1: bool, momentum: float) -> None:
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


class CyclicLR(LRScheduler):
    r"""Cyclical learning rates: the rate bounces between ``base_lr`` and ``max_lr``.

    Paper: Smith (2017), *Cyclical Learning Rates for Training Neural Networks* (WACV).
    Step once per *batch*. With ``c = floor(1 + t / (up + down))`` the cycle number and
    ``x = 1 + t / (up + down) - c`` the position in the cycle::

        s   = x / r                     if x <= r      (r = up / (up + down): rising)
        s   = (x - 1) / (r - 1)         otherwise      (falling)
        lr  = base_lr + (max_lr - base_lr) * s * scale
        mom = max_momentum - (max_momentum - base_momentum) * s * scale   if cycle_momentum

    with ``scale`` = 1 (``"triangular"``), ``1 / 2^(c - 1)`` (``"triangular2"``, halve the
    amplitude each cycle), ``gamma^t`` (``"exp_range"``), or a custom ``scale_fn`` of the
    cycle number or of ``t`` (``scale_mode``). A closed form in ``t``, not chainable.

    **Momentum is cycled by default** (``cycle_momentum=True``, PyTorch's default), inversely
    to the rate, between ``base_momentum=0.8`` and ``max_momentum=0.9``: the optimizer's
    ``momentum`` (SGD, RMSprop) or ``beta1`` (Adam, AdamW) is overwritten at every step.
    This switches momentum *on* for an ``SGD(momentum=0)`` — pass ``cycle_momentum=False``
    to leave it alone. An optimizer with neither (Adagrad) needs ``cycle_momentum=False``.
    Like torch, ``base_lr`` replaces each group's ``lr`` (and ``base_lrs``) at construction.
    """

    _unsaved = ("optimizer", "_scale_fn_custom")

    def __init__(self, optimizer: Optimizer, base_lr, max_lr, step_size_up: int = 2000,
                 step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
                 scale_fn=None, scale_mode: str = "cycle", cycle_momentum: bool = True,
                 base_momentum=0.8, max_momentum=0.9, last_epoch: int = -1):
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        _check_real("gamma", gamma, low=0.0)
        base_lrs = [_check_real("base_lr", v, low=0.0) for v in _per_group("base_lr", optimizer, base_lr)]
        max_lrs = [_check_real("max_lr", v, low=0.0) for v in _per_group("max_lr", optimizer, max_lr)]
        up = float(_check_int("step_size_up", step_size_up, 1))
        down = float(_check_int("step_size_down", step_size_down, 1)) if step_size_down is not None else up
        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError(f"mode must be 'triangular', 'triangular2' or 'exp_range' (or give scale_fn), "
                             f"got {mode!r}")
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError("scale_fn must be callable")
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        use_beta1 = _momentum_key(optimizer) == "betas" if cycle_momentum else False
        if cycle_momentum:
            base_momentums, max_momentums = _momentum_range(optimizer, base_momentum, max_momentum)
        # all checks done: now change the optimizer
        self.optimizer = optimizer
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups):
                group["lr"] = lr
        self.max_lrs = max_lrs
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        # the built-in modes fix scale_mode (as in torch): triangular* per cycle, exp_range per iteration
        self.scale_mode = scale_mode if scale_fn is not None else ("iterations" if mode == "exp_range" else "cycle")
        self.cycle_momentum = bool(cycle_momentum)
        if cycle_momentum:
            self.use_beta1 = use_beta1
            self.base_momentums = base_momentums
            self.max_momentums = max_momentums
            if last_epoch == -1:
                _begin_momentum_cycle(optimizer, use_beta1, base_momentums, max_momentums)
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x: float) -> float:
        """The amplitude multiplier for cycle number (or step) ``x``."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma ** x  # exp_range

    def _position(self, t: int):
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        scale_factor = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else t)
        return scale_factor, scale

    def get_lr(self) -> list:
        scale_factor, scale = self._position(self.last_epoch)
        lrs = [base_lr + (max_lr - base_lr) * scale_factor * scale
               for base_lr, max_lr in zip(self.base_lrs, self.max_lrs)]
        if self.cycle_momentum:  # side effect, as in torch: momentum moves against the rate
            self._apply_momentum(scale_factor, scale)
        return lrs

    def _apply_momentum(self, scale_factor: float, scale: float) -> None:
        for group, m_base, m_max in zip(self.optimizer.param_groups, self.base_momentums, self.max_momentums):
            _set_momentum(group, self.use_beta1, m_max - (m_max - m_base) * scale_factor * scale)

    def _restore_optimizer(self) -> None:
        super()._restore_optimizer()
        if self.cycle_momentum:
            self._apply_momentum(*self._position(self.last_epoch))


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy: warm up to ``max_lr``, then anneal far below the start.

    Paper: Smith & Topin (2019), *Super-Convergence: Very Fast Training of Neural Networks
    Using Large Learning Rates* (SPIE). Step once per *batch*, ``total_steps`` times in all
    (or ``epochs * steps_per_epoch``); stepping past the end raises ``ValueError``.

    With ``initial_lr = max_lr / div_factor`` and ``min_lr = initial_lr / final_div_factor``,
    two phases (the fastai default): ``initial_lr -> max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then ``max_lr -> min_lr`` until step
    ``total_steps - 1``. ``three_phase=True`` follows the paper: up, back down to
    ``initial_lr`` symmetrically, then to ``min_lr``. Each phase interpolates with
    ``anneal(start, end, p) = end + (start - end)/2 (1 + cos(pi p))`` (``"cos"``) or
    linearly (``"linear"``), ``p`` the fraction of the phase done. Momentum (``momentum``
    or ``beta1``) is cycled inversely between ``max_momentum`` and ``base_momentum`` by
    default, as in torch. The group keys ``initial_lr``, ``max_lr``, ``min_lr``,
    ``max_momentum``, ``base_momentum`` are written into the optimizer's groups (so they
    are checkpointed with it). A closed form in ``t``, not chainable.
    """

    def __init__(self, optimizer: Optimizer, max_lr, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum=0.85, max_momentum=0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, last_epoch: int = -1):
        _check_optimizer(optimizer)
        _check_int("last_epoch", last_epoch, -1)
        if total_steps is not None:
            self.total_steps = _check_int("total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _check_int("epochs", epochs, 1) * _check_int("steps_per_epoch", steps_per_epoch, 1)
        else:
            raise ValueError("OneCycleLR needs total_steps, or both epochs and steps_per_epoch")
        if isinstance(pct_start, bool) or not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start must be a float in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        _check_real("div_factor", div_factor)
        _check_real("final_div_factor", final_div_factor)
        if div_factor <= 0 or final_div_factor <= 0:
            raise ValueError("div_factor and final_div_factor must be > 0")
        max_lrs = [_check_real("max_lr", v, low=0.0) for v in _per_group("max_lr", optimizer, max_lr)]
        use_beta1 = _momentum_key(optimizer) == "betas" if cycle_momentum else False
        if cycle_momentum:
            base_momentums, max_momentums = _momentum_range(optimizer, base_momentum, max_momentum)
        # all checks done: now change the optimizer
        self.optimizer = optimizer
        total = self.total_steps
        self._schedule_phases: list[dict[str, Any]]
        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct_start * total) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * total) - 2, "start_lr": "max_lr", "end_lr": "initial_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": total - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self._schedule_phases = [
                {"end_step": float(pct_start * total) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": total - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]
        self.anneal_strategy = anneal_strategy
        if last_epoch == -1:
            for group, m in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        if cycle_momentum:
            self.use_beta1 = use_beta1
            if last_epoch == -1:
                _begin_momentum_cycle(optimizer, use_beta1, base_momentums, max_momentums)
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _values(self, group: dict, step_num: int):
        """(lr, momentum or None) for ``group`` at step ``step_num``."""
        start_step = 0.0
        for i, phase in enumerate(self._schedule_phases):
            end_step = phase["end_step"]
            if step_num <= end_step or i == len(self._schedule_phases) - 1:
                pct = (step_num - start_step) / (end_step - start_step)
                lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                momentum = (self._anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                            if self.cycle_momentum else None)
                return lr, momentum
            start_step = phase["end_step"]
        raise AssertionError("unreachable: the last phase always matches")

    def get_lr(self) -> list:
        if self.last_epoch > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {self.last_epoch} times, but total_steps is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            lr, momentum = self._values(group, self.last_epoch)
            lrs.append(lr)
            if self.cycle_momentum:  # side effect, as in torch
                _set_momentum(group, self.use_beta1, momentum)
        return lrs

    def _restore_optimizer(self) -> None:
        super()._restore_optimizer()
        if self.cycle_momentum:
            for group in self.optimizer.param_groups:
                _set_momentum(group, self.use_beta1, self._values(group, self.last_epoch)[1])


# ----------------------------------------------------------------------------- composition


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]``, and so on.

    At a milestone the next schedule restarts from its own step 0 (its closed form at 0,
    as in PyTorch), e.g. a ``LinearLR`` warm-up followed by ``CosineAnnealingLR``::

        warm = LinearLR(opt, start_factor=0.1, total_iters=5)
        cos = CosineAnnealingLR(opt, T_max=95)
        sched = SequentialLR(opt, [warm, cos], milestones=[5])

    ``state_dict()`` holds the sub-schedules' states; ``load_state_dict`` restores them all
    and writes the active schedule's rate back into the optimizer, so a run resumed
    mid-schedule (before or after a milestone) continues exactly. Only ``last_epoch=-1`` is
    accepted: PyTorch's ``last_epoch`` resume of SequentialLR restores the wrong schedule
    (pytorch/pytorch#162591); use ``load_state_dict``.
    """

    _unsaved = ("optimizer", "_schedulers")

    def __init__(self, optimizer: Optimizer, schedulers: list, milestones: list, last_epoch: int = -1):
        _check_optimizer(optimizer)
        schedulers = list(schedulers)
        milestones = list(milestones)
        if not schedulers:
            raise ValueError("SequentialLR needs at least one scheduler")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or isinstance(s, ReduceLROnPlateau):
                raise ValueError(f"schedulers[{i}] must be an LRScheduler other than ReduceLROnPlateau "
                                 f"(which needs a metric), got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] ({type(s).__name__}) belongs to a different optimizer")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR needs one milestone fewer than schedulers: got {len(schedulers)} "
                             f"schedulers and {len(milestones)} milestones")
        for m in milestones:
            _check_int("each milestone", m, 1)
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        if last_epoch != -1:
            raise ValueError("SequentialLR resumes through load_state_dict, not last_epoch "
                             f"(got last_epoch={last_epoch})")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        # the sub-schedulers each did a step 0 when constructed: undo that, then redo only the first's
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for s in schedulers:
            s.last_epoch -= 1
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def _active(self) -> int:
        return bisect_right(self._milestones, self.last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        idx = self._active()
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)  # the next schedule starts at its own step 0
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def _check_state_dict(self, state_dict: dict) -> None:
        inner = state_dict.get("_schedulers") if isinstance(state_dict, dict) else None
        if not isinstance(inner, list) or len(inner) != len(self._schedulers):
            raise ValueError(f"SequentialLR state dict must hold {len(self._schedulers)} scheduler states")
        for s, sub in zip(self._schedulers, inner):
            s._check_state_dict(sub)
        super()._check_state_dict(state_dict)

    def _apply_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        inner = state_dict.pop("_schedulers")
        super()._apply_state_dict(state_dict)
        for s, sub in zip(self._schedulers, inner):
            s._apply_state_dict(sub)

    def _restore_optimizer(self) -> None:
        self._schedulers[self._active()]._restore_optimizer()
        super()._restore_optimizer()


# ----------------------------------------------------------------------------- metric-driven


class ReduceLROnPlateau(LRScheduler):
    """Multiply the rate by ``factor`` when a metric has stopped improving for ``patience`` steps.

    ``step(metric)`` once per evaluation. A value counts as an improvement when it beats the
    best so far by ``threshold`` (relative: ``best * (1 - threshold)`` in ``"min"`` mode;
    absolute: ``best - threshold``). After more than ``patience`` non-improving calls, each
    group's rate becomes ``max(lr * factor, min_lr)`` (skipped when that changes it by
    less than ``eps``), then ``cooldown`` calls are ignored. PyTorch's semantics; not
    chainable with the other schedules' step 0 (it does not touch the rate at construction).
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr=0.0,
                 eps: float = 1e-8):
        _check_optimizer(optimizer)
        _check_real("factor", factor)
        if not 0 <= factor < 1:
            raise ValueError(f"factor must be in [0, 1), got {factor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.min_lrs = [_check_real("min_lr", v, low=0.0) for v in _per_group("min_lr", optimizer, min_lr)]
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else min_lr
        self.optimizer = optimizer
        self.factor = factor
        self.patience = _check_int("patience", patience, 0)
        self.threshold = _check_real("threshold", threshold, low=0.0)
        self.threshold_mode = threshold_mode
        self.cooldown = _check_int("cooldown", cooldown, 0)
        self.eps = _check_real("eps", eps, low=0.0)
        self.mode = mode
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics) -> None:  # type: ignore[override]  # torch's signature: takes a metric
        """Record one evaluation of the monitored metric (a number or a one-element Tensor)."""
        try:
            current = float(metrics.item() if hasattr(metrics, "item") else metrics)
        except (TypeError, ValueError):
            raise TypeError(f"ReduceLROnPlateau.step: metrics must be a number or a one-element tensor, got "
                            f"{type(metrics).__name__} {str(metrics)[:40]}") from None
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"the optimizer has {len(groups)} parameter groups but ReduceLROnPlateau "
                                   f"was given {len(self.min_lrs)} min_lrs; update scheduler.min_lrs")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold
