"""Layers (`tg.nn`): modules, the built-in cells and sequence layers, and `unroll` for custom
cells. Names, shapes, gate order and initialisation follow PyTorch."""

from . import functional, init, utils
from .layers import AdditiveAttention, DotProductAttention, Dropout, Embedding, LayerNorm, Linear
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, Recurrent, RNNCell, unroll

__all__ = [
    "AdditiveAttention", "BCEWithLogitsLoss", "CrossEntropyLoss", "DotProductAttention", "Dropout",
    "Embedding", "GRU", "GRUCell", "LSTM", "LSTMCell", "LayerNorm", "Linear", "MSELoss", "Module",
    "ModuleDict", "ModuleList", "NLLLoss", "Parameter", "RNN", "RNNCell", "Recurrent",
    "Sequential", "functional", "init", "unroll", "utils",
]
