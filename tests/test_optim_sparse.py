"""Row-sparse updates (``param.grad`` is a ``SparseRowGrad``, as Embedding(sparse=True) gives):
SGD, Adagrad and SparseAdam against torch's sparse semantics and against NumPy
transcriptions, touched-rows-only behaviour, and the errors for unsupported combinations."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.sparse import SparseRowGrad

# torch's own sparse Adagrad/SparseAdam code builds sparse tensors that warn about invariant checks
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")

ROWS, COLS, STEPS = 12, 3, 60


def sparse_grads(seed=0, steps=STEPS):
    """Per step: row indices (with repeats, a few rows never touched) and their gradient rows."""
    r = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        k = int(r.integers(1, 7))
        rows = r.integers(0, ROWS - 3, size=k)  # the last three rows are never touched
        out.append((rows, r.standard_normal((k, COLS))))
    return out


def table0():
    return np.random.default_rng(42).standard_normal((ROWS, COLS))


def dense(rows, values):
    g = np.zeros((ROWS, COLS))
    np.add.at(g, rows, values)
    return g


def run_ours(name, kw, dtype=np.float64, grads=None):
    p = tg.Tensor(table0(), dtype=dtype, requires_grad=True)
    opt = getattr(tg.optim, name)([p], **kw)
    out = []
    for rows, values in grads or sparse_grads():
        p.grad = SparseRowGrad(rows.astype(np.int64), values.astype(dtype), p.shape)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out), opt, p


def run_torch(torch, name, kw):
    p = torch.nn.Parameter(torch.tensor(table0(), dtype=torch.float32))
    opt = getattr(torch.optim, name)([p], **kw)
    out = []
    for rows, values in sparse_grads():
        p.grad = torch.sparse_coo_tensor(torch.tensor(rows[None]), torch.tensor(values, dtype=torch.float32),
                                         (ROWS, COLS))
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out)


# ----------------------------------------------------------------------------- NumPy transcriptions


def np_sgd(lr, momentum=0.0, maximize=False):
    """Dense SGD on the densified gradient: what the sparse update must equal."""
    p, v, out = table0(), None, []
    for rows, values in sparse_grads():
        g = dense(rows, values) * (-1 if maximize else 1)
        if momentum:
            v = g if v is None else momentum * v + g
            g = v
        p = p - lr * g
        out.append(p)
    return np.array(out)


def np_adagrad(lr, lr_decay=0.0, eps=1e-10, initial_accumulator_value=0.0, maximize=False):
    """Dense Adagrad (Duchi et al.): for rows without gradient it leaves p and S unchanged."""
    p, s, out = table0(), np.full((ROWS, COLS), initial_accumulator_value), []
    for t, (rows, values) in enumerate(sparse_grads(), start=1):
        g = dense(rows, values) * (-1 if maximize else 1)
        s = s + g ** 2
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s) + eps)
        out.append(p)
    return np.array(out)


def np_lazy_adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
    """Adam restricted to the rows present in each step's (summed) gradient."""
    b1, b2 = betas
    p, m, v, out = table0(), np.zeros((ROWS, COLS)), np.zeros((ROWS, COLS)), []
    for t, (rows, values) in enumerate(sparse_grads(), start=1):
        touched = np.unique(rows)
        g = dense(rows, values)[touched] * (-1 if maximize else 1)
        m[touched] = b1 * m[touched] + (1 - b1) * g
        v[touched] = b2 * v[touched] + (1 - b2) * g ** 2
        p = p.copy()
        p[touched] -= lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[touched] / (np.sqrt(v[touched]) + eps)
        out.append(p)
    return np.array(out)


CASES = [
    ("SGD", dict(lr=0.1), lambda: np_sgd(0.1)),
    ("SGD", dict(lr=0.1, maximize=True), lambda: np_sgd(0.1, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.9), lambda: np_sgd(0.05, momentum=0.9)),
    ("Adagrad", dict(lr=0.3), lambda: np_adagrad(0.3)),
    ("Adagrad", dict(lr=0.3, lr_decay=0.05, eps=1e-6), lambda: np_adagrad(0.3, 0.05, 1e-6)),
    ("Adagrad", dict(lr=0.3, initial_accumulator_value=0.1, maximize=True),
     lambda: np_adagrad(0.3, initial_accumulator_value=0.1, maximize=True)),
    ("SparseAdam", dict(lr=0.05), lambda: np_lazy_adam(0.05)),
    ("SparseAdam", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, maximize=True),
     lambda: np_lazy_adam(0.05, (0.8, 0.99), 1e-6, True)),
]
IDS = [f"{name}-{','.join(f'{k}={v}' for k, v in kw.items())}" for name, kw, _ in CASES]


@pytest.mark.parametrize("name,kw,reference", CASES, ids=IDS)
def test_sparse_update_matches_numpy_transcription(name, kw, reference):
    ours, _, _ = run_ours(name, kw)
    np.testing.assert_allclose(ours, reference(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name,kw,reference", CASES, ids=IDS)
def test_sparse_update_matches_torch(name, kw, reference):
    torch = pytest.importorskip("torch")
    ours, _, _ = run_ours(name, kw, dtype=np.float32)
    np.testing.assert_allclose(ours, run_torch(torch, name, kw), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1)), ("Adagrad", dict(lr=0.3)),
                                     ("SparseAdam", dict(lr=0.05))])
