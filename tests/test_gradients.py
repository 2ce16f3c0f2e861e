"""Proven gradients for every primitive in `tinygrad_rnn.primitive.REGISTRY`.

SPECS maps each primitive's name to a hypothesis strategy of cases (input arrays + parameters),
a function that builds the op through the public API and the same computation in numpy. For each
drawn case we check, with `tg.testing.gradcheck`, the vector-Jacobian product under a random
upstream gradient against float64 central differences, and the forward value against numpy.
A primitive added to REGISTRY without an entry here fails `test_every_primitive_has_a_spec`.

Inputs are kept away from kinks and ties (relu/abs at 0, max/maximum ties, clip bounds) by
drawing them from grids whose points are at least 0.05 apart; ties get their own tests below.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_rnn as tg
from tinygrad_rnn.primitive import REGISTRY, Primitive
from tinygrad_rnn.testing import GradcheckError, gradcheck
from tinygrad_rnn.testing import strategies as tst


def _import_all_modules() -> None:
    """Primitives registered anywhere in the package must be in REGISTRY before we compare."""
    for info in pkgutil.walk_packages(tg.__path__, prefix="tinygrad_rnn."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # a module needing an optional extra: it registers no primitive
            pass


_import_all_modules()


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """Positional input arrays (float ones are differentiated) and keyword parameters."""

    inputs: tuple[np.ndarray, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    cases: st.SearchStrategy[Case]
    build: Callable[..., Any]  # (*tensors, **params) -> Tensor or tuple, via the public API
    reference: Callable[..., Any]  # (*arrays, **params) -> ndarray or tuple, in numpy


def grid(shape: Any, step: float = 0.2, offset: float = 0.0, lo: int = -10, hi: int = 9,
         unique: bool = False) -> st.SearchStrategy[np.ndarray]:
    """Arrays of offset + step * k: values of two grids with different offsets never tie, and
    unique=True keeps every pair of entries at least `step` apart."""
    return hnp.arrays(np.int64, shape, elements=st.integers(lo, hi), unique=unique).map(
        lambda k: np.asarray(k * step + offset))


@st.composite
def unary(draw: Any, min_value: float = -2.0, max_value: float = 2.0,
          min_magnitude: float = 0.0) -> Case:
    x = draw(tst.arrays(tst.shapes(), min_value=min_value, max_value=max_value,
                        min_magnitude=min_magnitude))
    return Case((x,))


@st.composite
def binary(draw: Any, b_min_magnitude: float = 0.0) -> Case:
    sa, sb = draw(tst.broadcasting_shapes(2))
    return Case((draw(tst.arrays(sa)), draw(tst.arrays(sb, min_magnitude=b_min_magnitude))))


@st.composite
def matmul_case(draw: Any) -> Case:
    sa, sb = draw(tst.matmul_shapes())
    return Case((draw(tst.arrays(sa)), draw(tst.arrays(sb))))


@st.composite
def linear_case(draw: Any) -> Case:
    lead = draw(tst.shapes(min_dims=0, max_dims=2))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(tst.arrays(lead + (n_in,)))
    w = draw(tst.arrays((n_out, n_in)))
    shapes = {"vector": (n_out,), "full": lead + (n_out,),
              "broadcast": (1,) * len(lead) + (n_out,)}
    # up to two additive terms; two (out,) vectors (b_ih and b_hh) have a path of their own
    kinds = draw(st.sampled_from([(), ("vector",), ("full",), ("broadcast",),
                                  ("vector", "vector"), ("full", "vector"),
                                  ("broadcast", "full")]))
    act = draw(st.sampled_from([None, "tanh", "sigmoid"]))  # linear's fused activation
    return Case((x, w, *(draw(tst.arrays(shapes[k])) for k in kinds)), {"act": act})


def _linear(x: Any, w: Any, *biases: Any, act: Any = None) -> Any:
    if isinstance(x, np.ndarray):
        y = x @ w.T + sum(biases, np.zeros(()))
        return {None: y, "tanh": np.tanh(y), "sigmoid": _np_sigmoid(y)}[act]
    return tg.linear(x, w, *biases, act=act)


GATE_ACTS = ("sigmoid", "tanh", "relu", "identity")


@st.composite
def gates_case(draw: Any) -> Case:
    acts = tuple(draw(st.lists(st.sampled_from(GATE_ACTS), min_size=1, max_size=4)))
    lead = draw(tst.shapes(min_dims=0, max_dims=2))
    n = draw(st.integers(1, 3))
    x = draw(tst.arrays(lead + (n * len(acts),), min_magnitude=0.1))  # away from relu's kink
    used = tuple(draw(st.lists(st.booleans(), min_size=len(acts), max_size=len(acts))))
    return Case((x,), {"acts": acts, "used": used if any(used) else (True,) * len(acts)})


def _gates(x: Any, acts: tuple[str, ...], used: tuple[bool, ...]) -> Any:
    if isinstance(x, np.ndarray):
        k = x.shape[-1] // len(acts)
        f = {"sigmoid": _np_sigmoid, "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0.0),
             "identity": lambda v: v}
        outs = tuple(f[a](x[..., i * k:(i + 1) * k]) for i, a in enumerate(acts))
    else:
        outs = tg.gates(x, acts)
    return tuple(o for o, u in zip(outs, used) if u)  # unused outputs get no gradient


POW_EXPONENTS = [0, 1, 2, 3, -1, -2, 2.0, 0.5, 1.5, -0.5, 2.5]


@st.composite
def pow_case(draw: Any) -> Case:
    p = draw(st.sampled_from(POW_EXPONENTS))
    shape = draw(tst.shapes())
    if float(p).is_integer():  # negative bases are fine; keep away from 0 for p < 1
        x = draw(tst.arrays(shape, min_magnitude=0.25))
    else:  # fractional powers: positive bases only
        x = draw(tst.arrays(shape, min_value=0.25, max_value=2.0))
    return Case((x,), {"p": p, "style": draw(st.sampled_from(["op", "function", "method"]))})


@st.composite
def clip_case(draw: Any) -> Case:
    x = draw(grid(tst.shapes(), offset=0.1))  # odd multiples of 0.1: never on a bound
    a, b = sorted([draw(st.integers(-10, 10)) * 0.2, draw(st.integers(-10, 10)) * 0.2])
    kind = draw(st.sampled_from(["lo", "hi", "both"]))
    lo = a if kind != "hi" else None
    hi = b if kind != "lo" else None
    return Case((x,), {"lo": lo, "hi": hi,
                       "style": draw(st.sampled_from(["function", "method", "clamp"]))})


@st.composite
def where_case(draw: Any) -> Case:
    sa, sb, sc = draw(tst.broadcasting_shapes(3))
    return Case((draw(tst.arrays(sa)), draw(tst.arrays(sb)), draw(hnp.arrays(np.bool_, sc))))


@st.composite
def ternary(draw: Any) -> Case:
    """Three float arrays whose shapes broadcast together (addcmul, lerp)."""
    shapes = draw(tst.broadcasting_shapes(3))
    return Case(tuple(draw(tst.arrays(s)) for s in shapes))


@st.composite
def addcmul_case(draw: Any) -> Case:
    case = draw(ternary())
    return Case(case.inputs, {"value": draw(st.sampled_from([1, 0.5, -2.0]))})


@st.composite
def maximum_case(draw: Any) -> Case:
    sa, sb = draw(tst.broadcasting_shapes(2))
    a, b = draw(grid(sa)), draw(grid(sb, offset=0.1))  # |a - b| >= 0.1 everywhere
    if draw(st.booleans()):
        a, b = b, a
    return Case((a, b), {"style": draw(st.sampled_from(["function", "method"]))})


@st.composite
def reduce_case(draw: Any, distinct: bool = False) -> Case:
    shape = draw(tst.shapes())
    x = draw(grid(shape, step=0.05, lo=-40, hi=40, unique=True) if distinct else
             tst.arrays(shape))
    return Case((x,), {"axis": draw(tst.axes(len(shape))), "keepdims": draw(st.booleans()),
                       "style": draw(st.sampled_from(["function", "method"]))})


def _factorizations(n: int, ndim: int) -> list[tuple[int, ...]]:
    if ndim == 0:
        return [()] if n == 1 else []
    return [(d,) + rest for d in range(1, n + 1) if n % d == 0
            for rest in _factorizations(n // d, ndim - 1)]


@st.composite
def reshape_case(draw: Any) -> Case:
    x = draw(tst.arrays(tst.shapes()))
    targets = [t for k in range(4) for t in _factorizations(x.size, k)]
    target = list(draw(st.sampled_from(targets)))
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return Case((x,), {"shape": tuple(target),
                       "style": draw(st.sampled_from(["args", "tuple", "function", "view"]))})


@st.composite
def transpose_case(draw: Any) -> Case:
    x = draw(tst.arrays(tst.shapes()))
    n = x.ndim
    style = draw(st.sampled_from(["reverse", "T", "perm", "permute", "function"]
                                 + (["swap", "swap_method"] if n else [])))
    axes: Any = None
    if style in ("perm", "permute", "function"):
        axes = tuple(draw(st.permutations(range(n))))
    elif style.startswith("swap"):  # swapaxes takes negative axes too
        axes = (draw(st.integers(-n, n - 1)), draw(st.integers(-n, n - 1)))
    return Case((x,), {"axes": axes, "style": style})


@st.composite
def getitem_case(draw: Any) -> Case:
    shape = draw(tst.shapes())
    return Case((draw(tst.arrays(shape)),), {"index": draw(tst.indices(shape))})


@st.composite
def concat_case(draw: Any) -> Case:
    base = list(draw(tst.shapes(min_dims=1)))
    axis = draw(st.integers(-len(base), len(base) - 1))
    xs = []
    for _ in range(draw(st.integers(1, 3))):
        base[axis] = draw(st.integers(1, 3))
        xs.append(draw(tst.arrays(tuple(base))))
    return Case(tuple(xs), {"axis": axis, "style": draw(st.sampled_from(["concat", "cat"]))})


@st.composite
def stack_case(draw: Any) -> Case:
    shape = draw(tst.shapes(max_dims=2))
    xs = draw(st.lists(tst.arrays(shape), min_size=1, max_size=3))
    return Case(tuple(xs), {"axis": draw(st.integers(-len(shape) - 1, len(shape)))})


@st.composite
def some_used(draw: Any, n: int) -> tuple[bool, ...]:
    """Which of n outputs a test uses: any subset with at least one (often all of them)."""
    if draw(st.booleans()):
        return (True,) * n
    use = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    use[draw(st.integers(0, n - 1))] = True
    return tuple(use)


@st.composite
def split_case(draw: Any) -> Case:
    x = draw(tst.arrays(tst.shapes(min_dims=1)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    n = x.shape[axis]
    mode = draw(st.sampled_from(["int", "sizes", "chunk", "method", "chunk_method"]))
    if mode == "sizes":  # cut points anywhere, so empty pieces occur too
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
        arg: Any = list(np.diff([0, *cuts, n]))
    else:
        arg = draw(st.integers(1, n + 1))
    pieces = len(_split_sizes(n, mode, arg))
    return Case((x,), {"mode": mode, "arg": arg, "axis": axis, "use": draw(some_used(pieces))})


@st.composite
def unbind_case(draw: Any) -> Case:
    x = draw(tst.arrays(tst.shapes(min_dims=1)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return Case((x,), {"axis": axis, "use": draw(some_used(x.shape[axis])),
                       "style": draw(st.sampled_from(["function", "method"]))})


@st.composite
def checkpoint_case(draw: Any) -> Case:
    """A small cell step (x (B, I), h (B, H), W (I, H)) run under checkpoint, with a constant
    (non-Tensor) argument between the tensors and a flat or nested result."""
    b, i, h = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    x, h0, w = (draw(tst.arrays(s)) for s in ((b, i), (b, h), (i, h)))
    return Case((x, h0, w), {"scale": draw(st.sampled_from([0.5, 2.0])),
                             "nested": draw(st.booleans())})


def _split_sizes(n: int, mode: str, arg: Any) -> list[int]:
    """PyTorch's piece sizes: split(int) pieces of `arg` (last smaller); chunk(k) pieces of
    ceil(n / k); a list is taken as is."""
    if mode in ("chunk", "chunk_method"):
        arg = -(-n // arg)
    if isinstance(arg, list):
        return [int(s) for s in arg]
    return [arg] * (n // arg) + ([n % arg] if n % arg else [])


# ----------------------------------------------------------------------------- builders
def _by_style(style: str, function: Callable[[], Any], method: Callable[[], Any]) -> Any:
    return function() if style == "function" else method()


def _reduce(name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def build(x: tg.Tensor, *, axis: Any, keepdims: bool, style: str) -> tg.Tensor:
        return _by_style(style, lambda: getattr(tg, name)(x, axis=axis, keepdims=keepdims),
                         lambda: getattr(x, name)(axis=axis, keepdims=keepdims))

    def reference(x: np.ndarray, *, axis: Any, keepdims: bool, style: str) -> np.ndarray:
        if name == "logsumexp":
            return np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))
        return getattr(np, name)(x, axis=axis, keepdims=keepdims)

    return build, reference


def _pow(x: Any, *, p: float, style: str) -> Any:
    if isinstance(x, np.ndarray):
        return np.power(x, p)
    return {"op": lambda: x ** p, "function": lambda: tg.pow(x, p),
            "method": lambda: x.pow(p)}[style]()


def _clip(x: Any, *, lo: Any, hi: Any, style: str) -> Any:
    if isinstance(x, np.ndarray):
        return np.clip(x, lo, hi)
    if style == "function":
        return tg.clip(x, lo=lo, hi=hi) if lo is not None else tg.clip(x, hi=hi)
    return x.clip(lo, hi) if style == "method" else x.clamp(lo, hi)


def _reshape(x: Any, *, shape: tuple[int, ...], style: str) -> Any:
    if isinstance(x, np.ndarray):
        return x.reshape(shape)
    return {"args": lambda: x.reshape(*shape), "tuple": lambda: x.reshape(shape),
            "function": lambda: tg.reshape(x, shape), "view": lambda: x.view(*shape)}[style]()


def _transpose(x: Any, *, axes: Any, style: str) -> Any:
    if isinstance(x, np.ndarray):
        return np.swapaxes(x, *axes) if style.startswith("swap") else np.transpose(x, axes)
    if style == "reverse":
        return x.transpose()
    if style == "T":
        return x.T
    if style == "perm":
        return x.transpose(*axes)
    if style == "permute":
        return x.permute(*axes)
    if style == "function":
        return tg.transpose(x, axes)
    return tg.swapaxes(x, *axes) if style == "swap" else x.swapaxes(*axes)


def _split(x: Any, *, mode: str, arg: Any, axis: int, use: tuple[bool, ...]) -> Any:
    if isinstance(x, np.ndarray):
        sizes = _split_sizes(x.shape[axis], mode, arg)
        pieces = np.split(x, np.cumsum(sizes[:-1]), axis=axis)
    elif mode in ("int", "sizes"):
        pieces = tg.split(x, arg, axis=axis)
    elif mode == "method":
        pieces = x.split(arg, axis=axis)
    elif mode == "chunk":
        pieces = tg.chunk(x, arg, axis=axis)
    else:
        pieces = x.chunk(arg, axis=axis)
    assert len(pieces) == len(use)
    return tuple(p for p, u in zip(pieces, use) if u)  # unused pieces get no gradient


def _unbind(x: Any, *, axis: int, use: tuple[bool, ...], style: str) -> Any:
    if isinstance(x, np.ndarray):
        pieces = tuple(np.moveaxis(x, axis, 0))
    else:
        pieces = tg.unbind(x, axis) if style == "function" else x.unbind(axis)
    assert len(pieces) == len(use)
    return tuple(p for p, u in zip(pieces, use) if u)


def _cell_step(x: Any, scale: float, h: Any, w: Any, *, nested: bool) -> Any:
    """The same step for Tensors (tg) and arrays (numpy): h' = tanh(x W + scale h) * sigmoid(h)."""
    if isinstance(x, np.ndarray):
        new = np.tanh(x @ w + scale * h) / (1.0 + np.exp(-h))
    else:
        new = tg.tanh(x @ w + scale * h) * tg.sigmoid(h)
    return (new * 2.0, (new, [h])) if nested else new


