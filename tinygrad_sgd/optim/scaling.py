"""The linear scaling rule: grow the learning rate with the batch size.

Goyal, Dollár, Girshick, Noordhuis, Wesolowski, Kyrola, Tulloch, Jia & He (2017),
*Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour*: "when the minibatch size is
multiplied by k, multiply the learning rate by k". The argument: k small-batch SGD steps
with rate eta move the weights by about ``-eta * sum of k gradients``; one step on the
k-times larger batch (whose gradient is the *mean* over the batch) moves them by
``-eta' * mean``, so ``eta' = k * eta`` makes the two agree while the gradient changes
slowly. It breaks down early in training (pair it with a warm-up, ``LinearLR``) and for
very large batches.
"""

from __future__ import annotations

from numbers import Real

from .optimizer import Optimizer, check_number

BASE_LR_KEY = "lr_at_base_batch_size"


def _check_batch(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def scale_lr_linearly(base_lr: float, batch_size: int, base_batch_size: int = 256) -> float:
    """``base_lr * batch_size / base_batch_size``: the rate for ``batch_size`` given the rate
    ``base_lr`` that suits ``base_batch_size`` (Goyal et al. use 0.1 per 256 images)."""
    base_lr = check_number("base_lr", base_lr)
    return base_lr * _check_batch("batch_size", batch_size) / _check_batch("base_batch_size", base_batch_size)


def set_lr_for_batch_size(optimizer: Optimizer, batch_size: int, base_batch_size: int = 256,
                          base_lrs: list | None = None) -> list:
    """Set every group's ``lr`` by the linear scaling rule and return the new rates.

    The rate each group had at the *base* batch size is taken from ``base_lrs`` if given,
    else from the group's ``"lr_at_base_batch_size"`` entry, which the first call records
    as the group's current ``lr``. So the rate the optimizer was built with is read as the
    rate for ``base_batch_size``, and a batch-size schedule can call this again at every
    change (64 -> 128 -> 256) without compounding. The entry lives in ``param_groups``, so
    it is saved with the optimizer's ``state_dict()``.

    With an LR scheduler attached, scale the scheduler's ``base_lrs`` with
    :func:`scale_lr_linearly` instead (the scheduler rewrites ``lr`` at every step).
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"set_lr_for_batch_size needs an Optimizer, got {type(optimizer).__name__}")
    _check_batch("batch_size", batch_size)
    _check_batch("base_batch_size", base_batch_size)
    groups = optimizer.param_groups
    if base_lrs is not None:
        base_lrs = list(base_lrs)
        if len(base_lrs) != len(groups):
            raise ValueError(f"got {len(base_lrs)} base_lrs for {len(groups)} parameter groups")
        for lr in base_lrs:
            if isinstance(lr, bool) or not isinstance(lr, Real):
                raise ValueError(f"base_lrs must be numbers, got {lr!r}")
    else:
        base_lrs = [group.get(BASE_LR_KEY, group["lr"]) for group in groups]
    new_lrs = [scale_lr_linearly(lr, batch_size, base_batch_size) for lr in base_lrs]
    for group, base, lr in zip(groups, base_lrs, new_lrs):
        group[BASE_LR_KEY] = float(base)
        group["lr"] = lr
    return new_lrs
