"""Learning-rate schedules: sequences equal torch's (1e-12 relative, float64) and the closed
forms, momentum cycling equals torch's, state_dict resume mid-schedule equals an
uninterrupted run (whichever order optimizer and scheduler are restored in), bad input."""

import json
import math

import numpy as np
import pytest

import tinygrad_sgd as tg

STEPS = 300
BASE = (0.1, 0.02)  # two parameter groups with different rates


def make_optimizer(lib, kind="SGD"):
    if lib is tg:
        a, b = tg.Tensor(np.ones(2), requires_grad=True), tg.Tensor(np.ones(2), requires_grad=True)
    else:
        a, b = lib.nn.Parameter(lib.ones(2)), lib.nn.Parameter(lib.ones(2))
    groups = [{"params": [a]}, {"params": [b], "lr": BASE[1]}]
    if kind == "SGD":
        return lib.optim.SGD(groups, lr=BASE[0], momentum=0.9)
    if kind == "Adam":
        return lib.optim.Adam(groups, lr=BASE[0])
    return lib.optim.Adagrad(groups, lr=BASE[0])


def sequential_warmup_cosine(S, opt):
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=10),
                                S.CosineAnnealingLR(opt, T_max=100, eta_min=1e-3)], milestones=[10])


def sequential_three(S, opt):
    return S.SequentialLR(opt, [S.ExponentialLR(opt, gamma=0.9), S.StepLR(opt, step_size=20, gamma=0.5),
                                S.MultiStepLR(opt, milestones=[30, 60], gamma=0.2)], milestones=[25, 120])


def sequential_restarts(S, opt):
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.5, total_iters=5),
                                S.CosineAnnealingWarmRestarts(opt, T_0=12, T_mult=2)], milestones=[5])


# (id, optimizer kind, factory taking the lr_scheduler module and the optimizer)
SCHEDULES = [
    ("LambdaLR", "SGD", lambda S, o: S.LambdaLR(o, lambda t: 0.97 ** t)),
    ("LambdaLR-per-group", "SGD", lambda S, o: S.LambdaLR(o, [lambda t: 1 / (1 + t), lambda t: 0.99 ** t])),
    ("StepLR", "SGD", lambda S, o: S.StepLR(o, step_size=7, gamma=0.5)),
    ("MultiStepLR", "SGD", lambda S, o: S.MultiStepLR(o, milestones=[80, 10, 30, 30], gamma=0.3)),
    ("ExponentialLR", "SGD", lambda S, o: S.ExponentialLR(o, gamma=0.98)),
    ("LinearLR-warmup", "SGD", lambda S, o: S.LinearLR(o, start_factor=0.1, total_iters=20)),
    ("LinearLR-decay", "SGD", lambda S, o: S.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=100)),
    ("CosineAnnealingLR", "SGD", lambda S, o: S.CosineAnnealingLR(o, T_max=STEPS)),
    ("CosineAnnealingLR-periods", "SGD", lambda S, o: S.CosineAnnealingLR(o, T_max=40, eta_min=1e-3)),
    ("CosineAnnealingWarmRestarts", "SGD", lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=25)),
    ("CosineAnnealingWarmRestarts-mult", "SGD",
     lambda S, o: S.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-4)),
    ("CyclicLR-triangular", "SGD", lambda S, o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=20)),
    ("CyclicLR-triangular2", "SGD",
     lambda S, o: S.CyclicLR(o, base_lr=[0.01, 0.001], max_lr=[0.1, 0.05], step_size_up=15, step_size_down=25,
                             mode="triangular2", base_momentum=0.85, max_momentum=0.95)),
    ("CyclicLR-exp_range", "SGD",
     lambda S, o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=10, mode="exp_range", gamma=0.995)),
    ("CyclicLR-Adam-betas", "Adam", lambda S, o: S.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, step_size_up=30)),
    ("CyclicLR-no-momentum", "Adagrad",
     lambda S, o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=20, cycle_momentum=False)),
    ("CyclicLR-scale_fn", "SGD",
     lambda S, o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=20, scale_fn=lambda x: 1 / (1 + x) ** 0.5,
                             scale_mode="iterations")),
    ("OneCycleLR", "SGD", lambda S, o: S.OneCycleLR(o, max_lr=0.5, total_steps=STEPS)),
    ("OneCycleLR-three-phase-linear", "SGD",
     lambda S, o: S.OneCycleLR(o, max_lr=[0.5, 0.2], epochs=10, steps_per_epoch=30, pct_start=0.25,
                               anneal_strategy="linear", three_phase=True)),
    ("OneCycleLR-Adam", "Adam", lambda S, o: S.OneCycleLR(o, max_lr=0.01, total_steps=STEPS, div_factor=10.0)),
    ("SequentialLR-warmup-cosine", "SGD", sequential_warmup_cosine),
    ("SequentialLR-three", "SGD", sequential_three),
    ("SequentialLR-restarts", "SGD", sequential_restarts),
]
IDS = [s[0] for s in SCHEDULES]
BY_ID = {s[0]: s for s in SCHEDULES}


