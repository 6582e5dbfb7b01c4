"""Collectives and DDP on CuPy arrays, on 2 ranks (a script, not a test module): launched by
tests/test_distributed.py::test_cupy_arrays_on_two_ranks on a GPU, or on the CuPy stand-in
(tests/cupy_standin) in CI. Exits non-zero when a check fails."""

import logging

import numpy as np

import tinygrad_sgd as tg

logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
dist = tg.distributed
dist.init_process_group()
rank = dist.get_rank()
assert dist.get_world_size() == 2
cp = tg.backend.get_array_module("cuda")

a = cp.full(5, rank + 1.0, dtype=cp.float32)
dist.all_reduce(a, op="mean")
assert np.all(cp.asnumpy(a) == 1.5), cp.asnumpy(a)
b = cp.arange(4, dtype=cp.float64) * (rank + 1)
dist.broadcast(b, src=1)
assert cp.asnumpy(b).tolist() == [0.0, 2.0, 4.0, 6.0]
gathered = dist.all_gather(tg.Tensor(np.array([rank, 10 * rank], dtype=np.float32), device="cuda"))
assert [g.device for g in gathered] == ["cuda:0", "cuda:0"]
assert [g.to("cpu").numpy().tolist() for g in gathered] == [[0.0, 0.0], [1.0, 10.0]]

# DDP on the GPU: 2 ranks x 8 against one process on the global batch of 16, on the CPU
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 6)).astype(np.float32)
y = rng.integers(0, 3, 64)


def model():
    tg.manual_seed(0)
    return tg.nn.Sequential(tg.nn.Linear(6, 8), tg.nn.Tanh(), tg.nn.Linear(8, 3))


ddp = tg.nn.parallel.DistributedDataParallel(model().to("cuda"), bucket_cap_mb=0.0001)
single = model()
optimizers = [tg.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9), tg.optim.SGD(single.parameters(), lr=0.1,
                                                                                  momentum=0.9)]
order = tg.data.DistributedSampler(64, num_replicas=1, rank=0, seed=3).epoch_order(0)
for step in range(4):
    batch = order[16 * step:16 * (step + 1)]
    mine = batch[rank::2]
    ce = tg.nn.CrossEntropyLoss()
    ce(ddp(tg.Tensor(x[mine], device="cuda")), tg.Tensor(y[mine], device="cuda")).backward()
    ce(single(tg.Tensor(x[batch])), tg.Tensor(y[batch])).backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad()
for (key, on_gpu), (_, on_cpu) in zip(ddp.state_dict().items(), single.state_dict().items()):
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-5, err_msg=key)
if rank == 0:
    print("cupy collectives and DDP on 2 ranks: ok", flush=True)
