"""Issue 13, "Reliability": no silent wrong result and no half-changed state.

Each test names the case it holds; docs/reliability.md lists the promises and these
tests beside them. Sizes are tiny: the whole file runs in seconds.
"""

import json
import re

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.train import Callback, NonFiniteError, fit
from tinygrad_sgd.train.checkpoint import (
    FORMAT,
    CheckpointError,
    check_writable,
    load_checkpoint,
)
from tinygrad_sgd.train.guard import StepGuard, all_finite

try:
    import torch
except ImportError:  # pragma: no cover (torch is in the test environment)
    torch = None


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _run(opt_name="SGD", fused=None, batch_size=16, n=64, **opt_kw):
    tg.manual_seed(0)
    model = tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.ReLU(), tg.nn.Linear(8, 2))
    opt = getattr(tg.optim, opt_name)(model.parameters(), fused=fused, **opt_kw)
    loader = tg.data.DataLoader(tg.data.TensorDataset(*_data(n)), batch_size=batch_size, shuffle=True, seed=0)
    return model, opt, loader


def _weights(model):
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def _opt_state(opt):
    return {i: {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in s.items()}
            for i, s in opt.state_dict()["state"].items()}


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            _assert_same(value, b[key])
        else:
            np.testing.assert_array_equal(value, b[key])


# ----------------------------------------------------------------------------- 1. the update is checked


@pytest.mark.parametrize("undo", [False, True], ids=["check", "undo"])
@pytest.mark.parametrize("fused", [None, False], ids=["fused", "reference"])
@pytest.mark.parametrize("opt_name,kw", [("SGD", {"momentum": 0.9}), ("Adam", {})])
def test_a_step_that_makes_a_weight_infinite_raises_and_is_never_checkpointed(tmp_path, fused, opt_name, kw, undo):
    """A finite loss and gradient with a huge learning rate: step 2's update overflows
    float32. fit raises before logging or checkpointing it, with a true message; with
    undo_nonfinite_step=True the weights and optimizer state are those after step 1."""
    model, opt, loader = _run(opt_name, fused, lr=1e-3, **kw)
    # lr 1e-3 for step 1, then 1e39: Adam's update is ~lr per element, SGD's lr * grad.
    sched = tg.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t == 0 else 1e42)

    class Snapshot(Callback):
        def on_step_end(self, state):
            self.weights, self.state = _weights(model), _opt_state(opt)

    snap = Snapshot()
    path = tmp_path / "run.npz"
    message = "the step was undone: the parameters, the optimizer state and the loader" if undo \
        else "the parameters now hold NaN/Inf"
    with pytest.raises(NonFiniteError, match=r"update at epoch 0, step 2 made a parameter NaN or Inf.*" + message) \
            as error:
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, scheduler=sched, scheduler_interval="step",
            checkpoint_path=path, checkpoint_every=1, callbacks=[snap], progress=False, undo_nonfinite_step=undo)
    assert error.value.step == 2 and len(error.value.history) == 1
    weights = _weights(model)
    if undo:
        assert all(np.isfinite(w).all() for w in weights.values())
        _assert_same(weights, snap.weights)
        _assert_same(_opt_state(opt), snap.state)
        assert loader.state_dict()["sample_offset"] == 16  # step 2's batch comes again
    else:  # the message is true: the weights hold the overflow
        assert not all(np.isfinite(w).all() for w in weights.values())
    saved = load_checkpoint(path)  # never the non-finite values
    assert saved["loop"]["step"] == 1
    _assert_same(saved["model"], snap.weights)


