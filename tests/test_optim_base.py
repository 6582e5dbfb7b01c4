"""The Optimizer machinery: construction errors, parameter groups, zero_grad, the fused
switch, state_dict / load_state_dict (plain data, validation, bit-for-bit resume) and the
linear-scaling helpers."""


import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.sparse import SparseRowGrad

ALL = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "SparseAdam"]
DENSE = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]


def param(*shape, value=1.0):
    return tg.Tensor(np.full(shape, value), requires_grad=True)


# ----------------------------------------------------------------------------- bad input

BAD_HYPERPARAMETERS = [
    *[(name, dict(lr=-0.1), "lr") for name in ALL],
    *[(name, dict(lr=float("nan")), "lr") for name in ALL],
    *[(name, dict(lr="0.1"), "lr") for name in ALL],
    *[(name, dict(eps=-1e-8), "eps") for name in ["Adam", "AdamW", "RMSprop", "Adagrad", "SparseAdam"]],
    *[(name, dict(weight_decay=-0.1), "weight_decay") for name in DENSE],
    ("SGD", dict(momentum=-0.9), "momentum"),
    ("RMSprop", dict(momentum=-0.9), "momentum"),
    ("RMSprop", dict(alpha=-0.1), "alpha"),
    ("RMSprop", dict(alpha=1.5), "alpha"),
    ("Adagrad", dict(lr_decay=-0.1), "lr_decay"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    *[(name, dict(betas=(1.0, 0.999)), "beta1") for name in ["Adam", "AdamW", "SparseAdam"]],
    *[(name, dict(betas=(0.9, -0.1)), "beta2") for name in ["Adam", "AdamW", "SparseAdam"]],
    *[(name, dict(betas=(0.9, 1.5)), "beta2") for name in ["Adam", "AdamW", "SparseAdam"]],
    ("Adam", dict(betas=(0.9,)), "betas"),
    ("Adam", dict(betas=0.9), "betas"),
    ("SGD", dict(nesterov=True), "nesterov"),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    ("SparseAdam", dict(lr=0.0), "lr"),
]


@pytest.mark.parametrize("name,kw,word", BAD_HYPERPARAMETERS,
                         ids=[f"{n}-{k}" for n, k, _ in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters_raise_value_error_naming_them(name, kw, word):
    with pytest.raises(ValueError, match=word):
        getattr(tg.optim, name)([param(3)], **kw)


@pytest.mark.parametrize("name", ALL)
def test_bad_hyperparameter_in_a_param_group_is_caught(name):
    with pytest.raises(ValueError, match="lr"):
        getattr(tg.optim, name)([{"params": [param(2)]}, {"params": [param(2)], "lr": -1.0}], lr=0.1)


@pytest.mark.parametrize("name", ALL)
def test_bad_default_is_caught_even_if_every_group_overrides_it(name):
    with pytest.raises(ValueError, match="lr"):
        getattr(tg.optim, name)([{"params": [param(2)], "lr": 0.1}], lr=-1.0)


@pytest.mark.parametrize("name", ALL)
def test_bad_parameter_lists(name):
    cls = getattr(tg.optim, name)
    p = param(2)
    with pytest.raises(ValueError, match="not a leaf"):
        cls([p * 2])
    with pytest.raises(ValueError, match="can only optimize Tensors"):
        cls([p, np.ones(2)])
    with pytest.raises(ValueError, match="more than once"):
        cls([p, p])
    with pytest.raises(ValueError, match="more than one parameter group"):
        cls([{"params": [p]}, {"params": [param(2), p]}])
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])
    with pytest.raises(ValueError, match="single Tensor"):
        cls(p)
    with pytest.raises(ValueError, match="dtype"):
        cls([tg.Tensor(np.arange(3))])
    with pytest.raises(ValueError, match="'params'"):
        cls([{"lr": 0.1}])


def test_add_param_group_checks_before_changing_anything():
    a, b = param(2), param(2)
    opt = tg.optim.SGD([a], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [b, a]})
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [b], "momentum": -1})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": b, "lr": 0.01})  # a lone Tensor is accepted here, like torch
    assert opt.param_groups[1]["params"] == [b]
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[1]["momentum"] == 0.9  # default filled in


def test_parameters_may_come_from_a_generator():
    ps = [param(2), param(3)]
    opt = tg.optim.Adam(p for p in ps)
    assert opt.param_groups[0]["params"] == ps


