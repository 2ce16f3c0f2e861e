"""As `torch.nn.utils`: gradient clipping (both functions change `.grad` in place), and `rnn`
(padding and packing variable-length batches)."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ...errors import NonFiniteNormError
from ...tensor import Tensor
from . import rnn

__all__ = ["NonFiniteNormError", "clip_grad_norm_", "clip_grad_value_", "rnn"]


def _grads(params: Tensor | Iterable[Tensor], fn: str) -> list[np.ndarray]:
    """The non-None `.grad` arrays of a Tensor or an iterable of Tensors."""
    ps = [params] if isinstance(params, Tensor) else list(params)
    for i, p in enumerate(ps):
        if not isinstance(p, Tensor):
            raise TypeError(f"{fn}: expected a Tensor or an iterable of Tensors, item {i} is a "
                            f"{type(p).__name__}")
    return [p.grad for p in ps if p.grad is not None]


def _norm(g: np.ndarray, norm_type: float) -> float:
    """The norm of one gradient as a flat vector, computed in float64 (a float32 sum of squares
    overflows at |g| ~ 1e19 although the norm itself is representable)."""
    a = g.astype(np.float64, copy=False).ravel()
    if a.size == 0:
        return 0.0
    if norm_type == 2.0:  # squares need no abs: one pass over a copy fewer
        with np.errstate(over="ignore"):
            sq = float(np.dot(a, a))
        if sq == math.inf and np.isfinite(a).all():  # overflow of the squares: rescale
            m = float(np.abs(a).max())
            return m * math.sqrt(float(np.dot(a / m, a / m)))
        return math.sqrt(sq)
    a = np.abs(a)
    if norm_type == math.inf:
        return float(a.max())
    if norm_type == 1.0:
        return float(a.sum())
    return float((a ** norm_type).sum() ** (1.0 / norm_type))


def clip_grad_norm_(params: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = True) -> float:
    """Scale all gradients together so that their total norm is at most `max_norm`.

    The total norm is that of all gradients concatenated into one vector (`norm_type` p > 0 or
    `float('inf')`); when it exceeds max_norm every `.grad` is multiplied in place by
    max_norm / (total + 1e-6), as PyTorch. Gradients that are None are skipped. Returns the total
    norm before clipping, as a Python float (0.0 if there are no gradients).

    If the total norm is nan or inf this raises `NonFiniteNormError` (a RuntimeError) and leaves
    every gradient untouched, instead of writing nan/0 into all of them (PyTorch's default).
    Pass error_if_nonfinite=False to get PyTorch's default behaviour.
    """
    fn = "clip_grad_norm_"
    norm_type = float(norm_type)
    if not (norm_type > 0):  # also rejects nan
        raise ValueError(f"{fn}: norm_type must be > 0 or float('inf'), got {norm_type}")
    max_norm = float(max_norm)
    if not (max_norm >= 0):
        raise ValueError(f"{fn}: max_norm must be >= 0, got {max_norm}")
    grads = _grads(params, fn)
    if not grads:
        return 0.0
    norms = [_norm(g, norm_type) for g in grads]
    if norm_type == math.inf:
        total = float(np.max(norms))  # builtin max() would drop a nan
    elif norm_type == 2.0:
        total = math.hypot(*norms) if not any(map(math.isnan, norms)) else math.nan
    else:
        total = math.fsum(n ** norm_type for n in norms) ** (1.0 / norm_type)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise NonFiniteNormError(
                f"{fn}: the total {norm_type}-norm of the gradients of {len(grads)} parameters "
                f"is {total}, so they hold nan or inf (or overflow); the gradients were left "
                f"unchanged. Lower the learning rate, check the loss with tg.detect_anomaly(), "
                f"or pass error_if_nonfinite=False to scale them anyway (as PyTorch)")
        coef = max_norm / (total + 1e-6)  # nan or 0, exactly what PyTorch multiplies by
        with np.errstate(invalid="ignore"):  # inf * 0 = nan is the documented outcome
            for g in grads:
                np.multiply(g, coef, out=g, casting="unsafe")
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            # a Python float keeps float32 grads float32
            np.multiply(g, coef, out=g, casting="unsafe")
    return total


def clip_grad_value_(params: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clip every gradient element to [-clip_value, clip_value] in place (None grads skipped)."""
    clip_value = float(clip_value)
    if not (clip_value >= 0):
        raise ValueError(f"clip_grad_value_: clip_value must be >= 0, got {clip_value}")
    for g in _grads(params, "clip_grad_value_"):
        np.clip(g, -clip_value, clip_value, out=g, casting="unsafe")
