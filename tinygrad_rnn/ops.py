"""The public operations (`tg.exp`, `tg.linear`, `tg.split`, ...): each checks and converts its
arguments, then applies one primitive (the table is in `primitives/`). Tensor's methods call
these, and the primitives behind `+`, `@` and indexing: this module hands itself to tensor.py
when imported (`tensor._ops`), so tensor.py, which sits below the primitives, never imports up.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any, Sequence

import numpy as np

from .errors import DTypeError, ShapeError
from .primitives.elementwise import (  # Add .. Neg, MatMul, GetItem: for Tensor's operators
    _ACTIVATE, Abs, Add, Clip, Div, Exp, Log, Maximum, Mul, Neg, Pow, Relu, Sigmoid, Sqrt, Sub,
    Tanh, Where,
)
from .primitives.fused import _ACTIVATIONS, Addcmul, Gates, Lerp, Linear, MatMul
from .primitives.reductions import LogSumExp, Max, Mean, Sum
from .primitives.shape import Concat, GetItem, Reshape, Split, Stack, Transpose, Unbind
from .tensor import (
    _NUMBERS, Axis, Tensor, _const, _norm_axis, _numeric, _use_operations, dim_alias,
)


def _t(x: Any, op: str) -> Tensor:
    """`x` as the tensor operand of `op`: arrays are wrapped, not copied (an operand is only
    read); lists and numbers become tg.default_dtype; None or a string is a TypeError."""
    return x if isinstance(x, Tensor) else Tensor._from_op(_numeric(x, op), None)


def exp(x: Any) -> Tensor:
    return Exp.apply(_t(x, "exp"))


def log(x: Any) -> Tensor:
    return Log.apply(_t(x, "log"))


def tanh(x: Any) -> Tensor:
    return Tanh.apply(_t(x, "tanh"))


def sigmoid(x: Any) -> Tensor:
    return Sigmoid.apply(_t(x, "sigmoid"))


def relu(x: Any) -> Tensor:
    return Relu.apply(_t(x, "relu"))


def sqrt(x: Any) -> Tensor:
    return Sqrt.apply(_t(x, "sqrt"))


def abs(x: Any) -> Tensor:  # noqa: A001 - mirrors np.abs / torch.abs
    return Abs.apply(_t(x, "abs"))


def matmul(a: Any, b: Any) -> Tensor:
    return _t(a, "matmul") @ b


def addcmul(x: Any, t1: Any, t2: Any, value: float = 1) -> Tensor:
    """x + value * t1 * t2, elementwise with broadcasting, as one record (torch.addcmul)."""
    x = _t(x, "addcmul")
    return Addcmul.apply(x, _const(t1, x, "addcmul"), _const(t2, x, "addcmul"),
                         value=_py(_number(value, "addcmul", "value")))


def lerp(start: Any, end: Any, weight: Any) -> Tensor:
    """start + weight * (end - start), elementwise with broadcasting, as one record (torch.lerp).
    weight may be a Tensor (differentiated) or a number."""
    start = _t(start, "lerp")
    return Lerp.apply(start, _const(end, start, "lerp"), _const(weight, start, "lerp"))


def linear(x: Any, weight: Any, *biases: Any, act: str | None = None) -> Tensor:
    """x @ weight.T + each bias, as one record (PyTorch's addmm). A bias may be any array that
    broadcasts to the output (..., out), e.g. a per-step input projection inside a cell:
    gates = linear(h, W_hh, xp_t, b_hh). None biases are skipped. act="tanh" or "sigmoid"
    applies that activation in the same record (an RNN step: linear(h, W_hh, xp_t, act="tanh")),
    which saves the activation's own record and temporary."""
    x = x if isinstance(x, Tensor) else _t(x, "linear")
    args = [x, weight if isinstance(weight, Tensor) else _const(weight, x, "linear")]
    for b in biases:  # a loop, not a comprehension: this runs once per time step
        if b is not None:
            args.append(b if isinstance(b, Tensor) else _const(b, x, "linear"))
    if act is None:
        return Linear.apply(*args)
    if act not in _ACTIVATE:
        raise ValueError(f"linear: act must be None, 'tanh' or 'sigmoid', got {act!r}")
    return Linear.apply(*args, act=act)


def pow(x: Any, p: Any) -> Tensor:  # noqa: A001
    """x ** p for a Python number p (elementwise)."""
    return Pow.apply(_t(x, "pow"), p=_py(_number(p, "pow", "the exponent")))


def _py(v: Any) -> Any:
    """A numpy scalar as a Python number, so that it never changes the tensor's dtype."""
    return v.item() if isinstance(v, np.generic) else v


def _number(v: Any, op: str, arg: str) -> Any:
    """`v` if it is a real number (a scalar argument of `op`), else a TypeError naming both."""
    if not isinstance(v, _NUMBERS):
        raise TypeError(f"{op}: {arg} must be a real number, got {type(v).__name__}")
    return v


def clip(x: Any, lo: float | None = None, hi: float | None = None) -> Tensor:
    """Elementwise clamp to [lo, hi]; either bound may be None."""
    if lo is None and hi is None:
        raise ValueError("clip: at least one of lo and hi must be given")
    lo = None if lo is None else _py(_number(lo, "clip", "lo"))
    hi = None if hi is None else _py(_number(hi, "clip", "hi"))
    return Clip.apply(_t(x, "clip"), lo=lo, hi=hi)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Elementwise `a` where `cond` is True else `b` (cond: a bool array or Tensor, not
    differentiated)."""
    c = cond if isinstance(cond, Tensor) else Tensor._from_op(np.asarray(cond), None)
    if c.dtype != np.bool_:
        raise DTypeError(f"where: cond must be a bool array, got dtype {c.dtype}")
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else _t(a, "where")
    return Where.apply(_const(a, like, "where"), _const(b, like, "where"), c)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum; on ties each input gets half the gradient (as PyTorch)."""
    like = a if isinstance(a, Tensor) else _t(b, "maximum")
    return Maximum.apply(_const(a, like, "maximum"), _const(b, like, "maximum"))


@dim_alias
def sum(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return Sum.apply(_t(x, "sum"), axis=axis, keepdims=keepdims)


@dim_alias
def mean(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    return Mean.apply(_t(x, "mean"), axis=axis, keepdims=keepdims)


@dim_alias
def max(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Maximum over `axis`; tied maxima share the gradient equally. Unlike torch.max(x, dim),
    only the values (argmax gives the indices)."""
    return Max.apply(_t(x, "max"), axis=axis, keepdims=keepdims)


@dim_alias
def logsumexp(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x), axis)), computed stably (finite for inputs of ±1e4)."""
    return LogSumExp.apply(_t(x, "logsumexp"), axis=axis, keepdims=keepdims)


@dim_alias
def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Index of the maximum along `axis` (into the flattened tensor when None; the first one on
    ties) as an int64 Tensor without gradient, as torch.argmax."""
    return _arg(np.argmax, "argmax", x, axis, keepdims)


@dim_alias
def argmin(x: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Index of the minimum along `axis`, as argmax."""
    return _arg(np.argmin, "argmin", x, axis, keepdims)


def _arg(find: Any, op: str, x: Any, axis: int | None, keepdims: bool) -> Tensor:
    t = _t(x, op)
    if axis is not None:
        axis = _norm_axis(axis, builtins.max(t.ndim, 1), op)  # a 0-d tensor has axis 0 (torch)
    if t.data.size == 0:
        raise ValueError(f"{op}: the tensor of shape {t.shape} is empty")
    data = t.data.reshape(1) if t.ndim == 0 and axis is not None else t.data
    idx = find(data, axis=axis, keepdims=keepdims)
    return Tensor(np.asarray(idx, dtype=np.int64).reshape(() if t.ndim == 0 else np.shape(idx)))


def _shape_args(args: tuple[Any, ...]) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def reshape(x: Any, *shape: Any) -> Tensor:
    """Same data in a new shape; one dimension may be -1. Accepts ints or one tuple."""
    return Reshape.apply(_t(x, "reshape"), shape=_shape_args(shape))


def flatten(x: Any, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge axes start_dim..end_dim into one (torch.flatten); a 0-d tensor becomes shape (1,)."""
    t = _t(x, "flatten")
    if t.ndim == 0:
        return Reshape.apply(t, shape=(1,))
    start = _norm_axis(start_dim, t.ndim, "flatten")
    end = _norm_axis(end_dim, t.ndim, "flatten")
    if start > end:
        raise ShapeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for "
                         f"shape {t.shape}")
    shape = t.shape[:start] + (int(np.prod(t.shape[start:end + 1])),) + t.shape[end + 1:]
    return Reshape.apply(t, shape=shape)


@dim_alias
def squeeze(x: Any, axis: Axis = None) -> Tensor:
    """Drop size-1 axes: all of them when axis is None, else those of `axis` (an int or tuple)
    that have size 1; the others are kept, as torch.squeeze."""
    t = _t(x, "squeeze")
    if axis is None:
        drop = {i for i, n in enumerate(t.shape) if n == 1}
    else:
        axes = axis if isinstance(axis, tuple) else (axis,)
        # a 0-d tensor accepts axis 0 or -1 and stays as it is, as torch
        drop = {i for i in (_norm_axis(a, builtins.max(t.ndim, 1), "squeeze") for a in axes)
                if i < t.ndim and t.shape[i] == 1}
    if not drop:
        return t
    return Reshape.apply(t, shape=tuple(n for i, n in enumerate(t.shape) if i not in drop))


@dim_alias
def unsqueeze(x: Any, axis: int) -> Tensor:
    """Insert an axis of size 1 at position `axis`, in [-ndim - 1, ndim] (torch.unsqueeze)."""
    t = _t(x, "unsqueeze")
    axis = _norm_axis(axis, t.ndim + 1, "unsqueeze")
    return Reshape.apply(t, shape=t.shape[:axis] + (1,) + t.shape[axis:])


def transpose(x: Any, *axes: Any) -> Tensor:
    """Permute axes with numpy's meaning: no axes reverses them, else a permutation of all axes."""
    t = _t(x, "transpose")
    perm = _shape_args(axes) or None
    if perm is not None:
        norm = tuple(a % t.ndim if -t.ndim <= a < t.ndim else a for a in perm)
        if sorted(norm) != list(range(t.ndim)):
            raise ShapeError(f"transpose: axes {perm} must be a permutation of all {t.ndim} "
                             f"axes of shape {t.shape} (numpy's meaning); use swapaxes(a, b) "
                             f"to swap two")
        perm = norm
    return Transpose.apply(t, axes=perm)


def swapaxes(x: Any, a: int, b: int) -> Tensor:
    """Exchange two axes (PyTorch's `transpose(a, b)`)."""
    t = _t(x, "swapaxes")
    perm = list(range(t.ndim))
    a, b = _norm_axis(a, t.ndim, "swapaxes"), _norm_axis(b, t.ndim, "swapaxes")
    perm[a], perm[b] = perm[b], perm[a]
    return Transpose.apply(t, axes=tuple(perm))


@dim_alias
def concat(ts: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis (one recorded op)."""
    if len(ts) == 0:
        raise ValueError("concat: needs at least one tensor")
    return Concat.apply(*[_t(t, "concat") for t in ts], axis=axis)


@dim_alias
def stack(ts: Sequence[Any], axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis (one recorded op)."""
    if len(ts) == 0:
        raise ValueError("stack: needs at least one tensor")
    return Stack.apply(*[_t(t, "stack") for t in ts], axis=axis)


@dim_alias
def split(x: Any, split_size_or_sizes: int | Sequence[int], axis: int = 0) -> tuple[Tensor, ...]:
    """PyTorch's split: an int is the size of every piece (the last may be smaller), a list gives
    each piece's size. Returns a tuple; records one op."""
    t = _t(x, "split")
    axis = _norm_axis(axis, t.ndim, "split")
    n = t.shape[axis]
    arg = split_size_or_sizes
    if isinstance(arg, (list, tuple, np.ndarray)):
        sizes = [_count(s, "split", "every entry of split_size_or_sizes", 0) for s in arg]
        if builtins.sum(sizes) != n:
            raise ShapeError(f"split: sizes {sizes} do not add up to {n}, the length of axis "
                             f"{axis} of shape {t.shape}")
    else:
        size = _count(arg, "split", "split_size_or_sizes", 1,
                      " (every piece's size) or a list of ints >= 0 (each piece's size)")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
    if not sizes:
        return ()
    return Split.apply(t, sizes=sizes, axis=axis)


def _count(v: Any, op: str, arg: str, least: int, alternative: str = "") -> int:
    """`v` as an int >= least (a size or a count), else an error naming op and arg: TypeError
    for a non-int (2.5, "2", True), ValueError for one that is too small."""
    allowed = ("a positive int" if least == 1 else f"an int >= {least}") + alternative
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{op}: {arg} must be {allowed}, got {v!r} of type {type(v).__name__}")
    if v < least:
        raise ValueError(f"{op}: {arg} must be {allowed}, got {v}")
    return int(v)


@dim_alias
def chunk(x: Any, n: int, axis: int = 0) -> tuple[Tensor, ...]:
    """PyTorch's chunk: pieces of size ceil(len / n) along `axis` (so n pieces when n divides the
    length; fewer otherwise, exactly as torch.chunk). Records one op."""
    t = _t(x, "chunk")
    n = _count(n, "chunk", "n (the number of chunks)", 1)
    length = t.shape[_norm_axis(axis, t.ndim, "chunk")]
    return split(t, builtins.max(-(-length // n), 1), axis)


def gates(x: Any, activations: Sequence[str]) -> tuple[Tensor, ...]:
    """Split the last axis of x into len(activations) equal chunks and apply each its activation
    ("sigmoid", "tanh", "relu" or "identity"), as one record: an LSTM's i, f, g, o =
    gates(z, ("sigmoid", "sigmoid", "tanh", "sigmoid")). Same values as chunk + activations."""
    t = x if isinstance(x, Tensor) else _t(x, "gates")
    try:
        known = activations in _CHECKED_GATES
    except TypeError:  # unhashable, e.g. a list: _check_gates makes it a tuple
        known = False
    acts = activations if known else _check_gates(activations)
    if t.data.ndim == 0 or t.data.shape[-1] % len(acts):
        raise ShapeError(f"gates: the last axis of shape {t.shape} does not split into "
                         f"{len(acts)} equal chunks")
    return Gates.apply(t, acts=acts)


_CHECKED_GATES: set[Any] = set()  # activation tuples already validated (gates runs per step)


def _check_gates(activations: Sequence[str]) -> tuple[str, ...]:
    acts = tuple(activations)
    if not acts or any(a not in _ACTIVATIONS for a in acts):
        raise ValueError(f"gates: activations must be a non-empty sequence of {_ACTIVATIONS}, "
                         f"got {activations!r}")
    _CHECKED_GATES.add(acts)
    return acts


@dim_alias
def unbind(x: Any, axis: int = 0) -> tuple[Tensor, ...]:
    """The slices of `x` along `axis` (each without that axis), as one recorded op."""
    t = _t(x, "unbind")
    return Unbind.apply(t, axis=_norm_axis(axis, t.ndim, "unbind"))


def detach(state: Any) -> Any:
    """Detach a Tensor or every Tensor in a nested tuple/list (None passes through)."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach(s) for s in state)
    if state is None:
        return None
    raise TypeError(f"detach: expected a Tensor or a nested tuple/list of Tensors, "
                    f"got {type(state).__name__}")


_use_operations(sys.modules[__name__])  # Tensor's methods (x + y, x.sum()) apply these