def test_hyperparameters_after_lr_are_keyword_only():
    with pytest.raises(TypeError):
        tg.optim.SGD([param(2)], 0.1, 0.9)
    assert tg.optim.SGD([param(2)], 0.1).param_groups[0]["lr"] == 0.1  # lr may be positional


@pytest.mark.parametrize("name", ALL)
def test_fused_switch(name):
    """fused=None picks the kernels where they apply; SparseAdam has none (the rest of the
    fused path is tested in test_optim_fused.py)."""
    cls = getattr(tg.optim, name)
    assert cls([param(2)], fused=None).fused is (name != "SparseAdam")
    assert cls([param(2)], fused=False).fused is False
    if name == "SparseAdam":
        with pytest.raises(ValueError, match="no fused update"):
            cls([param(2)], fused=True)
    else:
        assert cls([param(2)], fused=True).fused is True
    with pytest.raises(ValueError, match="fused"):
        cls([param(2)], fused="yes")


def test_gradient_shape_or_type_mismatch_is_reported_before_any_update():
    a, b = param(3), param(3)
    opt = tg.optim.SGD([a, b], lr=0.1)
    a.grad = tg.Tensor(np.ones(3))
    with pytest.raises(RuntimeError, match="shape"):  # refused at assignment, as torch does
        b.grad = tg.Tensor(np.ones(4))
    with pytest.raises(TypeError, match="Tensor, a SparseRowGrad or None"):
        b.grad = np.ones(3)
    opt.step()  # b has no gradient: only a moves
    np.testing.assert_allclose(a.detach().numpy(), 0.9, rtol=1e-6)
    np.testing.assert_array_equal(b.detach().numpy(), 1.0)


# ----------------------------------------------------------------------------- stepping


def test_parameters_without_gradient_are_skipped_and_get_no_state():
    a, b = param(2), param(2)
    opt = tg.optim.Adam([a, b], lr=0.1)
    (a * a).sum().backward()
    opt.step()
    assert b not in opt.state and opt.state[a]["step"] == 1
    np.testing.assert_array_equal(b.detach().numpy(), 1.0)


