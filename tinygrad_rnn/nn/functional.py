"""Losses and functional layers, composed from the public primitives (no backward of their own).

Every function here is a few lines of `tg` operations, so its gradient comes from the tape and a
user could have written it. Conventions: float32 in -> float32 out (constants take the input's
dtype); targets may be numpy arrays or Tensors; a loss never broadcasts a target silently; errors
name the function, what it expected and what it got.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import ops
from ..errors import DTypeError, ShapeError
from ..ops import relu, sigmoid, tanh
from ..random import rng
from ..tensor import Tensor

__all__ = [
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "dropout",
    "layer_norm", "linear", "log_softmax", "mse_loss", "relu", "sigmoid", "softmax", "tanh",
]

_REDUCTIONS = ("mean", "sum", "none")


class TargetIndexError(IndexError, ValueError):
    """A class index outside [0, C) in `cross_entropy` (catchable as IndexError or ValueError)."""


# ----------------------------------------------------------------------------- helpers
def _float_tensor(x: Any, fn: str, arg: str) -> Tensor:
    """`x` as a floating-point Tensor (arrays keep their dtype, lists get the default dtype)."""
    t = x if isinstance(x, Tensor) else Tensor(x)
    if t.dtype.kind != "f":
        raise DTypeError(f"{fn}: {arg} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _operand(v: Any, like: Tensor, fn: str, arg: str) -> Tensor:
    """A parameter-like operand (weight, bias): Tensors as given, arrays in `like`'s dtype."""
    if isinstance(v, Tensor):
        return _float_tensor(v, fn, arg)
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiub":
        raise DTypeError(f"{fn}: {arg} must be numeric, got dtype {arr.dtype}")
    return Tensor(arr.astype(like.dtype, copy=False))


def _target(target: Any, like: Tensor, fn: str) -> Tensor:
    """A float target as a Tensor with exactly `like`'s shape. Tensors are used as they are (so
    a target may itself require grad); arrays and lists take `like`'s dtype (no upcast)."""
    if isinstance(target, Tensor) and target.requires_grad:
        t = target  # the gradient must reach it, so it is used exactly as given
    else:
        arr = np.asarray(target.data if isinstance(target, Tensor) else target)
        if arr.dtype.kind not in "fiub":
            raise DTypeError(f"{fn}: target must be numeric, got dtype {arr.dtype}")
        t = Tensor(arr.astype(like.dtype, copy=False))
    if t.shape != like.shape:
        raise ShapeError(f"{fn}: input shape {like.shape} and target shape {t.shape} differ; "
                         f"they must be equal (targets are never broadcast: reshape the target)")
    return t


def _check_reduction(reduction: str, fn: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of 'mean', 'sum', 'none', "
                         f"got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _axis(axis: int, ndim: int, fn: str) -> int:
    if not isinstance(axis, (int, np.integer)) or not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ShapeError(f"{fn}: axis must be an int in [-{ndim}, {ndim}) for a tensor with "
                         f"{ndim} dims, got {axis!r}")
    return int(axis)


# ----------------------------------------------------------------------------- activations
def softmax(x: Any, axis: int = -1) -> Tensor:
    """exp(log_softmax(x, axis)): rows sum to 1, finite for inputs of any size."""
    x = _float_tensor(x, "softmax", "x")
    return ops.exp(log_softmax(x, _axis(axis, x.ndim, "softmax")))


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    """x - logsumexp(x, axis), stable for large inputs (never log of an underflowed softmax).

    Computed as z - logsumexp(z) with z = x - max(x): subtracting the row maximum first is exact
    near the maximum, where x - logsumexp(x) would lose the digits of a large |x| (1e4 in
    float32). The maximum is a constant: log_softmax does not change when x shifts, so its
    gradient is unaffected."""
    x = _float_tensor(x, "log_softmax", "x")
    axis = _axis(axis, x.ndim, "log_softmax")
    m = x.data.max(axis=axis, keepdims=True) if x.size else np.zeros((), x.dtype)
    m = np.where(np.isfinite(m), m, x.dtype.type(0))  # an all -inf row: shift by 0, not nan
    z = x - Tensor(m)
    return z - ops.logsumexp(z, axis=axis, keepdims=True)


def linear(x: Any, weight: Any, bias: Any = None) -> Tensor:
    """x @ weight.T + bias, with x (..., in), weight (out, in), bias (out,)."""
    x = _float_tensor(x, "linear", "x")
    weight = _operand(weight, x, "linear", "weight")
    if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear: expected x (..., in) and weight (out, in) with matching "
                         f"'in', got x {x.shape} and weight {weight.shape}")
    if bias is not None:
        bias = _operand(bias, x, "linear", "bias")
        if bias.shape != (weight.shape[0],):
            raise ShapeError(f"linear: expected bias of shape ({weight.shape[0]},) for weight "
                             f"{weight.shape}, got {bias.shape}")
    return ops.linear(x, weight, bias)


# ----------------------------------------------------------------------------- losses
def mse_loss(pred: Any, target: Any, reduction: str = "mean") -> Tensor:
    """(pred - target)^2, reduced by 'mean' (over all elements), 'sum' or 'none'.

    pred and target must have the same shape (no broadcasting)."""
    _check_reduction(reduction, "mse_loss")
    pred = _float_tensor(pred, "mse_loss", "pred")
    diff = pred - _target(target, pred, "mse_loss")
    return _reduce(diff * diff, reduction)


