"""DataLoader overhead against an MLP training step on the bundled digits (batch 32).

The issue's target: the loader costs < 5% of a training step. The step is written with
raw Tensors (no tg.nn), so this benchmark measures only the data pipeline and the engine:

    logits = relu(x @ W1.T + b1) @ W2.T + b2
    loss   = -log_softmax(logits)[arange(B), y].mean()
    loss.backward();  with no_grad: p -= lr * p.grad

Three timings, each the best of several interleaved repeats of one epoch:
  loader only    iterating the DataLoader (shuffle, gather, Tensor wrap), no work
  step only      the training step over batches gathered beforehand
  loader + step  the real training loop
and the loader's share = loader-only time / step-only time.

Run: python benchmarks/dataloader.py [--batch-size 32] [--hidden 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import tinygrad_sgd as tg


def make_model(n_in: int, hidden: int, n_out: int):
    tg.manual_seed(0)
    # Kaiming-uniform-like scale so the loss actually goes down while we time it.
    W1 = (tg.rand(hidden, n_in) * 2 - 1) * float(np.sqrt(6.0 / n_in))
    W2 = (tg.rand(n_out, hidden) * 2 - 1) * float(np.sqrt(6.0 / hidden))
    params = [W1, tg.zeros(hidden), W2, tg.zeros(n_out)]
    for p in params:
        p.requires_grad = True
    return params


def train_step(params, xb, yb, lr: float = 0.05) -> float:
    W1, b1, W2, b2 = params
    hidden = (xb @ W1.T + b1).relu()
    logits = hidden @ W2.T + b2
    loss = -logits.log_softmax(axis=1)[tg.arange(len(yb)), yb].mean()
    loss.backward()
    with tg.no_grad():
        for p in params:
            p[...] = p - lr * p.grad  # in place: the list keeps pointing at the trained tensors
            p.grad = None
    return loss


def best_of_interleaved(fns: dict, repeats: int) -> dict:
    """Minimum time of each function, running them in turn so that background load on a
    shared machine hits all of them alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    (X_train, y_train), _ = tg.data.load_digits(split=0.2)
    loader = tg.data.DataLoader(tg.data.TensorDataset(X_train, y_train), batch_size=args.batch_size,
                                shuffle=True, seed=0)
    batches = list(loader)  # pre-gathered batches for the step-only timing
    params = make_model(64, args.hidden, 10)
    n = len(batches)

    def loader_only():
        for _ in loader:
            pass

    def step_only():
        for xb, yb in batches:
            train_step(params, xb, yb)

    def loader_and_step():
        for xb, yb in loader:
            train_step(params, xb, yb)

    first_loss = float(train_step(params, *batches[0]))
    loader_and_step()  # warm up caches and the allocator
    best = best_of_interleaved({"loader": loader_only, "step": step_only, "both": loader_and_step}, args.repeats)
    t_loader, t_step, t_both = (best[k] / n for k in ("loader", "step", "both"))
    last_loss = float(train_step(params, *batches[0]))
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()} "
          f"numpy {np.__version__}")
    print(f"digits train set: {len(X_train)} samples, batch {args.batch_size}, {n} batches/epoch, "
          f"MLP 64-{args.hidden}-10 (loss on batch 0: {first_loss:.3f} -> {last_loss:.3f} while timing)")
    print(f"{'loader only':>16}: {t_loader * 1e6:8.1f} us/batch")
    print(f"{'step only':>16}: {t_step * 1e6:8.1f} us/batch")
    print(f"{'loader + step':>16}: {t_both * 1e6:8.1f} us/batch")
    share = t_loader / t_step
    print(f"loader cost / step cost = {100 * share:.2f}%  (target < 5%: {'PASS' if share < 0.05 else 'FAIL'})")
    print(f"in-loop difference (loader + step - step) / step = {100 * (t_both - t_step) / t_step:.2f}%")


if __name__ == "__main__":
    main()
