"""The engine semantics of API §1: the tape, backward, no_grad, detach, detect_anomaly, the
engine invariants (inputs never mutated, dtypes kept, gradients shaped like their leaves), bad
input and the Tensor surface.

Each test checks one promise and fails if it is broken. Expected values come from plain numpy
written in this file (hand-written backward loops, index counting for un-broadcasting), never from
the engine itself. Upstream gradients are random, not all-ones, so a wrong transpose cannot hide.
"""

from __future__ import annotations

import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_rnn as tg
from tinygrad_rnn.errors import DTypeError, GraphError, ShapeError
from tinygrad_rnn.engine import Grad
from tinygrad_rnn.primitive import REGISTRY

THIS_FILE = Path(__file__).name


# ============================================================================= helpers
def _here() -> int:
    """The line number of the caller (to check that anomaly messages name the user's line)."""
    return sys._getframe(1).f_lineno


def _graph_nodes(root: tg.Tensor) -> list[Any]:
    """Every record reachable from `root`, found iteratively (the test must not recurse either)."""
    out: list[Any] = []
    seen: set[int] = set()
    stack = [root._node] if root._node is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        for t in node.inputs or ():
            if t._node is not None:
                stack.append(t._node)
    return out


def _reduce_to(local: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a gradient of the broadcast output shape back onto an input of `shape`, by counting
    which output element reads which input element (independent of the engine's unbroadcast)."""
    n = int(np.prod(shape))
    ids = np.broadcast_to(np.arange(n).reshape(shape), local.shape)
    return np.bincount(ids.ravel(), weights=local.ravel(), minlength=n).reshape(shape)


def _rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# ============================================================================= 1. the tape
def _numpy_rnn(h0: np.ndarray, W: np.ndarray, xs: np.ndarray, G: np.ndarray):
    """h_t = tanh(h_{t-1} @ W + x_t); loss = sum_t <G_t, h_t>; hand-written BPTT."""
    T = xs.shape[0]
    hs = [h0]
    for t in range(T):
        hs.append(np.tanh(hs[-1] @ W + xs[t]))
    dW = np.zeros_like(W)
    dxs = np.zeros_like(xs)
    dh = np.zeros_like(h0)
    for t in reversed(range(T)):
        dh = dh + G[t]
        da = dh * (1 - hs[t + 1] ** 2)
        dW += hs[t].T @ da
        dxs[t] = da
        dh = da @ W.T
    return np.stack(hs[1:]), dh, dW, dxs


def test_recurrence_gradient_matches_hand_written_bptt() -> None:
    rng = np.random.default_rng(0)
    T, B, H = 25, 3, 5
    h0_np, W_np = _rand(rng, (B, H)), _rand(rng, (H, H)) * 0.6
    xs_np, G = _rand(rng, (T, B, H)), _rand(rng, (T, B, H))
    h0 = tg.Tensor(h0_np, requires_grad=True)
    W = tg.Tensor(W_np, requires_grad=True)
    xs = [tg.Tensor(xs_np[t], requires_grad=True) for t in range(T)]
    h, hs = h0, []
    for t in range(T):
        h = tg.tanh(h @ W + xs[t])
        hs.append(h)
    ys = tg.stack(hs)
    ys.backward(G)
    ref_ys, dh0, dW, dxs = _numpy_rnn(h0_np, W_np, xs_np, G)
    np.testing.assert_allclose(ys.data, ref_ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h0.grad, dh0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(W.grad, dW, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.stack([x.grad for x in xs]), dxs, rtol=1e-10, atol=1e-12)


def test_10000_step_recurrence_backpropagates_without_recursion() -> None:
    rng = np.random.default_rng(1)
    T, B, H = 10_000, 2, 8
    W = tg.Tensor(_rand(rng, (H, H), np.float32) * 0.3, requires_grad=True)
    h0 = tg.Tensor(np.zeros((B, H), np.float32), requires_grad=True)
    xs = _rand(rng, (T, B, H), np.float32)
    h = h0
    for t in range(T):
        h = (h @ W + xs[t]).tanh()
    assert len(_graph_nodes(h)) == 3 * T
    h.backward(_rand(rng, (B, H), np.float32))  # a recursive walk dies at ~1000 records
    for leaf in (W, h0):
        assert leaf.grad is not None
        assert leaf.grad.shape == leaf.shape and leaf.grad.dtype == np.float32
        assert np.isfinite(leaf.grad).all()
    assert np.abs(W.grad).sum() > 0
    # dropping a long graph that was never replayed must not crash the interpreter either
    h = h0
    for t in range(T):
        h = (h @ W + xs[t]).tanh()
    del h


def test_concurrent_backward_in_threads_gives_each_graph_its_own_gradients() -> None:
    # independent graphs replayed at the same time in different threads (as PyTorch allows):
    # each must end with exactly the gradient it gets when run alone
    T, B, H = 300, 4, 16
    W_np = np.random.default_rng(14).standard_normal((H, H)) * 0.2

    def run(seed: int) -> np.ndarray | None:
        xs = np.random.default_rng(seed).standard_normal((T, B, H))
        W = tg.Tensor(W_np.copy(), requires_grad=True)
        h = tg.Tensor(np.zeros((B, H)))
        for t in range(T):
            h = (h @ W + xs[t]).tanh()
        h.sum().backward()
        return W.grad

    alone = {seed: run(seed) for seed in range(3)}
    wrong: list[str] = []

    def worker(seed: int) -> None:
        try:
            for _ in range(4):
                g = run(seed)
                if g is None or not np.allclose(g, alone[seed], rtol=1e-10, atol=1e-12):
                    wrong.append(f"thread {seed}: " + (
                        "grad is None" if g is None
                        else f"max error {np.abs(g - alone[seed]).max()}"))
        except Exception as e:  # an exception in a thread would otherwise pass unnoticed
            wrong.append(f"thread {seed}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so that the replays really interleave
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not any(th.is_alive() for th in threads), "a backward thread hung"
    assert not wrong, wrong


@pytest.mark.parametrize("recorded", [False, True], ids=["leaf-W", "recorded-W"])
@pytest.mark.parametrize("expr", ["h @ W", "W.T @ h.T", "tg.linear(h, W)"])
def test_nested_replay_gives_every_checkpoint_argument_its_gradient(expr: str,
                                                                    recorded: bool) -> None:
    # checkpoint replays its segment inside the outer backward; a weight passed as an argument
    # must get the same gradient as without checkpoint (API §4: "same gradients to the last bit")
    rng = np.random.default_rng(15)
    h_np, W_np, g = rng.standard_normal((2, 3)), rng.standard_normal((3, 3)), None

    def f(h: tg.Tensor, W: tg.Tensor) -> tg.Tensor:
        return eval(expr).tanh()

    grads = []
    for use_checkpoint in (False, True):
        h = tg.Tensor(h_np, requires_grad=True)
        W = tg.Tensor(W_np, requires_grad=True)
        W_arg = W * 1.0 if recorded else W  # a recorded argument is rebuilt as a fresh leaf
        y = tg.checkpoint(f, h, W_arg) if use_checkpoint else f(h, W_arg)
        if g is None:
            g = rng.standard_normal(y.shape)
        y.backward(g)
        assert W.grad is not None, f"checkpoint={use_checkpoint}: W got no gradient"
        assert h.grad is not None
        grads.append((h.grad, W.grad))
    np.testing.assert_array_equal(grads[1][0], grads[0][0])
    np.testing.assert_array_equal(grads[1][1], grads[0][1])


# ============================================================================= 2. backward
def test_leaf_grads_accumulate_across_backward_calls_until_zeroed() -> None:
    rng = np.random.default_rng(2)
    a_np, b_np, g = _rand(rng, (3, 4)), _rand(rng, (3, 4)), _rand(rng, (3, 4))
    a = tg.Tensor(a_np, requires_grad=True)
    b = tg.Tensor(b_np, requires_grad=True)
    (a * b).backward(g)
    np.testing.assert_allclose(a.grad, g * b_np)
    (a * b).backward(g)  # a new graph, the same leaves: accumulate
    np.testing.assert_allclose(a.grad, 2 * g * b_np)
    np.testing.assert_allclose(b.grad, 2 * g * a_np)
    a.grad = None
    (a * b).backward(g)
    np.testing.assert_allclose(a.grad, g * b_np)
    np.testing.assert_allclose(b.grad, 3 * g * a_np)


@pytest.mark.parametrize("w_dtype", [np.float64, np.float32])
def test_matmul_weight_grads_accumulate_within_and_across_backward_calls(w_dtype: Any) -> None:
    # a weight used by several matmuls and an elementwise op in one graph (as in an unrolled
    # RNN), then a second backward: every contribution lands once, in the weight's dtype
    rng = np.random.default_rng(16)
    x1, x2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    g = rng.standard_normal((2, 4))
    W_np = rng.standard_normal((3, 4)).astype(w_dtype)
    W = tg.Tensor(W_np, requires_grad=True)
    X1 = tg.Tensor(x1, requires_grad=True)
    for call in (1, 2):
        y = X1 @ W + tg.Tensor(x2) @ W + W.sum(axis=0) * 2.0
        assert y.dtype == np.float64
        y.backward(g)
        expected = call * (x1.T @ g + x2.T @ g + 2.0 * g.sum(axis=0))
        assert W.grad.dtype == w_dtype and W.grad.shape == (3, 4)
        tol = 1e-12 if w_dtype == np.float64 else 1e-5
        np.testing.assert_allclose(W.grad, expected, rtol=tol, atol=tol)
        np.testing.assert_allclose(X1.grad, call * g @ W_np.astype(np.float64).T, rtol=1e-12)


def test_a_leaf_used_twice_gets_both_contributions() -> None:
    x = tg.Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_retain_graph_allows_a_second_backward_which_doubles_the_grads() -> None:
    rng = np.random.default_rng(3)
    x_np = _rand(rng, (2, 3))
    x = tg.Tensor(x_np, requires_grad=True)
    loss = (x.tanh() * x).sum()
    loss.backward(retain_graph=True)
    once = x.grad.copy()
    expected = np.tanh(x_np) + x_np * (1 - np.tanh(x_np) ** 2)
    np.testing.assert_allclose(once, expected, rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * expected, rtol=1e-12)


def test_second_backward_without_retain_graph_raises_graph_error() -> None:
    x = tg.Tensor(np.array([0.5, 1.5]), requires_grad=True)
    loss = (x.exp() * 3.0).sum()
    loss.backward()
    grad = x.grad.copy()
    with pytest.raises(RuntimeError, match=r"retain_graph=True") as ei:
        loss.backward()
    assert isinstance(ei.value, GraphError)
    np.testing.assert_array_equal(x.grad, grad)  # the failed call touched nothing


def test_backward_through_a_freed_intermediate_raises() -> None:
    x = tg.Tensor(np.array([0.5, 1.5]), requires_grad=True)
    h = x * 2.0
    h.sum().backward()
    with pytest.raises(GraphError, match=r"retain_graph=True"):
        (h * 3.0).sum().backward()


def test_backward_without_grad_needs_a_one_element_root() -> None:
    x = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError) as ei:
        (x * 2.0).backward()
    assert isinstance(ei.value, ShapeError)
    assert "(2, 3)" in str(ei.value)
    (x * 2.0).sum(axis=1, keepdims=True)[:1].backward()  # shape (1, 1): one element is fine
    np.testing.assert_array_equal(x.grad, [[2.0] * 3, [0.0] * 3])


@pytest.mark.parametrize("gshape", [(3, 2), (3,), (2, 3, 1), ()])
def test_backward_with_a_grad_of_the_wrong_shape_raises(gshape: tuple[int, ...]) -> None:
    x = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError) as ei:
        (x * 2.0).backward(np.ones(gshape))
    assert isinstance(ei.value, ShapeError)
    assert str(gshape) in str(ei.value) and "(2, 3)" in str(ei.value)
    assert x.grad is None


def test_backward_on_a_tensor_that_needs_no_grad_raises() -> None:
    plain = tg.Tensor(np.ones(3))
    with pytest.raises(RuntimeError):
        plain.sum().backward()
    x = tg.Tensor(np.ones(3), requires_grad=True)
    with tg.no_grad():
        y = (x * 2.0).sum()
    with pytest.raises(RuntimeError):
        y.backward()
    with pytest.raises(RuntimeError):
        x.detach().sum().backward()
    assert x.grad is None


def test_non_leaf_tensors_keep_no_grad() -> None:
    x = tg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 3.0
    y = h.tanh()
    y.sum().backward()
    assert h.grad is None and y.grad is None
    assert x.grad is not None


def test_retain_grad_keeps_the_right_value_on_non_leaves() -> None:
    rng = np.random.default_rng(4)
    x_np, g = _rand(rng, (2, 3)), _rand(rng, (2, 3))
    x = tg.Tensor(x_np, requires_grad=True)
    h = x * 3.0
    h.retain_grad()
    y = h.tanh()
    y.retain_grad()
    a, b = tg.split(y, [1, 2], axis=1)  # a multi-output record
    b.retain_grad()
    out = tg.concat([a * 2.0, b], axis=1)
    out.backward(g)
    np.testing.assert_allclose(y.grad, g * [2.0, 1.0, 1.0])
    np.testing.assert_allclose(b.grad, g[:, 1:])
    np.testing.assert_allclose(h.grad, y.grad * (1 - np.tanh(3 * x_np) ** 2), rtol=1e-12)
    np.testing.assert_allclose(x.grad, 3 * h.grad, rtol=1e-12)
    assert a.grad is None and out.grad is None


def test_retain_grad_on_the_root_keeps_the_seed() -> None:
    x = tg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = (x * x).sum()
    loss.retain_grad()
    loss.backward()
    assert loss.grad is not None and float(loss.grad) == 1.0


def test_is_leaf() -> None:
    x = tg.Tensor(np.ones(2), requires_grad=True)
    c = tg.Tensor(np.ones(2))
    assert x.is_leaf and c.is_leaf
    y = x * 2.0
    assert not y.is_leaf and y.requires_grad
    assert (c * 2.0).is_leaf  # nothing to record: PyTorch calls it a leaf too
    assert y.detach().is_leaf
    with tg.no_grad():
        assert (x * 2.0).is_leaf
    with pytest.raises(RuntimeError):
        y.requires_grad = False  # only leaves can change it


def _deep_graph(x: tg.Tensor, w: tg.Tensor) -> tuple[tg.Tensor, list[weakref.ref]]:
    """loss = sum(tanh(x @ w) * w2-ish); returns weak references to intermediate arrays: h.data,
    which no backward needs (records keep Ports, not inputs, so it dies with this function), and
    a.data, which tanh saved for its derivative (alive until the graph is freed)."""
    h = x @ w
    a = h.tanh()  # tanh saves its output a.data for backward
    loss = (a * 2.0 + a.sigmoid()).sum()
    return loss, [weakref.ref(h.data), weakref.ref(a.data)]


def test_backward_frees_the_graph() -> None:
    rng = np.random.default_rng(5)
    x = tg.Tensor(_rand(rng, (2, 3)), requires_grad=True)
    w = tg.Tensor(_rand(rng, (3, 4)), requires_grad=True)
    loss, refs = _deep_graph(x, w)
    nodes = _graph_nodes(loss)
    assert len(nodes) == 6
    assert refs[0]() is None  # the pre-activation: saved by nobody, already gone
    assert refs[1]() is not None  # saved for tanh's derivative: alive while the tape holds it
    loss.backward()
    assert all(r() is None for r in refs), "backward kept arrays saved for the derivative"
    for n in nodes:
        assert n.op is None and n.inputs is None and n.saved is None
    assert x.grad is not None and w.grad is not None


class _Identity(tg.Primitive):
    """Test-only identity primitives (not registered); subclasses differ in their backward."""

    @staticmethod
    def forward(x: np.ndarray) -> tuple[np.ndarray, None]:
        return x, None


class _Probe(_Identity):
    """Hands the engine a fresh gradient array and keeps a weak reference to it."""

    name = "probe"
    refs: list[weakref.ref] = []

    @staticmethod
    def backward(g: np.ndarray, saved: None, needs: tuple[bool, ...]) -> tuple[np.ndarray]:
        fresh = g.copy()
        _Probe.refs.append(weakref.ref(fresh))
        return (fresh,)


class _Count(_Identity):
    """When its backward runs, counts the _Probe gradients still alive."""

    name = "count"
    alive: list[int] = []

    @staticmethod
    def backward(g: np.ndarray, saved: None, needs: tuple[bool, ...]) -> tuple[np.ndarray]:
        _Count.alive.append(sum(r() is not None for r in _Probe.refs))
        return (g,)


def test_a_replayed_multi_output_record_lets_its_gradients_go() -> None:
    """unbind's per-slice gradients are copied into one array when unbind is replayed; by the
    time the record below it runs, the engine must hold none of them (a local in the replay
    loop once kept the whole list alive until backward returned)."""
    _Probe.refs.clear()
    _Count.alive.clear()
    xs = tg.Tensor(np.ones((5, 2, 3)), requires_grad=True)
    slices = tg.unbind(_Count.apply(xs), 0)
    out = tg.stack([_Probe.apply(s) * 2.0 for s in slices])
    out.sum().backward()
    assert len(_Probe.refs) == 5 and _Count.alive == [0]
    np.testing.assert_array_equal(xs.grad, np.full((5, 2, 3), 2.0))


def test_retain_graph_keeps_the_records_until_a_final_backward() -> None:
    rng = np.random.default_rng(6)
    x = tg.Tensor(_rand(rng, (2, 3)), requires_grad=True)
    w = tg.Tensor(_rand(rng, (3, 4)), requires_grad=True)
    loss, refs = _deep_graph(x, w)
    nodes = _graph_nodes(loss)
    loss.backward(retain_graph=True)
    assert refs[1]() is not None
    assert all(n.op is not None for n in nodes)
    loss.backward()
    assert all(r() is None for r in refs)
    assert all(n.op is None for n in nodes)


# ============================================================================= 3. no_grad
def test_no_grad_records_nothing() -> None:
    x = tg.Tensor(np.ones((2, 2)), requires_grad=True)
    with tg.no_grad():
        assert not tg.is_grad_enabled()
        y = (x @ x).tanh() + 1.0
        pieces = tg.split(x, 1, axis=0)
    assert tg.is_grad_enabled()
    assert not y.requires_grad and y._node is None
    assert all(not p.requires_grad and p._node is None for p in pieces)
    assert (x * 2.0).requires_grad  # recording is back


def test_no_grad_nests() -> None:
    x = tg.Tensor(np.ones(2), requires_grad=True)
    with tg.no_grad():
        with tg.no_grad():
            assert not (x * 2.0).requires_grad
        assert not tg.is_grad_enabled()
        assert not (x * 2.0).requires_grad
    assert tg.is_grad_enabled()
    ng = tg.no_grad()  # the same instance entered twice
    with ng:
        with ng:
            pass
        assert not tg.is_grad_enabled()
    assert tg.is_grad_enabled()


def test_no_grad_restores_the_mode_when_an_exception_escapes() -> None:
    with pytest.raises(KeyError):
        with tg.no_grad():
            raise KeyError("boom")
    assert tg.is_grad_enabled()
    with tg.no_grad():
        with pytest.raises(KeyError):
            with tg.enable_grad():
                raise KeyError("boom")
        assert not tg.is_grad_enabled()
    assert tg.is_grad_enabled()


def test_no_grad_as_decorator_with_and_without_parentheses() -> None:
    x = tg.Tensor(np.ones(2), requires_grad=True)

    @tg.no_grad()
    def called(t: tg.Tensor) -> tg.Tensor:
        """doc"""
        return t * 2.0

    @tg.no_grad
    def bare(t: tg.Tensor) -> tg.Tensor:
        assert not tg.is_grad_enabled()
        return t * 2.0

    assert not called(x).requires_grad
    assert not bare(x).requires_grad
    assert called.__name__ == "called" and called.__doc__ == "doc"
    assert tg.is_grad_enabled() and (x * 2.0).requires_grad


def test_decorated_function_restores_the_mode_on_exception() -> None:
    @tg.no_grad
    def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fails()
    assert tg.is_grad_enabled()


def test_enable_grad_records_inside_no_grad() -> None:
    x = tg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with tg.no_grad():
        with tg.enable_grad():
            assert tg.is_grad_enabled()
            y = (x * x).sum()
        assert not (x * 2.0).requires_grad
    y.backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])

    @tg.enable_grad
    def recorded(t: tg.Tensor) -> tg.Tensor:
        return t * 2.0

    with tg.no_grad():
        assert recorded(x).requires_grad


