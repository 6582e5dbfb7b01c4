"""The fit loop and the CLI: the main job, resume == uninterrupted, the NaN guard, early
stopping, gradient accumulation, schedules and the compare command."""

import csv
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import cli
from tinygrad_sgd.train import Callback, EarlyStopping, NonFiniteError, fit


def digits_subset(n=256, seed=0):
    (x, y), _ = tg.data.load_digits(split=0.2, seed=seed)
    return x[:n], y[:n]


def build_run(batch_size=16, seed=0):
    """Model, optimizer, per-step scheduler and loader for a small run; everything that
    draws random numbers (init, dropout, shuffling) starts from tg.manual_seed(seed)."""
    tg.manual_seed(seed)
    x, y = digits_subset()
    model = tg.nn.Sequential(tg.nn.Linear(64, 32), tg.nn.ReLU(), tg.nn.Dropout(0.2), tg.nn.Linear(32, 10))
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = tg.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=200)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    return model, opt, sched, loader


class Interrupt(Callback):
    """Simulates a crash (Ctrl-C) right after optimizer step ``at``."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt


def params_of(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("interrupt_at", [5, 16, 23])  # mid-epoch, at an epoch's end, in an accumulation run
def test_resume_after_interruption_is_bitwise_identical(tmp_path, interrupt_at):
    options = dict(epochs=3, scheduler_interval="step", accumulation_steps=1 if interrupt_at != 23 else 2,
                   clip_grad_norm=5.0, progress=False)
    model, opt, sched, loader = build_run()
    full = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, scheduler=sched, **options)
    expected = params_of(model)

    path = tmp_path / "ckpt.npz"
    model, opt, sched, loader = build_run()
    with pytest.raises(KeyboardInterrupt):
        fit(model, tg.nn.CrossEntropyLoss(), opt, loader, scheduler=sched, checkpoint_path=path,
            checkpoint_every=1, callbacks=[Interrupt(interrupt_at)], **options)
    tg.manual_seed(12345)  # the resumed process starts from a different RNG state...
    model, opt, sched, loader = build_run(seed=99)  # ...and differently initialised objects
    resumed = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, scheduler=sched, resume_from=path, **options)
    for key, value in params_of(model).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
    assert resumed.steps["loss"] == full.steps["loss"]
    assert resumed.steps["lr"] == full.steps["lr"]
    assert [r["train_loss"] for r in resumed.epochs] == [r["train_loss"] for r in full.epochs]


def test_nan_guard_stops_before_the_bad_update_and_names_the_step():
    tg.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 3.0, 0.5], dtype=np.float32)[:, None]
    model = tg.nn.Linear(4, 1)
    opt = tg.optim.SGD(model.parameters(), lr=5.0)  # far too large: the loss explodes
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=16)
    snapshots = []

    class Snapshot(Callback):
        def on_step_end(self, state):
            snapshots.append(params_of(model))

    with pytest.raises(NonFiniteError, match=r"non-finite (loss|gradient norm) .* at epoch \d+, step (\d+)") as info:
        fit(model, tg.nn.MSELoss(), opt, loader, epochs=50, callbacks=[Snapshot()], progress=False)
    error = info.value
    assert error.step == len(snapshots) + 1 and len(error.history) == len(snapshots)
    last_good = snapshots[-1]
    for key, value in params_of(model).items():
        assert np.all(np.isfinite(value))
        np.testing.assert_array_equal(value, last_good[key])


def test_early_stopping_stops_and_restores_the_best_weights():
    tg.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8)).astype(np.float32)
    y_train = rng.integers(0, 3, 96)
    y_val = rng.integers(0, 3, 96)  # unrelated labels: validation loss soon gets worse
    model = tg.nn.Sequential(tg.nn.Linear(8, 64), tg.nn.ReLU(), tg.nn.Linear(64, 3))
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    train = tg.data.DataLoader(tg.data.TensorDataset(x, y_train), batch_size=16, shuffle=True, seed=0)
    val = tg.data.DataLoader(tg.data.TensorDataset(x, y_val), batch_size=96)
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, train, epochs=100, val_loader=val, callbacks=[stopper],
                  progress=False)
    assert len(history.epochs) < 100
    val_losses = history.epoch_values("val_loss")
    assert len(val_losses) == stopper.best_epoch + 1 + stopper.patience + 1
    restored = tg.train.evaluate(model, val, tg.nn.CrossEntropyLoss(), metrics=())["loss"]
    assert restored == pytest.approx(min(val_losses), rel=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_micro_batches_give_the_update_of_one_big_batch(k):
    x, y = digits_subset(128)

    def run(batch_size, accumulation):
        tg.manual_seed(0)
        model = tg.nn.Sequential(tg.nn.Linear(64, 16), tg.nn.Tanh(), tg.nn.Linear(16, 10))
        opt = tg.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True, seed=3)
        history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=2, accumulation_steps=accumulation,
                      progress=False)
        return params_of(model), history

    big, big_history = run(32, 1)
    small, small_history = run(32 // k, k)
    assert len(small_history) == len(big_history) == 8  # optimizer steps: 2 epochs x 4
    for key in big:
        np.testing.assert_allclose(small[key], big[key], rtol=2e-5, atol=2e-6, err_msg=key)


def test_schedulers_step_per_epoch_or_per_step_and_plateau_reads_the_validation_loss():
    x, y = digits_subset(64)
    tg.manual_seed(0)
    model = tg.nn.Linear(64, 10)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=16)
    sched = tg.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=3, scheduler=sched, progress=False)
    assert history.steps["lr"] == [0.1] * 4 + [0.05] * 4 + [0.025] * 4
    sched = tg.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=16)  # a fresh one starts at epoch 0
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, scheduler=sched,
                  scheduler_interval="step", progress=False)
    np.testing.assert_allclose(history.steps["lr"], 0.0125 * 0.5 ** np.arange(4))
    opt = tg.optim.SGD(model.parameters(), lr=1e-4)  # too small to improve the loss by 10% an epoch
    plateau = tg.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=0.1)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=16)
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=3, scheduler=plateau, val_loader=loader,
                  progress=False)
    assert history.epoch_values("lr") == [1e-4, 1e-4, 5e-5]


def test_batch_size_schedule_with_linear_lr_scaling():
    x, y = digits_subset(64)
    tg.manual_seed(0)
    model = tg.nn.Linear(64, 10)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    schedule = tg.data.LinearWarmupBatchSize(start=8, end=32, warmup_epochs=2, base_batch_size=32)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size_schedule=schedule)
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=3, scale_lr_with_batch_size=True,
                  progress=False)
    sizes, lrs = history.steps["batch_size"], history.steps["lr"]
    assert sizes == [8] * 8 + [20, 20, 20, 4] + [32] * 2  # 64 samples: the last batch of epoch 1 has 4
    scheduled = [8] * 8 + [20] * 4 + [32] * 2  # the LR follows the schedule's batch size
    np.testing.assert_allclose(lrs, [0.1 * s / 32 for s in scheduled])


def test_bad_arguments_are_rejected_before_training():
    model = tg.nn.Linear(2, 1)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    loader = tg.data.DataLoader(tg.data.TensorDataset(np.ones((4, 2), np.float32), np.ones((4, 1), np.float32)))
    for kwargs, message in ((dict(epochs=0), "epochs"), (dict(epochs=1, accumulation_steps=0), "accumulation_steps"),
                            (dict(epochs=1, clip_grad_norm=-1.0), "clip_grad_norm"),
                            (dict(epochs=1, scheduler_interval="batch"), "scheduler_interval"),
                            (dict(epochs=1, checkpoint_every=2), "checkpoint_path")):
        before = params_of(model)
        with pytest.raises(ValueError, match=message):
            fit(model, tg.nn.MSELoss(), opt, loader, progress=False, **kwargs)
        for key, value in params_of(model).items():
            np.testing.assert_array_equal(value, before[key])


def test_main_job_default_reaches_95_percent_and_writes_its_outputs(tmp_path, capsys):
    assert cli.main(["train", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "epoch 20/20" in out
    with open(tmp_path / "history.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 20 and float(rows[-1]["val_accuracy"]) >= 0.95
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = tg.train.load_checkpoint(tmp_path / "checkpoint.npz")
    assert saved["loader"]["epoch"] == 20


def test_main_job_resumes_from_its_checkpoint(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli.main(["train", "--epochs", "2", "--run-dir", str(first), "--quiet"]) == 0
    assert cli.main(["train", "--epochs", "4", "--run-dir", str(second), "--quiet", "--resume",
                     str(first / "checkpoint.npz")]) == 0
    with open(second / "history.csv") as file:
        assert [int(r["epoch"]) for r in csv.DictReader(file)] == [0, 1, 2, 3]
    assert capsys.readouterr().out == ""


def test_python_dash_m_runs_the_cnn_in_a_small_configuration(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinygrad_sgd", "train", "--model", "cnn", "--epochs", "1",
                             "--optimizer", "adam", "--schedule", "onecycle", "--run-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and (tmp_path / "history.csv").exists()


def test_compare_says_when_there_is_no_gpu(capsys):
    assert cli.main(["compare", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    if not tg.gpu_available():
        assert "no CUDA GPU found" in out and "cpu:" in out
    else:
        assert "speed-up" in out and "largest parameter difference" in out


def test_cli_rejects_bad_values():
    # one line and status 2 for each (tests/test_cli.py checks every option)
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert cli.main(["train", "--optimizer", "lbfgs"]) == 2


def test_bench_names_the_available_benchmarks_when_asked_for_an_unknown_one(capsys):
    assert cli.main(["bench", "no_such_benchmark"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmarks ['no_such_benchmark']" in err and "op_overhead" in err and "mlp_train" in err
