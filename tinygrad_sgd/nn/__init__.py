"""Neural-network layers, losses, initialisation and utilities (``tg.nn``).

PyTorch's names, argument names, parameter shapes and default initialisations, so a
state dict copied from a torch module gives the same outputs and gradients::

    model = tg.nn.Sequential(tg.nn.Conv2d(1, 8, 3, padding=1), tg.nn.ReLU(), tg.nn.MaxPool2d(2),
                             tg.nn.Flatten(), tg.nn.Linear(8 * 14 * 14, 10))
    loss = tg.nn.CrossEntropyLoss()(model(x), y)
"""

from . import functional, init, parallel, utils
from .conv import AvgPool2d, Conv2d, MaxPool2d
from .layers import (GELU, Dropout, Embedding, Flatten, Identity, LeakyReLU, Linear, LogSoftmax, ReLU, Sigmoid,
                     SiLU, Softmax, Softplus, Tanh)
from .losses import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss, NLLLoss,
                     SmoothL1Loss)
from .module import Module, ModuleList, Parameter, Sequential
from .normalization import BatchNorm1d, BatchNorm2d
from .recurrent import GRU, LSTM, RNN, RNNBase

__all__ = [
    "functional", "init", "parallel", "utils", "Module", "Parameter", "Sequential", "ModuleList", "Identity", "Flatten",
    "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "Embedding", "RNNBase",
    "RNN", "LSTM", "GRU", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "SiLU", "Softplus", "GELU", "Softmax",
    "LogSoftmax", "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss",
    "BCEWithLogitsLoss", "BCELoss",
]
