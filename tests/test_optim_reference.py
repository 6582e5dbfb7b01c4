"""Every optimizer and option combination over 200 steps of a random least-squares problem:

* in float64 against an independent NumPy transcription of the documented formula
  (written below from the papers' equations, not calling the library), and
* in float32 against torch.optim with the same arguments (within 1e-5 relative).

The gradients are computed by each side on its own (our autograd, torch's autograd, the
closed-form least-squares gradient in NumPy), so the whole training step is compared.
"""

import numpy as np
import pytest

import tinygrad_sgd as tg

STEPS = 200
N, D = 32, 5


def make_problem(seed=0):
    r = np.random.default_rng(seed)
    X = r.standard_normal((N, D)) / np.sqrt(D)
    y = X @ r.standard_normal(D) + 0.1 * r.standard_normal(N)
    w0 = r.standard_normal(D)
    b0 = np.array([0.5])
    return X, y, w0, b0


# ----------------------------------------------------------------------------- NumPy transcriptions
# Each takes lists of float64 arrays (params, grads), a state dict and the step number t
# (from 1), and updates params in place. Written from the formulas, independently of the library.


def np_sgd(params, grads, state, t, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
           maximize=False):
    for i, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        g = g + weight_decay * p
        if momentum != 0:
            # v_1 = g_1; v_t = mu v_{t-1} + (1 - dampening) g_t
            v = g.copy() if t == 1 else momentum * state[i] + (1 - dampening) * g
            state[i] = v
            g = g + momentum * v if nesterov else v
        p -= lr * g


def _np_adam(params, grads, state, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
             maximize=False, decoupled=False):
    b1, b2 = betas
    for i, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        if decoupled:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
        m, v, vmax = state.get(i, (np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        vmax = np.maximum(vmax, v)
        state[i] = (m, v, vmax)
        m_hat = m / (1 - b1 ** t)                          # Kingma & Ba, Algorithm 1
        v_hat = (vmax if amsgrad else v) / (1 - b2 ** t)
        p -= lr * m_hat / (np.sqrt(v_hat) + eps)


def np_adam(params, grads, state, t, lr, **kw):
    _np_adam(params, grads, state, t, lr, **kw)


def np_adamw(params, grads, state, t, lr, weight_decay=1e-2, **kw):
    _np_adam(params, grads, state, t, lr, weight_decay=weight_decay, decoupled=True, **kw)


def np_rmsprop(params, grads, state, t, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
               centered=False, maximize=False):
    for i, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        g = g + weight_decay * p
        sq, avg, buf = state.get(i, (np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)))
        sq = alpha * sq + (1 - alpha) * g ** 2
        avg = alpha * avg + (1 - alpha) * g
        denom = np.sqrt(sq - avg ** 2 if centered else sq) + eps
        buf = momentum * buf + g / denom
        state[i] = (sq, avg, buf)
        p -= lr * (buf if momentum > 0 else g / denom)


def np_adagrad(params, grads, state, t, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
               eps=1e-10, maximize=False):
    for i, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        g = g + weight_decay * p
        s = state.get(i, np.full_like(p, initial_accumulator_value)) + g ** 2
        state[i] = s
        p -= lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s) + eps)


NUMPY_REFERENCE = {"SGD": np_sgd, "Adam": np_adam, "AdamW": np_adamw, "RMSprop": np_rmsprop, "Adagrad": np_adagrad}

CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, maximize=True)),
    ("SGD", dict(lr=0.03, momentum=0.8, weight_decay=0.05, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.02)),
    ("Adam", dict(lr=0.02, amsgrad=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.1)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=0.02, amsgrad=True, weight_decay=0.05, maximize=True)),
    ("AdamW", dict(lr=0.02)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1, amsgrad=True, maximize=True, betas=(0.85, 0.995))),
    ("RMSprop", dict(lr=0.005)),
    ("RMSprop", dict(lr=0.005, centered=True)),
    ("RMSprop", dict(lr=0.005, momentum=0.5)),
    ("RMSprop", dict(lr=0.003, centered=True, momentum=0.5, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.002, alpha=0.9, eps=1e-2, maximize=True)),  # eps keeps sign-like steps off the optimum
    ("Adagrad", dict(lr=0.2)),
    ("Adagrad", dict(lr=0.2, lr_decay=0.01)),
    ("Adagrad", dict(lr=0.2, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.2, initial_accumulator_value=0.5, eps=1e-6)),
    ("Adagrad", dict(lr=0.2, maximize=True)),
]
IDS = [name + "-" + ",".join(f"{k}={v}" for k, v in kw.items()) for name, kw in CASES]


