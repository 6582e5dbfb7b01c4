"""tg.train.fit on 2 ranks: the run of one process on the global batch, rank 0 writes, resume."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.nn.parallel import DistributedDataParallel

dist = tg.distributed


def make_data(n=96, seed=3):
    rng = np.random.default_rng(seed)
    return tg.data.TensorDataset(rng.standard_normal((n, 12)).astype(np.float32), rng.integers(0, 4, n))


def make_model():
    tg.manual_seed(0)
    return tg.nn.Sequential(tg.nn.Linear(12, 16), tg.nn.Tanh(), tg.nn.Linear(16, 4))


def run(world, per_rank_batch, *, accumulation=1, epochs=2, fused=None, checkpoint_path=None, resume_from=None):
    """``world=2``: data-parallel; ``world=1``: one process on the global batch (a plain model
    trains on each rank on its own)."""
    data = make_data()
    model = make_model()
    if world > 1:
        model = DistributedDataParallel(model, bucket_cap_mb=0.001)
    sampler = tg.data.DistributedSampler(data, num_replicas=world, rank=dist.get_rank() if world > 1 else 0, seed=4)
    loader = tg.data.DataLoader(data, batch_size=per_rank_batch * (2 // world), sampler=sampler)
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused)
    history = tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=epochs, accumulation_steps=accumulation,
                           clip_grad_norm=1.0, progress=False, checkpoint_path=checkpoint_path,
                           resume_from=resume_from)
    return model, history


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_fit_on_two_ranks_equals_one_process_on_the_global_batch(fused, accumulation):
    ddp, h2 = run(2, 8, accumulation=accumulation, fused=fused)
    single, h1 = run(1, 8, accumulation=accumulation, fused=fused)
    np.testing.assert_allclose(h2.steps["loss"], h1.steps["loss"], rtol=1e-5)
    assert h2.steps["batch_size"] == h1.steps["batch_size"] == [16 * accumulation] * len(h1.steps["loss"])
    for key in ("train_loss", "train_accuracy"):
        np.testing.assert_allclose([r[key] for r in h2.epochs], [r[key] for r in h1.epochs], rtol=1e-5)
    for (key, a), (_, b) in zip(ddp.state_dict().items(), single.state_dict().items()):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=key)


def test_only_rank_0_writes_and_every_rank_resumes_from_its_checkpoint(tmp_path):
    folder = dist.broadcast_object(str(tmp_path))  # one folder for both ranks
    path = f"{folder}/ckpt.npz"
    full, _ = run(2, 8, epochs=3)
    run(2, 8, epochs=1, checkpoint_path=path)
    dist.barrier()
    files = dist.all_gather_object(sorted(p.name for p in tmp_path.iterdir()))
    assert files[0] == ["ckpt.npz"] and (dist.get_rank() == 0 or files[1] == [])
    resumed, history = run(2, 8, epochs=3, resume_from=path)
    assert [r["epoch"] for r in history.epochs] == [0, 1, 2]
    for (key, a), (_, b) in zip(resumed.state_dict().items(), full.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_fit_with_a_plain_loader_fails_on_every_rank():
    data = make_data()
    model = DistributedDataParallel(make_model())
    loader = tg.data.DataLoader(data, batch_size=8, shuffle=True, seed=0)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="needs a training loader with a tg.data.DistributedSampler"):
        tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False)


def test_fit_with_a_sampler_for_the_wrong_rank_fails_on_every_rank():
    data = make_data()
    model = DistributedDataParallel(make_model())
    loader = tg.data.DataLoader(data, batch_size=8, sampler=tg.data.DistributedSampler(data, num_replicas=2, rank=0))
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="rank=0; this process is rank 1 of 2"):
        tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False)


def test_fit_with_unequal_batch_counts_fails_on_every_rank():
    data = make_data(n=96 if dist.get_rank() == 0 else 64)
    model = DistributedDataParallel(make_model())
    loader = tg.data.DataLoader(data, batch_size=8, sampler=tg.data.DistributedSampler(data))
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"different numbers of batches \[6, 4\]"):
        tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False)


def test_batchnorm_running_statistics_agree_at_every_evaluation():
    """BatchNorm's batch statistics stay per rank; its running statistics are rank 0's when
    fit evaluates, so every rank records the same validation numbers (and schedules alike)."""
    data = make_data()
    tg.manual_seed(0)
    model = DistributedDataParallel(tg.nn.Sequential(tg.nn.Linear(12, 16), tg.nn.BatchNorm1d(16), tg.nn.ReLU(),
                                                     tg.nn.Linear(16, 4)))
    loader = tg.data.DataLoader(data, batch_size=8, sampler=tg.data.DistributedSampler(data, seed=4))
    val = tg.data.DataLoader(data, batch_size=32)
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=2, val_loader=val, progress=False)
    records = dist.all_gather_object([r["val_loss"] for r in history.epochs])
    assert records[0] == records[1]
    for key, value in model.state_dict().items():
        gathered = dist.all_gather(value)
        assert np.array_equal(gathered[0], gathered[1]), key
