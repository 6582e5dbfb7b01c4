"""Metrics against hand-computed confusion matrices; checkpoint files: round trip,
atomicity, and clear errors for truncated or foreign files."""

import os

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.train import metrics
from tinygrad_sgd.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# 3 classes, 8 samples. Worked out by hand:
#   true 0: predicted 0, 0, 1        -> row [2, 1, 0]
#   true 1: predicted 1, 2           -> row [0, 1, 1]
#   true 2: predicted 2, 2, 0        -> row [1, 0, 2]
TARGETS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 0, 1, 1, 2, 2, 2, 0])
MATRIX = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])
# precision = TP / column sum: [2/3, 1/2, 2/3];  recall = TP / row sum: [2/3, 1/2, 2/3]
PRECISION = np.array([2 / 3, 1 / 2, 2 / 3])
RECALL = np.array([2 / 3, 1 / 2, 2 / 3])


def test_confusion_matrix_and_derived_metrics_match_hand_computation():
    np.testing.assert_array_equal(metrics.confusion_matrix(PREDICTED, TARGETS), MATRIX)
    assert metrics.accuracy(PREDICTED, TARGETS) == 5 / 8
    np.testing.assert_allclose(metrics.precision(PREDICTED, TARGETS, average=None), PRECISION)
    np.testing.assert_allclose(metrics.recall(PREDICTED, TARGETS, average=None), RECALL)
    f1 = 2 * PRECISION * RECALL / (PRECISION + RECALL)
    np.testing.assert_allclose(metrics.f1_score(PREDICTED, TARGETS, average=None), f1)
    assert metrics.f1_score(PREDICTED, TARGETS) == pytest.approx(f1.mean())


def test_metrics_take_logits_and_tensors_and_handle_absent_classes():
    logits = np.eye(4)[[0, 1, 1, 3]] * 5.0  # predicts 0, 1, 1, 3
    targets = tg.Tensor([0, 1, 2, 2])
    assert metrics.accuracy(tg.Tensor(logits), targets) == 0.5
    matrix = metrics.confusion_matrix(logits, targets, num_classes=4)
    assert matrix.shape == (4, 4) and matrix[2, 1] == 1 and matrix[2, 3] == 1
    # class 2 is never predicted, class 3 never present: both count as 0, not NaN
    np.testing.assert_allclose(metrics.precision(logits, targets, num_classes=4, average=None), [1, 0.5, 0, 0])
    np.testing.assert_allclose(metrics.recall(logits, targets, num_classes=4, average=None), [1, 1, 0, 0])


def test_regression_metrics():
    assert metrics.mean_squared_error([1.0, 2.0, 4.0], [1.0, 0.0, 1.0]) == pytest.approx((0 + 4 + 9) / 3)
    assert metrics.mean_absolute_error(tg.Tensor([1.0, 2.0]), np.array([0.0, 4.0])) == pytest.approx(1.5)


def test_metric_errors():
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\)"):
        metrics.accuracy(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        metrics.accuracy(np.array([0, 1]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        metrics.confusion_matrix(np.array([0, 2]), np.array([0, 1]), num_classes=2)
    with pytest.raises(ValueError, match="average"):
        metrics.precision(PREDICTED, TARGETS, average="micro-ish")


def _state():
    return {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3)},
            "optimizer": {"state": {0: {"step": 3, "exp_avg": np.ones(2)}},
                          "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0], "name": None}]},
            "rng": tg.get_rng_state(), "loop": {"loss": float("nan"), "best": float("inf"), "flag": True}}


def test_checkpoint_round_trip_keeps_types_and_values(tmp_path):
    path = tmp_path / "run.npz"
    state = _state()
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["model"]["w"].dtype == np.float32
    assert list(loaded["optimizer"]["state"]) == [0]  # integer keys stay integers
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert loaded["optimizer"]["param_groups"][0]["name"] is None
    assert loaded["rng"] == state["rng"]
    assert np.isnan(loaded["loop"]["loss"]) and loaded["loop"]["best"] == float("inf")
    assert loaded["loop"]["flag"] is True
    with np.load(path, allow_pickle=False) as archive:  # plain npz, no pickled objects
        assert "__structure__" in archive.files


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    save_checkpoint(path, _state())
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": np.ones(3)}})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.npz"]  # no temporary file left behind
    load_checkpoint(path)


def test_unstorable_state_is_rejected_before_any_file_is_written(tmp_path):
    path = tmp_path / "run.npz"
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(path, {"model": object()})
    assert not path.exists()


def test_truncated_foreign_and_missing_files_give_clear_errors(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, _state())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="not a tinygrad_sgd checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
