"""One optimizer update over 10M parameters, all in one process, in two tables.

1. The kernel: the plain NumPy reference (the optimizers' ``_single_tensor_*``, one pass
   over memory per line), the fused multi-tensor Numba CPU kernel over a list of tensors
   (``--tensors`` equal pieces), torch's ``fused=True`` CPU optimizers, and the memory floor.
2. The public API: ``opt.step()`` of ``tg.optim.Adam`` (and SGD momentum) on the same
   number of parameters laid out as 10 x 1M and as 1000 x 10k tensors, with gradients
   produced by backward through an elementwise op (not Linear), against
   ``torch.optim.Adam(fused=True)`` on the same layout and the memory floor.

    python benchmarks/optimizer_update.py [--size 10000000] [--tensors 10] [--rounds 21] [--only Adam ...]
        [--dtype float32] [--skip-kernel] [--skip-api]

The memory floor is a Numba ``prange`` loop moving exactly the bytes the update must move:
it reads the gradient and adds it in place into the same
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
from tinygrad_sgd.optim import functional

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


def _split(array, pieces: int) -> list:
    """``array`` as ``pieces`` separate contiguous arrays (copies: separate allocations)."""
    return [part.copy() for part in np.array_split(array, pieces)]


def _update_columns(implementations, kind, hyper, p0, g, pieces, sync=None) -> dict:
    """One timed callable per (label, fused): each steps its own copy of the parameters
    (``pieces`` tensors) and state, then waits for the device when ``sync`` is given."""
    columns = {}
    grads = _split(g, pieces)
    for label, fused in implementations:
        params = _split(p0, pieces)
        state = functional.init_state(kind, params, hyper)
        counter = {"step": 0}

        def run(fused=fused, params=params, state=state, counter=counter):
            counter["step"] += 1
            functional.update(kind, params, grads, state, counter["step"], hyper, fused=fused)
            if sync is not None:
                sync()
        columns[label] = run
    return columns


def _cpu_columns(kind, hyper, torch_name, torch_kwargs, size, dtype, rng, pieces):
    p0 = rng.standard_normal(size).astype(dtype)
    g = (1e-3 * rng.standard_normal(size)).astype(dtype)
    columns = _update_columns((("numpy", False), ("fused", True)), kind, hyper, p0, g, pieces)
    written = 1 + len(functional.needed_state(kind, hyper))
    floor_buffers = tuple(p0.copy() for _ in range(written))
    columns["floor"] = lambda: _floor_cpu(g, floor_buffers)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch_name is not None:
        tps = [torch.nn.Parameter(torch.from_numpy(part)) for part in _split(p0, pieces)]
        for tp, part in zip(tps, _split(g, pieces)):
            tp.grad = torch.from_numpy(part)
        try:
            opt = getattr(torch.optim, torch_name)(tps, fused=True, **torch_kwargs)
            opt.step()
            columns["torch fused"] = opt.step
        except (RuntimeError, TypeError, ValueError) as error:  # fused unsupported here
            print(f"  ({torch_name}: torch fused=True unavailable: {error})")
    return columns, written


def _gpu_columns(kind, hyper, size, dtype, rng, pieces):
    import cupy

    p0 = cupy.asarray(rng.standard_normal(size).astype(dtype))
    g = cupy.asarray((1e-3 * rng.standard_normal(size)).astype(dtype))
    columns = _update_columns((("gpu numpy-style", False), ("gpu fused", True)), kind, hyper, p0, g, pieces,
                              sync=cupy.cuda.get_current_stream().synchronize)
    written = 1 + len(functional.needed_state(kind, hyper))
    buffers = [p0.copy() for _ in range(written)]
    names = [f"b{k}" for k in range(written)]
    floor = cupy.ElementwiseKernel("T g", ", ".join(f"T {n}" for n in names),
                                   "; ".join(f"{n} += g" for n in names), f"floor{written}")

    def run_floor():
        floor(g, *buffers)
        cupy.cuda.get_current_stream().synchronize()
    columns["gpu floor"] = run_floor
    return columns


# ---- the public API: opt.step() ------------------------------------------------------------

API_CONFIGS = [("Adam", dict(lr=1e-3), 4), ("SGD", dict(lr=0.01, momentum=0.9), 2)]  # (class, kwargs, written)


def _api_columns(name, kwargs, written, sizes, dtype, rng):
    """``opt.step()`` of tinygrad_sgd and of torch (fused=True) on tensors of ``sizes``,
    with gradients from backward through an elementwise product (computed once: the timed
    call is the step alone, as a training step would call it), and the floor."""
    import torch

    values = [rng.standard_normal(n).astype(dtype) for n in sizes]
    params = [tg.Tensor(v.copy(), requires_grad=True) for v in values]
    weights = [tg.Tensor((1e-3 * rng.standard_normal(n)).astype(dtype)) for n in sizes]
    loss = None
    for p, w in zip(params, weights):
        term = (p * w).sum()
        loss = term if loss is None else loss + term
    loss.backward()  # each gradient is w: a fresh array from Mul's backward
    opt = getattr(tg.optim, name)(params, **kwargs)
    assert opt.fused
    tps = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    for tp, w in zip(tps, weights):
        tp.grad = torch.from_numpy(w.data.copy())
    topt = getattr(torch.optim, name)(tps, fused=True, **kwargs)
    g = np.concatenate([w.data for w in weights])
    floor_buffers = tuple(np.concatenate(values) for _ in range(written))
    return {"tinygrad_sgd step": opt.step, "torch fused step": topt.step,
            "floor": lambda: _floor_cpu(g, floor_buffers)}


def _api_table(args, dtype, rng) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("opt.step() table skipped: torch is not installed")
        return
    print(f"\n{'opt.step() (public API)':30s} {'floor ms':>9s} {'tg step ms':>10s} {'torch fused ms':>14s} "
          f"{'tg/torch':>9s} {'tg %floor':>9s}")
    layouts = [("10 x 1M", [args.size // 10] * 10), ("1000 x 10k", [args.size // 1000] * 1000)]
    for name, kwargs, written in API_CONFIGS:
        if args.only and name not in args.only:
            continue
        for layout, sizes in layouts:
            columns = _api_columns(name, kwargs, written, sizes, dtype, rng)
            ms = _median_rounds(columns, args.rounds)
            print(f"{name + ' ' + layout:30s} {ms['floor']:9.2f} {ms['tinygrad_sgd step']:10.2f} "
                  f"{ms['torch fused step']:14.2f} {ms['tinygrad_sgd step'] / ms['torch fused step']:8.2f}x "
                  f"{100 * ms['floor'] / ms['tinygrad_sgd step']:8.0f}%")
            del columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--tensors", type=int, default=10, help="kernel table: the parameters as this many tensors")
    parser.add_argument("--only", nargs="*", metavar="LABEL", help="run only these rows (e.g. Adam AdamW)")
    parser.add_argument("--skip-kernel", action="store_true", help="only the opt.step() table")
    parser.add_argument("--skip-api", action="store_true", help="only the kernel table")
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
    rng = np.random.default_rng(0)
    if not args.skip_kernel:
        _kernel_table(args, dtype, rng, gpu)
    if not args.skip_api:
        _api_table(args, dtype, rng)


def _kernel_table(args, dtype, rng, gpu) -> None:
    print(f"kernel: {args.tensors} tensors per call")
    header = (f"{'update':22s} {'bytes/param':>11s} {'floor ms':>9s} {'numpy ms':>9s} {'fused ms':>9s} "
              f"{'fused %floor':>12s} {'torch fused ms':>14s} {'torch %floor':>12s} {'numpy/fused':>11s} "
              f"{'torch/fused':>11s}")
    print(header)
    for label, kind, hyper, torch_name, torch_kwargs in CONFIGS:
        if args.only and label not in args.only:
            continue
        columns, written = _cpu_columns(kind, hyper, torch_name, torch_kwargs, args.size, dtype, rng,
                                        args.tensors)
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
            gms = _median_rounds(_gpu_columns(kind, hyper, args.size, dtype, rng, args.tensors), args.rounds)
            print(f"{'  on GPU':22s} {nbytes:11d} {gms['gpu floor']:9.3f} {gms['gpu numpy-style']:9.3f} "
                  f"{gms['gpu fused']:9.3f} {100 * gms['gpu floor'] / gms['gpu fused']:11.0f}%")


if __name__ == "__main__":
    main()
