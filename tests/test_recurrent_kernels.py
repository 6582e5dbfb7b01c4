"""The recurrent layer op (one op per layer and direction, fused gate kernels, hand-written
BPTT) against its references: the op's array code (``cpu_kernels.enabled = False``, the
GPU's code), the layer unrolled with Tensor ops (``recurrent.FUSED = False``), and torch
with copied weights. Float64 to 1e-10, float32 to 1e-5."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck, gradgradcheck
from tinygrad_sgd.nn import recurrent
from tinygrad_sgd.ops import cpu_kernels

nn = tg.nn
KINDS = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]
SHAPES = [  # (batch, steps, config)
    (3, 5, {"num_layers": 2, "batch_first": True}),
    (1, 1, {"num_layers": 1}),                                   # a batch of 1, a length-1 sequence
    (2, 4, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    (2, 3, {"num_layers": 1, "bias": False}),
]
TOL = {np.float64: 1e-10, np.float32: 1e-5}
PATHS = {  # name -> (cpu_kernels.enabled, recurrent.FUSED)
    "kernels": (True, True),
    "array code": (False, True),
    "Tensor ops": (True, False),
}


def _run(layer, x_np, states_np, seed_weights, dtype, path, monkeypatch):
    enabled, fused = PATHS[path]
    monkeypatch.setattr(cpu_kernels, "enabled", enabled)
    monkeypatch.setattr(recurrent, "FUSED", fused)
    for p in layer.parameters():
        p.grad = None
    x = tg.Tensor(x_np, dtype=dtype, requires_grad=True)
    states = [tg.Tensor(s, dtype=dtype, requires_grad=True) for s in states_np]
    out, final = layer(x, tuple(states) if len(states) == 2 else states[0])
    finals = list(final) if isinstance(final, tuple) else [final]
    total = (out * tg.Tensor(seed_weights[0], dtype=dtype)).sum()
    for t, w in zip(finals, seed_weights[1:]):
        total = total + (t * tg.Tensor(w, dtype=dtype)).sum()
    total.backward()
    return ([out.data] + [f.data for f in finals] + [x.grad.data] + [s.grad.data for s in states]
            + [p.grad.data for p in layer.parameters()])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch,steps,config", SHAPES)
@pytest.mark.parametrize("kind,extra", KINDS)
def test_recurrent_op_equals_array_code_tensor_ops_and_torch(kind, extra, batch, steps, config, dtype, rng,
                                                             monkeypatch):
    torch = pytest.importorskip("torch")
    ref = getattr(torch.nn, kind)(3, 4, **extra, **config)
    ref = ref.double() if dtype == np.float64 else ref
    layer = getattr(nn, kind)(3, 4, **extra, **config, dtype=tg.float64 if dtype == np.float64 else tg.float32)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    shape = (batch, steps, 3) if config.get("batch_first") else (steps, batch, 3)
    x_np = rng.standard_normal(shape).astype(dtype)
    layers = config["num_layers"] * (2 if config.get("bidirectional") else 1)
    states_np = [rng.standard_normal((layers, batch, 4)).astype(dtype) for _ in range(2 if kind == "LSTM" else 1)]
    out_shape = shape[:2] + (4 * (2 if config.get("bidirectional") else 1),)
    seed_weights = [rng.standard_normal(out_shape)] + [rng.standard_normal((layers, batch, 4)) for _ in states_np]
    results = {path: _run(layer, x_np, states_np, seed_weights, dtype, path, monkeypatch) for path in PATHS}
    for path in ("array code", "Tensor ops"):
        for got, expected in zip(results["kernels"], results[path]):
            assert got.dtype == expected.dtype
            np.testing.assert_allclose(got, expected, rtol=TOL[dtype], atol=TOL[dtype], err_msg=path)
    x = torch.tensor(x_np, requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in states_np]
    out, final = ref(x, tuple(states) if kind == "LSTM" else states[0])
    finals = list(final) if kind == "LSTM" else [final]
    total = sum((t * torch.tensor(w, dtype=t.dtype)).sum() for t, w in zip([out] + finals, seed_weights))
    total.backward()
    expected = ([out.detach().numpy()] + [f.detach().numpy() for f in finals] + [x.grad.numpy()]
                + [s.grad.numpy() for s in states] + [p.grad.numpy() for p in ref.parameters()])
    for got, want in zip(results["kernels"], expected):
        np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("kind,extra", KINDS)
def test_recurrent_op_gradcheck_and_second_derivatives(kind, extra, rng):
    layer = getattr(nn, kind)(2, 3, **extra, batch_first=True, dtype=tg.float64)
    x = tg.Tensor(rng.standard_normal((2, 3, 2)), dtype=tg.float64, requires_grad=True)
    h0 = tg.Tensor(rng.standard_normal((1, 2, 3)), dtype=tg.float64, requires_grad=True)
    if kind == "LSTM":
        c0 = tg.Tensor(rng.standard_normal((1, 2, 3)), dtype=tg.float64, requires_grad=True)

        def fn(x, h0, c0, w_ih, w_hh, b):
            out, (h, c) = layer(x, (h0, c0))
            return out, h, c

        inputs = [x, h0, c0, layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_hh_l0]
    else:
        def fn(x, h0, w_ih, w_hh, b):
            out, h = layer(x, h0)
            return out, h

        inputs = [x, h0, layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0]
    assert gradcheck(fn, inputs)
    # create_graph: the op's backward differentiates its Tensor-op composition
    assert gradgradcheck(lambda *a: fn(*a)[0].tanh(), inputs)


def test_create_graph_backward_gives_the_plain_gradient(rng):
    layer = nn.LSTM(3, 4, num_layers=2, batch_first=True, dtype=tg.float64)
    x = tg.Tensor(rng.standard_normal((2, 5, 3)), dtype=tg.float64, requires_grad=True)
    plain = tg.autograd.grad(layer(x)[0].sum(), [x, layer.weight_hh_l1])
    recorded = tg.autograd.grad(layer(x)[0].sum(), [x, layer.weight_hh_l1], create_graph=True)
    assert all(g.requires_grad for g in recorded)
    for a, b in zip(plain, recorded):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first,shape,axis", [(True, (2, 0, 3), 1), (False, (0, 2, 3), 0), (False, (0, 3), 0)])
def test_empty_sequence_is_refused_with_a_clear_error(kind, batch_first, shape, axis):
    layer = getattr(nn, kind)(3, 4, batch_first=batch_first)
    with pytest.raises(ValueError, match=rf"{kind}: the input sequence is empty \(length 0 along axis {axis}"):
        layer(tg.zeros(shape))


def test_initial_state_of_another_dtype_is_refused(rng):
    layer = nn.GRU(3, 4)
    with pytest.raises(TypeError, match="h_0 has dtype float64 but the input has dtype float32"):
        layer(tg.randn(5, 2, 3), tg.zeros((1, 2, 4), dtype=tg.float64))


def test_embedding_backward_kernel_equals_add_at(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    index = rng.integers(0, 6, (4, 7))
    index[0, :3] = 2  # repeats add up
    for padding_idx in (None, 2):
        grads = []
        for enabled in (True, False):
            monkeypatch.setattr(cpu_kernels, "enabled", enabled)
            table = nn.Embedding(6, 5, padding_idx=padding_idx, dtype=tg.float64)
            table.weight.data[...] = np.arange(30.0).reshape(6, 5)
            upstream = np.linspace(-1, 1, 4 * 7 * 5).reshape(4, 7, 5)
            table(tg.Tensor(index)).backward(tg.Tensor(upstream, dtype=tg.float64))
            grads.append(table.weight.grad.data)
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=0)
        ref = torch.nn.Embedding(6, 5, padding_idx=padding_idx).double()
        ref(torch.tensor(index)).backward(torch.tensor(upstream))
        np.testing.assert_allclose(grads[0], ref.weight.grad.numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_recurrent_op_gives_the_cpu_kernels_results_on_every_device(kind, device, rng):
    """On ``cuda`` the op runs its array step functions on CuPy; the CPU runs the kernels."""
    from tinygrad_sgd import backend

    tg.manual_seed(0)
    layer = getattr(nn, kind)(3, 4, num_layers=2, batch_first=True, bidirectional=True, dtype=tg.float64)
    x_np = rng.standard_normal((2, 5, 3))
    results = []
    for where in ("cpu", device):
        layer.to(where)
        for p in layer.parameters():
            p.grad = None
        x = tg.Tensor(x_np, dtype=tg.float64, requires_grad=True, device=where)
        out, final = layer(x)
        h_n = final[0] if kind == "LSTM" else final
        ((out * out).sum() + h_n.sum()).backward()
        results.append([backend.to_numpy(out.data), backend.to_numpy(x.grad.data)]
                       + [backend.to_numpy(p.grad.data) for p in layer.parameters()])
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
