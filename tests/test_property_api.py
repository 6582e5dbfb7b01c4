"""Property-based tests of the public API (hypothesis) against torch.

Random shapes, dtypes, NaN/Inf and out-of-range values go into ops, layers, losses,
optimizers and the DataLoader. Each call must either

* give torch's result (NaN where torch has NaN), or
* raise one of the library's documented exceptions (``ValueError``, ``TypeError``,
  ``RuntimeError``, ``IndexError``), and then leave every input tensor, ``.grad``,
  optimizer state and loader position exactly as it was.

The example budget is small and the search derandomized (``derandomize=True``: the
examples come from a fixed seed), so CI runs the same cases every time, in a few seconds.
To search harder locally: ``TINYGRAD_SGD_PROPERTY_EXAMPLES=500 pytest tests/test_property_api.py``.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tinygrad_sgd as tg

torch = pytest.importorskip("torch")

DOCUMENTED = (ValueError, TypeError, RuntimeError, IndexError)
SETTINGS = settings(max_examples=int(os.environ.get("TINYGRAD_SGD_PROPERTY_EXAMPLES", "25")), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FLOATS = [np.float32, np.float64]
SPECIAL = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0]


@st.composite
def arrays(draw, max_dims=3, min_side=0, max_side=4, special=True):
    """A float32/float64 array of a random shape, mostly normal values, some NaN/Inf/huge."""
    dtype = draw(st.sampled_from(FLOATS))
    shape = tuple(draw(st.lists(st.integers(min_side, max_side), min_size=0, max_size=max_dims)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = rng.standard_normal(shape).astype(dtype)
    if special and array.size and draw(st.booleans()):
        k = draw(st.integers(1, array.size))
        flat = array.reshape(-1)
        flat[rng.choice(array.size, size=k, replace=False)] = rng.choice(SPECIAL, size=k)
    return array


def tg_tensor(array, requires_grad=False):
    return tg.Tensor(array, dtype=array.dtype, requires_grad=requires_grad)


def assert_like_torch(ours, theirs, dtype):
    theirs = theirs.detach().numpy()
    ours = ours.detach().numpy() if isinstance(ours, tg.Tensor) else np.asarray(ours)
    assert ours.shape == theirs.shape
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol, equal_nan=True)


def snapshot(*tensors):
    return [(t.data.copy(), None if t.grad is None else t.grad.data.copy()) for t in tensors]


def assert_unchanged(before, *tensors):
    for (data, grad), t in zip(before, tensors):
        np.testing.assert_array_equal(t.data, data)
        if grad is None:
            assert t.grad is None
        else:
            np.testing.assert_array_equal(t.grad.data, grad)


# ----------------------------------------------------------------------------- ops

UNARY = {
    "exp": (lambda t: t.exp(), torch.exp),
    "log": (lambda t: t.log(), torch.log),
    "tanh": (lambda t: t.tanh(), torch.tanh),
    "sigmoid": (lambda t: t.sigmoid(), torch.sigmoid),
    "relu": (lambda t: t.relu(), torch.relu),
    "neg": (lambda t: -t, lambda t: -t),
    "square": (lambda t: t * t, lambda t: t * t),
}


@SETTINGS
@given(x=arrays(), name=st.sampled_from(sorted(UNARY)))
def test_unary_ops_match_torch_with_nan_and_inf(x, name):
    ours, theirs = UNARY[name]
    with np.errstate(all="ignore"):
        result = ours(tg_tensor(x))
    assert result.dtype == x.dtype
    assert_like_torch(result, theirs(torch.from_numpy(x.copy())), x.dtype)


@SETTINGS
@given(a=arrays(max_dims=2), b=arrays(max_dims=2), op=st.sampled_from(["add", "sub", "mul", "truediv"]))
def test_binary_ops_match_torch_or_refuse_shapes_that_do_not_broadcast(a, b, op):
    b = b.astype(a.dtype)
    ta, tb = tg_tensor(a, requires_grad=True), tg_tensor(b, requires_grad=True)
    before = snapshot(ta, tb)
    try:
        expected = getattr(torch.Tensor, f"__{op}__")(torch.from_numpy(a.copy()), torch.from_numpy(b.copy()))
    except RuntimeError:  # torch: the shapes do not broadcast
        event("refused")
        with pytest.raises(DOCUMENTED):
            getattr(tg.Tensor, f"__{op}__")(ta, tb)
        assert_unchanged(before, ta, tb)
        return
    with np.errstate(all="ignore"):
        result = getattr(tg.Tensor, f"__{op}__")(ta, tb)
    assert_like_torch(result, expected, a.dtype)


REDUCTIONS = ["sum", "mean", "max", "softmax", "log_softmax"]


@SETTINGS
@given(x=arrays(), name=st.sampled_from(REDUCTIONS), axis=st.integers(-4, 3), finite=st.booleans())
def test_reductions_match_torch_or_refuse_the_axis_before_any_change(x, name, axis, finite):
    if finite:
        x = np.asarray(np.nan_to_num(x, nan=0.5, posinf=2.0, neginf=-2.0))
    t = tg_tensor(x, requires_grad=True)
    before = snapshot(t)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    try:
        if name == "max":
            expected = tx.amax(dim=axis)
        elif name in ("softmax", "log_softmax"):
            expected = getattr(torch, name)(tx, axis)
        else:
            expected = getattr(tx, name)(dim=axis)
    except (IndexError, RuntimeError):  # axis out of range, max of an empty axis
        event("refused")
        with pytest.raises(DOCUMENTED):
            getattr(t, name)(axis=axis)
        assert_unchanged(before, t)
        return
    with np.errstate(all="ignore"):
        result = getattr(t, name)(axis=axis)
    assert_like_torch(result, expected, x.dtype)
    if finite and name != "max":  # max's gradient at ties is a convention: torch splits, others pick
        result.sum().backward()
        expected.sum().backward()
        assert_like_torch(t.grad, tx.grad, x.dtype)


# ----------------------------------------------------------------------------- layers and losses


@SETTINGS
@given(batch=st.integers(0, 3), fan_in=st.integers(1, 4), fan_out=st.integers(1, 4), given_in=st.integers(0, 5),
       seed=st.integers(0, 100))
def test_linear_matches_torch_or_names_the_shape(batch, fan_in, fan_out, given_in, seed):
    tg.manual_seed(seed)
    layer = tg.nn.Linear(fan_in, fan_out)
    x = np.random.default_rng(seed).standard_normal((batch, given_in)).astype(np.float32)
    tx = tg_tensor(x, requires_grad=True)
    before = snapshot(tx, layer.weight, layer.bias)
    if given_in != fan_in:
        event("refused")
        with pytest.raises(DOCUMENTED, match=str(fan_in)):
            layer(tx)
        assert_unchanged(before, tx, layer.weight, layer.bias)
        return
    out = layer(tx)
    w = torch.from_numpy(layer.weight.data.copy()).requires_grad_(True)
    b = torch.from_numpy(layer.bias.data.copy())
    expected = torch.nn.functional.linear(torch.from_numpy(x), w, b)
    assert_like_torch(out, expected, np.float32)
    out.sum().backward()
    expected.sum().backward()
    assert_like_torch(layer.weight.grad, w.grad, np.float32)


@SETTINGS
@given(n=st.integers(1, 2), c_in=st.integers(1, 3), c_given=st.one_of(st.none(), st.integers(1, 3)),
       size=st.integers(1, 6),
       kernel=st.integers(1, 4), stride=st.integers(0, 3), padding=st.integers(-1, 2), seed=st.integers(0, 50))
def test_conv2d_matches_torch_or_refuses_before_any_change(n, c_in, c_given, size, kernel, stride, padding, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in if c_given is None else c_given, size, size))
    w = rng.standard_normal((2, c_in, kernel, kernel))
    b = rng.standard_normal(2)
    tx, tw = tg_tensor(x, requires_grad=True), tg_tensor(w, requires_grad=True)
    before = snapshot(tx, tw)
    try:
        expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                              stride=stride, padding=padding)
    except (RuntimeError, ValueError):  # channels differ, kernel larger than the padded input, stride 0, ...
        event("refused")
        with pytest.raises(DOCUMENTED):
            tg.nn.functional.conv2d(tx, tw, tg_tensor(b), stride=stride, padding=padding)
        assert_unchanged(before, tx, tw)
        return
    got = tg.nn.functional.conv2d(tx, tw, tg_tensor(b), stride=stride, padding=padding)
    assert_like_torch(got, expected, np.float64)


@SETTINGS
@given(n=st.integers(0, 4), c=st.integers(1, 4), data=st.data(), name=st.sampled_from(["cross_entropy", "nll_loss"]),
       smoothing=st.sampled_from([0.0, 0.1, 1.0, 1.5, -0.1, float("nan")]),
       reduction=st.sampled_from(["mean", "sum", "none", "avg"]),
       special=st.sampled_from(["none", "anywhere", "ignored row"]))
def test_class_losses_match_torch_or_refuse_before_any_change(n, c, data, name, smoothing, reduction, special):
    """cross_entropy (with label smoothing) and nll_loss, targets in and out of range and
    ignore_index rows, NaN/Inf inputs."""
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    logits = rng.standard_normal((n, c))
    targets = st.one_of(st.integers(0, c - 1), st.just(-100), st.integers(-101, c + 1))  # valid, ignored, any
    target = np.array(data.draw(st.lists(targets, min_size=n, max_size=n)), dtype=np.int64)
    if special != "none" and n:  # a NaN/Inf somewhere, or in a row whose target is ignored
        row = rng.integers(n)
        if special == "ignored row":
            target[row] = -100
        logits[row, rng.integers(c)] = rng.choice([np.nan, np.inf, -np.inf])
    x = tg_tensor(logits, requires_grad=True)
    before = snapshot(x)
    kwargs = {"reduction": reduction}
    if name == "cross_entropy":
        kwargs["label_smoothing"] = smoothing
    # The library checks every argument, even where torch skips a check (an empty batch).
    bad_argument = (name == "cross_entropy" and not 0.0 <= smoothing <= 1.0) or reduction not in ("mean", "sum", "none")
    try:
        if bad_argument:
            raise ValueError("refused by the library's argument checks")
        expected = getattr(torch.nn.functional, name)(torch.from_numpy(logits), torch.from_numpy(target), **kwargs)
    except (IndexError, RuntimeError, ValueError):  # a target out of range, a bad smoothing or reduction
        event("refused")
        with pytest.raises(DOCUMENTED):
            getattr(tg.nn.functional, name)(x, tg.Tensor(target), **kwargs)
        assert_unchanged(before, x)
        return
    got = getattr(tg.nn.functional, name)(x, tg.Tensor(target), **kwargs)
    assert_like_torch(got, expected, np.float64)


PAIRED = ["mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy_with_logits"]


@SETTINGS
@given(a=arrays(max_dims=2), b=arrays(max_dims=2), name=st.sampled_from(PAIRED),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_elementwise_losses_match_torch_or_refuse_different_shapes(a, b, name, reduction):
    """The library refuses input and target shapes that differ (torch broadcasts them with
    a warning: almost always a bug); equal shapes give torch's loss, NaN and Inf included."""
    b = b.astype(a.dtype)
    x = tg_tensor(a, requires_grad=True)
    before = snapshot(x)
    if a.shape != b.shape:
        event("refused")
        with pytest.raises(ValueError, match="shape"):
            getattr(tg.nn.functional, name)(x, tg_tensor(b), reduction=reduction)
        assert_unchanged(before, x)
        return
    if name == "binary_cross_entropy_with_logits":
        b = np.asarray(np.clip(np.nan_to_num(b, nan=0.5), 0, 1), dtype=a.dtype)  # a probability target
    with np.errstate(all="ignore"):
        got = getattr(tg.nn.functional, name)(x, tg_tensor(b), reduction=reduction)
    expected = getattr(torch.nn.functional, name)(torch.from_numpy(a.copy()), torch.from_numpy(b.copy()),
                                                  reduction=reduction)
    assert_like_torch(got, expected, a.dtype)