def test_grad_mode_is_per_thread() -> None:
    x = tg.Tensor(np.ones(2), requires_grad=True)
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def worker() -> None:
        with tg.no_grad():
            entered.set()
            release.wait(10)
            seen["worker_records"] = (x * 2.0).requires_grad

    th = threading.Thread(target=worker)
    th.start()
    try:
        assert entered.wait(10)
        assert tg.is_grad_enabled(), "no_grad in another thread switched off the main thread"
        assert (x * 2.0).requires_grad
    finally:
        release.set()
        th.join(10)
    assert seen["worker_records"] is False

    # and a fresh thread records even while this one is inside no_grad
    def fresh() -> None:
        seen["fresh_records"] = (x * 2.0).requires_grad

    with tg.no_grad():
        th = threading.Thread(target=fresh)
        th.start()
        th.join(10)
    assert seen["fresh_records"] is True


# ============================================================================= 4. detach
def test_detach_shares_data_and_drops_history() -> None:
    x = tg.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    h = x * 2.0
    d = h.detach()
    assert np.shares_memory(d.data, h.data)
    np.testing.assert_array_equal(d.data, h.data)
    assert d.is_leaf and d._node is None and not d.requires_grad and d.grad is None
    assert d.dtype == h.dtype and d.shape == h.shape
    assert h._node is not None  # the original keeps its history


