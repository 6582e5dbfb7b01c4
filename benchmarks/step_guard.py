"""What the step guard costs: ``tg.train.fit`` epochs with the default guard (a finite
check of the parameters after each step, "check"), with ``undo_nonfinite_step=True``
(copies of the parameters and optimizer state before each step as well, "undo"), and
with the guard replaced by a no-op ("none"), in alternating rounds in one process.

    python benchmarks/step_guard.py [--hidden 32 256] [--batch-size 32] [--rounds 7]

Model: 64-H-H-10 ReLU MLP on the bundled digits, SGD with momentum and Adam, float32.
Prints the median epoch time of each and the ratios to "none".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

import tinygrad_sgd as tg
from tinygrad_sgd.train import loop


class NoGuard:
    """No check at all: the baseline."""

    def __init__(self, params, optimizer, *, undo=False):
        pass

    def save(self):
        pass

    def finite(self):
        return True

    def restore(self):  # pragma: no cover
        return False


def epoch_time(hidden: int, batch_size: int, opt_name: str, variant: str, data) -> float:
    x, y = data
    tg.manual_seed(0)
    model = tg.nn.Sequential(tg.nn.Linear(64, hidden), tg.nn.ReLU(), tg.nn.Linear(hidden, hidden), tg.nn.ReLU(),
                             tg.nn.Linear(hidden, 10))
    opt = (tg.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if opt_name == "SGD"
           else tg.optim.Adam(model.parameters(), lr=1e-3))
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True, seed=0)
    loop.StepGuard = NoGuard if variant == "none" else loop_guard
    try:
        started = time.perf_counter()
        tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False, log=None,
                     undo_nonfinite_step=variant == "undo")
        return time.perf_counter() - started
    finally:
        loop.StepGuard = loop_guard


loop_guard = loop.StepGuard


def per_call(hiddens, calls: int = 2000) -> int:
    """Microseconds per call of the guard's check (``isfinite`` per array) and of the fused
    float64 sum of squares (``kernels.sum_of_squares``) over the same parameters,
    alternating in 5 rounds; the median round is printed."""
    from tinygrad_sgd import kernels
    from tinygrad_sgd.train.guard import all_finite

    print(f"{'model':>14} {'isfinite_us':>11} {'sum_of_squares_us':>17}")
    for hidden in hiddens:
        tg.manual_seed(0)
        model = tg.nn.Sequential(tg.nn.Linear(64, hidden), tg.nn.ReLU(), tg.nn.Linear(hidden, hidden),
                                 tg.nn.ReLU(), tg.nn.Linear(hidden, 10))
        arrays = [p.data for p in model.parameters()]
        candidates = {"isfinite": lambda a=arrays: all_finite(a), "sum": lambda a=arrays: kernels.sum_of_squares(a)}
        rounds: dict = {name: [] for name in candidates}
        for fn in candidates.values():
            fn()  # compile
        for _ in range(5):
            for name, fn in candidates.items():
                started = time.perf_counter()
                for _ in range(calls):
                    fn()
                rounds[name].append((time.perf_counter() - started) / calls * 1e6)
        print(f"{f'64-{hidden}-{hidden}-10':>14} {statistics.median(rounds['isfinite']):11.1f} "
              f"{statistics.median(rounds['sum']):17.1f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-call", action="store_true",
                        help="only time the check itself against the fused sum of squares, per call")
    args = parser.parse_args(argv)
    if args.per_call:
        return per_call(args.hidden)
    (x, y), _ = tg.data.load_digits(split=0.2, seed=0)
    print(f"# step_guard: {len(x)} samples, batch {args.batch_size}, {args.rounds} rounds; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, NumPy {np.__version__}")
    print(f"{'model':>14} {'opt':>5} {'undo_ms':>8} {'check_ms':>8} {'none_ms':>8} {'undo/none':>9} {'check/none':>10}")
    for hidden in args.hidden:
        for opt_name in ("SGD", "Adam"):
            times: dict = {name: [] for name in ("undo", "check", "none")}
            epoch_time(hidden, args.batch_size, opt_name, "undo", (x, y))  # warm-up (Numba compiles)
            for _ in range(args.rounds):
                for name, series in times.items():
                    series.append(epoch_time(hidden, args.batch_size, opt_name, name, (x, y)))
            m = {name: statistics.median(t) for name, t in times.items()}
            print(f"{f'64-{hidden}-{hidden}-10':>14} {opt_name:>5} {m['undo'] * 1e3:8.1f} {m['check'] * 1e3:8.1f} "
                  f"{m['none'] * 1e3:8.1f} {m['undo'] / m['none']:9.3f} {m['check'] / m['none']:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
