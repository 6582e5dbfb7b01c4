"""RSS growth while a DataLoader sweeps a 2 GiB memory-mapped data set.

Writes an MNIST-shaped float32 feature file (rows of 784 values) and an int64 label file
totalling --size-gib GiB into a temporary directory (never holding them in memory),
then iterates one shuffled epoch through ``MemmapDataset`` + ``DataLoader`` and prints how
far the process's peak resident set (VmHWM, reset through /proc/self/clear_refs before the
sweep, so transients inside a batch count) rose above its RSS before the sweep. Target:
under 200 MB for 2 GiB. ``--control`` repeats the sweep by fancy-indexing numpy's memory
map of the same files, to show what reading rows instead of mapping them avoids.

Run: python benchmarks/memmap_rss.py [--size-gib 2] [--batch-size 256] [--dir /tmp] [--control]
Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import numpy as np

import tinygrad_sgd as tg

WIDTH = 784


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_rows(path: str, n_rows: int, width: int | None, dtype, chunk: int = 16384) -> None:
    """An .npy file written chunk by chunk; row i holds i (checked during the sweep)."""
    shape = (n_rows,) if width is None else (n_rows, width)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
        for start in range(0, n_rows, chunk):
            rows = np.arange(start, min(start + chunk, n_rows), dtype=dtype)
            if width is not None:
                rows = np.ascontiguousarray(np.broadcast_to(rows[:, None], (rows.size, width)))
            rows.tofile(f)


def peak_growth(run) -> tuple[float, float]:
    """(peak RSS growth in bytes, seconds) of run()."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = rss_bytes()
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return hwm - base, elapsed


def sweep_dataset(x_path: str, y_path: str, batch_size: int) -> None:
    dataset = tg.data.MemmapDataset(x_path, y_path)
    seen = 0
    for xb, yb in tg.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, seed=0):
        if not np.array_equal(xb.data[:, 0], yb.data.astype(np.float32)):
            raise AssertionError("a batch's rows do not match its labels")
        seen += len(yb)
    if seen != len(dataset):
        raise AssertionError(f"the epoch visited {seen} of {len(dataset)} samples")


def sweep_plain_memmap(x_path: str, y_path: str, batch_size: int) -> None:
    x, y = np.load(x_path, mmap_mode="r"), np.load(y_path, mmap_mode="r")
    order = np.random.default_rng(0).permutation(len(y))
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        np.take(x, idx, axis=0), np.take(y, idx, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dir", default=None, help="where to write the temporary files (default: system temp)")
    parser.add_argument("--control", action="store_true", help="also sweep with the RSS budget switched off")
    args = parser.parse_args()

    row_bytes = WIDTH * 4 + 8
    n_rows = int(args.size_gib * 2**30) // row_bytes
    folder = tempfile.mkdtemp(prefix="memmap_rss_", dir=args.dir)
    try:
        x_path, y_path = os.path.join(folder, "x.npy"), os.path.join(folder, "y.npy")
        start = time.perf_counter()
        write_rows(x_path, n_rows, WIDTH, np.float32)
        write_rows(y_path, n_rows, None, np.int64)
        size = os.path.getsize(x_path) + os.path.getsize(y_path)
        print(f"machine: {platform.machine()} python {platform.python_version()} numpy {np.__version__}")
        print(f"wrote {size / 2**30:.2f} GiB ({n_rows} rows of {WIDTH} float32 + int64 label) "
              f"in {time.perf_counter() - start:.1f} s")
        peak, elapsed = peak_growth(lambda: sweep_dataset(x_path, y_path, args.batch_size))
        print(f"MemmapDataset, shuffled epoch, batch {args.batch_size}: peak RSS growth {peak / 1e6:.1f} MB "
              f"(target < 200 MB: {'PASS' if peak < 200e6 else 'FAIL'}), {elapsed:.1f} s, "
              f"{size / elapsed / 1e9:.2f} GB/s")
        if args.control:
            peak, elapsed = peak_growth(lambda: sweep_plain_memmap(x_path, y_path, args.batch_size))
            print(f"control, np.load(mmap_mode='r') + fancy indexing: peak RSS growth {peak / 1e6:.1f} MB, "
                  f"{elapsed:.1f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
