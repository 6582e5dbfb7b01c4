"""Losses: every reduction against torch (values and gradients), finite differences,
numerical stability, per-sample losses, and bad targets."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.autograd import gradcheck, gradgradcheck

F = tg.nn.functional
nn = tg.nn
REDUCTIONS = ["mean", "sum", "none"]


def f64(array, requires_grad=True):
    return tg.Tensor(array, dtype=tg.float64, requires_grad=requires_grad)


def compare_with_torch(ours, theirs, inputs, rng, targets=(), atol=1e-12):
    """Run both losses on the same float64 inputs; compare values and input gradients."""
    torch = pytest.importorskip("torch")
    tg_inputs = [f64(a) for a in inputs]
    th_inputs = [torch.tensor(a, requires_grad=True) for a in inputs]
    out = ours(*tg_inputs, *[tg.Tensor(t) for t in targets])
    out_ref = theirs(*th_inputs, *[torch.tensor(t) for t in targets])
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=1e-12, atol=atol)
    upstream = rng.standard_normal(out.shape)
    out.backward(tg.Tensor(upstream, dtype=tg.float64))
    out_ref.backward(torch.tensor(upstream))
    for ours_in, ref_in in zip(tg_inputs, th_inputs):
        np.testing.assert_allclose(ours_in.grad.data, ref_in.grad.numpy(), rtol=1e-12, atol=atol)


# ----------------------------------------------------------------------------- cross-entropy

CE_OPTIONS = [
    {},
    {"label_smoothing": 0.2},
    {"weight": [0.5, 2.0, 1.0, 0.1]},
    {"weight": [0.5, 2.0, 1.0, 0.1], "label_smoothing": 0.3},
    {"ignore_index": 1},
    {"ignore_index": 1, "label_smoothing": 0.1, "weight": [1.0, 3.0, 0.5, 2.0]},
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", CE_OPTIONS)
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 2, 3)])
def test_cross_entropy_matches_torch(reduction, options, shape, rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal(shape) * 3
    target = rng.integers(0, 4, (shape[0],) + shape[2:])
    target.reshape(-1)[:2] = 1  # make sure ignore_index has something to ignore
    ours = nn.CrossEntropyLoss(reduction=reduction, **{k: (tg.Tensor(v, dtype=tg.float64) if k == "weight" else v)
                                                      for k, v in options.items()})
    theirs = torch.nn.CrossEntropyLoss(reduction=reduction, **{k: (torch.tensor(v, dtype=torch.float64)
                                                                   if k == "weight" else v)
                                                               for k, v in options.items()})
    compare_with_torch(ours, theirs, [logits], rng, targets=[target])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_cross_entropy_with_class_probabilities_matches_torch(reduction, label_smoothing, rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((5, 3))
    probs = rng.dirichlet(np.ones(3), size=5)
    weight = [0.3, 1.0, 2.0]
    ours = nn.CrossEntropyLoss(weight=tg.Tensor(weight, dtype=tg.float64), reduction=reduction,
                               label_smoothing=label_smoothing)
    theirs = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float64), reduction=reduction,
                                       label_smoothing=label_smoothing)
    compare_with_torch(lambda x, q: ours(x, q), lambda x, q: theirs(x, q), [logits, probs], rng)  # q differentiable


def test_cross_entropy_unbatched_matches_torch(rng):
    torch = pytest.importorskip("torch")
    compare_with_torch(lambda x: F.cross_entropy(x, 2, reduction="none"),
                       lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(2), reduction="none"),
                       [rng.standard_normal(4)], rng)


@pytest.mark.parametrize("options", CE_OPTIONS)
def test_cross_entropy_gradcheck(options, rng):
    logits = f64(rng.standard_normal((5, 4)))
    target = tg.Tensor(np.array([0, 1, 3, 1, 2]))
    kwargs = {k: (tg.Tensor(v, dtype=tg.float64) if k == "weight" else v) for k, v in options.items()}
    for reduction in REDUCTIONS:
        assert gradcheck(lambda x: F.cross_entropy(x, target, reduction=reduction, **kwargs), [logits])  # noqa: B023 (called at once)
    # second derivatives go through the recomputed softmax (the create_graph path)
    assert gradgradcheck(lambda x: F.cross_entropy(x, target, **kwargs), [logits])


def test_soft_cross_entropy_gradcheck(rng):
    logits, probs = f64(rng.standard_normal((4, 3))), f64(rng.dirichlet(np.ones(3), size=4))
    assert gradcheck(lambda x, q: F.cross_entropy(x, q, label_smoothing=0.1), [logits, probs])
    assert gradgradcheck(lambda x, q: F.cross_entropy(x, q), [logits, probs])


def test_cross_entropy_is_stable_for_huge_logits():
    logits = tg.Tensor([[1e4, -1e4, 0.0], [-5e3, 5e3, 5e3]], requires_grad=True)
    loss = F.cross_entropy(logits, tg.Tensor([0, 2]), reduction="none")
    np.testing.assert_allclose(loss.data, [0.0, np.log(2)], atol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(logits.grad.data, [[0, 0, 0], [0, 0.5, -0.5]], atol=1e-6)


def test_cross_entropy_per_sample_losses_are_the_single_sample_losses(rng):
    logits = f64(rng.standard_normal((6, 5)), requires_grad=False)
    target = tg.Tensor(rng.integers(0, 5, 6))
    per_sample = F.cross_entropy(logits, target, reduction="none").data
    singles = [F.cross_entropy(logits[i:i + 1], target[i:i + 1]).item() for i in range(6)]
    np.testing.assert_allclose(per_sample, singles, rtol=1e-14)
    assert F.cross_entropy(logits, target).item() == pytest.approx(per_sample.mean(), rel=1e-14)
    assert F.cross_entropy(logits, target, reduction="sum").item() == pytest.approx(per_sample.sum(), rel=1e-14)


def test_cross_entropy_float32_stays_float32(rng):
    logits = tg.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, tg.Tensor([0, 1, 2, 0]))
    loss.backward()
    assert loss.dtype == tg.float32 and logits.grad.dtype == tg.float32


def test_cross_entropy_all_ignored_is_nan_like_torch():
    loss = F.cross_entropy(tg.randn(2, 3), tg.Tensor([-100, -100]))
    assert np.isnan(loss.item())


def test_cross_entropy_rejects_float_class_targets():
    with pytest.raises(TypeError, match="integer dtype, got float32"):
        nn.CrossEntropyLoss()(tg.randn(4, 3), tg.Tensor([0.0, 1.0, 2.0, 1.0]))


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_cross_entropy_rejects_out_of_range_targets(bad):
    with pytest.raises(IndexError, match=f"target value {bad} is out of range for 3 classes"):
        nn.CrossEntropyLoss()(tg.randn(4, 3), tg.Tensor([0, bad, 2, 1]))


def test_cross_entropy_other_bad_input():
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match input shape \(4, 3\)"):
        F.cross_entropy(tg.randn(4, 3), tg.Tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(tg.randn(4, 3), tg.Tensor([0, 1, 2, 0]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        F.cross_entropy(tg.randn(4, 3), tg.Tensor([0, 1, 2, 0]), weight=tg.ones(4))


# ----------------------------------------------------------------------------- NLL


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_torch(reduction, rng):
    torch = pytest.importorskip("torch")
    logp = np.log(rng.dirichlet(np.ones(4), size=6))
    target = np.array([0, 3, 1, 1, 2, 3])
    weight = [1.0, 0.5, 2.0, 1.5]
    compare_with_torch(
        lambda x, t: F.nll_loss(x, t, weight=tg.Tensor(weight, dtype=tg.float64), ignore_index=1, reduction=reduction),
        lambda x, t: torch.nn.functional.nll_loss(x, t, weight=torch.tensor(weight, dtype=torch.float64),
                                                  ignore_index=1, reduction=reduction),
        [logp], rng, targets=[target])
    x = f64(logp)
    assert gradgradcheck(lambda x: (F.nll_loss(x.log_softmax(axis=1), tg.Tensor(target), reduction=reduction)), [x])


def test_log_softmax_plus_nll_equals_cross_entropy(rng):
    logits = f64(rng.standard_normal((5, 3)), requires_grad=False)
    target = tg.Tensor(rng.integers(0, 3, 5))
    assert nn.NLLLoss()(nn.LogSoftmax(dim=1)(logits), target).item() == pytest.approx(
        nn.CrossEntropyLoss()(logits, target).item(), rel=1e-14)


# ----------------------------------------------------------------------------- regression losses

ELEMENTWISE = [  # (ours, torch's name, kwargs)
    (nn.MSELoss, "MSELoss", {}),
    (nn.L1Loss, "L1Loss", {}),
    (nn.HuberLoss, "HuberLoss", {"delta": 0.7}),
    (nn.SmoothL1Loss, "SmoothL1Loss", {"beta": 0.5}),
    (nn.BCEWithLogitsLoss, "BCEWithLogitsLoss", {}),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ours,name,kwargs", ELEMENTWISE)
def test_elementwise_losses_match_torch(ours, name, kwargs, reduction, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3)) * 2
    y = rng.uniform(0, 1, (4, 3)) if name.startswith("BCE") else rng.standard_normal((4, 3))
    compare_with_torch(ours(reduction=reduction, **kwargs), getattr(torch.nn, name)(reduction=reduction, **kwargs),
                       [x, y], rng)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_weights_match_torch(reduction, rng):
    torch = pytest.importorskip("torch")
    weight, pos_weight = rng.uniform(0.5, 2, (1, 3)), rng.uniform(0.5, 3, 3)
    ours = nn.BCEWithLogitsLoss(weight=tg.Tensor(weight, dtype=tg.float64), reduction=reduction,
                                pos_weight=tg.Tensor(pos_weight, dtype=tg.float64))
    theirs = torch.nn.BCEWithLogitsLoss(weight=torch.tensor(weight), reduction=reduction,
                                        pos_weight=torch.tensor(pos_weight))
    compare_with_torch(ours, theirs, [rng.standard_normal((4, 3)) * 3, rng.integers(0, 2, (4, 3)) * 1.0], rng)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_on_probabilities_matches_torch(reduction, rng):
    torch = pytest.importorskip("torch")
    p, y = rng.uniform(0.05, 0.95, (4, 3)), rng.uniform(0, 1, (4, 3))
    compare_with_torch(nn.BCELoss(reduction=reduction), torch.nn.BCELoss(reduction=reduction), [p, y], rng)


def test_bce_on_probabilities_at_zero_and_one(rng):
    # torch clamps the logs at -100 and the input gradient's denominator at eps: same here.
    torch = pytest.importorskip("torch")
    p, y = np.array([0.0, 1.0, 0.5]), np.array([0.3, 0.6, 1.0])
    ours_p, ours_y = f64(p), f64(y)
    ref_p, ref_y = torch.tensor(p, requires_grad=True), torch.tensor(y, requires_grad=True)
    loss, loss_ref = F.binary_cross_entropy(ours_p, ours_y), torch.nn.functional.binary_cross_entropy(ref_p, ref_y)
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-14)
    loss.backward()
    loss_ref.backward()
    np.testing.assert_allclose(ours_p.grad.data, ref_p.grad.numpy(), rtol=1e-14)
    # The target's gradient uses the clamped logs too, so it stays finite (torch's is inf there).
    np.testing.assert_allclose(ours_y.grad.data, [100 / 3, -100 / 3, 0.0], rtol=1e-14)
    assert np.isinf(ref_y.grad.numpy()[:2]).all()


@pytest.mark.parametrize("ours,name,kwargs", ELEMENTWISE)
def test_elementwise_losses_gradcheck(ours, name, kwargs, rng):
    # away from the kinks of L1/Huber (|d| = 0 or delta), where the gradient jumps
    diff = rng.choice([-1, 1], (3, 4)) * rng.uniform(0.1, 2.0, (3, 4))
    diff[np.abs(np.abs(diff) - 0.7) < 0.05] += 0.2
    diff[np.abs(np.abs(diff) - 0.5) < 0.05] += 0.2
    y = f64(rng.uniform(0, 1, (3, 4)))
    x = f64(y.data + diff)
    loss = ours(**kwargs)
    assert gradcheck(loss, [x, y])
    if name != "L1Loss":
        assert gradgradcheck(loss, [x, y])


def test_bce_with_logits_is_stable_for_huge_logits():
    x = tg.Tensor([1000.0, -1000.0, 1000.0, -1000.0], requires_grad=True)
    y = tg.Tensor([1.0, 0.0, 0.0, 1.0])
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_allclose(loss.data, [0, 0, 1000, 1000])
    loss.sum().backward()
    np.testing.assert_allclose(x.grad.data, [0, 0, 1, -1])


def test_huber_loss_is_quadratic_then_linear():
    x = f64([0.5, 2.0, -3.0], requires_grad=False)
    loss = F.huber_loss(x, tg.zeros(3, dtype=tg.float64), reduction="none", delta=1.0)
    np.testing.assert_allclose(loss.data, [0.125, 1.5, 2.5])


def test_regression_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"input shape \(4, 1\) and target shape \(4,\) differ"):
        nn.MSELoss()(tg.randn(4, 1), tg.randn(4))
    with pytest.raises(ValueError, match="reduction must be"):
        nn.L1Loss(reduction="batchmean")
    with pytest.raises(ValueError, match="probabilities in"):
        nn.BCELoss()(tg.Tensor([1.5]), tg.Tensor([1.0]))
    with pytest.raises(ValueError, match="delta must be positive"):
        nn.HuberLoss(delta=0)


def test_cross_entropy_on_a_1d_input_with_a_batch_of_targets_names_the_shapes():
    loss = tg.nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"1-D input of shape \(3,\) is one unbatched sample.*got shape \(3,\)"):
        loss(tg.Tensor([1.0, 2.0, 3.0]), tg.Tensor(np.array([1, 0, 2])))