def test_only_touched_rows_change(name, kw):
    ours, opt, p = run_ours(name, kw)
    start = table0()
    # the three rows no batch touched are bit-identical, and so is their optimizer state
    np.testing.assert_array_equal(ours[:, -3:], np.broadcast_to(start[-3:], ours[:, -3:].shape))
    for value in opt.state.get(p, {}).values():
        if isinstance(value, np.ndarray):
            assert (value[-3:] == value[-3:].flat[0]).all()  # still the initial value
    # and at each step only that step's rows moved
    previous = start
    for (rows, _), now in zip(sparse_grads(), ours):
        moved = np.flatnonzero((now != previous).any(axis=1))
        assert set(moved) <= set(rows.tolist())
        previous = now


def test_sparse_adam_is_lazy_unlike_adam():
    """A row seen once keeps its moments frozen in SparseAdam; dense Adam keeps moving it."""
    grads = [(np.array([0]), np.ones((1, COLS)))] + [(np.array([1]), np.ones((1, COLS)))] * 5
    lazy, opt, p = run_ours("SparseAdam", dict(lr=0.1), grads=grads)
    assert (lazy[1:, 0] == lazy[0, 0]).all()  # row 0 stops after its only gradient
    np.testing.assert_array_equal(opt.state[p]["exp_avg"][0], (1 - 0.9) * np.ones(COLS))  # not decayed since
    w = tg.Tensor(table0(), dtype=tg.float64, requires_grad=True)
    adam = tg.optim.Adam([w], lr=0.1)
    for rows, values in grads:
        w.grad = tg.Tensor(dense(rows, values), dtype=tg.float64)
        adam.step()
    assert not np.allclose(w.detach().numpy()[0], lazy[-1, 0])  # dense Adam kept moving row 0


def test_repeated_rows_are_summed_before_the_nonlinear_update():
    rows = np.array([2, 2, 2])
    values = np.ones((3, COLS))
    for name in ("Adagrad", "SparseAdam"):
        a, _, _ = run_ours(name, dict(lr=0.1), grads=[(rows, values)])
        b, _, _ = run_ours(name, dict(lr=0.1), grads=[(np.array([2]), 3 * np.ones((1, COLS)))])
        np.testing.assert_allclose(a, b, rtol=1e-15)


def test_sparse_adam_skips_an_empty_gradient_but_counts_the_step():
    empty = (np.zeros(0, dtype=np.int64), np.zeros((0, COLS)))
    out, opt, p = run_ours("SparseAdam", dict(lr=0.1), grads=[empty])
    np.testing.assert_array_equal(out[0], table0())
    assert opt.state[p]["step"] == 1


@pytest.mark.parametrize("name,kw", [("Adam", {}), ("AdamW", {}), ("RMSprop", {}),
                                     ("SGD", dict(weight_decay=0.1)), ("Adagrad", dict(weight_decay=0.1))])
def test_unsupported_sparse_combinations_raise_before_any_update(name, kw):
    a = tg.Tensor(np.ones((ROWS, COLS)), requires_grad=True)
    b = tg.Tensor(np.ones((ROWS, COLS)), requires_grad=True)
    opt = getattr(tg.optim, name)([a, b], lr=0.1, **kw)
    a.grad = tg.Tensor(np.ones((ROWS, COLS)))  # dense: fine
    b.grad = SparseRowGrad(np.array([0]), np.ones((1, COLS), dtype=np.float32), (ROWS, COLS))
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    np.testing.assert_array_equal(a.detach().numpy(), 1.0)  # nothing moved, no state created
    assert opt.state == {}


def test_sparse_adam_rejects_dense_gradients():
    p = tg.Tensor(np.ones((ROWS, COLS)), requires_grad=True)
    opt = tg.optim.SparseAdam([p])
    p.grad = tg.Tensor(np.ones((ROWS, COLS)))
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()


def test_sparse_gradient_shape_must_match():
    p = tg.Tensor(np.ones((ROWS, COLS)), requires_grad=True)
    opt = tg.optim.SGD([p], lr=0.1)
    with pytest.raises(RuntimeError, match="shape"):  # refused at assignment, before any step
        p.grad = SparseRowGrad(np.array([0]), np.ones((1, COLS), dtype=np.float32), (ROWS + 1, COLS))
    opt.step()
    np.testing.assert_array_equal(p.detach().numpy(), 1.0)


def test_embedding_sparse_true_end_to_end_if_available():
    """With the engine's Embedding(sparse=True) (tg.nn), a real backward feeds the optimizers."""
    Embedding = getattr(tg.nn, "Embedding", None)
    if Embedding is None:
        pytest.skip("tg.nn.Embedding is not available yet")
    tg.manual_seed(0)
    emb = Embedding(ROWS, COLS, sparse=True)
    start = emb.weight.detach().numpy().copy()
    opt = tg.optim.SparseAdam(emb.parameters(), lr=0.1)
    ids = tg.Tensor(np.array([[1, 4, 4], [7, 1, 0]]))
    emb(ids).sum().backward()
    assert isinstance(emb.weight.grad, SparseRowGrad)
    opt.step()
    moved = np.flatnonzero((emb.weight.detach().numpy() != start).any(axis=1))
    np.testing.assert_array_equal(moved, [0, 1, 4, 7])
