"""Federated learning: clients that keep their data, a server that averages models (``tg.federated``).

    clients = tg.federated.partition(y_train, num_clients=20, alpha=0.1, seed=0)   # label skew
    client_sets = [tg.data.Subset(train_set, idx) for idx in clients]
    history = tg.federated.fedavg(model, tg.nn.CrossEntropyLoss(), client_sets, rounds=50,
                                  local_epochs=2, batch_size=32, lr=0.05, clients_per_round=5,
                                  eval_dataset=test_set)

:func:`fedavg` is the loop of McMahan et al. (2017), *Communication-Efficient Learning of
Deep Networks from Decentralized Data*; ``mu > 0`` adds FedProx's proximal term (Li et al.
2020, *Federated Optimization in Heterogeneous Networks*). It runs in one process (the
clients simulated one after another) or, after ``tg.distributed.init_process_group()``
under ``mpiexec``, with the clients of each round spread over the ranks; both give the same
parameters, bit for bit (see :func:`fedavg`).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend, distributed, rng
from .data.dataloader import DataLoader
from .nn.module import Module
from .nn.parallel import broadcast_state, check_replicas
from .optim.sgd import SGD
from .tensor import Tensor
from .train.history import History
from .train.loop import evaluate


def partition(labels, num_clients: int, alpha: float | None = None, seed: int = 0, *,
              min_size: int = 1) -> list:
    r"""Split sample indices among ``num_clients`` clients: a list of sorted int64 arrays.

    * ``alpha=None``: IID, an equal split of a random permutation (sizes differ by at most one).
    * ``alpha=a`` (a float > 0): label skew after Hsu, Qi and Brown (2019), *Measuring the
      Effects of Non-Identical Data Distribution for Federated Visual Classification*: for
      every class ``c`` draw client shares ``q_c ~ Dirichlet(a, ..., a)`` and deal the class's
      samples (shuffled) out in those proportions. Small ``a`` (0.1) gives clients that see
      one or two classes; large ``a`` (100) approaches IID. The draw is repeated (up to 100
      times) until every client has at least ``min_size`` samples.

    Every sample goes to exactly one client, and the same ``seed`` gives the same split.
    """
    y = backend.to_numpy(labels.data if isinstance(labels, Tensor) else labels)
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"partition: labels must be a non-empty 1-D array, got shape {y.shape}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"partition: num_clients must be a positive int, got {num_clients!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"partition: min_size must be a non-negative int, got {min_size!r}")
    n, k = int(y.size), int(num_clients)
    if k * min_size > n:
        raise ValueError(f"partition: {n} samples cannot give {k} clients at least {min_size} each")
    generator = np.random.default_rng(seed)
    if alpha is None:
        return [np.sort(part).astype(np.int64) for part in np.array_split(generator.permutation(n), k)]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not (
            math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"partition: alpha must be a positive finite float (or None for IID), got {alpha!r}")
    if y.dtype.kind not in "iub":
        raise TypeError(f"partition: a Dirichlet label split needs integer class labels, got dtype {y.dtype}")
    classes = np.unique(y)
    for _ in range(100):
        parts: list[list] = [[] for _ in range(k)]
        for c in classes:
            members = generator.permutation(np.flatnonzero(y == c))
            shares = generator.dirichlet(np.full(k, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(np.int64)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(p.size for p in result) >= min_size:
            return result
    raise ValueError(f"partition: 100 Dirichlet({alpha}) draws all left a client with fewer than {min_size} "
                     f"samples; use fewer clients, a larger alpha or min_size=0")


def _float_state(model: Module) -> list:
    """The floating-point parameters and buffers: what the server averages."""
    return [t for _, t in model._state_items() if t.dtype.kind == "f"]


def _flatten(tensors: list) -> np.ndarray:
    return np.concatenate([backend.to_numpy(t.data).reshape(-1).astype(np.float64) for t in tensors])


def _load_flat(tensors: list, flat: np.ndarray) -> None:
    offset = 0
    for t in tensors:
        size = t.numel()
        values = flat[offset:offset + size].reshape(t.shape).astype(t.dtype)
        t.data[...] = backend.to_device(values, t.device)  # in place: nothing else holds these arrays
        t._mark_dirty()
        offset += size


def _client_seed(seed: int, round_index: int, client: int) -> int:
    """A seed for one client's work in one round: the same whichever rank runs it."""
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