def test_no_gradient_flows_through_detach() -> None:
    x = tg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    w = tg.Tensor(np.array([3.0, 4.0]), requires_grad=True)
    h = x * w
    loss = (h.detach() * w + h).sum()
    loss.backward()
    # d/dw [ sg(x w) w + x w ] = x w + x ; d/dx = w only through the attached path
    np.testing.assert_allclose(w.grad, x.data * w.data + x.data)
    np.testing.assert_allclose(x.grad, w.data)


def test_detach_of_a_nested_state_keeps_the_structure() -> None:
    x = tg.Tensor(np.ones(2), requires_grad=True)
    h, c = x * 2.0, x * 3.0
    state = ((h, c), [h, None], None)
    out = tg.detach(state)
    assert type(out) is tuple and type(out[0]) is tuple and type(out[1]) is list
    assert out[1][1] is None and out[2] is None
    for t, orig in ((out[0][0], h), (out[0][1], c), (out[1][0], h)):
        assert isinstance(t, tg.Tensor) and t is not orig
        assert t.is_leaf and not t.requires_grad and np.shares_memory(t.data, orig.data)
    assert tg.detach(None) is None
    assert tg.detach(h).is_leaf


# ============================================================================= 5. detect_anomaly
def test_anomaly_forward_names_op_shape_and_user_line() -> None:
    x = tg.Tensor(np.array([[0.0, 1.0, 2.0]]), requires_grad=True)
    with tg.detect_anomaly(), np.errstate(all="ignore"):
        with pytest.raises(tg.AnomalyError) as ei:
            line = _here() + 1
            tg.log(x)
    msg = str(ei.value)
    assert isinstance(ei.value, RuntimeError)
    assert "log" in msg and "(1, 3)" in msg and "Inf" in msg
    assert f"{THIS_FILE}:{line}" in msg


