"""The CLI's text task (``tinygrad-sgd train --model lstm``): generated movie reviews whose
labels depend on word order (``tg.data.make_sentiment_corpus``), and the course's LSTM
sentiment classifier for them -- embedding, LSTM, dropout on the last hidden state, a
linear layer to the two classes.

Reviews are padded at the *front*, so the LSTM's last time step is each review's last
word and its final hidden state summarises the review (end padding would make the model
carry its answer through a run of padding steps).
"""

from __future__ import annotations

import numpy as np

from . import data, nn


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


def load_reviews(n_samples: int = 2000, test_fraction: float = 0.2, seed: int = 0):
    """``((x_train, y_train), (x_test, y_test), vocab_size)``: front-padded int64 token
    ids and int64 labels (1 positive), split with each class's share kept."""
    corpus = data.make_sentiment_corpus(n_samples, seed=seed)
    ids = pad_front(corpus.ids, corpus.lengths, corpus.vocab.pad_id)
    x_train, x_test, y_train, y_test = data.train_test_split(ids, corpus.labels, test_size=test_fraction, seed=seed,
                                                             stratify=corpus.labels)
    return (x_train, y_train), (x_test, y_test), len(corpus.vocab)
