"""DataLoader, TensorDataset, Subset, random_split: coverage, order, seeding, resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_sgd as tg
from tinygrad_sgd.data import (ConstantBatchSize, DataLoader, Dataset, LinearWarmupBatchSize, RandomSampler,
                               StepBatchSize, Subset, TensorDataset, WeightedRandomSampler, random_split)


def make_dataset(n=23, features=3):
    # Row i of X holds i in every column, so a batch's X identifies its sample ids.
    X = np.repeat(np.arange(n, dtype=np.float32)[:, None], features, axis=1)
    y = np.arange(n, dtype=np.int64)
    return TensorDataset(X, y)


def ids_of(loader):
    """The per-batch sample ids of one pass, checking X and y stayed aligned."""
    out = []
    for xb, yb in loader:
        assert isinstance(xb, tg.Tensor) and isinstance(yb, tg.Tensor)
        np.testing.assert_array_equal(xb.numpy()[:, 0].astype(np.int64), yb.numpy())
        out.append(yb.numpy().tolist())
    return out


# ----------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("batch_size", [1, 4, 5, 23, 30])
def test_each_epoch_visits_every_sample_exactly_once(batch_size):
    loader = DataLoader(make_dataset(), batch_size=batch_size, shuffle=True, seed=3)
    for _ in range(3):
        batches = ids_of(loader)
        assert len(batches) == len(loader) == -(-23 // batch_size)
        assert all(len(b) == min(batch_size, 23) for b in batches[:-1])
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(23))


def test_drop_last_drops_the_remainder():
    loader = DataLoader(make_dataset(), batch_size=5, shuffle=True, drop_last=True, seed=1)
    assert len(loader) == 4
    batches = ids_of(loader)
    assert len(batches) == 4 and all(len(b) == 5 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 20  # 3 samples dropped, none repeated


def test_shuffle_gives_a_fresh_permutation_every_epoch():
    loader = DataLoader(make_dataset(50), batch_size=10, shuffle=True, seed=0)
    epochs = [sum(ids_of(loader), []) for _ in range(4)]
    assert len({tuple(e) for e in epochs}) == 4
    assert all(e != list(range(50)) for e in epochs)
    assert loader.epoch == 4


def test_no_shuffle_is_sequential_and_consumes_no_randomness():
    tg.manual_seed(5)
    before = tg.get_rng_state()
    loader = DataLoader(make_dataset(), batch_size=10)
    assert tg.get_rng_state() == before  # building an evaluation loader must not shift model init
    assert ids_of(loader) == [list(range(10)), list(range(10, 20)), list(range(20, 23))]
    assert loader.seed is None


def test_regimes_sgd_minibatch_full_batch():
    ds = make_dataset()
    assert len(DataLoader(ds)) == 23  # default batch_size=1: pure SGD
    full = DataLoader(ds, batch_size=None, shuffle=True, seed=0)
    (batch,) = ids_of(full)
    assert len(full) == 1 and full.batch_size == 23 and sorted(batch) == list(range(23))
    assert len(DataLoader(ds, batch_size=len(ds))) == 1


def test_with_replacement_sampling():
    loader = DataLoader(make_dataset(40), batch_size=8, shuffle=True, replacement=True, seed=2)
    flat = sum(ids_of(loader), [])
    assert len(flat) == 40
    assert len(set(flat)) < 40  # P(no repeat in 40 draws from 40) is 40!/40**40, about 1e-16


def test_dtypes_are_kept_and_labels_stay_int64():
    X = np.random.default_rng(0).standard_normal((10, 2))  # float64 stays float64
    ds = TensorDataset(X, np.arange(10))
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.dtype == np.float64 and yb.dtype == np.int64
    np.testing.assert_array_equal(xb.numpy(), X[:4])
    assert xb.device == "cpu" and not xb.requires_grad


_CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not tg.gpu_available(), reason="no CUDA GPU"))


@pytest.mark.parametrize("device", ["cpu", _CUDA])
def test_batches_go_to_the_loaders_device(device):
    ds = make_dataset()
    loader = DataLoader(ds, batch_size=5, shuffle=True, seed=0, device=device)
    expected = tg.backend.parse_device(device)
    for xb, yb in loader:
        assert xb.device == expected and yb.device == expected
        np.testing.assert_array_equal(xb.numpy(), ds.arrays[0][yb.numpy()])


@pytest.mark.parametrize("device", [_CUDA])
def test_data_already_on_the_gpu_is_gathered_there(device):
    X, y = make_dataset().arrays
    on_gpu = TensorDataset(tg.Tensor(X, device=device), tg.Tensor(y, device=device))
    for (xb, yb), (xc, yc) in zip(DataLoader(on_gpu, batch_size=4, shuffle=True, seed=2, device=device),
                                  DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=2), strict=True):
        assert xb.device.startswith("cuda")
        np.testing.assert_array_equal(xb.numpy(), xc.numpy())
        np.testing.assert_array_equal(yb.numpy(), yc.numpy())


def test_unavailable_device_is_refused_at_construction():
    if tg.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="not available"):
        DataLoader(make_dataset(), device="cuda")


def test_batches_are_copies_not_views_of_the_dataset():
    ds = make_dataset()
    xb, _ = next(iter(DataLoader(ds, batch_size=4)))
    xb.data[:] = -1
    assert ds.arrays[0][0, 0] == 0


def test_tensor_dataset_takes_tensors_lists_and_single_arrays():
    X = tg.Tensor(np.ones((4, 2)), dtype=tg.float64)
    ds = TensorDataset(X, [0, 1, 2, 3])
    assert ds.arrays[0] is X.data  # no copy
    assert ds.arrays[1].dtype == np.int64
    x2, y2 = ds[2]
    assert x2.shape == (2,) and int(y2.item()) == 2
    one = TensorDataset(np.arange(6.0).reshape(3, 2))
    assert TensorDataset([[1.5], [2.5]]).arrays[0].dtype == np.float32  # lists convert like Tensor()
    (b,) = next(iter(DataLoader(one, batch_size=3)))
    assert b.shape == (3, 2)


def test_array_datasets_gather_without_per_sample_getitem():
    class Counting(TensorDataset):
        calls = 0

        def __getitem__(self, index):
            Counting.calls += 1
            return super().__getitem__(index)

    ds = Counting(np.zeros((100, 2), np.float32), np.zeros(100, np.int64))
    for _ in DataLoader(Subset(ds, np.arange(0, 100, 2)), batch_size=7, shuffle=True, seed=0):
        pass
    assert Counting.calls == 0


def test_generic_dataset_falls_back_to_getitem_and_collate():
    class Squares(Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return np.array([i, i * i], dtype=np.float32), i

    class PlainObject:  # not a tg Dataset at all: any map-style object works
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return tg.Tensor([float(i)])

    xb, yb = next(iter(DataLoader(Squares(), batch_size=3)))
    np.testing.assert_array_equal(xb.numpy(), [[0, 0], [1, 1], [2, 4]])
    assert yb.dtype == np.int64 and yb.numpy().tolist() == [0, 1, 2]
    (single,) = list(DataLoader(PlainObject(), batch_size=5))
    assert isinstance(single, tg.Tensor) and single.shape == (5, 1)


# ----------------------------------------------------------------------------- seeding


def test_same_seed_same_batches_different_seed_different_batches():
    la, lb = (DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=7) for _ in range(2))
    assert [ids_of(la) for _ in range(3)] == [ids_of(lb) for _ in range(3)]
    lc = DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=8)
    assert ids_of(lc) != ids_of(DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=7))


def test_unseeded_loader_follows_manual_seed():
    tg.manual_seed(11)
    first = ids_of(DataLoader(make_dataset(), batch_size=4, shuffle=True))
    tg.manual_seed(11)
    second = ids_of(DataLoader(make_dataset(), batch_size=4, shuffle=True))
    tg.manual_seed(12)
    third = ids_of(DataLoader(make_dataset(), batch_size=4, shuffle=True))
    assert first == second and first != third


def test_epoch_order_is_a_function_of_seed_and_epoch_only():
    loader = DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=9)
    for _ in range(3):
        ids_of(loader)
    third = ids_of(loader)
    jumped = DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=9)
    jumped.set_epoch(3)
    assert ids_of(jumped) == third


_CHILD = """
import json, sys
import numpy as np
import tinygrad_sgd as tg
X = np.repeat(np.arange(23, dtype=np.float32)[:, None], 3, axis=1)
ds = tg.data.TensorDataset(X, np.arange(23))
seed = None if sys.argv[1] == "none" else int(sys.argv[1])
if seed is None:
    tg.manual_seed(4)
