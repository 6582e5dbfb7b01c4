"""Synthetic data sets with known ground truth, for the teaching notebooks.

Every generator takes ``seed`` (None: drawn from the engine's generator, so
``tg.manual_seed`` fixes it) and returns NumPy arrays: float32 features, int64 labels
and ids. Each docstring gives the exact formula, so a notebook can check what a model
recovered against what generated the data.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ._checks import check_int, resolve_seed


def _generator(seed) -> np.random.Generator:
    return np.random.default_rng(resolve_seed(seed))


def _check_noise(noise) -> float:
    noise = float(noise)
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite non-negative number, got {noise}")
    return noise


# ----------------------------------------------------------------------------- regression


@dataclass
class LinearRegressionData:
    """``y = X @ weight + bias + noise``; ``weight`` and ``bias`` are the ground truth."""

    X: np.ndarray       # (n_samples, n_features) float32
    y: np.ndarray       # (n_samples, n_targets) float32
    weight: np.ndarray  # (n_features, n_targets) float32
    bias: np.ndarray    # (n_targets,) float32


def make_linear_regression(n_samples: int = 100, n_features: int = 1, n_targets: int = 1, noise: float = 0.1,
                           seed: int | None = None) -> LinearRegressionData:
    r"""Noisy linear data: :math:`y = X w + b + \epsilon`, :math:`\epsilon \sim N(0, \mathrm{noise}^2)`.

    :math:`X_{ij} \sim N(0, 1)`, :math:`w_{jk} \sim N(0, 1)`, :math:`b_k \sim U(-1, 1)`.
    ``y`` is 2-D ``(n_samples, n_targets)`` even for one target, so it lines up with a
    model's ``(n, 1)`` output: subtracting a ``(n,)`` target from a ``(n, 1)`` prediction
    would broadcast to ``(n, n)`` and silently train on the wrong loss. The least-squares
    fit recovers ``weight`` and ``bias`` to within about ``noise / sqrt(n_samples)``.
    """
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    n_features = check_int(n_features, "n_features", minimum=1)
    n_targets = check_int(n_targets, "n_targets", minimum=1)
    noise = _check_noise(noise)
    gen = _generator(seed)
    weight = gen.standard_normal((n_features, n_targets))
    bias = gen.uniform(-1.0, 1.0, n_targets)
    X = gen.standard_normal((n_samples, n_features))
    y = X @ weight + bias + noise * gen.standard_normal((n_samples, n_targets))
    return LinearRegressionData(X.astype(np.float32), y.astype(np.float32), weight.astype(np.float32),
                                bias.astype(np.float32))


# ----------------------------------------------------------------------------- classification


def make_moons(n_samples: int = 200, noise: float = 0.1, seed: int | None = None):
    r"""Two interleaving half circles (scikit-learn's ``make_moons``): ``(X float32 (n, 2), y int64)``.

    Class 0: :math:`(\cos t, \sin t)`; class 1: :math:`(1 - \cos t, 0.5 - \sin t)`, with
    :math:`t` evenly spaced in :math:`[0, \pi]`, plus Gaussian noise of std ``noise``;
    samples are shuffled. Not linearly separable: a logistic regression stalls near 85%
    accuracy while a small MLP reaches 100% at low noise.
    """
    n_samples = check_int(n_samples, "n_samples", minimum=2)
    noise = _check_noise(noise)
    gen = _generator(seed)
    n_outer = n_samples // 2
    n_inner = n_samples - n_outer
    t_outer = np.linspace(0.0, np.pi, n_outer)
    t_inner = np.linspace(0.0, np.pi, n_inner)
    X = np.concatenate([np.stack([np.cos(t_outer), np.sin(t_outer)], axis=1),
                        np.stack([1.0 - np.cos(t_inner), 0.5 - np.sin(t_inner)], axis=1)])
    y = np.concatenate([np.zeros(n_outer, dtype=np.int64), np.ones(n_inner, dtype=np.int64)])
    X += noise * gen.standard_normal(X.shape)
    order = gen.permutation(n_samples)
    return X[order].astype(np.float32), y[order]


def make_spirals(n_samples: int = 300, n_classes: int = 3, noise: float = 0.2, seed: int | None = None):
    r"""``n_classes`` interleaved spiral arms (the CS231n example): ``(X float32 (n, 2), y int64)``.

    Arm :math:`c` has points :math:`r (\sin\theta, \cos\theta)` with radius :math:`r`
    evenly spaced in [0, 1] and angle :math:`\theta = 4 (c + r) + \mathrm{noise} \cdot
    N(0, 1)`; samples are shuffled. Needs a non-linear model: a linear classifier gets
    about 50% on three arms.
    """
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    n_classes = check_int(n_classes, "n_classes", minimum=2)
    noise = _check_noise(noise)
    gen = _generator(seed)
    counts = np.full(n_classes, n_samples // n_classes)
    counts[:n_samples % n_classes] += 1
    points, labels = [], []
    for c, count in enumerate(counts):
        r = np.linspace(0.0, 1.0, count)
        theta = 4.0 * (c + r) + noise * gen.standard_normal(count)
        points.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        labels.append(np.full(count, c, dtype=np.int64))
    X, y = np.concatenate(points), np.concatenate(labels)
    order = gen.permutation(n_samples)
    return X[order].astype(np.float32), y[order]


# ----------------------------------------------------------------------------- text

_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, apostrophes); everything else separates."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Token <-> integer id. Id 0 is the padding token, id 1 stands for unknown tokens.

    Padding must be an id no real token has, so that a model can mask it (or an
    ``Embedding(padding_idx=0)`` can keep its vector at zero); unknown words map to
    ``<unk>`` so that test text with unseen words still encodes.
    """

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens):
        self.itos: list[str] = [self.PAD, self.UNK]
        self.stoi: dict[str, int] = {self.PAD: 0, self.UNK: 1}
        for token in tokens:
            if token not in self.stoi:
                self.stoi[token] = len(self.itos)
                self.itos.append(token)

    pad_id = 0
    unk_id = 1

    @classmethod
    def build(cls, texts, min_freq: int = 1) -> "Vocabulary":
        """A vocabulary of the tokens seen at least ``min_freq`` times, most frequent first
        (ties in first-seen order, so the ids do not depend on hash seeds)."""
        min_freq = check_int(min_freq, "min_freq", minimum=1)
        counts = Counter(token for text in texts for token in tokenize(text))
        kept = [t for t, c in counts.most_common() if c >= min_freq]  # most_common is stable on ties
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, text) -> list[int]:
        """Ids of a text (tokenised) or of a list of tokens; unknown tokens give ``unk_id``."""
        tokens = tokenize(text) if isinstance(text, str) else list(text)
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids, skip_padding: bool = True) -> str:
        """Tokens of ``ids`` joined by spaces (padding left out unless asked for)."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if not 0 <= i < len(self.itos):
                raise IndexError(f"Vocabulary.decode: id {i} is outside 0..{len(self.itos) - 1}")
            if skip_padding and i == self.pad_id:
                continue
            out.append(self.itos[i])
        return " ".join(out)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"


def pad_sequences(sequences, max_len: int | None = None, pad_id: int = 0):
    """``(ids int64 (n, max_len), lengths int64 (n,))`` from lists of ids.

    Sequences are padded at the end with ``pad_id`` and cut at ``max_len`` (default: the
    longest); ``lengths`` are the unpadded lengths after cutting, which is what a
    recurrent model needs to pick each sequence's last real time step.
    """
    sequences = [list(s) for s in sequences]
    if not sequences:
        raise ValueError("pad_sequences: no sequences")
    longest = max(len(s) for s in sequences)
    max_len = longest if max_len is None else check_int(max_len, "max_len", minimum=1)
    ids = np.full((len(sequences), max_len), pad_id, dtype=np.int64)
    lengths = np.empty(len(sequences), dtype=np.int64)
    for row, seq in enumerate(sequences):
        seq = seq[:max_len]
        ids[row, :len(seq)] = seq
        lengths[row] = len(seq)
    return ids, lengths


_POSITIVE = ("good", "great", "excellent", "wonderful", "brilliant", "enjoyable", "superb", "charming")
_NEGATIVE = ("bad", "terrible", "awful", "boring", "dull", "poor", "dreadful", "clumsy")
_NOUNS = ("movie", "film", "plot", "acting", "story", "cast", "ending", "script", "soundtrack", "direction")
_INTENSIFIERS = ("very", "really", "quite", "truly")


@dataclass
class TextCorpus:
    """A labelled corpus: ``texts``, their padded ``ids``, ``lengths``, ``labels``, ``vocab``."""

    texts: list
    ids: np.ndarray      # (n, max_len) int64, padded with vocab.pad_id
    lengths: np.ndarray  # (n,) int64
    labels: np.ndarray   # (n,) int64: 1 positive, 0 negative
    vocab: Vocabulary


def make_sentiment_corpus(n_samples: int = 1000, max_len: int | None = None, seed: int | None = None) -> TextCorpus:
    """A tiny movie-review corpus whose labels depend on word order.

    Each review is built from clauses ``the <noun> was [not] [very] <adjective>`` with an
    adjective from a positive or a negative list. Label 1 is positive, 0 negative, and
    word order matters the way it does in real text:

    * ``not`` flips the clause (``the plot was not good`` is negative);
    * ``<clause A> but <clause B>`` takes B's sentiment, A having the opposite one;
    * ``<clause A> and <clause B>``: both clauses share the label.

    A bag-of-words model cannot separate "not good" from "good ... not bad" or tell which
    side of "but" counts; a recurrent model can. Returns a :class:`TextCorpus`; the
    vocabulary is built from the corpus (about 40 tokens).
    """
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    gen = _generator(seed)

    def clause(positive: bool) -> str:
        negate = gen.random() < 0.35
        # "not <negative word>" reads positive, so pick the adjective against the label.
        adjective_positive = positive != negate
        adjective = gen.choice(_POSITIVE if adjective_positive else _NEGATIVE)
        words = ["the", gen.choice(_NOUNS), "was"]
        if negate:
            words.append("not")
        if gen.random() < 0.4:
            words.append(gen.choice(_INTENSIFIERS))
        words.append(adjective)
        return " ".join(words)

    texts, labels = [], np.empty(n_samples, dtype=np.int64)
    for i in range(n_samples):
        positive = bool(gen.random() < 0.5)
        form = gen.random()
        if form < 0.4:
            text = clause(positive)
        elif form < 0.7:
            text = clause(not positive) + " but " + clause(positive)
        else:
            text = clause(positive) + " and " + clause(positive)
        texts.append(text)
        labels[i] = int(positive)
    vocab = Vocabulary.build(texts)
    ids, lengths = pad_sequences([vocab.encode(t) for t in texts], max_len=max_len, pad_id=vocab.pad_id)
    return TextCorpus(texts, ids, lengths, labels, vocab)


# ----------------------------------------------------------------------------- ratings


@dataclass
class RatingsData:
    """Observed entries of a low-rank ratings matrix, for collaborative filtering."""

    users: np.ndarray    # (n_observed,) int64 user ids
    items: np.ndarray    # (n_observed,) int64 item ids
    ratings: np.ndarray  # (n_observed,) float32 observed ratings (with noise)
    matrix: np.ndarray   # (n_users, n_items) float32 true ratings, noise-free
    user_factors: np.ndarray  # (n_users, rank) float32
    item_factors: np.ndarray  # (n_items, rank) float32
    global_mean: float


def make_ratings(n_users: int = 50, n_items: int = 40, rank: int = 3, density: float = 0.3, noise: float = 0.1,
                 global_mean: float = 3.0, seed: int | None = None) -> RatingsData:
    r"""A user x item ratings matrix of known low rank, observed at random entries.

    True ratings :math:`R = \mu + U V^\top` with :math:`U \in R^{users \times r}`,
    :math:`V \in R^{items \times r}`, entries normal with std :math:`r^{-1/4}` so that
    :math:`U V^\top` has unit variance per entry; :math:`\mu` = ``global_mean``. Each entry is observed
    independently with probability ``density`` (at least one entry per user and per
    item, so every embedding gets a gradient), as :math:`R_{ui} + N(0, \mathrm{noise}^2)`.
    A model ``rating = mu + <user_emb[u], item_emb[i]>`` with embedding size ``rank``
    can fit it to the noise level; the held-out entries of ``matrix`` measure how well it
    generalises.
    """
    n_users = check_int(n_users, "n_users", minimum=1)
    n_items = check_int(n_items, "n_items", minimum=1)
    rank = check_int(rank, "rank", minimum=1)
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    noise = _check_noise(noise)
    gen = _generator(seed)
    scale = rank ** -0.25  # each entry of U V^T is a sum of r products of variance scale^4
    U = scale * gen.standard_normal((n_users, rank))
    V = scale * gen.standard_normal((n_items, rank))
    matrix = float(global_mean) + U @ V.T
    observed = gen.random((n_users, n_items)) < density
    # Guarantee one observation per user and per item.
    observed[np.arange(n_users), gen.integers(0, n_items, n_users)] = True
    observed[gen.integers(0, n_users, n_items), np.arange(n_items)] = True
    users, items = np.nonzero(observed)
    order = gen.permutation(users.size)
    users, items = users[order].astype(np.int64), items[order].astype(np.int64)
    ratings = matrix[users, items] + noise * gen.standard_normal(users.size)
    return RatingsData(users, items, ratings.astype(np.float32), matrix.astype(np.float32), U.astype(np.float32),
                       V.astype(np.float32), float(global_mean))
