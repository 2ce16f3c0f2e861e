"""Elementwise primitives: arithmetic, activations, clip, where, maximum.

Each input may broadcast against the others; the engine sums gradients back to each input's
shape. For the scan, `code` and `grads` give the forward and the per-step gradient as code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..primitive import Primitive, register


class _Elementwise(Primitive):
    # forward and per-step gradient as code for the scan (Primitive.forward_code, grad_code),
    # where no input is broadcast: `code` (lines, what is saved)
    code: tuple[tuple[str, ...], Any] | None = None
    grads: dict[int, str] | None = None
    grads_pre: tuple[str, ...] = ()

    @classmethod
    def forward_code(cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...],
                     out_shape: tuple[int, ...]) -> Any:
        if cls.code is None or not out_shape:
            return None  # 0-d: numpy gives scalars, which forward converts
        return list(cls.code[0]), {}, cls.code[1], out_shape, ()

    @classmethod
    def batches(cls, varying: tuple[bool, ...], ndims: tuple[int, ...]) -> bool:
        return True  # broadcasting takes a leading time axis as it is

    @classmethod
    def grad_code(cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...],
                  out_shape: tuple[int, ...]) -> tuple[tuple[str, ...], dict[int, str]] | None:
        if cls.grads is None:  # the inputs of the output's shape (a broadcast one: backward)
            return None
        return cls.grads_pre, {j: e for j, e in cls.grads.items() if shapes[j] == out_shape}

    @classmethod
    def check(cls, *arrays: np.ndarray, **params: Any) -> None:
        try:
            np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError:
            shapes = " and ".join(str(a.shape) for a in arrays)
            raise ShapeError(f"{cls.name}: shapes {shapes} cannot be broadcast together") \
                from None


@register
class Add(_Elementwise):
    name = "add"

    @staticmethod
    def forward(a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return a + b, None

    @staticmethod
    # d(a+b) = da + db
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return g, g

    code = (("np.add(a0, a1, y)", "s = None"), None)
    grads = {0: "g", 1: "g"}


@register
class Sub(_Elementwise):
    name = "sub"

    @staticmethod
    def forward(a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return a - b, None

    @staticmethod
    # d(a-b) = da - db
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return g, (-g if needs[1] else None)

    code = (("np.subtract(a0, a1, y)", "s = None"), None)
    grads = {0: "g", 1: "-g"}


@register
class Mul(_Elementwise):
    name = "mul"

    @staticmethod
    def forward(a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return a * b, (a, b)

    @staticmethod
    # d(ab) = b da + a db
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        a, b = saved
        return (g * b if needs[0] else None), (g * a if needs[1] else None)

    code = (("np.multiply(a0, a1, y)", "s = (a0, a1)"), ("a0", "a1"))
    grads = {0: "g * s[1]", 1: "g * s[0]"}


@register
class Div(_Elementwise):
    name = "div"

    @staticmethod
    def forward(a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        y = a / b
        return y, (b, y)

    @staticmethod
    # d(a/b) = da / b - (a/b) db / b
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        b, y = saved
        ga = g / b
        return (ga if needs[0] else None), (-ga * y if needs[1] else None)


@register
class Neg(_Elementwise):
    name = "neg"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        return -x, None

    @staticmethod
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (-g,)

    code = (("np.negative(a0, y)", "s = None"), None)
    grads = {0: "-g"}


@register
class Pow(_Elementwise):
    name = "pow"

    @staticmethod
    def forward(x: np.ndarray, p: Any) -> tuple[Any, Any]:
        return (x * x if p == 2 else np.power(x, p)), (x, p)

    @staticmethod
    # d x^p = p x^(p-1)
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        x, p = saved
        return (g * (2 * x) if p == 2 else g * (p * np.power(x, p - 1)),)


class _Activation(_Elementwise):
    """An activation whose derivative depends only on what forward saved (`local`): per step,
    the scan multiplies the incoming gradient by it."""

    grads = {0: "g * d"}

    @staticmethod
    def backward_local(
            g: Any, d: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g * d,)


@register
class Exp(_Elementwise):
    name = "exp"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        y = np.exp(x)
        return y, y

    @staticmethod
    # d exp(x) = exp(x)
    def backward(g: Any, y: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g * y,)


@register
class Log(_Elementwise):
    name = "log"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        return np.log(x), x

    @staticmethod
    # d log(x) = 1 / x
    def backward(g: Any, x: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g / x,)


@register
class Tanh(_Activation):
    name = "tanh"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        y = np.tanh(x)
        return y, y

    @staticmethod
    # d tanh(x) = 1 - y^2
    def backward(g: Any, y: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        if y.ndim == 0:
            return (g * (1 - y * y),)
        d = y * y
        np.subtract(ONE[d.dtype], d, d)
        np.multiply(d, g, d)
        return (d,)

    code = (("np.tanh(a0, y)", "s = y"), "y")

    @staticmethod
    def local(y: np.ndarray) -> np.ndarray:  # 1 - y^2 for all steps at once (scan)
        d = y * y
        return np.subtract(ONE[d.dtype], d, d) if d.ndim else 1 - d


class _Constants(dict):
    """0-d arrays of one value, per dtype. On small arrays a ufunc with a Python number costs
    twice as much as the call itself (scalar conversion and dtype resolution); with a 0-d array
    of the operand's dtype it does not. Out arrays are passed positionally for the same reason."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def __missing__(self, dtype: Any) -> np.ndarray:
        c = self[dtype] = np.array(self.value, dtype=dtype)
        return c


