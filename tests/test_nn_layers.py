"""Linear, activations, Dropout, Embedding, Flatten: finite differences, torch with copied
weights, and bad input."""

import math

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck, gradgradcheck
from tinygrad_sgd.sparse import SparseRowGrad

F = tg.nn.functional
nn = tg.nn


def f64(array, requires_grad=True):
    return tg.Tensor(array, dtype=tg.float64, requires_grad=requires_grad)


def copy_weights(layer, ref):
    """Load a torch module's weights into our layer (the path a user takes)."""
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})


# ----------------------------------------------------------------------------- Linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3), (3,)])
def test_linear_matches_torch(bias, shape, rng):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Linear(3, 2, bias=bias).double()
    layer = nn.Linear(3, 2, bias=bias, dtype=tg.float64)
    copy_weights(layer, ref)
    x_np = rng.standard_normal(shape)
    x, x_ref = f64(x_np), torch.tensor(x_np, requires_grad=True)
    out, out_ref = layer(x), ref(x_ref)
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=0, atol=1e-14)
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(x.grad.data, x_ref.grad.numpy(), rtol=0, atol=1e-14)
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(param.grad.data, getattr(ref, name).grad.numpy(), rtol=0, atol=1e-14)


def test_linear_gradcheck_and_second_derivatives(rng):
    x, w, b = f64(rng.standard_normal((4, 3))), f64(rng.standard_normal((2, 3))), f64(rng.standard_normal(2))
    assert gradcheck(F.linear, [x, w, b])
    assert gradgradcheck(lambda x, w, b: F.linear(x, w, b).tanh(), [x, w, b])


def test_linear_shapes_dtype_and_default_init():
    layer = nn.Linear(64, 10)
    assert layer.weight.shape == (10, 64) and layer.bias.shape == (10,)
    assert isinstance(layer.weight, nn.Parameter) and isinstance(layer.weight, tg.Tensor)
    bound = 1 / math.sqrt(64)  # torch: kaiming_uniform_(a=sqrt(5)) -> U(+-1/sqrt(fan_in))
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.9 * bound
    assert np.abs(layer.weight.data.std() - bound / math.sqrt(3)) < 0.1 * bound
    out = layer(tg.randn(5, 64))
    assert out.dtype == tg.float32 and out.shape == (5, 10)
    assert repr(layer) == "Linear(in_features=64, out_features=10, bias=True)"


def test_linear_bad_input():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"last dimension 3 \(in_features\), got shape \(4, 5\)"):
        layer(tg.randn(4, 5))
    with pytest.raises(TypeError, match="float64 does not match weight dtype float32"):
        layer(tg.randn(4, 3, dtype=tg.float64))
    with pytest.raises(TypeError, match="floating point"):
        layer(tg.Tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="in_features must be an integer"):
        nn.Linear(-1, 2)


# ----------------------------------------------------------------------------- activations

ACTIVATIONS = [  # (ours, torch's name, kwargs)
    (nn.ReLU, "ReLU", {}),
    (nn.LeakyReLU, "LeakyReLU", {"negative_slope": 0.2}),
    (nn.Tanh, "Tanh", {}),
    (nn.Sigmoid, "Sigmoid", {}),
    (nn.SiLU, "SiLU", {}),
    (nn.Softplus, "Softplus", {"beta": 2.0, "threshold": 3.0}),
    (nn.GELU, "GELU", {}),
    (nn.GELU, "GELU", {"approximate": "tanh"}),
    (nn.Softmax, "Softmax", {"dim": 1}),
    (nn.LogSoftmax, "LogSoftmax", {"dim": 0}),
]


