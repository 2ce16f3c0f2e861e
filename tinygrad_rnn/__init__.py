"""tinygrad_rnn: a small reverse-mode autodiff engine on numpy, built for recurrent networks."""

import numpy as np

from .tensor import Tensor, from_numpy, tensor
from .mode import detect_anomaly, enable_grad, is_grad_enabled, no_grad
from .errors import AnomalyError, DTypeError, GraphError, ShapeError
from .ops import (
    abs, addcmul, argmax, argmin, chunk, clip, concat, detach, exp, flatten, gates, lerp, linear,
    log, logsumexp, matmul, max, maximum, mean, pow, relu, reshape, sigmoid, split, sqrt, squeeze,
    stack, sum, swapaxes, tanh, transpose, unbind, unsqueeze, where,
)
from .primitive import Primitive
from .checkpoint import checkpoint
from .random import manual_seed
from . import bptt, diagnostics, nn, optim, scan, testing
from .io import load, save

default_dtype = np.float32
cat = concat

__version__ = "0.1.0"