def sign_of(kw):
    """``maximize=True`` runs on the negated loss, so every case descends the same problem."""
    return -1.0 if kw.get("maximize") else 1.0


def run_ours(name, kw, dtype, device="cpu", steps=STEPS):
    X, y, w0, b0 = make_problem()
    Xt, yt = tg.Tensor(X, dtype=dtype, device=device), tg.Tensor(y, dtype=dtype, device=device)
    w = tg.Tensor(w0, dtype=dtype, device=device, requires_grad=True)
    b = tg.Tensor(b0, dtype=dtype, device=device, requires_grad=True)
    opt = getattr(tg.optim, name)([w, b], **kw)
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        loss = sign_of(kw) * ((Xt @ w + b - yt) ** 2).mean()
        loss.backward()
        opt.step()
        trajectory.append(np.concatenate([w.detach().numpy() if device == "cpu" else tg.backend.to_numpy(w.data),
                                          tg.backend.to_numpy(b.data)]))
    return np.array(trajectory)


def run_numpy(name, kw):
    X, y, w0, b0 = make_problem()
    w, b = w0.copy(), b0.copy()
    state, trajectory = {}, []
    for t in range(1, STEPS + 1):
        r = X @ w + b - y
        grads = [sign_of(kw) * 2 / N * X.T @ r, sign_of(kw) * np.array([2 / N * r.sum()])]
        NUMPY_REFERENCE[name]([w, b], grads, state, t, **kw)
        trajectory.append(np.concatenate([w, b]))
    return np.array(trajectory)


def run_torch(torch, name, kw):
    X, y, w0, b0 = make_problem()
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    b = torch.nn.Parameter(torch.tensor(b0, dtype=torch.float32))
    opt = getattr(torch.optim, name)([w, b], **kw)
    trajectory = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = sign_of(kw) * ((Xt @ w + b - yt) ** 2).mean()
        loss.backward()
        opt.step()
        trajectory.append(np.concatenate([w.detach().numpy(), b.detach().numpy()]))
    return np.array(trajectory)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_float64_trajectory_matches_numpy_transcription(name, kw):
    ours = run_ours(name, kw, tg.float64)
    reference = run_numpy(name, kw)
    assert np.abs(ours[-1] - ours[0]).max() > 1e-2  # the run actually moved
    np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_float32_trajectory_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    ours = run_ours(name, kw, tg.float32)
    theirs = run_torch(torch, name, kw)
    assert ours.dtype == np.float32
    # 1e-5 relative to the size of the parameter vector at each step
    rel = np.abs(ours - theirs).max(axis=1) / np.abs(theirs).max(axis=1)
    assert rel.max() < 1e-5, f"max relative deviation {rel.max():.2e} at step {rel.argmax()}"


