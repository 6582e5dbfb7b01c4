"""FedAvg with the clients spread over 2 ranks gives the parameters of the simulated run."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.data import Subset, TensorDataset
from tinygrad_sgd.federated import fedavg, partition

dist = tg.distributed


def problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((240, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    data = TensorDataset(x, y)
    return data, [Subset(data, idx) for idx in partition(y, 7, alpha=0.3, seed=1)]


def model(seed=0):
    tg.manual_seed(seed)
    return tg.nn.Sequential(tg.nn.Linear(6, 16), tg.nn.ReLU(), tg.nn.Dropout(0.1), tg.nn.Linear(16, 3))


@pytest.mark.parametrize("clients_per_round, mu", [(3, 0.0), (None, 0.5)])
def test_mpi_fedavg_equals_the_simulated_run_bit_for_bit(clients_per_round, mu):
    data, clients = problem()
    options = {"rounds": 3, "local_epochs": 2, "batch_size": 8, "lr": 0.1, "clients_per_round": clients_per_round,
               "mu": mu, "seed": 2, "eval_dataset": data}
    spread, simulated = model(seed=dist.get_rank()), model()   # rank 1 starts elsewhere: rank 0's model wins
    h_mpi = fedavg(spread, tg.nn.CrossEntropyLoss(), clients, **options)
    h_sim = fedavg(simulated, tg.nn.CrossEntropyLoss(), clients, simulate=True, **options)
    for (key, a), (_, b) in zip(spread.state_dict().items(), simulated.state_dict().items()):
        assert np.array_equal(a, b), key
    assert h_mpi.epochs == h_sim.epochs
    gathered = dist.all_gather(spread.state_dict()["0.weight"])
    assert np.array_equal(gathered[0], gathered[1])


def test_an_empty_client_on_one_rank_fails_on_every_rank():
    data, clients = problem()
    if dist.get_rank() == 1:
        clients[4] = Subset(data, np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"client 4 has no data \(0 samples\).*\(on rank 1 of 2\)"):
        fedavg(model(), tg.nn.CrossEntropyLoss(), clients, rounds=1)