def test_step_with_closure_returns_its_loss():
    w = param(3)
    opt = tg.optim.SGD([w], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    with tg.no_grad():  # the closure records its graph even when called under no_grad
        loss = opt.step(closure)
    assert loss.item() == pytest.approx(3.0)
    np.testing.assert_allclose(w.detach().numpy(), 0.0)  # w - 0.5 * 2w


def test_zero_grad_to_none_or_to_zeros_in_place():
    w = param(3)
    opt = tg.optim.SGD([w], lr=0.1)
    (w * w).sum().backward()
    grad_array = w.grad.data
    opt.zero_grad(set_to_none=False)
    assert w.grad.data is grad_array and (grad_array == 0).all()
    opt.zero_grad()
    assert w.grad is None
    w.grad = SparseRowGrad(np.array([0]), np.ones((1,), dtype=np.float32).reshape(1), (3,))
    opt.zero_grad(set_to_none=False)
    assert w.grad is None


def test_updates_write_into_views_of_a_flat_buffer():
    """Parameters that are views into one flat array (what the fused kernels update) stay views."""
    flat = np.ones(10)
    a = tg.Tensor.from_array(flat[:4].reshape(2, 2), requires_grad=True)
    b = tg.Tensor.from_array(flat[4:], requires_grad=True)
    for name in DENSE:
        opt = getattr(tg.optim, name)([a, b], lr=0.1)
        before = flat.copy()
        opt.zero_grad()
        ((a * a).sum() + (b * b).sum()).backward()
        opt.step()
        assert np.shares_memory(a.data, flat) and np.shares_memory(b.data, flat)
        assert (flat != before).all(), name


def test_repr_lists_groups_and_hyperparameters():
    text = repr(tg.optim.SGD([{"params": [param(2)]}, {"params": [param(2)], "lr": 0.5}], lr=0.1, momentum=0.9))
    assert "SGD (" in text and "Parameter Group 1" in text and "lr: 0.5" in text and "momentum: 0.9" in text


# ----------------------------------------------------------------------------- checkpoints


def make_run(name, seed=0):
    """Two parameters, the second in its own group, and a loss with a fresh batch per step."""
    r = np.random.default_rng(seed)
    X, y = r.standard_normal((64, 4)), r.standard_normal(64)
    emb0 = r.standard_normal((10, 2))
    w = tg.Tensor(r.standard_normal(4), requires_grad=True)
    b = tg.Tensor(np.zeros(1), requires_grad=True)
    table = tg.Tensor(emb0, requires_grad=True)
    kw = {"SGD": dict(momentum=0.9, nesterov=True), "Adam": dict(amsgrad=True), "AdamW": {},
          "RMSprop": dict(centered=True, momentum=0.5), "Adagrad": dict(lr_decay=0.01), "SparseAdam": {}}[name]
    if name == "SparseAdam":
        opt = tg.optim.SparseAdam([table], lr=0.05, **kw)
        params = [table]
    else:
        opt = getattr(tg.optim, name)([{"params": [w]}, {"params": [b], "lr": 0.02}], lr=0.05, **kw)
        params = [w, b]

    def train(steps, start):
        for k in range(start, start + steps):
            opt.zero_grad()
            if name == "SparseAdam":
                rows = np.array([k % 10, (3 * k) % 10, (3 * k) % 10])
                table.grad = SparseRowGrad(rows, np.ones((3, 2), dtype=np.float32) * (k % 4 - 1.5), (10, 2))
            else:
                idx = slice(8 * (k % 8), 8 * (k % 8) + 8)
                ((tg.Tensor(X[idx]) @ w + b - tg.Tensor(y[idx])) ** 2).mean().backward()
            opt.step()
    return opt, params, train


@pytest.mark.parametrize("name", ALL)
def test_resume_from_state_dict_is_bit_for_bit(name, npz_roundtrip):
    opt, params, train = make_run(name)
    train(20, 0)
    expected = [p.detach().numpy().copy() for p in params]

    opt1, params1, train1 = make_run(name)
    train1(9, 0)
    saved = npz_roundtrip(opt1.state_dict())
    weights = [p.detach().numpy().copy() for p in params1]
    del opt1

    opt2, params2, train2 = make_run(name)
    opt2.param_groups[0]["lr"] = 123.0  # overwritten by the loaded hyperparameters
    for p, w in zip(params2, weights):
        p.data[...] = w
    opt2.load_state_dict(saved)
    train2(11, 9)
    for p, e in zip(params2, expected):
        np.testing.assert_array_equal(p.detach().numpy(), e)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_is_plain_data_and_a_copy(name):
    opt, params, train = make_run(name)
    train(3, 0)
    sd = opt.state_dict()

    def check(value):
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, (int, str))
                check(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                check(v)
        else:
            assert isinstance(value, (np.ndarray, int, float, bool, str)), type(value)
            if isinstance(value, np.ndarray):
                assert value.dtype != object

    check(sd)
    assert sorted(sd["state"]) == list(range(len(sd["state"])))
    assert sd["param_groups"][0]["params"] == [0]
    arrays = [v for entries in sd["state"].values() for v in entries.values() if isinstance(v, np.ndarray)]
    snapshot = [a.copy() for a in arrays]
    train(2, 3)  # the optimizer moves on; the saved dict does not
    for a, s in zip(arrays, snapshot):
        np.testing.assert_array_equal(a, s)


def test_state_dict_layout_matches_torch_names():
    torch = pytest.importorskip("torch")
    for name, kw, keys in [("SGD", dict(momentum=0.9), {"momentum_buffer"}),
                           ("Adam", dict(amsgrad=True), {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
                           ("RMSprop", dict(momentum=0.9, centered=True),
                            {"step", "square_avg", "momentum_buffer", "grad_avg"}),
                           ("Adagrad", {}, {"step", "sum"})]:
        w = param(2)
        opt = getattr(tg.optim, name)([w], lr=0.1, **kw)
        (w * w).sum().backward()
        opt.step()
        tw = torch.nn.Parameter(torch.ones(2))
        topt = getattr(torch.optim, name)([tw], lr=0.1, **kw)
        (tw * tw).sum().backward()
        topt.step()
        ours, theirs = opt.state_dict(), topt.state_dict()
        assert set(ours["state"][0]) == set(theirs["state"][0]) == keys
        common = set(theirs["param_groups"][0]) & set(ours["param_groups"][0])
        assert set(ours["param_groups"][0]) <= common | {"params"}  # every key we save, torch saves too
        for key in common - {"params"}:
            assert ours["param_groups"][0][key] == theirs["param_groups"][0][key], key


def test_load_state_dict_validates_before_changing_anything():
    opt, params, train = make_run("Adam")
    train(2, 0)
    good = opt.state_dict()
    before = opt.state_dict()

    def unchanged():
        now = opt.state_dict()
        assert now["param_groups"] == before["param_groups"]
        for i in before["state"]:
            for k, v in before["state"][i].items():
                np.testing.assert_array_equal(now["state"][i][k], v)

    bad_groups = {"state": good["state"], "param_groups": good["param_groups"][:1]}
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(bad_groups)
    bad_count = {"state": good["state"],
                 "param_groups": [dict(good["param_groups"][0], params=[0, 5]), good["param_groups"][1]]}
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict(bad_count)
    bad_shape = {"state": {0: dict(good["state"][0], exp_avg=np.zeros(7)), 1: good["state"][1]},
                 "param_groups": good["param_groups"]}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad_shape)
    bad_hyper = {"state": good["state"], "param_groups": [dict(good["param_groups"][0], lr=-1.0),
                                                          good["param_groups"][1]]}
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(bad_hyper)
    with pytest.raises(ValueError, match="'state'"):
        opt.load_state_dict({"param_groups": []})
    sgd = tg.optim.SGD([{"params": [param(4)]}, {"params": [param(1)]}], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="saved by SGD, this optimizer is Adam"):
        opt.load_state_dict(sgd)
    unchanged()


def test_loaded_state_is_copied_and_cast_to_the_parameter_dtype():
    w = tg.Tensor(np.ones(3), requires_grad=True)  # float32
    opt = tg.optim.Adam([w])
    (w * w).sum().backward()
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].astype(np.float64)
    opt.load_state_dict(sd)
    assert opt.state[w]["exp_avg"].dtype == np.float32
    assert not np.shares_memory(opt.state[w]["exp_avg_sq"], sd["state"][0]["exp_avg_sq"])
    assert isinstance(opt.state[w]["step"], int)


# ----------------------------------------------------------------------------- linear scaling


def test_scale_lr_linearly():
    assert tg.optim.scale_lr_linearly(0.1, 1024, 256) == pytest.approx(0.4)
    assert tg.optim.scale_lr_linearly(0.1, 32) == pytest.approx(0.0125)  # base batch 256 (Goyal et al.)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            tg.optim.scale_lr_linearly(0.1, bad, 256)
    with pytest.raises(ValueError, match="base_lr"):
        tg.optim.scale_lr_linearly(-0.1, 64, 256)


def test_set_lr_for_batch_size_scales_from_the_base_rate_without_compounding():
    opt = tg.optim.SGD([{"params": [param(2)]}, {"params": [param(2)], "lr": 0.01}], lr=0.1)
    assert tg.optim.set_lr_for_batch_size(opt, 512, 256) == pytest.approx([0.2, 0.02])
    assert tg.optim.set_lr_for_batch_size(opt, 1024, 256) == pytest.approx([0.4, 0.04])  # not 0.8
    assert tg.optim.set_lr_for_batch_size(opt, 128, 256) == pytest.approx([0.05, 0.005])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
    # the base rate travels with the optimizer's checkpoint
    fresh = tg.optim.SGD([{"params": [param(2)]}, {"params": [param(2)], "lr": 7.0}], lr=7.0)
    fresh.load_state_dict(opt.state_dict())
    assert tg.optim.set_lr_for_batch_size(fresh, 256, 256) == pytest.approx([0.1, 0.01])
    with pytest.raises(ValueError, match="base_lrs"):
        tg.optim.set_lr_for_batch_size(opt, 256, 256, base_lrs=[0.1])
    assert tg.optim.set_lr_for_batch_size(opt, 64, 32, base_lrs=[1.0, 2.0]) == pytest.approx([2.0, 4.0])


# ----------------------------------------------------------------------------- checked at step()


def _two_param_opt(name, fused):
    a, b = param(3), param(2)
    kw = dict(momentum=0.9) if name in ("SGD", "RMSprop") else {}
    opt = getattr(tg.optim, name)([{"params": [a]}, {"params": [b]}], lr=0.1, fused=fused, **kw)
    a.grad, b.grad = tg.Tensor(np.ones(3)), tg.Tensor(np.ones(2))
    return opt, a, b


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
@pytest.mark.parametrize("name", DENSE)
def test_hyperparameters_set_after_construction_are_checked_at_step(name, fused, bad):
    opt, a, b = _two_param_opt(name, fused)
    opt.param_groups[1]["lr"] = bad
    with pytest.raises(ValueError, match=r"param_groups\[1\] of .*invalid lr .*checked at step"):
        opt.step()
    np.testing.assert_array_equal(a.detach().numpy(), 1.0)  # group 0 was fine, and still did not move
    assert opt.state == {}
    opt.param_groups[1]["lr"] = 0.1
    opt.step()
    assert (a.detach().numpy() < 1).all() and (b.detach().numpy() < 1).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("factor", [float("nan"), -1.0])
def test_a_scheduler_producing_a_bad_rate_is_refused_at_step(fused, factor):
    opt, a, _ = _two_param_opt("Adam", fused)
    sched = tg.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch == 0 else factor)
    opt.step()
    before = a.detach().numpy().copy()
    state = {k: np.array(v, copy=True) for k, v in opt.state[a].items()}
    sched.step()
    with pytest.raises(ValueError, match="invalid lr"):
        opt.step()
    np.testing.assert_array_equal(a.detach().numpy(), before)
    for k, v in state.items():
        np.testing.assert_array_equal(opt.state[a][k], v)