def test_the_first_step_failing_is_undone_and_training_can_go_on(tmp_path):
    model, opt, loader = _run("Adam", lr=1e39)
    before = _weights(model)
    path = tmp_path / "run.npz"
    with pytest.raises(NonFiniteError, match="step 1 made a parameter NaN or Inf"):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, checkpoint_path=path, checkpoint_every=1,
            progress=False, undo_nonfinite_step=True)
    _assert_same(_weights(model), before)
    assert opt.state == {} and not path.exists()
    opt.param_groups[0]["lr"] = 1e-3  # go on in the same process, from the same point
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False)
    assert history.steps["batch_size"] == [16, 16, 16, 16] and loader.epoch == 1


def test_step_guard_restores_into_the_same_arrays():
    w = tg.Tensor(np.ones(4, np.float32), requires_grad=True)
    alias = w.data
    opt = tg.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = tg.Tensor(np.ones(4, np.float32))
    opt.step()
    buffer = opt.state[w]["momentum_buffer"]
    values = (w.data.copy(), buffer.copy())
    guard = StepGuard([w], opt)
    guard.save()
    opt.param_groups[0]["lr"] = 1e39
    opt.step()
    assert not guard.finite()
    guard.restore()
    assert w.data is alias and opt.state[w]["momentum_buffer"] is buffer
    np.testing.assert_array_equal(w.data, values[0])
    np.testing.assert_array_equal(buffer, values[1])


def test_all_finite_tells_overflowing_squares_from_inf_and_nan():
    big = np.full(3, 1e200)  # its sum of squares overflows; the values are finite
    assert all_finite([big, np.ones(2, np.float32)])
    assert not all_finite([big, np.array([1.0, np.inf])])
    assert not all_finite([np.array([np.nan], np.float32)])
    assert all_finite([np.zeros(0, np.float32)])


# ----------------------------------------------------------------------------- 2. resume with another batch size


def _ids(loader):
    return [int(i) for _, yb in loader for i in yb.numpy()]


@pytest.mark.parametrize("new_size", [16, 3, 64, 4])
def test_resume_with_another_batch_size_sees_every_sample_once(new_size):
    x = np.arange(64, dtype=np.float32)[:, None]
    ids = np.arange(64)
    a = tg.data.DataLoader(tg.data.TensorDataset(x, ids), batch_size=4, shuffle=True, seed=7)
    whole_epoch = _ids(tg.data.DataLoader(tg.data.TensorDataset(x, ids), batch_size=4, shuffle=True, seed=7))
    it = iter(a)
    seen = [int(i) for _ in range(8) for i in next(it)[1].numpy()]  # interrupted after batch 8
    state = a.state_dict()
    assert state["sample_offset"] == 32 and state["epoch"] == 0
    b = tg.data.DataLoader(tg.data.TensorDataset(x, ids), batch_size=new_size, shuffle=True, seed=7)
    b.load_state_dict(state)
    rest = _ids(b)
    assert seen + rest == whole_epoch  # the same permutation, continued sample by sample
    assert sorted(seen + rest) == list(range(64))
    assert b.epoch == 1


def test_drop_last_with_less_than_a_batch_left_starts_the_next_epoch():
    x = np.arange(10, dtype=np.float32)[:, None]
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, np.arange(10)), batch_size=4, drop_last=True)
    loader.load_state_dict({"seed": None, "epoch": 0, "sample_offset": 8, "num_samples": 10})
    assert loader.state_dict()["epoch"] == 1 and _ids(loader) == list(range(8))
    loader.load_state_dict({"seed": None, "epoch": 0, "sample_offset": 5, "num_samples": 10})
    assert _ids(loader) == [5, 6, 7, 8]


def test_a_state_from_before_sample_offset_loads_as_batches_times_batch_size():
    x = np.arange(12, dtype=np.float32)[:, None]
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, np.arange(12)), batch_size=4)
    loader.load_state_dict({"seed": None, "epoch": 0, "batch_index": 2, "num_samples": 12})
    assert loader.state_dict()["sample_offset"] == 8 and _ids(loader) == [8, 9, 10, 11]


