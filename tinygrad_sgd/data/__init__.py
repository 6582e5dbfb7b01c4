"""Datasets, DataLoader, samplers and batch-size schedules (tg.data).

    import tinygrad_sgd as tg
    (X_train, y_train), (X_test, y_test) = tg.data.load_digits(split=0.2)
    loader = tg.data.DataLoader(tg.data.TensorDataset(X_train, y_train), batch_size=32,
                                shuffle=True, seed=0)
    for epoch in range(10):
        for xb, yb in loader:        # Tensors; a fresh permutation every epoch
            ...

Modules: ``dataset`` (Dataset, TensorDataset, Subset, random_split), ``sampler``,
``dataloader``, ``batch_schedule`` (batch-size schedules and the linear LR-scaling rule),
``datasets`` (the bundled digits, train_test_split), ``formats`` (MNIST IDX, CIFAR-10
binary readers for files you download), ``synthetic`` (generators with known ground
truth), ``transforms`` (Normalize), ``memmap`` (MemmapDataset for data larger than RAM).
"""

from .batch_schedule import (BatchSizeSchedule, ConstantBatchSize, LinearWarmupBatchSize, StepBatchSize,
                             linear_scaled_lr)
from .dataloader import DataLoader
from .dataset import ArrayDataset, Dataset, Subset, TensorDataset, default_collate, random_split
from .datasets import load_digits, train_test_split
from .formats import CIFAR10_CLASSES, load_cifar10, load_fashion_mnist, load_mnist, read_cifar10_batch, read_idx
from .memmap import MemmapDataset
from .sampler import DistributedSampler, RandomSampler, Sampler, SequentialSampler, WeightedRandomSampler
from .synthetic import (LinearRegressionData, RatingsData, TextCorpus, Vocabulary, make_linear_regression,
                        make_moons, make_ratings, make_sentiment_corpus, make_spirals, pad_sequences, tokenize)
from .transforms import Normalize

__all__ = [
    "Dataset", "TensorDataset", "ArrayDataset", "Subset", "random_split", "default_collate", "DataLoader",
    "Sampler", "SequentialSampler", "RandomSampler", "WeightedRandomSampler", "DistributedSampler",
    "BatchSizeSchedule", "ConstantBatchSize", "LinearWarmupBatchSize", "StepBatchSize", "linear_scaled_lr",
    "load_digits", "train_test_split", "read_idx", "load_mnist", "load_fashion_mnist", "read_cifar10_batch",
    "load_cifar10", "CIFAR10_CLASSES", "make_linear_regression", "make_moons", "make_spirals",
    "make_sentiment_corpus", "make_ratings", "Vocabulary", "tokenize", "pad_sequences", "TextCorpus",
    "LinearRegressionData", "RatingsData", "Normalize", "MemmapDataset",
]