def _train_client(model, loss_fn, dataset, *, epochs, batch_size, lr, mu, anchor, seed, device):
    """Local SGD on one client from the current (global) weights; returns the mean loss."""
    rng.manual_seed(seed)  # dropout and the like: the same draws on every rank
    loader = DataLoader(dataset, batch_size=len(dataset) if batch_size is None else batch_size, shuffle=True,
                        seed=seed, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = SGD(params, lr=lr)
    total, count = 0.0, 0
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            total += float(loss.item()) * xb.shape[0]
            count += xb.shape[0]
            if mu > 0:  # FedProx: (mu / 2) ||w - w_global||^2 keeps the client near the global model
                proximal = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
                loss = loss + proximal * (mu / 2)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return total / count


def fedavg(model: Module, loss_fn, client_datasets, *, rounds: int, local_epochs: int = 1, batch_size: int | None = 32,
           lr: float = 0.1, clients_per_round: int | None = None, mu: float = 0.0, seed: int = 0,
           eval_dataset=None, metrics=("accuracy",), simulate: bool = False, log=None) -> History:
    r"""Federated averaging (McMahan et al. 2017): train ``model``, the global model, in place.

    Each round ``t``:

    1. the server samples ``m = clients_per_round`` clients (all when None) without
       replacement, from ``numpy.random.default_rng([seed, t])``;
    2. each sampled client ``k`` starts from the global weights ``w`` and runs plain SGD with
       learning rate ``lr`` for ``local_epochs`` passes over its own data, in mini-batches of
       ``batch_size`` (``None``: one full-batch step per epoch), minimising
       ``loss_k(w_k) + (mu / 2) ||w_k - w||^2`` (``mu > 0`` is FedProx, Li et al. 2020);
    3. the server sets ``w = sum_k n_k w_k / sum_k n_k``, weighted by the clients' data
       sizes ``n_k`` (so one full-batch local step on every client is one full-batch gradient
       step on the union of their data).

    Returns a :class:`~tinygrad_sgd.train.History` with one record per round (``round``,
    ``clients``, ``train_loss``: the clients' local losses weighted by size,
    ``communicated_bytes``: the global model sent to and back from each sampled client, and
    ``val_loss``/``val_<metric>`` on ``eval_dataset`` when given).

    **In one process or on many.** In a world of more than one rank (``tg.distributed``)
    the sampled clients are dealt out round-robin over the ranks; each rank trains its
    clients and puts their weights in the row of a ``(m, P)`` array, and one all-reduce (a
    sum, where every row has exactly one non-zero contribution, so it is exact) hands every
    rank all ``m`` client models. Every rank then averages them in client order, in float64,
    exactly as one process does: the results are identical. (A production system would
    all-reduce the weighted sum instead, ``P`` numbers rather than ``m P``, and accept
    rounding that depends on the number of ranks.) Each client's randomness (its shuffles,
    dropout) comes from ``(seed, round, client)``, not from the rank that runs it; the
    engine's random state is restored at the end. The ranks start from rank 0's model (a
    broadcast). ``simulate=True`` runs every client in this process even in a world of
    several ranks (the tests compare the two).

    ``metrics`` are those of :func:`tg.train.evaluate`; ``log`` (e.g. ``print``) gets one
    line per round, on rank 0.
    """
    problem = _check_fedavg_arguments(model, client_datasets, rounds, local_epochs, batch_size, lr,
                                      clients_per_round, mu)
    distributed.check_on_all_ranks(problem)
    world, rank = (1, 0) if simulate else (distributed.get_world_size(), distributed.get_rank())
    if world > 1:  # the server's model: rank 0's, on every rank (a model that differs fails everywhere)
        check_replicas(model, "fedavg")
        broadcast_state(model)
    sizes = np.array([len(d) for d in client_datasets], dtype=np.float64)
    m = len(client_datasets) if clients_per_round is None else int(clients_per_round)
    device = next(iter(model.parameters())).device
    state = _float_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    eval_loader = DataLoader(eval_dataset, batch_size=512, device=device) if eval_dataset is not None else None
    history = History()
    saved_rng = rng.get_rng_state()
    try:
        for t in range(rounds):
            chosen = np.sort(np.random.default_rng([seed, t]).choice(len(client_datasets), size=m, replace=False))
            global_flat = _flatten(state)
            anchor = [Tensor._make(p.data.copy(), p.device) for p in params] if mu > 0 else []
            models = np.zeros((m, global_flat.size), dtype=np.float64)
            losses = np.zeros(m, dtype=np.float64)
            for slot, client in enumerate(chosen):
                if slot % world != rank:
                    continue  # another rank trains this client
                _load_flat(state, global_flat)
                losses[slot] = _train_client(model, loss_fn, client_datasets[client], epochs=local_epochs,
                                             batch_size=batch_size, lr=lr, mu=mu, anchor=anchor,
                                             seed=_client_seed(seed, t, int(client)), device=device)
                models[slot] = _flatten(state)
            if world > 1:  # one exact sum: every slot was filled by one rank, zeros elsewhere
                distributed.all_reduce(models)
                distributed.all_reduce(losses)
            weights = sizes[chosen] / sizes[chosen].sum()
            average = np.zeros_like(global_flat)
            for slot in range(m):  # client order, on every rank: bit-identical results
                average += weights[slot] * models[slot]
            _load_flat(state, average)
            record = {"round": t, "epoch": t, "clients": m, "train_loss": float(np.dot(weights, losses)),
                      "communicated_bytes": 2 * m * sum(t.data.nbytes for t in state)}
            if eval_loader is not None:
                for name, value in evaluate(model, eval_loader, loss_fn, metrics).items():
                    record[f"val_{name}"] = value
            history.log_epoch(record)
            if log is not None and (simulate or distributed.is_main_process()):
                log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                              if k != "epoch"))
    finally:
        rng.set_rng_state(saved_rng)
    return history


