"""`Tensor`: a numpy array plus the record (`Node`) of the operation that produced it."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from . import engine
from .errors import DTypeError, GraphError, ShapeError

Axis = int | tuple[int, ...] | None
_Fn = TypeVar("_Fn", bound=Callable[..., Any])
_TORCH_NAMES = {"dim": "axis", "keepdim": "keepdims"}  # PyTorch's spelling -> ours


def dim_alias(fn: _Fn) -> _Fn:
    """Let `fn` also take PyTorch's spellings `dim=` for `axis=` and `keepdim=` for `keepdims=`.

    Giving both spellings of one argument is a TypeError naming the function. The wrapper only
    looks at its keywords when one of PyTorch's names is among them, so the usual call costs one
    function call more."""
    sig = inspect.signature(fn)
    names = list(sig.parameters)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # alias -> (our name, its position: given positionally when more args than that are passed)
    aliases = {alias: (ours, names.index(ours) if sig.parameters[ours].kind in positional
                       else sys.maxsize)
               for alias, ours in _TORCH_NAMES.items() if ours in names}
    who = fn.__qualname__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs and ("dim" in kwargs or "keepdim" in kwargs):
            for alias, (ours, i) in aliases.items():
                if alias in kwargs:
                    if ours in kwargs or len(args) > i:
                        raise TypeError(f"{who}: got both {ours}= and {alias}= (PyTorch's name "
                                        f"for {ours}); give only one")
                    kwargs[ours] = kwargs.pop(alias)
        return fn(*args, **kwargs)

    # help() and inspect show the aliases as keyword-only parameters (before any **kwargs)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    params += [inspect.Parameter(alias, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=f"{sig.parameters[ours].annotation} | None")
               for alias, (ours, _) in aliases.items()]
    params += [p for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


class _Size(int):
    """`Tensor.size`: the number of elements, an int as numpy's `.size`, that can also be called
    as PyTorch's `size()` -> the shape tuple and `size(d)` -> the length of axis d."""

    _shape: tuple[int, ...]

    def __call__(self, dim: int | None = None) -> Any:
        if dim is None:
            return self._shape
        return self._shape[_norm_axis(dim, len(self._shape), "size")]


def _default_dtype() -> Any:
    # read at call time so that `tg.default_dtype = np.float64` takes effect
    pkg = sys.modules.get("tinygrad_rnn")
    return getattr(pkg, "default_dtype", np.float32)