def test_fit_resumed_with_a_new_batch_size_trains_on_every_sample_of_the_epoch(tmp_path):
    class Stop(Callback):
        def on_step_end(self, state):
            if state.step == 3:
                raise KeyboardInterrupt

    path = tmp_path / "run.npz"
    model, opt, loader = _run(lr=0.1, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, checkpoint_path=path, checkpoint_every=1,
            callbacks=[Stop()], progress=False)
    model, opt, loader = _run(lr=0.1, batch_size=16)
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, resume_from=path, progress=False)
    # the checkpoint of step 2 (step 3 was interrupted before its checkpoint): 8 + 48 + 8 = 64 samples
    assert history.steps["batch_size"] == [4, 4, 16, 16, 16, 8]
    assert loader.epoch == 1


# ----------------------------------------------------------------------------- 3. resume is all or nothing


def _checkpoint(tmp_path, opt_name="SGD", n=64):
    path = tmp_path / f"{opt_name}-{n}.npz"
    model, opt, loader = _run(opt_name, lr=0.1, n=n)
    fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, checkpoint_path=path, progress=False)
    return path


@pytest.mark.parametrize("case", ["optimizer", "loader", "scheduler"])
def test_a_refused_resume_changes_nothing(tmp_path, case):
    path = _checkpoint(tmp_path)
    tg.manual_seed(3)  # other weights than the checkpoint's
    model = tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.ReLU(), tg.nn.Linear(8, 2))
    opt = (tg.optim.Adam if case == "optimizer" else tg.optim.SGD)(model.parameters(), lr=0.05)
    loader = tg.data.DataLoader(tg.data.TensorDataset(*_data(48 if case == "loader" else 64)), batch_size=16,
                                shuffle=True, seed=1)
    scheduler = tg.optim.lr_scheduler.StepLR(opt, 1) if case == "scheduler" else None
    it = iter(loader)
    next(it)  # a loader mid-epoch
    before = (_weights(model), opt.state_dict(), loader.state_dict(), tg.rng.get_rng_state())
    expected = {"optimizer": "saved by SGD, this optimizer is Adam", "loader": "samples per epoch",
                "scheduler": "without a scheduler"}[case]
    with pytest.raises(ValueError, match=expected):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=2, scheduler=scheduler, resume_from=path,
            progress=False)
    _assert_same(_weights(model), before[0])
    assert opt.state_dict()["param_groups"] == before[1]["param_groups"]
    assert loader.state_dict() == before[2]
    _assert_same(tg.rng.get_rng_state(), before[3])


@pytest.mark.parametrize("change", [
    lambda loop: loop.pop("epoch_sums"), lambda loop: loop["epoch_sums"].update(loss="x"),
    lambda loop: loop["epoch_sums"].pop("time"), lambda loop: loop.update(step=-1),
    lambda loop: loop.update(lr_scale=float("nan")), lambda loop: loop.update(step=2.5)])
def test_a_malformed_loop_entry_is_refused_before_anything_is_loaded(tmp_path, change):
    from tinygrad_sgd.train.checkpoint import save_checkpoint
    path = _checkpoint(tmp_path)
    saved = load_checkpoint(path)
    change(saved["loop"])
    save_checkpoint(path, saved)
    model, opt, loader = _run(lr=0.1)
    before = _weights(model)
    with pytest.raises(ValueError, match="'loop' entry is malformed"):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=2, resume_from=path, progress=False)
    _assert_same(_weights(model), before)


# ----------------------------------------------------------------------------- 7. and 8.: loads and dtypes


def test_module_load_state_dict_refuses_float64_values_beyond_float32():
    layer = tg.nn.Linear(2, 2)
    before = _weights(layer)
    state = {k: v.astype(np.float64) for k, v in before.items()}
    state["weight"][0, 1] = 1e300
    with pytest.raises(ValueError, match=r"'weight' holds 1 value\(s\) beyond the range of float32"):
        layer.load_state_dict(state)
    _assert_same(_weights(layer), before)
    state["weight"][0, 1] = np.inf  # already infinite: the cast loses nothing
    layer.load_state_dict(state)
    assert np.isinf(layer.weight.data[0, 1])