def momentum_of(group):
    if "betas" in group:
        return group["betas"][0]
    return group.get("momentum", 0.0)


def run(lib, kind, factory, steps=STEPS):
    opt = make_optimizer(lib, kind)
    sched = factory(lib.optim.lr_scheduler, opt)
    lrs = [sched.get_last_lr()]
    moms = [[momentum_of(g) for g in opt.param_groups]]
    for _ in range(steps):
        opt.step()  # no gradients: a no-op, but the order torch expects
        sched.step()
        lrs.append(sched.get_last_lr())
        assert lrs[-1] == [g["lr"] for g in opt.param_groups]
        moms.append([momentum_of(g) for g in opt.param_groups])
    return np.array(lrs, dtype=np.float64), np.array(moms, dtype=np.float64)


@pytest.mark.parametrize("sid,kind,factory", SCHEDULES, ids=IDS)
def test_sequence_matches_torch(sid, kind, factory):
    torch = pytest.importorskip("torch")
    ours_lr, ours_mom = run(tg, kind, factory)
    torch_lr, torch_mom = run(torch, kind, factory)
    assert np.ptp(ours_lr[:, 0]) > 0  # the schedule did something
    np.testing.assert_allclose(ours_lr, torch_lr, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours_mom, torch_mom, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- closed forms
# Written from the papers / definitions, for step t and a group's base rate.


def cosine(base, eta_min, t, T):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T)) / 2


def sgdr(base, t, T0, mult, eta_min=0.0):
    T_i, T_cur = T0, t
    while T_cur >= T_i:  # walk through the restarts
        T_cur -= T_i
        T_i *= mult
    return cosine(base, eta_min, T_cur, T_i)


def triangular(base, peak, t, half, scale=lambda cycle, t: 1.0):
    """Smith (2017), Section 3.1: cycle = floor(1 + t / 2s), x = |t/s - 2 cycle + 1|."""
    cycle = math.floor(1 + t / (2 * half))
    x = abs(t / half - 2 * cycle + 1)
    return base + (peak - base) * max(0.0, 1 - x) * scale(cycle, t)


def one_cycle(max_lr, t, total, pct=0.3, div=25.0, final_div=1e4):
    """Two cosine phases (Smith & Topin 2019, fastai form): start -> max_lr -> min."""
    start = max_lr / div
    low = start / final_div
    up = pct * total - 1  # the step at which the peak is reached
    if t <= up:
        return max_lr + (start - max_lr) / 2 * (1 + math.cos(math.pi * t / up))
    return low + (max_lr - low) / 2 * (1 + math.cos(math.pi * (t - up) / (total - 1 - up)))


def one_cycle_three_phase_linear(max_lr, t, total=300, pct=0.25):
    """Smith & Topin's three phases, linear: start -> max -> start -> min."""
    start = max_lr / 25.0
    low = start / 1e4
    a, b, c = pct * total - 1, 2 * pct * total - 2, total - 1
    if t <= a:
        return start + (max_lr - start) * t / a
    if t <= b:
        return max_lr + (start - max_lr) * (t - a) / (b - a)
    return start + (low - start) * (t - b) / (c - b)


