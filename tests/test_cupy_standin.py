"""The CuPy stand-in itself (tests/cupy_standin): it must refuse what CuPy refuses, or the
``cuda`` test cases that run on it prove nothing. These run only with the stand-in on
(``pytest --cupy-standin -m standin``; CI: ``.ci/cupy_standin.sh``)."""

import os

import numpy as np
import pytest

pytestmark = pytest.mark.standin


@pytest.fixture(scope="module")
def cp():
    try:
        import cupy
    except ImportError:
        cupy = None
    if not getattr(cupy, "STANDIN", False):
        pytest.skip("the CuPy stand-in is off (pytest --cupy-standin)")
    return cupy


def test_is_not_a_numpy_array(cp):
    x = cp.arange(3.0)
    assert not isinstance(x, np.ndarray) and type(x).__module__.split(".")[0] == "cupy"
    assert hasattr(x, "__cuda_array_interface__") and x.device.id == 0


def test_mixing_with_numpy_arrays_raises_type_error(cp):
    x = cp.ones(3, dtype=cp.float32)
    for other in (np.ones(3), np.array(2.0)):  # 0-d NumPy arrays too
        with pytest.raises(TypeError, match="Unsupported type"):
            x + other
        with pytest.raises(TypeError):
            other * x
        with pytest.raises(TypeError):
            cp.maximum(x, other)
    got = x * np.float32(2) + 1  # NumPy scalars and Python numbers mix
    assert type(got) is cp.ndarray and got.dtype == np.float32
    np.testing.assert_array_equal(got.get(), [3.0, 3.0, 3.0])


def test_implicit_conversion_to_numpy_is_refused(cp):
    x = cp.arange(3.0)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.testing.assert_allclose(x, [0.0, 1.0, 2.0])
    assert isinstance(x.get(), np.ndarray) and isinstance(cp.asnumpy(x), np.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(x), [0.0, 1.0, 2.0])


def test_numpy_functions_dispatch_or_name_what_is_missing(cp):
    x = cp.arange(4.0)
    assert type(np.exp(x)) is cp.ndarray and type(np.sum(x)) is cp.ndarray
    with pytest.raises(cp.NotCovered, match=r"numpy\.median"):
        np.median(x)
    with pytest.raises(AttributeError, match=r"cupy\.random is not covered"):
        cp.random  # noqa: B018
    with pytest.raises(AttributeError, match=r"cupy\.ndarray\.ptp is not covered"):
        x.ptp()


def test_results_follow_cupy(cp):
    x = cp.arange(6.0).reshape(2, 3)
    total = x.sum()
    assert type(total) is cp.ndarray and total.ndim == 0  # reductions give 0-d arrays
    element = x[1, 2]
    assert element.ndim == 0 and element.base is x.base  # integer indexing gives a view
    element[...] = -1.0
    assert float(x[1, 2]) == -1.0
    row = x[0]
    assert row.base is x.base and x.T.base is x.base and x.copy().base is None
    out = cp.zeros(3)
    assert cp.add(row, 1.0, out=out) is out
    assert x.astype(x.dtype, copy=False) is x and x.astype(cp.float32) is not x


def test_flags_have_no_writeable(cp):
    x = cp.zeros((2, 3))
    assert x.flags.c_contiguous and x.flags["C_CONTIGUOUS"] and x.flags.owndata
    assert not x[:, 1].flags.c_contiguous and not x[0].flags.owndata
    with pytest.raises(AttributeError):
        x.flags.writeable  # noqa: B018
    with pytest.raises(KeyError):
        x.flags["WRITEABLE"]


def test_transfers_copy_and_empty_memory_is_garbage(cp):
    host = np.ones(3)
    x = cp.asarray(host)
    host[0] = 5.0
    assert float(x[0]) == 1.0
    assert cp.asarray(x) is x
    assert np.isnan(cp.empty(3).get()).all() and np.isnan(cp.empty_like(x).get()).all()


def test_setitem_takes_numpy_only_where_cupy_converts(cp):
    x = cp.zeros(3)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        x[:] = np.ones(3)
    x[np.array([0, 2])] = np.array([1.0, 2.0])  # advanced indices convert NumPy values
    x[1] = np.float64(7.0)
    np.testing.assert_array_equal(x.get(), [1.0, 7.0, 2.0])


def test_scatter_add_sums_repeated_indices_in_atomic_dtypes_only(cp):
    import cupyx

    x = cp.zeros(3, dtype=cp.float32)
    cupyx.scatter_add(x, np.array([0, 0, 2]), cp.ones(3, dtype=cp.float32))
    np.testing.assert_array_equal(x.get(), [2.0, 0.0, 1.0])
    with pytest.raises(TypeError, match="scatter_add only supports"):
        cupyx.scatter_add(cp.zeros(3, dtype=cp.int64), np.array([0]), 1)


def test_one_device_and_streams(cp):
    assert cp.cuda.runtime.getDeviceCount() == 1
    with cp.cuda.Device(0) as dev:
        assert dev.id == 0
    with pytest.raises(cp.cuda.CUDARuntimeError), cp.cuda.Device(1):
        pass
    cp.cuda.get_current_stream().synchronize()
    import tinygrad_sgd as tg

    assert tg.backend.gpu_count() == 1 and tg.backend.device_of(cp.zeros(1)) == "cuda:0"


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="needs NUMBA_ENABLE_CUDASIM=1")
def test_simulator_view_shares_memory(cp):
    from numba import cuda

    x = cp.zeros(4, dtype=cp.float32)
    assert "data" in x.__cuda_array_interface__  # what installs the simulator's as_cuda_array
    view = cuda.as_cuda_array(x, sync=False)
    view[1] = 3.0
    assert float(x[1]) == 3.0