def test_data_rebinding_goes_through_the_tensor_dtype_check():
    x = tg.Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="unsupported dtype <U1"):
        x.data = np.array(["a", "b", "c"])
    with pytest.raises(TypeError, match="requires grad must hold floating-point"):
        x.data = np.array([1, 2, 3])
    assert x.dtype == np.float32 and x.requires_grad


def test_a_dataset_of_strings_is_refused_by_the_loader():
    class Words(tg.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return "hello"

    loader = tg.data.DataLoader(Words(), batch_size=2)
    with pytest.raises(TypeError, match="DataLoader.*unsupported dtype <U5"):
        next(iter(loader))
    assert loader.state_dict()["sample_offset"] == 0


# ----------------------------------------------------------------------------- checkpoint files


def _hostile(tmp_path, structure: str, **arrays):
    from tinygrad_sgd.train.checkpoint import _FORMAT_KEY, _STRUCTURE_KEY
    path = tmp_path / "hostile.npz"
    np.savez(path, **{_FORMAT_KEY: np.array(FORMAT), _STRUCTURE_KEY: np.array(structure)}, **arrays)
    return path


@pytest.mark.parametrize("structure,message", [
    ('{"__array__": "a7"}', "refers to an array 'a7'"),
    ('{"__dict__": 5}', "bad node '__dict__'"),
    ('{"__dict__": [[1.5, 2]]}', "dict entry"),
    ('{"__float__": "1e999"}', "special float"),
    ('{"a": 1, "b": 2}', "unknown node"),
    ("[" * 50_000 + "]" * 50_000, "nested"),
    ("[" * 150 + "]" * 150, "nested"),
    ("{not json", "truncated or corrupt"),
])
def test_a_hostile_structure_raises_checkpoint_error(tmp_path, structure, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_hostile(tmp_path, structure, a0=np.ones(2)))


def test_random_bytes_are_not_a_checkpoint_and_no_pickle_advice(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(CheckpointError, match="is not a tinygrad_sgd checkpoint") as error:
        load_checkpoint(path)
    assert "pickle" not in str(error.value)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_a_valid_structure_still_loads(tmp_path):
    structure = json.dumps({"__dict__": [["w", {"__array__": "a0"}], [3, {"__tuple__": [1, {"__float__": "nan"}]}]]})
    loaded = load_checkpoint(_hostile(tmp_path, structure, a0=np.arange(3)))
    np.testing.assert_array_equal(loaded["w"], np.arange(3))
    assert loaded[3][0] == 1 and np.isnan(loaded[3][1])


def test_an_unwritable_checkpoint_path_is_found_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        check_writable(blocker / "sub" / "run.npz")
    with pytest.raises(CheckpointError, match="is a folder"):
        check_writable(tmp_path)
    check_writable(tmp_path / "new" / "run.npz")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    model, opt, loader = _run(lr=0.1)
    before = _weights(model)
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, checkpoint_path=blocker / "run.npz",
            progress=False)
    _assert_same(_weights(model), before)
    assert loader.state_dict()["sample_offset"] == 0


# ----------------------------------------------------------------------------- data files


def test_idx_dimensions_that_overflow_int64_are_reported_as_they_are(tmp_path):
    path = tmp_path / "huge.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + (0xFFFFFFFF).to_bytes(4, "big") * 3 + b"\0" * 8)
    with pytest.raises(ValueError, match=r"needs 79228162458924105385300197375 bytes, found 8"):
        tg.data.read_idx(path)


def test_npy_header_with_a_negative_dimension_is_refused(tmp_path):
    path = tmp_path / "neg.npy"
    np.save(path, np.zeros((2, 4), np.float32))
    raw = path.read_bytes().replace(b"(2, 4)", b"(2,-4)")
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="negative dimension"):
        tg.data.MemmapDataset(path)