def test_anomaly_forward_catches_nan_at_the_first_bad_op() -> None:
    x = tg.Tensor(np.array([-1.0, 4.0]), requires_grad=True)
    with tg.detect_anomaly(), np.errstate(all="ignore"):
        y = x * 2.0  # fine
        with pytest.raises(tg.AnomalyError) as ei:
            line = _here() + 1
            y.sqrt().exp()
    msg = str(ei.value)
    assert msg.startswith("sqrt") and "NaN" in msg and "(2,)" in msg
    assert f"{THIS_FILE}:{line}" in msg


def test_anomaly_backward_names_the_op_whose_gradient_is_not_finite() -> None:
    x = tg.Tensor(np.array([0.0, 1.0]), requires_grad=True)
    with tg.detect_anomaly(), np.errstate(all="ignore"):
        line = _here() + 1
        y = x.sqrt() * 3.0  # forward is finite: sqrt(0) = 0
        assert np.isfinite(y.data).all()
        loss = y.sum()
        with pytest.raises(tg.AnomalyError) as ei:
            loss.backward()  # d sqrt at 0 = inf
    msg = str(ei.value)
    assert msg.startswith("sqrt") and "Inf" in msg and "(2,)" in msg and "gradient" in msg
    assert f"{THIS_FILE}:{line}" in msg


def test_nothing_is_checked_outside_detect_anomaly() -> None:
    x = tg.Tensor(np.array([0.0, 1.0]), requires_grad=True)
    with np.errstate(all="ignore"):
        y = x.log()
        assert np.isinf(y.data[0])
        x.sqrt().sum().backward()
    assert np.isinf(x.grad[0])


def test_detect_anomaly_mode_is_restored_after_an_exception() -> None:
    x = tg.Tensor(np.array([0.0, 1.0]), requires_grad=True)
    with np.errstate(all="ignore"):
        with pytest.raises(tg.AnomalyError):
            with tg.detect_anomaly():
                x.log()
        x.log()  # no longer checked
        with pytest.raises(KeyError):
            with tg.detect_anomaly():
                raise KeyError("boom")
        x.log()
        with tg.detect_anomaly():
            with tg.detect_anomaly():
                pass
            with pytest.raises(tg.AnomalyError):
                x.log()  # the inner exit restored "on", not "off"
        x.log()


# ============================================================================= 6. invariants
@dataclass(frozen=True)
class Case:
    """How to drive one primitive through the public API: `fn(*leaves)` on inputs of `shapes`
    drawn from [lo, hi] (positive domains for log/sqrt/div/pow)."""

    fn: Callable[..., Any]
    shapes: tuple[tuple[int, ...], ...]
    lo: float = -2.0
    hi: float = 2.0
    lo_last: float | None = None  # a separate domain for the last input (the divisor)


COND = np.array([[True, False, True], [False, True, True]])