def _checkpoint(x: Any, h: Any, w: Any, *, scale: float, nested: bool) -> Any:
    step = lambda x, s, h, w: _cell_step(x, s, h, w, nested=nested)  # noqa: E731
    if isinstance(x, np.ndarray):
        out = step(x, scale, h, w)
    else:
        out = tg.checkpoint(step, x, scale, h, w)
    return (out[0], out[1][0], out[1][1][0]) if nested else out


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


SPECS: dict[str, Spec] = {
    "add": Spec(binary(), lambda a, b: a + b, np.add),
    "sub": Spec(binary(), lambda a, b: a - b, np.subtract),
    "mul": Spec(binary(), lambda a, b: a * b, np.multiply),
    "div": Spec(binary(b_min_magnitude=0.5), lambda a, b: a / b, np.divide),
    "addcmul": Spec(addcmul_case(), lambda a, b, c, value: tg.addcmul(a, b, c, value=value),
                    lambda a, b, c, value: a + value * (b * c)),
    "lerp": Spec(ternary(), tg.lerp, lambda a, b, w: a + w * (b - a)),
    "neg": Spec(unary(), lambda x: -x, np.negative),
    "pow": Spec(pow_case(), _pow, _pow),
    "matmul": Spec(matmul_case(), lambda a, b: a @ b, np.matmul),
    "linear": Spec(linear_case(), _linear, _linear),
    "exp": Spec(unary(), tg.exp, np.exp),
    "log": Spec(unary(min_value=0.2, max_value=3.0), tg.log, np.log),
    "tanh": Spec(unary(-3.0, 3.0), lambda x: x.tanh(), np.tanh),
    "sigmoid": Spec(unary(-3.0, 3.0), tg.sigmoid, _np_sigmoid),
    "relu": Spec(unary(min_magnitude=0.1), lambda x: x.relu(), lambda x: np.maximum(x, 0.0)),
    "sqrt": Spec(unary(min_value=0.2, max_value=3.0), tg.sqrt, np.sqrt),
    "abs": Spec(unary(min_magnitude=0.1), tg.abs, np.abs),
    "clip": Spec(clip_case(), _clip, _clip),
    "where": Spec(where_case(), lambda a, b, c: tg.where(c, a, b),
                  lambda a, b, c: np.where(c, a, b)),
    "maximum": Spec(maximum_case(),
                    lambda a, b, style: _by_style(style, lambda: tg.maximum(a, b),
                                                  lambda: a.maximum(b)),
                    lambda a, b, style: np.maximum(a, b)),
    "sum": Spec(reduce_case(), *_reduce("sum")),
    "mean": Spec(reduce_case(), *_reduce("mean")),
    "max": Spec(reduce_case(distinct=True), *_reduce("max")),
    "logsumexp": Spec(reduce_case(), *_reduce("logsumexp")),
    "reshape": Spec(reshape_case(), _reshape, _reshape),
    "transpose": Spec(transpose_case(), _transpose, _transpose),
    "getitem": Spec(getitem_case(), lambda x, index: x[index], lambda x, index: x[index]),
    "concat": Spec(concat_case(),
                   lambda *xs, axis, style: getattr(tg, style)(list(xs), axis=axis),
                   lambda *xs, axis, style: np.concatenate(xs, axis=axis)),
    "stack": Spec(stack_case(), lambda *xs, axis: tg.stack(xs, axis=axis),
                  lambda *xs, axis: np.stack(xs, axis=axis)),
    "split": Spec(split_case(), _split, _split),
    "unbind": Spec(unbind_case(), _unbind, _unbind),
    "gates": Spec(gates_case(), _gates, _gates),
    "checkpoint": Spec(checkpoint_case(), _checkpoint, _checkpoint),
}


