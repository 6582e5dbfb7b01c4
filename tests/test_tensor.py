"""Tensor construction, dtypes, devices, conversions, creation functions, seeding and
the errors bad input gets."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import backend


def test_float_data_defaults_to_float32_and_float64_on_request(device):
    assert tg.Tensor([1.0, 2.0], device=device).dtype == tg.float32
    assert tg.Tensor(np.ones(3, dtype=np.float64), device=device).dtype == tg.float32
    assert tg.Tensor([1.0], dtype=tg.float64, device=device).dtype == tg.float64
    assert tg.Tensor([1, 2], device=device).dtype == tg.int64
    assert tg.Tensor(np.array([1, 2], dtype=np.int32), device=device).dtype == tg.int32
    assert tg.Tensor([True, False], device=device).dtype == tg.bool_


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([1 + 2j]), [object()], np.array([None])])
def test_unsupported_dtypes_are_rejected_by_name(bad):
    with pytest.raises(TypeError, match="unsupported dtype"):
        tg.Tensor(bad)


def test_ragged_data_is_rejected():
    with pytest.raises(TypeError, match="cannot build a tensor from list"):
        tg.Tensor([[1.0, 2.0], [3.0]])


def test_constructor_copies_and_from_array_shares():
    source = np.array([1.0, 2.0], dtype=np.float32)
    copied, shared = tg.Tensor(source), tg.Tensor.from_array(source)
    source[0] = 9.0
    assert copied.numpy()[0] == 1.0 and shared.numpy()[0] == 9.0


def test_attributes_and_conversions(device):
    x = tg.Tensor(np.arange(6.0).reshape(2, 3), device=device)
    assert x.shape == (2, 3) and x.ndim == 2 and x.numel() == 6 and x.size() == (2, 3) and x.size(1) == 3
    assert x.device == ("cpu" if device == "cpu" else "cuda:0")
    assert len(x) == 2
    assert isinstance(x.numpy(), np.ndarray)
    assert x[1, 2].item() == 5.0 and float(x.sum()) == 15.0
    assert x.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match=r"one element, got shape \(2, 3\)"):
        x.item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(x)


def test_numpy_on_a_tensor_that_requires_grad_asks_for_detach():
    x = tg.Tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        x.numpy()
    assert x.detach().numpy()[0] == 1.0


def test_detach_shares_data_and_cuts_the_graph():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2.0).detach()
    assert not y.requires_grad and y.is_leaf
    d = x.detach()
    d.data[0] = 5.0
    assert x.data[0] == 5.0


def test_to_dtype_and_device_roundtrip(device):
    x = tg.Tensor([1.5, 2.5], device=device)
    assert x.to(dtype=tg.float64).dtype == tg.float64
    assert x.double().float().dtype == tg.float32
    assert x.long().tolist() == [1, 2]
    moved = x.to(device)
    assert moved is x
    assert x.to("cpu").device == "cpu"


@pytest.mark.skipif(not tg.gpu_available(), reason="no CUDA GPU")
def test_gradient_flows_across_a_device_move():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    y = (x.to("cuda") * 3.0).sum()
    y.backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0])


def test_creation_functions(device):
    assert tg.zeros(2, 3, device=device).numpy().sum() == 0
    assert tg.ones((2, 3), device=device).numpy().sum() == 6
    assert tg.full((2,), 7.0, device=device).tolist() == [7.0, 7.0]
    assert tg.eye(3, device=device).numpy().trace() == 3
    assert tg.arange(4, device=device).tolist() == [0, 1, 2, 3] and tg.arange(4).dtype == tg.int64
    assert tg.arange(0, 1, 0.5).dtype == tg.float32
    base = tg.randn(3, 2, device=device)
    assert tg.zeros_like(base).shape == (3, 2) and tg.ones_like(base).dtype == tg.float32
    assert tg.full_like(base, 2.0).numpy().sum() == 12.0
    assert tg.rand(100, device=device).numpy().min() >= 0 and tg.rand(100).numpy().max() < 1
    ints = tg.randint(0, 5, (50,), device=device)
    assert ints.dtype == tg.int64 and ints.numpy().min() >= 0 and ints.numpy().max() < 5
    w = tg.zeros(3, requires_grad=True)
    assert w.requires_grad and w.is_leaf


def test_manual_seed_makes_random_tensors_reproducible():
    tg.manual_seed(42)
    first = tg.randn(5).numpy().copy(), tg.rand(3).numpy().copy()
    state = tg.get_rng_state()
    after = tg.randn(4).numpy().copy()
    tg.manual_seed(42)
    second = tg.randn(5).numpy(), tg.rand(3).numpy()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    tg.set_rng_state(state)
    np.testing.assert_array_equal(tg.randn(4).numpy(), after)
    with pytest.raises(ValueError, match="non-negative integer"):
        tg.manual_seed(-1)


def test_device_strings():
    assert backend.parse_device("cpu") == "cpu" and backend.parse_device(" CPU ") == "cpu"
    for bad in ("tpu", "cuda:x", "gpu"):
        with pytest.raises(ValueError, match="invalid device"):
            backend.parse_device(bad)
    with pytest.raises(TypeError, match="device must be a string"):
        backend.parse_device(0)
    if not tg.gpu_available():
        with pytest.raises(RuntimeError, match="not available"):
            tg.Tensor([1.0], device="cuda")
    assert backend.get_array_module(np.ones(2)) is np and backend.get_array_module("cpu") is np


def _default_device_in_subprocess(value):
    env = dict(os.environ, TINYGRAD_SGD_DEVICE=value)
    code = "import tinygrad_sgd as tg; print(tg.zeros(1).device)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_environment_variable_forces_the_default_device():
    result = _default_device_in_subprocess("cpu")
    assert result.returncode == 0 and result.stdout.strip() == "cpu"
    result = _default_device_in_subprocess("tpu")
    assert result.returncode != 0 and "invalid device 'tpu'" in result.stderr


def test_gpu_detection_never_crashes_and_falls_back_to_cpu():
    count = backend.gpu_count()
    assert isinstance(count, int) and count >= 0
    assert backend.best_device() == ("cuda:0" if count else "cpu")


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(4, 5\) are not aligned"):
        tg.ones(2, 3) @ tg.ones(4, 5)
    with pytest.raises(ValueError, match=r"Add: operands could not be broadcast.*\(input shapes \(2, 3\), \(4,\)\)"):
        tg.ones(2, 3) + tg.ones(4)
    with pytest.raises(ValueError, match="0-d"):
        tg.ones(()) @ tg.ones(3)
    with pytest.raises(ValueError, match=r"cannot reshape array of size 6"):
        tg.ones(2, 3).reshape(4)
    with pytest.raises(np.exceptions.AxisError, match="axis 2 is out of bounds for a tensor with 2"):
        tg.ones(2, 3).sum(axis=2)
    with pytest.raises(ValueError, match="not a permutation"):
        tg.ones(2, 3).permute(0, 0)
    with pytest.raises(ValueError, match="same shape"):
        tg.stack([tg.ones(2), tg.ones(3)])


def test_where_rejects_non_bool_condition():
    with pytest.raises(TypeError, match="condition must be bool"):
        tg.where(tg.Tensor([1, 0]), tg.ones(2), tg.zeros(2))


def test_setitem_is_allowed_on_leaves_only_outside_the_graph():
    w = tg.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place assignment"):
        w[0] = 1.0
    with tg.no_grad():
        w[0] = 1.0
    assert w.tolist() == [1.0, 0.0, 0.0]
    h = w * 2.0
    with pytest.raises(RuntimeError, match="in-place assignment"):
        h[1] = 3.0


def test_numpy_arrays_defer_to_tensor_operators():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    y = np.array([3.0, 4.0]) * x
    assert isinstance(y, tg.Tensor) and y.dtype == tg.float32
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])


def test_python_scalars_keep_the_tensor_dtype():
    x = tg.Tensor([1.0, 2.0])
    assert (x * 0.5).dtype == tg.float32 and (2 ** x).dtype == tg.float32
    assert (tg.Tensor([1, 2]) * 0.5).dtype == tg.float32  # torch's promotion, not NumPy's float64
    assert (tg.Tensor([1, 2]) * 2).dtype == tg.int64


def test_repr_shows_values_and_flags():
    assert repr(tg.Tensor([1.0, 2.0])) == "Tensor([1., 2.])"
    assert "requires_grad=True" in repr(tg.Tensor([1.0], requires_grad=True))
    assert "grad_fn=<Mul>" in repr(tg.Tensor([1.0], requires_grad=True) * 2.0)
    assert "dtype=int64" in repr(tg.Tensor([1]))