def sequential_three_closed(base, t):
    if t < 25:
        return base * 0.9 ** t
    if t < 120:
        return base * 0.5 ** ((t - 25) // 20)
    return base * 0.2 ** sum(m <= t - 120 for m in (30, 60))


CLOSED_FORMS = {
    "LambdaLR": lambda base, i, t: base * 0.97 ** t,
    "LambdaLR-per-group": lambda base, i, t: base / (1 + t) if i == 0 else base * 0.99 ** t,
    "CyclicLR-Adam-betas": lambda base, i, t: triangular(1e-3, 1e-2, t, 30),
    "CyclicLR-no-momentum": lambda base, i, t: triangular(0.01, 0.1, t, 20),
    "OneCycleLR-three-phase-linear": lambda base, i, t: one_cycle_three_phase_linear((0.5, 0.2)[i], t),
    "SequentialLR-three": lambda base, i, t: sequential_three_closed(base, t),
    "SequentialLR-restarts": lambda base, i, t: base * (0.5 + 0.5 * t / 5) if t < 5 else sgdr(base, t - 5, 12, 2),
    "StepLR": lambda base, i, t: base * 0.5 ** (t // 7),
    "MultiStepLR": lambda base, i, t: base * 0.3 ** sum(m <= t for m in [10, 30, 30, 80]),
    "ExponentialLR": lambda base, i, t: base * 0.98 ** t,
    "LinearLR-warmup": lambda base, i, t: base * (0.1 + 0.9 * min(t, 20) / 20),
    "LinearLR-decay": lambda base, i, t: base * (1.0 - 0.95 * min(t, 100) / 100),
    "CosineAnnealingLR": lambda base, i, t: cosine(base, 0.0, t, STEPS),
    "CosineAnnealingLR-periods": lambda base, i, t: cosine(base, 1e-3, t, 40),
    "CosineAnnealingWarmRestarts": lambda base, i, t: sgdr(base, t, 25, 1),
    "CosineAnnealingWarmRestarts-mult": lambda base, i, t: sgdr(base, t, 10, 2, 1e-4),
    "CyclicLR-triangular": lambda base, i, t: triangular(0.01, 0.1, t, 20),
    "CyclicLR-exp_range": lambda base, i, t: triangular(0.01, 0.1, t, 10, lambda c, t: 0.995 ** t),
    "OneCycleLR": lambda base, i, t: one_cycle(0.5, t, STEPS),
    "SequentialLR-warmup-cosine": lambda base, i, t: (base * (0.1 + 0.9 * t / 10) if t < 10
                                                      else cosine(base, 1e-3, t - 10, 100)),
}


@pytest.mark.parametrize("sid", sorted(CLOSED_FORMS))
def test_sequence_matches_closed_form(sid):
    _, kind, factory = BY_ID[sid]
    lrs, _ = run(tg, kind, factory)
    expected = np.array([[CLOSED_FORMS[sid](base, i, t) for i, base in enumerate(BASE)]
                         for t in range(STEPS + 1)])
    np.testing.assert_allclose(lrs, expected, rtol=1e-10, atol=1e-12 * BASE[0])


def test_triangular2_halves_the_amplitude_each_cycle_and_momentum_mirrors_the_rate():
    lrs, moms = run(tg, "SGD", BY_ID["CyclicLR-triangular2"][2], steps=160)
    # up 15 steps, down 25: peaks at t = 15, 55, 95, 135 with amplitude 0.09 / 2^(cycle - 1)
    np.testing.assert_allclose(lrs[[15, 55, 95, 135], 0], 0.01 + 0.09 / 2 ** np.arange(4), rtol=1e-12)
    np.testing.assert_allclose(lrs[[0, 40, 80, 120], 0], 0.01, rtol=1e-12)
    # momentum is max when the rate is min and vice versa
    position = (lrs[:, 0] - 0.01) / (lrs[:, 0].max() - 0.01)
    assert moms[0, 0] == 0.95 and moms[15, 0] == pytest.approx(0.85)
    assert np.all(np.diff(moms[:16, 0]) < 0) and np.all(np.diff(position[:16]) > 0)


def test_cyclic_lr_switches_on_sgd_momentum_unless_told_not_to():
    opt = tg.optim.SGD([tg.Tensor(np.ones(2), requires_grad=True)], lr=0.1)  # momentum 0
    tg.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1)
    assert opt.param_groups[0]["momentum"] == 0.9  # torch's default behaviour
    opt = tg.optim.SGD([tg.Tensor(np.ones(2), requires_grad=True)], lr=0.1)
    tg.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, cycle_momentum=False)
    assert opt.param_groups[0]["momentum"] == 0.0


def test_one_cycle_raises_past_the_end():
    opt = make_optimizer(tg)
    sched = tg.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=5)
    for _ in range(5):
        sched.step()
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


def test_fractional_epochs_of_warm_restarts_match_torch():
    torch = pytest.importorskip("torch")
    out = []
    for lib in (tg, torch):
        opt = make_optimizer(lib)
        sched = lib.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2)
        seq = []
        for epoch in range(12):
            for i in range(4):
                sched.step(epoch + i / 4)
                seq.append(sched.get_last_lr())
        out.append(np.array(seq))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-12)


def test_initial_lr_is_recorded_in_param_groups_like_torch():
    opt = make_optimizer(tg)
    sched = tg.optim.lr_scheduler.StepLR(opt, step_size=2)
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASE) == sched.base_lrs
    assert sched.last_epoch == 0 and sched.get_last_lr() == list(BASE)


