"""One optimizer update over a large flat parameter buffer: the plain NumPy reference
(kernels/reference.py, one pass over memory per line), the fused Numba CPU kernel, torch's
``fused=True`` CPU optimizers, and the memory floor, all in the same process.

    python benchmarks/optimizer_update.py [--size 10000000] [--rounds 21] [--only Adam ...] [--dtype float32]

The memory floor is a Numba ``prange`` loop moving exactly the bytes the update must move:
it reads the gradient (plus the noise array when used) and adds it in place into the same
number of buffers the update rewrites (Adam: reads p, g, m, v and writes p, m, v: 7 x 4
bytes per parameter). "% floor" is floor time / update time: 100% is a pure memory-bound
pass. GPU columns (CuPy arrays: reference on CuPy, fused Numba-CUDA kernel, CuPy floor)
appear when CuPy and a GPU are present.

Timing: every round times each column once, in turn (so a change in machine load hits all
columns alike); the median over rounds is printed. Targets on the CPU: fused Adam >= 85% of
the floor, no slower than torch's fused Adam, and >= 10x faster than the NumPy reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numba
import numpy as np
from numba import njit, prange

import tinygrad_sgd as tg
from tinygrad_sgd.kernels import cpu, harness, reference

# (label, kernel name, hyperparameters, torch class or None, torch kwargs)
CONFIGS = [
    ("SGD momentum", "sgd", dict(lr=0.01, momentum=0.9), "SGD", dict(lr=0.01, momentum=0.9)),
    ("Adam", "adam", dict(lr=1e-3), "Adam", dict(lr=1e-3)),
    ("AdamW", "adam", dict(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True), "AdamW",
     dict(lr=1e-3, weight_decay=1e-2)),
    ("Adam amsgrad", "adam", dict(lr=1e-3, amsgrad=True), "Adam", dict(lr=1e-3, amsgrad=True)),
    ("RMSprop", "rmsprop", dict(lr=1e-2), None, None),
    ("RMSprop centered+mom", "rmsprop", dict(lr=1e-2, momentum=0.9, centered=True), None, None),
    ("Adagrad", "adagrad", dict(lr=1e-2), "Adagrad", dict(lr=1e-2)),
]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _floor_cpu(g, buffers):
    """buffers[k][i] += g[i] for every k: reads g and every buffer, writes every buffer."""
    for i in prange(g.size):
        gi = g[i]
        for k in range(len(buffers)):
            buffers[k][i] += gi


def _median_rounds(columns: dict, rounds: int) -> dict:
    for fn in columns.values():  # warm-up (compiles, faults the pages in)
        fn()
    times = {name: [] for name in columns}
    for _ in range(rounds):
        for name, fn in columns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def _update_columns(implementations, kind, hyper, p0, g, sync=None) -> dict:
    """One timed callable per (label, kernel module): each steps its own copy of the
    parameters and state, then waits for the device when ``sync`` is given."""
    columns = {}
    for label, module in implementations:
        p = p0.copy()
        state = harness.init_state(kind, p, hyper)
        counter = {"step": 0}

        def run(module=module, p=p, state=state, counter=counter):
            counter["step"] += 1
            harness.update(module, kind, p, g, state, counter["step"], hyper)
            if sync is not None:
                sync()
        columns[label] = run
    return columns


def _cpu_columns(kind, hyper, torch_name, torch_kwargs, size, dtype, rng):
    p0 = rng.standard_normal(size).astype(dtype)
    g = (1e-3 * rng.standard_normal(size)).astype(dtype)
    columns = _update_columns((("numpy", reference), ("fused", cpu)), kind, hyper, p0, g)
    written = 1 + len(harness.needed_state(kind, hyper))
    floor_buffers = tuple(p0.copy() for _ in range(written))
    columns["floor"] = lambda: _floor_cpu(g, floor_buffers)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch_name is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        tp.grad = torch.from_numpy(g.copy())
        try:
            opt = getattr(torch.optim, torch_name)([tp], fused=True, **torch_kwargs)
            opt.step()
            columns["torch fused"] = opt.step
        except (RuntimeError, TypeError, ValueError) as error:  # fused unsupported here
            print(f"  ({torch_name}: torch fused=True unavailable: {error})")
    return columns, written


def _gpu_columns(kind, hyper, size, dtype, rng):
    import cupy

    from tinygrad_sgd import kernels

    p0 = cupy.asarray(rng.standard_normal(size).astype(dtype))
    g = cupy.asarray((1e-3 * rng.standard_normal(size)).astype(dtype))
    columns = _update_columns((("gpu numpy-style", reference), ("gpu fused", kernels)), kind, hyper, p0, g,
                              sync=cupy.cuda.get_current_stream().synchronize)
    written = 1 + len(harness.needed_state(kind, hyper))
    buffers = [p0.copy() for _ in range(written)]
    names = [f"b{k}" for k in range(written)]
    floor = cupy.ElementwiseKernel("T g", ", ".join(f"T {n}" for n in names),
                                   "; ".join(f"{n} += g" for n in names), f"floor{written}")

    def run_floor():
        floor(g, *buffers)
        cupy.cuda.get_current_stream().synchronize()
    columns["gpu floor"] = run_floor
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--only", nargs="*", metavar="LABEL", help="run only these rows (e.g. Adam AdamW)")
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    try:
        import torch
        torch_info = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_info = "torch not installed"
    print(f"{args.size:,} {dtype} parameters; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads, "
          f"layer {numba.config.THREADING_LAYER}); numpy {np.__version__}; {torch_info}")
    gpu = tg.gpu_available()
    if not gpu:
        print("GPU columns skipped: no CuPy with a usable CUDA GPU")
    header = (f"{'update':22s} {'bytes/param':>11s} {'floor ms':>9s} {'numpy ms':>9s} {'fused ms':>9s} "
              f"{'fused %floor':>12s} {'torch fused ms':>14s} {'torch %floor':>12s} {'numpy/fused':>11s} "
              f"{'torch/fused':>11s}")
    print(header)
    rng = np.random.default_rng(0)
    for label, kind, hyper, torch_name, torch_kwargs in CONFIGS:
        if args.only and label not in args.only:
            continue
        columns, written = _cpu_columns(kind, hyper, torch_name, torch_kwargs, args.size, dtype, rng)
        ms = _median_rounds(columns, args.rounds)
        nbytes = (1 + 2 * written) * dtype.itemsize  # g read; each written buffer read + written
        torch_ms = ms.get("torch fused")
        torch_text = (f"{torch_ms:14.2f} {100 * ms['floor'] / torch_ms:11.0f}%" if torch_ms else
                      f"{'-':>14s} {'-':>12s}")
        ratio_torch = f"{torch_ms / ms['fused']:10.2f}x" if torch_ms else f"{'-':>11s}"
        print(f"{label:22s} {nbytes:11d} {ms['floor']:9.2f} {ms['numpy']:9.2f} {ms['fused']:9.2f} "
              f"{100 * ms['floor'] / ms['fused']:11.0f}% {torch_text} {ms['numpy'] / ms['fused']:10.1f}x "
              f"{ratio_torch}")
        del columns
        if gpu:
            gms = _median_rounds(_gpu_columns(kind, hyper, args.size, dtype, rng), args.rounds)
            print(f"{'  on GPU':22s} {nbytes:11d} {gms['gpu floor']:9.3f} {gms['gpu numpy-style']:9.3f} "
                  f"{gms['gpu fused']:9.3f} {100 * gms['gpu floor'] / gms['gpu fused']:11.0f}%")


if __name__ == "__main__":
    main()
