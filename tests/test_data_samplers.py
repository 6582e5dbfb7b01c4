"""Samplers: sequential, random (with/without replacement), weighted, distributed."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.data import (DataLoader, DistributedSampler, RandomSampler, SequentialSampler, TensorDataset,
                               WeightedRandomSampler)


def test_sequential_sampler():
    s = SequentialSampler(range(5))
    assert list(s) == [0, 1, 2, 3, 4] and len(s) == 5
    assert s.indices(7).dtype == np.int64


def test_random_sampler_without_replacement_is_a_permutation_per_epoch():
    s = RandomSampler(30, seed=0)
    orders = [s.indices(e) for e in range(5)]
    for order in orders:
        assert order.dtype == np.int64 and sorted(order.tolist()) == list(range(30))
    assert len({tuple(o) for o in orders}) == 5
    s.set_epoch(3)
    assert list(s) == orders[3].tolist()
    np.testing.assert_array_equal(RandomSampler(30, seed=0).indices(4), orders[4])


def test_random_sampler_with_replacement_is_uniform():
    s = RandomSampler(10, replacement=True, num_samples=20000, seed=1)
    counts = np.bincount(s.indices(0), minlength=10)
    assert len(s) == 20000
    # Each count ~ Binomial(20000, 0.1): mean 2000, std 42; 6 std is a generous bound.
    assert np.all(np.abs(counts - 2000) < 6 * 42)
    assert not np.array_equal(s.indices(0), s.indices(1))


def test_random_sampler_num_samples_without_replacement():
    s = RandomSampler(10, num_samples=4, seed=0)
    idx = s.indices(0)
    assert idx.size == 4 and len(set(idx.tolist())) == 4
    with pytest.raises(ValueError, match="replacement=True"):
        RandomSampler(10, num_samples=11)


def test_unseeded_samplers_follow_manual_seed():
    tg.manual_seed(3)
    a = RandomSampler(50).indices(0)
    tg.manual_seed(3)
    b = RandomSampler(50).indices(0)
    np.testing.assert_array_equal(a, b)


def test_weighted_sampler_matches_probabilities():
    weights = np.array([1.0, 2.0, 0.0, 7.0])
    s = WeightedRandomSampler(weights, num_samples=50000, seed=0)
    freq = np.bincount(s.indices(0), minlength=4) / 50000
    # Binomial std for p=0.7 at n=50000 is 0.002; bound at 5 std.
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.0, 0.7], atol=0.01)
    assert freq[2] == 0.0


def test_weighted_sampler_without_replacement():
    s = WeightedRandomSampler([1, 1, 1, 0, 5], num_samples=4, replacement=False, seed=2)
    for e in range(5):
        idx = s.indices(e)
        assert len(set(idx.tolist())) == 4 and 3 not in idx
    with pytest.raises(ValueError, match="non-zero weight"):
        WeightedRandomSampler([1, 0, 1], num_samples=3, replacement=False)


def test_weighted_sampler_accepts_tensors_and_rejects_bad_weights():
    s = WeightedRandomSampler(tg.Tensor([0.0, 1.0]), num_samples=5, seed=0)
    assert s.indices(0).tolist() == [1] * 5
    with pytest.raises(ValueError, match="non-negative"):
        WeightedRandomSampler([1.0, -1.0], num_samples=2)
    with pytest.raises(ValueError, match="finite"):
        WeightedRandomSampler([1.0, np.nan], num_samples=2)
    with pytest.raises(ValueError, match="sum to zero"):
        WeightedRandomSampler([0.0, 0.0], num_samples=2)
    with pytest.raises(ValueError, match="1-D"):
        WeightedRandomSampler([[1.0]], num_samples=2)
    with pytest.raises(ValueError, match="num_samples must be positive"):
        WeightedRandomSampler([1.0], num_samples=0)


@pytest.mark.parametrize("n,replicas", [(24, 4), (23, 4), (5, 3), (7, 1)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_distributed_shards_are_disjoint_and_cover_the_epoch(n, replicas, shuffle):
    samplers = [DistributedSampler(n, num_replicas=replicas, rank=r, shuffle=shuffle, seed=5) for r in range(replicas)]
    for epoch in range(3):
        shards = [s.indices(epoch) for s in samplers]
        assert all(len(sh) == len(samplers[0]) == -(-n // replicas) for sh in shards)
        allidx = np.concatenate(shards)
        assert set(allidx.tolist()) == set(range(n))  # cover
        counts = np.bincount(allidx, minlength=n)
        padding = replicas * len(samplers[0]) - n
        # Disjoint: each index appears once, except the `padding` repeats that even out
        # the shard lengths (none when n divides evenly).
        assert counts.max() <= 2 and int((counts - 1).sum()) == padding
        # Interleaving the shards rebuilds the shared epoch order.
        interleaved = np.stack(shards, axis=1).reshape(-1)
        np.testing.assert_array_equal(interleaved, samplers[0].epoch_order(epoch))
    if shuffle:
        assert not np.array_equal(samplers[0].indices(0), samplers[0].indices(1))


def test_distributed_drop_last_gives_disjoint_equal_shards():
    shards = [DistributedSampler(23, num_replicas=4, rank=r, drop_last=True).indices(0) for r in range(4)]
    allidx = np.concatenate(shards)
    assert all(len(s) == 5 for s in shards) and len(set(allidx.tolist())) == 20


def test_distributed_samplers_in_loaders_cover_each_epoch():
    ds = TensorDataset(np.arange(40, dtype=np.float32)[:, None], np.arange(40))
    loaders = [DataLoader(ds, batch_size=3, sampler=DistributedSampler(ds, 2, r, seed=1)) for r in range(2)]
    for epoch in range(2):
        seen = [np.concatenate([yb.numpy() for _, yb in loader]) for loader in loaders]
        assert sorted(np.concatenate(seen).tolist()) == list(range(40))
        assert loaders[0].epoch == epoch + 1 and loaders[0].sampler.epoch == epoch


def test_distributed_sampler_bad_arguments():
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, num_replicas=2\)"):
        DistributedSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be positive"):
        DistributedSampler(10, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="drop_last"):
        DistributedSampler(3, num_replicas=4, rank=0, drop_last=True)


def test_samplers_reject_empty_data():
    for make in (SequentialSampler, RandomSampler, lambda d: DistributedSampler(d, 1, 0)):
        with pytest.raises(ValueError, match="empty"):
            make([])
    with pytest.raises(TypeError, match="data_source"):
        RandomSampler(3.5)
