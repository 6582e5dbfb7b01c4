"""The bundled digits, train_test_split, and Normalize (fit on training data only)."""

import hashlib

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.data import Normalize, load_digits, train_test_split
from tinygrad_sgd.data.datasets import DIGITS_PATH

# ----------------------------------------------------------------------------- digits


def test_bundled_digits_file_is_the_uci_test_set():
    with np.load(DIGITS_PATH) as archive:
        images, labels = archive["images"], archive["labels"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16
    # Class counts of the UCI optdigits test set (optdigits.tes).
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # Checksums of the arrays extracted from scikit-learn 1.9.1's digits.csv.gz.
    assert hashlib.sha256(images.tobytes()).hexdigest().startswith("8f26b2bd9d135c25")
    assert hashlib.sha256(labels.tobytes()).hexdigest().startswith("a3c91c262eddcf7b")


def test_load_digits_shapes_and_normalisations():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    raw, _ = load_digits(normalize=None, dtype=np.uint8)
    np.testing.assert_array_equal(raw.astype(np.float32) / 16, X)
    conv, _ = load_digits(flatten=False)
    assert conv.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(conv.reshape(1797, 64), X)
    std, _ = load_digits(normalize="standardize")
    varying = raw.std(axis=0) > 0
    np.testing.assert_allclose(std.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(std.std(axis=0)[varying], 1, atol=1e-4)
    with pytest.raises(ValueError, match="normalize"):
        load_digits(normalize="minmax")
    with pytest.raises(ValueError, match="floating dtype"):
        load_digits(dtype=np.uint8)


def test_load_digits_split_is_seeded_stratified_and_disjoint():
    (Xtr, ytr), (Xte, yte) = load_digits(split=0.2, normalize=None, dtype=np.uint8)
    assert len(Xte) == 360 and len(Xtr) == 1437  # ceil(0.2 * 1797) = 360
    full_counts = np.bincount(load_digits()[1])
    # Stratified: each class's test count is within one of its proportional share.
    assert np.all(np.abs(np.bincount(yte) - full_counts * 360 / 1797) < 1)
    # Disjoint and complete: the rows of both parts are the whole data set once.
    X, y = load_digits(normalize=None, dtype=np.uint8)
    both = np.concatenate([np.c_[Xtr, ytr], np.c_[Xte, yte]])
    assert sorted(map(bytes, both)) == sorted(map(bytes, np.c_[X, y]))
    (Xtr2, _), (Xte2, _) = load_digits(split=0.2, normalize=None, dtype=np.uint8)
    np.testing.assert_array_equal(Xte, Xte2)
    (_, _), (Xte3, _) = load_digits(split=0.2, normalize=None, dtype=np.uint8, seed=1)
    assert not np.array_equal(Xte, Xte3)
    # Shuffled: the test labels are not in class blocks.
    assert np.count_nonzero(np.diff(yte)) > 200


def test_load_digits_standardize_uses_training_statistics_only():
    (Xtr, _), (Xte, _) = load_digits(split=0.25, normalize="standardize")
    (Rtr, _), (Rte, _) = load_digits(split=0.25, normalize="scale")
    mean, std = Rtr.mean(axis=0, dtype=np.float64), Rtr.std(axis=0, dtype=np.float64)
    std[std == 0] = 1
    np.testing.assert_allclose(Xte, (Rte - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Xtr.mean(axis=0), 0, atol=1e-5)
    assert np.abs(Xte.mean(axis=0)).max() > 0.01  # the test set is *not* re-centred on itself


def test_digits_are_learnable():
    """Real data, not noise: the nearest class mean scores > 85% on the held-out part."""
    (Xtr, ytr), (Xte, yte) = load_digits(split=0.2)
    centroids = np.stack([Xtr[ytr == c].mean(axis=0) for c in range(10)])
    predictions = np.argmin(((Xte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predictions == yte).mean() > 0.85


# ----------------------------------------------------------------------------- train_test_split


def test_train_test_split_order_and_sizes():
    X = np.arange(20).reshape(10, 2)
    y = np.arange(10)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=3, seed=0)
    assert X_train.shape == (7, 2) and X_test.shape == (3, 2)
    np.testing.assert_array_equal(X_train[:, 0] // 2, y_train)
    np.testing.assert_array_equal(X_test[:, 0] // 2, y_test)
    assert sorted(np.r_[y_train, y_test].tolist()) == list(range(10))
    a_train, a_test = train_test_split(y, test_size=0.25, shuffle=False)
    assert a_test.tolist() == [7, 8, 9]  # ceil(2.5) = 3
    t_train, _ = train_test_split(tg.Tensor(X, dtype=tg.int64), test_size=2, seed=0)
    assert isinstance(t_train, np.ndarray)


def test_stratified_split_on_imbalanced_labels():
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    _, test = train_test_split(y, test_size=20, seed=3, stratify=y)
    assert np.bincount(test).tolist() == [16, 3, 1]


def test_train_test_split_bad_input():
    with pytest.raises(ValueError, match="equal lengths"):
        train_test_split(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="both must be positive"):
        train_test_split(np.zeros(5), test_size=5)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        train_test_split(np.zeros(5), test_size=1.5)
    with pytest.raises(ValueError, match="stratify must have shape"):
        train_test_split(np.zeros(5), stratify=np.zeros(4))


# ----------------------------------------------------------------------------- Normalize


def test_normalize_fits_on_train_and_applies_to_test():
    gen = np.random.default_rng(0)
    train = gen.normal([5.0, -3.0, 0.0], [2.0, 0.5, 10.0], size=(200, 3)).astype(np.float32)
    test = gen.normal([5.0, -3.0, 0.0], [2.0, 0.5, 10.0], size=(50, 3)).astype(np.float32)
    scaler = Normalize().fit(train)
    np.testing.assert_allclose(scaler.mean.ravel(), train.astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(scaler.std.ravel(), train.astype(np.float64).std(axis=0))
    out = scaler.transform(test)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (test - train.mean(0)) / train.std(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaler.fit_transform(train).std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(test)), test, rtol=1e-5, atol=1e-4)


def test_normalize_refuses_to_transform_before_fit():
    with pytest.raises(RuntimeError, match="call fit"):
        Normalize().transform(np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        Normalize().state_dict()


def test_normalize_tensors_constant_features_and_integer_input():
    data = np.array([[1, 7], [3, 7], [5, 7]], dtype=np.int64)
    scaler = Normalize().fit(data)
    out = scaler.transform(data)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 1], 0)  # constant feature -> 0, not NaN
    t = scaler.transform(tg.Tensor(data.astype(np.float64), dtype=tg.float64))
    assert isinstance(t, tg.Tensor) and t.dtype == np.float64
    np.testing.assert_allclose(t.numpy()[:, 0], [-1.224744871, 0, 1.224744871])


def test_normalize_per_channel_on_images():
    gen = np.random.default_rng(1)
    images = gen.normal(size=(8, 3, 4, 4)).astype(np.float32) * np.array([1, 2, 3], np.float32)[None, :, None, None]
    scaler = Normalize(axis=(0, 2, 3)).fit(images)
    assert scaler.mean.shape == (1, 3, 1, 1)
    out = scaler.transform(images)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    given = Normalize(mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0], axis=(0, 2, 3))
    np.testing.assert_allclose(given.transform(images)[:, 1], (images[:, 1] - 0.5) / 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        given.transform(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="do not fit"):
        Normalize().fit(np.zeros((5, 3))).transform(np.zeros((5, 4)))


def test_normalize_state_round_trip_and_bad_arguments():
    scaler = Normalize().fit(np.arange(12.0).reshape(4, 3))
    other = Normalize()
    other.load_state_dict(scaler.state_dict())
    x = np.ones((2, 3))
    np.testing.assert_array_equal(other.transform(x), scaler.transform(x))
    with pytest.raises(ValueError, match="both mean= and std="):
        Normalize(mean=[0.0])
    with pytest.raises(ValueError, match="positive"):
        Normalize(mean=[0.0], std=[0.0])
    with pytest.raises(ValueError, match="NaN"):
        Normalize().fit(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="no samples"):
        Normalize().fit(np.zeros((0, 3)))
    with pytest.raises(TypeError, match="array or a Tensor"):
        Normalize().fit([[1.0, 2.0]])