ONE = _Constants(1)


# exp(-x) overflows for x below about -88 (float32); 1 / (1 + inf) = 0 is then right up to
# subnormals, and only numpy's overflow warning is unwanted. Two ways to avoid it, each cheaper
# at one end: clamping -x at these bounds costs an extra pass (0.6 us at 128 float32 values, 8 us
# at 16k), errstate a constant 0.5-1.5 us per call. Small arrays clamp, large ones use errstate.
# The bounds are just below the overflow point, so 1 / (1 + exp(bound)) is subnormal: below
# -bound the two ways differ (float32: 6e-39 against 0), but no normal result depends on the
# array's size (tested). float16 has no such bound: its exp overflows at 11.1, where sigmoid(-x)
# (1.5e-5) is still far above float16's smallest values (sigmoid(-16) = 1.1e-7 is a subnormal),
# so float16 is computed in float32 and rounded once.
_EXP_MAX = {np.dtype(t): np.array(v, dtype=t) for t, v in
            ((np.float32, 88.0), (np.float64, 709.0))}


_CLAMP_BELOW = 2048  # elements: where the clamp's pass starts to cost more than errstate


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-x)), accurate in both tails, into `out` (which may be x) or a new array;
    x is a float array with at least one axis."""
    if x.dtype == np.float16:
        y32 = _sigmoid(x.astype(np.float32))
        if out is None:
            return y32.astype(np.float16)
        np.copyto(out, y32, casting="same_kind")
        return out
    y = np.negative(x, out)
    if y.size < _CLAMP_BELOW:
        np.minimum(y, _EXP_MAX.get(y.dtype, 709.0), out=y)
        np.exp(y, y)
    else:
        with np.errstate(over="ignore"):
            np.exp(y, y)
    np.add(y, ONE[y.dtype], y)
    return np.reciprocal(y, y)


@register
class Sigmoid(_Activation):
    name = "sigmoid"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        if x.ndim == 0 or x.dtype.kind != "f":  # ufuncs return scalars for 0-d: no out= there
            y, _ = Sigmoid.forward(np.asarray(x, dtype=np.result_type(x, np.float16))[None])
            return y[0], y[0]
        y = _sigmoid(x)
        return y, y

    @staticmethod
    # d sigmoid(x) = y (1 - y)
    def backward(g: Any, y: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        if y.ndim == 0:  # ufuncs give scalars for 0-d: no out= there
            return (g * (y * (1 - y)),)
        d = np.subtract(ONE[y.dtype], y)
        np.multiply(d, y, d)
        np.multiply(d, g, d)
        return (d,)

    @classmethod
    def forward_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        if not out_shape:
            return None
        return ["sigmoid(a0, y)", "s = y"], {"sigmoid": _sigmoid}, "y", out_shape, ()

    @staticmethod
    def local(y: np.ndarray) -> np.ndarray:  # y (1 - y) for all steps at once (scan)
        return y * (1 - y)


@register
class Relu(_Activation):
    name = "relu"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        y = np.maximum(x, 0)
        return y, y

    @staticmethod
    # d relu(x) = [x > 0]
    def backward(g: Any, y: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g * (y > 0),)

    @staticmethod
    def local(y: np.ndarray) -> np.ndarray:  # [x > 0] for all steps at once (scan)
        return y > 0


@register
class Sqrt(_Elementwise):
    name = "sqrt"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        y = np.sqrt(x)
        return y, y

    @staticmethod
    # d sqrt(x) = 1 / (2 sqrt(x))
    def backward(g: Any, y: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g / (2 * y),)


@register
class Abs(_Elementwise):
    name = "abs"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[Any, Any]:
        return np.abs(x), x

    @staticmethod
    # d |x| = sign(x), 0 at 0 (as PyTorch)
    def backward(g: Any, x: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g * np.sign(x),)


@register
class Clip(_Elementwise):
    name = "clip"

    @staticmethod
    def forward(x: np.ndarray, lo: Any, hi: Any) -> tuple[Any, Any]:
        inside = np.ones(x.shape, dtype=bool)
        if lo is not None:
            inside &= x >= lo
        if hi is not None:
            inside &= x <= hi
        return np.clip(x, lo, hi), inside

    @staticmethod
    # d clip(x) = [lo <= x <= hi] (boundaries pass, as PyTorch)
    def backward(g: Any, inside: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g * inside,)


@register
class Where(_Elementwise):
    """a where cond else b; cond (bool) is an input that takes no gradient, so a per-step mask
    can vary inside a scan."""

    name = "where"

    @staticmethod
    def forward(a: np.ndarray, b: np.ndarray, cond: np.ndarray) -> tuple[Any, Any]:
        return np.where(cond, a, b), cond

    @staticmethod
    # the gradient follows whichever branch was taken
    def backward(g: Any, cond: np.ndarray, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g * cond if needs[0] else None), (g * ~cond if needs[1] else None), None

    code = (("np.copyto(y, a1)", "np.copyto(y, a0, where=a2)", "s = a2"), "a2")


@register
class Maximum(_Elementwise):
    name = "maximum"

    @staticmethod
    def forward(a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return np.maximum(a, b), (a, b)

    @staticmethod
    # the larger input gets g; on a tie each gets g / 2
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        a, b = saved
        half = g.dtype.type(0.5)
        tie = (a == b) * half
        return ((g * ((a > b) + tie)) if needs[0] else None), \
               ((g * ((b > a) + tie)) if needs[1] else None)


def _tanh_into(y: np.ndarray) -> np.ndarray:
    return np.tanh(y, out=y)


def _sigmoid_into(y: np.ndarray) -> np.ndarray:
    return _sigmoid(y, y)  # linear's y is float with at least one axis (x @ w.T is never 0-d)


def _tanh_grad(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    return Tanh.backward(g, y, (True,))[0]


def _sigmoid_grad(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    return Sigmoid.backward(g, y, (True,))[0]


# linear's fused activations: forward on its fresh output, and the gradient through it
_ACTIVATE = {"tanh": _tanh_into, "sigmoid": _sigmoid_into}


_ACTIVATION_GRAD = {"tanh": _tanh_grad, "sigmoid": _sigmoid_grad}


_ACTIVATION_LOCAL = {"tanh": Tanh.local, "sigmoid": Sigmoid.local}
