"""`Tensor`: a numpy array plus the record (`Node`) of the operation that produced it."""

from __future__ import annotations

import sys
from typing import Any, Iterator, Sequence

import numpy as np

from . import engine
from .errors import DTypeError, GraphError

Axis = int | tuple[int, ...] | None


def _default_dtype() -> Any:
    # read at call time so that `tg.default_dtype = np.float64` takes effect
    pkg = sys.modules.get("tinygrad_rnn")
    return getattr(pkg, "default_dtype", np.float32)


class Tensor:
    """An n-d array that can record the operations applied to it, for reverse-mode autodiff.

    `data` is the numpy array (float arrays keep their dtype; Python numbers and lists become
    `tg.default_dtype`); `grad` is None or an array of data's shape and dtype.
    """

    # _ref: what a record keeps for this tensor as an input (engine.port): None for a leaf
    # (the Tensor itself), the Node for a single-output result, the Port for one output of a
    # multi-output record
    __slots__ = ("_data", "grad", "_requires_grad", "_node", "_idx", "_ref")
    __array_ufunc__ = None  # `ndarray + Tensor` defers to Tensor.__radd__ instead of looping

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, (np.ndarray, np.generic)):
            arr = np.asarray(data, dtype=dtype)
        else:
            arr = np.asarray(data, dtype=dtype if dtype is not None else _default_dtype())
        if arr.dtype.kind not in "fiub":
            raise DTypeError(f"Tensor: unsupported dtype {arr.dtype}; use a float, integer or "
                             f"bool array")
        self._data: np.ndarray = arr
        self.grad: np.ndarray | None = None
        self._node: engine.Node | None = None
        self._ref: engine.Node | engine.Port | None = None
        self._requires_grad = False
        self.requires_grad = requires_grad

    @property
    def data(self) -> np.ndarray:
        """The numpy array."""
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        # `t.data *= 2` writes into the array and assigns it back: an in-place write that
        # records which saved it must know of (a new array replaces, and changes nothing saved)
        if value is self._data:
            engine.written(value)
        self._data = value

    @staticmethod
    def _from_op(out: Any, node: engine.Node | None) -> Tensor:
        """Wrap an operation's (single) result without the checks of __init__ (hot path)."""
        t = Tensor.__new__(Tensor)
        t._data = out if type(out) is np.ndarray else np.asarray(out)
        t.grad = None
        t._node = t._ref = node
        t._requires_grad = node is not None
        return t

    @staticmethod
    def _from_outputs(outs: Any, node: engine.Node | None) -> tuple[Tensor, ...]:
        """Wrap each output of a multi-output record, with its Port (one call for all of them:
        a cell's gates run once per step)."""
        new, port_t, ts = object.__new__, engine.Port, []
        for i, o in enumerate(outs):
            t = new(Tensor)
            t._data = o = o if type(o) is np.ndarray else np.asarray(o)
            t.grad = None
            t._node, t._idx = node, i
            t._requires_grad = node is not None
            t._ref = None
            if node is not None:  # Port(node, i, shape, dtype) without the call to __init__
                t._ref = p = new(port_t)
                p._node, p._idx, p.shape, p.dtype, p.grad = node, i, o.shape, o.dtype, None
            ts.append(t)
        return tuple(ts)

    # ------------------------------------------------------------------ autograd state
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if self._node is not None:
            raise GraphError("requires_grad: can only be changed on a leaf tensor; use "
                             ".detach() to get a leaf from a recorded result")
        if flag and self.data.dtype.kind != "f":
            raise DTypeError(f"requires_grad: only floating-point tensors can require grad, "
                             f"this one has dtype {self.data.dtype}")
        self._requires_grad = bool(flag)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        self.requires_grad = flag
        return self

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`, then free the graph."""
        engine.backward(self, grad, retain_graph)

    def retain_grad(self) -> None:
        """Keep `.grad` on this non-leaf tensor after backward (leaves always keep it)."""
        if self._node is not None:
            engine.retain(self._node, self)

    def detach(self) -> Tensor:
        """A new leaf sharing this data, with no history and requires_grad=False."""
        return Tensor._from_op(self.data, None)

    # ------------------------------------------------------------------ numpy-like surface
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> Any:
        return self.data.item()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        return np.asarray(self.data, dtype=dtype)

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = "" if self.data.dtype == np.float32 else f", dtype={self.data.dtype}"
        if self._node is not None:
            op = self._node.op.name if self._node.op is not None else "<freed>"
            extra += f", grad_fn={op}"
        elif self._requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    __hash__ = object.__hash__  # == is elementwise, identity stays the hash (dict/set keys)

    # comparisons give bool tensors (masks); they are not differentiable
    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return Tensor(self.data == _data(other))

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return Tensor(self.data != _data(other))

    def __lt__(self, other: Any) -> Tensor:
        return Tensor(self.data < _data(other))

    def __le__(self, other: Any) -> Tensor:
        return Tensor(self.data <= _data(other))

    def __gt__(self, other: Any) -> Tensor:
        return Tensor(self.data > _data(other))

    def __ge__(self, other: Any) -> Tensor:
        return Tensor(self.data >= _data(other))

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other: Any) -> Tensor:
        return Add.apply(self, other if isinstance(other, Tensor) else _const(other, self))

    def __radd__(self, other: Any) -> Tensor:
        return Add.apply(_const(other, self), self)

    def __sub__(self, other: Any) -> Tensor:
        return Sub.apply(self, other if isinstance(other, Tensor) else _const(other, self))

    def __rsub__(self, other: Any) -> Tensor:
        return Sub.apply(_const(other, self), self)

    def __mul__(self, other: Any) -> Tensor:
        return Mul.apply(self, other if isinstance(other, Tensor) else _const(other, self))

    def __rmul__(self, other: Any) -> Tensor:
        return Mul.apply(_const(other, self), self)

    def __truediv__(self, other: Any) -> Tensor:
        return Div.apply(self, other if isinstance(other, Tensor) else _const(other, self))

    def __rtruediv__(self, other: Any) -> Tensor:
        return Div.apply(_const(other, self), self)

    def __matmul__(self, other: Any) -> Tensor:
        return MatMul.apply(self, other if isinstance(other, Tensor) else _const(other, self))

    def __rmatmul__(self, other: Any) -> Tensor:
        return MatMul.apply(_const(other, self), self)

    def __neg__(self) -> Tensor:
        return Neg.apply(self)

    def __pow__(self, p: Any) -> Tensor:
        return pow(self, p)

    def __rpow__(self, base: Any) -> Tensor:
        if isinstance(base, Tensor) or not np.isscalar(base):
            raise TypeError("pow: only a Python number base is supported for number ** Tensor")
        return exp(self * float(np.log(base)))

    def __getitem__(self, index: Any) -> Tensor:
        return GetItem.apply(self, index=_index(index))

    # ------------------------------------------------------------------ methods (as PyTorch)
    def matmul(self, other: Any) -> Tensor:
        return self @ other

    def exp(self) -> Tensor:
        return Exp.apply(self)

    def log(self) -> Tensor:
        return Log.apply(self)

    def tanh(self) -> Tensor:
        return Tanh.apply(self)

    def sigmoid(self) -> Tensor:
        return Sigmoid.apply(self)

    def relu(self) -> Tensor:
        return Relu.apply(self)

    def sqrt(self) -> Tensor:
        return Sqrt.apply(self)

    def abs(self) -> Tensor:
        return Abs.apply(self)

    def pow(self, p: float) -> Tensor:
        return pow(self, p)

    def clip(self, lo: float | None = None, hi: float | None = None) -> Tensor:
        return clip(self, lo, hi)

    clamp = clip

    def maximum(self, other: Any) -> Tensor:
        return maximum(self, other)

    def addcmul(self, t1: Any, t2: Any, value: float = 1) -> Tensor:
        """self + value * t1 * t2, one record (torch.Tensor.addcmul)."""
        return addcmul(self, t1, t2, value)

    def lerp(self, end: Any, weight: Any) -> Tensor:
        """self + weight * (end - self), one record (torch.Tensor.lerp)."""
        return lerp(self, end, weight)

    def sum(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return Max.apply(self, axis=axis, keepdims=keepdims)

    def logsumexp(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return LogSumExp.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        return reshape(self, *shape)

    view = reshape

    def transpose(self, *axes: Any) -> Tensor:
        return transpose(self, *axes)

    @property
    def T(self) -> Tensor:
        return Transpose.apply(self, axes=None)

    def split(self, split_size_or_sizes: int | Sequence[int], axis: int = 0) -> tuple[Tensor, ...]:
        return split(self, split_size_or_sizes, axis)

    def chunk(self, n: int, axis: int = 0) -> tuple[Tensor, ...]:
        return chunk(self, n, axis)

    def unbind(self, axis: int = 0) -> tuple[Tensor, ...]:
        return unbind(self, axis)

    def swapaxes(self, a: int, b: int) -> Tensor:
        return swapaxes(self, a, b)

    def permute(self, *axes: Any) -> Tensor:
        return transpose(self, *axes)

    def squeeze(self, axis: int | None = None) -> Tensor:
        shape = self.shape
        if axis is None:
            return reshape(self, tuple(n for n in shape if n != 1))
        if shape[axis] != 1:
            return self
        return reshape(self, shape[:axis % self.ndim] + shape[axis % self.ndim + 1:])

    def unsqueeze(self, axis: int) -> Tensor:
        shape = self.shape
        axis = axis % (self.ndim + 1)
        return reshape(self, shape[:axis] + (1,) + shape[axis:])


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _const(x: Any, like: Tensor) -> Tensor:
    """`x` as a tensor operand; a Python number takes `like`'s float dtype (no upcast)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float, bool)) and like.data.dtype.kind == "f":
        return Tensor._from_op(np.asarray(x, dtype=like.data.dtype), None)
    if isinstance(x, (np.ndarray, np.generic)):
        return Tensor._from_op(np.asarray(x), None)
    return Tensor(x)


def _index(index: Any) -> Any:
    """Turn Tensors and lists inside an index into numpy arrays (numpy indexing semantics)."""
    if isinstance(index, tuple):
        return tuple(_index(i) for i in index)
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, list):
        return np.asarray(index)
    return index


# the primitives need Tensor, so they are imported after it is defined
from .ops import (  # noqa: E402
    Abs, Add, Div, Exp, GetItem, Log, LogSumExp, MatMul, Max, Mean, Mul, Neg, Relu, Sigmoid,
    Sqrt, Sub, Sum, Tanh, Transpose, addcmul, chunk, clip, exp, lerp, maximum, pow, reshape, split,
    swapaxes, transpose, unbind,
)
