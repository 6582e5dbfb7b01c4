"""Adversarial edge cases for the core engine (tensor.py, ops.py, autograd.py).

Gradients are checked against finite differences in float64, against torch where the
semantics should match, or against values worked out by hand in the test. Each test
names the behaviour it pins down; the ones that found bugs say what went wrong.
"""

import gc
import random
import weakref

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck, gradgradcheck

try:
    import torch
except ImportError:  # torch is a test-only extra
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")
F64 = tg.float64


def leaf(array, dtype=F64):
    return tg.Tensor(np.asarray(array, dtype=np.float64), dtype=dtype, requires_grad=True)


def away_from_zero(shape, seed=0):
    """|x| in [0.2, 2]: finite differences never straddle a kink."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def torch_grads(fn, arrays, upstream):
    """Run ``fn`` on float64 torch leaves; return (output, grads of each leaf)."""
    inputs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*inputs)
    out.backward(torch.tensor(upstream, dtype=torch.float64))
    return out.detach().numpy(), [None if t.grad is None else t.grad.numpy() for t in inputs]


def engine_grads(fn, arrays, upstream):
    inputs = [leaf(a) for a in arrays]
    out = fn(*inputs)
    out.backward(tg.Tensor(upstream, dtype=F64))
    return out.detach().numpy(), [None if t.grad is None else t.grad.numpy() for t in inputs]


def assert_matches_torch(fn, torch_fn, arrays, seed=0):
    out_shape = fn(*[leaf(a) for a in arrays]).shape
    upstream = np.random.default_rng(seed).standard_normal(out_shape)
    out, grads = engine_grads(fn, arrays, upstream)
    t_out, t_grads = torch_grads(torch_fn, arrays, upstream)
    assert out.shape == t_out.shape
    np.testing.assert_allclose(out, t_out, rtol=1e-12, atol=1e-12, equal_nan=True)
    for mine, theirs, array in zip(grads, t_grads, arrays):
        assert mine is not None and mine.shape == np.shape(array)
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12, equal_nan=True)


# ============================================================== engine: accumulation


def test_leaf_used_by_an_add_and_by_the_adds_other_operand_gets_the_right_gradient():
    # BUG (tensor.py run_backward/deliver): a leaf's first gradient is stored without a
    # copy, then later contributions are added in place (`grad.data += g`). Add's
    # backward hands the *same* array to both operands, so the in-place add also changes
    # the gradient still waiting for the other operand. x + 2x + x must give 4, not 6.
    w = tg.Tensor([1.0, 3.0], dtype=F64)
    x = leaf([1.0, 2.0])
    ((x + x * 2.0 + x) * w).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 12.0])

    x, z = leaf([0.5, 0.5]), leaf([0.5, 0.5])
    ((x + (x + z)) * w).sum().backward()  # d/dz = w, d/dx = 2w
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 6.0])
    np.testing.assert_array_equal(z.grad.numpy(), [1.0, 3.0])


@needs_torch
def test_random_small_graphs_with_shared_nodes_match_torch():
    # Random DAGs of adds, muls, views and fan-out over a few leaves: every leaf's
    # gradient equals torch's. (Seeds 22, 55 and 117 hit the in-place accumulation bug
    # above; a 20,000-graph run with that bug patched out matched torch everywhere.)
    def build(ops, values):
        values = list(values)
        for kind, a, b in ops:
            x, y = values[a], values[b]
            values.append({"add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y,  # noqa: B023 (called at once)
                           "tanh": lambda: x.tanh(), "view": lambda: x.reshape(3, 1).reshape(3),  # noqa: B023 (called at once)
                           "clone": lambda: x.clone(), "index": lambda: x[[0, 1, 2]],  # noqa: B023 (called at once)
                           "reduce": lambda: x.sum() + y, "neg": lambda: -x}[kind]())  # noqa: B023 (called at once)
        return values

    for seed in range(150):
        rnd, rng = random.Random(seed), np.random.default_rng(seed)
        leaves = [rng.standard_normal(3) for _ in range(rnd.randint(1, 3))]
        n, ops = len(leaves), []
        for _ in range(rnd.randint(2, 9)):
            # "add" three times: Add hands one gradient array to both operands, the
            # pattern that exposes gradient aliasing.
            ops.append((rnd.choice(["add", "add", "add", "sub", "mul", "tanh", "view", "clone", "index",
                                    "reduce", "neg"]),
                        rnd.randrange(n), rnd.randrange(n)))
            n += 1
        picks = rnd.sample(range(n), k=min(n, rnd.randint(1, 3)))
        weights = [rng.standard_normal(3) for _ in picks]

        mine = [leaf(a) for a in leaves]
        values = build(ops, mine)
        loss = tg.Tensor(0.0, dtype=F64)
        for p, w in zip(picks, weights):
            loss = loss + (values[p] * tg.Tensor(w, dtype=F64)).sum()
        if not loss.requires_grad:
            continue
        loss.backward()

        theirs = [torch.tensor(a, requires_grad=True) for a in leaves]
        t_values = build(ops, theirs)
        t_loss = sum((t_values[p] * torch.tensor(w)).sum() for p, w in zip(picks, weights))
        t_loss.backward()
        for m, t in zip(mine, theirs):
            expected = np.zeros(3) if t.grad is None else t.grad.numpy()
            got = np.zeros(3) if m.grad is None else m.grad.numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12,
                                       err_msg=f"seed {seed}: ops {ops}, loss over nodes {picks}")


def test_create_graph_leaf_grads_do_not_alias_each_other_or_the_callers_grad():
    # BUG (tensor.py deliver, create_graph branch): `tensor.grad = g` stores the same
    # Tensor for both operands of `a + b` and for the caller's grad, so a later in-place
    # accumulation (the next plain backward, an optimizer's in-place update) writes into
    # all three.
    a, b = tg.ones(3, dtype=F64, requires_grad=True), tg.ones(3, dtype=F64, requires_grad=True)
    upstream = tg.ones(3, dtype=F64)
    (a + b).backward(upstream, create_graph=True)
    assert a.grad is not b.grad and a.grad is not upstream
    assert not np.shares_memory(a.grad.data, b.grad.data)
    assert not np.shares_memory(a.grad.data, upstream.data)
    (a * 1.0).sum().backward()  # plain backward: accumulates into a.grad in place
    np.testing.assert_array_equal(a.grad.detach().numpy(), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(b.grad.detach().numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(upstream.numpy(), [1.0, 1.0, 1.0])


def test_leaf_grad_never_shares_memory_with_activations_user_grads_or_other_grads():
    x = leaf([1.0, 2.0])
    y = x.reshape(2, 1)  # a view of x's data
    user_grad = tg.Tensor([[1.0], [1.0]], dtype=F64)
    y.backward(user_grad)
    assert not np.shares_memory(x.grad.data, user_grad.data)
    assert not np.shares_memory(x.grad.data, x.data)
    # x.backward(x): the gradient array is the tensor's own data.
    z = leaf([3.0, 4.0])
    z.backward(z)
    assert not np.shares_memory(z.grad.data, z.data)
    z.grad.data += 1
    np.testing.assert_array_equal(z.detach().numpy(), [3.0, 4.0])


def test_grad_dtype_and_shape_follow_the_leaf_through_promotion_and_broadcasting():
    a32 = tg.Tensor(np.ones((1, 3)), requires_grad=True)  # float32, broadcast on axis 0
    b64 = leaf(2.0)  # 0-d float64
    out = a32 * b64 + tg.Tensor(np.ones((4, 1)), dtype=F64)
    assert out.dtype == tg.float64 and out.shape == (4, 3)
    out.sum().backward()
    assert a32.grad.dtype == tg.float32 and a32.grad.shape == (1, 3)
    assert b64.grad.dtype == tg.float64 and b64.grad.shape == ()
    np.testing.assert_array_equal(a32.grad.numpy(), [[8.0, 8.0, 8.0]])
    assert b64.grad.item() == 12.0


# ============================================================== engine: graphs


def test_diamonds_at_several_depths_and_backward_from_an_intermediate():
    x = leaf([0.3, -0.7])
    h1 = x.tanh()
    h2 = h1 * h1 + h1          # diamond of depth 1
    h3 = h2.exp() * h1 + h2    # diamond reusing both h1 and h2
    h3.sum().backward(retain_graph=True)
    t = x.detach().numpy()
    th = np.tanh(t)
    d_h1 = 1 - th ** 2
    h2v = th ** 2 + th
    d_h2 = (2 * th + 1) * d_h1
    expected = np.exp(h2v) * d_h2 * th + np.exp(h2v) * d_h1 + d_h2
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)
    x.grad = None
    h2.sum().backward()  # from an intermediate: the part below is still retained
    np.testing.assert_allclose(x.grad.numpy(), d_h2, rtol=1e-12)


def test_backward_on_a_leaf_accumulates_the_given_gradient():
    x = leaf([1.0, 2.0])
    x.backward(tg.Tensor([0.5, 0.25], dtype=F64))
    x.backward(tg.Tensor([0.5, 0.25], dtype=F64))
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.5])
    s = leaf(3.0)
    s.backward()
    assert s.grad.shape == () and s.grad.item() == 1.0


def test_retain_graph_keeps_every_node_and_the_default_frees_it():
    x = leaf([1.0, 2.0])
    loss = (x.exp() * x).sum()
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * (np.exp([1.0, 2.0]) * (1 + np.array([1.0, 2.0]))))
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_autograd_grad_with_non_leaf_inputs_and_inputs_that_are_outputs():
    x = leaf([1.0, 2.0])
    y = x * 3.0
    z = (y * y).sum()
    gy, gx = tg.autograd.grad(z, [y, x], retain_graph=True)
    np.testing.assert_allclose(gy.numpy(), [6.0, 12.0])
    np.testing.assert_allclose(gx.numpy(), [18.0, 36.0])
    assert x.grad is None and y.grad is None
    # y is both an output and an input: its own upstream adds to what flows down from z2.
    z2 = y * 2.0
    ones = tg.ones(2, dtype=F64)
    (g,) = tg.autograd.grad([z2, y], [y], grad_outputs=[ones, ones])
    np.testing.assert_allclose(g.numpy(), [3.0, 3.0])


def test_autograd_grad_wrt_an_intermediate_does_not_free_the_graph_below_it():
    # BUG (tensor.py run_backward with inputs=): the engine runs (and releases) every node
    # down to the leaves even though only d z / d y was asked for; torch stops at y, so a
    # later backward through x.exp() still works there.
    x = leaf([1.0, 2.0])
    y = x.exp()
    z = (y * y).sum()
    (gy,) = tg.autograd.grad(z, y)
    np.testing.assert_allclose(gy.numpy(), 2 * np.exp([1.0, 2.0]))
    (y * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * np.exp([1.0, 2.0]))


def test_autograd_grad_of_a_non_scalar_output_needs_grad_outputs():
    # BUG (autograd.grad): with grad_outputs=None a non-scalar output silently gets ones
    # (Tensor.backward refuses; torch.autograd.grad raises "grad can be implicitly
    # created only for scalar outputs").
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"\(2,\)"):
        tg.autograd.grad(x * 3.0, x)


def test_graph_is_freed_without_the_garbage_collector():
    # Saved tensors are reachable only through the graph; once backward ran (or the loss
    # is dropped) they must go away by reference counting alone: no cycles.
    gc.disable()
    try:
        x = leaf(np.ones(1000))
        h = x.exp()
        ref = weakref.ref(h)
        loss = (h.softmax(-1) * h).sum()
        del h
        loss.backward()
        assert ref() is None
        h = x.exp()
        ref = weakref.ref(h)
        loss = (h * h).sum()
        del h, loss  # never backpropagated
        assert ref() is None
        h = x * 2.0
        ref = weakref.ref(h)
        tg.autograd.grad((h * 3.0).sum(), x)
        del h
        assert ref() is None
    finally:
        gc.enable()


def test_no_grad_nests_restores_on_error_and_works_as_a_decorator():
    x = leaf([1.0])
    with tg.no_grad():
        with tg.enable_grad():
            inner = x * 2.0
        outer = x * 2.0
    assert inner.requires_grad and not outer.requires_grad and outer.is_leaf
    with pytest.raises(KeyError):
        with tg.no_grad():
            raise KeyError("boom")
    assert tg.is_grad_enabled()

    @tg.no_grad()
    def double(t):
        return t * 2.0

    assert not double(x).requires_grad and tg.is_grad_enabled()


def test_requires_grad_toggling_and_detach():
    x = tg.Tensor([1.0, 2.0], dtype=F64)
    y = x * 2.0
    y.requires_grad_()  # a no-grad result is a leaf: it may start a graph
    (y * y).sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), [4.0, 8.0])
    z = leaf([1.0, 2.0]) * 2.0
    with pytest.raises(RuntimeError, match="leaf"):
        z.requires_grad = False
    d = z.detach()
    assert d.is_leaf and not d.requires_grad and np.shares_memory(d.data, z.data)
    with pytest.raises(RuntimeError, match="floating"):
        tg.Tensor([1, 2]).requires_grad_()


# ============================================================== dtypes


def test_cast_to_an_integer_or_bool_dtype_leaves_the_graph():
    # BUG (Function.apply / Cast): x.long() on a tensor that requires grad comes out as
    # an int64 tensor with requires_grad=True and a grad_fn, and backward through it
    # treats rounding as the identity (x.grad = 2.5 below); torch gives requires_grad=False.
    x = tg.Tensor([1.5, 2.5], requires_grad=True)
    as_int, as_bool = x.long(), x.to(tg.bool_)
    assert as_int.dtype == tg.int64 and not as_int.requires_grad and as_int.grad_fn is None
    assert as_bool.dtype == tg.bool_ and not as_bool.requires_grad
    y = x * 1.0 + x.long() * 2.5  # only the first term carries gradient
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])


def test_integer_and_bool_tensors_flow_through_ops_with_sensible_dtypes():
    i = tg.Tensor([1, 2, 3])
    b = tg.Tensor([True, False, True])
    assert (i + 1).dtype == tg.int64 and (i * 2).dtype == tg.int64
    assert (i * 0.5).dtype == tg.float32 and (i / i).dtype == tg.float32  # torch promotion (_promoted)
    assert (tg.ones(3) - i).dtype == tg.float32 and (2 / i).dtype == tg.float32 and (b * tg.ones(3)).dtype == tg.float32
    assert b.sum().dtype == tg.int64 and b.sum().item() == 2
    assert (b + True).dtype == tg.bool_
    assert i.max().item() == 3 and i.argmax().item() == 2
    for t in (i + 1, b.sum(), i * 0.5, i[[0, 0]], i.reshape(3, 1).T):
        assert not t.requires_grad and t.grad_fn is None
    x = tg.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * b).sum().backward()
    assert x.grad.dtype == tg.float32
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.0, 1.0])


def test_sigmoid_and_softplus_of_integer_tensors_are_floating_point():
    # BUG (ops.py Sigmoid/Softplus forward): `.astype(x.dtype)` truncates the result to
    # the integer input dtype: sigmoid([-3, 0, 2]) came out as [0, 0, 0].
    i = tg.Tensor([-3, 0, 2])
    s, p = i.sigmoid(), i.softplus()
    assert s.dtype.kind == "f" and p.dtype.kind == "f"
    x = np.array([-3.0, 0.0, 2.0])
    np.testing.assert_allclose(s.numpy(), 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(p.numpy(), np.log1p(np.exp(x)), rtol=1e-6)


def test_min_and_minimum_of_unsigned_bool_and_extreme_integers():
    # BUG (Tensor.min = -max(-x); minimum = -maximum(-a, -b)): negation wraps for
    # unsigned integers (min([0, 5]) gave 5), overflows at INT64_MIN, and fails for bool.
    assert tg.Tensor([0, 5], dtype=tg.uint8).min().item() == 0
    np.testing.assert_array_equal(
        tg.minimum(tg.Tensor([0, 5], dtype=tg.uint8), tg.Tensor([3, 2], dtype=tg.uint8)).numpy(), [0, 2])
    low = np.iinfo(np.int64).min
    assert tg.Tensor([low, 0]).min().item() == low
    assert tg.Tensor([True, False]).min().item() == 0


# ============================================================== elementwise corner values


@needs_torch
def test_log_and_sqrt_at_zero_match_torch():
    with np.errstate(divide="ignore"):  # log(0) = -inf and 1/0 = inf are the expected values
        assert_matches_torch(lambda a: a.log(), lambda a: a.log(), [np.array([0.0, 1.0, 2.0])])
        assert_matches_torch(lambda a: a.sqrt(), lambda a: a.sqrt(), [np.array([0.0, 1.0, 4.0])])
        x = leaf([0.0])
        x.log().sum().backward()
    assert x.grad.item() == np.inf


@needs_torch
def test_pow_with_negative_base_and_integer_exponent_matches_torch():
    base = np.array([-2.0, -0.5, 0.0, 1.5])
    for exponent in (1, 2, 3, -1):
        with np.errstate(divide="ignore", invalid="ignore"):
            assert_matches_torch(lambda a: a ** exponent, lambda a: a ** exponent, [base])  # noqa: B023 (called at once)


@needs_torch
def test_pow_with_zero_exponent_or_zero_base_matches_torch():
    # BUG (ops.py Pow.backward): b * a**(b-1) is 0 * inf = NaN at a = 0, b = 0, and the
    # exponent's gradient a**b log(a) is -inf/NaN at a = 0; torch defines both as 0
    # (where b >= 0), so x ** 0 and 0 ** w have finite gradients.
    with np.errstate(divide="ignore", invalid="ignore"):
        assert_matches_torch(lambda a: a ** 0, lambda a: a ** 0, [np.array([-2.0, 0.0, 1.5])])
        assert_matches_torch(lambda e: 0.0 ** e, lambda e: 0.0 ** e, [np.array([0.0, 1.0, 2.0])])
        assert_matches_torch(lambda a, e: a ** e, lambda a, e: a ** e,
                             [np.array([0.0, 0.0, 2.0]), np.array([0.0, 2.0, 0.5])])


@needs_torch
def test_masked_logits_softmax_log_softmax_logsumexp_match_torch():
    logits = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [2.0, 2.0, -np.inf]])
    with np.errstate(invalid="ignore", divide="ignore"):  # the all -inf row is NaN, as in torch
        assert_matches_torch(lambda a: a.softmax(-1), lambda a: a.softmax(-1), [logits])
        assert_matches_torch(lambda a: a.log_softmax(-1)[:, [0, 1]], lambda a: a.log_softmax(-1)[:, [0, 1]],
                             [logits[[0, 2]]])
        assert_matches_torch(lambda a: a.logsumexp(-1), lambda a: a.logsumexp(-1), [logits])
    # The fully masked row: softmax NaN (as torch), logsumexp -inf.
        x = tg.Tensor(logits, dtype=F64)
        assert np.isnan(x.softmax(-1).numpy()[1]).all()
        assert x.logsumexp(axis=-1).numpy()[1] == -np.inf


@needs_torch
def test_maximum_minimum_ties_and_max_min_ties_split_the_gradient_like_torch():
    a, b = np.array([[1.0, 2.0, 3.0]]), np.array([[1.0], [3.0]])
    assert_matches_torch(lambda x, y: tg.maximum(x, y) + 2.0 * tg.minimum(x, y),
                         lambda x, y: torch.maximum(x, y) + 2.0 * torch.minimum(x, y), [a, b])
    ties = np.array([[1.0, 3.0, 3.0], [3.0, 0.0, 0.0]])
    assert_matches_torch(lambda x: x.max(), lambda x: x.amax(), [ties])
    assert_matches_torch(lambda x: x.min(axis=1), lambda x: x.amin(dim=1), [ties])
    assert_matches_torch(lambda x: x.max(axis=(0, -1), keepdims=True),
                         lambda x: x.amax(dim=(0, -1), keepdim=True), [ties])


@needs_torch
def test_where_with_scalars_and_broadcasting_matches_torch():
    cond = np.array([[True, False, True], [False, False, True]])
    assert_matches_torch(lambda a, b: tg.where(tg.Tensor(cond), a, b),
                         lambda a, b: torch.where(torch.as_tensor(cond), a, b),
                         [np.array([1.0, 2.0, 3.0]), np.array([[5.0], [6.0]])])
    assert_matches_torch(lambda a: tg.where(cond, 0.5, a), lambda a: torch.where(torch.as_tensor(cond), 0.5, a),
                         [np.array(4.0)])


# ============================================================== reductions


@needs_torch
def test_reductions_with_negative_and_tuple_axes_and_keepdims_match_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    pairs = [
        (lambda a: a.sum(axis=(-1, 0), keepdims=True), lambda a: a.sum(dim=(-1, 0), keepdim=True)),
        (lambda a: a.mean(axis=(-2,)), lambda a: a.mean(dim=(-2,))),
        (lambda a: a.var(axis=(0, 2), keepdims=True, correction=0),
         lambda a: a.var(dim=(0, 2), keepdim=True, correction=0)),
        (lambda a: a.std(axis=-1), lambda a: a.std(dim=-1)),
        (lambda a: a.logsumexp(axis=(0, -1), keepdims=True), lambda a: a.logsumexp(dim=(0, 2), keepdim=True)),
        (lambda a: a.sum(), lambda a: a.sum()),
        (lambda a: a.var(), lambda a: a.var()),
        (lambda a: a.logsumexp(), lambda a: a.logsumexp(dim=(0, 1, 2))),
    ]
    for mine, theirs in pairs:
        assert_matches_torch(mine, theirs, [x])


@needs_torch
def test_reductions_over_axis_0_of_a_0d_tensor_match_torch():
    # BUG (ops.normalize_axis accepts axis 0/-1 for a 0-d tensor, as torch does, but the
    # ops then fail in NumPy: "Sum: invalid input shapes (): axis 0 is out of bounds",
    # softmax(-1) AxisError, mean(0) IndexError).
    s = np.array(2.0)
    assert_matches_torch(lambda a: a.sum(0), lambda a: a.sum(0), [s])
    assert_matches_torch(lambda a: a.mean(-1), lambda a: a.mean(-1), [s])
    assert_matches_torch(lambda a: a.max(0), lambda a: a.amax(0), [s])
    assert_matches_torch(lambda a: a.logsumexp(0), lambda a: a.logsumexp(0), [s])
    assert_matches_torch(lambda a: a.softmax(-1), lambda a: a.softmax(-1), [s])


def test_empty_tensors_give_empty_gradients_of_the_right_shape():
    x = leaf(np.zeros((0, 3)))
    b = leaf(np.ones(3))
    out = (x * b).sum(axis=0) + x.mean(axis=1).sum() + (x @ tg.ones(3, 2, dtype=F64)).sum()
    out.sum().backward()
    assert x.grad.shape == (0, 3)
    np.testing.assert_array_equal(b.grad.numpy(), [0.0, 0.0, 0.0])
    assert np.isnan(x.detach().mean(axis=0).numpy()).all()  # 0/0, as torch
    assert x.softmax(-1).shape == (0, 3) and x[1:1].shape == (0, 3)


def test_max_over_a_non_empty_axis_of_an_empty_tensor_is_empty():
    # BUG (ops.py Max.forward rejects any empty input): NumPy and torch.amax reduce a
    # (0, 3) tensor over axis 1 to shape (0,); only reducing the empty axis is an error.
    x = leaf(np.zeros((0, 3)))
    assert x.max(axis=1).shape == (0,)
    assert x.min(axis=1).shape == (0,)
    with pytest.raises(ValueError):
        x.max(axis=0)


@needs_torch
def test_var_with_correction_at_or_above_the_count_matches_torch():
    # torch and NumPy divide by max(N - correction, 0): 0/0 = nan, x/0 = inf.
    # LOW (tensor.py var): the engine returns nan in both cases.
    x = np.array([1.0, 2.0])
    for correction in (2, 3):
        mine = tg.Tensor(x, dtype=F64).var(correction=correction).item()
        with pytest.warns(UserWarning):
            theirs = torch.tensor(x).var(correction=correction).item()
        assert (np.isnan(mine) and np.isnan(theirs)) or mine == theirs, (correction, mine, theirs)
    assert np.isnan(tg.Tensor([1.0], dtype=F64).var().item())


# ============================================================== matmul and layout


@needs_torch
@pytest.mark.parametrize("shapes", [
    ((3,), (3,)), ((3,), (3, 4)), ((4, 3), (3,)), ((3,), (2, 3, 4)), ((2, 4, 3), (3,)),
    ((2, 1, 4, 3), (5, 3, 2)), ((4, 3), (5, 3, 2)), ((5, 4, 3), (3, 2)),
], ids=str)
def test_matmul_shapes_match_torch(shapes):
    rng = np.random.default_rng(0)
    assert_matches_torch(lambda a, b: a @ b, lambda a, b: a @ b, [rng.standard_normal(s) for s in shapes])


@needs_torch
@pytest.mark.parametrize("case", [
    ("batched @ W.T", lambda a, b: a @ b.T, (5, 4, 3), (2, 3)),
    ("W.T @ batched", lambda a, b: a.T @ b, (3, 4), (5, 3, 2)),
    ("broadcast-batched @ W.T", lambda a, b: a @ b.T, (2, 1, 4, 3), (2, 3)),
    ("vector @ W.T", lambda a, b: a @ b.T, (3,), (2, 3)),
    ("W.T @ W.T", lambda a, b: a.T @ b.T, (3, 4), (2, 3)),
], ids=lambda c: c[0])
def test_matmul_with_a_transposed_2d_operand_matches_torch(case):
    # BUG (ops.py MatMul.backward): the "transposed operand" fast path, (B^T G^T)^T, skips
    # unbroadcast, so when the other operand has batch axes the gradient keeps them and
    # the final reshape fails: `x3d @ W.T` (a linear map over a sequence) cannot backward.
    _, fn, sa, sb = case
    rng = np.random.default_rng(1)
    assert_matches_torch(fn, fn, [rng.standard_normal(sa), rng.standard_normal(sb)])


def test_batched_matmul_with_a_2d_weight_has_correct_second_derivatives():
    # The same bug hit through create_graph: the backward of `x3d @ W` computes g @ W.mT,
    # whose right operand is a transposed 2-D matrix, so double backward crashed.
    x, w = leaf(away_from_zero((2, 3, 4))), leaf(away_from_zero((4, 2), seed=1))
    assert gradgradcheck(lambda a, b: (a @ b) ** 2, [x, w])


@needs_torch
def test_transpose_permute_T_mT_combinations_match_torch():
    x = np.random.default_rng(2).standard_normal((2, 3, 4))
    assert_matches_torch(lambda a: a.permute(2, 0, 1).transpose(0, -1).mT,
                         lambda a: a.permute(2, 0, 1).transpose(0, -1).mT, [x])
    assert_matches_torch(lambda a: a.T.reshape(4, 6), lambda a: a.permute(2, 1, 0).reshape(4, 6), [x])
    assert_matches_torch(lambda a: a.mT @ a, lambda a: a.mT @ a, [x])


# ============================================================== indexing


@needs_torch
@pytest.mark.parametrize("index", [
    lambda m: -1,
    lambda m: (Ellipsis, 1),
    lambda m: (None, 1, slice(None), None),
    lambda m: [1, 1, 1, 3],
    lambda m: m.tensor([[3, 0], [3, 3]]),
    lambda m: (m.tensor([0, 1, 1]), m.tensor([2, 2, 2])),
    lambda m: (m.tensor([[0], [1]]), m.tensor([2, 2, 4])),
    lambda m: (m.tensor([0, 1, 1]), slice(None), m.tensor([2, 2, 0])),
    lambda m: (slice(None), m.tensor([0, 1, 1]), m.tensor([2, 2, 0])),
    lambda m: (Ellipsis, m.tensor([0, 0, 2])),
    lambda m: m.tensor([-1, -4, -1]),
    lambda m: (1, [0, 0, 4]),
    lambda m: m.tensor(np.array([True, False, True, True])),
    lambda m: (m.tensor(np.array([True, False, True, True])), slice(1, None)),
    lambda m: m.tensor(np.arange(60).reshape(4, 5, 3) % 3 == 0),
    lambda m: m.tensor(np.zeros(0, dtype=np.int64)),
    lambda m: m.tensor(2),
    lambda m: (slice(1, 4, 2), slice(None, None, 2)),
    lambda m: slice(2, 100),
], ids=lambda f: "")
def test_indexing_forward_and_scatter_add_backward_match_torch(index):
    x = np.random.default_rng(3).standard_normal((4, 5, 3))
    assert_matches_torch(lambda a: a[index(tg)], lambda a: a[index(torch)], [x])


def test_negative_step_slices_scatter_back():
    x = leaf(np.arange(12.0).reshape(4, 3))
    y = x[::-2, 1:][:, ::-1]
    upstream = np.array([[1.0, 2.0], [3.0, 4.0]])
    y.backward(tg.Tensor(upstream, dtype=F64))
    expected = np.zeros((4, 3))
    expected[::-2, 1:][:, ::-1] += upstream
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_indexing_second_derivatives():
    x = leaf(away_from_zero((3, 2)))
    assert gradgradcheck(lambda a: a[[0, 0, 2]] ** 3, [x])
    assert gradgradcheck(lambda a: a[a.data > 0] ** 3, [x])


def test_setitem_rules():
    x = tg.Tensor([1.0, 2.0, 3.0])
    x[tg.Tensor([0, 2])] = tg.Tensor([9.0, 8.0])
    np.testing.assert_array_equal(x.numpy(), [9.0, 2.0, 8.0])
    p = tg.Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        p[0] = 5.0
    np.testing.assert_array_equal(p.detach().numpy(), [1.0, 2.0])  # unchanged by the refused write
    with tg.no_grad():
        p[0] = 5.0
    np.testing.assert_array_equal(p.detach().numpy(), [5.0, 2.0])
    h = p * 2.0
    with pytest.raises(RuntimeError, match="in-place"), tg.no_grad():
        h[0] = 1.0


def test_setitem_with_a_value_that_requires_grad_does_not_drop_the_gradient_silently():
    # BUG (Tensor.__setitem__): writing a graph-carrying value into a constant tensor
    # copies its numbers and forgets the graph, so gradients to `v` vanish without a
    # word. torch records the write (x then requires grad); refusing is also acceptable.
    x = tg.Tensor([0.0, 0.0, 0.0], dtype=F64)
    v = leaf([1.0, 2.0])
    try:
        x[:2] = v * 2.0
    except RuntimeError:
        return
    assert x.requires_grad, "the write of a value that requires grad was recorded nowhere"
    x.sum().backward()
    np.testing.assert_array_equal(v.grad.numpy(), [2.0, 2.0])


# ============================================================== second derivatives of more ops


@pytest.mark.parametrize("case", [
    ("maximum", lambda a, b: tg.maximum(a, b) * a, [(3, 4), (4,)]),
    ("where", lambda a, b: tg.where(np.array([True, False, True]), a * a, b * a), [(2, 3), (3,)]),
    ("concat", lambda a, b: tg.concat([a * a, b], axis=1) ** 2, [(2, 3), (2, 1)]),
    ("stack", lambda a, b: tg.stack([a * b, b], axis=-1) ** 2, [(3,), (3,)]),
    ("max_min", lambda a: a.max(axis=1) * a.min(), [(3, 4)]),
    ("abs_relu_leaky_clip", lambda a: (a.abs() + a.relu() + a.leaky_relu(0.2) + a.clip(-0.5, 0.5)) * a, [(6,)]),
    ("pow_tensor", lambda a, b: a.abs() ** b, [(3,), (3,)]),
    ("permute_broadcast", lambda a: (a.permute(2, 0, 1).mT ** 2).broadcast_to(2, 4, 3, 2), [(2, 3, 4)]),
    ("mean_std", lambda a: a.mean(axis=0) * a.std(axis=0), [(3, 2)]),
    ("logsumexp_keepdims", lambda a: a.logsumexp(axis=(0,), keepdims=True) * a, [(3, 2)]),
    ("matmul_vec", lambda a, b: (a @ b) ** 2, [(4,), (4, 2)]),
], ids=lambda c: c[0])
def test_more_ops_have_correct_second_derivatives(case):
    _, fn, shapes = case
    inputs = [leaf(away_from_zero(s, seed=i)) for i, s in enumerate(shapes)]
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs, atol=1e-5, rtol=1e-4)


def test_broadcasting_with_0d_and_size_1_axes_on_both_sides():
    a = leaf(1.5)
    b = leaf(away_from_zero((1, 3)))
    c = leaf(away_from_zero((4, 1), seed=1))
    d = leaf(away_from_zero((3, 1, 2), seed=2))
    e = leaf(away_from_zero((1, 4, 1), seed=3))
    assert gradcheck(lambda a, b, c: a * b + c / a, [a, b, c])
    assert gradcheck(lambda d, e: tg.maximum(d * e, e - d), [d, e])


# ----------------------------------------------------------------------------- found by fuzzing against torch


def test_std_gradient_is_zero_where_the_std_is_zero():
    # std = sqrt(var): sqrt's own gradient at 0 is inf, and inf * 0 made every element of a
    # constant row NaN. torch's std gives 0 there; elsewhere the gradient is unchanged.
    x = leaf([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0]])
    x.std(axis=1).sum().backward()
    row = np.array([1.0, 2.0, 4.0])
    expected = (row - row.mean()) / (2 * row.std(ddof=1))  # d std / dx_i = (x_i - mean) / ((N-1) std)
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 0.0, 0.0], expected], rtol=1e-12)
    assert gradcheck(lambda t: t.std(axis=1), [leaf([[1.0, 2.0, 4.0]])])
    if torch is not None:
        t = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0]], dtype=torch.float64, requires_grad=True)
        t.std(dim=1).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_and_or_invert_are_bitwise_on_integers_and_logical_on_bools():
    a, b = tg.tensor([1, 2, 3]), tg.tensor([3, 2, 1])
    np.testing.assert_array_equal((a & b).numpy(), [1, 2, 1])  # torch: bitwise, not [True, True, True]
    np.testing.assert_array_equal((a | b).numpy(), [3, 2, 3])
    np.testing.assert_array_equal((~a).numpy(), [-2, -3, -4])
    p, q = tg.tensor([True, True, False]), tg.tensor([True, False, False])
    assert (p & q).numpy().dtype == bool and (p & q).numpy().tolist() == [True, False, False]
    assert (p | q).numpy().tolist() == [True, True, False]
    assert (~p).numpy().tolist() == [False, False, True]
    x = tg.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="bool or integer"):
        _ = x & x
    with pytest.raises(TypeError, match="bool or integer"):
        _ = ~x


def test_flatten_refuses_start_dim_after_end_dim():
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        tg.ones(2, 3, 4).flatten(2, 1)
    assert tg.ones(2, 3, 4).flatten(1, 1).shape == (2, 3, 4)
    assert tg.ones(2, 3, 4).flatten(-2, -1).shape == (2, 12)


@pytest.mark.parametrize("kind", ["plain", "smoothing", "weighted", "nll"])
def test_a_mean_loss_over_no_target_has_zero_gradient(kind):
    # Every target ignored (or an empty batch): the mean is NaN, as torch, and backward
    # must give zeros, as torch, not raise ZeroDivisionError.
    F = tg.nn.functional
    for logits, target in ((np.ones((2, 3)), [-100, -100]), (np.ones((0, 3)), np.zeros(0, dtype=np.int64))):
        x = tg.Tensor(logits, requires_grad=True)
        y = tg.tensor(target)
        if kind == "nll":
            loss = F.nll_loss(x.log_softmax(axis=1), y)
        else:
            loss = F.cross_entropy(x, y, label_smoothing=0.1 if kind == "smoothing" else 0.0,
                                   weight=tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64) if kind == "weighted" else None)
        assert np.isnan(loss.item())
        loss.backward()
        assert x.grad.shape == logits.shape
        np.testing.assert_array_equal(x.grad.numpy(), 0.0)


def test_expand_takes_minus_one_for_an_existing_size():
    x = leaf(np.arange(3.0).reshape(3, 1))
    y = x.expand(-1, 4)  # torch: -1 keeps the size of that axis
    assert y.shape == (3, 4) and x.expand(2, -1, 4).shape == (2, 3, 4)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[4.0], [4.0], [4.0]])
    with pytest.raises(ValueError, match="new leading dimension"):
        x.expand(-1, 3, 4)
