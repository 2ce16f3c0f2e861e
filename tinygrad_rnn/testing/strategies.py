"""Hypothesis strategies for property tests of tinygrad_rnn code, built on hypothesis.extra.numpy.

Small by default (sides <= 4, <= 3 dims) so that float64 central differences stay fast. Values
are always finite: no NaN, no inf, no subnormals. Any `shape` argument may be a tuple or a
strategy of tuples; any size argument of `sequences` may be an int or a strategy of ints.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np

from . import HYPOTHESIS_MISSING

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
    from hypothesis.strategies import SearchStrategy
except ImportError as e:  # pragma: no cover - exercised in a subprocess by our tests
    raise ImportError(HYPOTHESIS_MISSING) from e

Shape = tuple[int, ...]
ShapeLike = Union[Shape, SearchStrategy[Shape]]
IntLike = Union[int, SearchStrategy[int]]

__all__ = [
    "arrays", "axes", "broadcastable_shapes", "broadcasting_shapes", "indices", "matmul_shapes",
    "sequences", "shapes",
]


def _strategy(x: Any) -> SearchStrategy[Any]:
    return x if isinstance(x, SearchStrategy) else st.just(x)


def _float_bound(v: float, width: int, up: bool) -> float:
    """`v` rounded to the nearest float of `width` bits on the inside of the interval."""
    if width == 64:
        return float(v)
    ftype = np.float32 if width == 32 else np.float16
    r = ftype(v)
    if (up and r < v) or (not up and r > v):
        r = np.nextafter(r, ftype(np.inf if up else -np.inf))
    return float(r)


def _elements(dtype: np.dtype, lo: float, hi: float, min_magnitude: float) -> SearchStrategy[Any]:
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        return st.integers(math.ceil(lo), math.floor(hi))
    if dtype.kind != "f":
        raise TypeError(f"arrays: unsupported dtype {dtype}; use a float, integer or bool dtype")
    width = dtype.itemsize * 8

    def floats(a: float, b: float) -> SearchStrategy[float]:
        return st.floats(_float_bound(a, width, True), _float_bound(b, width, False),
                         allow_nan=False, allow_infinity=False, allow_subnormal=False,
                         width=width)  # type: ignore[arg-type]

    if min_magnitude <= 0:
        return floats(lo, hi)
    # two intervals: [lo, -m] and [m, hi], whichever are non-empty
    parts = [floats(a, b) for a, b in ((lo, min(hi, -min_magnitude)),
                                        (max(lo, min_magnitude), hi)) if a <= b]
    if not parts:
        raise ValueError(f"arrays: no value in [{lo}, {hi}] has |x| >= {min_magnitude}")
    return st.one_of(parts)


def arrays(shape: ShapeLike, dtype: Any = np.float64, min_value: float = -2.0,
           max_value: float = 2.0, *, min_magnitude: float = 0.0,
           unique: bool = False) -> SearchStrategy[np.ndarray]:
    """Arrays of `shape` (a tuple or a strategy of tuples) with finite values in
    [min_value, max_value]. `min_magnitude > 0` keeps values away from 0 (|x| >= min_magnitude):
    for log, division, or kinks such as relu and abs. Integer and bool dtypes work too."""
    if min_value > max_value:
        raise ValueError(f"arrays: min_value {min_value} > max_value {max_value}")
    dtype = np.dtype(dtype)
    return hnp.arrays(dtype, shape, elements=_elements(dtype, min_value, max_value,
                                                       min_magnitude), unique=unique)


def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 1,
           max_side: int = 4) -> SearchStrategy[Shape]:
    """Array shapes with min_dims..max_dims axes, each of length min_side..max_side."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(shape: ShapeLike, min_dims: int = 0, max_dims: int | None = None,
                         min_side: int = 1, max_side: int = 4) -> SearchStrategy[Shape]:
    """Shapes that broadcast with `shape`: size-1 axes on either side, fewer or more dims.
    `max_dims` defaults to max(len(shape), min_dims) + 2 (hypothesis' default)."""
    def draw_for(s: Shape) -> SearchStrategy[Shape]:
        return hnp.broadcastable_shapes(tuple(s), min_dims=min_dims, max_dims=max_dims,
                                        min_side=min_side, max_side=max_side)

    if isinstance(shape, SearchStrategy):
        return shape.flatmap(draw_for)
    return draw_for(shape)


