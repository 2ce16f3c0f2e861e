"""`tg.nn.init`: PyTorch's initialisers. Each fills a tensor's `.data` in place (same array, same
dtype), draws from the library's generator (`tg.manual_seed`) and returns the tensor."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..engine import written
from ..errors import DTypeError, ShapeError
from ..random import rng
from ..tensor import Tensor

__all__ = [
    "calculate_gain", "constant_", "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_",
    "orthogonal_", "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_",
]

_LINEAR_FNS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity: 1 (linear, conv*, sigmoid), 5/3 (tanh), sqrt(2)
    (relu), sqrt(2 / (1 + slope^2)) (leaky_relu, slope `param`, default 0.01), 3/4 (selu)."""
    if nonlinearity in _LINEAR_FNS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param  # bool is an int: True is no slope (as PyTorch)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; use one of "
                     f"{', '.join(_LINEAR_FNS)}, tanh, relu, leaky_relu, selu")


def _calculate_fan_in_and_fan_out(tensor: Any, fn: str = "_calculate_fan_in_and_fan_out"
                                  ) -> tuple[int, int]:
    """(fan_in, fan_out) = (size(1), size(0)) times the receptive field (product of dims 2..)."""
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise ShapeError(f"{fn}: fan in and fan out can not be computed for a tensor with fewer "
                         f"than 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _calculate_correct_fan(tensor: Any, mode: str, fn: str) -> int:
    mode = mode.lower() if isinstance(mode, str) else mode
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{fn}: mode {mode!r} not supported, use 'fan_in' or 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor, fn)
    return fan_in if mode == "fan_in" else fan_out


def _target(t: Any, fn: str, random: bool = True) -> np.ndarray:
    """The array to fill; a random fill needs floating-point data."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: expects a Tensor or Parameter, got {type(t).__name__}")
    if random and t.data.dtype.kind != "f":
        raise DTypeError(f"{fn}: needs a floating-point tensor, got dtype {t.data.dtype}")
    return t.data


def _fill(t: Tensor, values: Any) -> Tensor:
    # in place, so optimizers and other holders of the array see the new values; numpy casts
    # the float64 draws to the tensor's dtype
    t.data[...] = values
    written(t.data)  # a record that saved the old values must not backpropagate with these
    return t


def uniform_(t: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill with draws from U(a, b)."""
    arr = _target(t, "uniform_")
    if a > b:
        raise ValueError(f"uniform_: needs a <= b, got a={a}, b={b}")
    return _fill(t, rng().uniform(a, b, arr.shape))


def normal_(t: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with draws from N(mean, std^2)."""
    arr = _target(t, "normal_")
    if std < 0:
        raise ValueError(f"normal_: needs std >= 0, got {std}")
    return _fill(t, rng().normal(mean, std, arr.shape))


def constant_(t: Tensor, val: float) -> Tensor:
    """Fill with `val`."""
    _target(t, "constant_", random=False)
    return _fill(t, val)


def zeros_(t: Tensor) -> Tensor:
    """Fill with 0."""
    _target(t, "zeros_", random=False)
    return _fill(t, 0)


def ones_(t: Tensor) -> Tensor:
    """Fill with 1."""
    _target(t, "ones_", random=False)
    return _fill(t, 1)


def _xavier_std(t: Tensor, gain: float, fn: str) -> float:
    fan_in, fan_out = _calculate_fan_in_and_fan_out(_target(t, fn), fn)
    return gain * math.sqrt(2.0 / float(fan_in + fan_out))


def xavier_uniform_(t: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    bound = math.sqrt(3.0) * _xavier_std(t, gain, "xavier_uniform_")
    return _fill(t, rng().uniform(-bound, bound, t.shape))


def xavier_normal_(t: Tensor, gain: float = 1.0) -> Tensor:
    """Glorot: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    return _fill(t, rng().normal(0.0, _xavier_std(t, gain, "xavier_normal_"), t.shape))


def _kaiming_std(t: Tensor, a: float, mode: str, nonlinearity: str, fn: str) -> float | None:
    """gain / sqrt(fan), or None for a zero-element tensor (nothing to fill, as PyTorch)."""
    arr = _target(t, fn)
    if arr.size == 0:
        warnings.warn(f"{fn}: initializing a zero-element tensor is a no-op", stacklevel=3)
        return None
    fan = _calculate_correct_fan(arr, mode, fn)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(t: Tensor, a: float = 0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """He: U(-bound, bound) with bound = sqrt(3) * gain / sqrt(fan); `a` is leaky_relu's slope."""
    std = _kaiming_std(t, a, mode, nonlinearity, "kaiming_uniform_")
    if std is None:
        return t
    bound = math.sqrt(3.0) * std
    return _fill(t, rng().uniform(-bound, bound, t.shape))


def kaiming_normal_(t: Tensor, a: float = 0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> Tensor:
    """He: N(0, std^2) with std = gain / sqrt(fan); `a` is leaky_relu's slope."""
    std = _kaiming_std(t, a, mode, nonlinearity, "kaiming_normal_")
    if std is None:
        return t
    return _fill(t, rng().normal(0.0, std, t.shape))


def orthogonal_(t: Tensor, gain: float = 1) -> Tensor:
    """A (semi-)orthogonal matrix times `gain`, dims 1.. flattened (Saxe et al. 2013): Q of the
    QR of a normal (rows, cols) matrix, taken on its transpose when rows < cols."""
    arr = _target(t, "orthogonal_")
    if arr.ndim < 2:
        raise ShapeError(f"orthogonal_: needs a tensor with 2 or more dimensions, got shape "
                         f"{arr.shape}")
    if arr.size == 0:
        return t
    rows = arr.shape[0]
    cols = arr.size // rows
    flat = rng().standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    # signs of R's diagonal make Q uniform over the orthogonal group (Mezzadri 2007)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(t, (gain * q).reshape(arr.shape))
