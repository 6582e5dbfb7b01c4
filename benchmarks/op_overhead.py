"""Engine overhead: per-op Python cost on tiny tensors, and a 3-layer MLP training step
(forward + backward + SGD-momentum update) against the same computation written by hand
in NumPy, run in the same process. Prints ratios; the project's target is an engine MLP
step within 1.15x of hand-written NumPy at batch 128.

    python benchmarks/op_overhead.py [--repeats 200] [--batch-sizes 32 128 512]

Timing method: each configuration runs a warm-up, then ``repeats`` steps, several times
over; the median of the rounds is reported (robust to a noisy shared machine).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

import tinygrad_sgd as tg

SIZES = (784, 256, 256, 10)


def median_time(fn, repeats: int, rounds: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - start) / repeats)
    return statistics.median(times)


def interleaved_times(steps: dict, repeats: int, rounds: int = 11, warmup: int = 1) -> dict:
    """Median per-call time of each named function in ``steps``, all timed in alternating
    rounds (``repeats`` calls each per round), so that a change in machine load during the
    run affects every side alike."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(t) for name, t in times.items()}


def per_op_overhead(repeats: int) -> list[tuple[str, float, float]]:
    """Engine time per op on 4x4 float32 tensors vs the bare NumPy call."""
    a_np = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    b_np = a_np.copy()
    a, b = tg.Tensor(a_np), tg.Tensor(b_np)
    a_req = tg.Tensor(a_np, requires_grad=True)
    cases = [
        ("add (no grad)", lambda: a + b, lambda: a_np + b_np),
        ("mul (no grad)", lambda: a * b, lambda: a_np * b_np),
        ("matmul (no grad)", lambda: a @ b, lambda: a_np @ b_np),
        ("relu (no grad)", lambda: a.relu(), lambda: np.maximum(a_np, 0)),
        ("sum (no grad)", lambda: a.sum(), lambda: a_np.sum()),
        ("add (records graph)", lambda: a_req + b, lambda: a_np + b_np),
        ("add+sum+backward", lambda: (a_req + b).sum().backward(),
         lambda: (a_np + b_np, np.ones_like(a_np))),
    ]
    rows = []
    for name, engine, numpy_fn in cases:
        rows.append((name, median_time(engine, repeats * 20), median_time(numpy_fn, repeats * 20)))
    return rows


def make_params(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        bound = 1 / np.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
    return params


class NumpyMLP:
    """The MLP step written out by hand: the baseline the engine is measured against."""

    def __init__(self, params, lr=0.01, momentum=0.9):
        self.params = [p.copy() for p in params]
        self.buffers = [np.zeros_like(p) for p in params]
        self.lr, self.momentum = lr, momentum

    def step(self, x, y):
        w1, b1, w2, b2, w3, b3 = self.params
        h1 = np.maximum(x @ w1.T + b1, 0)
        h2 = np.maximum(h1 @ w2.T + b2, 0)
        logits = h2 @ w3.T + b3
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = x.shape[0]
        loss = -log_probs[np.arange(n), y].mean()
        d_logits = np.exp(log_probs)
        d_logits[np.arange(n), y] -= 1
        d_logits /= n
        grads = [None] * 6
        grads[4], grads[5] = d_logits.T @ h2, d_logits.sum(axis=0)
        d_h2 = (d_logits @ w3) * (h2 > 0)
        grads[2], grads[3] = d_h2.T @ h1, d_h2.sum(axis=0)
        d_h1 = (d_h2 @ w2) * (h1 > 0)
        grads[0], grads[1] = d_h1.T @ x, d_h1.sum(axis=0)
        for p, g, buf in zip(self.params, grads, self.buffers):
            buf *= self.momentum
            buf += g
            p -= self.lr * buf
        return loss


class EngineMLP:
    """The same step with tinygrad_sgd Tensors and autograd (``engine``: the package, so
    that engine_ab.py can run an earlier revision's copy beside this one)."""

    def __init__(self, params, lr=0.01, momentum=0.9, engine=tg):
        self.tg = engine
        self.params = [engine.Tensor(p, requires_grad=True) for p in params]
        self.buffers = [np.zeros_like(p) for p in params]
        self.lr, self.momentum = lr, momentum

    def step(self, x, y):
        w1, b1, w2, b2, w3, b3 = self.params
        for p in self.params:
            p.grad = None
        h1 = (x @ w1.T + b1).relu()
        h2 = (h1 @ w2.T + b2).relu()
        logits = h2 @ w3.T + b3
        loss = -logits.log_softmax(axis=1)[self.tg.arange(x.shape[0]), y].mean()
        loss.backward()
        with self.tg.no_grad():
            for p, buf in zip(self.params, self.buffers):
                buf *= self.momentum
                buf += p.grad.data
                p.data -= self.lr * buf
        return loss


def mlp_comparison(batch_sizes, repeats: int):
    rng = np.random.default_rng(1)
    params = make_params()
    rows = []
    for batch in batch_sizes:
        x_np = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
        y_np = rng.integers(0, SIZES[-1], batch)
        x, y = tg.Tensor(x_np), tg.Tensor(y_np)
        numpy_model, engine_model = NumpyMLP(params), EngineMLP(params)
        # Same math: the first losses agree before timing starts.
        assert abs(float(numpy_model.step(x_np, y_np)) - engine_model.step(x, y).item()) < 1e-4
        medians = interleaved_times({"engine": lambda: engine_model.step(x, y),  # noqa: B023 (called at once)
                                     "numpy": lambda: numpy_model.step(x_np, y_np)}, repeats)  # noqa: B023 (called at once)
        rows.append((batch, medians["engine"], medians["numpy"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    args = parser.parse_args()
    print(f"# op_overhead  numpy {np.__version__}  python {platform.python_version()}  "
          f"{platform.machine()}  {time.strftime('%Y-%m-%d')}")
    print(f"{'op (4x4 float32)':<24}{'engine us':>12}{'numpy us':>12}{'overhead us':>14}")
    for name, t_engine, t_numpy in per_op_overhead(args.repeats):
        print(f"{name:<24}{t_engine * 1e6:>12.2f}{t_numpy * 1e6:>12.2f}{(t_engine - t_numpy) * 1e6:>14.2f}")
    print()
    print(f"MLP {'-'.join(map(str, SIZES))} step (forward + backward + SGD momentum)")
    print(f"{'batch':>6}{'engine ms':>12}{'numpy ms':>12}{'engine/numpy':>14}")
    for batch, t_engine, t_numpy in mlp_comparison(args.batch_sizes, args.repeats):
        print(f"{batch:>6}{t_engine * 1e3:>12.3f}{t_numpy * 1e3:>12.3f}{t_engine / t_numpy:>13.3f}x")


if __name__ == "__main__":
    main()