# ----------------------------------------------------------------------------- optimizers

HYPER = st.sampled_from([0.1, 0.0, 1e-3, -0.1, float("nan"), float("inf"), 2.0])


@SETTINGS
@given(name=st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]), lr=HYPER, other=HYPER,
       grad=arrays(max_dims=0, special=True), fused=st.sampled_from([None, False]), set_later=st.booleans())
def test_optimizer_steps_match_torch_or_refuse_before_any_change(name, lr, other, grad, fused, set_later):
    """``other`` is the optimizer's second hyperparameter (momentum, weight_decay, alpha,
    lr_decay), given at construction or set on the group before the second step."""
    second = {"SGD": "momentum", "Adam": "weight_decay", "AdamW": "weight_decay", "RMSprop": "alpha",
              "Adagrad": "lr_decay"}[name]
    shape = (3,)
    g = np.broadcast_to(grad.astype(np.float64), shape).copy()
    w0 = np.linspace(-1, 1, 3)
    p = tg_tensor(w0.copy(), requires_grad=True)
    tp = torch.from_numpy(w0.copy()).requires_grad_(True)
    ours_cls, theirs_cls = getattr(tg.optim, name), getattr(torch.optim, name)
    kwargs = {"lr": 0.1} if set_later else {"lr": lr, second: other}
    try:
        ours = ours_cls([p], fused=fused, **kwargs)
    except ValueError:  # stricter than torch in places (RMSprop's alpha <= 1, no NaN or inf anywhere)
        event("refused at construction")
        return
    theirs = theirs_cls([tp], **kwargs)  # what the library accepts, torch accepts too
    for step in range(2):
        p.grad, tp.grad = tg_tensor(g.copy()), torch.from_numpy(g.copy())
        if set_later and step == 1:
            ours.param_groups[0].update(lr=lr, **{second: other})
            theirs.param_groups[0].update(lr=lr, **{second: other})
        before = snapshot(p)
        state = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                 for k, v in ours.state.get(p, {}).items()}
        try:
            ours.step()
        except ValueError:
            event("refused at step")
            assert set_later and step == 1  # only the values set by hand can be refused here
            assert_unchanged(before, p)
            assert set(ours.state.get(p, {})) == set(state)
            for k, v in state.items():
                np.testing.assert_array_equal(ours.state[p][k], v)
            return
        with torch.no_grad():
            try:
                theirs.step()
            except (ValueError, RuntimeError):  # pragma: no cover (torch checks only at construction)
                return
        assert_like_torch(p, tp, np.float64)


