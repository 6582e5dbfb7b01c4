"""Conv2d, MaxPool2d, AvgPool2d: finite differences, torch with copied weights, bad input,
and a small CNN that has to learn."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck, gradgradcheck

F = tg.nn.functional
nn = tg.nn

CONV_CASES = [  # (kernel, stride, padding, dilation, bias)
    ((3, 3), 1, 0, 1, True),
    ((3, 3), 2, 1, 1, True),
    ((2, 3), (2, 1), (1, 0), 1, False),
    ((3, 2), 1, 2, 2, True),
    ((2, 2), 1, "same", 1, True),  # even kernel: 'same' pads one more at the end
    ((3, 3), 1, "valid", 1, True),
    ((1, 1), 3, 0, 1, True),
]


def f64(array, requires_grad=True):
    return tg.Tensor(array, dtype=tg.float64, requires_grad=requires_grad)


@pytest.mark.parametrize("kernel,stride,padding,dilation,bias", CONV_CASES)
def test_conv2d_gradcheck(kernel, stride, padding, dilation, bias, rng):
    x = f64(rng.standard_normal((2, 2, 5, 6)))
    w = f64(rng.standard_normal((3, 2) + kernel))
    inputs = [x, w] + ([f64(rng.standard_normal(3))] if bias else [])

    def fn(x, w, *b):
        return F.conv2d(x, w, b[0] if b else None, stride=stride, padding=padding, dilation=dilation)

    assert gradcheck(fn, inputs)


def test_conv2d_second_derivatives(rng):
    # The three conv ops differentiate into each other; check them through a Hessian.
    x = f64(rng.standard_normal((1, 2, 4, 5)))
    w = f64(rng.standard_normal((2, 2, 2, 3)))
    assert gradgradcheck(lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=1).tanh(), [x, w])


@pytest.mark.parametrize("kernel,stride,padding,dilation,bias", CONV_CASES)
def test_conv2d_matches_torch_with_copied_weights(kernel, stride, padding, dilation, bias, rng):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    layer = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, dtype=tg.float64)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x_np = rng.standard_normal((2, 3, 9, 8))
    x, x_ref = f64(x_np), torch.tensor(x_np, requires_grad=True)
    out, out_ref = layer(x), ref(x_ref)
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=0, atol=1e-12)
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(x.grad.data, x_ref.grad.numpy(), rtol=0, atol=1e-12)
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(param.grad.data, getattr(ref, name).grad.numpy(), rtol=0, atol=1e-11,
                                   err_msg=name)


def test_conv2d_default_init_matches_torch_bounds():
    layer = nn.Conv2d(3, 8, (3, 5))
    bound = 1 / np.sqrt(3 * 3 * 5)
    for param in (layer.weight, layer.bias):
        assert param.dtype == tg.float32
        assert np.abs(param.data).max() <= bound
        assert np.abs(param.data).max() > 0.8 * bound  # spread over the whole range, not a constant


def test_conv2d_float32_and_unbatched(rng):
    layer = nn.Conv2d(2, 3, 3, padding=1)
    x = tg.Tensor(rng.standard_normal((2, 5, 5)))
    out = layer(x)
    assert out.shape == (3, 5, 5) and out.dtype == tg.float32
    np.testing.assert_allclose(out.data, layer(x.unsqueeze(0)).data[0], rtol=1e-6)


def test_conv2d_repr_names_the_geometry():
    text = repr(nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False))
    assert text == "Conv2d(1, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"


@pytest.mark.parametrize("shape,message", [
    ((2, 1, 3, 8, 8), "4-D input"),
    ((8, 8), "4-D input"),
    ((2, 3, 8, 8), "expected input with 2 channels"),
    ((3, 8, 8), "expected input with 2 channels"),  # unbatched (C, H, W)
])
def test_conv2d_rejects_wrong_rank_or_channels(shape, message):
    with pytest.raises(ValueError, match=message):
        nn.Conv2d(2, 4, 3)(tg.randn(*shape))


def test_conv2d_other_bad_input():
    layer = nn.Conv2d(1, 2, 3)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layer(tg.randn(1, 1, 2, 5))
    with pytest.raises(TypeError, match="floating point"):
        layer(tg.Tensor(np.zeros((1, 1, 5, 5), dtype=np.int64)))
    with pytest.raises(TypeError, match="does not match weight dtype"):
        layer(tg.randn(1, 1, 5, 5, dtype=tg.float64))
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        nn.Conv2d(1, 2, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="stride must be at least 1"):
        nn.Conv2d(1, 2, 3, stride=0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        nn.Conv2d(1, 2, (3, 3, 3))


# ----------------------------------------------------------------------------- pooling

POOL_CASES = [(2, None, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 1))]


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_max_pool2d_matches_torch(kernel, stride, padding, rng):
    torch = pytest.importorskip("torch")
    x_np = rng.standard_normal((2, 3, 7, 8))
    x_np[0, 0, :3, :3] = 2.5  # ties: the first maximum in each window gets the gradient
    x, x_ref = f64(x_np), torch.tensor(x_np, requires_grad=True)
    out = nn.MaxPool2d(kernel, stride, padding)(x)
    out_ref = torch.nn.MaxPool2d(kernel, stride, padding)(x_ref)
    np.testing.assert_array_equal(out.data, out_ref.detach().numpy())
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(x.grad.data, x_ref.grad.numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_torch(kernel, stride, padding, count_include_pad, rng):
    torch = pytest.importorskip("torch")
    x_np = rng.standard_normal((2, 3, 7, 8))
    x, x_ref = f64(x_np), torch.tensor(x_np, requires_grad=True)
    out = nn.AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad)(x)
    out_ref = torch.nn.AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad)(x_ref)
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=0, atol=1e-14)
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(x.grad.data, x_ref.grad.numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_pooling_gradcheck(kernel, stride, padding, rng):
    # distinct values so max pooling is differentiable at the test point
    x = f64(rng.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) * 0.1)
    assert gradcheck(lambda x: F.max_pool2d(x, kernel, stride, padding), [x])
    assert gradcheck(lambda x: F.avg_pool2d(x, kernel, stride, padding, count_include_pad=False), [x])
    assert gradgradcheck(lambda x: F.avg_pool2d(x, kernel, stride, padding) ** 2, [x])


def test_max_pool2d_propagates_nan_like_torch():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    out = F.max_pool2d(f64(x, requires_grad=False), 2)
    assert np.isnan(out.data[0, 0, 0, 0]) and out.data[0, 0, 1, 1] == 15


def test_pooling_bad_input():
    with pytest.raises(ValueError, match="at most half the kernel"):
        F.max_pool2d(tg.randn(1, 1, 6, 6), 2, padding=2)
    with pytest.raises(ValueError, match="4-D input"):
        nn.MaxPool2d(2)(tg.randn(4, 4))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        nn.AvgPool2d(5)(tg.randn(1, 1, 3, 8))


# ----------------------------------------------------------------------------- training


def _bars_dataset(count: int, generator: np.random.Generator):
    """8x8 images of four classes: a horizontal bar, a vertical bar, the main diagonal or
    the anti-diagonal, at random positions and brightness, on noise."""
    images = generator.normal(0.0, 0.3, (count, 1, 8, 8))
    labels = generator.integers(0, 4, count)
    for image, label in zip(images, labels):
        position, brightness = generator.integers(1, 7), generator.uniform(1.0, 2.0)
        if label == 0:
            image[0, position, :] += brightness
        elif label == 1:
            image[0, :, position] += brightness
        elif label == 2:
            image[0] += brightness * np.eye(8)
        else:
            image[0] += brightness * np.eye(8)[::-1]
    return images.astype(np.float32), labels


def test_small_cnn_learns_synthetic_bars():
    tg.manual_seed(0)
    generator = np.random.default_rng(0)
    x_train, y_train = _bars_dataset(512, generator)
    x_test, y_test = _bars_dataset(256, generator)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 4))
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    for _ in range(6):
        order = generator.permutation(len(x_train))
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            model.zero_grad()
            loss = loss_fn(model(tg.Tensor(x_train[batch])), tg.Tensor(y_train[batch]))
            loss.backward()
            with tg.no_grad():  # plain SGD, so this test depends on tg.nn alone
                for p in params:
                    p.data -= 0.1 * p.grad.data
    model.eval()
    with tg.no_grad():
        accuracy = (model(tg.Tensor(x_test)).argmax(axis=1).numpy() == y_test).mean()
    assert accuracy > 0.9, accuracy  # chance is 0.25
