"""Gradient transforms (tg.nn.utils): norm and value clipping against torch (dense and
sparse gradients), annealed gradient noise, the L1 transform, and the explicit L1/L2
penalties compared with the optimizers' weight decay."""

import math

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.nn import utils
from tinygrad_sgd.sparse import SparseRowGrad

SHAPES = [(3, 4), (5,), (2, 2, 2)]


def with_grads(dtype=np.float32, scale=1.0, seed=0):
    r = np.random.default_rng(seed)
    params = [tg.Tensor(r.standard_normal(s), dtype=dtype, requires_grad=True) for s in SHAPES]
    grads = [scale * r.standard_normal(s) for s in SHAPES]
    for p, g in zip(params, grads):
        p.grad = tg.Tensor(g, dtype=dtype)
    return params, grads


def torch_params(torch, grads, dtype):
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype))
        p.grad = torch.tensor(g, dtype=dtype)
        out.append(p)
    return out


# ----------------------------------------------------------------------------- norm clipping


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, math.inf, "inf", 0, -1.0, -math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipping and not clipping
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    params, grads = with_grads(dtype, scale=2.0)
    total = utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    tparams = torch_params(torch, grads, tdtype)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type)
    assert isinstance(total, tg.Tensor) and total.dtype == dtype and total.shape == ()
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(total.item(), ttotal.item(), rtol=rtol)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("norm_type", [0, -1.0, -math.inf])
def test_clip_grad_norm_orders_at_or_below_zero_count_zero_entries(norm_type):
    # Worked out by hand (torch's vector_norm of the per-gradient norms): gradients [3, 0]
    # and [4]: order 0 counts 1 and 1 nonzero entries, then 2 nonzero counts; order -inf
    # and -1 see the 0, so the first norm is 0, and so is the total.
    params = [tg.Tensor(np.zeros(2), dtype=tg.float64, requires_grad=True),
              tg.Tensor(np.zeros(1), dtype=tg.float64, requires_grad=True)]
    params[0].grad = tg.Tensor(np.array([3.0, 0.0]), dtype=tg.float64)
    params[1].grad = tg.Tensor(np.array([4.0]), dtype=tg.float64)
    total = utils.clip_grad_norm_(params, 10.0, norm_type=norm_type)
    assert total.item() == (2.0 if norm_type == 0 else 0.0)
    # A sparse gradient's untouched rows are zeros too: with one untouched row the
    # order -inf norm is 0, not the smallest stored value.
    table = tg.Tensor(np.zeros((3, 2)), dtype=tg.float64, requires_grad=True)
    table.grad = SparseRowGrad(np.array([0, 2]), np.array([[1.0, 2.0], [3.0, 4.0]]), (3, 2))
    expected = {0: 1.0, -1.0: 0.0, -math.inf: 0.0}[norm_type]  # order 0: one gradient with nonzeros
    assert utils.get_total_norm([table.grad], norm_type).item() == expected


def test_clip_grad_norm_caps_the_joint_norm_and_keeps_the_direction():
    params, grads = with_grads(np.float64, scale=3.0)
    flat = np.concatenate([g.ravel() for g in grads])
    total = utils.clip_grad_norm_(params, 1.0)
    assert total.item() == pytest.approx(np.linalg.norm(flat), rel=1e-14)
    clipped = np.concatenate([p.grad.numpy().ravel() for p in params])
    assert np.linalg.norm(clipped) == pytest.approx(1.0, rel=1e-5)  # 1 / (norm + 1e-6) * norm
    np.testing.assert_allclose(clipped / np.linalg.norm(clipped), flat / np.linalg.norm(flat), rtol=1e-12)


def test_clip_grad_norm_skips_missing_grads_and_handles_none_at_all():
    params, grads = with_grads(np.float64)
    params[1].grad = None
    total = utils.clip_grad_norm_(params, 1e9)
    expected = np.linalg.norm(np.concatenate([grads[0].ravel(), grads[2].ravel()]))
    assert total.item() == pytest.approx(expected, rel=1e-14)
    empty = [tg.Tensor(np.ones(2), requires_grad=True)]
    assert utils.clip_grad_norm_(empty, 1.0).item() == 0.0
    assert utils.clip_grad_norm_(params[0], 1e9).item() == pytest.approx(np.linalg.norm(grads[0]))  # lone Tensor


def test_clip_grad_norm_nonfinite():
    torch = pytest.importorskip("torch")
    params, grads = with_grads(np.float32)
    grads[0][0, 0] = np.inf
    params[0].grad = tg.Tensor(grads[0])
    with pytest.raises(RuntimeError, match="non-finite"):
        utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(params[1].grad.numpy(), grads[1].astype(np.float32))  # untouched
    total = utils.clip_grad_norm_(params, 1.0)  # like torch: scales by the non-finite norm
    tparams = torch_params(torch, grads, torch.float32)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, 1.0)
    assert total.item() == ttotal.item() == math.inf
    for p, tp in zip(params, tparams):
        np.testing.assert_array_equal(p.grad.numpy(), tp.grad.numpy())


