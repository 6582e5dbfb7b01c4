"""Module mechanics: registration order, modes, gradients, devices and dtypes, state dicts
(round trips, strict checks that change nothing on failure), repr, Sequential."""

import copy
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_sgd as tg

nn = tg.nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(tg.ones(3))
        self.inner = nn.Linear(3, 2)
        self.register_buffer("count", tg.zeros((), dtype=tg.int64))
        self.register_buffer("scratch", tg.zeros(2), persistent=False)
        self.offset = nn.Parameter(tg.zeros(2))

    def forward(self, x):
        return self.inner(x * self.scale) + self.offset


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def test_parameters_follow_registration_order():
    block = Block()
    assert [name for name, _ in block.named_parameters()] == ["scale", "offset", "inner.weight", "inner.bias"]
    assert [p.shape for p in block.parameters()] == [(3,), (2,), (2, 3), (2,)]
    assert [name for name, _ in block.named_buffers()] == ["count", "scratch"]
    assert [name for name, _ in block.named_children()] == ["inner"]
    assert [type(m).__name__ for m in block.modules()] == ["Block", "Linear"]
    assert all(isinstance(p, tg.Tensor) and p.requires_grad for p in block.parameters())


def test_state_dict_keys_match_torch_and_hold_numpy_copies():
    torch = pytest.importorskip("torch")
    ours = mlp()
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                 torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    assert all(type(v) is np.ndarray for v in state.values())
    assert state["1.num_batches_tracked"].dtype == np.int64
    ours[0].weight.data[...] = 7.0
    assert not (state["0.weight"] == 7.0).any()  # a copy, not a view
    assert "scratch" not in Block().state_dict()  # non-persistent buffer


def test_state_dict_round_trip_restores_identical_outputs(tmp_path):
    tg.manual_seed(0)
    source = mlp()
    source.train()
    source(tg.randn(16, 4))  # move the running statistics away from their start
    np.savez(tmp_path / "model.npz", **source.state_dict())
    tg.manual_seed(1)
    target = mlp()
    x = tg.randn(5, 4)
    source.eval()
    target.eval()
    assert not np.array_equal(source(x).data, target(x).data)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as saved:
        result = target.load_state_dict(dict(saved))
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(source(x).data, target(x).data)


def test_load_state_dict_copies_into_the_same_arrays():
    layer = nn.Linear(2, 2)
    weight, array = layer.weight, layer.weight.data
    layer.load_state_dict({"weight": np.ones((2, 2)), "bias": tg.Tensor([1.0, 2.0])})
    assert layer.weight is weight and layer.weight.data is array
    assert layer.weight.dtype == tg.float32  # float64 input cast to the parameter's dtype
    np.testing.assert_array_equal(layer.bias.data, [1.0, 2.0])


def test_load_state_dict_wrong_shape_names_key_and_shapes_and_changes_nothing():
    model = mlp()
    before = model.state_dict()
    bad = dict(before)
    bad["0.bias"] = np.zeros(8)  # fine, but comes before the bad key and must not be applied
    bad["4.weight"] = np.zeros((3, 9))
    with pytest.raises(RuntimeError, match=r"'4\.weight'.*shape \(3, 9\).*shape \(3, 8\)"):
        model.load_state_dict(bad)
    with pytest.raises(RuntimeError, match=r"'4\.weight'"):
        model.load_state_dict(bad, strict=False)  # shapes are checked even when not strict
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_load_state_dict_strict_keys():
    model = mlp()
    state = model.state_dict()
    del state["0.bias"]
    state["extra.weight"] = np.zeros(1)
    with pytest.raises(RuntimeError, match=r"missing keys: '0\.bias'.*unexpected keys: 'extra\.weight'"):
        model.load_state_dict(state)
    state["4.bias"] = np.full(3, 5.0)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["0.bias"] and result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(model[4].bias.data, 5.0)
    with pytest.raises(TypeError, match="mapping"):
        model.load_state_dict([1, 2])
    with pytest.raises(TypeError, match="num_batches_tracked"):
        model.load_state_dict({**model.state_dict(), "1.num_batches_tracked": np.array(1.5)})