def _checkpointed(a: tg.Tensor, b: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
    h = (a * b).tanh()
    return h, h.sum(axis=0) * 2.0
IDX = np.array([2, 0, 2])  # repeated on purpose: gradients must accumulate

CASES: dict[str, Case] = {
    "add": Case(lambda a, b: a + b, ((2, 3), (3,))),
    "sub": Case(lambda a, b: a - b, ((2, 3), (2, 1))),
    "mul": Case(lambda a, b: a * b, ((2, 3), (1, 3))),
    "div": Case(lambda a, b: a / b, ((2, 3), (3,)), lo_last=0.5),
    "addcmul": Case(lambda a, b, c: tg.addcmul(a, b, c, value=0.5), ((2, 3), (3,), (2, 1))),
    "lerp": Case(lambda a, b, w: tg.lerp(a, b, w), ((3,), (2, 3), (2, 1))),
    "neg": Case(lambda a: -a, ((2, 3),)),
    "pow": Case(lambda a: a ** 1.5, ((2, 3),), lo=0.5),
    "matmul": Case(lambda a, b: a @ b, ((2, 3), (3, 4))),
    "linear": Case(lambda x, w, b: tg.linear(x, w, b), ((2, 3), (4, 3), (4,))),
    "exp": Case(lambda a: a.exp(), ((2, 3),)),
    "log": Case(lambda a: a.log(), ((2, 3),), lo=0.5),
    "tanh": Case(lambda a: a.tanh(), ((2, 3),)),
    "sigmoid": Case(lambda a: a.sigmoid(), ((2, 3),)),
    "relu": Case(lambda a: a.relu(), ((2, 3),)),
    "sqrt": Case(lambda a: a.sqrt(), ((2, 3),), lo=0.5),
    "abs": Case(lambda a: a.abs(), ((2, 3),)),
    "clip": Case(lambda a: a.clip(-0.5, 0.5), ((2, 3),)),
    "where": Case(lambda a, b: tg.where(COND, a, b), ((2, 3), (3,))),
    "maximum": Case(lambda a, b: tg.maximum(a, b), ((2, 3), (3,))),
    "sum": Case(lambda a: a.sum(axis=1), ((2, 3),)),
    "mean": Case(lambda a: a.mean(axis=0, keepdims=True), ((2, 3),)),
    "max": Case(lambda a: a.max(axis=-1), ((2, 3),)),
    "logsumexp": Case(lambda a: tg.logsumexp(a, axis=1), ((2, 3),)),
    "reshape": Case(lambda a: a.reshape(3, 2), ((2, 3),)),
    "transpose": Case(lambda a: a.transpose(1, 0, 2), ((2, 3, 4),)),
    "getitem": Case(lambda a: a[IDX], ((3, 2),)),
    "concat": Case(lambda a, b: tg.concat([a, b], axis=1), ((2, 3), (2, 2))),
    "stack": Case(lambda a, b: tg.stack([a, b], axis=1), ((2, 3), (2, 3))),
    "split": Case(lambda a: tg.split(a, [1, 2], axis=1), ((2, 3),)),
    "unbind": Case(lambda a: tg.unbind(a, 1), ((2, 3),)),
    "gates": Case(lambda a: tg.gates(a, ("sigmoid", "tanh", "relu", "identity")), ((2, 8),)),
    "checkpoint": Case(lambda a, b: tg.checkpoint(_checkpointed, a, b), ((2, 3), (3,))),
}


def test_the_case_table_covers_the_whole_registry() -> None:
    missing = sorted(set(REGISTRY) - set(CASES))
    stale = sorted(set(CASES) - set(REGISTRY))
    assert not missing, f"primitives without an entry in CASES: {missing}"
    assert not stale, f"CASES entries for primitives that are not registered: {stale}"


def _case_arrays(case: Case, draw: Callable[[Any], Any], dtype: Any) -> list[np.ndarray]:
    arrays = []
    for i, shape in enumerate(case.shapes):
        lo = case.lo_last if (case.lo_last is not None and i == len(case.shapes) - 1) else case.lo
        elements = st.floats(lo, case.hi, allow_nan=False, allow_infinity=False, width=64)
        arrays.append(draw(hnp.arrays(np.float64, shape, elements=elements)).astype(dtype))
    return arrays


def _outputs(out: Any) -> list[tg.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


def _run_case(name: str, arrays: list[np.ndarray], seed: int = 0):
    """Forward and backward through CASES[name] with a random upstream gradient per output."""
    # shared, not copied: the test checks that the very arrays given are never written
    leaves = [tg.from_numpy(a).requires_grad_() for a in arrays]
    outs = _outputs(CASES[name].fn(*leaves))
    rng = np.random.default_rng(seed)
    gs = [_rand(rng, o.shape, o.dtype) for o in outs]
    return leaves, outs, gs


def _backward(outs: list[tg.Tensor], gs: list[np.ndarray]) -> None:
    if len(outs) == 1:
        outs[0].backward(gs[0])
    else:  # several outputs (split): one root that hands each piece its own gradient
        root = tg.concat([o.reshape(-1) for o in outs])
        root.backward(np.concatenate([g.reshape(-1) for g in gs]))


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_forward_and_backward_never_mutate_inputs(name: str, data: st.DataObject) -> None:
    arrays = _case_arrays(CASES[name], data.draw, np.float64)
    before = [a.copy() for a in arrays]
    cond, idx = COND.copy(), IDX.copy()
    leaves, outs, gs = _run_case(name, arrays)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: forward mutated an input")
    out_before = [o.data.copy() for o in outs]
    g_before = [g.copy() for g in gs]
    _backward(outs, gs)
    for leaf, a, b in zip(leaves, arrays, before):
        assert leaf.data is a
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: backward mutated an input")
        assert leaf.grad is not None and leaf.grad.shape == a.shape
        assert leaf.grad.dtype == np.float64
        assert not np.shares_memory(leaf.grad, a)
    for o, b in zip(outs, out_before):
        np.testing.assert_array_equal(o.data, b, err_msg=f"{name}: backward mutated the output")
    for g, b in zip(gs, g_before):
        np.testing.assert_array_equal(g, b, err_msg=f"{name}: backward mutated the upstream grad")
    np.testing.assert_array_equal(COND, cond)
    np.testing.assert_array_equal(IDX, idx)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_in_float32_out_and_float32_grads(name: str) -> None:
    rng = np.random.default_rng(7)
    case = CASES[name]
    arrays = []
    for i, shape in enumerate(case.shapes):
        lo = case.lo_last if (case.lo_last is not None and i == len(case.shapes) - 1) else case.lo
        arrays.append(rng.uniform(lo, case.hi, shape).astype(np.float32))
    leaves, outs, gs = _run_case(name, arrays)
    for o in outs:
        assert o.dtype == np.float32, f"{name}: float32 inputs gave a {o.dtype} output"
    # the primitive's own backward (the public Primitive contract), before the engine casts
    node = outs[0]._node
    assert node is not None and node.op is REGISTRY[name]
    raw = node.op.backward(gs[0] if node.outputs is None else list(gs), node.saved, node.needs)
    for i, gi in enumerate(raw):
        if gi is not None:
            if isinstance(gi, Grad):  # terms not added yet (a weight's product)
                gi = gi.total()
            assert np.asarray(gi).dtype == np.float32, \
                f"{name}: backward returned a {np.asarray(gi).dtype} gradient for input {i}"
    _backward(outs, gs)
    for leaf in leaves:
        assert leaf.grad is not None
        assert leaf.grad.dtype == np.float32 and leaf.grad.shape == leaf.shape


NUMBER_EXPRS: dict[str, Callable[[tg.Tensor], tg.Tensor]] = {
    "x + 2.0": lambda x: x + 2.0,
    "2.0 + x": lambda x: 2.0 + x,
    "x - 2": lambda x: x - 2,
    "2 - x": lambda x: 2 - x,
    "x * 2.0": lambda x: x * 2.0,
    "2.0 * x": lambda x: 2.0 * x,
    "x / 3.0": lambda x: x / 3.0,
    "3.0 / x": lambda x: 3.0 / x,
    "x ** 2": lambda x: x ** 2,
    "x ** 0.5": lambda x: x ** 0.5,
    "x ** -1.5": lambda x: x ** -1.5,
    "2.0 ** x": lambda x: 2.0 ** x,
    "maximum(x, 0.7)": lambda x: tg.maximum(x, 0.7),
    "maximum(0.7, x)": lambda x: tg.maximum(0.7, x),
    "where(c, x, 0.0)": lambda x: tg.where(np.array([True, False, True]), x, 0.0),
    "where(c, 1.0, x)": lambda x: tg.where(np.array([True, False, True]), 1.0, x),
    "clip(x, 0.6, 1.2)": lambda x: x.clip(0.6, 1.2),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("expr", sorted(NUMBER_EXPRS))
def test_a_python_number_never_changes_the_dtype(expr: str, dtype: Any) -> None:
    x = tg.Tensor(np.array([0.5, 1.0, 1.5], dtype=dtype), requires_grad=True)
    y = NUMBER_EXPRS[expr](x)
    assert y.dtype == dtype, f"{expr} on {np.dtype(dtype)} gave {y.dtype}"
    y.backward(np.array([0.3, -1.1, 0.7], dtype=dtype))
    assert x.grad.dtype == dtype and x.grad.shape == x.shape


@pytest.mark.parametrize("expr", ["x * s", "s * x", "x + s", "x ** s", "x.clip(s, 2 * s)"])
def test_a_numpy_float64_scalar_behaves_like_a_python_number(expr: str) -> None:
    # np.float64 is a subclass of Python float (isinstance(s, float) holds): x * s already keeps
    # float32, so every op taking a number must (PyTorch treats numpy scalars the same way)
    s = np.float64(0.5)
    assert isinstance(s, float)
    x = tg.Tensor(np.array([0.5, 1.0, 1.5], np.float32), requires_grad=True)
    y = eval(expr, {"x": x, "s": s})
    assert y.dtype == np.float32, f"{expr} with s = np.float64(0.5) gave {y.dtype}"


def _binary_expected(op: str, a: np.ndarray, b: np.ndarray, g: np.ndarray):
    """Local gradients of `op` at the broadcast output shape (before reduction)."""
    a, b = np.broadcast_arrays(a, b)
    if op == "add":
        return g, g
    if op == "sub":
        return g, -g
    if op == "mul":
        return g * b, g * a
    if op == "div":
        return g / b, -g * a / b ** 2
    if op == "maximum":
        return g * ((a > b) + 0.5 * (a == b)), g * ((b > a) + 0.5 * (a == b))
    raise AssertionError(op)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum"])
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3,
                                                max_side=3),
       seed=st.integers(0, 2**32 - 1))
def test_binary_grads_have_the_leaf_shape_and_value(op: str, shapes: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sa, sb = shapes.input_shapes
    a_np = np.round(rng.uniform(-2, 2, sa) * 2) / 2  # halves, so maximum sees ties too
    b_np = np.round(rng.uniform(-2, 2, sb) * 2) / 2
    if op == "div":
        b_np = np.where(np.abs(b_np) < 0.5, 1.5, b_np)
    a = tg.Tensor(a_np, requires_grad=True)
    b = tg.Tensor(b_np, requires_grad=True)
    fns = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
           "div": lambda: a / b, "maximum": lambda: tg.maximum(a, b)}
    y = fns[op]()
    assert y.shape == shapes.result_shape
    g = rng.standard_normal(y.shape)
    y.backward(g)
    la, lb = _binary_expected(op, a_np, b_np, g)
    for leaf, local in ((a, la), (b, lb)):
        assert leaf.grad.shape == leaf.shape and leaf.grad.dtype == leaf.dtype
        np.testing.assert_allclose(leaf.grad, _reduce_to(local, leaf.shape), rtol=1e-12,
                                   atol=1e-12)


@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3,
                                                max_side=3),
       seed=st.integers(0, 2**32 - 1))