loader = tg.data.DataLoader(ds, batch_size=4, shuffle=True, seed=seed)
print(json.dumps([[yb.numpy().tolist() for _, yb in loader] for _ in range(2)]))
"""


@pytest.mark.parametrize("seed", ["6", "none"])
def test_same_batches_in_another_process(seed):
    env = dict(os.environ, PYTHONHASHSEED="123")  # a different hash seed must not matter
    out = subprocess.run([sys.executable, "-c", _CHILD, seed], capture_output=True, text=True, env=env, check=True)
    child = json.loads(out.stdout)
    if seed == "none":
        tg.manual_seed(4)
    loader = DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=None if seed == "none" else int(seed))
    assert child == [ids_of(loader) for _ in range(2)]


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("stop_after", [1, 4, 5, 6, 11])
def test_resume_mid_epoch_yields_exactly_the_uninterrupted_batches(stop_after):
    def fresh():
        return DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=21)

    uninterrupted = fresh()
    reference = [batch for _ in range(3) for batch in ids_of(uninterrupted)]  # 6 batches/epoch, 18 total

    first = fresh()
    seen, state = [], None
    while len(seen) < stop_after:
        for _, yb in first:
            seen.append(yb.numpy().tolist())
            if len(seen) == stop_after:
                state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
                break
    assert all(isinstance(v, int) for v in state.values())
    resumed = fresh()
    resumed.load_state_dict(state)
    rest = []
    while len(seen) + len(rest) < len(reference):
        rest.extend(ids_of(resumed))
    assert seen + rest == reference


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 45), drop_last=st.booleans(), replacement=st.booleans(),
       stop=st.integers(0, 120), seed=st.integers(0, 2**32))
def test_coverage_and_resume_property(n, batch_size, drop_last, replacement, stop, seed):
    def fresh():
        return DataLoader(make_dataset(n), batch_size=batch_size, shuffle=True, drop_last=drop_last,
                          replacement=replacement, seed=seed)

    if drop_last and batch_size > n:
        with pytest.raises(ValueError, match="no batch"):
            fresh()
        return
    loader = fresh()
    epochs = [ids_of(loader) for _ in range(3)]
    per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    for batches in epochs:
        flat = sum(batches, [])
        assert len(batches) == per_epoch
        assert len(flat) == (per_epoch * batch_size if drop_last else n)
        if not replacement:
            assert len(set(flat)) == len(flat)  # no sample twice in an epoch
            if not drop_last:
                assert sorted(flat) == list(range(n))
    reference = sum(epochs, [])
    stop = stop % len(reference)
    interrupted = fresh()
    it = iter(interrupted)
    done = 0
    while done < stop:
        try:
            next(it)
            done += 1
        except StopIteration:
            it = iter(interrupted)
    resumed = fresh()
    resumed.load_state_dict(interrupted.state_dict())
    rest = []
    while len(rest) < len(reference) - stop:
        rest.extend(ids_of(resumed))
    assert rest[:len(reference) - stop] == reference[stop:]


def test_state_dict_at_epoch_end_points_at_the_next_epoch():
    loader = DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=0)
    it = iter(loader)
    for _ in range(len(loader)):
        next(it)
    assert loader.state_dict() == {"seed": 0, "epoch": 1, "sample_offset": 0, "num_samples": 23}


def test_resume_with_an_unseeded_loader_in_a_new_process_uses_the_saved_seed():
    tg.manual_seed(1)
    a = DataLoader(make_dataset(), batch_size=4, shuffle=True)
    it = iter(a)
    next(it)
    state = a.state_dict()
    remaining = [yb.numpy().tolist() for _, yb in it]
    tg.manual_seed(999)  # a different process would draw a different seed
    b = DataLoader(make_dataset(), batch_size=4, shuffle=True)
    b.load_state_dict(state)
    assert ids_of(b) == remaining


def test_break_then_new_loop_restarts_the_epoch_but_load_state_continues_it():
    loader = DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=3)
    epoch0 = ids_of(DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=3))
    peek = next(iter(loader))  # a peek does not consume the epoch
    assert peek[1].numpy().tolist() == epoch0[0]
    assert ids_of(loader) == epoch0
    loader.set_epoch(0)
    it = iter(loader)
    next(it), next(it)
    loader.load_state_dict(loader.state_dict())
    assert ids_of(loader) == epoch0[2:]


def test_load_state_dict_validates_before_changing_anything():
    loader = DataLoader(make_dataset(), batch_size=4, shuffle=True, seed=3)
    good = loader.state_dict()
    with pytest.raises(ValueError, match="num_samples|samples per epoch"):
        loader.load_state_dict(dict(good, num_samples=24, seed=5))
    with pytest.raises(ValueError, match="sample_offset=23"):
        loader.load_state_dict(dict(good, sample_offset=23, seed=5))
    with pytest.raises(KeyError, match="epoch"):
        loader.load_state_dict({"seed": 5, "sample_offset": 0, "num_samples": 23})
    with pytest.raises(ValueError, match="sequential"):
        loader.load_state_dict(dict(good, seed=None))
    assert loader.state_dict() == good and loader.seed == 3


# ----------------------------------------------------------------------------- schedules


def test_batch_size_schedule_changes_batch_size_between_epochs():
    schedule = StepBatchSize(2, milestones=[1, 2], factor=2)
    loader = DataLoader(make_dataset(), shuffle=True, seed=0, batch_size_schedule=schedule)
    sizes = []
    for epoch in range(3):
        assert len(loader) == -(-23 // schedule.batch_size(epoch))
        assert loader.lr_scale() == schedule.batch_size(epoch) / 2
        batches = ids_of(loader)
        sizes.append(len(batches[0]))
        assert sorted(sum(batches, [])) == list(range(23))
    assert sizes == [2, 4, 8]


def test_schedule_resume_mid_epoch():
    def fresh():
        return DataLoader(make_dataset(), shuffle=True, seed=4, batch_size_schedule=LinearWarmupBatchSize(2, 8, 3))

    full = fresh()
    reference = [ids_of(full) for _ in range(4)]
    partial = fresh()
    ids_of(partial)
    it = iter(partial)
    next(it), next(it), next(it)
    resumed = fresh()
    resumed.load_state_dict(partial.state_dict())
    assert ids_of(resumed) == reference[1][3:]
    assert ids_of(resumed) == reference[2] and ids_of(resumed) == reference[3]


def test_schedule_and_batch_size_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        DataLoader(make_dataset(), batch_size=4, batch_size_schedule=ConstantBatchSize(4))
    with pytest.raises(TypeError, match="BatchSizeSchedule"):
        DataLoader(make_dataset(), batch_size_schedule=lambda e: 4)
    assert DataLoader(make_dataset(), batch_size=4).lr_scale() == 1.0


# ----------------------------------------------------------------------------- samplers


def test_loader_with_weighted_sampler():
    labels = np.array([0] * 90 + [1] * 10)
    ds = TensorDataset(np.zeros((100, 1), np.float32), labels)
    weights = 1.0 / np.bincount(labels)[labels]
    sampler = WeightedRandomSampler(weights, num_samples=4000, seed=0)
    loader = DataLoader(ds, batch_size=100, sampler=sampler)
    drawn = np.concatenate([yb.numpy() for _, yb in loader])
    assert drawn.size == 4000 and abs(drawn.mean() - 0.5) < 0.05  # balanced classes, std 0.008


def test_sampler_conflicts_are_rejected():
    ds = make_dataset()
    sampler = RandomSampler(ds, seed=0)
    with pytest.raises(ValueError, match="shuffle"):
        DataLoader(ds, sampler=sampler, shuffle=True)
    with pytest.raises(ValueError, match="seed"):
        DataLoader(ds, sampler=sampler, seed=1)
    with pytest.raises(ValueError, match="indexes 10 samples"):
        DataLoader(ds, sampler=RandomSampler(10, seed=0))
    with pytest.raises(TypeError, match="Sampler"):
        DataLoader(ds, sampler=[0, 1, 2])


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors():
    ds = make_dataset()
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be positive, got -3"):
        DataLoader(ds, batch_size=-3)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        DataLoader(ds, batch_size=2.5)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        DataLoader(ds, batch_size=True)
    with pytest.raises(ValueError, match="no batch"):
        DataLoader(ds, batch_size=24, drop_last=True)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        DataLoader(ds, shuffle=True, seed=-1)
    with pytest.raises(TypeError, match="shuffle must be a bool"):
        DataLoader(ds, shuffle="yes")
    with pytest.raises(ValueError, match="empty"):
        DataLoader(TensorDataset(np.zeros((0, 2)), np.zeros(0)))
    with pytest.raises(ValueError, match="empty"):
        DataLoader([], batch_size=1)
    with pytest.raises(TypeError, match="len"):
        DataLoader(42)


def test_rejected_loader_leaves_the_global_generator_alone():
    tg.manual_seed(0)
    before = tg.get_rng_state()
    with pytest.raises(ValueError, match="no batch"):
        DataLoader(make_dataset(), batch_size=30, drop_last=True, shuffle=True)
    with pytest.raises(ValueError, match="invalid device"):
        DataLoader(make_dataset(), shuffle=True, device="tpu")
    assert tg.get_rng_state() == before


def test_tensor_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"argument 0: 5, argument 1: 4"):
        TensorDataset(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        TensorDataset()
    with pytest.raises(ValueError, match="0-d"):
        TensorDataset(np.float32(1.0))
    with pytest.raises(TypeError, match="dtype"):
        TensorDataset(np.array(["a", "b"]))


# ----------------------------------------------------------------------------- Subset, random_split


def test_subset_maps_indices_and_gathers_in_one_step():
    ds = make_dataset()
    sub = Subset(ds, [5, 2, -1])
    assert len(sub) == 3 and int(sub[2][1].item()) == 22
    xb, yb = next(iter(DataLoader(sub, batch_size=3)))
    assert yb.numpy().tolist() == [5, 2, 22]
    with pytest.raises(IndexError, match="index 23 is out of range"):
        Subset(ds, [0, 23])


def test_random_split_is_a_seeded_partition():
    ds = make_dataset(100)
    parts = random_split(ds, [70, 20, 10], seed=0)
    ids = [set(p.indices.tolist()) for p in parts]
    assert [len(p) for p in parts] == [70, 20, 10]
    assert set.union(*ids) == set(range(100)) and sum(len(s) for s in ids) == 100
    again = random_split(ds, [70, 20, 10], seed=0)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(parts, again))
    assert not np.array_equal(random_split(ds, [70, 30], seed=1)[0].indices, parts[0].indices[:70])
    fractions = random_split(make_dataset(23), [0.5, 0.5], seed=0)
    assert [len(p) for p in fractions] == [12, 11]
    with pytest.raises(ValueError, match="sum to 99"):
        random_split(ds, [70, 29])
    with pytest.raises(ValueError, match="fractions"):
        random_split(ds, [0.5, 0.6])
