"""The CLI's text task: front padding, the split, and an LSTM that learns the reviews."""

import numpy as np

import tinygrad_sgd as tg
from tinygrad_sgd import text_task


def test_pad_front_moves_the_padding_before_each_review():
    ids = np.array([[5, 7, 0, 0], [1, 2, 3, 4], [9, 0, 0, 0]])
    out = text_task.pad_front(ids, np.array([2, 4, 1]))
    np.testing.assert_array_equal(out, [[0, 0, 5, 7], [1, 2, 3, 4], [0, 0, 0, 9]])


def test_load_reviews_splits_front_padded_ids_keeping_class_shares():
    (x_train, y_train), (x_test, y_test), vocab_size = text_task.load_reviews(200, 0.25, seed=3)
    assert x_train.shape[0] == 150 and x_test.shape[0] == 50 and x_train.dtype == np.int64
    assert abs(y_train.mean() - y_test.mean()) < 0.05
    assert (x_train[:, -1] != 0).all()  # every review ends at the last step
    assert 0 < x_train.max() < vocab_size


def test_sentiment_lstm_learns_the_generated_reviews():
    tg.manual_seed(0)
    (x_train, y_train), (x_test, y_test), vocab_size = text_task.load_reviews(600, 0.25, seed=0)
    model = text_task.SentimentLSTM(vocab_size, embedding_dim=16, hidden_size=24)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x_train, y_train), batch_size=32, shuffle=True, seed=0)
    test_loader = tg.data.DataLoader(tg.data.TensorDataset(x_test, y_test), batch_size=256)
    tg.train.fit(model, tg.nn.CrossEntropyLoss(), tg.optim.Adam(model.parameters(), lr=0.01), loader, epochs=4,
                 progress=False)
    assert tg.train.evaluate(model, test_loader, tg.nn.CrossEntropyLoss(), ("accuracy",))["accuracy"] >= 0.9