def test_where_grads_have_the_leaf_shape_and_value(shapes: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sc, sa, sb = shapes.input_shapes
    cond = rng.random(sc) > 0.5
    a = tg.Tensor(rng.standard_normal(sa).astype(np.float32), requires_grad=True)
    b = tg.Tensor(rng.standard_normal(sb).astype(np.float32), requires_grad=True)
    y = tg.where(cond, a, b)
    assert y.shape == shapes.result_shape and y.dtype == np.float32
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    c = np.broadcast_to(cond, y.shape)
    for leaf, local in ((a, g * c), (b, g * ~c)):
        assert leaf.grad.shape == leaf.shape and leaf.grad.dtype == np.float32
        np.testing.assert_allclose(leaf.grad, _reduce_to(local.astype(np.float64), leaf.shape),
                                   rtol=1e-6, atol=1e-6)


AXES = [None, 0, 1, -1, (0, 2), (-1, 0), (2, -3)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "max", "logsumexp"])
def test_reduction_grads_have_the_leaf_shape(op: str, axis: Any, keepdims: bool) -> None:
    rng = np.random.default_rng(8)
    x_np = rng.permutation(24).reshape(2, 3, 4) / 7.0  # distinct values: a unique maximum
    x = tg.Tensor(x_np, requires_grad=True)
    y = getattr(x, op)(axis=axis, keepdims=keepdims)
    kept = np.sum(x_np, axis=axis, keepdims=True).shape
    assert y.shape == np.sum(x_np, axis=axis, keepdims=keepdims).shape
    g = rng.standard_normal(y.shape)
    y.backward(g)
    gk = g.reshape(kept)
    expected = {
        "sum": lambda: np.broadcast_to(gk, x_np.shape),
        "mean": lambda: np.broadcast_to(gk, x_np.shape) * (np.prod(kept) / x_np.size),
        "max": lambda: (x_np == x_np.max(axis=axis, keepdims=True)) * gk,
        "logsumexp": lambda: gk * np.exp(x_np - np.log(np.exp(x_np).sum(axis=axis,
                                                                        keepdims=True))),
    }[op]()
    assert x.grad.shape == x.shape
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axes", [(1, 0, 2), (2, 0, 1), (0, 2, 1), (-1, 0, 1), (0, -1, -2),
                                  (-3, -1, -2)], ids=str)
