"""Primitives that move values without arithmetic: reshape, transpose, indexing, concat, stack,
split, unbind."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import Grad
from ..errors import ShapeError
from ..primitive import Primitive, register


@register
class Reshape(Primitive):
    name = "reshape"

    @staticmethod
    def forward(x: np.ndarray, shape: Any) -> tuple[Any, Any]:
        return x.reshape(shape), x.shape

    @staticmethod
    def backward(g: Any, shape: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g.reshape(shape),)


@register
class Transpose(Primitive):
    name = "transpose"

    @staticmethod
    def forward(x: np.ndarray, axes: Any) -> tuple[Any, Any]:
        return x.transpose(axes), axes

    @staticmethod
    # the inverse permutation undoes it
    def backward(g: Any, axes: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return (g.transpose(None if axes is None else np.argsort(axes)),)

    @staticmethod
    # (A^T B)^T = B^T A: a weight's W.T, kept a product
    def backward_product(g: Any, axes: Any, needs: tuple[bool, ...]) -> tuple[Any, ...] | None:
        if axes is None or tuple(axes) == (1, 0):
            return (Grad.of(g.b, g.a, g.steps),)
        return None


def _is_advanced(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, np.ndarray) for i in items)


@register
class GetItem(Primitive):
    """x[index] with numpy semantics; repeated integer indices accumulate their gradients."""

    name = "getitem"

    @staticmethod
    def forward(x: np.ndarray, index: Any) -> tuple[Any, Any]:
        return x[index], (x.shape, index)

    @staticmethod
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
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
    def forward(*xs: np.ndarray, axis: Any) -> tuple[Any, Any]:
        y = np.concatenate(xs, axis=axis)
        return y, (np.cumsum([x.shape[axis] for x in xs[:-1]]), axis)

    @staticmethod
    # each input gets its own slab of g
    def backward(g: Any, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        cuts, axis = saved
        return tuple(np.split(g, cuts, axis=axis))

    @classmethod
    def check(cls, *xs: np.ndarray, axis: Any) -> None:
        shapes = ", ".join(str(x.shape) for x in xs)
        raise ShapeError(f"concat: shapes {shapes} do not match except along axis {axis}")


@register
class Stack(Primitive):
    name = "stack"

    @staticmethod
    def forward(*xs: np.ndarray, axis: Any) -> tuple[Any, Any]:
        if xs and xs[0].ndim and axis % (xs[0].ndim + 1) == 0 and len({x.shape for x in xs}) == 1:
            # unroll's outputs: one concatenate is 2-3x faster than np.stack's Python code
            y = np.concatenate(xs).reshape((len(xs),) + xs[0].shape)
        else:
            y = np.stack(xs, axis=axis)
        return y, axis % y.ndim

    @staticmethod
    def backward(g: Any, axis: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        return tuple(np.moveaxis(g, axis, 0))

    @classmethod
    def check(cls, *xs: np.ndarray, axis: Any) -> None:
        shapes = ", ".join(str(x.shape) for x in xs)
        raise ShapeError(f"stack: all inputs must have the same shape, got {shapes}")


@register
class Split(Primitive):
    """Several pieces along `axis`, recorded as one operation (one node, n outputs)."""

    name = "split"
    nout = None

    @staticmethod
    def forward(x: np.ndarray, sizes: Any, axis: Any) -> tuple[Any, Any]:
        index = [slice(None)] * x.ndim
        outs, start = [], 0
        for n in sizes:
            index[axis] = slice(start, start + n)
            outs.append(x[tuple(index)])
            start += n
        return outs, (x.dtype, sizes, axis, x.shape)

    @classmethod
    # views of the input, as forward
    def forward_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        sizes, axis = params["sizes"], params["axis"]
        lines, start = [], 0
        for k, n in enumerate(sizes):
            index = ", ".join([":"] * axis + [f"{start}:{start + n}"])
            lines.append(f"y{k} = a0[{index}]")
            start += n
        return lines + ["s = (a0.dtype, sizes, axis, a0.shape)"], \
            {"sizes": sizes, "axis": axis}, None, None, tuple((k, "a0") for k in range(len(sizes)))

    @classmethod
    # every piece's gradient, side by side
    def grad_code(
            cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Any:
        return (f"g = np.concatenate(g, axis={int(params['axis'])}@OUT)",), {0: "g"}

    @staticmethod
    # pieces that got no gradient contribute zeros
    def backward(gs: list[Any], saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        dtype, sizes, axis, shape = saved
        parts = []
        for g, n in zip(gs, sizes):
            if g is None:
                s = list(shape)
                s[axis] = n
                g = np.zeros(s, dtype=dtype)
            parts.append(g)
        return (np.concatenate(parts, axis=axis),)


@register
class Unbind(Primitive):
    """The slices along `axis` as separate tensors, recorded as one op (stack's inverse).

    `unroll` uses it to walk time: T getitems would each allocate a full-size gradient."""

    name = "unbind"
    nout = None

    @staticmethod
    def forward(x: np.ndarray, axis: Any) -> tuple[Any, Any]:
        return list(x if axis == 0 else np.moveaxis(x, axis, 0)), (x.dtype, x.shape, axis)

    @staticmethod
    # stack the slices' gradients; unused slices give zeros
    def backward(gs: list[Any], saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        dtype, shape, axis = saved
        gx = np.empty(shape, dtype=dtype)  # every slice is written below: no zero-fill pass
        view = gx if axis == 0 else np.moveaxis(gx, axis, 0)
        for i, g in enumerate(gs):
            if g is None:
                view[i] = 0
            else:
                view[i] = g
        return (gx,)
