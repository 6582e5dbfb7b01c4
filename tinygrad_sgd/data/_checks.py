"""Argument checks and seed handling shared by the data modules."""

from __future__ import annotations

import numpy as np

from .. import rng

# Seeds are drawn below 2**63 so that they round-trip through JSON and every int64 field.
_SEED_BOUND = 2**63 - 1


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    """``value`` as a Python int, refusing bools, floats and numbers below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_seed(seed, name: str = "seed") -> int | None:
    """A seed is None or a non-negative integer."""
    return None if seed is None else check_int(seed, name, minimum=0)


def resolve_seed(seed, name: str = "seed") -> int:
    """``seed`` itself, or (for None) one integer drawn from the engine's global generator.

    Drawing one integer from ``tinygrad_sgd.rng`` at construction is what makes
    ``tg.manual_seed(s)`` decide every unseeded shuffle, while the object keeps a plain
    int seed that can be saved in a checkpoint and reused in another process.
    """
    seed = check_seed(seed, name)
    if seed is None:
        seed = int(rng.generator().integers(0, _SEED_BOUND))
    return seed


def epoch_generator(seed: int, epoch: int) -> np.random.Generator:
    """The generator for one epoch: a function of ``(seed, epoch)`` only.

    ``SeedSequence([seed, epoch])`` gives statistically independent streams per epoch, so
    epoch ``e`` can be regenerated on its own (resume, another process, another rank)
    without replaying epochs ``0..e-1``.
    """
    return np.random.default_rng([seed, epoch])
