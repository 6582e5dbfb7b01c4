"""Fused CUDA Adam against the GPU's own copy bandwidth (target: at least 80%).

    python benchmarks/gpu_bandwidth.py [--size 100000000] [--tensors 10] [--rounds 21]

A device-to-device copy (``dst[...] = src``) reads and writes every byte once: 2 x 4 bytes
per float32 element. A fused Adam step (``kernels.adam_update`` over ``--tensors`` arrays)
reads p, g, m, v and writes p, m, v: 7 x 4 bytes per parameter, one launch. Each reports
bytes moved / time (GB/s); the last line is Adam's figure as a percentage of the copy's.
Times come from CUDA events around each call; rounds alternate the two, and the median is
printed. Without CuPy and a GPU the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import tinygrad_sgd as tg
from tinygrad_sgd import kernels


def timed_ms(cupy, fn) -> float:
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000_000, help="float32 parameters (default 1e8)")
    parser.add_argument("--tensors", type=int, default=10, help="the parameters as this many arrays")
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    if not tg.gpu_available():
        print("gpu_bandwidth: no CUDA GPU usable through CuPy; nothing to measure")
        return
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}, size {args.size:,} float32 in {args.tensors} tensors, "
          f"{args.rounds} rounds")
    piece = args.size // args.tensors
    gen = np.random.default_rng(0)

    def arrays(scale):
        return [cupy.asarray((scale * gen.standard_normal(piece)).astype(np.float32))
                for _ in range(args.tensors)]

    def zeros():
        return [cupy.zeros(piece, cupy.float32) for _ in range(args.tensors)]

    params, grads, exp_avgs, exp_avg_sqs = arrays(1.0), arrays(1e-3), zeros(), zeros()
    src, dst = cupy.ones(piece * args.tensors, cupy.float32), cupy.empty(piece * args.tensors, cupy.float32)
    step = [0]

    def adam():
        step[0] += 1
        kernels.adam_update(params, grads, exp_avgs, exp_avg_sqs, step=step[0], lr=1e-3)

    def copy():
        dst[...] = src

    adam()  # compile the kernel and warm up both
    copy()
    times: dict[str, list] = {"copy": [], "adam": []}
    for _ in range(args.rounds):
        times["copy"].append(timed_ms(cupy, copy))
        times["adam"].append(timed_ms(cupy, adam))
    n = piece * args.tensors
    copy_ms, adam_ms = statistics.median(times["copy"]), statistics.median(times["adam"])
    copy_gbs, adam_gbs = 2 * 4 * n / copy_ms / 1e6, 7 * 4 * n / adam_ms / 1e6
    print(f"copy:       {copy_ms:8.3f} ms  {copy_gbs:8.1f} GB/s")
    print(f"fused Adam: {adam_ms:8.3f} ms  {adam_gbs:8.1f} GB/s")
    print(f"fused Adam reaches {100 * adam_gbs / copy_gbs:.0f}% of the copy bandwidth (target >= 80%)")


if __name__ == "__main__":
    main()