def test_clip_grad_norm_bad_arguments():
    params, _ = with_grads()
    with pytest.raises(ValueError, match="max_norm"):
        utils.clip_grad_norm_(params, -1.0)
    with pytest.raises(ValueError, match="norm_type"):
        utils.clip_grad_norm_(params, 1.0, norm_type=math.nan)
    with pytest.raises(TypeError, match="Tensor"):
        utils.clip_grad_norm_([params[0], np.ones(3)], 1.0)


def sparse_case(dtype=np.float64):
    """A table whose sparse gradient repeats row 1 (rows add up)."""
    table = tg.Tensor(np.zeros((6, 2)), dtype=dtype, requires_grad=True)
    rows = np.array([1, 4, 1, 0])
    values = np.array([[3.0, -1.0], [0.5, 2.0], [1.0, 4.0], [-2.0, 0.25]], dtype=dtype)
    table.grad = SparseRowGrad(rows, values, (6, 2))
    dense = np.zeros((6, 2), dtype=dtype)
    np.add.at(dense, rows, values)
    return table, dense


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_of_sparse_grads_equals_the_dense_gradient_it_stands_for(norm_type):
    table, dense = sparse_case()
    w = tg.Tensor(np.zeros(3), dtype=tg.float64, requires_grad=True)
    w.grad = tg.Tensor(np.array([1.0, -2.0, 0.5]), dtype=tg.float64)
    dense_table = tg.Tensor(np.zeros((6, 2)), dtype=tg.float64, requires_grad=True)
    dense_table.grad = tg.Tensor(dense, dtype=tg.float64)
    dense_w = tg.Tensor(np.zeros(3), dtype=tg.float64, requires_grad=True)
    dense_w.grad = tg.Tensor(w.grad.numpy().copy(), dtype=tg.float64)
    total = utils.clip_grad_norm_([table, w], 1.5, norm_type=norm_type)
    expected = utils.clip_grad_norm_([dense_table, dense_w], 1.5, norm_type=norm_type)
    assert total.item() == pytest.approx(expected.item(), rel=1e-14)
    assert isinstance(table.grad, SparseRowGrad)
    np.testing.assert_allclose(table.grad.to_dense(), dense_table.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(w.grad.numpy(), dense_w.grad.numpy(), rtol=1e-14)


# ----------------------------------------------------------------------------- value clipping


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    params, grads = with_grads(np.float32, scale=2.0)
    utils.clip_grad_value_(params, 0.7)
    tparams = torch_params(torch, grads, torch.float32)
    torch.nn.utils.clip_grad_value_(tparams, 0.7)
    for p, tp in zip(params, tparams):
        np.testing.assert_array_equal(p.grad.numpy(), tp.grad.numpy())
    assert max(np.abs(p.grad.numpy()).max() for p in params) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="clip_value"):
        utils.clip_grad_value_(params, -1.0)


def test_clip_grad_value_clamps_summed_sparse_rows():
    table, dense = sparse_case()
    utils.clip_grad_value_([table], 2.5)
    np.testing.assert_array_equal(table.grad.to_dense(), np.clip(dense, -2.5, 2.5))  # row 1 summed first
    assert len(np.unique(table.grad.indices)) == len(table.grad.indices)


# ----------------------------------------------------------------------------- gradient noise


def zero_grad_param(n, dtype=np.float64):
    p = tg.Tensor(np.zeros(n), dtype=dtype, requires_grad=True)
    p.grad = tg.Tensor(np.zeros(n), dtype=dtype)
    return p


def test_annealed_noise_has_the_scheduled_variance():
    """sigma_t^2 = eta / (1 + t)^gamma (Neelakantan et al. 2015)."""
    noise = utils.AnnealedGradNoise(eta=0.3, gamma=0.55, seed=0)
    for t in range(4):
        p = zero_grad_param(200_000)
        std = noise([p])
        assert std == math.sqrt(0.3 / (1 + t) ** 0.55)
        sample = p.grad.numpy()
        assert abs(sample.mean()) < 5 * std / math.sqrt(sample.size)
        assert sample.std() == pytest.approx(std, rel=0.01)
    assert noise.t == 4 and noise.std == math.sqrt(0.3 / 5 ** 0.55)


def test_annealed_noise_is_reproducible_and_resumable():
    def draws(noise, steps):
        out = []
        for _ in range(steps):
            p = zero_grad_param(5)
            noise([p])
            out.append(p.grad.numpy())
        return np.array(out)

    full = draws(utils.AnnealedGradNoise(eta=0.01, seed=7), 6)
    np.testing.assert_array_equal(draws(utils.AnnealedGradNoise(eta=0.01, seed=7), 6), full)
    first = utils.AnnealedGradNoise(eta=0.01, seed=7)
    head = draws(first, 2)
    resumed = utils.AnnealedGradNoise(eta=1.0, seed=99)
    resumed.load_state_dict(first.state_dict())
    np.testing.assert_array_equal(np.concatenate([head, draws(resumed, 4)]), full)
    # without a seed it follows the engine's global generator
    tg.manual_seed(3)
    a = draws(utils.AnnealedGradNoise(eta=0.01), 2)
    tg.manual_seed(3)
    np.testing.assert_array_equal(draws(utils.AnnealedGradNoise(eta=0.01), 2), a)


