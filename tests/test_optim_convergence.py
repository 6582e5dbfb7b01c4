"""Convergence: every optimizer trains a linear classifier on linearly separable data to 100%
training accuracy with mini-batch steps (Chainer's test_optimizers_by_linear_model idea)."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.sparse import SparseRowGrad

N, D, BATCH = 200, 6, 25


def separable_data(seed=0):
    """Two classes split by a random hyperplane with a margin of 0.1 around it."""
    r = np.random.default_rng(seed)
    normal = r.standard_normal(D)
    normal /= np.linalg.norm(normal)
    X = r.standard_normal((N * 2, D))
    margin = X @ normal
    keep = np.abs(margin) > 0.1
    X, y = X[keep][:N], (margin[keep][:N] > 0).astype(np.float64) * 2 - 1  # labels in {-1, +1}
    return X, y


CASES = [
    ("SGD", dict(lr=0.5)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)),
    ("Adam", dict(lr=0.05)),
    ("Adam", dict(lr=0.05, amsgrad=True)),
    ("AdamW", dict(lr=0.05, weight_decay=1e-3)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Adagrad", dict(lr=0.5)),
    ("SparseAdam", dict(lr=0.05)),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{','.join(kw)}" for n, kw in CASES])
def test_linear_classifier_reaches_full_training_accuracy(name, kw):
    X, y = separable_data()
    tg.manual_seed(0)
    w = tg.Tensor(np.zeros((D, 1)), requires_grad=True)  # as (D, 1): SparseAdam sees its rows
    b = tg.Tensor(np.zeros(1), requires_grad=True)
    params = [w] if name == "SparseAdam" else [w, b]
    opt = getattr(tg.optim, name)(params, **kw)
    order = np.random.default_rng(1)
    Xt, yt = tg.Tensor(X), tg.Tensor(y[:, None])

    def accuracy():
        scores = X @ w.detach().numpy()[:, 0] + (b.detach().numpy()[0] if name != "SparseAdam" else 0.0)
        return np.mean(np.sign(scores) == y)

    assert accuracy() < 1.0
    for epoch in range(40):  # noqa: B007 (reported after the loop)
        perm = order.permutation(N)
        for start in range(0, N, BATCH):
            idx = perm[start:start + BATCH]
            opt.zero_grad()
            z = Xt[idx] @ w + (b if name != "SparseAdam" else 0.0)
            loss = (-(yt[idx] * z)).softplus().mean()  # logistic loss log(1 + exp(-y z))
            loss.backward()
            if name == "SparseAdam":  # hand it the gradient as touched rows (all D here)
                w.grad = SparseRowGrad(np.arange(D), w.grad.data, w.shape)
            opt.step()
        if accuracy() == 1.0:
            break
    assert accuracy() == 1.0, f"{name} {kw}: training accuracy {accuracy():.3f} after {epoch + 1} epochs"