def test_bad_grad_scale_is_refused_before_any_change():
    opt, a, _ = _two_param_opt("SGD", None)
    for bad in (float("nan"), -1.0, "2", True):
        with pytest.raises(ValueError, match="grad_scale"):
            opt.step(grad_scale=bad)
    np.testing.assert_array_equal(a.detach().numpy(), 1.0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_grad_scale_scales_the_gradient_inside_the_update(fused):
    runs = []
    for scale, grad in ((0.25, 4.0), (1.0, 1.0)):
        w = param(3)
        opt = tg.optim.SGD([w], lr=0.1, momentum=0.9, fused=fused)
        for _ in range(3):
            w.grad = tg.Tensor(np.full(3, grad))
            opt.step(grad_scale=scale)
            np.testing.assert_array_equal(w.grad.data, grad)  # .grad itself is not rescaled
        runs.append(w.detach().numpy())
    np.testing.assert_array_equal(runs[0], runs[1])


# ----------------------------------------------------------------------------- state_dict class and values


def test_state_dict_records_the_class_and_a_mismatch_is_refused():
    a = param(3)
    adam = tg.optim.Adam([a], lr=0.1, weight_decay=0.1)
    a.grad = tg.Tensor(np.ones(3))
    adam.step()
    saved = adam.state_dict()
    assert saved["optimizer"] == "Adam"
    b = param(3)
    adamw = tg.optim.AdamW([b], lr=0.5, weight_decay=0.3)
    with pytest.raises(ValueError, match="saved by Adam, this optimizer is AdamW.*converting_from='Adam'"):
        adamw.load_state_dict(saved)
    assert adamw.param_groups[0]["weight_decay"] == 0.3 and adamw.state == {}
    # the documented, explicit conversion: same state entries, the saved numbers with AdamW's meaning
    adamw.load_state_dict(saved, converting_from="Adam")
    assert adamw.param_groups[0]["weight_decay"] == 0.1 and adamw.param_groups[0]["lr"] == 0.1
    np.testing.assert_array_equal(adamw.state[b]["exp_avg"], adam.state[a]["exp_avg"])
    assert adamw.state_dict()["optimizer"] == "AdamW"
    with pytest.raises(ValueError, match="converting_from='SGD', but the state dict was saved by Adam"):
        adamw.load_state_dict(saved, converting_from="SGD")
    sgd = tg.optim.SGD([param(3)], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="state '(step|exp_avg)' of parameter 0 has no meaning for SGD"):
        sgd.load_state_dict(saved, converting_from="Adam")


def test_loaded_float64_values_beyond_float32_are_refused():
    a = param(3)
    opt = tg.optim.Adam([a], lr=0.1)
    a.grad = tg.Tensor(np.ones(3))
    opt.step()
    saved = opt.state_dict()
    before = {k: np.array(v, copy=True) for k, v in opt.state[a].items()}
    huge = dict(saved, state={0: dict(saved["state"][0], exp_avg_sq=np.array([1.0, 1e300, 2.0]))})
    with pytest.raises(ValueError, match="'exp_avg_sq' of parameter 0 holds 1 value.*beyond the range of float32"):
        opt.load_state_dict(huge)
    for k, v in before.items():
        np.testing.assert_array_equal(opt.state[a][k], v)
    fine = dict(saved, state={0: dict(saved["state"][0], exp_avg_sq=np.array([1.0, np.inf, 2.0]))})
    opt.load_state_dict(fine)  # already non-finite when saved: the cast loses nothing
