"""Shared test fixtures.

``device``: every test that takes it runs on the CPU and, when a CUDA GPU is usable
through CuPy, again on the GPU (the GPU case is skipped, not dropped, without one).
"""

import numpy as np
import pytest

import tinygrad_sgd as tg

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not tg.gpu_available(), reason="no CUDA GPU")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def npz_roundtrip(tmp_path):
    """Pass a state dict through a checkpoint file (``.npz`` read back with
    ``allow_pickle=False``) and return what comes back, as a resumed run would see it."""
    from tinygrad_sgd.train.checkpoint import load_checkpoint, save_checkpoint

    counter = iter(range(1_000_000))

    def roundtrip(state: dict) -> dict:
        path = tmp_path / f"roundtrip-{next(counter)}.npz"
        save_checkpoint(path, {"state": state})
        return load_checkpoint(path)["state"]

    return roundtrip