def test_noise_keeps_dtype_and_touches_only_sparse_rows():
    p = zero_grad_param(4, np.float32)
    utils.add_grad_noise_([p], 0.1, np.random.default_rng(0))
    assert p.grad.dtype == np.float32 and (p.grad.numpy() != 0).all()
    table, dense = sparse_case()
    utils.add_grad_noise_([table], 0.1, np.random.default_rng(0))
    noisy = table.grad.to_dense()
    np.testing.assert_array_equal(noisy[[2, 3, 5]], 0.0)  # untouched rows stay exactly zero
    assert (noisy[[0, 1, 4]] != dense[[0, 1, 4]]).all()
    with pytest.raises(ValueError, match="eta"):
        utils.AnnealedGradNoise(eta=-1.0)


# ----------------------------------------------------------------------------- L1 / L2


def test_l1_transform_equals_the_gradient_of_the_l1_penalty():
    r = np.random.default_rng(0)
    X, y = r.standard_normal((10, 3)), r.standard_normal(10)
    w0 = np.array([0.5, -1.0, 0.0])  # sign(0) = 0 at the kink

    def loss(w):
        return ((tg.Tensor(X, dtype=tg.float64) @ w - tg.Tensor(y, dtype=tg.float64)) ** 2).mean()

    a = tg.Tensor(w0, dtype=tg.float64, requires_grad=True)
    loss(a).backward()
    utils.add_l1_grad_([a], 0.3)
    b = tg.Tensor(w0, dtype=tg.float64, requires_grad=True)
    (loss(b) + 0.3 * utils.l1_penalty([b])).backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-14)
    c = tg.Tensor(w0, dtype=tg.float64, requires_grad=True)
    loss(c).backward()
    np.testing.assert_allclose(a.grad.numpy() - c.grad.numpy(), 0.3 * np.sign(w0), rtol=1e-12, atol=1e-15)


def test_l1_transform_on_sparse_grads_penalises_touched_rows_only():
    table, dense = sparse_case()
    table.data[...] = np.arange(12).reshape(6, 2) - 5.5
    utils.add_l1_grad_([table], 0.1)
    expected = dense.copy()
    expected[[0, 1, 4]] += 0.1 * np.sign(table.data[[0, 1, 4]])
    np.testing.assert_allclose(table.grad.to_dense(), expected, rtol=1e-15)


def test_penalties_values_and_gradients():
    a = tg.Tensor(np.array([1.0, -2.0]), dtype=tg.float64, requires_grad=True)
    b = tg.Tensor(np.array([[0.5], [-0.25]]), dtype=tg.float64, requires_grad=True)
    l1, l2 = utils.l1_penalty([a, b]), utils.l2_penalty([a, b])
    assert l1.item() == pytest.approx(3.75) and l2.item() == pytest.approx(0.5 * (1 + 4 + 0.25 + 0.0625))
    (l1 + l2).backward()
    np.testing.assert_allclose(a.grad.numpy(), np.sign(a.data) + a.data)
    np.testing.assert_allclose(b.grad.numpy(), np.sign(b.data) + b.data)
    assert utils.l2_penalty([]).item() == 0.0
    tg.autograd.gradcheck(lambda x: utils.l2_penalty([x]) + utils.l1_penalty([x]),
                          [tg.Tensor(np.array([0.3, -1.2, 2.0]), dtype=tg.float64, requires_grad=True)])


def train_least_squares(name, weight_decay=0.0, penalty=0.0, steps=50, **kw):
    r = np.random.default_rng(1)
    X, y = tg.Tensor(r.standard_normal((20, 4)), dtype=tg.float64), tg.Tensor(r.standard_normal(20), dtype=tg.float64)
    w = tg.Tensor(r.standard_normal(4) * 3, dtype=tg.float64, requires_grad=True)
    opt = getattr(tg.optim, name)([w], lr=0.05, weight_decay=weight_decay, **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((X @ w - y) ** 2).mean()
        if penalty:
            loss = loss + penalty * utils.l2_penalty([w])
        loss.backward()
        opt.step()
    return w.detach().numpy()


@pytest.mark.parametrize("name,kw", [("SGD", dict(momentum=0.9)), ("Adam", {}), ("RMSprop", {}), ("Adagrad", {})])
def test_explicit_l2_penalty_equals_coupled_weight_decay(name, kw):
    np.testing.assert_allclose(train_least_squares(name, penalty=0.2, **kw),
                               train_least_squares(name, weight_decay=0.2, **kw), rtol=1e-12)


def test_adamw_decoupled_decay_differs_from_an_l2_penalty():
    adam_l2 = train_least_squares("Adam", penalty=0.5)
    adamw = train_least_squares("AdamW", weight_decay=0.5)
    assert np.abs(adamw - adam_l2).max() > 1e-3
    # with no decay at all the three coincide: the difference is the decay's coupling alone
    np.testing.assert_allclose(train_least_squares("AdamW", weight_decay=0.0), train_least_squares("Adam"),
                               rtol=1e-14)
