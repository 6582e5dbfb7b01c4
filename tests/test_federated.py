"""tg.federated: partition properties and FedAvg's textbook equivalences (one process)."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.data import Subset, TensorDataset
from tinygrad_sgd.federated import fedavg, partition


@pytest.fixture(autouse=True)
def world_of_one():
    tg.distributed.init_process_group()


def labels(n=300, classes=5, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("alpha", [None, 0.1, 1.0, 100.0])
def test_partition_assigns_every_sample_to_exactly_one_client(alpha):
    y = labels()
    parts = partition(y, 7, alpha=alpha, seed=3)
    assert len(parts) == 7 and all(p.dtype == np.int64 and p.size >= 1 for p in parts)
    everything = np.concatenate(parts)
    assert np.array_equal(np.sort(everything), np.arange(y.size))  # each sample once
    again = partition(y, 7, alpha=alpha, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))  # reproducible
    other = partition(y, 7, alpha=alpha, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_partition_is_an_equal_split():
    sizes = [p.size for p in partition(labels(303), 10)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 303


def test_small_alpha_skews_the_labels_and_large_alpha_does_not():
    y = labels(2000, classes=10)

    def classes_per_client(alpha):
        return np.mean([np.mean(np.bincount(y[p], minlength=10) > 0.05 * p.size)
                        for p in partition(y, 10, alpha=alpha, seed=1)])

    assert classes_per_client(0.1) < 0.4
    assert classes_per_client(100.0) > 0.9


def test_partition_errors():
    with pytest.raises(ValueError, match="num_clients must be a positive int"):
        partition(labels(), 0)
    with pytest.raises(ValueError, match="alpha must be a positive finite float"):
        partition(labels(), 3, alpha=0.0)
    with pytest.raises(ValueError, match="1-D"):
        partition(np.zeros((3, 2)), 2)
    with pytest.raises(ValueError, match="cannot give 10 clients at least 1"):
        partition(labels(5), 10)
    with pytest.raises(TypeError, match="integer class labels"):
        partition(np.linspace(0, 1, 20), 2, alpha=1.0)


def regression(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.standard_normal((n, 1))
    return TensorDataset(x, y)


def linear(seed=0):
    tg.manual_seed(seed)
    return tg.nn.Linear(3, 1).double()


def gd_steps(model, dataset, steps, lr):
    x, y = tg.Tensor(dataset.tensors[0], dtype=tg.float64), tg.Tensor(dataset.tensors[1], dtype=tg.float64)
    opt = tg.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        tg.nn.MSELoss()(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model


def assert_same_model(a, b, atol=1e-12):
    for (key, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_allclose(u, v, rtol=0, atol=atol, err_msg=key)


def test_one_client_full_batch_is_gradient_descent():
    data = regression()
    model = linear()
    history = fedavg(model, tg.nn.MSELoss(), [data], rounds=3, local_epochs=4, batch_size=None, lr=0.05,
                     metrics=())
    assert_same_model(model, gd_steps(linear(), data, 12, 0.05))
    assert [r["round"] for r in history.epochs] == [0, 1, 2]


def test_unequal_clients_one_full_batch_step_each_is_gradient_descent_on_the_union():
    data = regression(n=45)
    indices = [np.arange(0, 5), np.arange(5, 20), np.arange(20, 45)]  # sizes 5, 15, 25
    clients = [TensorDataset(data.tensors[0][i], data.tensors[1][i]) for i in indices]
    model = linear()
    fedavg(model, tg.nn.MSELoss(), clients, rounds=4, local_epochs=1, batch_size=None, lr=0.1, metrics=())
    assert_same_model(model, gd_steps(linear(), data, 4, 0.1))
    # without the size weights it would not be: the plain mean of the three client steps differs
    plain = linear()
    for _ in range(4):
        start = plain.state_dict()
        stepped = []
        for c in clients:
            client_model = linear()
            client_model.load_state_dict(start)
            stepped.append(gd_steps(client_model, c, 1, 0.1).state_dict())
        plain.load_state_dict({k: np.mean([s[k] for s in stepped], axis=0) for k in start})
    assert not np.allclose(plain.weight.detach().numpy(), model.weight.detach().numpy(), atol=1e-6)


def test_fedprox_pulls_clients_towards_the_global_model():
    data = regression(n=60)
    clients = [Subset(data, idx) for idx in np.array_split(np.arange(60), 3)]
    distances = {}
    for mu in (0.0, 10.0):
        model = linear()
        start = model.weight.detach().numpy().copy()
        fedavg(model, tg.nn.MSELoss(), clients, rounds=1, local_epochs=5, batch_size=4, lr=0.05, mu=mu,
               metrics=())
        distances[mu] = float(np.linalg.norm(model.weight.detach().numpy() - start))
    assert distances[10.0] < 0.5 * distances[0.0]


def test_fedavg_history_sampling_and_reproducibility():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = TensorDataset(x, y)
    clients = [Subset(data, idx) for idx in partition(y, 8, alpha=0.5, seed=0)]

    def run():
        tg.manual_seed(0)
        model = tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.ReLU(), tg.nn.Dropout(0.2), tg.nn.Linear(8, 2))
        state = tg.get_rng_state()
        history = fedavg(model, tg.nn.CrossEntropyLoss(), clients, rounds=4, clients_per_round=3, lr=0.2,
                         batch_size=16, eval_dataset=data, seed=5)
        after = tg.randn(4).numpy()
        tg.set_rng_state(state)
        assert np.array_equal(after, tg.randn(4).numpy())  # the engine's random state is restored
        return model, history

    (a, ha), (b, hb) = run(), run()
    assert_same_model(a, b, atol=0)
    assert ha.epochs == hb.epochs
    assert [r["clients"] for r in ha.epochs] == [3] * 4
    assert ha.epochs[-1]["val_accuracy"] > 0.8
    params = sum(p.numel() for p in a.parameters())
    assert ha.epochs[0]["communicated_bytes"] == 2 * 3 * params * 4


@pytest.mark.parametrize("kwargs, message", [
    ({"client_datasets": [regression(4), TensorDataset(np.zeros((0, 3)), np.zeros((0, 1)))]}, "client 1 has no data"),
    ({"client_datasets": []}, "client_datasets is empty"),
    ({"rounds": 0}, "rounds must be a positive int"),
    ({"batch_size": 0}, "batch_size must be a positive int or None"),
    ({"lr": -1.0}, "lr must be a positive finite number"),
    ({"mu": float("nan")}, "mu must be a finite number >= 0"),
    ({"clients_per_round": 3}, r"clients_per_round must be an int in \[1, 2\]"),
])
def test_fedavg_argument_errors(kwargs, message):
    arguments = {"client_datasets": [regression(4), regression(6)], "rounds": 1}
    arguments.update(kwargs)
    model = linear()
    before = model.state_dict()
    with pytest.raises(ValueError, match=message):
        fedavg(model, tg.nn.MSELoss(), arguments.pop("client_datasets"), **arguments)
    assert_same_model(model, linear(), atol=0)
    assert list(before) == list(model.state_dict())
