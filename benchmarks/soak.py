"""Soak test: does memory stay flat over a long run?

Two modes, both training a 64-32-10 ReLU MLP on the bundled digits (batch 32, SGD with
momentum, float32) through ``tg.train.fit`` -- the loader, the engine, the fused
optimizer, the step guard and the History, as a user runs them:

``--mode rss`` (default): ``--steps`` optimizer steps (100,000 for the issue's figure),
recording the process's resident set size (``/proc/self/statm``) every ``--every``
steps. The History grows by design (six numbers per step); its own size (the lists and
their number objects, by ``sys.getsizeof``) is printed beside the RSS, with the RSS
growth after warm-up minus the History's growth. ``--discard-history`` runs fit with a
History that keeps no step rows, so the RSS growth left is the library's own: the
figure to judge. Target: flat after warm-up, within +5 MB.

``--mode tracemalloc``: ``--steps`` steps (5,000 for the issue's figure) under
``tracemalloc``; compares a snapshot taken after the warm-up with one at the end, grouped
by source line, and prints the lines whose allocations grew. Everything but the History's
``log_step`` line should stay flat. It also counts the live Tensors and autograd
Functions (``gc``) at both points: a growing count would be leaked graph nodes.

    python benchmarks/soak.py --mode rss --steps 100000 --every 1000 [--discard-history]
    python benchmarks/soak.py --mode tracemalloc --steps 5000
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

import tinygrad_sgd as tg
from tinygrad_sgd.autograd.engine import Function
from tinygrad_sgd.train import loop
from tinygrad_sgd.train.history import History


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def history_mb(history, window: int = 1000) -> float:
    """Bytes held by the History's step lists and the number objects in them: the lists
    exactly, the objects per row measured on the last ``window`` rows (each object once:
    the epoch, the learning rate and small ints are shared between rows). Counting every
    row with a set of ids would allocate tens of MB, which the RSS readings would see."""
    lists = sum(sys.getsizeof(values) for values in history.steps.values())
    rows = len(history)
    if rows == 0:
        return lists / 2**20
    seen, objects = set(), 0
    for values in history.steps.values():
        for v in values[-window:]:
            if id(v) not in seen:
                seen.add(id(v))
                objects += sys.getsizeof(v)
    return (lists + objects * rows / min(rows, window)) / 2**20


def live_graph_objects() -> tuple:
    gc.collect()
    tensors = functions = 0
    for obj in gc.get_objects():
        if isinstance(obj, tg.Tensor):
            tensors += 1
        elif isinstance(obj, Function):
            functions += 1
    return tensors, functions


class Done(Exception):
    """Raised by the probe to end fit at exactly the requested step."""


class Probe(tg.train.Callback):
    """Calls ``record(step, history)`` every ``every`` steps; stops the run at ``steps``."""

    def __init__(self, steps: int, every: int, record):
        self.steps, self.every, self.record = steps, every, record

    def on_step_end(self, state):
        if state.step % self.every == 0:
            self.record(state.step, state.history)
        if state.step >= self.steps:
            raise Done


class CountingHistory(History):
    """A History that counts steps but keeps no step rows (``--discard-history``): what is
    left of the RSS growth is the library's, not the rows it stores by design."""

    def log_step(self, **row) -> None:
        self.discarded = getattr(self, "discarded", 0) + 1


def run(steps: int, every: int, record) -> None:
    (x, y), _ = tg.data.load_digits(split=0.2, seed=0)
    tg.manual_seed(0)
    model = tg.nn.Sequential(tg.nn.Linear(64, 32), tg.nn.ReLU(), tg.nn.Linear(32, 10))
    opt = tg.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=32, shuffle=True, seed=0)
    epochs = -(-steps // len(loader)) + 1
    try:
        tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=epochs, progress=False, log=None,
                     callbacks=[Probe(steps, every, record)])
    except Done:
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["rss", "tracemalloc"], default="rss")
    parser.add_argument("--steps", type=int, default=None, help="100000 (rss) or 5000 (tracemalloc)")
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=None, help="steps before the baseline (default: steps/10)")
    parser.add_argument("--discard-history", action="store_true",
                        help="fit keeps no per-step History rows (isolates the library's own memory)")
    args = parser.parse_args(argv)
    if args.discard_history:
        loop.History = CountingHistory
    steps = args.steps or (100_000 if args.mode == "rss" else 5_000)
    if args.warmup is not None:
        warmup = args.warmup
    else:
        warmup = max(args.every, steps // 10) if args.mode == "rss" else max(1, steps // 10)
    print(f"# soak --mode {args.mode} --steps {steps} --every {args.every} --warmup {warmup}"
          f"{' --discard-history' if args.discard_history else ''}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"NumPy {np.__version__}")
    started = time.perf_counter()
    if args.mode == "rss":
        base = {}
        print(f"{'step':>8} {'rss_MB':>8} {'history_MB':>10} {'growth_MB':>10} {'minus_history_MB':>16}")

        def record(step, history):
            rss, hist = rss_mb(), history_mb(history)
            if step >= warmup and not base:
                base.update(rss=rss, hist=hist)
            growth = rss - base["rss"] if base else float("nan")
            net = growth - (hist - base["hist"]) if base else float("nan")
            print(f"{step:8d} {rss:8.2f} {hist:10.2f} {growth:10.2f} {net:16.2f}", flush=True)

        run(steps, args.every, record)
    else:
        marks = {}

        def record(step, history):
            if step == warmup:
                marks["objects"] = live_graph_objects()
                gc.collect()
                marks["snapshot"] = tracemalloc.take_snapshot()
            elif step == steps:
                marks["end_objects"] = live_graph_objects()
                gc.collect()
                marks["end"] = tracemalloc.take_snapshot()
                marks["history_rows"] = len(history)

        tracemalloc.start(1)
        run(steps, math.gcd(warmup, steps), record)  # the probe sees both the warm-up's end and the last step
        tracemalloc.stop()
        stats = marks["end"].compare_to(marks["snapshot"], "lineno")
        grown = [s for s in stats if s.size_diff > 0]
        print(f"live Tensors, Functions after warm-up: {marks['objects']}; at the end: {marks['end_objects']}")
        print(f"History rows at the end: {marks['history_rows']} (6 numbers each, stored by design)")
        print(f"total growth {sum(s.size_diff for s in stats) / 1024:.1f} KiB between step {warmup} and {steps}; "
              "lines that grew:")
        for s in grown[:12]:
            frame = s.traceback[0]
            print(f"  {s.size_diff / 1024:9.1f} KiB {s.count_diff:+7d} blocks  {frame.filename}:{frame.lineno}")
    print(f"# {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
