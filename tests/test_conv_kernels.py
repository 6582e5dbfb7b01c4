"""The Numba fast paths of Conv2d, MaxPool2d and AvgPool2d against their readable array
code (``cpu_kernels.enabled = False``, also the GPU's code) and against torch: outputs
and every gradient, float64 to 1e-10 and float32 to 1e-5, on odd geometries."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck, gradgradcheck
from tinygrad_sgd.ops import cpu_kernels

F = tg.nn.functional

CASES = [  # (x shape, out channels, kernel, stride, padding, dilation)
    ((2, 3, 7, 6), 4, (3, 3), 1, 1, 1),
    ((2, 3, 9, 8), 4, (3, 3), 2, 1, 1),           # stride 2
    ((1, 2, 9, 9), 3, (5, 5), 1, 2, 1),           # kernel 5, a batch of 1
    ((2, 3, 5, 6), 2, (1, 1), 1, 0, 1),           # kernel 1
    ((2, 2, 11, 10), 3, (3, 2), (2, 1), (1, 0), (2, 1)),  # dilation, rectangular
    ((1, 1, 6, 7), 2, (2, 2), 1, "same", 1),      # even kernel: one more pad at the end
    ((3, 2, 8, 8), 5, (3, 3), 3, 2, 2),
]
TOL = {np.float64: 1e-10, np.float32: 1e-5}


@pytest.fixture
def reference_mode(monkeypatch):
    """A context that runs the ops on their reference array code."""
    import contextlib

    @contextlib.contextmanager
    def off():
        with monkeypatch.context() as m:
            m.setattr(cpu_kernels, "enabled", False)
            yield

    return off


def _run(fn, arrays, upstream, dtype):
    tensors = [tg.Tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(tg.Tensor(upstream, dtype=dtype))
    return [out.data] + [t.grad.data for t in tensors]


def _assert_close(got, expected, tol):
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,out_channels,kernel,stride,padding,dilation", CASES)
def test_conv2d_kernels_equal_the_reference_and_torch(shape, out_channels, kernel, stride, padding, dilation,
                                                      dtype, rng, reference_mode):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((out_channels, shape[1]) + kernel).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype)

    def fn(x, w, b):
        return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)

    out_shape = fn(*(tg.Tensor(a) for a in (x, w, b))).shape
    upstream = rng.standard_normal(out_shape).astype(dtype)
    fused = _run(fn, [x, w, b], upstream, dtype)
    with reference_mode():
        reference = _run(fn, [x, w, b], upstream, dtype)
    _assert_close(fused, reference, TOL[dtype])
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out_t = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation)
    out_t.backward(torch.tensor(upstream))
    _assert_close(fused, [out_t.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()], TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_kernel_without_bias_equals_the_reference(dtype, rng, reference_mode):
    # The forward kernel adds the bias while it reorders the product to NCHW; without a
    # bias it must add nothing (and the batch of 1 and stride 2 keep the reorder honest).
    for shape, stride in (((3, 2, 7, 6), 1), ((1, 3, 9, 9), 2)):
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((4, shape[1], 3, 3)).astype(dtype)

        def fn(x, w, stride=stride):
            return F.conv2d(x, w, None, stride=stride, padding=1)

        out_shape = fn(tg.Tensor(x), tg.Tensor(w)).shape
        upstream = rng.standard_normal(out_shape).astype(dtype)
        fused = _run(fn, [x, w], upstream, dtype)
        with reference_mode():
            reference = _run(fn, [x, w], upstream, dtype)
        _assert_close(fused, reference, TOL[dtype])


@pytest.mark.parametrize("shape,out_channels,kernel,stride,padding,dilation", CASES[:5])
def test_conv2d_kernels_gradcheck_and_second_derivatives(shape, out_channels, kernel, stride, padding, dilation,
                                                         rng):
    small = (1,) + shape[1:] if shape[0] > 1 else shape
    x = tg.Tensor(rng.standard_normal(small), dtype=tg.float64, requires_grad=True)
    w = tg.Tensor(rng.standard_normal((2, small[1]) + kernel), dtype=tg.float64, requires_grad=True)

    def fn(x, w):
        return F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)

    assert gradcheck(fn, [x, w])
    assert gradgradcheck(lambda x, w: fn(x, w).tanh(), [x, w])


POOL_CASES = [  # (x shape, kernel, stride, padding)
    ((2, 3, 8, 8), 2, None, 0),  # 2x2 tiles: the one-pass backward
    ((2, 2, 7, 9), 2, 2, 0),     # ... with an odd last row and column that no window covers
    ((2, 2, 7, 9), 3, 2, 1),     # overlapping windows, padding
    ((1, 1, 5, 5), 3, 1, 1),     # every pixel in up to 9 windows
    ((2, 2, 6, 7), (2, 3), (1, 2), (1, 0)),
    ((1, 3, 4, 4), 1, 1, 0),
    ((2, 2, 7, 9), 2, 1, 0),     # the unrolled 2x2 kernel, overlapping windows
    ((1, 2, 5, 7), 2, (2, 1), 0),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,kernel,stride,padding", POOL_CASES)
def test_max_pool_kernels_equal_the_reference_and_torch(shape, kernel, stride, padding, dtype, rng,
                                                        reference_mode):
    torch = pytest.importorskip("torch")
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(dtype) / 7  # distinct values: one argmax

    def fn(x):
        return F.max_pool2d(x, kernel, stride, padding)

    upstream = rng.standard_normal(fn(tg.Tensor(x)).shape).astype(dtype)
    fused = _run(fn, [x], upstream, dtype)
    with reference_mode():
        reference = _run(fn, [x], upstream, dtype)
    _assert_close(fused, reference, TOL[dtype])
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.functional.max_pool2d(xt, kernel, stride, padding)
    out_t.backward(torch.tensor(upstream))
    _assert_close(fused, [out_t.detach().numpy(), xt.grad.numpy()], TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape,kernel,stride,padding", POOL_CASES)
def test_avg_pool_kernels_equal_the_reference_and_torch(shape, kernel, stride, padding, count_include_pad, dtype,
                                                        rng, reference_mode):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(dtype)

    def fn(x):
        return F.avg_pool2d(x, kernel, stride, padding, count_include_pad=count_include_pad)

    upstream = rng.standard_normal(fn(tg.Tensor(x)).shape).astype(dtype)
    fused = _run(fn, [x], upstream, dtype)
    with reference_mode():
        reference = _run(fn, [x], upstream, dtype)
    _assert_close(fused, reference, TOL[dtype])
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.functional.avg_pool2d(xt, kernel, stride, padding, count_include_pad=count_include_pad)
    out_t.backward(torch.tensor(upstream))
    _assert_close(fused, [out_t.detach().numpy(), xt.grad.numpy()], TOL[dtype])


@pytest.mark.parametrize("kernel,padding", [(2, 0), (3, 1)])  # the unrolled 2x2 kernel and the general one
def test_max_pool_kernel_ties_and_nan_follow_torch(kernel, padding, rng):
    """Ties go to the first maximum in the window; a NaN wins its window, and with several
    NaNs the gradient goes to the last of them (torch's scan: ``v > best or isnan(v)``)."""
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 2:] = np.nan, np.nan
    x[0, 0, 1, 2] = np.nan
    x[0, 0, 2:, :2] = [[1.0, 3.0], [3.0, 2.0]]  # a tie
    x[0, 0, 2:, 2:] = -np.inf                   # a window of -inf
    upstream = rng.standard_normal((1, 1, 2, 2))
    got = _run(lambda t: F.max_pool2d(t, kernel, 2, padding), [x], upstream, np.float64)
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.functional.max_pool2d(xt, kernel, 2, padding)
    out_t.backward(torch.tensor(upstream))
    np.testing.assert_array_equal(got[0], out_t.detach().numpy())
    np.testing.assert_array_equal(got[1], xt.grad.numpy())