MUTATIONS = ["none", "class", "lr", "group count", "param count", "state shape", "state huge", "state name",
             "missing key", "state index"]


@SETTINGS
@given(name=st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]), mutation=st.sampled_from(MUTATIONS),
       value=st.sampled_from([float("nan"), -1.0, 1e300, "x", None]))
def test_optimizer_load_state_dict_loads_or_changes_nothing(name, mutation, value):
    """A state dict from an identical optimizer, changed in one place, loads or raises
    (ValueError, TypeError, KeyError) leaving the groups and the state as they were."""
    def build():
        a, b = tg_tensor(np.ones(3), requires_grad=True), tg_tensor(np.ones((2, 2)), requires_grad=True)
        kw = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
        opt = getattr(tg.optim, name)([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, **kw)
        a.grad, b.grad = tg_tensor(np.full(3, 0.5)), tg_tensor(np.full((2, 2), 0.25))
        opt.step()
        return opt

    saved = build().state_dict()
    target = build()
    target.param_groups[0]["lr"] = 0.01  # something a successful load would overwrite
    target.step()
    saved_first = next(iter(saved["state"][0]))
    if mutation == "class":
        saved["optimizer"] = "SGD" if name != "SGD" else "Adam"
    elif mutation == "lr":
        saved["param_groups"][1]["lr"] = value
    elif mutation == "group count":
        saved["param_groups"] = saved["param_groups"][:1]
    elif mutation == "param count":
        saved["param_groups"][0]["params"] = []
    elif mutation == "state shape":
        saved["state"][1][saved_first] = np.ones(5)
    elif mutation == "state huge":
        saved["state"][0] = {k: (np.full(3, 1e300) if isinstance(v, np.ndarray) else v)
                             for k, v in saved["state"][0].items()}
    elif mutation == "state name":
        saved["state"][0]["bogus"] = np.ones(3)
    elif mutation == "missing key":
        del saved["param_groups"][0]["lr"]
    elif mutation == "state index":
        saved["state"][7] = saved["state"][0]
    before = target.state_dict()
    try:
        target.load_state_dict(saved)
        event(f"loaded ({mutation})")
    except (ValueError, TypeError, KeyError):
        event(f"refused ({mutation})")
        after = target.state_dict()
        assert after["param_groups"] == before["param_groups"]
        assert after["state"].keys() == before["state"].keys()
        for i, entries in before["state"].items():
            for k, v in entries.items():
                np.testing.assert_array_equal(after["state"][i][k], v)
        return
    assert mutation in ("none", "state name", "state huge") or (mutation == "lr" and value == 1e300)
    if mutation == "state huge":  # float64 parameters: 1e300 fits, so it loads as it is
        assert np.all(np.asarray(target.state_dict()["state"][0][saved_first]) != 0)


# ----------------------------------------------------------------------------- the DataLoader


@SETTINGS
@given(n=st.integers(0, 20), batch_size=st.one_of(st.none(), st.integers(-1, 25)), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 5), stop=st.integers(0, 30),
       resume_size=st.integers(1, 9))