def test_transpose_grad_has_the_leaf_shape_and_value(axes: tuple[int, ...]) -> None:
    # API §1: "Axis arguments accept ints, negative ints and tuples"
    rng = np.random.default_rng(9)
    x_np = rng.standard_normal((2, 3, 4))
    x = tg.Tensor(x_np, requires_grad=True)
    y = x.transpose(*axes)
    np.testing.assert_array_equal(y.data, x_np.transpose(axes))
    g = rng.standard_normal(y.shape)
    y.backward(g)
    inverse = np.argsort([a % 3 for a in axes])
    np.testing.assert_array_equal(x.grad, g.transpose(inverse))


def test_transpose_with_negative_axes_on_a_square_matrix() -> None:
    # the silent variant of the bug above: the shapes agree, the gradient is not transposed
    x = tg.Tensor(np.zeros((2, 2)), requires_grad=True)
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    x.transpose(-1, 0).backward(g)
    np.testing.assert_array_equal(x.grad, g.T)


@pytest.mark.parametrize("index", [
    1, -1, (slice(None), slice(1, 3)), (None, Ellipsis, 0), (Ellipsis, 2), (0, None, slice(2)),
    np.array([0, 0, 1]), [1, 1], (Ellipsis, np.array([3, 0, 3])),
    (0, np.array([2, 2]), slice(None)), (np.array([1, 0]), np.array([2, 2])),
], ids=repr)
def test_getitem_grads_have_the_leaf_shape_and_accumulate(index: Any) -> None:
    rng = np.random.default_rng(10)
    x_np = rng.standard_normal((2, 3, 4)).astype(np.float32)
    x = tg.Tensor(x_np, requires_grad=True)
    y = x[index]
    np_index = tuple(np.asarray(i) if isinstance(i, list) else i for i in index) \
        if isinstance(index, tuple) else (np.asarray(index) if isinstance(index, list) else index)
    np.testing.assert_array_equal(y.data, x_np[np_index])
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    ids = np.arange(x_np.size).reshape(x_np.shape)[np_index]
    expected = np.bincount(np.ravel(ids), weights=np.ravel(g), minlength=x_np.size)
    assert x.grad.shape == x.shape and x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, expected.reshape(x_np.shape), rtol=1e-6)


@pytest.mark.parametrize("shapes", [[(2,), (1,), (3,)], [(2, 3), (1, 3)], [(1, 3), (1, 2)]])
def test_stack_of_different_shapes_raises_even_where_their_sizes_add_up(
        shapes: list[tuple[int, ...]]) -> None:
    # (2,) (1,) (3,) concatenate to 6 numbers, which reshape to (3, 2) without complaint
    parts = [tg.Tensor(np.ones(s), requires_grad=True) for s in shapes]
    with pytest.raises(ShapeError, match="stack: all inputs must have the same shape"):
        tg.stack(parts)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_concat_stack_split_with_any_axis(axis: int) -> None:
    rng = np.random.default_rng(11)
    parts_np = [rng.standard_normal((2, 3)), rng.standard_normal((2, 3))]
    parts = [tg.Tensor(p, requires_grad=True) for p in parts_np]
    y = tg.concat(parts, axis=axis)
    g = rng.standard_normal(y.shape)
    y.backward(g)
    cut = parts_np[0].shape[axis]
    np.testing.assert_array_equal(parts[0].grad, np.take(g, range(cut), axis=axis))
    np.testing.assert_array_equal(parts[1].grad, np.take(g, range(cut, 2 * cut), axis=axis))
    for p in parts:
        p.grad = None
    s = tg.stack(parts, axis=axis)
    gs = rng.standard_normal(s.shape)
    s.backward(gs)
    np.testing.assert_array_equal(parts[1].grad, np.take(gs, 1, axis=axis))
    x = tg.Tensor(parts_np[0], requires_grad=True)
    pieces = tg.split(x, 1, axis=axis)
    assert len(pieces) == x.shape[axis]
    assert pieces[0]._node is pieces[-1]._node  # one record for all the pieces
    pieces[-1].backward(np.ones(pieces[-1].shape))  # the other pieces contribute zeros
    expected = np.zeros(x.shape)
    np.moveaxis(expected, axis, 0)[-1] = 1.0
    np.testing.assert_array_equal(x.grad, expected)


# ============================================================================= 7. bad input
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": lambda a, b: tg.maximum(a, b),
    "where": lambda a, b: tg.where(np.ones(a.shape, bool), a, b),
}


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("sa,sb", [((2, 3), (4,)), ((2, 3), (3, 2)), ((5,), (2, 4))], ids=str)
def test_binary_shape_mismatch_names_op_and_both_shapes(op: str, sa: tuple, sb: tuple) -> None:
    a = tg.Tensor(np.ones(sa), requires_grad=True)
    b = tg.Tensor(np.ones(sb), requires_grad=True)
    with pytest.raises(ValueError) as ei:
        BINARY[op](a, b)
    assert isinstance(ei.value, ShapeError)
    msg = str(ei.value)
    assert msg.startswith(f"{op}:"), msg
    assert str(sa) in msg and str(sb) in msg, msg


@pytest.mark.parametrize("sa,sb,message", [
    ((3, 4), (5, 2), "matmul: shapes (3, 4) and (5, 2) are not aligned (4 != 5)"),
    ((3,), (4,), "matmul: shapes (3,) and (4,) are not aligned (3 != 4)"),
    ((3,), (4, 2), "matmul: shapes (3,) and (4, 2) are not aligned (3 != 4)"),
    ((2, 3), (4,), "matmul: shapes (2, 3) and (4,) are not aligned (3 != 4)"),
    ((2, 3, 4), (2, 5, 6), "matmul: shapes (2, 3, 4) and (2, 5, 6) are not aligned (4 != 5)"),
    ((2, 3, 4), (3, 4, 6), None),  # aligned, but the batch dimensions do not broadcast
], ids=str)
def test_matmul_shape_mismatch(sa: tuple, sb: tuple, message: str | None) -> None:
    a = tg.Tensor(np.ones(sa), requires_grad=True)
    b = tg.Tensor(np.ones(sb))
    with pytest.raises(ValueError) as ei:
        a @ b
    assert isinstance(ei.value, ShapeError)
    msg = str(ei.value)
    if message is not None:
        assert msg == message
    assert msg.startswith("matmul:") and str(sa) in msg and str(sb) in msg