def test_memmap_negative_index_is_reported_as_given(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(10, dtype=np.float32)[:, None])
    ds = tg.data.MemmapDataset(tmp_path / "x.npy")
    with pytest.raises(IndexError, match="index -11 out of range for 10 rows"):
        ds[-11]
    assert float(ds[-10][0][0]) == 0.0


# ----------------------------------------------------------------------------- losses and softmax against torch


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}, {"weight": [1.0, 2.0, 0.5]}, {"reduction": "none"},
                                {"reduction": "sum"}])
def test_cross_entropy_ignores_a_nan_row_whose_target_is_ignored(kw):
    logits = np.array([[np.nan, 1.0, 0.0], [0.5, 1.0, -1.0], [2.0, np.inf, 0.0]])
    target = np.array([-100, 1, -100])
    t_kw = {k: (torch.tensor(v, dtype=torch.float64) if k == "weight" else v) for k, v in kw.items()}
    g_kw = {k: (tg.Tensor(np.array(v), dtype=np.float64) if k == "weight" else v) for k, v in kw.items()}
    x_t = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(x_t, torch.tensor(target), **t_kw)
    x = tg.Tensor(logits, requires_grad=True, dtype=np.float64)
    got = tg.nn.functional.cross_entropy(x, tg.Tensor(target), **g_kw)
    np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), rtol=1e-12)
    assert np.isfinite(got.detach().numpy()).all()
    got.sum().backward()
    expected.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_t.grad.numpy(), rtol=1e-12)  # NaN rows where torch has them


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("kw", [{}, {"weight": [1.0, 2.0, 0.5]}, {"reduction": "none"}, {"reduction": "sum"}])
def test_nll_loss_ignores_a_nan_row_whose_target_is_ignored(kw):
    logp = np.array([[np.nan, -1.0, -2.0], [-0.5, -1.0, -1.5], [-np.inf, -0.1, -3.0]])
    target = np.array([-100, 1, -100])
    t_kw = {k: (torch.tensor(v, dtype=torch.float64) if k == "weight" else v) for k, v in kw.items()}
    g_kw = {k: (tg.Tensor(np.array(v), dtype=np.float64) if k == "weight" else v) for k, v in kw.items()}
    x_t = torch.tensor(logp, requires_grad=True)
    expected = torch.nn.functional.nll_loss(x_t, torch.tensor(target), **t_kw)
    x = tg.Tensor(logp, requires_grad=True, dtype=np.float64)
    got = tg.nn.functional.nll_loss(x, tg.Tensor(target), **g_kw)
    np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), rtol=1e-12)
    got.sum().backward()
    expected.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_t.grad.numpy(), rtol=1e-12)


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("shape,dim", [((0, 3), 0), ((0, 3), 1), ((3, 0), 1), ((3, 0), 0), ((2, 0, 4), 1)])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_of_an_empty_tensor_is_empty_as_in_torch(shape, dim, name):
    x = tg.Tensor(np.zeros(shape), requires_grad=True)
    out = getattr(tg.nn.functional, name)(x, dim=dim)
    expected = getattr(torch, name)(torch.zeros(shape), dim)
    assert out.shape == tuple(expected.shape) and out.dtype == np.float32
    out.sum().backward()
    assert x.grad.shape == shape


# ----------------------------------------------------------------------------- the soak benchmark's machinery