def broadcasting_shapes(n: int = 2, min_dims: int = 0, max_dims: int = 3, min_side: int = 1,
                        max_side: int = 4) -> SearchStrategy[tuple[Shape, ...]]:
    """Tuples of `n` shapes that broadcast together: e.g. ((3, 1), (4,)) or ((), (2, 2)).
    Any operand may be the one with size-1 axes or fewer dims (both directions)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=min_dims, max_dims=max_dims, min_side=min_side,
        max_side=max_side).map(lambda b: tuple(b.input_shapes))


def sequences(T: IntLike = st.integers(1, 5), B: IntLike = st.integers(1, 3),
              I: IntLike = st.integers(1, 4), dtype: Any = np.float64,  # noqa: E741
              min_value: float = -2.0, max_value: float = 2.0) -> SearchStrategy[np.ndarray]:
    """Time-major float sequences of shape (T, B, I); each size an int or a strategy of ints."""
    shape = st.tuples(_strategy(T), _strategy(B), _strategy(I))
    return arrays(shape, dtype=dtype, min_value=min_value, max_value=max_value)


@st.composite
def matmul_shapes(draw: Any, max_batch_dims: int = 2, min_side: int = 1,
                  max_side: int = 4) -> tuple[Shape, Shape]:
    """Aligned shape pairs (a, b) for `a @ b`: 1-D operands (vector-matrix, matrix-vector,
    dot product, and against batches), 2-D, and batched with broadcast batch dims."""
    side = st.integers(min_side, max_side)
    m, k, n = draw(side), draw(side), draw(side)
    a_vec, b_vec = draw(st.booleans()), draw(st.booleans())
    batch_a, batch_b = draw(broadcasting_shapes(2, min_dims=0, max_dims=max_batch_dims,
                                                min_side=1, max_side=3))
    a = (k,) if a_vec else batch_a + (m, k)  # numpy: a 1-D operand has no batch dims
    b = (k,) if b_vec else batch_b + (k, n)
    return a, b


def axes(ndim: int, allow_none: bool = True, allow_tuple: bool = True) -> SearchStrategy[Any]:
    """`axis` arguments for an array of `ndim` dims: None, an int (possibly negative) or a
    tuple of distinct axes (possibly negative)."""
    options: list[SearchStrategy[Any]] = []
    if allow_none or ndim == 0:
        options.append(st.none())
    if ndim > 0:
        options.append(st.integers(-ndim, ndim - 1))
        if allow_tuple:
            options.append(hnp.valid_tuple_axes(ndim, min_size=1))
    return st.one_of(options)


@st.composite
def _array_index(draw: Any, shape: Shape) -> tuple[Any, ...]:
    """An index mixing integer arrays (values repeat freely, so gradients must accumulate) with
    slices (any step, negative too) and ints, optionally with a leading Ellipsis."""
    ndim = len(shape)
    k = draw(st.integers(1, ndim))  # how many axes are indexed explicitly
    lead = k < ndim and draw(st.booleans())  # `...` first: the explicit part hits the last axes
    offset = ndim - k if lead else 0
    array_axes = draw(st.sets(st.integers(0, k - 1), min_size=1, max_size=min(2, k)))
    index_shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    parts: list[Any] = [Ellipsis] if lead else []
    for j in range(k):
        size = shape[offset + j]
        if j in array_axes:
            a = draw(hnp.arrays(np.intp, index_shape, elements=st.integers(-size, size - 1)))
            parts.append(a.tolist() if draw(st.booleans()) else a)
        else:
            parts.append(draw(st.slices(size) | st.integers(-size, size - 1)))
    return tuple(parts)


def indices(shape: Shape, allow_arrays: bool = True) -> SearchStrategy[Any]:
    """Valid `x[index]` for an array of `shape`: ints (negative too), slices (negative steps
    too), None, Ellipsis and, if allow_arrays, integer arrays or lists with repeats."""
    basic = hnp.basic_indices(tuple(shape), min_dims=0, allow_newaxis=True, allow_ellipsis=True)
    if not allow_arrays or len(shape) == 0 or 0 in shape:
        return basic
    return basic | _array_index(tuple(shape))
