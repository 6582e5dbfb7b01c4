"""The benchmark scripts' own machinery (not their timings): the baselines they time the
engine against must compute the same step, or the ratios they print mean nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygrad_sgd as tg

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def small_mlp(monkeypatch):
    """op_overhead / autograd_floor imported from benchmarks/, on a 12-8-8-5 MLP."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import autograd_floor
    import op_overhead

    monkeypatch.setattr(op_overhead, "SIZES", (12, 8, 8, 5))
    return op_overhead, autograd_floor


def test_minimal_autograd_numpy_and_engine_steps_update_parameters_alike(small_mlp):
    op_overhead, autograd_floor = small_mlp
    rng = np.random.default_rng(3)
    params = op_overhead.make_params(seed=3)
    x = rng.standard_normal((6, 12)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    numpy_model = op_overhead.NumpyMLP(params)
    minimal_model = autograd_floor.MinimalMLP(params)
    engine_model = op_overhead.EngineMLP(params)
    for _ in range(3):  # momentum makes later steps depend on every earlier gradient
        expected_loss = float(numpy_model.step(x, y))
        assert minimal_model.step(x, y) == pytest.approx(expected_loss, rel=1e-5)
        assert engine_model.step(tg.Tensor(x), tg.Tensor(y)).item() == pytest.approx(expected_loss, rel=1e-5)
    for initial, reference, minimal, engine in zip(params, numpy_model.params, minimal_model.params,
                                                   engine_model.params):
        assert np.abs(reference - initial).max() > 1e-4  # the steps did move every parameter
        np.testing.assert_allclose(minimal, reference, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(engine.data, reference, rtol=1e-5, atol=1e-6)


def test_minimal_autograd_gradient_matches_finite_differences(small_mlp):
    _, autograd_floor = small_mlp
    T = autograd_floor.MinimalTensor
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    w_np, b_np = rng.standard_normal((2, 3)), rng.standard_normal(2)
    y = np.array([0, 1, 1, 0])

    def loss_of(w_value):
        w, b = T(w_value, is_param=True), T(b_np, is_param=True)
        loss = -(T(x) @ w.T + b).relu().log_softmax().pick(np.arange(4), y).mean()
        return loss, w

    loss, w = loss_of(w_np)
    loss.backward()
    numerical = np.zeros_like(w_np)
    for i in np.ndindex(w_np.shape):
        step = np.zeros_like(w_np)
        step[i] = 1e-6
        numerical[i] = (float(loss_of(w_np + step)[0].data) - float(loss_of(w_np - step)[0].data)) / 2e-6
    np.testing.assert_allclose(w.grad, numerical, rtol=1e-5, atol=1e-8)


@pytest.mark.skipif(shutil.which("git") is None or not (BENCHMARKS.parent / ".git").exists(),
                    reason="engine_ab reads an earlier revision with git")
def test_engine_ab_runs_an_earlier_revision_beside_this_tree():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "engine_ab.py"), "HEAD", "--batch", "8",
                             "--rounds", "1", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[2:]
    names = [row.rsplit(maxsplit=2)[0] for row in rows]
    assert names == ["numpy", "raw ops, at HEAD", "tg.nn, at HEAD", "raw ops, this tree", "tg.nn, this tree"]
    ratios = [float(row.rsplit(maxsplit=1)[1].rstrip("x")) for row in rows]
    assert ratios[0] == 1.0 and all(r > 0 for r in ratios)


def test_gpu_scripts_run_without_a_gpu():
    """gpu_check.sh is valid bash; gpu_bandwidth.py says there is nothing to measure."""
    if shutil.which("bash") is not None:
        subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_check.sh")], check=True)
    if tg.gpu_available():
        pytest.skip("a GPU is present: benchmarks/gpu_check.sh runs gpu_bandwidth.py for real")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_bandwidth.py")], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU" in result.stdout


@pytest.mark.parametrize("name", ["cnn", "lstm", "mf", "mf_sparse"])
def test_example_models_engine_and_torch_take_the_same_steps(monkeypatch, name):
    """example_models.py's two steps start from the same weights and compute the same
    training step (dropout off), so its ratios compare like with like."""
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import example_models

    shapes = example_models.QUICK[name]
    engine_step, torch_step = example_models.build(name, shapes, dropout=0.0)
    data = example_models.make_data(name, shapes, shapes["batch"] * 3)
    losses = [(engine_step(b), torch_step(b)) for b in example_models._batches(data, shapes["batch"])]
    assert len(losses) == 3 and len({ours for ours, _ in losses}) > 1  # the steps moved the weights
    for ours, theirs in losses:
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)


def test_example_models_quick_mode_prints_every_ratio():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "example_models.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    steps = {line.split()[0]: line.split() for line in lines[2:6]}
    epochs = {line.split()[0]: line.split() for line in lines[7:11]}
    for name in ("cnn", "lstm", "mf", "mf_sparse"):
        assert float(steps[name][3].rstrip("x")) > 0 and float(steps[name][-1].rstrip("x")) > 0
        assert float(epochs[name][-1].rstrip("x")) > 0


def test_example_models_refuses_a_device_it_cannot_use():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "example_models.py"), "--quick", "--device", "tpu"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "argument --device" in result.stderr and "tpu" in result.stderr
