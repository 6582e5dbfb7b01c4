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
