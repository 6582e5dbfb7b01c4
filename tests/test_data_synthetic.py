"""Synthetic generators: shapes, dtypes, seeding, and that the ground truth is what they say."""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.data import (Vocabulary, make_linear_regression, make_moons, make_ratings, make_sentiment_corpus,
                               make_spirals, pad_sequences, tokenize)


def test_linear_regression_ground_truth_is_recoverable():
    data = make_linear_regression(n_samples=2000, n_features=3, n_targets=2, noise=0.1, seed=0)
    assert data.X.shape == (2000, 3) and data.y.shape == (2000, 2) and data.X.dtype == np.float32
    design = np.c_[data.X, np.ones(2000)].astype(np.float64)
    coef = np.linalg.lstsq(design, data.y.astype(np.float64), rcond=None)[0]
    # Least-squares error ~ noise / sqrt(n) = 0.002; allow 5x.
    np.testing.assert_allclose(coef[:3], data.weight, atol=0.01)
    np.testing.assert_allclose(coef[3], data.bias, atol=0.01)
    residual = data.y - (data.X @ data.weight + data.bias)
    assert abs(residual.std() - 0.1) < 0.01
    assert make_linear_regression(seed=0).y.shape == (100, 1)  # 2-D even for one target
    exact = make_linear_regression(n_samples=5, noise=0.0, seed=1)
    np.testing.assert_allclose(exact.y, exact.X @ exact.weight + exact.bias, rtol=1e-6)


def test_generators_are_seeded():
    np.testing.assert_array_equal(make_moons(seed=3)[0], make_moons(seed=3)[0])
    assert not np.array_equal(make_moons(seed=3)[0], make_moons(seed=4)[0])
    tg.manual_seed(2)
    a = make_spirals()
    tg.manual_seed(2)
    b = make_spirals()
    np.testing.assert_array_equal(a[0], b[0])
    assert make_sentiment_corpus(50, seed=1).texts == make_sentiment_corpus(50, seed=1).texts
    np.testing.assert_array_equal(make_ratings(seed=5).ratings, make_ratings(seed=5).ratings)


def test_moons_geometry():
    X, y = make_moons(n_samples=101, noise=0.0, seed=0)
    assert X.shape == (101, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [50, 51]
    # Noise-free points lie on the two unit half circles.
    np.testing.assert_allclose(np.hypot(X[y == 0, 0], X[y == 0, 1]), 1, atol=1e-6)
    np.testing.assert_allclose(np.hypot(X[y == 1, 0] - 1, X[y == 1, 1] - 0.5), 1, atol=1e-6)
    assert np.all(X[y == 0, 1] >= -1e-6) and np.all(X[y == 1, 1] <= 0.5 + 1e-6)


def test_spirals_geometry():
    X, y = make_spirals(n_samples=301, n_classes=3, noise=0.0, seed=0)
    assert np.bincount(y).tolist() == [101, 100, 100]
    r = np.hypot(X[:, 0], X[:, 1])
    theta = np.arctan2(X[:, 0], X[:, 1])  # X = r (sin t, cos t)
    expected = 4.0 * (y + r)
    wrapped = np.angle(np.exp(1j * (theta - expected)))
    np.testing.assert_allclose(wrapped[r > 1e-6], 0, atol=1e-5)


def test_vocabulary_and_padding():
    vocab = Vocabulary.build(["the film was good", "the film was not good", "bad"])
    assert vocab.itos[:2] == ["<pad>", "<unk>"] and vocab.pad_id == 0 and vocab.unk_id == 1
    assert vocab.itos[2:6] == ["the", "film", "was", "good"]  # by frequency, ties in first-seen order
    ids = vocab.encode("The film was GREAT!")
    assert ids == [2, 3, 4, 1]  # unknown word -> <unk>
    assert vocab.decode(ids + [0, 0]) == "the film was <unk>"
    assert tokenize("It's not   bad, really.") == ["it's", "not", "bad", "really"]
    padded, lengths = pad_sequences([[5, 6, 7], [8]], max_len=2)
    assert padded.tolist() == [[5, 6], [8, 0]] and lengths.tolist() == [2, 1]
    with pytest.raises(IndexError, match="id 99"):
        vocab.decode([99])


def _clause_sentiment(clause: str) -> bool:
    positive_words = {"good", "great", "excellent", "wonderful", "brilliant", "enjoyable", "superb", "charming"}
    words = clause.split()
    return (words[-1] in positive_words) != ("not" in words)


def test_sentiment_corpus_labels_follow_the_stated_grammar():
    corpus = make_sentiment_corpus(400, seed=0)
    assert corpus.ids.shape[0] == 400 and corpus.ids.dtype == np.int64 and corpus.labels.dtype == np.int64
    assert 0.4 < corpus.labels.mean() < 0.6
    forms = {"single": 0, "but": 0, "and": 0}
    for text, label, row, length in zip(corpus.texts, corpus.labels, corpus.ids, corpus.lengths):
        if " but " in text:
            first, second = text.split(" but ")
            assert _clause_sentiment(second) == bool(label) and _clause_sentiment(first) != bool(label)
            forms["but"] += 1
        elif " and " in text:
            assert all(_clause_sentiment(c) == bool(label) for c in text.split(" and "))
            forms["and"] += 1
        else:
            assert _clause_sentiment(text) == bool(label)
            forms["single"] += 1
        assert corpus.vocab.decode(row) == text and np.all(row[length:] == 0) and np.all(row[:length] != 0)
    assert min(forms.values()) > 50
    # Negation flips meaning: the same adjective appears under both labels.
    good_positive = [bool(label) for t, label in zip(corpus.texts, corpus.labels)
                     if " and " not in t and " but " not in t and t.endswith(" good")]
    assert True in good_positive and False in good_positive


def test_ratings_are_low_rank_and_observed_everywhere():
    data = make_ratings(n_users=30, n_items=20, rank=3, density=0.2, noise=0.05, seed=0)
    centred = data.matrix.astype(np.float64) - data.global_mean
    s = np.linalg.svd(centred, compute_uv=False)
    assert s[2] > 1e-3 and s[3] < 1e-4 * s[0]  # rank exactly 3
    np.testing.assert_allclose(data.matrix, data.global_mean + data.user_factors @ data.item_factors.T, rtol=1e-5)
    assert set(data.users.tolist()) == set(range(30)) and set(data.items.tolist()) == set(range(20))
    pairs = set(zip(data.users.tolist(), data.items.tolist()))
    assert len(pairs) == data.users.size  # no entry observed twice
    residual = data.ratings - data.matrix[data.users, data.items]
    assert abs(residual.std() - 0.05) < 0.015
    assert 0.15 < data.users.size / 600 < 0.35
    assert abs(centred.std() - 1) < 0.5  # about unit variance per entry


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="noise"):
        make_moons(noise=-1)
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        make_spirals(n_classes=1)
    with pytest.raises(ValueError, match="density"):
        make_ratings(density=0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        make_linear_regression(seed=-2)
    with pytest.raises(TypeError, match="n_samples must be an integer"):
        make_sentiment_corpus(10.0)
