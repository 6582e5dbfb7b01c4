"""Batch-size schedules and the linear learning-rate scaling rule."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.data import (ConstantBatchSize, DataLoader, LinearWarmupBatchSize, StepBatchSize, TensorDataset,
                               linear_scaled_lr)


def test_constant():
    s = ConstantBatchSize(32)
    assert [s(e) for e in range(4)] == [32] * 4 and s.lr_scale(3) == 1.0
    assert ConstantBatchSize(64, base_batch_size=32).lr_scale(0) == 2.0


def test_linear_warmup_values():
    s = LinearWarmupBatchSize(16, 256, warmup_epochs=4)
    # 16 + 240 * e / 4 = 16, 76, 136, 196, then 256 from epoch 4 on.
    assert [s.batch_size(e) for e in range(7)] == [16, 76, 136, 196, 256, 256, 256]
    assert s.base_batch_size == 16 and s.lr_scale(4) == 16.0
    assert LinearWarmupBatchSize(8, 64, 0).batch_size(0) == 64
    assert [LinearWarmupBatchSize(1, 2, 4)(e) for e in range(5)] == [1, 1, 2, 2, 2]  # 1.5 rounds half up


def test_step_increase_with_milestones_and_step_size():
    s = StepBatchSize(32, milestones=[10, 20, 30], factor=5)
    assert [s(e) for e in (0, 9, 10, 19, 20, 30, 99)] == [32, 32, 160, 160, 800, 4000, 4000]
    t = StepBatchSize(8, step_size=3, factor=2)
    assert [t(e) for e in range(10)] == [8, 8, 8, 16, 16, 16, 32, 32, 32, 64]


def test_step_increase_cap_moves_the_decay_into_the_learning_rate():
    # Smith et al.: grow B by 5 at each milestone up to the memory cap, then decay lr by 5.
    s = StepBatchSize(128, milestones=[1, 2, 3], factor=5, max_batch_size=5000)
    assert [s(e) for e in range(4)] == [128, 640, 3200, 5000]
    assert [s.wanted_batch_size(e) for e in range(4)] == [128, 640, 3200, 16000]
    lr = 0.1
    for e in range(4):
        # The noise scale lr * lr_factor / B equals the uncapped schedule's lr / B_wanted.
        assert lr * s.lr_factor(e) / s(e) == pytest.approx(lr / s.wanted_batch_size(e))
    assert s.lr_factor(2) == 1.0 and s.lr_factor(3) == pytest.approx(5000 / 16000)


def test_linear_scaled_lr():
    assert linear_scaled_lr(0.1, 8192, 256) == pytest.approx(3.2)  # Goyal et al.: 0.1 per 256 images
    s = StepBatchSize(256, step_size=1, factor=2)
    scaled = [linear_scaled_lr(0.1, s(e), 256) for e in range(3)]
    assert scaled == pytest.approx([0.1 * s.lr_scale(e) for e in range(3)]) == [0.1, 0.2, 0.4]
    with pytest.raises(ValueError, match="base_lr"):
        linear_scaled_lr(-1.0, 2, 1)
    with pytest.raises(ValueError, match="base_batch_size must be positive"):
        linear_scaled_lr(0.1, 2, 0)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="batch_size must be positive"):
        ConstantBatchSize(0)
    with pytest.raises(ValueError, match="exactly one"):
        StepBatchSize(8)
    with pytest.raises(ValueError, match="exactly one"):
        StepBatchSize(8, milestones=[2], step_size=2)
    with pytest.raises(ValueError, match="strictly increasing"):
        StepBatchSize(8, milestones=[3, 3])
    with pytest.raises(ValueError, match="factor must be >= 2"):
        StepBatchSize(8, step_size=1, factor=1)
    with pytest.raises(ValueError, match="max_batch_size must be >= 8"):
        StepBatchSize(8, step_size=1, max_batch_size=4)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        ConstantBatchSize(4).batch_size(-1)
    with pytest.raises(TypeError, match="warmup_epochs must be an integer"):
        LinearWarmupBatchSize(1, 4, 2.5)


def test_increasing_batch_matches_decaying_lr_on_a_quadratic():
    """Smith et al.'s claim, checked where it can be exact enough to test: on linear least
    squares, raising B by k at fixed lr ends near where dividing lr by k at fixed B does,
    with k times fewer updates in the increased-batch phase."""
    gen = np.random.default_rng(0)
    X = gen.standard_normal((512, 4)).astype(np.float32)
    w_true = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    y = (X @ w_true + 0.5 * gen.standard_normal(512)).astype(np.float32)
    ds = TensorDataset(X, y)

    def train(loader, lr_of_epoch, epochs=12):
        w = tg.zeros(4, requires_grad=True)
        steps = 0
        for epoch in range(epochs):
            for xb, yb in loader:
                loss = ((xb @ w - yb) ** 2).mean()
                loss.backward()
                with tg.no_grad():
                    w[...] = w - lr_of_epoch(epoch) * w.grad
                w.grad = None
                steps += 1
        return w.detach().numpy(), steps

    decay = DataLoader(ds, batch_size=8, shuffle=True, seed=0)
    w_decay, steps_decay = train(decay, lambda e: 0.05 / 4 ** (e // 4))
    grow = DataLoader(ds, shuffle=True, seed=0, batch_size_schedule=StepBatchSize(8, step_size=4, factor=4))
    w_grow, steps_grow = train(grow, lambda e: 0.05)
    w_ls = np.linalg.lstsq(X, y, rcond=None)[0]
    assert steps_grow == 4 * 64 + 4 * 16 + 4 * 4 and steps_decay == 12 * 64
    # Measured over seeds 0-4: both end 0.001-0.004 from the least-squares solution, a
    # constant lr and batch 0.04-0.09 (the SGD noise floor neither recipe lowered).
    assert np.linalg.norm(w_decay - w_ls) < 0.02 and np.linalg.norm(w_grow - w_ls) < 0.02
    w_const, _ = train(DataLoader(ds, batch_size=8, shuffle=True, seed=0), lambda e: 0.05)
    assert np.linalg.norm(w_const - w_ls) > 4 * max(np.linalg.norm(w_decay - w_ls), np.linalg.norm(w_grow - w_ls))
