"""Products and fused operations: matmul, linear (x W^T + b, with its activation), addcmul, lerp,
gates (several activations over the chunks of one array). One record each where the plain
spelling would take several: a recurrent cell's step is made of these."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import Grad
from ..errors import ShapeError
from ..primitive import Primitive, register
from .elementwise import (
    _ACTIVATE, _ACTIVATION_GRAD, _ACTIVATION_LOCAL, ONE, Sigmoid, _Elementwise, _sigmoid,
)


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
    def forward(a: np.ndarray, b: np.ndarray, c: np.ndarray, value: Any = 1) -> tuple[Any, Any]:
        y = b * c
        if value != 1:
            y = y * value
        return _add_into(y, a), (b, c, value)

    @staticmethod
    # d = da + value (c db + b dc)
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        b, c, value = saved
        if value != 1:
            g2 = g * value
        else:
            g2 = g
        return g, (g2 * c if needs[1] else None), (g2 * b if needs[2] else None)

    @classmethod
    def forward_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        if params.get("value", 1) != 1 or not out_shape or any(s != out_shape for s in shapes):
            return None
        return ["np.multiply(a1, a2, y)", "np.add(y, a0, y)", "s = (a1, a2, value)"], \
            {"value": params.get("value", 1)}, ("a1", "a2", None), out_shape, ()

    @classmethod
    def grad_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
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
    def forward(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[Any, Any]:
        d = b - a
        return _add_into(w * d, a), (w, d)

    @staticmethod
    # d = (1 - w) da + w db + (b - a) dw
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        w, d = saved
        gb = g * w
        ga = (g - gb) if needs[0] else None
        return ga, (gb if needs[1] else None), (g * d if needs[2] else None)

    @classmethod
    def forward_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        if not out_shape or any(s != out_shape for s in shapes):
            return None
        return ["d = a1 - a0", "np.multiply(a2, d, y)", "np.add(y, a0, y)", "s = (a2, d)"], \
            {}, ("a2", "step"), out_shape, ()  # d = b - a is made at every step

    grads_pre = ("gb = g * s[0]",)
    grads = {0: "g - gb", 1: "gb", 2: "g * s[1]"}


@register
class MatMul(Primitive):
    name = "matmul"

    @staticmethod
    def forward(a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return (_steps_matmul(a, b) if b.ndim == 2 else a @ b), (a, b)

    @staticmethod
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        a, b = saved
        if b.ndim == 2 and a.ndim >= 2:  # dA = G B^T, dB = A^T G (dB as a Grad.of: see Product)
            gb = None
            if needs[1]:
                gb = Grad.of(a, g) if a.ndim == 2 else Grad.of(
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
    # a step's (..., n) @ a weight (n, m): a (T, ..., n) @ w
    def batches(cls, varying: tuple[bool, ...], ndims: tuple[int, ...]) -> bool:
        return varying[0] and not varying[1] and ndims[1] == 2

    @classmethod
    def forward_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        if not out_shape:
            return None
        return ["np.matmul(a0, a1, y)", "s = (a0, a1)"], {}, ("a0", "a1"), out_shape, ()

    @classmethod
    # dA = G B^T (a weight's dB is batched)
    def grad_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        if len(shapes[1]) != 2 or len(shapes[0]) < 2:
            return None
        return (), {0: "g @ s[1].T"}

    @classmethod
    def check(cls, a: np.ndarray, b: np.ndarray) -> None:
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
    weight and (out,)-bias gradients come one product per step (engine.Product), so the result
    for each step does not depend on how many steps are computed together — what lets a
    checkpointed unroll reproduce the plain one to the last bit."""

    name = "linear"

    @staticmethod
    def forward(
            x: np.ndarray, w: np.ndarray, *biases: np.ndarray, act: Any = None) -> tuple[Any, Any]:
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
            return y, (x, w, shapes, None, None)
        if y.dtype.kind != "f":  # integer inputs: the activation needs a float array
            y = y.astype(np.result_type(y, np.float16))
        y = _ACTIVATE[act](y)  # in place where it can be: y is ours
        return y, (x, w, shapes, act, y)

    @staticmethod
    # dx = G W, dW = G^T X, db = G (summed over broadcast axes)
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        _, _, _, act, y = saved
        if act is not None:  # act(x W^T + b): the chain rule through act first
            g = _ACTIVATION_GRAD[act](g, y)
        return Linear._grads(g, saved, needs)

    @staticmethod
    # act'(y) for all steps at once (scan; linear with act only)
    def local(saved: Any) -> np.ndarray:
        _, _, _, act, y = saved
        return _ACTIVATION_LOCAL[act](y)

    @staticmethod
    def backward_local(
            g: Any, d: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return Linear._grads(g * d, saved, needs)

    @classmethod
    def local_for(cls, params: dict[str, Any]) -> Any:
        return cls.local if params.get("act") else None

    @classmethod
    # steps' x (T, ..., in) against one weight
    def batches(cls, varying: tuple[bool, ...], ndims: tuple[int, ...]) -> bool:
        return not varying[1]

    @classmethod
    # as forward, for biases added in place
    def forward_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        x, w, biases = shapes[0], shapes[1], shapes[2:]
        if len(w) != 2 or not x or (len(biases) == 2 and biases[0] == biases[1] == (w[0],)) \
                or any(b != out_shape[len(out_shape) - len(b):] for b in biases):
            return None
        lines = ["np.matmul(a0, a1.T, y)"] + [f"np.add(y, a{j}, y)" for j in range(2, len(shapes))]
        act = params.get("act")
        if act is None:
            return lines + ["s = (a0, a1, shapes, None, None)"], {"shapes": list(biases)}, \
                ("a0", "a1", None, None, None), out_shape, ()
        lines.append("np.tanh(y, y)" if act == "tanh" else "sigmoid(y, y)")
        return lines + ["s = (a0, a1, shapes, act, y)"], \
            {"shapes": list(biases), "act": act, "sigmoid": _sigmoid}, \
            ("a0", "a1", None, None, "y"), out_shape, ()

    @classmethod
    # dx = G W; a full-shape bias gets G
    def grad_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        if len(shapes[1]) != 2 or not shapes[0]:
            return None
        exprs = {0: "g @ s[1]"}
        exprs.update((j, "g") for j in range(2, len(shapes)) if shapes[j] == out_shape)
        # the weights' batched gradient is _grads of g after act, which the loop has made
        return (("g = np.multiply(g, d@OUT)",) if params.get("act") else ()), exprs, \
            Linear._grads

    @staticmethod
    # g: the gradient of x W^T + b (after the activation's)
    def _grads(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        x, w, bias_shapes, _, _ = saved
        gx = _steps_matmul(g, w) if needs[0] else None
        gw: Any = None
        stepwise = x.ndim >= 3
        if needs[1]:
            if x.ndim == 1:
                gw = np.outer(g, x)
            elif stepwise:
                steps = x.shape[0]
                gw = Grad.of(g.reshape(steps, -1, w.shape[0]), x.reshape(steps, -1, w.shape[1]),
                             steps=True)
            else:
                gw = Grad.of(g, x)
        gbs: list[Any] = []
        summed: Any = None  # the gradient of an (out,) bias, the same for all of them: made once
        for shape, need in zip(bias_shapes, needs[2:]):
            if not need:
                gbs.append(None)
            elif shape != (w.shape[0],) or g.ndim == 1:
                gbs.append(g)  # the engine sums over whatever was broadcast
            else:
                if summed is None:
                    if stepwise:  # as the weight's: ones^T @ G per step
                        rows = g.reshape(g.shape[0], -1, w.shape[0])
                        summed = Grad.of(np.ones(rows.shape[:2] + (1,), rows.dtype), rows,
                                         steps=True)
                    else:
                        summed = g[0] if g.shape[0] == 1 else g.sum(axis=0)
                gbs.append(summed)
        return (gx, gw, *gbs)

    @classmethod
    def check(cls, x: np.ndarray, w: np.ndarray, *biases: np.ndarray, act: Any = None) -> None:
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
    def forward(x: np.ndarray, acts: Any) -> tuple[Any, Any]:
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
    def backward(gs: list[Any], saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
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
    def local(saved: Any) -> np.ndarray:  # every chunk's derivative, for all steps at once (scan)
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
    # as forward: views of one array
    def forward_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
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
    # every chunk's gradient side by side, times d
    def grad_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        return ("g = np.concatenate(g, axis=-1@OUT)", "np.multiply(g, d, g)"), {0: "g"}

    @staticmethod
    # the chunks' gradients side by side, times d
    def backward_local(
            gs: list[Any], d: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        if any(g is None for g in gs):
            gs = [np.zeros(d.shape[:-1] + (d.shape[-1] // len(gs),), d.dtype) if g is None
                  else g for g in gs]
        dz = np.concatenate(gs, axis=-1)
        np.multiply(dz, d, dz)
        return (dz,)
