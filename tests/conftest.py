"""Shared test fixtures.

``device``: every test that takes it runs on the CPU and again on ``"cuda"`` (marked
``cuda``, so ``-m cuda`` selects those cases). The GPU case runs when a CUDA device is
usable through CuPy, and is skipped, not dropped, without one.

The CuPy stand-in (``tests/cupy_standin``): with ``--cupy-standin`` or
``TINYGRAD_SGD_CUPY_STANDIN=1`` the ``cuda`` cases run without a GPU on a strict stand-in
``cupy`` module (NumPy arrays behind CuPy's rules; see its docstring for what it covers
and cannot catch); it turns on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where
the Numba-CUDA kernels run on its arrays. CI runs this pass: ``.ci/cupy_standin.sh``. Nothing
here imports tinygrad_sgd at module level: ``tinygrad_sgd.backend`` imports ``cupy`` once,
so the stand-in must be on ``sys.path`` first (``pytest_configure``).
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

STANDIN_ENV_VAR = "TINYGRAD_SGD_CUPY_STANDIN"
STANDIN_DIR = Path(__file__).resolve().parent / "cupy_standin"


def pytest_addoption(parser):
    parser.addoption("--cupy-standin", action="store_true", default=False,
                     help="run the 'cuda' test cases on the strict CuPy stand-in in tests/cupy_standin "
                          f"(same as {STANDIN_ENV_VAR}=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: a device-parametrized test case on the 'cuda' device")
    config.addinivalue_line("markers", "standin: a test of the CuPy stand-in itself (runs with --cupy-standin)")
    if config.getoption("--cupy-standin") or os.environ.get(STANDIN_ENV_VAR) == "1":
        enable_cupy_standin()


def enable_cupy_standin() -> None:
    """Put the stand-in ``cupy`` first on ``sys.path`` (and on ``PYTHONPATH``, for the
    subprocesses that tests start), with Numba's CUDA simulator on: without a GPU the
    fused kernels can only run there."""
    if "tinygrad_sgd.backend" in sys.modules or "cupy" in sys.modules:
        raise pytest.UsageError("the CuPy stand-in must be enabled before tinygrad_sgd or cupy is imported")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        if "numba" in sys.modules:
            raise pytest.UsageError("the CuPy stand-in needs NUMBA_ENABLE_CUDASIM=1 before numba is imported")
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    sys.path.insert(0, str(STANDIN_DIR))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STANDIN_DIR), os.environ.get("PYTHONPATH")]))
    os.environ[STANDIN_ENV_VAR] = "1"


def pytest_report_header(config):
    if os.environ.get(STANDIN_ENV_VAR) == "1":
        sim = "on" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "off"
        return f"cupy: the stand-in in {STANDIN_DIR} (Numba CUDA simulator {sim})"
    return None


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    if request.param == "cuda":
        import tinygrad_sgd as tg

        if not tg.gpu_available():
            pytest.skip("no CUDA GPU (run with --cupy-standin for the CuPy stand-in)")
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
