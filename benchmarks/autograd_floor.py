"""The floor under op_overhead.py's raw-op MLP: how close to hand-written NumPy can *any*
eager, one-node-per-op autograd in Python get on this machine?

    python benchmarks/autograd_floor.py [--batch 128] [--rounds 21]

``MinimalTensor`` below is the smallest autograd that runs the same MLP step: each op
computes its NumPy result and keeps a closure for its backward, and ``backward()`` sorts
the recorded graph and calls the closures. It has none of the engine's device handling,
argument checks, ``no_grad``, ``retain_graph``/``create_graph``, ``retain_grad``,
``autograd.grad`` or leaf-aliasing rules; it does use the engine's one layout trick (a
transposed weight gets its gradient computed in the weight's own layout), without which
the optimizer would read a strided gradient. Its step, the engine's raw-op step
(op_overhead.EngineMLP) and the NumPy step (op_overhead.NumpyMLP) are timed in
alternating rounds in one process; medians are printed as ratios to NumPy.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import numpy as np

import tinygrad_sgd as tg
from op_overhead import SIZES, EngineMLP, NumpyMLP, interleaved_times, make_params

_serial = itertools.count()


class MinimalTensor:
    """An array, the tensors it was computed from, and a closure giving their gradients."""

    __slots__ = ("data", "grad", "parents", "backward_fn", "serial", "is_param")

    def __init__(self, data, parents=(), backward_fn=None, is_param=False):
        self.data, self.grad, self.parents, self.backward_fn = data, None, parents, backward_fn
        self.serial, self.is_param = next(_serial), is_param

    def _wants_grad(self) -> bool:
        return self.backward_fn is not None or self.is_param

    def __matmul__(self, other):
        a, b = self.data, other.data
        wants_a = self._wants_grad()
        # dA = G B^T; dB = A^T G, computed as (G^T A)^T when B is a transposed weight,
        # so that the weight's gradient comes out contiguous.
        return MinimalTensor(a @ b, (self, other),
                             lambda g: (g @ b.T if wants_a else None, (g.T @ a).T))

    def __add__(self, other):  # other: a bias broadcast over the batch
        return MinimalTensor(self.data + other.data, (self, other), lambda g: (g, g.sum(axis=0)))

    def __neg__(self):
        return MinimalTensor(-self.data, (self,), lambda g: (-g,))

    @property
    def T(self):
        return MinimalTensor(self.data.T, (self,), lambda g: (g.T,))

    def relu(self):
        x = self.data
        return MinimalTensor(np.maximum(x, 0), (self,), lambda g: (g * (x > 0),))

    def log_softmax(self):
        shifted = self.data - self.data.max(axis=1, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return MinimalTensor(out, (self,), lambda g: (g - np.exp(out) * g.sum(axis=1, keepdims=True),))

    def pick(self, rows, cols):  # self.data[rows, cols]
        shape = self.data.shape

        def backward(g):
            full = np.zeros(shape, dtype=g.dtype)
            np.add.at(full, (rows, cols), g)
            return (full,)

        return MinimalTensor(self.data[rows, cols], (self,), backward)

    def mean(self):
        shape, count = self.data.shape, self.data.size
        return MinimalTensor(self.data.mean(), (self,), lambda g: (np.full(shape, g / count, dtype=np.float32),))

    def backward(self):
        """Gradients of every parameter: ops run newest first, each once all of its
        consumers have added their share."""
        reachable, stack = {}, [self]
        while stack:
            t = stack.pop()
            if t not in reachable:
                reachable[t] = None
                stack.extend(p for p in t.parents if p.backward_fn is not None)
        pending = {self: np.ones((), dtype=np.float32)}
        for t in sorted(reachable, key=lambda t: t.serial, reverse=True):
            g = pending.pop(t)
            for parent, pg in zip(t.parents, t.backward_fn(g)):
                if pg is None:
                    continue
                if parent.backward_fn is None:
                    if parent.is_param:
                        parent.grad = pg if parent.grad is None else parent.grad + pg
                else:
                    pending[parent] = pending[parent] + pg if parent in pending else pg


class MinimalMLP(NumpyMLP):
    """op_overhead's MLP step written with MinimalTensor (same update as NumpyMLP)."""

    def __init__(self, params, lr=0.01, momentum=0.9):
        super().__init__(params, lr, momentum)
        self.tensors = [MinimalTensor(p, is_param=True) for p in self.params]

    def step(self, x, y):
        w1, b1, w2, b2, w3, b3 = self.tensors
        for p in self.tensors:
            p.grad = None
        x = MinimalTensor(x)
        h1 = (x @ w1.T + b1).relu()
        h2 = (h1 @ w2.T + b2).relu()
        logits = h2 @ w3.T + b3
        loss = -logits.log_softmax().pick(np.arange(x.data.shape[0]), y).mean()
        loss.backward()
        for p, buf in zip(self.tensors, self.buffers):
            buf *= self.momentum
            buf += p.grad
            p.data -= self.lr * buf
        return float(loss.data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    params = make_params()
    x = rng.standard_normal((args.batch, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], args.batch)
    numpy_model, minimal_model, engine_model = NumpyMLP(params), MinimalMLP(params), EngineMLP(params)
    xt, yt = tg.Tensor(x), tg.Tensor(y)
    losses = (float(numpy_model.step(x, y)), minimal_model.step(x, y), engine_model.step(xt, yt).item())
    assert max(losses) - min(losses) < 1e-4, f"the three steps disagree: {losses}"  # same math
    steps = {"numpy": lambda: numpy_model.step(x, y), "minimal autograd": lambda: minimal_model.step(x, y),
             "engine (raw ops)": lambda: engine_model.step(xt, yt)}
    medians = interleaved_times(steps, args.steps, rounds=args.rounds, warmup=5)
    print(f"# autograd_floor  batch {args.batch}  numpy {np.__version__}  python {platform.python_version()}  "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'step':<20}{'ms':>10}{'/ numpy':>10}")
    for name, t in medians.items():
        print(f"{name:<20}{t * 1e3:>10.3f}{t / medians['numpy']:>9.3f}x")


if __name__ == "__main__":
    main()
