"""Reductions over axes: sum, mean, max, logsumexp."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from ..primitive import Primitive, register
from ..tensor import Axis


def _keep_shape(shape: tuple[int, ...], axis: Axis) -> tuple[int, ...]:
    """`shape` with the reduced axes kept as size 1 (numpy's keepdims shape)."""
    if axis is None:
        return (1,) * len(shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    axes = tuple(a % len(shape) if -len(shape) <= a < len(shape) else a for a in axes)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


@register
class Sum(Primitive):
    name = "sum"

    @staticmethod
    def forward(x: np.ndarray, axis: Any, keepdims: Any) -> tuple[Any, Any]:
        return x.sum(axis=axis, keepdims=keepdims), (x.shape, axis)

    @staticmethod
    # every summand gets the upstream gradient
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        shape, axis = saved
        return (np.broadcast_to(g.reshape(_keep_shape(shape, axis)), shape),)


@register
class Mean(Primitive):
    name = "mean"

    @staticmethod
    def forward(x: np.ndarray, axis: Any, keepdims: Any) -> tuple[Any, Any]:
        return x.mean(axis=axis, keepdims=keepdims), (x.shape, axis)

    @staticmethod
    # d mean = 1/n per element
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        shape, axis = saved
        kshape = _keep_shape(shape, axis)
        n = builtins.max(int(np.prod(shape)) // builtins.max(int(np.prod(kshape)), 1), 1)
        return (np.broadcast_to(g.reshape(kshape) / g.dtype.type(n), shape),)


@register
class Max(Primitive):
    """Maximum over axes. Ties share the gradient equally (each of k tied maxima gets g / k)."""

    name = "max"

    @staticmethod
    def forward(x: np.ndarray, axis: Any, keepdims: Any) -> tuple[Any, Any]:
        m = x.max(axis=axis, keepdims=True)
        hit = x == m
        count = hit.sum(axis=axis, keepdims=True).astype(x.dtype)
        return (m if keepdims else _drop(m, axis)), (hit, count)

    @staticmethod
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        hit, count = saved
        return (hit * (g.reshape(count.shape) / count),)


@register
class LogSumExp(Primitive):
    """log(sum(exp(x))) over axes, shifted by the maximum so that ±1e4 stays finite."""

    name = "logsumexp"

    @staticmethod
    def forward(x: np.ndarray, axis: Any, keepdims: Any) -> tuple[Any, Any]:
        m = x.max(axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)  # all -inf (or inf) rows: shift by 0 instead of nan
        y = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
        return (y if keepdims else _drop(y, axis)), (x, y)

    @staticmethod
    # d logsumexp(x) = softmax(x)
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        x, y = saved
        return (g.reshape(y.shape) * np.exp(x - y),)


def _drop(y: np.ndarray, axis: Axis) -> np.ndarray:
    """Undo keepdims=True: remove the reduced (size-1) axes."""
    return y.reshape(()) if axis is None else np.squeeze(y, axis=axis)
