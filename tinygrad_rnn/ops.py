"""The table of primitives: each forward next to its derivative, then the public functions.

Conventions (see `primitive.Primitive`): `forward(*arrays, **params) -> (out, saved)`,
`backward(g, saved, needs) -> grads`. Gradients may keep the broadcast shape; the engine
un-broadcasts. Everything else in the library (losses, layers, cells) is composed from these.
"""

from __future__ import annotations

import builtins
from typing import Any, Sequence

import numpy as np

from .engine import Deferred, Pieces
from .errors import DTypeError, ShapeError
from .primitive import Primitive, register
from .tensor import _NUMBERS, Axis, Tensor, _const, _numeric


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


# ----------------------------------------------------------------------------- arithmetic
@register
class Add(_Elementwise):
    name = "add"

    @staticmethod
    def forward(a, b):
        return a + b, None

    @staticmethod
    def backward(g, saved, needs):  # d(a+b) = da + db
        return g, g

    code = (("np.add(a0, a1, y)", "s = None"), None)
    grads = {0: "g", 1: "g"}


@register
class Sub(_Elementwise):
    name = "sub"

    @staticmethod
    def forward(a, b):
        return a - b, None

    @staticmethod
    def backward(g, saved, needs):  # d(a-b) = da - db
        return g, (-g if needs[1] else None)

    code = (("np.subtract(a0, a1, y)", "s = None"), None)
    grads = {0: "g", 1: "-g"}


@register
class Mul(_Elementwise):
    name = "mul"

    @staticmethod
    def forward(a, b):
        return a * b, (a, b)

    @staticmethod
    def backward(g, saved, needs):  # d(ab) = b da + a db
        a, b = saved
        return (g * b if needs[0] else None), (g * a if needs[1] else None)

    code = (("np.multiply(a0, a1, y)", "s = (a0, a1)"), ("a0", "a1"))
    grads = {0: "g * s[1]", 1: "g * s[0]"}


def _add_into(y: np.ndarray, a: np.ndarray) -> np.ndarray:
    """y + a for a fresh y: in place when a broadcasts into y's trailing axes with y's dtype
    (the result then has y's shape), else a new array."""
    if y.ndim and a.dtype == y.dtype and a.shape == y.shape[y.ndim - a.ndim:]:
        np.add(y, a, y)
        return y
    return y + a


# A (T, ..., n) @ (n, m) product is defined as numpy's step-by-step one (T small GEMMs): each
# step's rows then do not depend on how many steps are multiplied together, which is what lets a
# checkpointed unroll (projected segment by segment) reproduce the plain one to the last bit.
# One GEMM over all rows is much faster at batch >= 16 and gives the same bits wherever the BLAS
# treats rows independently, which depends on the shapes and layouts only (small products take
# other kernels). So each shape is tried once both ways on random operands of its layout, and
# the single GEMM is used for it only if the bits agreed.
_ROWWISE: dict[tuple[Any, ...], bool] = {}


def _rows_agree(a: np.ndarray, b: np.ndarray) -> bool:
    rng = np.random.default_rng(0)  # not the library's generator: a user's draws stay as they were
    a2 = rng.standard_normal(a.shape).astype(a.dtype)
    b2 = (rng.standard_normal(b.shape).astype(b.dtype) if b.flags.c_contiguous else
          rng.standard_normal(b.shape[::-1]).astype(b.dtype).T)
    return np.array_equal((a2.reshape(-1, a.shape[-1]) @ b2).reshape(a.shape[:-1] + (-1,)),
                          a2 @ b2)