# ----------------------------------------------------------------------------- ReduceLROnPlateau


PLATEAU_CASES = [
    dict(),
    dict(mode="max", factor=0.5, patience=2, threshold=0.01, threshold_mode="abs"),
    dict(factor=0.5, patience=1, cooldown=3, min_lr=[0.01, 0.005]),
    dict(factor=0.2, patience=0, min_lr=0.004, eps=1e-3),
]


def plateau_metrics(mode="min"):
    r = np.random.default_rng(0)
    values = np.concatenate([np.linspace(1.0, 0.5, 20), 0.5 + 0.01 * r.standard_normal(60),
                             np.linspace(0.5, 0.3, 10), 0.3 + 0.001 * r.standard_normal(60)])
    return values if mode == "min" else -values


def run_plateau(lib, kw, stop=None, restore=None):
    opt = make_optimizer(lib)
    sched = lib.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    if restore is not None:
        opt.load_state_dict(restore[0])
        sched.load_state_dict(restore[1])
    metrics = plateau_metrics(kw.get("mode", "min"))
    start = 0 if restore is None else restore[2]
    lrs = []
    for k in range(start, len(metrics) if stop is None else stop):
        opt.step()
        sched.step(metrics[k])
        lrs.append(sched.get_last_lr())
    return np.array(lrs), opt, sched


@pytest.mark.parametrize("kw", PLATEAU_CASES, ids=[str(i) for i in range(len(PLATEAU_CASES))])
def test_reduce_on_plateau_matches_torch_and_resumes(kw):
    torch = pytest.importorskip("torch")
    ours, _, _ = run_plateau(tg, kw)
    theirs, _, _ = run_plateau(torch, kw)
    assert len(np.unique(ours[:, 0])) > 2  # the rate was reduced several times
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    first, opt, sched = run_plateau(tg, kw, stop=47)
    saved = (opt.state_dict(), json.loads(json.dumps(sched.state_dict())), 47)
    second, _, _ = run_plateau(tg, kw, restore=saved)
    np.testing.assert_array_equal(np.concatenate([first, second]), ours)


def test_reduce_on_plateau_accepts_a_tensor_metric():
    opt = make_optimizer(tg)
    sched = tg.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    sched.step(tg.Tensor(1.0))
    sched.step(tg.Tensor([2.0]))
    assert sched.get_last_lr() == pytest.approx([0.01, 0.002])


# ----------------------------------------------------------------------------- resume


def resume_run(kind, factory, stop, optimizer_first):
    """Run to ``stop``, checkpoint through JSON, rebuild everything and finish the run."""
    opt = make_optimizer(tg, kind)
    sched = factory(tg.optim.lr_scheduler, opt)
    lrs, moms = [sched.get_last_lr()], [[momentum_of(g) for g in opt.param_groups]]
    for _ in range(stop):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
        moms.append([momentum_of(g) for g in opt.param_groups])
    opt_state = opt.state_dict()
    sched_state = json.loads(json.dumps(sched.state_dict()))  # plain data: survives JSON
    del opt, sched

    opt = make_optimizer(tg, kind)
    if optimizer_first:  # the order that silently breaks resumed runs in torch
        opt.load_state_dict(opt_state)
        sched = factory(tg.optim.lr_scheduler, opt)
    else:
        sched = factory(tg.optim.lr_scheduler, opt)
        opt.load_state_dict(opt_state)
    sched.load_state_dict(sched_state)
    assert sched.get_last_lr() == lrs[-1] == [g["lr"] for g in opt.param_groups]
    assert [momentum_of(g) for g in opt.param_groups] == moms[-1]
    for _ in range(STEPS - stop):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
        moms.append([momentum_of(g) for g in opt.param_groups])
    return lrs, moms


@pytest.mark.parametrize("optimizer_first", [False, True], ids=["scheduler-first", "optimizer-first"])
@pytest.mark.parametrize("sid,kind,factory", SCHEDULES, ids=IDS)
def test_resume_mid_schedule_equals_uninterrupted_run(sid, kind, factory, optimizer_first):
    full_lr, full_mom = run(tg, kind, factory)
    # 7: inside a warm-up; 10 and 25: on a milestone; 137: deep in a later phase
    for stop in (7, 10, 25, 137):
        lrs, moms = resume_run(kind, factory, stop, optimizer_first)
        np.testing.assert_array_equal(np.array(lrs), full_lr, err_msg=f"resumed at {stop}")
        np.testing.assert_array_equal(np.array(moms), full_mom, err_msg=f"resumed at {stop}")