def test_pool_kernels_gradcheck_and_max_pool_second_derivatives(rng):
    x = tg.Tensor(rng.permutation(2 * 36).reshape(1, 2, 6, 6) / 10.0, dtype=tg.float64, requires_grad=True)
    assert gradcheck(lambda x: F.max_pool2d(x, 3, 2, 1), [x])
    assert gradcheck(lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [x])
    # create_graph through max pooling takes the differentiable scatter (IndexAdd)
    assert gradgradcheck(lambda x: F.max_pool2d(x, 2) ** 2, [x])
    assert gradgradcheck(lambda x: F.avg_pool2d(x, 3, 1, 1) ** 2, [x])


def test_kernels_are_skipped_for_other_dtypes_and_when_switched_off(rng, monkeypatch):
    x64 = rng.standard_normal((1, 1, 4, 4))
    assert cpu_kernels.available(x64)
    assert not cpu_kernels.available(x64.astype(np.float16))
    assert not cpu_kernels.available(x64, x64.astype(np.float32))  # mixed dtypes
    monkeypatch.setattr(cpu_kernels, "enabled", False)
    assert not cpu_kernels.available(x64)


def test_conv2d_kernel_reads_non_contiguous_input(rng):
    x = rng.standard_normal((2, 5, 3, 6)).transpose(0, 1, 3, 2)[:, :3]  # a strided view (2, 3, 6, 3)
    w = rng.standard_normal((2, 3, 3, 3))
    got = F.conv2d(tg.Tensor.from_array(x), tg.Tensor.from_array(w), padding=1).data
    with_copy = F.conv2d(tg.Tensor.from_array(np.ascontiguousarray(x)), tg.Tensor.from_array(w), padding=1).data
    np.testing.assert_array_equal(got, with_copy)


def test_conv_and_pool_ops_give_the_cpu_kernels_results_on_every_device(device, rng):
    """On ``cuda`` the ops run their array code on CuPy; the CPU runs the kernels."""
    from tinygrad_sgd import backend

    x_np = rng.standard_normal((2, 3, 9, 8))
    w_np, b_np = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    results = []
    for where in ("cpu", device):
        x, w, b = (tg.Tensor(a, dtype=tg.float64, requires_grad=True, device=where) for a in (x_np, w_np, b_np))
        y = F.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2)).relu()
        out = F.max_pool2d(y, 2) + F.avg_pool2d(y, 3, 2, 1, count_include_pad=False)[..., :2, :1]
        (out * out).sum().backward()
        results.append([backend.to_numpy(t) for t in (out.data, x.grad.data, w.grad.data, b.grad.data)])
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_keep_freed_memory_sets_glibc_malloc_and_can_be_turned_off(monkeypatch):
    import sys

    monkeypatch.setenv("TINYGRAD_SGD_KEEP_FREED_MEMORY", "0")
    assert cpu_kernels.keep_freed_memory() is False
    monkeypatch.delenv("TINYGRAD_SGD_KEEP_FREED_MEMORY")
    import platform

    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert cpu_kernels.keep_freed_memory() is True