def _steps_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for a (T, ..., n) and a matrix b (n, m), bit-identical to numpy's step-by-step
    product: (T, ..., m)."""
    if a.ndim < 3 or not a.flags.c_contiguous or not (b.flags.c_contiguous or
                                                       b.flags.f_contiguous):
        return a @ b
    key = (a.shape, b.shape, b.flags.c_contiguous, a.dtype, b.dtype)
    rowwise = _ROWWISE.get(key)
    if rowwise is None:
        if len(_ROWWISE) >= 1024:
            _ROWWISE.clear()
        rowwise = _ROWWISE[key] = _rows_agree(a, b)
    if rowwise:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    return a @ b

@register
class Addcmul(_Elementwise):
    """a + value * b * c (PyTorch's addcmul) as one record, e.g. an LSTM's c' = f c + i g as
    addcmul(f * c, i, g): one record and one temporary fewer than a product and a sum."""

    name = "addcmul"

    @staticmethod
    def forward(a, b, c, value=1):
        y = b * c
        if value != 1:
            y = y * value
        return _add_into(y, a), (b, c, value)

    @staticmethod
    def backward(g, saved, needs):  # d = da + value (c db + b dc)
        b, c, value = saved
        if value != 1:
            g2 = g * value
        else:
            g2 = g
        return g, (g2 * c if needs[1] else None), (g2 * b if needs[2] else None)

    @classmethod
    def forward_code(cls, params, shapes, out_shape):
        if params.get("value", 1) != 1 or not out_shape or any(s != out_shape for s in shapes):
            return None
        return ["np.multiply(a1, a2, y)", "np.add(y, a0, y)", "s = (a1, a2, value)"], \
            {"value": params.get("value", 1)}, ("a1", "a2", None), out_shape, ()

    @classmethod
    def grad_code(cls, params, shapes, out_shape):
        if params.get("value", 1) != 1:
            return None
        exprs = {0: "g", 1: "g * s[1]", 2: "g * s[0]"}
        return (), {j: e for j, e in exprs.items() if shapes[j] == out_shape}


@register
class Lerp(_Elementwise):
    """a + w (b - a) (PyTorch's lerp) as one record, e.g. a GRU's h' = (1 - z) n + z h as
    lerp(n, h, z)."""

    name = "lerp"

    @staticmethod
    def forward(a, b, w):
        d = b - a
        return _add_into(w * d, a), (w, d)

    @staticmethod
    def backward(g, saved, needs):  # d = (1 - w) da + w db + (b - a) dw
        w, d = saved
        gb = g * w
        ga = (g - gb) if needs[0] else None
        return ga, (gb if needs[1] else None), (g * d if needs[2] else None)

    @classmethod
    def forward_code(cls, params, shapes, out_shape):
        if not out_shape or any(s != out_shape for s in shapes):
            return None
        return ["d = a1 - a0", "np.multiply(a2, d, y)", "np.add(y, a0, y)", "s = (a2, d)"], \
            {}, ("a2", "step"), out_shape, ()  # d = b - a is made at every step

    grads_pre = ("gb = g * s[0]",)
    grads = {0: "g - gb", 1: "gb", 2: "g * s[1]"}


@register
class Div(_Elementwise):
    name = "div"

    @staticmethod
    def forward(a, b):
        y = a / b
        return y, (b, y)

    @staticmethod
    def backward(g, saved, needs):  # d(a/b) = da / b - (a/b) db / b
        b, y = saved
        ga = g / b
        return (ga if needs[0] else None), (-ga * y if needs[1] else None)


@register
class Neg(_Elementwise):
    name = "neg"

    @staticmethod
    def forward(x):
        return -x, None

    @staticmethod
    def backward(g, saved, needs):
        return (-g,)

    code = (("np.negative(a0, y)", "s = None"), None)
    grads = {0: "-g"}


@register
class Pow(_Elementwise):
    name = "pow"

    @staticmethod
    def forward(x, p):
        return (x * x if p == 2 else np.power(x, p)), (x, p)

    @staticmethod
    def backward(g, saved, needs):  # d x^p = p x^(p-1)
        x, p = saved
        return (g * (2 * x) if p == 2 else g * (p * np.power(x, p - 1)),)


@register
class MatMul(Primitive):
    name = "matmul"

    @staticmethod
    def forward(a, b):
        return (_steps_matmul(a, b) if b.ndim == 2 else a @ b), (a, b)

    @staticmethod
    def backward(g, saved, needs):
        a, b = saved
        if b.ndim == 2 and a.ndim >= 2:  # dA = G B^T, dB = A^T G (deferred: see Deferred)
            gb = None
            if needs[1]:
                gb = Deferred(a, g) if a.ndim == 2 else Deferred(
                    a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1]),
                    steps=True)
            return (_steps_matmul(g, b.T) if needs[0] else None), gb
        if a.ndim == 1 and b.ndim == 1:  # dot product: g is a scalar
            return (g * b if needs[0] else None), (g * a if needs[1] else None)
        # promote 1-d operands to matrices so one formula covers every case
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = g2[..., None, :]
        if b.ndim == 1:
            g2 = g2[..., None]
        ga = gb = None
        if needs[0]:  # dA = G B^T
            ga = g2 @ np.swapaxes(b2, -1, -2)
            if a.ndim == 1:
                ga = ga.reshape(ga.shape[:-2] + (ga.shape[-1],)) if ga.ndim > 2 else ga[0]
        if needs[1]:  # dB = A^T G
            gb = np.swapaxes(a2, -1, -2) @ g2
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb

    @classmethod
    def batches(cls, varying, ndims):  # a step's (..., n) @ a weight (n, m): a (T, ..., n) @ w
        return varying[0] and not varying[1] and ndims[1] == 2

    @classmethod
    def forward_code(cls, params, shapes, out_shape):
        if not out_shape:
            return None
        return ["np.matmul(a0, a1, y)", "s = (a0, a1)"], {}, ("a0", "a1"), out_shape, ()

    @classmethod
    def grad_code(cls, params, shapes, out_shape):  # dA = G B^T (a weight's dB is batched)
        if len(shapes[1]) != 2 or len(shapes[0]) < 2:
            return None
        return (), {0: "g @ s[1].T"}

    @classmethod
    def check(cls, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"matmul: shapes {a.shape} and {b.shape}: both operands need at "
                             f"least one dimension (use * for scalars)")
        k1, k2 = a.shape[-1], (b.shape[-2] if b.ndim > 1 else b.shape[0])
        if k1 != k2:
            raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} are not aligned "
                             f"({k1} != {k2})")
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape}: batch dimensions "
                         f"{a.shape[:-2]} and {b.shape[:-2]} cannot be broadcast together")


@register
class Linear(Primitive):
    """x @ w.T + b1 + b2 + ...: PyTorch's addmm, with any number of additive terms (each
    broadcast to the output), as one record instead of a transpose, a matmul and additions.

    For x with 3 or more axes the leading axis is time: numpy multiplies step by step, and the
    weight and (out,)-bias gradients come one piece per step (Deferred, Pieces), so the result
    for each step does not depend on how many steps are computed together — what lets a
    checkpointed unroll reproduce the plain one to the last bit."""

    name = "linear"

    @staticmethod
    def forward(x, w, *biases, act=None):
        y = _steps_matmul(x, w.T)
        if len(biases) == 2 and biases[0].shape == biases[1].shape == (w.shape[0],):
            # e.g. b_ih + b_hh over a whole sequence: one pass over y instead of two
            y = _add_into(y, biases[0] + biases[1])
            shapes = [b.shape for b in biases]
        else:
            shapes = []
            for b in biases:
                shapes.append(b.shape)
                y = _add_into(y, b)
        if act is None:
            return y, (x, w, shapes)
        if y.dtype.kind != "f":  # integer inputs: the activation needs a float array
            y = y.astype(np.result_type(y, np.float16))
        y = _ACTIVATE[act](y)  # in place where it can be: y is ours
        return y, (x, w, shapes, act, y)

    @staticmethod
    def backward(g, saved, needs):  # dx = G W, dW = G^T X, db = G (summed over broadcast axes)
        if len(saved) == 5:  # act(x W^T + b): the chain rule through act first
            g = _ACTIVATION_GRAD[saved[3]](g, saved[4])
        return Linear._grads(g, saved, needs)

    @staticmethod
    def local(saved):  # act'(y) for all steps at once (scan; linear with act only)
        return _ACTIVATION_LOCAL[saved[3]](saved[4])

    @staticmethod
    def backward_local(g, d, saved, needs):
        return Linear._grads(g * d, saved, needs)

    @classmethod
    def local_for(cls, params):
        return cls.local if params.get("act") else None

    @classmethod
    def batches(cls, varying, ndims):  # steps' x (T, ..., in) against one weight
        return not varying[1]

    @classmethod
    def forward_code(cls, params, shapes, out_shape):  # as forward, for biases added in place
        x, w, biases = shapes[0], shapes[1], shapes[2:]
        if len(w) != 2 or not x or (len(biases) == 2 and biases[0] == biases[1] == (w[0],)) \
                or any(b != out_shape[len(out_shape) - len(b):] for b in biases):
            return None
        lines = ["np.matmul(a0, a1.T, y)"] + [f"np.add(y, a{j}, y)" for j in range(2, len(shapes))]
        act = params.get("act")
        if act is None:
            return lines + ["s = (a0, a1, shapes)"], {"shapes": list(biases)}, \
                ("a0", "a1", None), out_shape, ()
        lines.append("np.tanh(y, y)" if act == "tanh" else "sigmoid(y, y)")
        return lines + ["s = (a0, a1, shapes, act, y)"], \
            {"shapes": list(biases), "act": act, "sigmoid": _sigmoid}, \
            ("a0", "a1", None, None, "y"), out_shape, ()

    @classmethod
    def grad_code(cls, params, shapes, out_shape):  # dx = G W; a full-shape bias gets G
        if len(shapes[1]) != 2 or not shapes[0]:
            return None
        exprs = {0: "g @ s[1]"}
        exprs.update((j, "g") for j in range(2, len(shapes)) if shapes[j] == out_shape)
        # the weights' batched gradient is _grads of g after act, which the loop has made
        return (("g = np.multiply(g, d@OUT)",) if params.get("act") else ()), exprs, \
            Linear._grads

    @staticmethod
    def _grads(g, saved, needs):  # g: the gradient of x W^T + b (after the activation's)
        x, w, bias_shapes = saved[:3]
        gx = _steps_matmul(g, w) if needs[0] else None
        gw = None
        stepwise = x.ndim >= 3
        if needs[1]:
            if x.ndim == 1:
                gw = np.outer(g, x)
            elif stepwise:
                steps = x.shape[0]
                gw = Deferred(g.reshape(steps, -1, w.shape[0]), x.reshape(steps, -1, w.shape[1]),
                              steps=True)
            else:
                gw = Deferred(g, x)
        gbs = []
        summed = None  # the gradient of an (out,) bias, the same for all of them: made once
        for shape, need in zip(bias_shapes, needs[2:]):
            if not need:
                gbs.append(None)
            elif shape != (w.shape[0],) or g.ndim == 1:
                gbs.append(g)  # the engine sums over whatever was broadcast
            else:
                if summed is None:
                    if stepwise:  # one piece per step, the last first (a view at batch 1)
                        rows = g.reshape(g.shape[0], -1, w.shape[0])
                        summed = Pieces.of_rows((rows[:, 0] if rows.shape[1] == 1 else
                                                 rows.sum(axis=1))[::-1])
                    else:
                        summed = g[0] if g.shape[0] == 1 else g.sum(axis=0)
                gbs.append(summed)
        return (gx, gw, *gbs)

    @classmethod
    def check(cls, x, w, *biases, act=None):
        if w.ndim != 2 or x.ndim == 0 or x.shape[-1] != w.shape[1]:
            raise ShapeError(f"linear: x {x.shape} and weight {w.shape} do not fit: expected x "
                             f"(..., in) and weight (out, in) with the same 'in'")
        out = x.shape[:-1] + (w.shape[0],)
        for b in biases:
            try:
                if np.broadcast_shapes(out, b.shape) != out:
                    raise ValueError
            except ValueError:
                raise ShapeError(f"linear: bias {b.shape} cannot be broadcast to the output "
                                 f"shape {out}") from None


# ----------------------------------------------------------------------------- elementwise
class _Activation(_Elementwise):
    """An activation whose derivative depends only on what forward saved (`local`): per step,
    the scan multiplies the incoming gradient by it."""

    grads = {0: "g * d"}

    @staticmethod
    def backward_local(g, d, saved, needs):
        return (g * d,)


@register
class Exp(_Elementwise):
    name = "exp"

    @staticmethod
    def forward(x):
        y = np.exp(x)
        return y, y

    @staticmethod
    def backward(g, y, needs):  # d exp(x) = exp(x)
        return (g * y,)


@register
class Log(_Elementwise):
    name = "log"

    @staticmethod
    def forward(x):
        return np.log(x), x

    @staticmethod
    def backward(g, x, needs):  # d log(x) = 1 / x
        return (g / x,)


@register
class Tanh(_Activation):
    name = "tanh"

    @staticmethod
    def forward(x):
        y = np.tanh(x)
        return y, y

    @staticmethod
    def backward(g, y, needs):  # d tanh(x) = 1 - y^2
        if y.ndim == 0:
            return (g * (1 - y * y),)
        d = y * y
        np.subtract(ONE[d.dtype], d, d)
        np.multiply(d, g, d)
        return (d,)

    code = (("np.tanh(a0, y)", "s = y"), "y")

    @staticmethod
    def local(y):  # 1 - y^2 for all steps at once (scan)
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
    def forward(x):
        if x.ndim == 0 or x.dtype.kind != "f":  # ufuncs return scalars for 0-d: no out= there
            y, _ = Sigmoid.forward(np.asarray(x, dtype=np.result_type(x, np.float16))[None])
            return y[0], y[0]
        y = _sigmoid(x)
        return y, y

    @staticmethod
    def backward(g, y, needs):  # d sigmoid(x) = y (1 - y)
        if y.ndim == 0:  # ufuncs give scalars for 0-d: no out= there
            return (g * (y * (1 - y)),)
        d = np.subtract(ONE[y.dtype], y)
        np.multiply(d, y, d)
        np.multiply(d, g, d)
        return (d,)

    @classmethod
    def forward_code(cls, params, shapes, out_shape):
        if not out_shape:
            return None
        return ["sigmoid(a0, y)", "s = y"], {"sigmoid": _sigmoid}, "y", out_shape, ()

    @staticmethod
    def local(y):  # y (1 - y) for all steps at once (scan)
        return y * (1 - y)


@register
class Relu(_Activation):
    name = "relu"

    @staticmethod
    def forward(x):
        y = np.maximum(x, 0)
        return y, y

    @staticmethod
    def backward(g, y, needs):  # d relu(x) = [x > 0]
        return (g * (y > 0),)

    @staticmethod
    def local(y):  # [x > 0] for all steps at once (scan)
        return y > 0


@register
class Sqrt(_Elementwise):
    name = "sqrt"

    @staticmethod
    def forward(x):
        y = np.sqrt(x)
        return y, y

    @staticmethod
    def backward(g, y, needs):  # d sqrt(x) = 1 / (2 sqrt(x))
        return (g / (2 * y),)


@register
class Abs(_Elementwise):
    name = "abs"

    @staticmethod
    def forward(x):
        return np.abs(x), x

    @staticmethod
    def backward(g, x, needs):  # d |x| = sign(x), 0 at 0 (as PyTorch)
        return (g * np.sign(x),)


@register
class Clip(_Elementwise):
    name = "clip"

    @staticmethod
    def forward(x, lo, hi):
        inside = np.ones(x.shape, dtype=bool)
        if lo is not None:
            inside &= x >= lo
        if hi is not None:
            inside &= x <= hi
        return np.clip(x, lo, hi), inside

    @staticmethod
    def backward(g, inside, needs):  # d clip(x) = [lo <= x <= hi] (boundaries pass, as PyTorch)
        return (g * inside,)


@register
class Where(_Elementwise):
    """a where cond else b; cond (bool) is an input that takes no gradient, so a per-step mask
    can vary inside a scan."""

    name = "where"

    @staticmethod
    def forward(a, b, cond):
        return np.where(cond, a, b), cond

    @staticmethod
    def backward(g, cond, needs):  # the gradient follows whichever branch was taken
        return (g * cond if needs[0] else None), (g * ~cond if needs[1] else None), None

    code = (("np.copyto(y, a1)", "np.copyto(y, a0, where=a2)", "s = a2"), "a2")


@register
class Maximum(_Elementwise):
    name = "maximum"

    @staticmethod
    def forward(a, b):
        return np.maximum(a, b), (a, b)

    @staticmethod
    def backward(g, saved, needs):  # the larger input gets g; on a tie each gets g / 2
        a, b = saved
        half = g.dtype.type(0.5)
        tie = (a == b) * half
        return ((g * ((a > b) + tie)) if needs[0] else None), \
               ((g * ((b > a) + tie)) if needs[1] else None)


# ----------------------------------------------------------------------------- reductions
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
    def forward(x, axis, keepdims):
        return x.sum(axis=axis, keepdims=keepdims), (x.shape, axis)

    @staticmethod
    def backward(g, saved, needs):  # every summand gets the upstream gradient
        shape, axis = saved
        return (np.broadcast_to(g.reshape(_keep_shape(shape, axis)), shape),)


@register
class Mean(Primitive):
    name = "mean"

    @staticmethod
    def forward(x, axis, keepdims):
        return x.mean(axis=axis, keepdims=keepdims), (x.shape, axis)

    @staticmethod
    def backward(g, saved, needs):  # d mean = 1/n per element
        shape, axis = saved
        kshape = _keep_shape(shape, axis)
        n = builtins.max(int(np.prod(shape)) // builtins.max(int(np.prod(kshape)), 1), 1)
        return (np.broadcast_to(g.reshape(kshape) / g.dtype.type(n), shape),)


@register
class Max(Primitive):
    """Maximum over axes. Ties share the gradient equally (each of k tied maxima gets g / k)."""

    name = "max"

    @staticmethod
    def forward(x, axis, keepdims):
        m = x.max(axis=axis, keepdims=True)
        hit = x == m
        count = hit.sum(axis=axis, keepdims=True).astype(x.dtype)
        return (m if keepdims else _drop(m, axis)), (hit, count)

    @staticmethod
    def backward(g, saved, needs):
        hit, count = saved
        return (hit * (g.reshape(count.shape) / count),)


@register
class LogSumExp(Primitive):
    """log(sum(exp(x))) over axes, shifted by the maximum so that ±1e4 stays finite."""

    name = "logsumexp"

    @staticmethod
    def forward(x, axis, keepdims):
        m = x.max(axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)  # all -inf (or inf) rows: shift by 0 instead of nan
        y = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
        return (y if keepdims else _drop(y, axis)), (x, y)

    @staticmethod
    def backward(g, saved, needs):  # d logsumexp(x) = softmax(x)
        x, y = saved
        return (g.reshape(y.shape) * np.exp(x - y),)


def _drop(y: np.ndarray, axis: Axis) -> np.ndarray:
    """Undo keepdims=True: remove the reduced (size-1) axes."""
    return y.reshape(()) if axis is None else np.squeeze(y, axis=axis)


# ----------------------------------------------------------------------------- shapes
@register
class Reshape(Primitive):
    name = "reshape"

    @staticmethod
    def forward(x, shape):
        return x.reshape(shape), x.shape

    @staticmethod
    def backward(g, shape, needs):
        return (g.reshape(shape),)


@register
class Transpose(Primitive):
    name = "transpose"

    @staticmethod
    def forward(x, axes):
        return x.transpose(axes), axes

    @staticmethod
    def backward(g, axes, needs):  # the inverse permutation undoes it
        return (g.transpose(None if axes is None else np.argsort(axes)),)

    @staticmethod
    def backward_deferred(g, axes, needs):  # (A^T B)^T = B^T A: a weight's W.T, kept deferred
        if axes is None or tuple(axes) == (1, 0):
            return (Deferred(g.b, g.a, g.steps),)
        return None


def _is_advanced(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, np.ndarray) for i in items)


@register
class GetItem(Primitive):
    """x[index] with numpy semantics; repeated integer indices accumulate their gradients."""

    name = "getitem"

    @staticmethod
    def forward(x, index):
        return x[index], (x.shape, index)

    @staticmethod
    def backward(g, saved, needs):
        shape, index = saved
        gx = np.zeros(shape, dtype=g.dtype)
        if _is_advanced(index):
            np.add.at(gx, index, g)
        else:
            gx[index] = g
        return (gx,)


@register
class Concat(Primitive):
    name = "concat"

    @staticmethod
    def forward(*xs, axis):
        y = np.concatenate(xs, axis=axis)
        return y, (np.cumsum([x.shape[axis] for x in xs[:-1]]), axis)

    @staticmethod
    def backward(g, saved, needs):  # each input gets its own slab of g
        cuts, axis = saved
        return tuple(np.split(g, cuts, axis=axis))

    @classmethod
    def check(cls, *xs, axis):
        shapes = ", ".join(str(x.shape) for x in xs)
        raise ShapeError(f"concat: shapes {shapes} do not match except along axis {axis}")


@register
class Stack(Primitive):
    name = "stack"

    @staticmethod
    def forward(*xs, axis):
        if xs and xs[0].ndim and axis % (xs[0].ndim + 1) == 0 and len({x.shape for x in xs}) == 1:
            # unroll's outputs: one concatenate is 2-3x faster than np.stack's Python code
            y = np.concatenate(xs).reshape((len(xs),) + xs[0].shape)
        else:
            y = np.stack(xs, axis=axis)
        return y, axis % y.ndim

    @staticmethod
    def backward(g, axis, needs):
        return tuple(np.moveaxis(g, axis, 0))

    @classmethod
    def check(cls, *xs, axis):
        shapes = ", ".join(str(x.shape) for x in xs)
        raise ShapeError(f"stack: all inputs must have the same shape, got {shapes}")


@register
class Split(Primitive):
    """Several pieces along `axis`, recorded as one operation (one node, n outputs)."""

    name = "split"
    nout = None

    @staticmethod
    def forward(x, sizes, axis):
        index = [slice(None)] * x.ndim
        outs, start = [], 0
        for n in sizes:
            index[axis] = slice(start, start + n)
            outs.append(x[tuple(index)])
            start += n
        return outs, (x.dtype, sizes, axis, x.shape)

    @classmethod
    def forward_code(cls, params, shapes, out_shape):  # views of the input, as forward
        sizes, axis = params["sizes"], params["axis"]
        lines, start = [], 0
        for k, n in enumerate(sizes):
            index = ", ".join([":"] * axis + [f"{start}:{start + n}"])
            lines.append(f"y{k} = a0[{index}]")
            start += n
        return lines + ["s = (a0.dtype, sizes, axis, a0.shape)"], \
            {"sizes": sizes, "axis": axis}, None, None, tuple((k, "a0") for k in range(len(sizes)))

    @classmethod
    def grad_code(cls, params, shapes, out_shape):  # every piece's gradient, side by side
        return (f"g = np.concatenate(g, axis={int(params['axis'])}@OUT)",), {0: "g"}

    @staticmethod
    def backward(gs, saved, needs):  # pieces that got no gradient contribute zeros
        dtype, sizes, axis, shape = saved
        parts = []
        for g, n in zip(gs, sizes):
            if g is None:
                s = list(shape)
                s[axis] = n
                g = np.zeros(s, dtype=dtype)
            parts.append(g)
        return (np.concatenate(parts, axis=axis),)


_ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity")


@register
class Gates(Primitive):
    """Equal chunks of the last axis, each through its own activation, as one record.

    Gated cells split a pre-activation into gates and squash each (LSTM: sigmoid, sigmoid,
    tanh, sigmoid). Doing it here costs one pass of exp over all gates instead of a split and
    one primitive per gate, forward and backward. Outputs are views of one array (an identity
    chunk: of the input)."""

    name = "gates"
    nout = None

    @staticmethod
    def forward(x, acts):
        n = x.shape[-1] // len(acts)
        if "sigmoid" in acts:  # one sigmoid pass over everything, then redo the other chunks
            y, _ = Sigmoid.forward(x)
        else:
            y = np.array(x, dtype=np.result_type(x, np.float16))
        outs = []
        for k, act in enumerate(acts):
            yk = y[..., k * n:(k + 1) * n]
            if act == "tanh":
                np.tanh(x[..., k * n:(k + 1) * n], yk)
            elif act == "relu":
                np.maximum(x[..., k * n:(k + 1) * n], 0, out=yk)
            elif act == "identity" and x.dtype == y.dtype:
                yk = x[..., k * n:(k + 1) * n]  # a view of the input: no copy (backward needs no y)
            elif act == "identity" and "sigmoid" in acts:
                yk[...] = x[..., k * n:(k + 1) * n]
            outs.append(yk)
        return outs, (y, acts)

    @staticmethod
    def backward(gs, saved, needs):
        y, acts = saved
        n = y.shape[-1] // len(acts)
        if "sigmoid" in acts:  # d sigmoid = y (1 - y); the other chunks are overwritten below
            d = np.subtract(ONE[y.dtype], y)
            np.multiply(d, y, d)
        else:
            d = np.empty_like(y)  # every chunk is written below
        for k, (act, g) in enumerate(zip(acts, gs)):
            dk = d[..., k * n:(k + 1) * n]
            if g is None:
                dk[...] = 0
                continue
            if act == "identity":
                dk[...] = g
                continue
            if act == "tanh":  # d tanh = 1 - y^2
                yk = y[..., k * n:(k + 1) * n]
                np.multiply(yk, yk, dk)
                np.subtract(ONE[y.dtype], dk, dk)
            elif act == "relu":  # d relu = [y > 0]
                np.greater(y[..., k * n:(k + 1) * n], 0, out=dk, casting="unsafe")
            np.multiply(dk, g, dk)
        return (d,)

    @staticmethod
    def local(saved):  # every chunk's derivative, for all steps at once (scan)
        y, acts = saved
        n = y.shape[-1] // len(acts)
        if "sigmoid" in acts:  # y (1 - y) over the whole array (a column slice costs more),
            d = np.subtract(ONE[y.dtype], y)  # then the other chunks overwritten
            np.multiply(d, y, d)
        else:
            d = np.empty_like(y)
        for k, act in enumerate(acts):
            yk, dk = y[..., k * n:(k + 1) * n], d[..., k * n:(k + 1) * n]
            if act == "sigmoid":
                continue
            elif act == "tanh":
                np.multiply(yk, yk, dk)
                np.subtract(ONE[y.dtype], dk, dk)
            elif act == "relu":
                np.greater(yk, 0, out=dk, casting="unsafe")
            else:
                dk[...] = 1
        return d

    @classmethod
    def forward_code(cls, params, shapes, out_shape):  # as forward: views of one array
        acts = params["acts"]
        if not shapes[0]:
            return None
        n = shapes[0][-1] // len(acts)
        lines = ["sigmoid(a0, y)" if "sigmoid" in acts else "np.copyto(y, a0)"]
        for k, act in enumerate(acts):
            chunk = f"[..., {k * n}:{(k + 1) * n}]"
            lines.append(f"y{k} = a0{chunk}" if act == "identity" else f"y{k} = y{chunk}")
            if act == "tanh":
                lines.append(f"np.tanh(a0{chunk}, y{k})")
            elif act == "relu":
                lines.append(f"np.maximum(a0{chunk}, 0, out=y{k})")
        return lines + ["s = (y, acts)"], {"acts": acts, "sigmoid": _sigmoid}, ("y", None), \
            shapes[0], tuple((k, "a0") for k, a in enumerate(acts) if a == "identity")

    @classmethod
    def grad_code(cls, params, shapes, out_shape):  # every chunk's gradient side by side, times d
        return ("g = np.concatenate(g, axis=-1@OUT)", "np.multiply(g, d, g)"), {0: "g"}

    @staticmethod
    def backward_local(gs, d, saved, needs):  # the chunks' gradients side by side, times d
        if any(g is None for g in gs):
            gs = [np.zeros(d.shape[:-1] + (d.shape[-1] // len(gs),), d.dtype) if g is None
                  else g for g in gs]
        dz = np.concatenate(gs, axis=-1)
        np.multiply(dz, d, dz)
        return (dz,)


@register
class Unbind(Primitive):
    """The slices along `axis` as separate tensors, recorded as one op (stack's inverse).

    `unroll` uses it to walk time: T getitems would each allocate a full-size gradient."""

    name = "unbind"
    nout = None

    @staticmethod
    def forward(x, axis):
        return list(x if axis == 0 else np.moveaxis(x, axis, 0)), (x.dtype, x.shape, axis)

    @staticmethod
    def backward(gs, saved, needs):  # stack the slices' gradients; unused slices give zeros
        dtype, shape, axis = saved
        gx = np.empty(shape, dtype=dtype)  # every slice is written below: no zero-fill pass
        view = gx if axis == 0 else np.moveaxis(gx, axis, 0)
        for i, g in enumerate(gs):
            if g is None:
                view[i] = 0
            else:
                view[i] = g
        return (gx,)


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


# ----------------------------------------------------------------------------- functions
from .tensor import dim_alias  # noqa: E402 - PyTorch's dim= / keepdim= on the functions below


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


def _norm_axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dims")
    return axis % ndim


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