@pytest.mark.parametrize("ours,name,kwargs", ACTIVATIONS)
def test_activations_match_torch(ours, name, kwargs, rng):
    torch = pytest.importorskip("torch")
    x_np = rng.standard_normal((4, 5)) * 3
    x, x_ref = f64(x_np), torch.tensor(x_np, requires_grad=True)
    out, out_ref = ours(**kwargs)(x), getattr(torch.nn, name)(**kwargs)(x_ref)
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=1e-13, atol=1e-14)
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(x.grad.data, x_ref.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("ours,name,kwargs", ACTIVATIONS)
def test_activations_gradcheck(ours, name, kwargs, rng):
    x = f64(rng.standard_normal((3, 4)) * 2 + 0.05)  # away from relu's kink at exactly 0
    assert gradcheck(ours(**kwargs), [x])


def test_gelu_second_derivative(rng):
    x = f64(rng.standard_normal(6))
    assert gradgradcheck(nn.GELU(), [x])
    assert gradgradcheck(nn.GELU(approximate="tanh"), [x])


def test_erf_is_accurate_over_the_whole_line():
    points = np.concatenate([np.linspace(-7, 7, 4001), [0.0, 1e-300, -1e-12, 1.999999, 2.0, 30.0, -np.inf, np.inf]])
    ours = F.erf(f64(points, requires_grad=False)).data
    expected = np.array([math.erf(v) for v in points])
    np.testing.assert_allclose(ours, expected, rtol=2e-15, atol=2e-15)
    assert np.isnan(F.erf(f64([np.nan], requires_grad=False)).data[0])
    assert F.erf(tg.Tensor([0.5])).dtype == tg.float32


def test_gelu_keeps_float32():
    assert nn.GELU()(tg.randn(3)).dtype == tg.float32


def test_bad_activation_arguments():
    with pytest.raises(ValueError, match="approximate must be"):
        nn.GELU(approximate="fast")
    with pytest.raises(TypeError):
        nn.Softmax()  # dim is required (torch's implicit choice is deprecated)


# ----------------------------------------------------------------------------- Dropout


def test_dropout_scales_survivors_and_is_identity_in_eval():
    tg.manual_seed(0)
    layer = nn.Dropout(0.25)
    x = tg.ones(200, 100, requires_grad=True)
    out = layer(x)
    kept = out.data != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(out.data[kept], 1 / 0.75)  # inverted scaling: E[out] = x
    out.backward(tg.ones(200, 100))
    np.testing.assert_allclose(x.grad.data, out.data)  # d out / d x = mask / (1 - p)
    layer.eval()
    x2 = tg.randn(5, 5)
    assert layer(x2) is x2


def test_dropout_is_reproducible_under_manual_seed():
    x = tg.ones(50, 50)
    tg.manual_seed(3)
    first = nn.Dropout(0.5)(x).data
    second = nn.Dropout(0.5)(x).data
    tg.manual_seed(3)
    np.testing.assert_array_equal(nn.Dropout(0.5)(x).data, first)
    assert not np.array_equal(first, second)
    generator_masks = [nn.Dropout(0.5, generator=np.random.default_rng(9))(x).data for _ in range(2)]
    np.testing.assert_array_equal(*generator_masks)


def test_dropout_edge_probabilities_and_errors():
    x = tg.randn(4, 4)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).data, x.data)
    np.testing.assert_array_equal(nn.Dropout(1.0)(x).data, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        F.dropout(x, -0.1)


# ----------------------------------------------------------------------------- Embedding


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_dense_matches_torch_with_repeated_indices(padding_idx, rng):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Embedding(6, 3, padding_idx=padding_idx).double()
    layer = nn.Embedding(6, 3, padding_idx=padding_idx, dtype=tg.float64)
    copy_weights(layer, ref)
    ids = np.array([[0, 2, 2], [5, 0, 0]])
    out, out_ref = layer(tg.Tensor(ids)), ref(torch.tensor(ids))
    np.testing.assert_array_equal(out.data, out_ref.detach().numpy())
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(layer.weight.grad.data, ref.weight.grad.numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_sparse_gradient_holds_only_touched_rows(padding_idx, rng):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Embedding(10, 4, padding_idx=padding_idx, sparse=True).double()
    layer = nn.Embedding(10, 4, padding_idx=padding_idx, sparse=True, dtype=tg.float64)
    copy_weights(layer, ref)
    ids = np.array([3, 7, 3, 0, 3])
    out, out_ref = layer(tg.Tensor(ids)), ref(torch.tensor(ids))
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    grad = layer.weight.grad
    assert isinstance(grad, SparseRowGrad)
    touched = {3, 7} if padding_idx == 0 else {0, 3, 7}
    assert set(grad.indices.tolist()) == touched  # never a dense table
    assert grad.indices.dtype == np.int64 and grad.shape == (10, 4)
    coalesced = grad.coalesce()
    assert sorted(coalesced.indices.tolist()) == sorted(touched)
    np.testing.assert_allclose(grad.to_dense(), ref.weight.grad.to_dense().numpy(), rtol=0, atol=1e-14)


def test_embedding_sparse_gradient_updates_only_touched_rows():
    # what an optimizer does with it: rows the batch never saw stay bit-identical
    layer = nn.Embedding(1000, 8, sparse=True)
    before = layer.weight.data.copy()
    layer(tg.Tensor([5, 17, 5])).sum().backward()
    grad = layer.weight.grad.coalesce()
    with tg.no_grad():
        layer.weight.data[grad.indices] -= 0.1 * grad.values
    changed = np.flatnonzero(np.any(layer.weight.data != before, axis=1))
    assert changed.tolist() == [5, 17]


def test_embedding_gradcheck_and_init(rng):
    weight = f64(rng.standard_normal((5, 3)))
    ids = tg.Tensor([[1, 4], [4, 0]])
    assert gradcheck(lambda w: F.embedding(ids, w), [weight])
    assert gradgradcheck(lambda w: F.embedding(ids, w) ** 2, [weight])
    # padding_idx: the row is looked up but, by torch's convention, never gets a gradient
    F.embedding(ids, weight, padding_idx=4).sum().backward()
    assert not weight.grad.data[4].any() and weight.grad.data[1].all()
    tg.manual_seed(0)
    layer = nn.Embedding(2000, 16, padding_idx=-1)
    assert layer.padding_idx == 1999 and not layer.weight.data[1999].any()
    assert abs(layer.weight.data.std() - 1.0) < 0.02  # torch's N(0, 1)


def test_embedding_bad_indices():
    layer = nn.Embedding(5, 2)
    with pytest.raises(IndexError, match="index 5 is out of range for 5 embeddings"):
        layer(tg.Tensor([1, 5]))
    with pytest.raises(IndexError, match="index -1 is out of range"):
        layer(tg.Tensor([-1]))
    with pytest.raises(TypeError, match="indices must be integers, got dtype float32"):
        layer(tg.Tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(5, 2, padding_idx=5)


def test_embedding_from_pretrained_freezes():
    table = tg.Tensor(np.arange(6.0).reshape(3, 2))
    layer = nn.Embedding.from_pretrained(table)
    assert not layer.weight.requires_grad
    np.testing.assert_array_equal(layer(tg.Tensor([2])).data, [[4.0, 5.0]])
    assert nn.Embedding.from_pretrained(table, freeze=False).weight.requires_grad
    assert repr(nn.Embedding(10, 3, padding_idx=0, sparse=True)) == "Embedding(10, 3, padding_idx=0, sparse=True)"


# ----------------------------------------------------------------------------- Flatten / Identity


def test_flatten_and_identity():
    x = tg.randn(2, 3, 4, 5)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0, 1)(x).shape == (6, 4, 5)
    assert nn.Identity()(x) is x


# ----------------------------------------------------------------------------- devices


class _Mixed(nn.Module):
    """One of each layer, for the device test."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.GELU(),
                                      nn.MaxPool2d(2), nn.AvgPool2d(2, padding=1, count_include_pad=False),
                                      nn.Flatten(), nn.Dropout(0.3))
        self.embed = nn.Embedding(7, 4, padding_idx=0)
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.head = nn.Linear(3 * 2 * 2 + 5, 3)

    def forward(self, images, ids):
        _, (h, _) = self.lstm(self.embed(ids))
        return self.head(tg.concat([self.features(images), h[0]], axis=1))


def test_every_layer_runs_on_device_and_matches_cpu(device, rng):
    images, ids, labels = rng.standard_normal((4, 1, 6, 6)), rng.integers(0, 7, (4, 3)), rng.integers(0, 3, 4)
    results = []
    for where in ("cpu", device):
        tg.manual_seed(0)  # same init and same dropout masks (drawn on the CPU) on both devices
        model = _Mixed().to(where)
        loss = nn.CrossEntropyLoss(label_smoothing=0.1)(
            model(tg.Tensor(images, device=where), tg.Tensor(ids, device=where)), tg.Tensor(labels, device=where))
        loss.backward()
        assert all(p.grad.device == p.device == tg.backend.parse_device(where) for p in model.parameters())
        results.append([loss.data] + [p.grad.data for p in model.parameters()])
    for cpu_value, device_value in zip(*results):
        np.testing.assert_allclose(tg.backend.to_numpy(device_value), cpu_value, rtol=1e-4, atol=1e-5)