def test_dataloader_covers_each_sample_once_or_refuses_at_construction(n, batch_size, shuffle, drop_last, seed, stop,
                                                                        resume_size):
    x = np.arange(n, dtype=np.float32)[:, None]
    ds = tg.data.TensorDataset(x, np.arange(n))
    kwargs = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last, "seed": seed if shuffle else None}
    try:
        torch_loader = torch.utils.data.DataLoader(range(n), batch_size=batch_size, drop_last=drop_last)
        torch_batches = len(list(torch_loader)) if batch_size is not None else None
    except ValueError:
        torch_batches = "refused"
    try:
        loader = tg.data.DataLoader(ds, **kwargs)
    except DOCUMENTED:
        event("refused")
        assert n == 0 or torch_batches in ("refused", 0) or batch_size is None or batch_size > n
        return
    ids = [int(i) for _, yb in loader for i in yb.numpy()]
    assert len(set(ids)) == len(ids) and set(ids) <= set(range(n))
    if not drop_last:
        assert sorted(ids) == list(range(n))
    if torch_batches not in (None, "refused"):
        assert len(loader) == torch_batches
    # interrupt after `stop` samples' worth of batches, resume with another batch size
    loader = tg.data.DataLoader(ds, **kwargs)
    whole = [int(i) for _, yb in tg.data.DataLoader(ds, **kwargs) for i in yb.numpy()]
    it = iter(loader)
    seen = []
    while len(seen) < min(stop, len(whole) - 1):
        seen.extend(int(i) for i in next(it)[1].numpy())
    state = loader.state_dict()
    other = tg.data.DataLoader(ds, batch_size=resume_size, shuffle=shuffle, seed=kwargs["seed"])
    other.load_state_dict(state)
    if state["epoch"] == 0:
        rest = [int(i) for _, yb in other for i in yb.numpy()]
        assert seen + rest == list(tg.data.DataLoader(ds, batch_size=n, shuffle=shuffle, seed=kwargs["seed"])
                                   .sampler.indices(0))
    # a bad state is refused and the position stays
    position = other.state_dict()
    bad = dict(state, sample_offset=n + stop)
    with pytest.raises(DOCUMENTED):
        other.load_state_dict(bad)
    assert other.state_dict() == position


# ----------------------------------------------------------------------------- checkpoint files

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.sampled_from(
        ["a0", "a1", "nan", "inf", "x", "__array__", "__dict__", "__tuple__", "__float__"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["__array__", "__dict__", "__tuple__", "__float__", "k"]), children, max_size=2),
    max_leaves=12)


@SETTINGS
@given(structure=JSON)
def test_any_checkpoint_structure_loads_or_raises_checkpoint_error(tmp_path_factory, structure):
    """A hostile file's JSON structure either decodes (into plain data and the file's own
    arrays) or raises CheckpointError: never KeyError, TypeError or RecursionError."""
    import json

    from tinygrad_sgd.train.checkpoint import _FORMAT_KEY, _STRUCTURE_KEY, FORMAT, CheckpointError, load_checkpoint

    path = tmp_path_factory.mktemp("hostile") / "c.npz"
    np.savez(path, **{_FORMAT_KEY: np.array(FORMAT), _STRUCTURE_KEY: np.array(json.dumps(structure)),
                      "a0": np.arange(3)})
    try:
        load_checkpoint(path)
        event("loaded")
    except CheckpointError:
        event("refused")