def cross_entropy(logits: Any, target: Any, reduction: str = "mean",
                  ignore_index: int = -100) -> Tensor:
    """-log_softmax(logits)[n, target[n]] for logits (N, C) and integer class targets (N,).

    Only 2-d logits are accepted (flatten a sequence first: `logits.reshape(-1, C)`). Targets
    equal to `ignore_index` contribute 0 and are left out of the mean, as in PyTorch (a mean over
    no targets is nan)."""
    fn = "cross_entropy"
    _check_reduction(reduction, fn)
    logits = _float_tensor(logits, fn, "logits")
    if logits.ndim != 2:
        raise ShapeError(f"{fn}: expected logits of shape (N, C), got shape {logits.shape}; only "
                         f"2-d logits are supported (use logits.reshape(-1, C) and "
                         f"target.reshape(-1) for a sequence)")
    n, c = logits.shape
    tgt = np.asarray(target.data if isinstance(target, Tensor) else target)
    if tgt.size == 0 and not isinstance(target, (Tensor, np.ndarray)):
        tgt = tgt.astype(np.int64)  # an empty list: np.asarray([]) would be float
    if tgt.dtype.kind not in "iu":
        raise DTypeError(f"{fn}: target must hold integer class indices, got dtype {tgt.dtype} "
                         f"(use binary_cross_entropy or mse_loss for float targets)")
    if tgt.shape != (n,):
        raise ShapeError(f"{fn}: expected target of shape ({n},) for logits {logits.shape}, "
                         f"got {tgt.shape}")
    keep = tgt != ignore_index
    bad = keep & ((tgt < 0) | (tgt >= c))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TargetIndexError(f"{fn}: target[{i}] = {int(tgt[i])} is out of range for {c} "
                               f"classes (expected 0 <= target < {c}, or ignore_index="
                               f"{ignore_index})")
    picked = log_softmax(logits, axis=1)[np.arange(n), np.where(keep, tgt, 0)]
    # `where`, not a multiply by the mask: ignored rows give exactly 0 even if they hold inf
    loss = ops.where(keep, -picked, 0.0)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    count = int(keep.sum())
    if count == 0:  # as PyTorch: a nan loss (0/0) whose gradients are zeros, not nan
        return total + float("nan")
    return total / float(count)


_LOG_FLOOR = -100.0  # PyTorch clamps log(p) here, so p = 0 or 1 gives a finite loss


def _clamped_log(p: Tensor) -> Tensor:
    """max(log(p), -100), with no log(0) in the forward and no 0/0 in the backward."""
    pos = p.data > 0
    safe = ops.where(pos, p, 1.0)  # log(1) = 0 stands in where p = 0; its gradient is unused
    return ops.where(pos, ops.clip(ops.log(safe), lo=_LOG_FLOOR), _LOG_FLOOR)


def binary_cross_entropy(probs: Any, target: Any, reduction: str = "mean") -> Tensor:
    """-(t log p + (1 - t) log(1 - p)) with each log clamped to >= -100 (as PyTorch).

    probs must lie in [0, 1] and have the target's shape. Where a clamp is active (p = 0 or 1,
    or p within e^-100 of them) that log contributes no gradient (PyTorch's own backward uses
    (p - t) / max(p (1 - p), 1e-12) there). Prefer `binary_cross_entropy_with_logits`, which is
    exact for saturated probabilities."""
    fn = "binary_cross_entropy"
    _check_reduction(reduction, fn)
    probs = _float_tensor(probs, fn, "probs")
    t = _target(target, probs, fn)
    p = probs.data
    if p.size and not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"{fn}: every element of probs must lie in [0, 1], found values in "
                         f"[{np.nanmin(p)}, {np.nanmax(p)}]"
                         + (" and nan" if np.isnan(p).any() else "")
                         + " (pass logits to binary_cross_entropy_with_logits instead?)")
    loss = -(t * _clamped_log(probs) + (1.0 - t) * _clamped_log(1.0 - probs))
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(logits: Any, target: Any, reduction: str = "mean") -> Tensor:
    """BCE of sigmoid(logits) computed stably: max(x, 0) - x t + log(1 + exp(-|x|)).

    Finite for any finite logit; the gradient is sigmoid(x) - t everywhere (the tie rule of
    `maximum` gives the correct 1/2 at x = 0)."""
    fn = "binary_cross_entropy_with_logits"
    _check_reduction(reduction, fn)
    x = _float_tensor(logits, fn, "logits")
    t = _target(target, x, fn)
    loss = ops.maximum(x, 0.0) - x * t + ops.log(1.0 + ops.exp(-ops.abs(x)))
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------- layers
def layer_norm(x: Any, normalized_shape: int | Sequence[int], weight: Any = None,
               bias: Any = None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing `normalized_shape` axes.

    The variance is the biased one (divide by n), as PyTorch."""
    fn = "layer_norm"
    x = _float_tensor(x, fn, "x")
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or x.shape[x.ndim - k:] != shape:
        raise ShapeError(f"{fn}: normalized_shape {shape} must match the trailing dims of the "
                         f"input, got input of shape {x.shape}")
    axes = tuple(range(-k, 0))
    centred = x - x.mean(axis=axes, keepdims=True)
    var = (centred * centred).mean(axis=axes, keepdims=True)
    y = centred / ops.sqrt(var + float(eps))
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        p = _operand(p, x, fn, name)
        if p.shape != shape:
            raise ShapeError(f"{fn}: {name} must have shape normalized_shape {shape}, "
                             f"got {p.shape}")
        y = y * p if name == "weight" else y + p
    return y


def dropout(x: Any, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p).

    The mask comes from the library RNG (`tg.manual_seed`). With training=False or p=0 the input
    itself is returned; p=1 gives zeros."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    x = _float_tensor(x, "dropout", "x")
    if not training or p == 0:
        return x
    keep = rng().random(x.shape) >= p
    scale = np.zeros(x.shape, dtype=x.dtype)
    if p < 1:
        scale[keep] = 1.0 / (1.0 - float(p))
    return x * scale