# ----------------------------------------------------------------------------- the generic test
def _tensors(out: Any) -> list[Any]:
    return list(out) if isinstance(out, tuple) else [out]


def test_every_primitive_has_a_spec() -> None:
    missing = sorted(set(REGISTRY) - set(SPECS))
    assert not missing, (f"primitives without a gradient test: {missing}; add an entry to SPECS "
                         f"in tests/test_gradients.py")


@pytest.mark.parametrize("name", sorted(SPECS))
@given(data=st.data())
def test_primitive(name: str, data: st.DataObject) -> None:
    spec = SPECS[name]
    case = data.draw(spec.cases, label="case")
    bound = lambda *ts: spec.build(*ts, **case.params)  # noqa: E731

    # forward, float64: the same numbers as numpy, and the output was recorded by this primitive
    ts = [tg.Tensor(a, requires_grad=a.dtype.kind == "f") for a in case.inputs]
    outs = _tensors(bound(*ts))
    refs = _tensors(spec.reference(*case.inputs, **case.params))
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert isinstance(o, tg.Tensor) and o.shape == np.shape(r) and o.dtype == np.float64
        np.testing.assert_allclose(o.data, r, rtol=1e-12, atol=1e-12)
        assert o._node is not None and o._node.op.name == name, \
            f"SPECS[{name!r}] does not exercise the {name} primitive"

    # gradients: vector-Jacobian product under random cotangents vs central differences
    assert gradcheck(bound, case.inputs)

    # float32 in -> float32 out and float32 gradients of each input's shape
    ts = [tg.Tensor(a.astype(np.float32) if a.dtype.kind == "f" else a,
                    requires_grad=a.dtype.kind == "f") for a in case.inputs]
    outs = _tensors(bound(*ts))
    assert all(o.dtype == np.float32 for o in outs)
    rng = np.random.default_rng(1)
    loss = tg.sum(tg.stack([(o * rng.standard_normal(o.shape).astype(np.float32)).sum()
                            for o in outs]))
    loss.backward()
    for t in ts:
        if t.requires_grad:
            assert t.grad is not None and t.grad.dtype == np.float32 and t.grad.shape == t.shape


