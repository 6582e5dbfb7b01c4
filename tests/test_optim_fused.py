"""The fused optimizers (``fused=True``/``None``): flat parameter, gradient and state buffers
updated by one Numba kernel call per parameter group, against the reference update
(``fused=False``) through the public optimizer API.

* every optimizer and option combination, 100 training steps through autograd, float32:
  fused within 1e-6 relative of the reference (float64: 1e-12);
* parameters that skip steps (no gradient), so per-parameter step counts diverge, several
  groups and two dtypes in one group: still the reference's numbers and state;
* one kernel call per step for all parameters of a group (the GPU case skips without one);
* checkpoints: bit-for-bit resume with fused, and the fused and reference state_dicts are
  interchangeable;
* rebinding ``p.data`` (user assignment, ``Module.to``) re-packs, a new shape raises;
* gradients: views after ``zero_grad(set_to_none=False)``, copies otherwise, same numbers;
* sparse gradients, float16, no Numba: reference fallback or a clear error.
"""


import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import kernels
from tinygrad_sgd.optim import flat as flat_module
from tinygrad_sgd.sparse import SparseRowGrad

DENSE = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]
KERNEL = {"SGD": "sgd_update", "Adam": "adam_update", "AdamW": "adam_update", "RMSprop": "rmsprop_update",
          "Adagrad": "adagrad_update"}


def combinations():
    """Every combination of each optimizer's switches (values chosen so each one matters)."""
    out = []
    for momentum, dampening, nesterov in [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.3, False), (0.9, 0.0, True)]:
        for wd in (0.0, 0.1):
            for maximize in (False, True):
                out.append(("SGD", dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                        weight_decay=wd, maximize=maximize)))
    for name in ("Adam", "AdamW"):
        for amsgrad in (False, True):
            for wd in (0.0, 0.1):
                for maximize in (False, True):
                    out.append((name, dict(lr=0.02, betas=(0.85, 0.99), amsgrad=amsgrad, weight_decay=wd,
                                           maximize=maximize)))
    for centered in (False, True):
        for momentum in (0.0, 0.5):
            for wd in (0.0, 0.1):
                for maximize in (False, True):
                    out.append(("RMSprop", dict(lr=0.003, centered=centered, momentum=momentum, weight_decay=wd,
                                                maximize=maximize)))
    for lr_decay in (0.0, 0.01):
        for wd in (0.0, 0.1):
            for initial in (0.0, 0.5):
                for maximize in (False, True):
                    out.append(("Adagrad", dict(lr=0.2, lr_decay=lr_decay, weight_decay=wd,
                                                initial_accumulator_value=initial, maximize=maximize)))
    return out


