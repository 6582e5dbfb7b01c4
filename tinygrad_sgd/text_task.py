"""The CLI's text task (``tinygrad-sgd train --model lstm``): generated movie reviews whose
labels depend on word order (``tg.data.make_sentiment_corpus``), and the course's LSTM
sentiment classifier for them -- embedding, LSTM, dropout on the last hidden state, a
linear layer to the two classes.

Reviews are padded at the *front*, so the LSTM's last time step is each review's last
word and its final hidden state summarises the review (end padding would make the model
carry its answer through a run of padding steps). Token ids come from one fixed
vocabulary (:func:`vocabulary`), so a model trained on one draw of reviews reads any other.
"""

from __future__ import annotations

import functools

import numpy as np

from . import data, nn

REVIEWS = 2000  # the CLI's corpus: reviews drawn per run (train + validation + test)


class SentimentLSTM(nn.Module):
    """``ids (N, L) -> logits (N, classes)``: ``Embedding(padding_idx=0)``, a batch-first
    ``LSTM``, ``Dropout`` on the last layer's final hidden state, ``Linear``."""

    def __init__(self, vocab_size: int, embedding_dim: int = 32, hidden_size: int = 64, dropout: float = 0.5,
                 classes: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, classes)

    def forward(self, ids):
        _, (h_n, _) = self.lstm(self.embedding(ids))
        return self.fc(self.dropout(h_n[-1]))


def pad_front(ids: np.ndarray, lengths: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """End-padded ``ids`` (``pad_sequences``'s layout) moved to the end of each row, the
    padding in front: row ``[5, 7, 0, 0]`` of length 2 becomes ``[0, 0, 5, 7]``."""
    out = np.full_like(ids, pad_id)
    width = ids.shape[1]
    for row, length in enumerate(lengths.tolist()):
        out[row, width - length:] = ids[row, :length]
    return out


@functools.cache
def vocabulary() -> data.Vocabulary:
    """The reviews' vocabulary: every word the generator uses, in a fixed order (built from
    a large draw with a fixed seed; id 0 pads, id 1 stands for unknown words)."""
    return data.make_sentiment_corpus(4000, seed=0).vocab


def reviews(n_samples: int, seed: int):
    """``(ids, labels)``: ``n_samples`` generated reviews as front-padded int64 token ids
    of :func:`vocabulary`, and int64 labels (1 positive)."""
    corpus = data.make_sentiment_corpus(n_samples, seed=seed)
    vocab = vocabulary()
    ids, lengths = data.pad_sequences([vocab.encode(t) for t in corpus.texts], pad_id=vocab.pad_id)
    return pad_front(ids, lengths, vocab.pad_id), corpus.labels


def load_reviews(n_samples: int = 2000, test_fraction: float = 0.2, seed: int = 0):
    """``((x_train, y_train), (x_test, y_test), vocab_size)``: :func:`reviews` split with
    each class's share kept."""
    ids, labels = reviews(n_samples, seed)
    x_train, x_test, y_train, y_test = data.train_test_split(ids, labels, test_size=test_fraction, seed=seed,
                                                             stratify=labels)
    return (x_train, y_train), (x_test, y_test), len(vocabulary())


def run_data(args):
    """The CLI's :class:`~tinygrad_sgd.rundata.RunData` for ``--model lstm``: generated
    reviews split into train / validation / test as ``--test-fraction``,
    ``--val-fraction`` and ``--seed`` say. The inputs are token ids (layout ``tokens``:
    not normalised)."""
    from .rundata import DataError, RunData

    if args.data is not None:
        raise DataError("--model lstm trains on generated movie reviews and takes no --data")
    ids, labels = reviews(REVIEWS, args.seed)
    x, x_test, y, y_test = data.train_test_split(ids, labels, test_size=args.test_fraction, seed=args.seed,
                                                 stratify=labels)
    x_val = y_val = None
    if args.val_fraction > 0:
        x, x_val, y, y_val = data.train_test_split(x, y, test_size=args.val_fraction, seed=args.seed + 1, stratify=y)
    spec = {"source": "generated reviews", "task": "classification", "classes": [0, 1], "layout": "tokens",
            "input_shape": [ids.shape[1]], "feature_names": None, "target": None,
            "model": {"model": "lstm", "hidden": args.hidden, "dropout": args.dropout}}
    return RunData(x, y, x_val, y_val, x_test, y_test, spec, "generated movie reviews (0 negative, 1 positive)")
