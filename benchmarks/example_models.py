"""The course's example models, one training step each: the engine against PyTorch's CPU
eager mode, in one process, in alternating rounds. Prints times and ratios.

    python benchmarks/example_models.py [--rounds 7] [--steps 10] [--only cnn lstm mf mf_sparse]
    python benchmarks/example_models.py --epoch     # also one epoch of each, samples/s
                                                    # (50k CIFAR-shaped images, 25k reviews,
                                                    # 100k ratings; frameworks interleaved)
    python benchmarks/example_models.py --quick     # tiny shapes: checks the script runs

Workloads (float32, the shapes of the course material):

* ``cnn``: 3x32x32 images, conv32(3x3, pad 1)-relu-maxpool2, conv64(3x3, pad 1)-relu-maxpool2,
  fc128-relu, fc10, cross-entropy; Adam; batch 64.
* ``lstm``: vocabulary 5,000, embedding 64, LSTM hidden 128, length 80, dropout 0.5 on the
  last hidden state, fc 2, cross-entropy; Adam; batch 32.
* ``mf``: matrix factorisation, 50k users, 20k items, dim 32, rating = dot product of the
  two embeddings, MSE; SGD with weight_decay; batch 128; dense embedding gradients.
* ``mf_sparse``: the same with ``sparse=True`` embeddings and SparseAdam.

Both frameworks start from the same weights (the engine's, copied into torch) and see the
same batches. Each round times ``--steps`` steps of one framework, then of the other, with
a short pause before each so one framework's idle-spinning worker threads do not slow the
next; the median step of each is reported, and the ratio engine / torch (below 1: the
engine is faster). torch runs with as many threads as Numba (``--threads``).

Two clocks: wall time, and the process's CPU time (``time.process_time``), which a loaded
machine disturbs far less -- waiting for a core costs no CPU time. With one thread
(``OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1``) the CPU-time ratio is the steadier figure
on a shared machine; with more threads it also counts threads that spin while waiting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

import tinygrad_sgd as tg

try:
    import torch
except ImportError:  # the script still times the engine alone
    torch = None

SETTLE_S = 0.2

# name -> full-size shapes; QUICK holds tiny ones of the same structure
FULL = {
    "cnn": {"batch": 64, "channels": 3, "side": 32, "conv": (32, 64), "fc": 128, "classes": 10,
            "epoch_samples": 50_000},
    "lstm": {"batch": 32, "vocab": 5_000, "embed": 64, "hidden": 128, "length": 80, "dropout": 0.5, "classes": 2,
             "epoch_samples": 25_000},
    "mf": {"batch": 128, "users": 50_000, "items": 20_000, "dim": 32, "epoch_samples": 100_000},
    "mf_sparse": {"batch": 128, "users": 50_000, "items": 20_000, "dim": 32, "epoch_samples": 100_000},
}
QUICK = {
    "cnn": {"batch": 4, "channels": 3, "side": 8, "conv": (4, 6), "fc": 8, "classes": 3, "epoch_samples": 8},
    "lstm": {"batch": 3, "vocab": 20, "embed": 5, "hidden": 6, "length": 4, "dropout": 0.5, "classes": 2,
             "epoch_samples": 6},
    "mf": {"batch": 8, "users": 30, "items": 20, "dim": 4, "epoch_samples": 16},
    "mf_sparse": {"batch": 8, "users": 30, "items": 20, "dim": 4, "epoch_samples": 16},
}


# ----------------------------------------------------------------------------- models


class EngineCNN(tg.nn.Module):
    def __init__(self, s):
        super().__init__()
        nn = tg.nn
        c1, c2 = s["conv"]
        self.features = nn.Sequential(nn.Conv2d(s["channels"], c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c2 * (s["side"] // 4) ** 2, s["fc"]), nn.ReLU(),
                                  nn.Linear(s["fc"], s["classes"]))

    def forward(self, x):
        return self.head(self.features(x))


class EngineLSTM(tg.nn.Module):
    def __init__(self, s, dropout):
        super().__init__()
        nn = tg.nn
        self.embedding = nn.Embedding(s["vocab"], s["embed"])
        self.lstm = nn.LSTM(s["embed"], s["hidden"], batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(s["hidden"], s["classes"])

    def forward(self, tokens):
        _, (h, _) = self.lstm(self.embedding(tokens))
        return self.fc(self.dropout(h[-1]))


class EngineMF(tg.nn.Module):
    def __init__(self, s, sparse):
        super().__init__()
        self.users = tg.nn.Embedding(s["users"], s["dim"], sparse=sparse)
        self.items = tg.nn.Embedding(s["items"], s["dim"], sparse=sparse)

    def forward(self, users, items):
        return (self.users(users) * self.items(items)).sum(axis=1)


def torch_models():
    """The same three models in torch (defined here so the script imports without torch)."""
    nn = torch.nn

    class CNN(nn.Module):
        def __init__(self, s):
            super().__init__()
            c1, c2 = s["conv"]
            self.features = nn.Sequential(nn.Conv2d(s["channels"], c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Flatten())
            self.head = nn.Sequential(nn.Linear(c2 * (s["side"] // 4) ** 2, s["fc"]), nn.ReLU(),
                                      nn.Linear(s["fc"], s["classes"]))

        def forward(self, x):
            return self.head(self.features(x))

    class LSTM(nn.Module):
        def __init__(self, s, dropout):
            super().__init__()
            self.embedding = nn.Embedding(s["vocab"], s["embed"])
            self.lstm = nn.LSTM(s["embed"], s["hidden"], batch_first=True)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(s["hidden"], s["classes"])

        def forward(self, tokens):
            _, (h, _) = self.lstm(self.embedding(tokens))
            return self.fc(self.dropout(h[-1]))

    class MF(nn.Module):
        def __init__(self, s, sparse):
            super().__init__()
            self.users = nn.Embedding(s["users"], s["dim"], sparse=sparse)
            self.items = nn.Embedding(s["items"], s["dim"], sparse=sparse)

        def forward(self, users, items):
            return (self.users(users) * self.items(items)).sum(dim=1)

    return CNN, LSTM, MF


def _copy_weights(ours, theirs) -> None:
    state = {k: torch.from_numpy(np.array(v.data)) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)


# ----------------------------------------------------------------------------- workloads


def make_data(name: str, s: dict, count: int, seed: int = 0):
    """``count`` synthetic samples of the workload's real shapes (arrays)."""
    rng = np.random.default_rng(seed)
    if name == "cnn":
        x = rng.standard_normal((count, s["channels"], s["side"], s["side"]), dtype=np.float32)
        return x, rng.integers(0, s["classes"], count)
    if name == "lstm":
        return rng.integers(0, s["vocab"], (count, s["length"])), rng.integers(0, s["classes"], count)
    users, items = rng.integers(0, s["users"], count), rng.integers(0, s["items"], count)
    return users, items, rng.uniform(1, 5, count).astype(np.float32)