COMBINATIONS = combinations()
IDS = [name + "-" + ",".join(f"{k}={v}" for k, v in kw.items() if k != "lr") for name, kw in COMBINATIONS]
ONE_EACH = [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
            ("Adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
            ("AdamW", dict(lr=0.02, weight_decay=0.1)),
            ("RMSprop", dict(lr=0.003, centered=True, momentum=0.5, weight_decay=0.1)),
            ("Adagrad", dict(lr=0.2, lr_decay=0.01, weight_decay=0.1))]


def relative_deviation(a, b):
    """Per step, the largest deviation relative to the largest entry (the measure of
    test_optim_reference.py); the worst step."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max()


def least_squares(seed=0):
    r = np.random.default_rng(seed)
    X = r.standard_normal((32, 5)) / np.sqrt(5)
    y = X @ r.standard_normal(5) + 0.1 * r.standard_normal(32)
    return X, y, r.standard_normal(5), np.array([0.5])


def packs(opt, group=0):
    return opt._flat_groups[group].packs


def locate(opt, p):
    """``(pack, index)`` of parameter ``p`` in a fused optimizer."""
    return next(flat.where[id(p)] for flat in opt._flat_groups if id(p) in flat.where)


# ----------------------------------------------------------------------------- fused == reference


def train_least_squares(name, kw, fused, dtype, steps, device="cpu"):
    """Weights and bias in two groups (the bias at a tenth of the rate), trained by autograd."""
    X, y, w0, b0 = least_squares()
    w = tg.Tensor(w0, dtype=dtype, device=device, requires_grad=True)
    b = tg.Tensor(b0, dtype=dtype, device=device, requires_grad=True)
    opt = getattr(tg.optim, name)([{"params": [w]}, {"params": [b], "lr": kw["lr"] / 10}], fused=fused, **kw)
    assert opt.fused is fused
    Xt, yt = tg.Tensor(X, dtype=dtype, device=device), tg.Tensor(y, dtype=dtype, device=device)
    sign = -1.0 if kw.get("maximize") else 1.0
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        (sign * ((Xt @ w + b - yt) ** 2).mean()).backward()
        opt.step()
        trajectory.append(np.concatenate([tg.backend.to_numpy(w.data), tg.backend.to_numpy(b.data)]))
    return np.array(trajectory), opt, (w, b)


@pytest.mark.parametrize("name,kw", COMBINATIONS, ids=IDS)
def test_fused_matches_reference_float32(name, kw):
    fused, opt, (w, _) = train_least_squares(name, kw, True, tg.float32, 100)
    reference, _, _ = train_least_squares(name, kw, False, tg.float32, 100)
    assert fused.dtype == np.float32
    assert np.shares_memory(w.data, packs(opt)[0].param_flat)  # the fused path really ran
    assert np.abs(reference[-1] - reference[0]).max() > 1e-2    # and the run moved
    deviation = relative_deviation(fused, reference)
    assert deviation < 1e-6, f"max relative deviation {deviation:.2e}"


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_matches_reference_float64(name, kw, device):
    fused, _, _ = train_least_squares(name, kw, True, tg.float64, 50, device)
    reference, _, _ = train_least_squares(name, kw, False, tg.float64, 50, device)
    np.testing.assert_allclose(fused, reference, rtol=1e-12, atol=1e-14)


SHAPES = [(4, 3), (3,), (2, 4), (2,), (5,)]


def train_with_gaps(name, kw, fused, steps=60):
    """Five parameters in two groups; parameter 4 is float64 (a second pack in its group),
    parameter 1 gets a gradient only every third step and parameter 3 never before step 20,
    so per-parameter step counts diverge. Gradients are drawn, not computed, so both runs
    see the very same numbers."""
    r = np.random.default_rng(0)
    params = [tg.Tensor(r.standard_normal(s), dtype=tg.float64 if i == 4 else tg.float32, requires_grad=True)
              for i, s in enumerate(SHAPES)]
    opt = getattr(tg.optim, name)([{"params": params[:2]}, {"params": params[2:], "lr": kw["lr"] / 2}],
                                  fused=fused, **kw)
    draw = np.random.default_rng(1)
    trajectory, states = [], []
    for k in range(steps):
        opt.zero_grad()
        for i, p in enumerate(params):
            g = draw.standard_normal(p.shape) * 0.5 + 0.1
            if (i == 1 and k % 3) or (i == 3 and k < 20):
                continue
            p.grad = tg.Tensor(g, dtype=p.dtype)
        opt.step()
        trajectory.append(np.concatenate([p.detach().numpy().ravel() for p in params]))
        sd = opt.state_dict()["state"]
        states.append(np.concatenate([np.ravel(v) for i in sorted(sd) for _, v in sorted(sd[i].items())]))
    return np.array(trajectory), states, opt, params


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_matches_reference_when_parameters_skip_steps(name, kw):
    fused, fused_state, opt, params = train_with_gaps(name, kw, True)
    reference, reference_state, ref_opt, _ = train_with_gaps(name, kw, False)
    assert len(packs(opt, 1)) == 2  # float32 and float64 parameters of one group: two packs
    assert relative_deviation(fused, reference) < 1e-6
    for a, b in zip(fused_state, reference_state):  # every state entry, after every step
        assert a.shape == b.shape
        assert relative_deviation(a[None], b[None]) < 1e-6
    if name != "SGD":  # SGD keeps no step count
        steps = [opt.state[p]["step"] for p in params]
        assert steps == [ref_opt.state[p]["step"] for p in ref_opt.param_groups[0]["params"]
                         + ref_opt.param_groups[1]["params"]]
        assert steps == [60, 20, 60, 40, 60]


def test_parameter_without_any_gradient_is_left_alone():
    a, b = tg.Tensor(np.ones(3), requires_grad=True), tg.Tensor(np.ones(3), requires_grad=True)
    opt = tg.optim.Adam([a, b], lr=0.1, fused=True)
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        (a * a).sum().backward()
        opt.step()
    assert b not in opt.state and b.grad is None
    np.testing.assert_array_equal(b.detach().numpy(), 1.0)
    assert opt.state[a]["step"] == 3


# ----------------------------------------------------------------------------- one call per step


def count_calls(monkeypatch, name):
    calls = []
    original = getattr(kernels, KERNEL[name])

    def spy(p, *args, **kw):
        calls.append(p.size)
        return original(p, *args, **kw)

    monkeypatch.setattr(kernels, KERNEL[name], spy)
    return calls


def mlp(device="cpu"):
    tg.manual_seed(0)
    return tg.nn.Sequential(tg.nn.Linear(6, 8), tg.nn.ReLU(), tg.nn.Linear(8, 8), tg.nn.ReLU(),
                            tg.nn.Linear(8, 3)).to(device)


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_one_kernel_call_per_step_for_all_parameters(name, kw, device, monkeypatch):
    model = mlp(device)
    opt = getattr(tg.optim, name)(model.parameters(), **kw)
    assert opt.fused  # fused=None chose the kernels
    calls = count_calls(monkeypatch, name)
    x = tg.randn(5, 6, device=device)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    total = sum(p.data.size for p in model.parameters())
    assert calls == [total] * 3
    for p in model.parameters():  # every parameter is a view into the one flat buffer
        assert p.data.base is not None


def test_a_gap_in_the_gradients_splits_the_call(monkeypatch):
    model = mlp()
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    calls = count_calls(monkeypatch, "Adam")
    model(tg.randn(5, 6)).sum().backward()
    model[2].weight.grad = None  # a parameter in the middle without gradient
    opt.step()
    sizes = [p.data.size for p in model.parameters()]
    assert calls == [sum(sizes[:2]), sum(sizes[3:])]
    calls.clear()
    opt.zero_grad()
    model(tg.randn(5, 6)).sum().backward()
    opt.step()  # parameter 2 is at step 1, the others at step 2: three runs
    assert calls == [sum(sizes[:2]), sizes[2], sum(sizes[3:])]


def test_small_updates_run_on_one_thread_and_restore_the_setting(monkeypatch):
    """Below cpu.PARALLEL_MIN_SIZE elements the kernel loop runs single-threaded (a parallel
    region after BLAS calls waits for the scheduler); the thread setting is restored."""
    numba = pytest.importorskip("numba")
    from tinygrad_sgd.kernels import cpu

    seen = []
    original = cpu._sgd_loop

    def spy(*args):
        seen.append(numba.get_num_threads())
        return original(*args)

    monkeypatch.setattr(cpu, "_sgd_loop", spy)
    model = mlp()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    before = numba.get_num_threads()
    model(tg.randn(2, 6)).sum().backward()
    opt.step()
    monkeypatch.setattr(cpu, "PARALLEL_MIN_SIZE", 0)
    opt.step()
    assert seen == [1, before] and numba.get_num_threads() == before


# ----------------------------------------------------------------------------- checkpoints


class Run:
    """A model, an optimizer and a stream of batches that depends only on the step number."""

    def __init__(self, name, kw, fused):
        self.model = mlp()
        self.opt = getattr(tg.optim, name)([{"params": list(self.model.parameters())[:4]},
                                            {"params": list(self.model.parameters())[4:], "lr": kw["lr"] / 2}],
                                           fused=fused, **kw)
        r = np.random.default_rng(7)
        self.xs = r.standard_normal((30, 4, 6))
        self.ys = r.integers(0, 3, (30, 4))

    def train(self, start, stop):
        loss_fn = tg.nn.CrossEntropyLoss()
        for k in range(start, stop):
            self.opt.zero_grad()
            loss_fn(self.model(tg.Tensor(self.xs[k])), tg.Tensor(self.ys[k])).backward()
            self.opt.step()
        return self

    def weights(self):
        return [p.detach().numpy().copy() for p in self.model.parameters()]

    def set_weights(self, weights):
        for p, w in zip(self.model.parameters(), weights):
            p.data[...] = w


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_resume_is_bit_for_bit(name, kw, npz_roundtrip):
    expected = Run(name, kw, True).train(0, 20).weights()
    first = Run(name, kw, True).train(0, 9)
    saved, weights = npz_roundtrip(first.opt.state_dict()), first.weights()
    second = Run(name, kw, True)
    second.set_weights(weights)
    second.opt.load_state_dict(saved)
    for p in second.model.parameters():  # the loaded state lives in the flat buffers
        pack, i = locate(second.opt, p)
        for key, value in second.opt.state.get(p, {}).items():
            if isinstance(value, np.ndarray):
                assert value is pack.state_views[key][i]
    second.train(9, 20)
    for got, want in zip(second.weights(), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_and_reference_checkpoints_are_interchangeable(name, kw, npz_roundtrip):
    fused, reference = Run(name, kw, True).train(0, 8), Run(name, kw, False).train(0, 8)
    sd_fused, sd_reference = fused.opt.state_dict(), reference.opt.state_dict()
    assert sd_fused["param_groups"] == sd_reference["param_groups"]
    assert sd_fused["state"].keys() == sd_reference["state"].keys()
    for i, entries in sd_fused["state"].items():
        assert entries.keys() == sd_reference["state"][i].keys()
        for key, value in entries.items():
            other = sd_reference["state"][i][key]
            assert type(value) is type(other)
            if isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and value.shape == other.shape
                np.testing.assert_allclose(value, other, rtol=1e-5, atol=1e-7)
            else:
                assert value == other
    # each checkpoint continues in the other implementation as in its own
    for source in (fused, reference):
        saved, weights = npz_roundtrip(source.opt.state_dict()), source.weights()
        continued = {}
        for target_fused in (True, False):
            run = Run(name, kw, target_fused)
            run.set_weights(weights)
            run.opt.load_state_dict(saved)
            continued[target_fused] = np.concatenate([w.ravel() for w in run.train(8, 20).weights()])
        assert relative_deviation(continued[True][None], continued[False][None]) < 1e-6


def test_a_state_entry_replaced_by_the_user_is_used():
    def run(fused):
        run = Run("Adam", dict(lr=0.01), fused).train(0, 5)
        first = next(iter(run.model.parameters()))
        run.opt.state[first]["exp_avg"] = np.full(first.shape, 0.5, dtype=np.float32)  # a new array
        run.train(5, 10)
        if fused:  # and it has moved into the flat buffer
            pack, i = locate(run.opt, first)
            assert run.opt.state[first]["exp_avg"] is pack.state_views["exp_avg"][i]
        return np.concatenate([w.ravel() for w in run.weights()])

    fused, reference = run(True), run(False)
    assert relative_deviation(fused[None], reference[None]) < 1e-6
    untouched = np.concatenate([w.ravel() for w in Run("Adam", dict(lr=0.01), True).train(0, 10).weights()])
    assert relative_deviation(fused[None], untouched[None]) > 1e-3  # the replacement mattered


# ----------------------------------------------------------------------------- rebinding


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_rebinding_data_is_detected_and_repacked(name, kw):
    def run(fused):
        X, y, w0, b0 = least_squares(1)
        w = tg.Tensor(w0, requires_grad=True)
        b = tg.Tensor(b0, requires_grad=True)
        opt = getattr(tg.optim, name)([w, b], fused=fused, **kw)
        Xt, yt = tg.Tensor(X), tg.Tensor(y)
        old = None
        for k in range(30):
            if k == 10:
                old = w.data
                w.data = np.full(5, 0.25, dtype=np.float32)  # the user rebinds (same shape and dtype)
                old_values = old.copy()
            opt.zero_grad()
            ((Xt @ w + b - yt) ** 2).mean().backward()
            opt.step()
        if fused:
            np.testing.assert_array_equal(old, old_values)  # the old array is not written any more
            assert np.shares_memory(w.data, packs(opt)[0].param_flat)
        return np.concatenate([w.detach().numpy(), b.detach().numpy()])

    fused, reference = run(True), run(False)
    assert relative_deviation(fused[None], reference[None]) < 1e-6


def test_module_to_float64_after_creating_the_optimizer_repacks_and_casts_state():
    def run(fused):
        model = mlp()
        opt = tg.optim.Adam(model.parameters(), lr=0.01, fused=fused)
        x = tg.Tensor(np.random.default_rng(3).standard_normal((5, 6)))
        for k in range(10):
            if k == 5:
                model.to(tg.float64)
                x = x.double()
                if not fused:  # the reference keeps its state arrays; cast them for the comparison
                    for state in opt.state.values():
                        for key in ("exp_avg", "exp_avg_sq"):
                            state[key] = state[key].astype(np.float64)
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        return opt, model, np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])

    opt, model, fused = run(True)
    _, _, reference = run(False)
    pack = packs(opt)[0]
    assert pack.dtype == np.float64 and len(packs(opt)) == 1
    for i, p in enumerate(model.parameters()):
        assert p.dtype == np.float64 and p.data is pack.param_views[i]
        assert opt.state[p]["exp_avg"].dtype == np.float64
        assert np.shares_memory(opt.state[p]["exp_avg"], pack.state_flat["exp_avg"])
    assert relative_deviation(fused[None], reference[None]) < 1e-6


def test_module_to_device_after_creating_the_optimizer(device):
    model = mlp()
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = tg.randn(5, 6)
    model(x).sum().backward()
    opt.step()
    model.to(device)
    opt.zero_grad()
    model(x.to(device)).sum().backward()
    opt.step()
    assert all(pack.device == tg.backend.parse_device(device) for pack in packs(opt))
    for p in model.parameters():
        assert p.data is packs(opt)[0].param_views[packs(opt)[0].index[id(p)]]
        assert tg.backend.device_of(opt.state[p]["momentum_buffer"]) == p.device


def test_rebinding_to_another_shape_raises_and_changes_nothing():
    w = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    opt = tg.optim.SGD([w, tg.Tensor(np.ones(2), requires_grad=True)], lr=0.1)
    w.data = np.ones((3, 2), dtype=np.float32)
    w.grad = tg.Tensor(np.ones((3, 2)))
    with pytest.raises(RuntimeError, match=r"parameter 0 of parameter group 0 .*shape \(3, 2\).*\(2, 3\)"):
        opt.step()
    np.testing.assert_array_equal(w.detach().numpy(), 1.0)


def test_rebinding_to_float16():
    for fused in (True, None):
        w = tg.Tensor(np.ones(3), requires_grad=True)
        opt = tg.optim.Adam([w], lr=0.1, fused=fused)
        w.data = w.data.astype(np.float16)
        w.grad = tg.Tensor(np.ones(3), dtype=tg.float16)
        if fused:
            with pytest.raises(RuntimeError, match="float16"):
                opt.step()
        else:  # automatic: this group goes to the reference update from now on
            opt.step()
            assert opt._flat_groups[0] is None and opt.state[w]["exp_avg"].dtype == np.float16
            np.testing.assert_allclose(w.detach().numpy().astype(np.float64), 0.9, rtol=1e-3)


# ----------------------------------------------------------------------------- gradients


def _linear_step(model, opt, x):
    opt.zero_grad()
    model(x).sum().backward()


def test_a_weight_used_twice_gets_its_buffer_once():
    """A shared weight: the first use writes the buffer, the second gradient is added out
    of place, and the sum is right."""
    tg.manual_seed(0)
    layer = tg.nn.Linear(4, 4)
    opt = tg.optim.SGD(layer.parameters(), lr=0.1)
    x = tg.randn(2, 4)
    for _ in range(2):
        opt.zero_grad()
        layer(layer(x)).sum().backward()
        opt.step()
    w, b, xn = (t.detach().numpy().astype(np.float64) for t in (layer.weight, layer.bias, x))
    opt.zero_grad()
    layer(layer(x)).sum().backward()
    h = xn @ w.T + b  # y = (x W^T + b) W^T + b;  dy/dW = 1^T h + (1 W)^T x,  dy/db = N + N (1 W)
    ones = np.ones((2, 4))
    np.testing.assert_allclose(layer.weight.grad.numpy(), ones.T @ h + (ones @ w).T @ xn, rtol=1e-5)
    np.testing.assert_allclose(layer.bias.grad.numpy(), 2 + (ones @ w).sum(axis=0), rtol=1e-5)


def test_grad_buffers_are_not_used_when_recording_or_for_autograd_grad():
    tg.manual_seed(0)
    model = tg.nn.Linear(3, 2)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    x = tg.randn(4, 3)
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    pack, i = locate(opt, model.weight)
    opt.zero_grad()
    (gw,) = tg.autograd.grad(model(x).sum(), [model.weight])
    assert gw.data is not pack.grad_views[i] and model.weight.grad is None
    model(x).pow(2).sum().backward(create_graph=True)
    assert model.weight.grad.data is not pack.grad_views[i] and model.weight.grad.grad_fn is not None


def test_zero_grad_set_to_none_false_zeroes_views_and_keeps_them():
    model = mlp()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad(set_to_none=False)
    model(tg.randn(2, 6)).sum().backward()
    opt.step()
    views = [p.grad.data for p in model.parameters()]
    assert all(np.shares_memory(v, packs(opt)[0].grad_flat) for v in views)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad.data is v for p, v in zip(model.parameters(), views))
    assert (packs(opt)[0].grad_flat == 0).all()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_a_gradient_assigned_by_the_user_is_used():
    w = tg.Tensor(np.ones(3), requires_grad=True)
    opt = tg.optim.SGD([w], lr=0.5, fused=True)
    opt.zero_grad(set_to_none=False)
    (w * w).sum().backward()
    opt.step()  # w = 1 - 0.5 * 2 = 0
    w.grad = tg.Tensor(np.array([1.0, 2.0, 3.0]))  # replaces the view
    opt.step()
    np.testing.assert_array_equal(w.detach().numpy(), [-0.5, -1.0, -1.5])


def test_clipping_acts_on_the_gradient_views():
    def run(fused):
        model = mlp()
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused)
        for k in range(5):
            opt.zero_grad(set_to_none=False)
            (model(tg.randn(4, 6)) ** 2).sum().backward()
            tg.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            opt.step()
        return [p.detach().numpy() for p in model.parameters()]

    tg.manual_seed(1)
    fused = run(True)
    tg.manual_seed(1)
    reference = run(False)
    for a, b in zip(fused, reference):
        np.testing.assert_array_equal(a, b)  # SGD's fused arithmetic is the reference's, bit for bit


# ----------------------------------------------------------------------------- what the kernels cannot do


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adagrad", dict(lr=0.3))])
def test_sparse_gradients_take_the_reference_with_fused_none(name, kw):
    def run(fused):
        tg.manual_seed(0)
        emb = tg.nn.Embedding(10, 4, sparse=True)
        head = tg.nn.Linear(4, 2)
        opt = getattr(tg.optim, name)(list(emb.parameters()) + list(head.parameters()), fused=fused, **kw)
        assert opt.fused is (fused is None)
        r = np.random.default_rng(0)
        for _ in range(20):
            opt.zero_grad()
            head(emb(tg.Tensor(r.integers(0, 7, (3, 2))))).sum().backward()
            assert isinstance(emb.weight.grad, SparseRowGrad)
            opt.step()
        return np.concatenate([p.detach().numpy().ravel() for p in list(emb.parameters()) + list(head.parameters())])

    fused, reference = run(None), run(False)
    assert relative_deviation(fused[None], reference[None]) < 1e-6
    np.testing.assert_array_equal(fused[-3 * 4 - 10:-10].reshape(-1), reference[-3 * 4 - 10:-10].reshape(-1))


def test_sparse_gradient_with_fused_true_raises_before_any_update():
    a = tg.Tensor(np.ones((4, 2)), requires_grad=True)
    b = tg.Tensor(np.ones((4, 2)), requires_grad=True)
    opt = tg.optim.SGD([a, b], lr=0.1, fused=True)
    a.grad = tg.Tensor(np.ones((4, 2)))
    b.grad = SparseRowGrad(np.array([1]), np.ones((1, 2), dtype=np.float32), (4, 2))
    with pytest.raises(RuntimeError, match="parameter 1 of parameter group 0 has a sparse gradient"):
        opt.step()
    np.testing.assert_array_equal(a.detach().numpy(), 1.0)
    assert opt.state == {}


def test_unsupported_dtype_or_missing_numba(monkeypatch):
    half = tg.Tensor(np.ones(3), dtype=tg.float16, requires_grad=True)
    good = tg.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match=r"Adam\(fused=True\): params\[1\] has dtype float16"):
        tg.optim.Adam([good, half], fused=True)
    assert tg.optim.Adam([good, half]).fused is False
    opt = tg.optim.Adam([good])
    with pytest.raises(ValueError, match=r"params\[0\] of the new group has dtype float16"):
        tg.optim.Adam([good], fused=True).add_param_group({"params": [half]})
    opt.add_param_group({"params": [half]})  # automatic: that group takes the reference
    assert opt.fused and opt._flat_groups[1] is None
    monkeypatch.setattr(flat_module, "_numba_ok", False)
    assert tg.optim.SGD([tg.Tensor(np.ones(2), requires_grad=True)]).fused is False
    with pytest.raises(ValueError, match="Numba"):
        tg.optim.SGD([tg.Tensor(np.ones(2), requires_grad=True)], fused=True)


def test_sparse_adam_has_no_fused_update():
    p = tg.Tensor(np.ones((3, 2)), requires_grad=True)
    assert tg.optim.SparseAdam([p]).fused is False
    with pytest.raises(ValueError, match="SparseAdam.*no fused update"):
        tg.optim.SparseAdam([p], fused=True)


# ----------------------------------------------------------------------------- memory layout


def test_parameters_already_back_to_back_keep_their_memory():
    flat = np.arange(1, 11, dtype=np.float32)
    a = tg.Tensor.from_array(flat[:4].reshape(2, 2), requires_grad=True)
    b = tg.Tensor.from_array(flat[4:], requires_grad=True)
    data = (a.data, b.data)
    opt = tg.optim.Adam([a, b], lr=0.1)
    assert (a.data, b.data) == data and np.shares_memory(packs(opt)[0].param_flat, flat)
    ((a * a).sum() + (b * b).sum()).backward()
    opt.step()
    assert a.data is data[0] and (flat != np.arange(1, 11)).all()


def test_separate_parameters_are_copied_into_one_buffer():
    model = mlp()
    before = [p.detach().numpy().copy() for p in model.parameters()]
    opt = tg.optim.RMSprop(model.parameters())
    pack = packs(opt)[0]
    assert pack.param_flat.size == sum(w.size for w in before)
    for p, w, view in zip(model.parameters(), before, pack.param_views):
        assert p.data is view and np.shares_memory(view, pack.param_flat)
        np.testing.assert_array_equal(p.detach().numpy(), w)


def test_functional_fused_update_rejects_non_contiguous_arrays():
    p = np.ones((4, 4), dtype=np.float32).T[:, :2]
    with pytest.raises(ValueError, match="C-contiguous"):
        tg.optim.adam.adam([p], [np.ones_like(p)], [np.zeros_like(p)], [np.zeros_like(p)], [None], [1], lr=0.1,
                           beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                           decoupled_weight_decay=False, fused=True)