def test_soak_benchmark_runs_both_modes_and_sees_no_leaked_graph(monkeypatch, capsys):
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import soak

    assert soak.main(["--mode", "rss", "--steps", "120", "--every", "40"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 5 and "minus_history_MB" in out
    assert soak.main(["--mode", "tracemalloc", "--steps", "100"]) == 0
    out = capsys.readouterr().out
    counts = re.search(r"after warm-up: (\(\d+, \d+\)); at the end: (\(\d+, \d+\))", out)
    assert counts and counts.group(1) == counts.group(2)  # no Tensor or Function accumulates
    assert "History rows at the end: 100" in out


def test_a_resume_refused_at_its_last_piece_puts_every_loaded_piece_back(tmp_path):
    """The RNG state is loaded last: when it is refused, the model, optimizer, loader and
    history loaded before it are put back."""
    from tinygrad_sgd.train.checkpoint import save_checkpoint
    path = _checkpoint(tmp_path)
    saved = load_checkpoint(path)
    saved["rng"] = {"bit_generator": "MT19937", "state": {"key": np.zeros(3, np.uint32), "pos": 0}}
    save_checkpoint(path, saved)
    tg.manual_seed(3)
    model = tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.ReLU(), tg.nn.Linear(8, 2))
    opt = tg.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    loader = tg.data.DataLoader(tg.data.TensorDataset(*_data()), batch_size=16, shuffle=True, seed=1)
    before = (_weights(model), opt.state_dict(), loader.state_dict(), tg.rng.get_rng_state())
    with pytest.raises(ValueError, match="PCG64"):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=2, resume_from=path, progress=False)
    _assert_same(_weights(model), before[0])
    assert opt.state_dict()["param_groups"] == before[1]["param_groups"] and opt.state == {}
    assert loader.state_dict() == before[2]
    _assert_same(tg.rng.get_rng_state(), before[3])


def test_module_load_state_dict_into_a_read_only_array_changes_no_key():
    layer = tg.nn.Linear(2, 2)
    before = _weights(layer)
    layer.bias.data.setflags(write=False)
    with pytest.raises(ValueError, match="'bias' holds a read-only array"):
        layer.load_state_dict({k: np.ones_like(v) for k, v in before.items()})
    _assert_same(_weights(layer), before)  # the weight, checked first, was not written either


def test_history_load_state_dict_checks_everything_first():
    history = tg.train.History()
    history.log_step(epoch=0, step=1, loss=0.5, lr=0.1, batch_size=4, grad_norm=1.0)
    before = history.state_dict()
    good = dict(before)
    for bad in ({"steps": before["steps"], "epochs": [5]}, {"steps": dict(before["steps"], loss=[])},
                {"epochs": []}, [1]):
        with pytest.raises(ValueError, match="History.load_state_dict"):
            history.load_state_dict(bad)
        assert history.state_dict() == good


# ----------------------------------------------------------------------------- on every device


def _host(x):
    from tinygrad_sgd import backend
    return np.array(backend.to_numpy(x.detach().data if isinstance(x, tg.Tensor) else x))


@pytest.mark.parametrize("undo", [False, True], ids=["check", "undo"])
def test_the_step_guard_on_every_device(device, undo):
    tg.manual_seed(0)
    model = tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.ReLU(), tg.nn.Linear(8, 2)).to(device)
    opt = tg.optim.Adam(model.parameters(), lr=1e-3)
    sched = tg.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t == 0 else 1e42)
    loader = tg.data.DataLoader(tg.data.TensorDataset(*_data()), batch_size=16, shuffle=True, seed=0, device=device)
    kept = {}

    class Keep(Callback):
        def on_step_end(self, state):
            kept["w"] = [_host(p) for p in model.parameters()]
            kept["state"] = {i: {k: _host(v) if not isinstance(v, (int, float)) else v for k, v in s.items()}
                             for i, s in enumerate(opt.state.values())}

    with pytest.raises(NonFiniteError, match="step 2 made a parameter NaN or Inf"):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, scheduler=sched, scheduler_interval="step",
            callbacks=[Keep()], progress=False, undo_nonfinite_step=undo)
    now = [_host(p) for p in model.parameters()]
    if undo:
        for a, b in zip(now, kept["w"]):
            np.testing.assert_array_equal(a, b)
        for i, s in enumerate(opt.state.values()):
            for k, v in s.items():
                np.testing.assert_array_equal(_host(v) if not isinstance(v, (int, float)) else v, kept["state"][i][k])
        assert all(type(p.data) is type(v) for p in model.parameters() for v in opt.state[p].values()
                   if not isinstance(v, (int, float)))
    else:
        assert not all(np.isfinite(a).all() for a in now)


