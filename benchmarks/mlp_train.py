"""End-to-end epoch time: the engine's MLP (tg.nn + tg.optim.SGD) against the same MLP
written by hand in NumPy and against PyTorch's CPU eager mode (when torch is installed),
at batch sizes 32, 128 and 512, in one process. Prints times and ratios.

    python benchmarks/mlp_train.py [--samples 8192] [--epochs 3] [--batch-sizes 32 128 512]

Model: 784-256-256-10 ReLU MLP, cross-entropy, SGD with momentum 0.9 (PyTorch's
convention), float32. Every framework sees the same batches in the same order (one
permutation, sliced), so only the framework differs. Each configuration runs one warm-up
epoch, then ``--epochs`` timed epochs, alternating frameworks epoch by epoch so a change in
machine load hits all of them alike, with a short pause before each so that one
framework's idle-spinning worker threads do not slow the next; the median epoch is
reported. Targets: engine <= 1.15x hand-written NumPy at batch 128, and faster than torch
eager at every batch size.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import tinygrad_sgd as tg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from op_overhead import SIZES, NumpyMLP, make_params  # noqa: E402  (same hand-written baseline)

try:
    import torch
except ImportError:
    torch = None

LR, MOMENTUM = 0.01, 0.9
SETTLE_S = 0.25  # pause before each timed epoch (see main)


def engine_model(params, engine=tg):
    """The MLP, its loss and its optimizer, built with ``engine`` (the tinygrad_sgd package,
    or engine_ab.py's copy of an earlier revision)."""
    layers = []
    for i in range(0, len(params), 2):
        linear = engine.nn.Linear(params[i].shape[1], params[i].shape[0])
        with engine.no_grad():
            linear.weight.data[...] = params[i]
            linear.bias.data[...] = params[i + 1]
        layers += [linear, engine.nn.ReLU()]
    model = engine.nn.Sequential(*layers[:-1])
    return model, engine.nn.CrossEntropyLoss(), engine.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def torch_model(params):
    layers = []
    for i in range(0, len(params), 2):
        linear = torch.nn.Linear(params[i].shape[1], params[i].shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(params[i]))
            linear.bias.copy_(torch.from_numpy(params[i + 1]))
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    return model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def make_epochs(x, y, batch, params):
    """One epoch function per framework, each over the same batches."""
    n = (len(x) // batch) * batch
    numpy_net = NumpyMLP(params, lr=LR, momentum=MOMENTUM)

    def numpy_epoch():
        for i in range(0, n, batch):
            numpy_net.step(x[i:i + batch], y[i:i + batch])

    model, loss_fn, opt = engine_model(params)
    xs = [tg.Tensor.from_array(x[i:i + batch]) for i in range(0, n, batch)]
    ys = [tg.Tensor.from_array(y[i:i + batch]) for i in range(0, n, batch)]

    def engine_epoch():
        for xb, yb in zip(xs, ys):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()

    epochs = {"engine": engine_epoch, "numpy": numpy_epoch}
    if torch is not None:
        t_model, t_loss, t_opt = torch_model(params)
        txs = [torch.from_numpy(x[i:i + batch]) for i in range(0, n, batch)]
        tys = [torch.from_numpy(y[i:i + batch]) for i in range(0, n, batch)]

        def torch_epoch():
            for xb, yb in zip(txs, tys):
                t_opt.zero_grad()
                t_loss(t_model(xb), yb).backward()
                t_opt.step()

        epochs["torch"] = torch_epoch
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], args.samples)
    params = make_params()
    torch_note = f"torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else "torch not installed"
    print(f"# mlp_train  {'-'.join(map(str, SIZES))}  {args.samples} samples/epoch  numpy {np.__version__}  "
          f"{torch_note}  {platform.machine()}  {time.strftime('%Y-%m-%d')}")
    header = f"{'batch':>6}{'engine s':>11}{'numpy s':>10}"
    header += f"{'torch s':>10}" if torch else ""
    header += f"{'engine/numpy':>14}" + (f"{'engine/torch':>14}" if torch else "")
    print(header)
    for batch in args.batch_sizes:
        epochs = make_epochs(x, y, batch, params)
        for run in epochs.values():  # warm-up
            run()
        times = {name: [] for name in epochs}
        for _ in range(args.epochs):
            for name, run in epochs.items():
                # Let the previous framework's worker threads go idle first: torch's
                # OpenMP threads keep spinning for a while after its epoch and would
                # slow down whichever framework ran next (the engine, in this order).
                time.sleep(SETTLE_S)
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(t) for name, t in times.items()}
        line = f"{batch:>6}{median['engine']:>11.3f}{median['numpy']:>10.3f}"
        line += f"{median['torch']:>10.3f}" if torch else ""
        line += f"{median['engine'] / median['numpy']:>13.3f}x"
        line += f"{median['engine'] / median['torch']:>13.3f}x" if torch else ""
        print(line, flush=True)


if __name__ == "__main__":
    main()
