"""The CUDA kernels on Numba's CUDA simulator: a separate pytest run,

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim

(the variable must be set before Numba is imported, hence a process of its own; see
``.ci/cudasim_and_ptx.sh``). In the normal test run these tests are skipped: without the
variable ``numba.cuda`` is the real CUDA target, and there is no GPU to run it on. The
simulator runs every CUDA thread as a Python thread (~150k elements/s), so the tests use
buffers of a few hundred elements; ``kernels/cuda.py`` launches 32-thread blocks and at
most 4 blocks under it, so the grid-stride loops and the multi-block reductions still run
more than one round. The simulator copies NumPy arguments in and back, which would hide a
kernel that fails to write in place: the tests pass ``cuda.to_device`` arrays.
"""

import os
from pathlib import Path

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if SIMULATOR:
        return
    skip = pytest.mark.skip(reason="CUDA simulator run only: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cuda():
    from numba import cuda as numba_cuda

    from numba.core import config

    assert config.ENABLE_CUDASIM, "numba was imported before NUMBA_ENABLE_CUDASIM=1 was set"
    return numba_cuda


@pytest.fixture(scope="session")
def kcuda(cuda):
    from tinygrad_sgd.kernels import cuda as kernels_cuda

    assert kernels_cuda.SIMULATOR
    return kernels_cuda