def test_train_eval_and_zero_grad():
    model = mlp()
    assert model.training and all(m.training for m in model.modules())
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.train()
    model(tg.randn(4, 4)).sum().backward()
    grads = {id(p): p.grad.data for p in model.parameters()}
    model.zero_grad(set_to_none=False)
    for p in model.parameters():
        assert p.grad.data is grads[id(p)] and not p.grad.data.any()  # same arrays, zeroed
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())


def test_to_dtype_keeps_parameter_objects(rng):
    model = mlp().eval()
    params = list(model.parameters())
    x = rng.standard_normal((3, 4))
    expected = model(tg.Tensor(x)).data
    assert model.double() is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # an optimizer's references stay valid
    assert all(p.dtype == tg.float64 for p in model.parameters())
    assert model[1].running_var.dtype == tg.float64 and model[1].num_batches_tracked.dtype == tg.int64
    np.testing.assert_allclose(model(tg.Tensor(x, dtype=tg.float64)).data, expected, rtol=1e-5)
    with pytest.raises(TypeError, match="floating-point"):
        model.to(dtype=tg.int32)


def test_to_device_moves_in_place(device, rng):
    model = mlp()
    params = list(model.parameters())
    model(tg.randn(4, 4)).sum().backward()  # gradients must move along with the parameters
    model.eval()
    x = rng.standard_normal((3, 4)).astype(np.float32)
    expected = model(tg.Tensor(x)).data
    assert model.to(device) is model
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert all(p.device == tg.backend.parse_device(device) for p in model.parameters())
    assert all(p.grad.device == p.device for p in model.parameters())
    out = model(tg.Tensor(x, device=device))
    np.testing.assert_allclose(tg.backend.to_numpy(out.data), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(model.state_dict()["0.weight"], np.ndarray)


def test_registration_rules():
    class Early(nn.Module):
        def __init__(self):
            self.weight = nn.Parameter(tg.ones(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()
    layer = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign Tensor as parameter 'weight'"):
        layer.weight = tg.ones(2, 2)
    layer.bias = None
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    with pytest.raises(KeyError, match="already exists"):
        layer.register_buffer("in_features", tg.ones(1))
    with pytest.raises(TypeError, match="Parameter or None"):
        layer.register_parameter("extra", tg.ones(1))
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = layer.missing
    del layer.weight
    assert list(layer.parameters()) == []


def test_tied_parameters_are_listed_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(model.parameters())) == 2
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # torch lists both names


def test_parameter_wraps_without_copying():
    array = np.zeros(3, dtype=np.float64)
    param = nn.Parameter(array)
    assert param.data is array and param.requires_grad and param.dtype == tg.float64
    tensor = tg.ones(2)
    assert nn.Parameter(tensor).data is tensor.data
    assert nn.Parameter([1, 2]).dtype == tg.float32
    assert not nn.Parameter(tg.ones(2), requires_grad=False).requires_grad
    with pytest.raises(TypeError, match="floating point"):
        nn.Parameter(tg.Tensor([1, 2]))
    assert repr(nn.Parameter(tg.ones(1))).startswith("Parameter containing:")


def test_deepcopy_gives_an_independent_module():
    model = mlp()
    clone = copy.deepcopy(model)
    clone[0].weight.data[...] = 0
    assert model[0].weight.data.any()
    assert isinstance(clone[0].weight, nn.Parameter)


def test_repr_matches_torch():
    torch = pytest.importorskip("torch")
    ours = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Tanh(), nn.Linear(3, 1, bias=False)))
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
                                 torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(3, 1, bias=False)))
    assert repr(ours) == repr(theirs)


def test_sequential_container():
    model = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 3)), ("act", nn.ReLU())]))
    assert list(model.state_dict()) == ["fc.weight", "fc.bias"]
    assert len(model) == 2 and isinstance(model[-1], nn.ReLU)
    assert isinstance(model[:1], nn.Sequential) and len(model[:1]) == 1
    model.append(nn.Linear(3, 1))
    assert model(tg.randn(4, 2)).shape == (4, 1)
    with pytest.raises(IndexError, match="out of range"):
        model[3]
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    modules = nn.ModuleList([nn.Linear(1, 1), nn.Linear(1, 1)])
    assert [n for n, _ in modules.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_forward_must_be_defined():
    with pytest.raises(NotImplementedError, match="Empty does not define forward"):
        type("Empty", (nn.Module,), {})()(1)