def build(name: str, s: dict, *, dropout: float | None = None, device: str = "cpu"):
    """``(engine_step, torch_step)``: each takes one batch (a tuple of arrays) and runs a
    training step (zero_grad, forward, loss, backward, optimizer step), returning the loss
    as a Python float. ``dropout`` overrides the LSTM's (0 makes the step deterministic).
    ``device`` is the engine's (its batches are copied there inside its step, as a loader
    with ``device=`` would); torch stays on the CPU."""
    tg.manual_seed(0)

    def tensor(array):
        return tg.Tensor.from_array(array) if device == "cpu" else tg.Tensor(array, device=device)
    if name == "cnn":
        ours = EngineCNN(s).to(device)
        opt = tg.optim.Adam(ours.parameters(), lr=1e-3)
        loss_fn = tg.nn.CrossEntropyLoss()

        def engine_step(batch):
            x, y = batch
            opt.zero_grad()
            loss = loss_fn(ours(tensor(x)), tensor(y))
            loss.backward()
            opt.step()
            return loss.item()
    elif name == "lstm":
        p = s["dropout"] if dropout is None else dropout
        ours = EngineLSTM(s, p).to(device)
        opt = tg.optim.Adam(ours.parameters(), lr=1e-3)
        loss_fn = tg.nn.CrossEntropyLoss()

        def engine_step(batch):
            tokens, y = batch
            opt.zero_grad()
            loss = loss_fn(ours(tensor(tokens)), tensor(y))
            loss.backward()
            opt.step()
            return loss.item()
    else:
        sparse = name == "mf_sparse"
        ours = EngineMF(s, sparse).to(device)
        opt = (tg.optim.SparseAdam(ours.parameters(), lr=1e-2) if sparse
               else tg.optim.SGD(ours.parameters(), lr=0.05, weight_decay=1e-4))
        loss_fn = tg.nn.MSELoss()

        def engine_step(batch):
            users, items, rating = batch
            opt.zero_grad()
            loss = loss_fn(ours(tensor(users), tensor(items)), tensor(rating))
            loss.backward()
            opt.step()
            return loss.item()
    if torch is None:
        return engine_step, None
    CNN, LSTM, MF = torch_models()
    if name == "cnn":
        theirs = CNN(s)
        t_opt, t_loss = torch.optim.Adam(theirs.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()
    elif name == "lstm":
        theirs = LSTM(s, s["dropout"] if dropout is None else dropout)
        t_opt, t_loss = torch.optim.Adam(theirs.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()
    else:
        theirs = MF(s, name == "mf_sparse")
        t_opt = (torch.optim.SparseAdam(list(theirs.parameters()), lr=1e-2) if name == "mf_sparse"
                 else torch.optim.SGD(theirs.parameters(), lr=0.05, weight_decay=1e-4))
        t_loss = torch.nn.MSELoss()
    _copy_weights(ours, theirs)

    def torch_step(batch):
        t_opt.zero_grad()
        loss = t_loss(theirs(*(torch.from_numpy(a) for a in batch[:-1])), torch.from_numpy(batch[-1]))
        loss.backward()
        t_opt.step()
        return loss.item()

    return engine_step, torch_step


def _batches(data, batch: int):
    n = (len(data[0]) // batch) * batch
    return [tuple(a[i:i + batch] for a in data) for i in range(0, n, batch)]


def time_steps(name: str, s: dict, rounds: int, steps: int, device: str = "cpu") -> dict:
    """Median (wall, CPU) seconds per step of each framework, timed in alternating rounds."""
    engine_step, torch_step = build(name, s, device=device)
    batches = _batches(make_data(name, s, s["batch"] * steps), s["batch"])
    runs = {"engine": engine_step} if torch_step is None else {"engine": engine_step, "torch": torch_step}
    for run in runs.values():  # warm-up: compile kernels, allocate state
        run(batches[0])
        run(batches[-1])
    times: dict = {k: ([], []) for k in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            time.sleep(SETTLE_S)
            start, start_cpu = time.perf_counter(), time.process_time()
            for b in batches:
                run(b)
            times[key][0].append((time.perf_counter() - start) / len(batches))
            times[key][1].append((time.process_time() - start_cpu) / len(batches))
    return {k: (statistics.median(wall), statistics.median(cpu)) for k, (wall, cpu) in times.items()}


def time_epoch(name: str, s: dict, chunk: int = 25, device: str = "cpu") -> tuple:
    """Seconds for one epoch of ``epoch_samples`` synthetic samples, per framework, and the
    sample count. Both frameworks run the whole epoch, interleaved ``chunk`` steps at a
    time (so a change of machine load hits both alike); each one's time is summed."""
    engine_step, torch_step = build(name, s, device=device)
    batches = _batches(make_data(name, s, s["epoch_samples"], seed=1), s["batch"])
    runs = {"engine": engine_step} if torch_step is None else {"engine": engine_step, "torch": torch_step}
    out = dict.fromkeys(runs, 0.0)
    for run in runs.values():
        run(batches[0])  # warm-up
    for first in range(0, len(batches), chunk):
        for key, run in runs.items():
            start = time.perf_counter()
            for b in batches[first:first + chunk]:
                run(b)
            out[key] += time.perf_counter() - start
    return out, len(batches) * s["batch"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per framework per round")
    parser.add_argument("--only", nargs="+", choices=tuple(FULL), default=list(FULL))
    parser.add_argument("--epoch", action="store_true", help="also time one epoch of each (samples/s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: Numba's count)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 round of 2 steps (a smoke test)")
    parser.add_argument("--device", default="cpu", help="the engine's device (cpu, cuda, cuda:1); torch stays on "
                        "the CPU")
    args = parser.parse_args(argv)
    try:
        device = tg.backend.parse_device(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(f"argument --device: {error}")
    import numba

    shapes = QUICK if args.quick else FULL
    rounds, steps = (1, 2) if args.quick else (args.rounds, args.steps)
    threads = args.threads or numba.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    torch_note = f"torch {torch.__version__} ({threads} threads)" if torch else "torch not installed"
    print(f"# example_models  numpy {np.__version__}  numba {numba.__version__} ({numba.get_num_threads()} "
          f"threads)  {torch_note}  {platform.machine()} {os.cpu_count()} cpus  {time.strftime('%Y-%m-%d %H:%M')}"
          f"  engine on {device}")
    print(f"{'workload':<10}{'engine ms':>11}{'torch ms':>10}{'engine/torch':>14}"
          f"{'engine cpu ms':>15}{'torch cpu ms':>14}{'cpu ratio':>11}")
    for name in args.only:
        median = time_steps(name, shapes[name], rounds, steps, device)
        (wall, cpu) = median["engine"]
        line = f"{name:<10}{wall * 1e3:>11.2f}"
        if "torch" in median:
            t_wall, t_cpu = median["torch"]
            line += f"{t_wall * 1e3:>10.2f}{wall / t_wall:>13.2f}x{cpu * 1e3:>15.2f}{t_cpu * 1e3:>14.2f}"
            line += f"{cpu / t_cpu:>10.2f}x"
        else:
            line += f"{'':>24}{cpu * 1e3:>15.2f}"
        print(line, flush=True)
    if args.epoch or args.quick:
        print(f"{'epoch':<10}{'samples':>9}{'engine s':>10}{'torch s':>9}{'engine/s':>10}{'torch/s':>9}"
              f"{'engine/torch':>14}")
        for name in args.only:
            seconds, count = time_epoch(name, shapes[name], device=device)
            line = f"{name:<10}{count:>9}{seconds['engine']:>10.2f}"
            if "torch" in seconds:
                line += f"{seconds['torch']:>9.2f}{count / seconds['engine']:>10.0f}{count / seconds['torch']:>9.0f}"
                line += f"{seconds['engine'] / seconds['torch']:>13.2f}x"
            else:
                line += f"{'':>9}{count / seconds['engine']:>10.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