@pytest.mark.parametrize("data", [np.arange(3), np.array([True, False]), np.int32(4)], ids=repr)
def test_requires_grad_on_integer_or_bool_data_is_a_type_error(data: Any) -> None:
    with pytest.raises(TypeError) as ei:
        tg.Tensor(data, requires_grad=True)
    assert isinstance(ei.value, DTypeError)
    t = tg.Tensor(data)  # fine without a gradient: indices and masks
    assert t.dtype == np.asarray(data).dtype and not t.requires_grad
    with pytest.raises(TypeError):
        t.requires_grad = True
    with pytest.raises(TypeError):
        t.requires_grad_()
    assert not t.requires_grad


def test_reshape_to_an_incompatible_size_names_the_op() -> None:
    x = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError) as ei:
        x.reshape(4, 2)
    assert isinstance(ei.value, ShapeError)
    assert str(ei.value).startswith("reshape:") and "(2, 3)" in str(ei.value)


@pytest.mark.parametrize("sizes,axis", [([1, 1], 1), ([2, 2], 0), ([4], -1)])
def test_split_sizes_that_do_not_add_up_name_op_and_shape(sizes: list[int], axis: int) -> None:
    x = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError) as ei:
        tg.split(x, sizes, axis=axis)
    assert isinstance(ei.value, ShapeError)
    msg = str(ei.value)
    assert msg.startswith("split:") and "(2, 3)" in msg and str(sizes) in msg


# ============================================================================ 8. the Tensor surface
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_a_numpy_float_array_keeps_its_dtype(dtype: Any) -> None:
    a = np.array([1.0, 2.0], dtype=dtype)
    t = tg.Tensor(a, requires_grad=True)
    assert t.dtype == dtype and t.data.dtype == dtype
    assert tg.Tensor(np.float64(2.0)).dtype == np.float64
    assert tg.Tensor(a, dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("data", [3, 2.5, [1, 2], [[1.0, 2.0], [3.0, 4.0]], [[1, 2.5]]], ids=repr)
def test_python_numbers_and_lists_become_the_default_dtype(data: Any, monkeypatch) -> None:
    t = tg.Tensor(data)
    assert t.dtype == np.float32 and tg.default_dtype == np.float32
    np.testing.assert_array_equal(t.data, np.asarray(data, dtype=np.float64))
    assert tg.Tensor(data, requires_grad=True).requires_grad
    monkeypatch.setattr(tg, "default_dtype", np.float64)
    assert tg.Tensor(data).dtype == np.float64


def test_tensor_of_a_tensor() -> None:
    x = tg.Tensor(np.array([1.0, 2.0], np.float64), requires_grad=True)
    h = x * 2.0
    t = tg.Tensor(h)
    assert isinstance(t, tg.Tensor) and t.dtype == np.float64 and t.is_leaf
    assert not t.requires_grad
    np.testing.assert_array_equal(t.data, h.data)
    assert tg.Tensor(x, dtype=np.float32).dtype == np.float32


def test_numpy_views_of_a_tensor() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = tg.Tensor(a, requires_grad=True)
    arr = np.asarray(t)
    assert type(arr) is np.ndarray and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, a)
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    assert type(t.numpy()) is np.ndarray
    np.testing.assert_array_equal(t.numpy(), a)
    one = t.sum()
    item = one.item()
    assert type(item) is float and item == 15.0
    assert (t.shape, t.dtype, t.ndim, t.size) == ((2, 3), np.float32, 2, 6)


def test_T_transposes_and_carries_the_gradient() -> None:
    rng = np.random.default_rng(12)
    a = rng.standard_normal((2, 3))
    t = tg.Tensor(a, requires_grad=True)
    y = t.T
    assert y.shape == (3, 2)
    np.testing.assert_array_equal(y.data, a.T)
    g = rng.standard_normal((3, 2))
    y.backward(g)
    np.testing.assert_array_equal(t.grad, g.T)


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "@"])
def test_ndarray_on_the_left_gives_a_tensor(op: str) -> None:
    rng = np.random.default_rng(13)
    a = rng.uniform(1, 2, (3, 3))
    x_np = rng.uniform(1, 2, (3, 3))
    x = tg.Tensor(x_np, requires_grad=True)
    y = eval(f"a {op} x")
    assert isinstance(y, tg.Tensor) and y.requires_grad
    np.testing.assert_allclose(y.data, eval(f"a {op} x_np"))
    y.backward(np.ones((3, 3)))
    assert x.grad is not None and x.grad.shape == (3, 3)


def test_numpy_scalar_on_the_left_gives_a_tensor() -> None:
    x = tg.Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = np.float32(3.0) * x
    assert isinstance(y, tg.Tensor) and y.dtype == np.float32 and y.requires_grad


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_comparisons_give_bool_tensors(op: str) -> None:
    a = np.array([1.0, 2.0, 3.0])
    x = tg.Tensor(a, requires_grad=True)
    for other, other_np in ((2.0, 2.0), (tg.Tensor(a[::-1].copy()), a[::-1])):
        y = eval(f"x {op} other")
        assert isinstance(y, tg.Tensor) and y.dtype == np.bool_ and not y.requires_grad
        np.testing.assert_array_equal(y.data, eval(f"a {op} other_np"))


def test_tensors_are_usable_as_dict_keys() -> None:
    a = tg.Tensor(np.ones(3))
    b = tg.Tensor(np.ones(3))  # equal data, a different tensor
    d = {a: "a", b: "b"}
    assert len(d) == 2 and d[a] == "a" and d[b] == "b"
    assert a in {a} and b not in {a}
    assert hash(a) == hash(a)


@pytest.mark.parametrize("shape", [(), (1,), (2,), (7,), (3, 5), (4, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_grads_terms_reach_a_leaf_summed_in_their_order(shape: tuple[int, ...],
                                                         dtype: Any) -> None:
    """A gradient given as terms (one per time step) is added to a leaf one term after the
    other, in order: bit-equal to a Python loop of additions (what makes checkpointed and plain
    runs agree to the last bit)."""
    from tinygrad_rnn.engine import Grad, accumulate

    gen = np.random.default_rng(0)
    pieces = [(gen.standard_normal(shape) * 10.0 ** gen.integers(-4, 4)).astype(dtype)
              for _ in range(37)]
    start = gen.standard_normal(shape).astype(dtype)
    want = start.copy()
    for p in pieces:
        want = want + p
    leaf = tg.Tensor(np.zeros(shape, dtype), requires_grad=True)
    leaf.grad = start.copy()
    accumulate(leaf, Grad(pieces))
    assert leaf.grad.dtype == dtype and leaf.grad.shape == shape
    np.testing.assert_array_equal(leaf.grad, want)