def test_module_load_state_dict_overflow_on_every_device(device):
    layer = tg.nn.Linear(2, 2).to(device)
    before = [_host(p) for p in layer.parameters()]
    state = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    state["bias"][1] = -1e300
    with pytest.raises(ValueError, match="'bias' holds 1 value"):
        layer.load_state_dict(state)
    for a, b in zip(before, layer.parameters()):
        np.testing.assert_array_equal(a, _host(b))


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_cross_entropy_with_an_ignored_nan_row_on_every_device(device):
    logits = tg.Tensor(np.array([[np.nan, 1.0], [0.5, 1.0]], np.float32), device=device, requires_grad=True)
    target = tg.Tensor(np.array([-100, 1]), device=device)
    loss = tg.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[np.nan, 1.0], [0.5, 1.0]]), torch.tensor([-100, 1]),
                                                 label_smoothing=0.1)
    np.testing.assert_allclose(_host(loss), expected.numpy(), rtol=1e-6)
    empty = tg.nn.functional.log_softmax(tg.Tensor(np.zeros((0, 3), np.float32), device=device), dim=0)
    assert empty.shape == (0, 3) and empty.device == logits.device


def test_loader_resume_with_another_batch_size_on_every_device(device):
    x = np.arange(20, dtype=np.float32)[:, None]
    a = tg.data.DataLoader(tg.data.TensorDataset(x, np.arange(20)), batch_size=3, shuffle=True, seed=2, device=device)
    it = iter(a)
    seen = [int(i) for _ in range(3) for i in _host(next(it)[1])]
    b = tg.data.DataLoader(tg.data.TensorDataset(x, np.arange(20)), batch_size=7, shuffle=True, seed=2, device=device)
    b.load_state_dict(a.state_dict())
    rest = [int(i) for _, yb in b for i in _host(yb)]
    assert sorted(seen + rest) == list(range(20)) and len(rest) == 11


def test_a_scheduler_step_that_raises_changes_nothing():
    p = tg.Tensor(np.ones(3), requires_grad=True)
    opt = tg.optim.SGD([p], lr=0.1, momentum=0.9)

    def factor(t):
        if t == 2:
            raise ZeroDivisionError("the user's function")
        return 1.0 / (t + 1)

    sched = tg.optim.lr_scheduler.LambdaLR(opt, factor)
    sched.step()
    before = (sched.state_dict(), opt.param_groups[0]["lr"])
    with pytest.raises(ZeroDivisionError):
        sched.step()
    assert sched.state_dict() == before[0] and opt.param_groups[0]["lr"] == before[1]

    one_cycle = tg.optim.lr_scheduler.OneCycleLR(tg.optim.SGD([p], lr=0.1, momentum=0.9), max_lr=1.0, total_steps=2)
    one_cycle.step(), one_cycle.step()
    state = one_cycle.state_dict()
    with pytest.raises(ValueError, match="total_steps is 2"):
        one_cycle.step()
    assert one_cycle.state_dict() == state


def test_reduce_lr_on_plateau_names_a_bad_metric_and_changes_nothing():
    opt = tg.optim.SGD([tg.Tensor(np.ones(3), requires_grad=True)], lr=0.1)
    sched = tg.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    sched.step(tg.Tensor(np.array(1.0)))
    state = sched.state_dict()
    for bad in ("abc", None, np.array([1.0, 2.0])):
        with pytest.raises(TypeError, match="ReduceLROnPlateau.step: metrics must be a number"):
            sched.step(bad)
        assert sched.state_dict() == state
