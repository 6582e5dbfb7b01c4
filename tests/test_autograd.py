"""The backward engine: graph order, deep chains, freeing, accumulation, no_grad,
functional grad, and the errors it gives."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.tensor import Tensor


def test_shared_intermediate_gets_every_consumers_gradient(device):
    # u feeds three consumers at different depths; a wrong topological order would
    # process u before all of them have added their share.
    a = tg.Tensor([0.3, -0.7], dtype=tg.float64, device=device, requires_grad=True)
    u = a * 2.0 + a
    y = (u * u + u.exp()).exp().sum() + u.sum()
    y.backward()
    x = 3.0 * np.array([0.3, -0.7])
    inner = x * x + np.exp(x)
    expected = 3.0 * (np.exp(inner) * (2 * x + np.exp(x)) + 1.0)
    np.testing.assert_allclose(a.grad.numpy(), expected, rtol=1e-12)


def test_chain_of_100000_ops_backpropagates_without_recursion_error():
    x = tg.Tensor([1.0], requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.sum().backward()
    assert x.grad.numpy()[0] == 1.0


def test_gradients_accumulate_until_zeroed(device):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    for _ in range(3):
        (w * w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 3 * 2 * np.array([1.0, 2.0]))
    w.grad = None
    (w * 3.0).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [3.0, 3.0])


def test_micro_batch_accumulation_equals_one_big_batch():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    w = tg.Tensor(rng.standard_normal(3), dtype=tg.float64, requires_grad=True)
    ((tg.Tensor(x, dtype=tg.float64) @ w - tg.Tensor(y, dtype=tg.float64)) ** 2).mean().backward()
    full = w.grad.numpy().copy()
    w.grad = None
    for part in np.split(np.arange(8), 4):  # 4 micro-batches, each loss scaled by 1/4
        xb, yb = tg.Tensor(x[part], dtype=tg.float64), tg.Tensor(y[part], dtype=tg.float64)
        (((xb @ w - yb) ** 2).mean() * 0.25).backward()
    np.testing.assert_allclose(w.grad.numpy(), full, rtol=1e-12)


def test_graph_is_freed_after_backward_and_a_second_backward_raises():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_backward_through_a_partly_freed_graph_raises_before_any_grad_changes():
    # z's own ops are fresh, but they reach y's freed graph: the error comes from the
    # graph walk that precedes every gradient, so w keeps no partial gradient.
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    w = tg.Tensor([3.0, 4.0], requires_grad=True)
    y = x.exp() * 2.0
    y.sum().backward()
    z = (y * w).sum() + (w * w).sum()
    with pytest.raises(RuntimeError, match="second time"):
        z.backward()
    assert w.grad is None


def test_an_early_tensor_used_by_a_much_later_op_waits_for_every_consumer(device):
    # Ops run in reverse recording order: u (recorded first) must collect the gradient
    # of the op recorded last before its own backward runs.
    a = tg.Tensor([0.5, -1.5], dtype=tg.float64, device=device, requires_grad=True)
    u = a * a
    v = u.tanh()
    for _ in range(5):
        v = v * 1.5 + 0.1
    y = (v + u * 3.0).sum()
    y.backward()
    x = np.array([0.5, -1.5])
    expected = (1.5 ** 5 * (1 - np.tanh(x * x) ** 2) + 3.0) * 2 * x
    np.testing.assert_allclose(a.grad.numpy(), expected, rtol=1e-12)


def test_retain_graph_allows_a_second_backward():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * 2 * np.array([1.0, 2.0]))


def test_freed_graph_releases_saved_tensors():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    h = x.exp()
    y = h.sum()
    y.backward()
    assert h.grad_fn.released and not hasattr(h.grad_fn, "inputs")


def test_no_grad_records_nothing(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    with tg.no_grad():
        y = (x * 2.0).exp()
        assert not tg.is_grad_enabled()
        with tg.enable_grad():
            z = x * 2.0
    assert tg.is_grad_enabled()
    assert y.grad_fn is None and not y.requires_grad and y.is_leaf
    assert z.requires_grad and z.grad_fn is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_backward_of_non_scalar_needs_grad():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    with pytest.raises(RuntimeError, match=r"non-scalar tensor of shape \(2,\) needs grad="):
        y.backward()
    y.backward(tg.Tensor([1.0, 0.5]))
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 1.5])


def test_backward_grad_of_wrong_shape_is_rejected():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"grad has shape \(3,\) but the output has shape \(2,\)"):
        (x * 3.0).backward(tg.Tensor([1.0, 1.0, 1.0]))


def test_backward_on_tensor_that_does_not_require_grad_raises():
    x = tg.Tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        (x * 2.0).sum().backward()


def test_only_float_tensors_can_require_grad():
    with pytest.raises(RuntimeError, match="int64"):
        tg.Tensor([1, 2], requires_grad=True)


def test_leaf_grads_never_alias_each_other_or_the_callers_grad():
    a = tg.Tensor([1.0, 2.0], requires_grad=True)
    b = tg.Tensor([3.0, 4.0], requires_grad=True)
    c = tg.Tensor([[5.0, 6.0]], requires_grad=True)
    upstream = tg.Tensor([1.0, 1.0])
    (a + b + c.reshape(2)).backward(upstream)
    a.grad.data *= 10.0  # e.g. in-place clipping of one parameter's gradient
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(c.grad.numpy(), [[1.0, 1.0]])
    np.testing.assert_array_equal(upstream.numpy(), [1.0, 1.0])
    for t in (a, b, c):
        assert t.grad.data.flags.writeable


def test_sum_backward_gives_a_writeable_grad():
    x = tg.Tensor(np.ones((3, 2)), requires_grad=True)
    x.sum().backward()
    x.grad.data += 1.0
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 2), 2.0))


def test_retain_grad_keeps_intermediate_gradient():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    h = x * 3.0
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * np.array([3.0, 6.0]))
    np.testing.assert_allclose(x.grad.numpy(), 2 * 9 * np.array([1.0, 2.0]))


def test_autograd_grad_returns_values_and_leaves_dot_grad_alone():
    x = tg.Tensor([1.0, 2.0], requires_grad=True)
    z = tg.Tensor([5.0], requires_grad=True)
    h = x * x
    y = h.sum()
    gx, gh = tg.autograd.grad(y, [x, h], retain_graph=True)
    np.testing.assert_allclose(gx.numpy(), [2.0, 4.0])
    np.testing.assert_allclose(gh.numpy(), [1.0, 1.0])
    assert x.grad is None
    with pytest.raises(RuntimeError, match="not used"):
        tg.autograd.grad(y, [x, z], retain_graph=True)
    gx, gz = tg.autograd.grad(y, [x, z], allow_unused=True)
    assert gz is None


def test_create_graph_gives_differentiable_dot_grad():
    x = tg.Tensor([0.5, -1.0], dtype=tg.float64, requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    assert x.grad.requires_grad
    (g2,) = tg.autograd.grad(x.grad.sum(), x)
    np.testing.assert_allclose(g2.numpy(), 6 * np.array([0.5, -1.0]))


def test_mixed_devices_raise_a_clear_error():
    cpu = tg.Tensor([1.0, 2.0])
    # A tensor labelled as living on a GPU (the data stays NumPy): enough to exercise the
    # device check, which runs before any array code.
    other = Tensor._make(np.array([1.0, 2.0], dtype=np.float32), "cuda:0")
    with pytest.raises(RuntimeError, match="cpu and cuda:0"):
        cpu + other
    with pytest.raises(RuntimeError, match="same device"):
        tg.concat([cpu, other])
    with pytest.raises(RuntimeError, match="cpu"):
        _ = cpu < other


def test_dtype_promotion_flows_back_in_each_inputs_dtype():
    a = tg.Tensor([1.0, 2.0], requires_grad=True)  # float32
    b = tg.Tensor([3.0, 4.0], dtype=tg.float64, requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == tg.float32 and b.grad.dtype == tg.float64
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 4.0])


def test_sparse_row_gradients_accumulate_into_leaves():
    from tinygrad_sgd.sparse import SparseRowGrad
    from tinygrad_sgd.autograd import Function

    class Lookup(Function):  # a minimal embedding lookup with a row-sparse gradient
        def forward(self, table, ids):
            self.ids = ids
            return table[ids]

        def backward(self, grad, output):
            return (SparseRowGrad(self.ids, grad.data, self.inputs[0].shape),)

    table = tg.Tensor(np.arange(12.0).reshape(6, 2), dtype=tg.float64, requires_grad=True)
    Lookup.apply(table, ids=np.array([1, 4, 1])).sum().backward()
    Lookup.apply(table, ids=np.array([5])).sum().backward()
    grad = table.grad.coalesce()
    np.testing.assert_array_equal(grad.indices, [1, 4, 5])
    np.testing.assert_array_equal(grad.values, [[2, 2], [1, 1], [1, 1]])
    dense = np.zeros((6, 2))
    dense[[1, 4, 5]] = [[2, 2], [1, 1], [1, 1]]
    np.testing.assert_array_equal(table.grad.to_dense(), dense)


def test_backward_receives_the_output_and_a_tensor_gradient_and_is_differentiable():
    from tinygrad_sgd.autograd import Function

    seen = []

    class Exp(Function):
        def forward(self, x):
            return np.exp(x)

        def backward(self, grad, output):
            seen.append((type(grad), output))
            return (grad * output,)

    x = tg.Tensor([0.5, -2.0], dtype=tg.float64, requires_grad=True)
    y = Exp.apply(x)
    y.sum().backward()
    assert seen == [(Tensor, y)]
    np.testing.assert_allclose(x.grad.numpy(), np.exp([0.5, -2.0]), rtol=1e-12)
    (g,) = tg.autograd.grad(Exp.apply(x).sum(), x, create_graph=True)
    assert g.requires_grad  # the backward was recorded: differentiable again
    (gg,) = tg.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(gg.numpy(), np.exp([0.5, -2.0]), rtol=1e-12)


# ----------------------------------------------------------------------------- version counters


def _saved_then_changed(change):
    """A graph that saved ``w`` (Mul keeps both inputs), then ``change(w)``."""
    w = tg.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    x = tg.Tensor([4.0, 5.0, 6.0])
    loss = (w * x).sum()
    change(w, x)
    return loss, w, x


def _setitem_under_no_grad(w, x):
    with tg.no_grad():
        w[0] = 10.0


def _setitem_of_the_other_input(w, x):
    x[1] = 0.0


def _rebind_data(w, x):
    w.data = np.zeros(3, dtype=np.float32)


def _write_through_a_detached_alias(w, x):
    w.detach()[:] = 7.0


def _optimizer_step(w, x):
    w.grad = tg.ones(3)
    tg.optim.SGD([w], lr=0.1).step()


@pytest.mark.parametrize("change", [_setitem_under_no_grad, _setitem_of_the_other_input, _rebind_data,
                                    _write_through_a_detached_alias,
                                    _optimizer_step],
                         ids=["setitem", "setitem-other-input", "rebind-data", "detached-alias", "optimizer-step"])
def test_changing_a_saved_tensor_in_place_makes_backward_raise(change):
    loss, w, x = _saved_then_changed(change)
    grad_before = None if w.grad is None else w.grad.numpy().copy()
    with pytest.raises(RuntimeError, match=r"Mul \(shape \(3,\)\) was modified in place"):
        loss.backward()
    # raised before any gradient changed
    assert (w.grad is None) if grad_before is None else np.array_equal(w.grad.numpy(), grad_before)


def test_an_in_place_change_an_op_does_not_depend_on_does_not_raise():
    w = tg.Tensor([1.0, 2.0], requires_grad=True)
    unrelated = tg.Tensor([3.0, 4.0], requires_grad=True)
    shifted = tg.Tensor([1.0, 1.0])
    loss = (w * 2.0 + shifted).sum()  # Add reads only the shapes of its inputs
    with tg.no_grad():
        unrelated[0] = 0.0
        shifted[0] = 5.0
    loss.backward()
    np.testing.assert_array_equal(w.grad.numpy(), [2.0, 2.0])


def test_the_version_counter_is_shared_with_detach_and_counts_changes():
    w = tg.Tensor([1.0, 2.0], requires_grad=True)
    alias = w.detach()
    assert w._version == 0
    alias[0] = 3.0
    assert w._version == alias._version == 1
    with tg.no_grad():
        w[1] = 4.0
    assert alias._version == 2


def test_a_hessian_vector_product_through_the_new_backward_contract():
    w = tg.Tensor([0.5, -1.0, 2.0], dtype=tg.float64, requires_grad=True)
    v = tg.Tensor([1.0, 2.0, 3.0], dtype=tg.float64)
    loss = (w * w * w).sum()  # H = diag(6 w)
    (g,) = tg.autograd.grad(loss, w, create_graph=True)
    (hv,) = tg.autograd.grad((g * v).sum(), w)
    np.testing.assert_allclose(hv.numpy(), 6 * w.detach().numpy() * v.numpy(), rtol=1e-12)


def test_a_post_accumulate_grad_hook_sees_the_complete_gradient_once():
    w = tg.Tensor([1.0, 2.0], requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    (w * w + w).sum().backward()  # w reaches the loss along three paths
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], [3.0, 5.0])


def test_assigning_a_grad_of_the_wrong_shape_is_refused_at_assignment():
    w = tg.Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"gradient of shape \(3,\).*\.grad of a tensor of shape \(2,\)"):
        w.grad = tg.zeros(3)
    assert w.grad is None


def test_rebinding_data_is_checked_like_the_constructor():
    w = tg.Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="unsupported dtype"):
        w.data = np.array(["a", "b"])
    with pytest.raises(TypeError, match="requires grad must hold floating-point"):
        w.data = np.array([1, 2])
    with pytest.raises(TypeError, match="NumPy or CuPy array"):
        w.data = [1.0, 2.0]
    np.testing.assert_array_equal(w.numpy() if not w.requires_grad else w.detach().numpy(), [1.0, 2.0])
    assert w._version == 0


def test_a_leaf_gradient_made_late_in_backward_is_not_copied():
    # The first gradient of a leaf becomes its .grad without a copy. Backward remembers
    # the arrays it has handed out (the root's upstream gradient among them) by id(); one
    # that died during backward must not pass its id on to a new gradient array, which
    # would then be copied for nothing (it was: a whole embedding table's gradient per step).
    from tinygrad_sgd.autograd.engine import Function

    made = []

    class Total(Function):  # sum, with a backward that makes a new array (no view of grad)
        saves_inputs = False

        def forward(self, x):
            return x.sum()

        def backward(self, grad, output):
            return (tg.Tensor.from_array(np.full(self.inputs[0].shape, float(grad.item()), dtype=np.float32)),)

    class FreshGrad(Function):  # identity, whose gradient is a new array
        saves_inputs = False

        def forward(self, x):
            return x.copy()

        def backward(self, grad, output):
            made.append(np.full(self.inputs[0].shape, 2.0, dtype=np.float32))
            return (tg.Tensor.from_array(made[-1]),)

    for _ in range(20):
        w = tg.Tensor(np.ones(4, dtype=np.float32), requires_grad=True)
        Total.apply(FreshGrad.apply(w)).backward()  # the root's ones die before FreshGrad's backward
        assert w.grad.data is made[-1]
        np.testing.assert_array_equal(w.grad.numpy(), 2.0)