class Tensor:
    """An n-d array that can record the operations applied to it, for reverse-mode autodiff.

    `data` is the numpy array, a copy of the one given (float arrays keep their dtype; Python
    numbers and lists become `tg.default_dtype`; `tg.from_numpy` shares instead); `grad` is None
    or an array of data's shape and dtype.
    """

    # _ref: what a record keeps for this tensor as an input (engine.port): None for a leaf
    # (the Tensor itself), the Node for a single-output result, the Port for one output of a
    # multi-output record
    __slots__ = ("_data", "grad", "_requires_grad", "_node", "_idx", "_ref")
    _idx: int  # which output of a multi-output record (set by _from_outputs)
    __array_ufunc__ = None  # `ndarray + Tensor` defers to Tensor.__radd__ instead of looping

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        # a copy, as torch.tensor: an optimiser step must never write into the caller's array
        self._data: np.ndarray = _numeric(data, "Tensor", dtype, copy=True)
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
    def size(self) -> _Size:
        """The number of elements (numpy's `.size`). Also callable as PyTorch's `size()` -> shape
        tuple and `size(d)` -> length of axis d."""
        n = _Size(self.data.size)
        n._shape = self.data.shape
        return n

    def numel(self) -> int:
        """The number of elements (torch.Tensor.numel)."""
        return self.data.size

    def dim(self) -> int:
        """The number of axes, `ndim` (torch.Tensor.dim)."""
        return self.data.ndim

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

    # comparisons give bool tensors (masks); they are not differentiable. == and != with a
    # non-operand (None, a string) give Python's False / True, as PyTorch; <, <=, >, >= refuse it
    def __eq__(self, other: Any) -> Any:
        arr = _compared(other)
        return NotImplemented if arr is None else Tensor._from_op(self.data == arr, None)

    def __ne__(self, other: Any) -> Any:
        arr = _compared(other)
        return NotImplemented if arr is None else Tensor._from_op(self.data != arr, None)

    def __lt__(self, other: Any) -> Tensor:
        return Tensor._from_op(self.data < _numeric(other, "lt"), None)

    def __le__(self, other: Any) -> Tensor:
        return Tensor._from_op(self.data <= _numeric(other, "le"), None)

    def __gt__(self, other: Any) -> Tensor:
        return Tensor._from_op(self.data > _numeric(other, "gt"), None)

    def __ge__(self, other: Any) -> Tensor:
        return Tensor._from_op(self.data >= _numeric(other, "ge"), None)

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other: Any) -> Tensor:
        return _ops.Add.apply(self, other if isinstance(other, Tensor) else
                               _const(other, self, "add"))

    def __radd__(self, other: Any) -> Tensor:
        return _ops.Add.apply(_const(other, self, "add"), self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops.Sub.apply(self, other if isinstance(other, Tensor) else
                               _const(other, self, "sub"))

    def __rsub__(self, other: Any) -> Tensor:
        return _ops.Sub.apply(_const(other, self, "sub"), self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops.Mul.apply(self, other if isinstance(other, Tensor) else
                               _const(other, self, "mul"))

    def __rmul__(self, other: Any) -> Tensor:
        return _ops.Mul.apply(_const(other, self, "mul"), self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops.Div.apply(self, other if isinstance(other, Tensor) else
                               _const(other, self, "div"))

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops.Div.apply(_const(other, self, "div"), self)

    def __matmul__(self, other: Any) -> Tensor:
        return _ops.MatMul.apply(self, other if isinstance(other, Tensor) else
                            _const(other, self, "matmul"))

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops.MatMul.apply(_const(other, self, "matmul"), self)

    def __neg__(self) -> Tensor:
        return _ops.Neg.apply(self)

    def __pow__(self, p: Any) -> Tensor:
        return _ops.pow(self, p)

    def __rpow__(self, base: Any) -> Tensor:
        if not isinstance(base, _NUMBERS):
            raise TypeError(f"pow: the base of number ** Tensor must be a real number, got "
                            f"{type(base).__name__}")
        return _ops.exp(self * float(np.log(base)))

    def __getitem__(self, index: Any) -> Tensor:
        return _ops.GetItem.apply(self, index=_index(index))

    # ------------------------------------------------------------------ methods (as PyTorch)
    def matmul(self, other: Any) -> Tensor:
        return self @ other

    def exp(self) -> Tensor:
        return _ops.Exp.apply(self)

    def log(self) -> Tensor:
        return _ops.Log.apply(self)

    def tanh(self) -> Tensor:
        return _ops.Tanh.apply(self)

    def sigmoid(self) -> Tensor:
        return _ops.Sigmoid.apply(self)

    def relu(self) -> Tensor:
        return _ops.Relu.apply(self)

    def sqrt(self) -> Tensor:
        return _ops.Sqrt.apply(self)

    def abs(self) -> Tensor:
        return _ops.Abs.apply(self)

    def pow(self, p: float) -> Tensor:
        return _ops.pow(self, p)

    def clip(self, lo: float | None = None, hi: float | None = None) -> Tensor:
        return _ops.clip(self, lo, hi)

    clamp = clip

    def maximum(self, other: Any) -> Tensor:
        return _ops.maximum(self, other)

    def addcmul(self, t1: Any, t2: Any, value: float = 1) -> Tensor:
        """self + value * t1 * t2, one record (torch.Tensor.addcmul)."""
        return _ops.addcmul(self, t1, t2, value)

    def lerp(self, end: Any, weight: Any) -> Tensor:
        """self + weight * (end - self), one record (torch.Tensor.lerp)."""
        return _ops.lerp(self, end, weight)

    @dim_alias
    def sum(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return _ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    @dim_alias
    def mean(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return _ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    @dim_alias
    def max(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Maximum over `axis`. Unlike torch.max(dim=...), only the values: see argmax."""
        return _ops.Max.apply(self, axis=axis, keepdims=keepdims)

    @dim_alias
    def logsumexp(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return _ops.LogSumExp.apply(self, axis=axis, keepdims=keepdims)

    @dim_alias
    def argmax(self, axis: int | None = None, keepdims: bool = False) -> Tensor:
        """Index of the maximum along `axis` (of the flattened tensor when None): an int64
        Tensor without gradient, as torch.argmax."""
        return _ops.argmax(self, axis, keepdims)

    @dim_alias
    def argmin(self, axis: int | None = None, keepdims: bool = False) -> Tensor:
        """Index of the minimum along `axis`, as argmax."""
        return _ops.argmin(self, axis, keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        return _ops.reshape(self, *shape)

    def view(self, *shape: Any) -> Tensor:
        """PyTorch's view, here the same as reshape: numpy returns a view when it can and a
        copy otherwise (never an error for non-contiguous data); gradients are the same."""
        return _ops.reshape(self, *shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        """Axes start_dim..end_dim merged into one (torch.flatten); a 0-d tensor becomes (1,)."""
        return _ops.flatten(self, start_dim, end_dim)

    def transpose(self, *axes: Any) -> Tensor:
        return _ops.transpose(self, *axes)

    @property
    def T(self) -> Tensor:
        return _ops.Transpose.apply(self, axes=None)

    def t(self) -> Tensor:
        """Transpose of a 2-d tensor (torch.Tensor.t); a 0-d or 1-d tensor is returned as is."""
        if self.data.ndim > 2:
            raise ShapeError(f"t: expects a tensor with at most 2 dims, got shape {self.shape}; "
                             f"use swapaxes(a, b) or permute(...) instead")
        return self if self.data.ndim < 2 else _ops.Transpose.apply(self, axes=None)

    @dim_alias
    def split(self, split_size_or_sizes: int | Sequence[int], axis: int = 0) -> tuple[Tensor, ...]:
        return _ops.split(self, split_size_or_sizes, axis)

    @dim_alias
    def chunk(self, n: int, axis: int = 0) -> tuple[Tensor, ...]:
        return _ops.chunk(self, n, axis)

    @dim_alias
    def unbind(self, axis: int = 0) -> tuple[Tensor, ...]:
        return _ops.unbind(self, axis)

    def swapaxes(self, a: int, b: int) -> Tensor:
        return _ops.swapaxes(self, a, b)

    def permute(self, *axes: Any) -> Tensor:
        return _ops.transpose(self, *axes)

    @dim_alias
    def squeeze(self, axis: Axis = None) -> Tensor:
        """Drop the given size-1 axes (all of them when None); others are kept, as PyTorch."""
        return _ops.squeeze(self, axis)

    @dim_alias
    def unsqueeze(self, axis: int) -> Tensor:
        """Insert a size-1 axis at position `axis` (in [-ndim - 1, ndim])."""
        return _ops.unsqueeze(self, axis)

    # ------------------------------------------------------------------ PyTorch's other spellings
    def new_zeros(self, *size: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
        """Zeros of shape `size` (ints or one tuple) in this tensor's dtype unless `dtype` is
        given (torch.Tensor.new_zeros)."""
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        t = Tensor._from_op(np.zeros(tuple(shape), dtype=self.data.dtype if dtype is None else
                                     _np_dtype(dtype, "new_zeros")), None)
        t.requires_grad = requires_grad
        return t

    def to(self, *args: Any, dtype: Any = None, device: Any = None) -> Tensor:
        """PyTorch's `to(device)`, `to(dtype)`, `to(device, dtype)` or `to(other)` (its dtype).

        The only device is "cpu" (numpy); another one is a RuntimeError. The same dtype returns
        self; another dtype returns a cast copy with no history, so a tensor that requires grad
        cannot be cast (a DTypeError: create the model in the dtype you need, `dtype=` on the
        layers, or cast `.detach()`)."""
        for a in args:
            if isinstance(a, Tensor):
                dtype = a.data.dtype
            elif _is_device(a):
                device = a
            else:
                dtype = a
        if device is not None and str(device) != "cpu":
            raise _no_device(device, "to")
        dt = None if dtype is None else _np_dtype(dtype, "to")
        if dt is None or dt == self.data.dtype:
            return self
        if self._requires_grad:
            raise DTypeError(f"to: casting a tensor that requires grad from {self.data.dtype} to "
                             f"{dt} would not be recorded; create it (or the model: dtype= on "
                             f"the layers) in {dt}, or cast .detach()")
        return Tensor._from_op(self.data.astype(dt), None)

    def type(self, dtype: Any = None) -> Tensor:
        """`type(dtype)` is `to(dtype)`. Without an argument (PyTorch's type name string) it is a
        TypeError: read `.dtype` instead."""
        if dtype is None:
            raise TypeError("type: PyTorch's type-name string does not exist here; read .dtype, "
                            "and use .to(dtype) to convert")
        return self.to(dtype)

    def cpu(self) -> Tensor:
        """self: every tensor lives on the CPU, in numpy."""
        return self

    def cuda(self, *args: Any, **kwargs: Any) -> Tensor:
        """Always a RuntimeError: tinygrad_rnn runs on the CPU with numpy only."""
        raise _no_device("cuda", "cuda")

    def contiguous(self) -> Tensor:
        """self (as PyTorch on a contiguous tensor): numpy handles any memory layout."""
        return self

# the numbers an operand may be (np.float64 and np.bool_ included; complex is not)
_NUMBERS = (bool, int, float, np.bool_, np.integer, np.floating)
_OPERANDS = "a Tensor, a real number, a numpy array or a (nested) list of numbers"


def _numeric(data: Any, who: str, dtype: Any = None, copy: bool = False,
             arg: str = "operand") -> np.ndarray:
    """`data` as a bool, integer or float array, or a TypeError naming `who`, `arg` and its type.

    Arrays and Tensors keep their dtype (unless `dtype` is given) and are copied only with
    `copy`; numbers and (nested) lists/tuples become a new array of `dtype`, else of
    `tg.default_dtype`. None, strings and other objects are refused: numpy would make None nan
    and "2" the number 2."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (np.ndarray, np.generic)) or hasattr(data, "__array__"):
        arr = np.asarray(data)
        if arr.dtype.kind not in "fiub":
            raise _not_numeric(who, arg, f"{type(data).__name__} of dtype {arr.dtype}",
                               DTypeError)
        if copy:
            return np.array(arr, dtype=dtype, copy=True)
        return arr if dtype is None else arr.astype(dtype, copy=False)
    want = dtype if dtype is not None else _default_dtype()
    if isinstance(data, _NUMBERS):
        return np.asarray(data, dtype=want)
    if not isinstance(data, (list, tuple)):
        raise _not_numeric(who, arg, type(data).__name__)
    arr = np.asarray(data)
    if arr.dtype.kind not in "fiubO":
        held = {"U": "str", "S": "bytes", "c": "complex"}.get(arr.dtype.kind, str(arr.dtype))
        raise _not_numeric(who, arg, f"{type(data).__name__} holding {held}")
    if arr.dtype.kind == "O":  # Python ints too large for int64 are fine; None is not
        for v in arr.flat:
            if not isinstance(v, _NUMBERS):
                raise _not_numeric(who, arg, f"{type(data).__name__} holding "
                                             f"{type(v).__name__}")
    return arr.astype(want)


def _not_numeric(who: str, arg: str, what: str, cls: type[TypeError] = TypeError) -> TypeError:
    return cls(f"{who}: unsupported {arg} {what}; expected {_OPERANDS}")


def _compared(other: Any) -> np.ndarray | None:
    """The right side of == or != as an array, or None when it is not an operand."""
    try:
        return _numeric(other, "eq")
    except TypeError:
        return None


def _const(x: Any, like: Tensor, op: str) -> Tensor:
    """`x` as a tensor operand of `op`; a Python number takes `like`'s float dtype (no upcast).
    Arrays are wrapped, not copied: an operand is only read."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float, bool)) and like.data.dtype.kind == "f":
        return Tensor._from_op(np.asarray(x, dtype=like.data.dtype), None)
    return Tensor._from_op(_numeric(x, op), None)


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new leaf Tensor holding a copy of `data` (torch.tensor), the same as
    `Tensor(data, requires_grad, dtype)`."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def from_numpy(a: np.ndarray) -> Tensor:
    """A leaf Tensor that shares `a`'s memory and dtype (torch.from_numpy): a write through
    either side, an optimiser step included, is seen by both. `Tensor(a)` copies instead."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy array, got {type(a).__name__}")
    return Tensor._from_op(_numeric(a, "from_numpy"), None)


def _np_dtype(dtype: Any, op: str) -> np.dtype:
    """A numpy dtype from a numpy dtype, a name ("float64") or a torch dtype (by its name)."""
    name = str(dtype)
    if name.startswith("torch."):  # torch.float64 -> "float64", without importing torch
        dtype = name[len("torch."):]
    try:
        return np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"{op}: {dtype!r} is not a dtype; use a numpy dtype such as np.float64 "
                         f"or its name") from None


def _is_device(x: Any) -> bool:
    name = str(x)
    return name.split(":")[0] in ("cpu", "cuda", "mps", "xpu", "meta") or \
        type(x).__name__ == "device"


def _no_device(device: Any, op: str) -> RuntimeError:
    return RuntimeError(f"{op}: device {str(device)!r} is not available; tinygrad_rnn runs on "
                        f"the CPU with numpy only (use 'cpu', or leave the device out)")


def _norm_axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dims")
    return axis % ndim


def _index(index: Any) -> Any:
    """Turn Tensors and lists inside an index into numpy arrays (numpy indexing semantics)."""
    if isinstance(index, tuple):
        return tuple(_index(i) for i in index)
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, list):
        return np.asarray(index)
    return index


# The operations Tensor's methods apply: the module ops.py, which hands itself over when it is
# imported. ops.py sits above Tensor (its primitives make Tensors), so tensor.py never imports it.
_ops: Any = None


def _use_operations(module: Any) -> None:
    global _ops
    _ops = module
