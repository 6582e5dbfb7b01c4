"""tg.nn.init: gains and fans as torch, distributions with the right spread, seeding."""

import math

import numpy as np
import pytest

import tinygrad_sgd as tg

init = tg.nn.init


@pytest.mark.parametrize("nonlinearity,param", [("linear", None), ("conv2d", None), ("sigmoid", None),
                                                ("tanh", None), ("relu", None), ("leaky_relu", None),
                                                ("leaky_relu", 0.2), ("selu", None)])
def test_calculate_gain_matches_torch(nonlinearity, param):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-15)


def test_fans_match_torch():
    torch = pytest.importorskip("torch")
    for shape in [(5, 3), (8, 4, 3, 2), (6, 2, 7)]:
        ours = init._calculate_fan_in_and_fan_out(tg.zeros(*shape))
        assert ours == torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(*shape))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(tg.zeros(5))


SPREADS = [  # (fill, expected std of the samples) for a (400, 250, 3) weight: fan_in 750, fan_out 1200
    (lambda t: init.uniform_(t, -2.0, 1.0), math.sqrt(9 / 12)),
    (lambda t: init.normal_(t, 1.0, 0.5), 0.5),
    (lambda t: init.xavier_uniform_(t, gain=2.0), 2.0 * math.sqrt(2 / (750 + 1200))),
    (lambda t: init.xavier_normal_(t), math.sqrt(2 / (750 + 1200))),
    (lambda t: init.kaiming_uniform_(t, nonlinearity="relu"), math.sqrt(2 / 750)),
    (lambda t: init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 1200)),
    (lambda t: init.kaiming_uniform_(t, a=math.sqrt(5)), 1 / math.sqrt(750) / math.sqrt(3)),
]


@pytest.mark.parametrize("fill,std", SPREADS)
def test_init_spreads(fill, std):
    tg.manual_seed(0)
    weight = tg.zeros(400, 250, 3)
    assert fill(weight) is weight
    assert weight.data.std() == pytest.approx(std, rel=0.01)
    assert weight.dtype == tg.float32


def test_uniform_bounds_and_constants():
    weight = init.kaiming_uniform_(tg.zeros(64, 32), nonlinearity="relu")
    bound = math.sqrt(3) * math.sqrt(2) / math.sqrt(32)
    assert np.abs(weight.data).max() <= bound and np.abs(weight.data).max() > 0.95 * bound
    np.testing.assert_array_equal(init.zeros_(tg.ones(3)).data, 0)
    np.testing.assert_array_equal(init.ones_(tg.zeros(3)).data, 1)
    np.testing.assert_array_equal(init.constant_(tg.zeros(3, dtype=tg.float64), 0.25).data, 0.25)


def test_init_is_reproducible_and_takes_a_generator():
    tg.manual_seed(5)
    first = init.normal_(tg.zeros(10)).data.copy()
    tg.manual_seed(5)
    np.testing.assert_array_equal(init.normal_(tg.zeros(10)).data, first)
    a = init.xavier_uniform_(tg.zeros(4, 4), generator=np.random.default_rng(1)).data
    b = init.xavier_uniform_(tg.zeros(4, 4), generator=np.random.default_rng(1)).data
    np.testing.assert_array_equal(a, b)
    tg.manual_seed(7)
    layer_a = tg.nn.Linear(5, 5)
    tg.manual_seed(7)
    np.testing.assert_array_equal(tg.nn.Linear(5, 5).weight.data, layer_a.weight.data)


def test_init_bad_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        init.normal_(tg.zeros(3, dtype=tg.int64))
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.kaiming_normal_(tg.zeros(3, 3), nonlinearity="swish")
    with pytest.raises(ValueError, match="mode must be"):
        init.kaiming_normal_(tg.zeros(3, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="a <= b"):
        init.uniform_(tg.zeros(3), 1.0, 0.0)
    empty = tg.zeros(0, 3)
    assert init.kaiming_uniform_(empty) is empty  # nothing to fill, no division by a zero fan
