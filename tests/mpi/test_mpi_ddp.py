"""DistributedDataParallel on 2 ranks against one process on the global batch."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.nn.parallel import DistributedDataParallel

dist = tg.distributed


def make_data(n=96, features=12, classes=4, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


def make_model(seed=0):
    tg.manual_seed(seed)
    return tg.nn.Sequential(tg.nn.Linear(12, 16), tg.nn.Tanh(), tg.nn.Linear(16, 4))


def make_optimizer(name, params, fused):
    if name == "sgd":
        return tg.optim.SGD(params, lr=0.1, momentum=0.9, fused=fused)
    return tg.optim.Adam(params, lr=0.01, fused=fused)


def single_process_run(name, x, y, per_rank_batch, steps, world=2):
    """One process, global batch world * b, in DistributedSampler's epoch order, from rank 0's weights."""
    model = make_model(seed=100)
    opt = make_optimizer(name, model.parameters(), fused=False)
    sampler = tg.data.DistributedSampler(len(x), num_replicas=1, rank=0, seed=7)
    loss_fn = tg.nn.CrossEntropyLoss()
    done, epoch = 0, 0
    while done < steps:
        order = sampler.indices(epoch)
        for start in range(0, len(order), world * per_rank_batch):
            idx = order[start:start + world * per_rank_batch]
            loss = loss_fn(model(tg.Tensor(x[idx])), tg.Tensor(y[idx]))
            loss.backward()
            opt.step()
            opt.zero_grad()
            done += 1
            if done == steps:
                break
        epoch += 1
    return model


def ddp_run(name, x, y, per_rank_batch, steps, *, bucket_cap_mb=25.0, fused=None, summed=False):
    model = make_model(seed=100 + dist.get_rank())  # different weights on each rank: the wrap fixes that
    ddp = DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb, average=not summed)
    opt = make_optimizer(name, ddp.parameters(), fused=fused)
    sampler = tg.data.DistributedSampler(len(x), seed=7)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=per_rank_batch, sampler=sampler)
    loss_fn = tg.nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        for xb, yb in loader:
            loss_fn(ddp(xb), yb).backward()
            opt.step(grad_scale=1.0 / ddp.grad_divisor)
            opt.zero_grad()
            done += 1
            if done == steps:
                break
    return ddp


@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("mode", ["reference", "buckets", "buckets_summed_fused"])
def test_ddp_equals_one_process_on_the_global_batch(name, mode):
    x, y = make_data()
    steps, b = 12, 8  # 96 samples / (2 * 8) = 6 steps per epoch: two epochs, two shuffles
    options = {"reference": {"bucket_cap_mb": None, "fused": False},
               "buckets": {"bucket_cap_mb": 0.001, "fused": False},  # ~1 KB: several buckets
               "buckets_summed_fused": {"bucket_cap_mb": 0.001, "fused": True, "summed": True}}[mode]
    ddp = ddp_run(name, x, y, b, steps, **options)
    single = single_process_run(name, x, y, b, steps)
    for (key, a), (_, s) in zip(ddp.state_dict().items(), single.state_dict().items()):
        np.testing.assert_allclose(a, s, rtol=0, atol=1e-5, err_msg=f"{name} {mode} {key}")


def test_ranks_hold_bitwise_identical_parameters():
    x, y = make_data()
    ddp = ddp_run("adam", x, y, 8, 10, bucket_cap_mb=0.001, fused=True, summed=True)
    for key, value in ddp.state_dict().items():
        gathered = dist.all_gather(np.ascontiguousarray(value))
        assert np.array_equal(gathered[0], gathered[1]), key
    # ... although the ranks trained on different data
    shards = dist.all_gather(tg.data.DistributedSampler(len(x), seed=7).indices(0))
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_wrap_overwrites_a_rank_with_different_weights():
    model = make_model(seed=dist.get_rank())  # different on each rank
    mine = model.state_dict()
    rank0 = {k: dist.broadcast(v.copy(), src=0) for k, v in mine.items()}
    ddp = DistributedDataParallel(model)
    for key, value in ddp.state_dict().items():
        np.testing.assert_array_equal(value, rank0[key])
    if dist.get_rank() == 1:
        assert any(not np.array_equal(mine[k], rank0[k]) for k in mine)


def test_grad_is_the_mean_over_ranks_after_backward():
    model = make_model()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)
    x, y = make_data(n=8, seed=dist.get_rank())  # different data on each rank
    tg.nn.CrossEntropyLoss()(ddp(tg.Tensor(x)), tg.Tensor(y)).backward()
    local = make_model()
    tg.nn.CrossEntropyLoss()(local(tg.Tensor(x)), tg.Tensor(y)).backward()
    for p, q in zip(ddp.parameters(), local.parameters()):
        expected = dist.all_reduce(q.grad.data.copy(), op="mean")
        np.testing.assert_allclose(p.grad.data, expected, rtol=1e-6, atol=1e-7)


def test_no_sync_accumulates_locally_then_reduces_once():
    x, y = make_data(n=16, seed=10 + dist.get_rank())
    loss_fn = tg.nn.CrossEntropyLoss()
    ddp = DistributedDataParallel(make_model(), bucket_cap_mb=0.001, average=False)
    with ddp.no_sync():
        loss_fn(ddp(tg.Tensor(x[:8])), tg.Tensor(y[:8])).backward()
    loss_fn(ddp(tg.Tensor(x[8:])), tg.Tensor(y[8:])).backward()
    local = make_model()
    for part in (slice(0, 8), slice(8, 16)):
        loss_fn(local(tg.Tensor(x[part])), tg.Tensor(y[part])).backward()
    for p, q in zip(ddp.parameters(), local.parameters()):
        np.testing.assert_allclose(p.grad.data, dist.all_reduce(q.grad.data.copy(), op="sum"), rtol=1e-5, atol=1e-6)


def test_module_that_differs_between_ranks_fails_on_every_rank():
    width = 16 if dist.get_rank() == 0 else 17
    model = tg.nn.Sequential(tg.nn.Linear(12, width))
    with pytest.raises(ValueError, match="differs from rank 0"):
        DistributedDataParallel(model)


def test_parameters_on_different_devices_fail_on_every_rank():
    class TwoDevices(tg.nn.Module):
        def __init__(self, split):
            super().__init__()
            self.a = tg.nn.Linear(2, 2)
            self.b = tg.nn.Linear(2, 2)
            if split:  # a stand-in for a second device on a machine without a GPU
                self.b.weight._device = "cuda:0"

    model = TwoDevices(split=dist.get_rank() == 1)
    with pytest.raises(ValueError, match="one device"):
        DistributedDataParallel(model)


def test_collectives():
    rank = dist.get_rank()
    a = np.full(5, rank + 1.0)
    assert dist.all_reduce(a) is a and np.all(a == 3.0)
    t = tg.Tensor(np.full((2, 3), rank + 1.0))
    version = t._version
    dist.all_reduce(t, op="mean")
    assert np.all(t.numpy() == 1.5) and t._version == version + 1
    m = np.array([rank, -rank], dtype=np.int64)
    dist.all_reduce(m, op="max")
    assert m.tolist() == [1, 0]
    b = np.arange(4.0) * (rank + 1)
    dist.broadcast(b, src=1)
    assert b.tolist() == [0.0, 2.0, 4.0, 6.0]
    gathered = dist.all_gather(tg.Tensor(np.array([rank, rank * 10], dtype=np.int32)))
    assert [g.numpy().tolist() for g in gathered] == [[0, 0], [1, 10]]
    assert dist.all_gather_object({"rank": rank}) == [{"rank": 0}, {"rank": 1}]
    assert dist.broadcast_object("from rank 0" if rank == 0 else None) == "from rank 0"
    dist.barrier()


def test_all_gather_with_different_shapes_fails_on_every_rank():
    with pytest.raises(ValueError, match="same shape"):
        dist.all_gather(np.zeros(3 + dist.get_rank()))


def test_check_on_all_ranks_names_the_rank():
    with pytest.raises(ValueError, match="rank 1"):
        dist.check_on_all_ranks("bad input" if dist.get_rank() == 1 else None)
    dist.check_on_all_ranks(None)


def local_sgd_run(name, x, y, per_rank_batch, steps, period, momentum=0.9):
    model = tg.nn.parallel.LocalSGD(make_model(seed=100 + dist.get_rank()), period=period)
    if name == "sgd":
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    else:
        opt = make_optimizer(name, model.parameters(), fused=None)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=per_rank_batch,
                                sampler=tg.data.DistributedSampler(len(x), seed=7))
    loss_fn = tg.nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        for xb, yb in loader:
            loss_fn(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            model.step()
            done += 1
            if done == steps:
                break
    return model


def ddp_sgd_run(x, y, per_rank_batch, steps, momentum):
    ddp = DistributedDataParallel(make_model(seed=100 + dist.get_rank()))
    opt = tg.optim.SGD(ddp.parameters(), lr=0.1, momentum=momentum)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=per_rank_batch,
                                sampler=tg.data.DistributedSampler(len(x), seed=7))
    loss_fn = tg.nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        for xb, yb in loader:
            loss_fn(ddp(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            done += 1
            if done == steps:
                break
    return ddp


def max_difference(a, b):
    return max(float(np.max(np.abs(a.state_dict()[k] - b.state_dict()[k]))) for k in a.state_dict())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_local_sgd_with_period_1_is_ddp_for_plain_and_momentum_sgd(momentum):
    x, y = make_data()
    local = local_sgd_run("sgd", x, y, 8, 12, period=1, momentum=momentum)
    ddp = ddp_sgd_run(x, y, 8, 12, momentum)
    assert local.communications == 12
    assert max_difference(local, ddp) < 1e-5


def test_local_sgd_with_period_1_is_not_ddp_for_adam():
    x, y = make_data()
    local = local_sgd_run("adam", x, y, 8, 12, period=1)
    ddp = ddp_run("adam", x, y, 8, 12)
    assert max_difference(local, ddp) > 1e-3  # Adam's state is not linear in the gradient


def test_local_sgd_averages_every_period_steps():
    x, y = make_data()
    model = local_sgd_run("sgd", x, y, 8, 12, period=4)
    assert model.communications == 3 and model.steps == 12
    for key, value in model.state_dict().items():  # just averaged: identical on both ranks
        gathered = dist.all_gather(value)
        assert np.array_equal(gathered[0], gathered[1]), key
    # ... and different after a local step on different data
    model = local_sgd_run("sgd", x, y, 8, 5, period=4)
    gathered = dist.all_gather(model.state_dict()["0.weight"])
    assert not np.array_equal(gathered[0], gathered[1])