def test_state_dict_excludes_the_optimizer_and_lambdas():
    opt = make_optimizer(tg)
    sched = tg.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    sd = sched.state_dict()
    assert "optimizer" not in sd and "lr_lambdas" not in sd
    assert set(sd) == {"base_lrs", "last_epoch", "_step_count", "_last_lr"}
    seq = sequential_warmup_cosine(tg.optim.lr_scheduler, make_optimizer(tg)).state_dict()
    assert len(seq["_schedulers"]) == 2 and "optimizer" not in seq["_schedulers"][0]


def test_load_state_dict_rejects_a_foreign_state_before_changing_anything():
    opt = make_optimizer(tg)
    sched = tg.optim.lr_scheduler.StepLR(opt, step_size=3)
    other = tg.optim.lr_scheduler.CosineAnnealingLR(make_optimizer(tg), T_max=5).state_dict()
    before = sched.state_dict()
    with pytest.raises(ValueError, match="does not match"):
        sched.load_state_dict(other)
    bad = dict(before, base_lrs=[0.1])
    with pytest.raises(ValueError, match="parameter groups"):
        sched.load_state_dict(bad)
    assert sched.state_dict() == before
    seq = sequential_warmup_cosine(tg.optim.lr_scheduler, make_optimizer(tg))
    seq_before = seq.state_dict()
    broken = seq.state_dict()
    broken["_schedulers"][1] = other | {"T_max": 5}
    broken["_schedulers"][1].pop("eta_min")
    with pytest.raises(ValueError):
        seq.load_state_dict(broken)
    assert seq.state_dict() == seq_before


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors():
    S = tg.optim.lr_scheduler
    opt = make_optimizer(tg)
    with pytest.raises(TypeError, match="Optimizer"):
        S.StepLR(object(), step_size=3)
    with pytest.raises(ValueError, match="step_size"):
        S.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="milestone"):
        S.MultiStepLR(opt, milestones=[3, -1])
    with pytest.raises(ValueError, match="start_factor"):
        S.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError, match="end_factor"):
        S.LinearLR(opt, end_factor=1.5)
    with pytest.raises(ValueError, match="T_max"):
        S.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="T_mult"):
        S.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=0)
    with pytest.raises(ValueError, match="lr_lambda"):
        S.LambdaLR(opt, [lambda t: 1.0])
    with pytest.raises(ValueError, match="mode"):
        S.CyclicLR(opt, base_lr=0.01, max_lr=0.1, mode="sawtooth")
    with pytest.raises(ValueError, match="momentum or betas"):
        S.CyclicLR(make_optimizer(tg, "Adagrad"), base_lr=0.01, max_lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        S.OneCycleLR(opt, max_lr=0.1)
    with pytest.raises(ValueError, match="pct_start"):
        S.OneCycleLR(opt, max_lr=0.1, total_steps=10, pct_start=1.5)
    with pytest.raises(ValueError, match="factor"):
        S.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        S.ReduceLROnPlateau(opt, mode="best")
    with pytest.raises(ValueError, match="min_lr"):
        S.ReduceLROnPlateau(opt, min_lr=[0.1])
    with pytest.raises(ValueError, match="initial_lr"):
        S.StepLR(tg.optim.SGD([tg.Tensor(np.ones(1), requires_grad=True)], lr=0.1), step_size=3, last_epoch=5)
    warm = S.LinearLR(opt, total_iters=3)
    cos = S.CosineAnnealingLR(opt, T_max=10)
    with pytest.raises(ValueError, match="milestone"):
        S.SequentialLR(opt, [warm, cos], milestones=[3, 5])
    with pytest.raises(ValueError, match="different optimizer"):
        S.SequentialLR(opt, [warm, S.StepLR(make_optimizer(tg), step_size=2)], milestones=[3])
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        S.SequentialLR(opt, [warm, S.ReduceLROnPlateau(opt)], milestones=[3])
    with pytest.raises(ValueError, match="load_state_dict"):
        S.SequentialLR(opt, [warm, cos], milestones=[3], last_epoch=4)


def test_cyclic_lr_checks_everything_before_touching_the_optimizer():
    opt = make_optimizer(tg)
    with pytest.raises(ValueError, match="max_lr"):
        tg.optim.lr_scheduler.CyclicLR(opt, base_lr=0.5, max_lr=[0.1, 0.2, 0.3])
    assert [g["lr"] for g in opt.param_groups] == list(BASE) and opt.param_groups[0]["momentum"] == 0.9
