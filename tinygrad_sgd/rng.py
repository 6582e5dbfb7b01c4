"""The engine's single random-number generator.

All randomness the engine draws on its own (``randn``/``rand``, weight init, dropout
masks, DataLoader shuffles that are given no seed) comes from one NumPy ``Generator``, so
``tg.manual_seed(s)`` makes a whole run reproducible. Random arrays for a GPU tensor are
drawn on the CPU and copied over: the same seed gives the same numbers on every device,
which is what a CPU-vs-GPU comparison run needs.
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the global generator (like ``torch.manual_seed``) and return it."""
    global _generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator() -> np.random.Generator:
    """The global generator (its state changes as numbers are drawn)."""
    return _generator


def get_rng_state() -> dict:
    """A copy of the global generator's state (a dict of ints and strings)."""
    return dict(_generator.bit_generator.state)


def set_rng_state(state: dict) -> None:
    """Restore a state returned by :func:`get_rng_state`."""
    bit_generator = np.random.PCG64()
    bit_generator.state = state  # type: ignore[assignment]  # validates the dict; raises before any change
    _generator.bit_generator.state = state
