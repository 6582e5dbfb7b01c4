"""All-reduce time against message size, data-parallel step time at 1 and 2 ranks, and the
alpha-beta model of ring all-reduce that extrapolates them to a cluster.

    mpiexec -n 2 python benchmarks/distributed.py [--rounds 5] [--steps 40] [--max-mb 100]
                                                  [--alpha-us 10] [--gbps 25] [--quick]

1. **All-reduce** (``tg.distributed.all_reduce``, float32, in place) of 1 KB .. ``--max-mb``
   MB: the median time per call over repeated calls, the slowest rank's. A least-squares fit
   of ``T(n) = a + n / B`` gives this machine's latency and bandwidth; for 2 ranks the ring
   all-reduce costs ``2 alpha + n / beta``, so ``alpha = a / 2`` and ``beta = B``.
2. **Step time** of the CLI's MLP and CNN on the digits (forward, backward, gradient
   all-reduce, SGD step): one process at global batch 32 (rank 1 sleeps meanwhile), and
   DistributedDataParallel on 2 ranks at 16 per rank (the same global batch: strong scaling),
   the same with the readable reference (``bucket_cap_mb=None``: one all-reduce per
   parameter tensor instead of one per bucket), and at 32 per rank (global 64: weak
   scaling). They run in alternating rounds so that a change in machine load hits them
   alike; medians over rounds are printed.
3. **The model** (Patarasuk & Yuan 2009, *Bandwidth optimal all-reduce algorithms for
   clusters of workstations*): a ring all-reduce of ``n`` bytes over ``N`` workers sends
   ``2 (N - 1)`` messages of ``n / N`` bytes from every worker, so

       T_ring(N, n) = 2 (N - 1) alpha + 2 (N - 1) / N * n / beta.

   A data-parallel step at ``N`` workers with a fixed per-worker batch (weak scaling) takes
   ``T_step(N) = T_compute + T_ring(N, 4 P)`` for ``P`` float32 parameters -- this engine
   hands the gradients over at the end of backward, so nothing overlaps -- and local SGD
   averaging every ``H`` steps pays ``T_ring / H`` per step. Scaling efficiency is
   ``T_compute / T_step(N)``. The prediction takes ``T_compute`` measured here (one rank,
   batch 32 per worker) and a cluster network of ``--gbps`` Gb/s with ``--alpha-us``
   microseconds of per-message latency.

**What 2 ranks on this machine can and cannot show.** The machine has 2 cores shared with
other jobs: two ranks compete for them, and MPI moves data through shared memory, not a
network. The figures show the all-reduce's fixed cost and memory bandwidth, and the
overhead DDP adds to a step; they cannot show a speed-up from parallel compute (with 2 busy
cores the 2-rank run has at best the same cores as the 1-rank run, and usually less) nor
network behaviour. Cluster numbers come from the model, not from measurement.

In a world of one (``python benchmarks/distributed.py``, as ``tinygrad-sgd bench`` runs it)
only the one-process step times and the model are printed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np

import tinygrad_sgd as tg

dist = tg.distributed


# ----------------------------------------------------------------------------- the model


ring_allreduce_time = dist.ring_allreduce_time  # T = 2 (N-1) alpha + 2 (N-1)/N n / beta
recursive_doubling_allreduce_time = dist.recursive_doubling_allreduce_time


def fit_latency_bandwidth(sizes, times, workers: int = 2) -> tuple:
    """``(alpha, beta)`` from all-reduce times at ``workers`` ranks, by least squares on
    ``T = 2 (N-1) alpha + 2 (N-1)/N n / beta`` in *relative* error (each row divided by its
    time), so the microsecond latencies of small messages count as much as the large ones."""
    sizes, times = np.asarray(sizes, dtype=np.float64), np.asarray(times, dtype=np.float64)
    design = np.stack([np.full_like(sizes, 2.0 * (workers - 1)), 2.0 * (workers - 1) / workers * sizes], axis=1)
    (alpha, inverse_beta), *_ = np.linalg.lstsq(design / times[:, None], np.ones_like(times), rcond=None)
    return float(alpha), float(1.0 / inverse_beta)


def predict(compute_s: float, params: int, workers: int, alpha: float, beta: float, period: int = 1) -> tuple:
    """``(step seconds, scaling efficiency)`` at ``workers`` with local SGD period ``period``."""
    step = compute_s + ring_allreduce_time(workers, 4.0 * params, alpha, beta) / period
    return step, compute_s / step


# ----------------------------------------------------------------------------- measuring


def idle_until_others_arrive() -> None:
    """A barrier that sleeps instead of spinning, so a waiting rank leaves the core free."""
    if dist.get_world_size() == 1:
        return
    request = dist._group.comm.Ibarrier()
    while not request.Test():
        time.sleep(0.0005)


def time_allreduce(nbytes: int, budget_s: float) -> float:
    array = np.ones(max(1, nbytes // 4), dtype=np.float32)
    dist.all_reduce(array)  # warm-up
    started = time.perf_counter()
    dist.all_reduce(array)
    estimate = dist.all_reduce(np.array([time.perf_counter() - started]), op="max")[0]
    repeats = int(max(3, min(500, budget_s / max(estimate, 1e-7))))
    repeats = int(dist.all_reduce(np.array([repeats]), op="min")[0])
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        dist.all_reduce(array)
        samples.append(time.perf_counter() - started)
    return float(dist.all_reduce(np.array([statistics.median(samples)]), op="max")[0])


def make_model(kind: str):
    args = argparse.Namespace(model=kind, hidden=128, dropout=0.0)
    from tinygrad_sgd.cli import make_model as cli_model
    return cli_model(args, tg)


def step_time(kind: str, per_rank_batch: int, steps: int, data, *, ranks: int, bucket_cap_mb=25.0) -> float:
    """Median seconds per optimizer step (forward, backward, all-reduce, step)."""
    x, y = data
    tg.manual_seed(0)
    model = make_model(kind)
    if ranks > 1:
        model = tg.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    optimizer = tg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = tg.nn.CrossEntropyLoss()
    rng = np.random.default_rng(dist.get_rank())
    batches = [rng.integers(0, len(x), per_rank_batch) for _ in range(steps + 3)]
    samples = []
    for i, idx in enumerate(batches):
        started = time.perf_counter()
        loss_fn(model(tg.Tensor(x[idx])), tg.Tensor(y[idx])).backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= 3:  # the first steps allocate and compile
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration and round")
    parser.add_argument("--max-mb", type=float, default=100.0, help="largest all-reduce, MB")
    parser.add_argument("--alpha-us", type=float, default=10.0, help="cluster per-message latency, microseconds")
    parser.add_argument("--gbps", type=float, default=25.0, help="cluster link bandwidth, Gb/s")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, few steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.max_mb = 1, 5, 1.0
    dist.init_process_group()
    world, rank = dist.get_world_size(), dist.get_rank()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"tinygrad_sgd {tg.__version__}, Python {platform.python_version()}, NumPy {np.__version__}, "
        f"{platform.machine()}, {world} rank(s); {time.strftime('%Y-%m-%d %H:%M:%S')}")

    alpha_beta = None
    if world > 1:
        say(f"\n== all-reduce, float32, {world} ranks (median per call, slowest rank)")
        sizes = [s for s in (1e3, 1e4, 1e5, 1e6, 1e7, 1e8) if s <= args.max_mb * 1e6]
        times = []
        for size in sizes:
            t = time_allreduce(int(size), budget_s=0.3 if not args.quick else 0.05)
            times.append(t)
            say(f"{size / 1e6:>10.3f} MB  {t * 1e6:>12.1f} us  {size / t / 1e9:>7.2f} GB/s algorithmic")
        alpha_beta = fit_latency_bandwidth(sizes, times, world)
        say(f"fit: alpha = {alpha_beta[0] * 1e6:.2f} us per message, beta = {alpha_beta[1] / 1e9:.2f} GB/s "
            "(shared memory on this machine)")

    (x_flat, y), _ = tg.data.load_digits(split=0.2, seed=0, flatten=True)
    (x_img, _), _ = tg.data.load_digits(split=0.2, seed=0, flatten=False)
    results: dict = {}
    say("\n== step time (forward + backward + all-reduce + SGD step), median of rounds")
    for kind, x in (("mlp", x_flat), ("cnn", x_img)):
        configs = [("1 rank, batch 32", 1, 32, None)]
        if world > 1:
            configs += [(f"{world} ranks x 16 (global 32)", world, 32 // world, 25.0),
                        (f"{world} ranks x 16, one all-reduce per tensor", world, 32 // world, None),
                        (f"{world} ranks x 32 (global {32 * world})", world, 32, 25.0)]
        per_config: dict = {name: [] for name, _, _, _ in configs}
        for _ in range(args.rounds):
            for name, ranks, batch, cap in configs:  # alternating rounds
                if ranks == 1:
                    if rank == 0:
                        per_config[name].append(step_time(kind, batch, args.steps, (x, y), ranks=1))
                    idle_until_others_arrive()
                else:
                    t = step_time(kind, batch, args.steps, (x, y), ranks=ranks, bucket_cap_mb=cap)
                    per_config[name].append(float(dist.all_reduce(np.array([t]), op="max")[0]))
        params = sum(p.numel() for p in make_model(kind).parameters())
        medians = {name: statistics.median(v) if v else float("nan") for name, v in per_config.items()}
        medians = dist.broadcast_object(medians)
        results[kind] = (params, medians)
        for name, value in medians.items():
            say(f"{kind} ({params} parameters, {4 * params / 1e3:.1f} KB of gradient)  {name:<40} "
                f"{value * 1e3:8.3f} ms/step")

    alpha, beta = args.alpha_us * 1e-6, args.gbps * 1e9 / 8
    say(f"\n== ring all-reduce model at {args.gbps:g} Gb/s, alpha {args.alpha_us:g} us (weak scaling: 32 samples "
        "per worker, compute time measured here at 1 rank)")
    say(f"{'model':<5} {'N':>5} {'H':>4} {'ring ms':>9} {'step ms':>9} {'efficiency':>11} "
        f"{'recursive-doubling ms':>22}")
    for kind, (params, medians) in results.items():
        compute = medians["1 rank, batch 32"]
        for workers in (8, 64, 512):
            for period in (1, 8, 64):
                step, efficiency = predict(compute, params, workers, alpha, beta, period)
                comm = ring_allreduce_time(workers, 4.0 * params, alpha, beta)
                doubling = recursive_doubling_allreduce_time(workers, 4.0 * params, alpha, beta)
                say(f"{kind:<5} {workers:>5} {period:>4} {comm * 1e3:>9.3f} {step * 1e3:>9.3f} {efficiency:>10.1%} "
                    f"{doubling * 1e3:>22.3f}")
    if alpha_beta is not None:
        say(f"(this machine's fit, alpha {alpha_beta[0] * 1e6:.2f} us and beta {alpha_beta[1] / 1e9:.2f} GB/s, "
            f"would give a 512-worker MLP all-reduce of "
            f"{ring_allreduce_time(512, 4.0 * results['mlp'][0], *alpha_beta) * 1e3:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
