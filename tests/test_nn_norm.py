"""BatchNorm1d/2d: training and evaluation against torch (outputs, gradients, running
statistics), finite differences, and bad input."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck, gradgradcheck

F = tg.nn.functional
nn = tg.nn

CASES = [(nn.BatchNorm1d, "BatchNorm1d", (8, 3)), (nn.BatchNorm1d, "BatchNorm1d", (4, 3, 5)),
         (nn.BatchNorm2d, "BatchNorm2d", (4, 3, 5, 2))]


def f64(array, requires_grad=True):
    return tg.Tensor(array, dtype=tg.float64, requires_grad=requires_grad)


def make_pair(ours, name, options, rng):
    torch = pytest.importorskip("torch")
    ref = getattr(torch.nn, name)(3, **options).double()
    layer = ours(3, dtype=tg.float64, **options)
    if options.get("affine", True):  # non-trivial affine parameters, the same in both
        with torch.no_grad():
            ref.weight.copy_(torch.tensor(rng.uniform(0.5, 2.0, 3)))
            ref.bias.copy_(torch.tensor(rng.standard_normal(3)))
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    return layer, ref


def run_both(layer, ref, x_np, rng):
    torch = pytest.importorskip("torch")
    x, x_ref = f64(x_np), torch.tensor(x_np, requires_grad=True)
    out, out_ref = layer(x), ref(x_ref)
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(x.grad.data, x_ref.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(param.grad.data, getattr(ref, name).grad.numpy(), rtol=1e-10, atol=1e-12)
        param.grad = None
        getattr(ref, name).grad = None


@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"affine": False}, {"momentum": 0.3, "eps": 1e-3},
                                     {"track_running_stats": False}])
@pytest.mark.parametrize("ours,name,shape", CASES)
def test_batchnorm_train_then_eval_matches_torch(ours, name, shape, options, rng):
    layer, ref = make_pair(ours, name, options, rng)
    for step in range(3):  # several steps: the running statistics must track torch's
        run_both(layer, ref, rng.standard_normal(shape) * 2 + step, rng)
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(layer.state_dict()[key], value.numpy(), rtol=1e-12, err_msg=key)
    layer.eval()
    ref.eval()
    run_both(layer, ref, rng.standard_normal(shape), rng)
    if options.get("track_running_stats", True):
        assert int(layer.num_batches_tracked.item()) == 3


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_training_gradcheck(affine, rng):
    x = f64(rng.standard_normal((4, 2, 3)))
    weight = f64(rng.uniform(0.5, 2, 2)) if affine else None
    bias = f64(rng.standard_normal(2)) if affine else None
    inputs = [x] + ([weight, bias] if affine else [])

    def fn(x, *affine_params):
        return F.batch_norm(x, None, None, *affine_params, training=True)

    assert gradcheck(fn, inputs)
    # create_graph path: the backward rebuilds the normalisation from x
    assert gradgradcheck(lambda *args: fn(*args).tanh(), inputs)


def test_batchnorm_eval_gradcheck(rng):
    layer = nn.BatchNorm2d(2, dtype=tg.float64)
    layer.running_mean.data[...] = [0.5, -1.0]
    layer.running_var.data[...] = [2.0, 0.3]
    layer.eval()
    x = f64(rng.standard_normal((2, 2, 2, 2)))
    assert gradcheck(lambda x, w, b: F.batch_norm(x, layer.running_mean, layer.running_var, w, b),
                     [x, layer.weight, layer.bias])


def test_batchnorm_normalises_and_keeps_float32(rng):
    layer = nn.BatchNorm1d(4)
    out = layer(tg.Tensor(rng.standard_normal((64, 4)) * 5 + 3))
    assert out.dtype == tg.float32 and layer.running_mean.dtype == tg.float32
    np.testing.assert_allclose(out.data.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.data.std(axis=0), 1, atol=1e-3)
    assert [k for k, _ in layer.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    assert repr(layer) == "BatchNorm1d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"


@pytest.mark.parametrize("layer,shape,message", [
    (nn.BatchNorm2d(3), (4, 3, 5), r"expected 4-D \(N, C, H, W\) input, got shape \(4, 3, 5\)"),
    (nn.BatchNorm1d(3), (4, 3, 5, 5), r"expected 2-D \(N, C\) or 3-D \(N, C, L\) input"),
    (nn.BatchNorm2d(3), (4, 2, 5, 5),
     r"expected 3 channels \(num_features\) at axis 1, got input shape \(4, 2, 5, 5\)"),
    (nn.BatchNorm1d(3), (1, 3), "more than 1 value per channel"),
])
def test_batchnorm_bad_input_changes_nothing(layer, shape, message):
    before = layer.state_dict()
    with pytest.raises(ValueError, match=message):
        layer(tg.randn(*shape))
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_batchnorm_single_sample_is_fine_in_eval():
    layer = nn.BatchNorm1d(3).eval()
    assert layer(tg.randn(1, 3)).shape == (1, 3)


def test_batchnorm_rejects_mixed_dtypes_before_counting_the_batch():
    layer = nn.BatchNorm1d(3)
    with pytest.raises(TypeError, match="float64 does not match weight dtype float32"):
        layer(tg.randn(4, 3, dtype=tg.float64))
    with pytest.raises(TypeError, match="floating point"):
        layer(tg.Tensor(np.ones((4, 3), dtype=np.int64)))
    assert layer.num_batches_tracked.item() == 0
