"""RNN, LSTM, GRU against torch with copied weights (outputs, final states, every
gradient), finite differences, and bad input."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck

nn = tg.nn

CONFIGS = [
    {"num_layers": 1, "batch_first": True},
    {"num_layers": 2, "batch_first": False},
    {"num_layers": 2, "batch_first": True, "bidirectional": True},
    {"num_layers": 1, "batch_first": True, "bias": False},
]
KINDS = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]


def f64(array, requires_grad=True):
    return tg.Tensor(array, dtype=tg.float64, requires_grad=requires_grad)


def pair(kind, extra, config):
    torch = pytest.importorskip("torch")
    ref = getattr(torch.nn, kind)(3, 4, **extra, **config).double()
    layer = getattr(nn, kind)(3, 4, **extra, **config, dtype=tg.float64)
    assert [k for k, _ in layer.named_parameters()] == [k for k, _ in ref.named_parameters()]
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    return layer, ref


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind,extra", KINDS)
@pytest.mark.parametrize("with_state", [False, True])
def test_recurrent_layers_match_torch(kind, extra, config, with_state, rng):
    torch = pytest.importorskip("torch")
    layer, ref = pair(kind, extra, config)
    batch, steps = 2, 5
    shape = (batch, steps, 3) if config.get("batch_first") else (steps, batch, 3)
    x_np = rng.standard_normal(shape)
    x, x_ref = f64(x_np), torch.tensor(x_np, requires_grad=True)
    layers = config["num_layers"] * (2 if config.get("bidirectional") else 1)
    states_np = [rng.standard_normal((layers, batch, 4)) for _ in range(2 if kind == "LSTM" else 1)]
    states = [f64(s) for s in states_np]
    states_ref = [torch.tensor(s, requires_grad=True) for s in states_np]
    if with_state:
        hx = tuple(states) if kind == "LSTM" else states[0]
        hx_ref = tuple(states_ref) if kind == "LSTM" else states_ref[0]
        out, final = layer(x, hx)
        out_ref, final_ref = ref(x_ref, hx_ref)
    else:
        out, final = layer(x)
        out_ref, final_ref = ref(x_ref)
    finals = list(final) if kind == "LSTM" else [final]
    finals_ref = list(final_ref) if kind == "LSTM" else [final_ref]
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=1e-12, atol=1e-13)
    for ours, theirs in zip(finals, finals_ref):
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-12, atol=1e-13)
    # one scalar that depends on the output and on every final state
    weights = [rng.standard_normal(t.shape) for t in [out] + finals]
    total = sum(((t * tg.Tensor(w, dtype=tg.float64)).sum() for t, w in zip([out] + finals, weights)), tg.zeros(
        (), dtype=tg.float64))
    total_ref = sum((t * torch.tensor(w)).sum() for t, w in zip([out_ref] + finals_ref, weights))
    total.backward()
    total_ref.backward()
    np.testing.assert_allclose(x.grad.data, x_ref.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(param.grad.data, getattr(ref, name).grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    if with_state:
        for ours, theirs in zip(states, states_ref):
            np.testing.assert_allclose(ours.grad.data, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_lstm_gradcheck(rng):
    layer = nn.LSTM(2, 3, num_layers=2, batch_first=True, dtype=tg.float64)
    x = f64(rng.standard_normal((2, 3, 2)))
    h0, c0 = f64(rng.standard_normal((2, 2, 3))), f64(rng.standard_normal((2, 2, 3)))

    def fn(x, h0, c0, w_ih, w_hh1):
        out, (h, c) = layer(x, (h0, c0))
        return out, h, c

    assert gradcheck(fn, [x, h0, c0, layer.weight_ih_l0, layer.weight_hh_l1])


def test_lstm_unbatched_and_gate_layout(rng):
    layer = nn.LSTM(3, 5, batch_first=True)
    assert layer.weight_ih_l0.shape == (20, 3) and layer.weight_hh_l0.shape == (20, 5)
    x = tg.Tensor(rng.standard_normal((7, 3)))
    out, (h, c) = layer(x)
    assert out.shape == (7, 5) and h.shape == (1, 5) and c.shape == (1, 5)
    batched, (hb, _) = layer(x.unsqueeze(0))
    np.testing.assert_allclose(out.data, batched.data[0], rtol=1e-6)
    np.testing.assert_allclose(h.data, out.data[-1:], rtol=1e-6)  # h_n is the last output
    bound = 1 / np.sqrt(5)  # torch's U(-1/sqrt(H), 1/sqrt(H)) for every parameter
    assert all(np.abs(p.data).max() <= bound for p in layer.parameters())
    assert repr(layer) == "LSTM(3, 5, batch_first=True)"


def test_recurrent_dropout_between_layers_is_active_in_training_only(rng):
    tg.manual_seed(0)
    layer = nn.GRU(3, 4, num_layers=2, dropout=0.5, batch_first=True)
    x = tg.Tensor(rng.standard_normal((2, 4, 3)))
    first, second = layer(x)[0].data, layer(x)[0].data
    assert not np.allclose(first, second)
    layer.eval()
    np.testing.assert_array_equal(layer(x)[0].data, layer(x)[0].data)


def test_recurrent_bad_input():
    layer = nn.LSTM(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"last dimension 3 \(input_size\), got shape \(2, 5, 4\)"):
        layer(tg.randn(2, 5, 4))
    with pytest.raises(ValueError, match="3-D input"):
        layer(tg.randn(2, 5, 3, 1))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(1, 2, 4\)"):
        layer(tg.randn(2, 5, 3), (tg.randn(1, 3, 4), tg.randn(1, 2, 4)))
    with pytest.raises(TypeError, match="tuple"):
        layer(tg.randn(2, 5, 3), tg.randn(1, 2, 4))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