def test_float32_run_stays_float32_and_updates_in_place():
    w = tg.Tensor(np.ones(4), requires_grad=True)
    data = w.data
    for name, kw in CASES:
        opt = getattr(tg.optim, name)([w], **kw)
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()
        assert w.data is data and w.data.dtype == np.float32, name
        for value in opt.state.get(w, {}).values():
            if isinstance(value, np.ndarray):
                assert value.dtype == np.float32, (name, value.dtype)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_param_groups_with_their_own_hyperparameters_match_torch(name):
    torch = pytest.importorskip("torch")
    X, y, w0, b0 = make_problem(3)
    extra = {"SGD": dict(momentum=0.9), "Adam": dict(betas=(0.8, 0.9)), "AdamW": dict(weight_decay=0.5),
             "RMSprop": dict(momentum=0.3), "Adagrad": dict(lr_decay=0.1)}[name]

    def run(lib, make, to_numpy):
        w, b = make(w0), make(b0)
        opt = getattr(lib.optim, name)([{"params": [w]}, {"params": [b], "lr": 0.001, **extra}], lr=0.01)
        out = []
        for _ in range(50):
            opt.zero_grad()
            ((make_const(lib, X) @ w + b - make_const(lib, y)) ** 2).mean().backward()
            opt.step()
            out.append(np.concatenate([to_numpy(w), to_numpy(b)]))
        return np.array(out)

    def make_const(lib, a):
        return tg.Tensor(a) if lib is tg else torch.tensor(a, dtype=torch.float32)

    ours = run(tg, lambda a: tg.Tensor(a, requires_grad=True), lambda t: t.detach().numpy())
    theirs = run(torch, lambda a: torch.nn.Parameter(torch.tensor(a, dtype=torch.float32)),
                 lambda t: t.detach().numpy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", [CASES[1], CASES[8], CASES[14], CASES[18], CASES[21]],
                         ids=[IDS[1], IDS[8], IDS[14], IDS[18], IDS[21]])
def test_same_trajectory_on_every_device(name, kw, device):
    cpu = run_ours(name, kw, tg.float64, steps=20)
    other = run_ours(name, kw, tg.float64, device=device, steps=20)
    np.testing.assert_allclose(other, cpu, rtol=1e-12, atol=1e-14)


def test_sgd_momentum_conventions_agree_at_constant_lr_and_differ_when_lr_changes():
    """The SGD docstring's claim: PyTorch's v = mu v + g, p -= lr v equals the textbook
    v = mu v + lr g, p -= v while lr is constant, and not after lr changes."""
    X, y, w0, b0 = make_problem(5)
    mu = 0.9

    def grad(w):
        return 2 / N * X.T @ (X @ w - y)

    def textbook(lrs):
        w, v = w0.copy(), np.zeros(D)
        for lr in lrs:
            v = mu * v + lr * grad(w)
            w = w - v
        return w

    def ours(lrs):
        w = tg.Tensor(w0, dtype=tg.float64, requires_grad=True)
        opt = tg.optim.SGD([w], lr=lrs[0], momentum=mu)
        Xt, yt = tg.Tensor(X, dtype=tg.float64), tg.Tensor(y, dtype=tg.float64)
        for lr in lrs:
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            ((Xt @ w - yt) ** 2).mean().backward()
            opt.step()
        return w.detach().numpy()

    constant = [0.05] * 30
    np.testing.assert_allclose(ours(constant), textbook(constant), rtol=1e-12)
    changed = [0.05] * 15 + [0.01] * 15
    assert np.abs(ours(changed) - textbook(changed)).max() > 1e-3


def test_adagrad_starts_every_accumulator_from_the_constructors_value():
    # As torch.optim.Adagrad: a param group's own initial_accumulator_value (given in the
    # list or by add_param_group) is accepted but not used; every sum starts from the
    # constructor's value. (Worked out by hand: sum = 2 + 0.5^2; p -= 0.1 * 0.5 / sqrt(sum).)
    p = tg.Tensor(np.array([1.0, 2.0]), dtype=tg.float64, requires_grad=True)
    q = tg.Tensor(np.array([1.0, 2.0]), dtype=tg.float64, requires_grad=True)
    opt = tg.optim.Adagrad([{"params": [p], "initial_accumulator_value": 1.0}], lr=0.1,
                           initial_accumulator_value=2.0)
    opt.add_param_group({"params": [q], "initial_accumulator_value": 3.0})
    for t in (p, q):
        t.grad = tg.Tensor(np.array([0.5, -0.5]), dtype=tg.float64)
    opt.step()
    expected = np.array([1.0, 2.0]) - 0.1 * np.array([0.5, -0.5]) / (np.sqrt(2.25) + 1e-10)
    for t in (p, q):
        np.testing.assert_allclose(opt.state[t]["sum"], 2.25, rtol=1e-15)
        np.testing.assert_allclose(t.detach().numpy(), expected, rtol=1e-14)