# ----------------------------------------------------------------------------- focused tests
def _grad(fn: Callable[..., Any], *arrays: Any, upstream: Any = None) -> list[np.ndarray]:
    ts = [tg.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(np.ones(out.shape) if upstream is None else upstream)
    return [t.grad for t in ts]


def test_max_ties_share_the_gradient_equally() -> None:
    (g,) = _grad(lambda x: x.max(), [1.0, 3.0, 3.0])
    np.testing.assert_array_equal(g, [0.0, 0.5, 0.5])
    (g,) = _grad(lambda x: x.max(axis=1), [[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], upstream=[4.0, 3.0])
    np.testing.assert_array_equal(g, [[0.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    (g,) = _grad(lambda x: tg.max(x, axis=(0, -1), keepdims=True), [[5.0, 1.0], [0.0, 5.0]])
    np.testing.assert_array_equal(g, [[0.5, 0.0], [0.0, 0.5]])


def test_maximum_ties_give_half_to_each_input() -> None:
    ga, gb = _grad(tg.maximum, [1.0, 2.0, 3.0], [1.0, 5.0, 3.0], upstream=[2.0, 2.0, 6.0])
    np.testing.assert_array_equal(ga, [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(gb, [1.0, 2.0, 3.0])
    ga, gb = _grad(tg.maximum, [[0.0], [4.0]], [0.0, 1.0])  # broadcast, one tie at (0, 0)
    np.testing.assert_array_equal(ga, [[0.5], [2.0]])
    np.testing.assert_array_equal(gb, [0.5, 1.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [64, 8192])  # sigmoid clamps small arrays, not large ones
def test_sigmoid_tails_are_right_and_quiet_at_any_size(dtype: Any, size: int) -> None:
    x = np.linspace(-2000.0, 2000.0, size).astype(dtype)
    e = np.exp(-np.abs(x.astype(np.float64)))  # the reference: exp never overflows
    ref = np.where(x >= 0, 1.0, e) / (1.0 + e)
    t = tg.Tensor(x, requires_grad=True)
    # what numpy warns about by default raises here (underflow to 0 is right, and ignored)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = tg.sigmoid(t)
        y.backward(np.ones_like(x))
        (gate,) = tg.gates(tg.Tensor(x), ("sigmoid",))
    assert y.dtype == dtype and gate.dtype == dtype
    np.testing.assert_array_equal(gate.data, y.data)
    tiny, eps = np.finfo(dtype).tiny, np.finfo(dtype).eps
    normal = ref >= tiny
    np.testing.assert_allclose(y.data[normal], ref[normal], rtol=4 * eps, atol=0)
    assert (y.data[~normal] <= tiny).all() and (y.data >= 0).all()  # subnormal or 0 below
    np.testing.assert_allclose(t.grad, y.data * (1 - y.data), rtol=4 * eps, atol=tiny)
    nan = tg.sigmoid(np.full(size, np.nan, dtype))
    assert np.isnan(nan.data).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logsumexp_is_stable_for_huge_inputs(dtype: Any) -> None:
    x = np.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4, -1e4 - 2.0]], dtype=dtype)
    t = tg.Tensor(x, requires_grad=True)
    y = tg.logsumexp(t, axis=1)
    e1, e2 = np.exp(-1.0), np.exp(-2.0)
    expected = [1e4 + np.log1p(e1), -1e4 + np.log(2.0 + e2)]
    assert y.dtype == dtype and np.isfinite(y.data).all()
    np.testing.assert_allclose(y.data, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    y.backward(np.array([1.0, 2.0], dtype=dtype))
    soft = np.array([[1.0, e1, 0.0], [1.0, 1.0, e2]])
    soft /= soft.sum(axis=1, keepdims=True)
    assert np.isfinite(t.grad).all()
    # float32: x - y rounds to ulp(1e4) ~ 1e-3 before exp, hence the looser float32 tolerance
    tol = 1e-3 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(t.grad, soft * [[1.0], [2.0]], rtol=tol, atol=tol * 1e-2)
    assert gradcheck(lambda v: tg.logsumexp(v, axis=-1), [x.astype(np.float64)])
    z = tg.logsumexp(tg.Tensor(np.array([-1e4, 1e4]), requires_grad=True))  # axis=None, 0-d
    assert z.shape == () and z.item() == 1e4


def test_getitem_repeated_indices_accumulate() -> None:
    (g,) = _grad(lambda x: x[np.array([0, 2, 0, 0, 3])], np.zeros(4))
    np.testing.assert_array_equal(g, [3.0, 0.0, 1.0, 1.0])
    (g,) = _grad(lambda x: x[[1, 1, -2], :], np.zeros((3, 2)), upstream=[[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(g, [[0, 0], [9, 12], [0, 0]])
    idx = tg.Tensor(np.array([[2, 2], [0, 2]]))  # an integer Tensor as index, 2-d result
    (g,) = _grad(lambda x: x[..., idx], np.zeros((2, 3)))
    np.testing.assert_array_equal(g, [[1, 0, 3], [1, 0, 3]])
    (g,) = _grad(lambda x: x[np.array([1, 1]), np.array([0, 0])], np.zeros((2, 2)))
    np.testing.assert_array_equal(g, [[0, 0], [2, 0]])
    assert gradcheck(lambda x, i: x[i, ::-1], [np.arange(6.0).reshape(3, 2), np.array([2, 2, 0])])


def test_split_chunk_and_unbind_record_one_node() -> None:
    x = tg.Tensor(np.arange(20.0).reshape(4, 5), requires_grad=True)
    for name, pieces in [("split", tg.split(x, 2, axis=1)), ("split", tg.split(x, [1, 0, 4], -1)),
                         ("split", x.chunk(3, axis=1)), ("unbind", x.unbind(-1))]:
        node = pieces[0]._node
        assert node is not None and node.op.name == name
        assert all(p._node is node for p in pieces) and node.outputs == len(pieces)
        assert [p._idx for p in pieces] == list(range(len(pieces)))
        assert all(t._node is None for t in node.inputs)  # straight from the leaf: one record


def test_split_with_only_some_outputs_used() -> None:
    x = tg.Tensor(np.arange(10.0).reshape(2, 5), requires_grad=True)
    _, b, _ = tg.split(x, [2, 2, 1], axis=1)
    (b * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0, 3, 3, 0], [0, 0, 3, 3, 0]])
    assert gradcheck(lambda v: tg.split(v, 2)[-1], [np.arange(5.0)])


@pytest.mark.parametrize("length, n, sizes", [(5, 2, [3, 2]), (6, 4, [2, 2, 2]), (5, 3, [2, 2, 1]),
                                              (4, 4, [1, 1, 1, 1]), (3, 5, [1, 1, 1]), (1, 1, [1])])
def test_chunk_follows_torch_chunk_sizes(length: int, n: int, sizes: list[int]) -> None:
    x = tg.Tensor(np.arange(float(length)))
    assert [p.shape[0] for p in x.chunk(n)] == sizes
    assert [p.shape[0] for p in tg.chunk(x, n, axis=-1)] == sizes


def test_split_sizes_follow_torch_split() -> None:
    x = tg.Tensor(np.zeros((2, 7)))
    assert [p.shape for p in tg.split(x, 3, axis=1)] == [(2, 3), (2, 3), (2, 1)]
    assert [p.shape for p in x.split([4, 0, 3], axis=-1)] == [(2, 4), (2, 0), (2, 3)]
    assert [p.shape for p in tg.split(x, 5)] == [(2, 7)]


def test_lerp_with_a_number_weight_and_addcmul_value_match_torch_semantics() -> None:
    a = tg.Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    b = tg.Tensor(np.array([[0.5], [4.0]]), requires_grad=True)
    y = tg.lerp(a, b, 0.25)  # broadcasts to (2, 3); the weight is a constant
    assert y.shape == (2, 3) and y.dtype == np.float64
    np.testing.assert_allclose(y.data, 0.75 * a.data + 0.25 * b.data)
    y.sum().backward()
    np.testing.assert_allclose(a.grad, [1.5, 1.5, 1.5])  # 0.75 from each of the 2 rows
    np.testing.assert_allclose(b.grad, [[0.75], [0.75]])  # 0.25 from each of the 3 columns
    np.testing.assert_array_equal(a.lerp(b, 0.25).data, y.data)  # the method form
    x32 = tg.Tensor(np.ones(3, np.float32))
    assert tg.addcmul(x32, x32, x32, value=-2.0).dtype == np.float32  # the number does not upcast
    np.testing.assert_array_equal(x32.addcmul(x32 * 3.0, x32, value=-2.0).data, [-5.0] * 3)
    np.testing.assert_array_equal(tg.addcmul(x32, x32 * 3.0, x32, value=-2.0).data, [-5.0] * 3)


ZERO_D = {  # name -> (build, numpy reference, value)
    "neg": (lambda x: -x, np.negative, 0.7),
    "exp": (tg.exp, np.exp, 0.7),
    "log": (tg.log, np.log, 0.7),
    "tanh": (tg.tanh, np.tanh, 0.7),
    "sigmoid": (tg.sigmoid, _np_sigmoid, 0.7),
    "relu": (tg.relu, lambda x: np.maximum(x, 0.0), 0.7),
    "relu_negative": (tg.relu, lambda x: np.maximum(x, 0.0), -0.7),
    "sqrt": (tg.sqrt, np.sqrt, 0.7),
    "abs": (tg.abs, np.abs, -0.7),
    "pow": (lambda x: x ** 3, lambda x: x ** 3, 0.7),
    "pow_fractional": (lambda x: x ** 0.5, np.sqrt, 0.7),
    "clip": (lambda x: x.clip(0.0, 0.5), lambda x: np.clip(x, 0.0, 0.5), 0.3),
    "sum": (lambda x: x.sum(), np.sum, 0.7),
    "mean": (lambda x: x.mean(keepdims=True), lambda x: np.mean(x, keepdims=True), 0.7),
    "max": (lambda x: x.max(), np.max, 0.7),
    "logsumexp": (tg.logsumexp, lambda x: x, 0.7),
    "reshape": (lambda x: x.reshape(1, 1), lambda x: x.reshape(1, 1), 0.7),
    "transpose": (lambda x: x.T, np.transpose, 0.7),
    "getitem": (lambda x: x[None, ...], lambda x: x[None, ...], 0.7),
    "stack": (lambda x: tg.stack([x, x * 2.0]), lambda x: np.stack([x, x * 2.0]), 0.7),
}


@pytest.mark.parametrize("name", sorted(ZERO_D))
def test_zero_dim_input(name: str) -> None:
    build, reference, value = ZERO_D[name]
    x = np.array(value)
    t = tg.Tensor(x, requires_grad=True)
    y = build(t)
    np.testing.assert_allclose(y.data, reference(x), rtol=1e-12)
    assert y.shape == np.shape(reference(x))
    y.backward(np.ones(y.shape))
    assert t.grad is not None and t.grad.shape == () and t.grad.dtype == np.float64
    assert gradcheck(build, [x])


SCALAR_OPERANDS = {  # a Python number (or a plain ndarray) on either side of a Tensor
    "x + 2": lambda x: x + 2.0, "2 + x": lambda x: 2.0 + x,
    "x - 2": lambda x: x - 2, "2 - x": lambda x: 2 - x,
    "x * 3": lambda x: x * 3.0, "3 * x": lambda x: 3 * x,
    "x / 2.5": lambda x: x / 2.5, "2.5 / x": lambda x: 2.5 / x,
    "2 ** x": lambda x: 2.0 ** x,
    "maximum(x, 0.25)": lambda x: tg.maximum(x, 0.25),
    "maximum(0.25, x)": lambda x: tg.maximum(0.25, x),
    "where(c, x, 0)": lambda x: tg.where(x.data > 0, x, 0.0),
    "where(c, 1, x)": lambda x: tg.where(np.array([True, False, True]), 1.0, x),
    "ndarray + x": lambda x: np.array([1.0, 2.0, 3.0]) + x,
    "ndarray * x": lambda x: np.array([[1.0], [2.0]]) * x,
    "ndarray @ x": lambda x: np.ones((2, 3)) @ x,
    "x @ ndarray": lambda x: x @ np.arange(6.0).reshape(3, 2),
}


@pytest.mark.parametrize("name", sorted(SCALAR_OPERANDS))
def test_constant_operands(name: str) -> None:
    fn = SCALAR_OPERANDS[name]
    x = np.array([0.6, -1.3, 1.7])  # away from 0 and from 0.25
    assert gradcheck(fn, [x])
    y32 = fn(tg.Tensor(x.astype(np.float32), requires_grad=True))
    if "ndarray" not in name:  # a Python number never changes the dtype
        assert y32.dtype == np.float32


def test_transpose_with_negative_axes() -> None:
    """numpy accepts negative axes in transpose; the gradient must undo the same permutation."""
    x = np.arange(6.0).reshape(2, 3)
    y = tg.Tensor(x).transpose(-1, 0)
    np.testing.assert_array_equal(y.data, x.transpose(-1, 0))
    assert gradcheck(lambda t: t.transpose(-1, 0), [x])
    assert gradcheck(lambda t: tg.transpose(t, (1, -1, 0)), [np.arange(24.0).reshape(2, 3, 4)])


# ----------------------------------------------------------------------------- the checker itself
class _WrongSquare(Primitive):
    """x^2 with a deliberately wrong derivative (x instead of 2x). Not registered."""

    name = "wrong_square"

    @staticmethod
    def forward(x):
        return x * x, x

    @staticmethod
    def backward(g, x, needs):
        return (g * x,)


class _ForgotTranspose(Primitive):
    """a @ w whose backward for `a` forgets to transpose w. With w square the shapes still fit,
    so only the values can reveal the mistake. Not registered."""

    name = "forgot_transpose"

    @staticmethod
    def forward(a, w):
        return a @ w, (a, w)

    @staticmethod
    def backward(g, saved, needs):
        a, w = saved
        return g @ w, a.T @ g


def test_gradcheck_catches_a_wrong_derivative() -> None:
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: _WrongSquare.apply(t), [x])
    err = info.value
    assert isinstance(err, AssertionError)
    assert (err.input_index, err.element_index) == (0, (0, 0))
    assert err.analytic == pytest.approx(err.numeric / 2)
    msg = str(err)
    assert "input 0" in msg and "(0, 0)" in msg and "analytic" in msg and "numeric" in msg
    assert repr(err.analytic) in msg and repr(err.numeric) in msg


def test_gradcheck_catches_a_missing_transpose() -> None:
    rng = np.random.default_rng(3)
    a, w = rng.normal(size=(2, 3)), rng.normal(size=(3, 3))
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda a, w: _ForgotTranspose.apply(a, w), [a, w])
    assert gradcheck(lambda a, w: a @ w, [a, w])


def test_gradcheck_inputs_outputs_and_no_mutation() -> None:
    x32 = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    before = x32.copy()
    idx = np.array([1, 1, 0])

    def fn(x: tg.Tensor, i: tg.Tensor, y: tg.Tensor, s: tg.Tensor) -> Any:
        assert x.dtype == np.float64 and x.requires_grad and not i.requires_grad
        h = tg.tanh(x[i] * s)
        return (h.sum(axis=0), (h, [y * 2.0]))  # nested outputs; y needs no special care

    assert gradcheck(fn, [x32, idx, tg.Tensor(np.array([1.5, -0.5])), 0.75]) is True
    np.testing.assert_array_equal(x32, before)
    assert x32.dtype == np.float32
    assert gradcheck(lambda x, unused: x * 2.0, [np.ones(2), np.ones(3)])  # grad None -> zeros
    assert gradcheck(tg.exp, np.array([0.1, 0.2]))  # one bare array is one input


def test_gradcheck_rejects_bad_outputs_and_mutation() -> None:
    x = np.array([1.0, 2.0])
    with pytest.raises(TypeError, match="float"):
        gradcheck(lambda t: tg.Tensor(np.array([1, 2])), [x])
    with pytest.raises(TypeError, match=r"\[1\]"):
        gradcheck(lambda t: (t * 2.0, 3.0), [x])
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda t: tg.Tensor(t.data.astype(np.float32)), [x])

    def mutating(t: tg.Tensor) -> tg.Tensor:
        t.data += 1.0
        return t * 2.0

    with pytest.raises(GradcheckError, match="in place"):
        gradcheck(mutating, [x])
    np.testing.assert_array_equal(x, [1.0, 2.0])


def test_gradcheck_works_inside_no_grad() -> None:
    with tg.no_grad():
        assert gradcheck(lambda t: (t * t).sum(), [np.array([1.0, -2.0])])
        with pytest.raises(GradcheckError):
            gradcheck(lambda t: _WrongSquare.apply(t), [np.array([1.0, -2.0])])


def test_testing_imports_without_hypothesis() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import tinygrad_rnn.testing as T\n"
        "assert T.gradcheck and T.GradcheckError\n"
        "try:\n"
        "    T.strategies\n"
        "except ImportError as e:\n"
        "    assert 'pip install \"tinygrad_rnn[dev]\"' in str(e), e\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- the strategies
@given(st.data())
def test_strategies_promise(data: st.DataObject) -> None:
    shape = data.draw(tst.shapes())
    assert len(shape) <= 3 and all(1 <= n <= 4 for n in shape)
    other = data.draw(tst.broadcastable_shapes(shape))
    np.broadcast_shapes(shape, other)
    a = data.draw(tst.arrays(shape, np.float32, -1.0, 0.5, min_magnitude=0.25))
    assert a.dtype == np.float32 and a.shape == shape and np.isfinite(a).all()
    assert ((a >= -1.0) & (a <= 0.5) & (np.abs(a) >= 0.25)).all()
    xs = data.draw(tst.sequences(3, st.integers(1, 2), 4))
    assert xs.shape[0] == 3 and xs.shape[2] == 4 and xs.dtype == np.float64
    sa, sb = data.draw(tst.matmul_shapes())
    np.matmul(np.zeros(sa), np.zeros(sb))
    x = np.zeros(shape)
    x[data.draw(tst.indices(shape))]
    np.sum(x, axis=data.draw(tst.axes(len(shape))))


def test_docstring_example_runs() -> None:
    """The 'property-testing your own cell' example of gradcheck's docstring, verbatim."""
    doc = gradcheck.__doc__ or ""
    block = doc.split("hypothesis::", 1)[1]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    indent = min(len(ln) - len(ln.lstrip()) for ln in lines)
    source = "\n".join(ln[indent:] for ln in block.splitlines())
    namespace: dict[str, Any] = {}
    exec(compile(source, "<gradcheck docstring>", "exec"), namespace)  # noqa: S102
    namespace["test_my_cell_bptt"]()


def test_gates_takes_any_sequence_of_activations_and_integer_input() -> None:
    x = np.linspace(-2.0, 2.0, 12).reshape(2, 6)
    want = [o.data for o in tg.gates(x, ("tanh", "sigmoid", "identity"))]
    for acts in (["tanh", "sigmoid", "identity"], ("tanh", "sigmoid", "identity")):
        for o, w in zip(tg.gates(x, acts), want):
            np.testing.assert_array_equal(o.data, w)
    ints = tg.gates(np.arange(6).reshape(1, 6), ["tanh", "sigmoid", "identity"])
    floats = tg.gates(np.arange(6.0).reshape(1, 6), ("tanh", "sigmoid", "identity"))
    for o, w in zip(ints, floats):
        assert o.dtype.kind == "f"
        np.testing.assert_array_equal(o.data, w.data)
    for bad in ([["tanh"], "sigmoid", "identity"], (["tanh"], "sigmoid", "identity")):
        with pytest.raises(ValueError, match="gates: activations"):
            tg.gates(x, bad)