def _check_fedavg_arguments(model, client_datasets, rounds, local_epochs, batch_size, lr, clients_per_round, mu):
    """The first problem with fedavg's arguments, or None (agreed across ranks by the caller)."""
    def positive_int(value):
        return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1

    if not isinstance(model, Module):
        return f"fedavg: model must be a tg.nn.Module, got {type(model).__name__}"
    if not list(model.parameters()):
        return "fedavg: the model has no parameters to train"
    try:
        sizes = [len(d) for d in client_datasets]
    except TypeError:
        return "fedavg: client_datasets must be a sequence of datasets (each with len())"
    if not sizes:
        return "fedavg: client_datasets is empty; there is no client to train"
    empty = [i for i, n in enumerate(sizes) if n == 0]
    if empty:
        return f"fedavg: client {empty[0]} has no data (0 samples); every client needs at least one sample"
    if not positive_int(rounds):
        return f"fedavg: rounds must be a positive int, got {rounds!r}"
    if not positive_int(local_epochs):
        return f"fedavg: local_epochs must be a positive int, got {local_epochs!r}"
    if batch_size is not None and not positive_int(batch_size):
        return f"fedavg: batch_size must be a positive int or None (full batch), got {batch_size!r}"
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not (math.isfinite(lr) and lr > 0):
        return f"fedavg: lr must be a positive finite number, got {lr!r}"
    if isinstance(mu, bool) or not isinstance(mu, (int, float, np.floating)) or not (math.isfinite(mu) and mu >= 0):
        return f"fedavg: mu must be a finite number >= 0, got {mu!r}"
    if clients_per_round is not None and (not positive_int(clients_per_round) or clients_per_round > len(sizes)):
        return (f"fedavg: clients_per_round must be an int in [1, {len(sizes)}] (or None: all), "
                f"got {clients_per_round!r}")
    return None
