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
from ..errors import DTypeError, ShapeError, TargetIndexError
from ..ops import relu, sigmoid, tanh
from ..random import rng
from ..tensor import Tensor, _numeric, dim_alias

__all__ = [
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "dropout",
    "layer_norm", "linear", "log_softmax", "mse_loss", "nll_loss", "relu", "sigmoid", "softmax",
    "tanh",
]

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------- helpers
def _float_tensor(x: Any, fn: str, arg: str) -> Tensor:
    """`x` as a floating-point Tensor (arrays keep their dtype and are not copied: an input is
    only read; lists get the default dtype)."""
    t = x if isinstance(x, Tensor) else _constant(_numeric(x, fn, arg=arg))
    if t.dtype.kind != "f":
        raise DTypeError(f"{fn}: {arg} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _constant(arr: Any) -> Tensor:
    """A Tensor around a numeric array made here or given as an input, not copied: it is only
    read (Tensor(arr) would copy it at every call)."""
    return Tensor._from_op(np.asarray(arr), None)


def _operand(v: Any, like: Tensor, fn: str, arg: str) -> Tensor:
    """A parameter-like operand (weight, bias): Tensors as given, arrays in `like`'s dtype."""
    if isinstance(v, Tensor):
        return _float_tensor(v, fn, arg)
    return _constant(_numeric(v, fn, like.dtype, arg=arg))


def _target(target: Any, like: Tensor, fn: str) -> Tensor:
    """A float target as a Tensor with exactly `like`'s shape. Tensors are used as they are (so
    a target may itself require grad); arrays and lists take `like`'s dtype (no upcast)."""
    if isinstance(target, Tensor) and target.requires_grad:
        t = target  # the gradient must reach it, so it is used exactly as given
    else:
        t = _constant(_numeric(target, fn, like.dtype, arg="target"))
    if t.shape != like.shape:
        raise ShapeError(f"{fn}: input shape {like.shape} and target shape {t.shape} differ; "
                         f"they must be equal (targets are never broadcast: reshape the target)")
    return t


def _check_reduction(reduction: str, fn: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of 'mean', 'sum', 'none', "
                         f"got {reduction!r}")


def _check_label_smoothing(label_smoothing: Any, fn: str) -> None:
    if isinstance(label_smoothing, bool) or \
            not isinstance(label_smoothing, (int, float, np.integer, np.floating)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be a number in [0, 1], got "
                         f"{label_smoothing!r}")


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
@dim_alias
def softmax(x: Any, axis: int = -1) -> Tensor:
    """exp(log_softmax(x, axis)): rows sum to 1, finite for inputs of any size."""
    x = _float_tensor(x, "softmax", "x")
    return ops.exp(log_softmax(x, _axis(axis, x.ndim, "softmax")))


@dim_alias
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
    z = x - _constant(m)
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


class _ClassTargets:
    """Integer class targets checked against input (N, C, d1, ...) or (C,): the index that picks
    each target's entry (ignored targets pick class 0), the mask of kept targets and, with class
    weights, each target's weight. Shared by nll_loss and cross_entropy."""

    def __init__(self, x: Tensor, target: Any, weight: Any, ignore_index: int, fn: str,
                 arg: str) -> None:
        if x.ndim == 0:
            raise ShapeError(f"{fn}: expected {arg} of shape (N, C, ...) or (C,), got a 0-d "
                             f"tensor")
        self.axis = 1 if x.ndim > 1 else 0  # the class axis, as PyTorch
        c = self.classes = x.shape[self.axis]
        tgt = np.asarray(target.data if isinstance(target, Tensor) else target)
        if tgt.size == 0 and not isinstance(target, (Tensor, np.ndarray)):
            tgt = tgt.astype(np.int64)  # an empty list: np.asarray([]) would be float
        if tgt.dtype.kind not in "iu":
            raise DTypeError(f"{fn}: target must hold integer class indices, got dtype "
                             f"{tgt.dtype} (use binary_cross_entropy or mse_loss for float "
                             f"targets)")
        want = x.shape[:1] + x.shape[2:] if x.ndim > 1 else ()
        if tgt.shape != want:
            hint = (f" (the class axis is 1, as PyTorch: for {arg} (..., C) pass "
                    f"{arg}.reshape(-1, C) and target.reshape(-1))" if x.ndim > 2 else "")
            raise ShapeError(f"{fn}: expected target of shape {want} for {arg} {x.shape}{hint}, "
                             f"got {tgt.shape}")
        keep = self.keep = tgt != ignore_index
        bad = keep & ((tgt < 0) | (tgt >= c))
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            at = f"target[{', '.join(map(str, i))}]" if i else "target"
            raise TargetIndexError(f"{fn}: {at} = {int(tgt[i])} is out of range for {c} classes "
                                   f"(expected 0 <= target < {c}, or ignore_index="
                                   f"{ignore_index})")
        safe = np.where(keep, tgt, 0)
        if x.ndim == 1:
            self.index: Any = (safe,)
        else:  # (arange(N), target, arange(d1), ...), broadcast against each other
            grid = np.indices(tgt.shape, sparse=True)
            self.index = (grid[0], safe, *grid[1:])  # type: ignore[misc]
        self.weight = None if weight is None else _class_weights(weight, c, x.dtype, fn)
        self.picked_weight = None if self.weight is None else self.weight[safe]

    def nll(self, log_probs: Tensor) -> Tensor:
        """-weight[t] log_probs[t] per target (target-shaped); exactly 0 where ignored."""
        picked = log_probs[self.index]
        w = self.picked_weight
        loss = -picked if w is None else picked * _constant(-w)
        # `where`, not a multiply by the mask: ignored entries give exactly 0 even if they hold inf
        return ops.where(self.keep, loss, 0.0)

    def reduce(self, loss: Tensor, reduction: str) -> Tensor:
        """'mean' divides by the total weight of the kept targets (their count without weights),
        as PyTorch; no kept target gives nan with zero gradients."""
        if reduction == "none":
            return loss
        total = loss.sum()
        if reduction == "sum":
            return total
        if not self.keep.any():  # as PyTorch: a nan loss (0/0) whose gradients are zeros
            return total + float("nan")
        w = self.picked_weight
        denom = float(self.keep.sum()) if w is None else float(w[self.keep].sum())
        return total / denom if denom else total * float("nan")  # weights summing to 0: nan


def _constant_weight(weight: Any, dtype: np.dtype, fn: str, arg: str) -> np.ndarray:
    """A loss's weight as a constant array in the input's dtype: weights are not differentiated,
    as in PyTorch. A string here is a reduction passed by position (the old signature)."""
    if isinstance(weight, str):
        raise TypeError(f"{fn}: {arg} must be an array, got the string {weight!r}; pass the "
                        f"reduction by keyword: reduction={weight!r}")
    return _numeric(weight, fn, dtype, arg=arg)


def _class_weights(weight: Any, c: int, dtype: np.dtype, fn: str) -> np.ndarray:
    """Class weights as a constant (C,) array in the input's dtype."""
    w = _constant_weight(weight, dtype, fn, "weight")
    if w.shape != (c,):
        raise ShapeError(f"{fn}: weight must hold one entry per class, shape ({c},), got "
                         f"{w.shape}")
    return w


def nll_loss(log_probs: Any, target: Any, weight: Any = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """-weight[t] log_probs[n, t] for log-probabilities (N, C) or (N, C, d1, ...) and integer
    targets (N,) or (N, d1, ...) (also (C,) with a 0-d target), as torch's nll_loss.

    Targets equal to `ignore_index` contribute 0; 'mean' divides by the summed weight of the
    other targets (their count without `weight`). `weight` (C,) is a constant."""
    fn = "nll_loss"
    _check_reduction(reduction, fn)
    x = _float_tensor(log_probs, fn, "log_probs")
    targets = _ClassTargets(x, target, weight, ignore_index, fn, "log_probs")
    return targets.reduce(targets.nll(x), reduction)


def cross_entropy(logits: Any, target: Any, weight: Any = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """nll_loss(log_softmax(logits, axis=1), ...) with PyTorch's label smoothing, for logits
    (N, C) or (N, C, d1, ...) and integer targets (N,) or (N, d1, ...).

    With smoothing e each kept target's loss is (1 - e) nll + (e / C) sum_c -weight[c]
    log_softmax[c], and 'mean' divides both terms by the summed weight of the kept targets, as
    torch. Targets equal to `ignore_index` contribute 0 (a mean over none is nan)."""
    fn = "cross_entropy"
    _check_reduction(reduction, fn)
    _check_label_smoothing(label_smoothing, fn)
    x = _float_tensor(logits, fn, "logits")
    targets = _ClassTargets(x, target, weight, ignore_index, fn, "logits")
    log_probs = log_softmax(x, axis=targets.axis)
    loss = targets.nll(log_probs)
    if label_smoothing > 0:
        w = targets.weight
        if w is not None:  # weight[c] along the class axis
            shape = (-1,) + (1,) * (x.ndim - targets.axis - 1)
            log_probs = log_probs * _constant(w.reshape(shape))
        smooth = ops.where(targets.keep, -log_probs.sum(axis=targets.axis), 0.0)
        e = float(label_smoothing)
        loss = loss * (1.0 - e) + smooth * (e / targets.classes)
    return targets.reduce(loss, reduction)


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


def binary_cross_entropy_with_logits(logits: Any, target: Any, weight: Any = None,
                                     reduction: str = "mean", pos_weight: Any = None) -> Tensor:
    """BCE of sigmoid(logits) computed stably: max(x, 0) - x t + log(1 + exp(-|x|)).

    Finite for any finite logit; the gradient is sigmoid(x) - t everywhere (the tie rule of
    `maximum` gives the correct 1/2 at x = 0). `pos_weight` p (broadcast over the last axis,
    e.g. (C,)) weighs the positive term: (1 - t) x + (1 + (p - 1) t) softplus(-x), as torch;
    `weight` multiplies each element's loss. Both broadcast to the logits' shape and are
    constants (not differentiated, as PyTorch)."""
    fn = "binary_cross_entropy_with_logits"
    _check_reduction(reduction, fn)
    x = _float_tensor(logits, fn, "logits")
    t = _target(target, x, fn)
    softplus_tail = _log1p(ops.exp(-ops.abs(x)))  # log(1 + e^-|x|)
    if pos_weight is None:
        loss = ops.maximum(x, 0.0) - x * t + softplus_tail
    else:  # softplus(-x) = max(-x, 0) + log(1 + e^-|x|)
        p = _broadcast_weight(pos_weight, x, fn, "pos_weight")
        loss = (1.0 - t) * x + (1.0 + (p - 1.0) * t) * (ops.maximum(-x, 0.0) + softplus_tail)
    if weight is not None:
        loss = loss * _broadcast_weight(weight, x, fn, "weight")
    return _reduce(loss, reduction)


def _log1p(u: Tensor) -> Tensor:
    """log(1 + u) for 0 <= u <= 1, also where 1 + u rounds to 1 (log would give 0 at x = 20 in
    float32, log1p 2e-9): log(w) for w = 1 + u plus the first-order term of the rounding
    error, (u - (w - 1)) / w, where w - 1 and u - (w - 1) are exact. Its derivative comes out
    as 1 / w - (u - (w - 1)) / w^2, which is 1 / (1 + u) to the same order."""
    w = 1.0 + u
    return ops.log(w) + (u - (w - 1.0)) / w


def _broadcast_weight(weight: Any, like: Tensor, fn: str, arg: str) -> Tensor:
    """A constant weight in `like`'s dtype that broadcasts to `like`'s shape without growing it."""
    w = _constant_weight(weight, like.dtype, fn, arg)
    try:
        fits = np.broadcast_shapes(w.shape, like.shape) == like.shape
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(f"{fn}: {arg} of shape {w.shape} does not broadcast to the logits' "
                         f"shape {like.shape}")
    return _constant(w)


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
    limit = _norm_limit(x.dtype, int(np.prod(shape)))
    eps_t: float | Tensor = float(eps)
    if x.size and (x.data.max() > limit or x.data.min() < -limit):  # (nan compares False)
        # the squares would overflow (float32 1e20: var = inf, y = 0): normalise x / s instead,
        # with eps / s^2 for eps, which is the same function of x for any constant s > 0, so
        # the gradient is unchanged. s, a power of two per row, keeps every step exact.
        _, e = np.frexp(np.abs(x.data).max(axis=axes, keepdims=True) / limit)
        s = np.ldexp(1.0, np.maximum(e, 0))  # 1 for the rows that need no scaling
        x = x * _constant((1.0 / s).astype(x.dtype))
        eps_t = _constant(np.maximum(eps / (s * s), np.finfo(x.dtype).tiny).astype(x.dtype))
    centred = x - x.mean(axis=axes, keepdims=True)
    var = (centred * centred).mean(axis=axes, keepdims=True)
    y = centred / ops.sqrt(var + eps_t)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        p = _operand(p, x, fn, name)
        if p.shape != shape:
            raise ShapeError(f"{fn}: {name} must have shape normalized_shape {shape}, "
                             f"got {p.shape}")
        y = y * p if name == "weight" else y + p
    return y


def _norm_limit(dtype: np.dtype, n: int) -> float:
    """The largest |x| for which layer_norm's n squared deviations (each at most (2 |x|)^2)
    sum without overflow in `dtype`."""
    return float(np.sqrt(float(np.finfo(dtype).max) / (4 * n)))


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
