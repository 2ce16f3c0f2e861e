"""Compiled recurrences (`nn.unroll(compile=True)`, `tinygrad_rnn.scan`): what the scan promises.

Proven here:
- A. Every reason a cell cannot run as a scan (a Python read of a traced value, a random draw,
  a program, shape or dtype that changes from step to step, a fresh tensor that changes per
  step, a primitive with `scan = False`) gives ONE `CompileWarning` per cell class that names
  the reason and `compile=False`, records no `Scan`, and gives the outputs and gradients of the
  per-op tape (`compile=False`) and of plain numpy. `compile=False` never warns nor scans; a user
  primitive with only forward/backward runs inside a scan; a None initial state is no fallback.
- B. Everything else keeps working through a scan, each test checking that a `Scan` record (or
  `Scan.forward` / `Scan.backward`, counted by a spy) was really used: checkpointing (bit-identical
  gradients, lower memory), TBPTT, retain_grad, gradient_flow, detect_anomaly (forward and
  backward, naming the primitive and this file's line), multi-layer / bidirectional /
  batch_first layers, float32, a 100,000-step unroll, gradcheck, no_grad, backward twice, a
  non-leaf tensor the cell closes over, and one PyTorch parity fixture.

References are the per-op tape (`compile=False`) or numpy written in this file, never numbers
taken from the implementation. Upstream gradients are random, never all-ones.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
import tinygrad_rnn.scan as scan_mod
from tinygrad_rnn import nn, optim
from tinygrad_rnn.errors import GraphError
from tinygrad_rnn.scan import CompileWarning, Scan
from tinygrad_rnn.testing import gradcheck
from test_bptt import _peak_bytes  # the same tracemalloc measurement as the per-op tests

F64 = np.float64
TOL = dict(rtol=1e-12, atol=1e-12)
THIS_FILE = Path(__file__).name
FIXTURES = Path(__file__).parent / "fixtures"
T, B, I, H = 7, 2, 3, 4  # noqa: E741  sizes of the small unrolls

# An unexpected fallback anywhere must fail loudly; tests about warnings record them instead.
pytestmark = pytest.mark.filterwarnings("error::tinygrad_rnn.scan.CompileWarning")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Each test starts with no cell class warned about (the warning is once per class)."""
    scan_mod._WARNED.clear()
    yield
    scan_mod._WARNED.clear()


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of Scan.forward / Scan.backward calls: proof that the scan ran, also where no
    Scan record stays on the tape (under no_grad, inside checkpoint segments)."""
    counts = {"forward": 0, "backward": 0}
    for name in counts:
        original = getattr(Scan, name)

        def counted(*args: Any, _f: Callable[..., Any] = original, _n: str = name,
                    **kw: Any) -> Any:
            counts[_n] += 1
            return _f(*args, **kw)

        monkeypatch.setattr(Scan, name, staticmethod(counted))
    return counts


# ============================================================================= helpers
def flat(tree: Any) -> list[Any]:
    """The leaves of a nested tuple/list, in order."""
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in flat(t)]
    return [tree]


def record_ops(*roots: Any) -> list[Any]:
    """The primitive of every record reachable from the given tensors."""
    return [n.op for n in tg.engine.walk(*[t for t in roots if isinstance(t, tg.Tensor)])]


def n_scans(*roots: Any) -> int:
    return sum(op is Scan for op in record_ops(*flat(roots)))


def upstream(k: int, shape: tuple[int, ...], dtype: Any, seed: int) -> np.ndarray:
    """The random upstream gradient of output k (the numpy references use the same ones)."""
    return rng(1000 * seed + k).standard_normal(shape).astype(dtype)


def as_leaves(tree: Any, keep: list[tg.Tensor]) -> Any:
    """Arrays of a nested tuple/list as leaves that require grad (collected in `keep`)."""
    if tree is None:
        return None
    if isinstance(tree, (tuple, list)):
        return type(tree)(as_leaves(t, keep) for t in tree)
    t = tg.Tensor(np.array(tree, copy=True), requires_grad=True)
    keep.append(t)
    return t


def outcome(fn: Callable[[tg.Tensor, Any], Any], module: nn.Module | None, xs: np.ndarray,
            state: Any, seed: int = 0) -> tuple[dict[str, Any], int]:
    """Outputs and every gradient of L = sum_k sum(out_k * R_k) for out = fn(xs, state), with
    xs and each state array leaves that require grad; and how many Scan records the outputs'
    graph held before backward. Keys: out0, out1, ... d_xs, d_state0, ... d_<parameter>."""
    if module is not None:
        module.zero_grad()
    x = tg.Tensor(xs.copy(), requires_grad=True)
    leaves: list[tg.Tensor] = []
    out = flat(fn(x, as_leaves(state, leaves)))
    count = n_scans(*out)
    loss = None
    for k, t in enumerate(out):
        term = (t * tg.Tensor(upstream(k, t.shape, t.dtype, seed))).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    res: dict[str, Any] = {f"out{k}": t.data.copy() for k, t in enumerate(out)}
    res["d_xs"] = x.grad
    res.update({f"d_state{k}": s.grad for k, s in enumerate(leaves)})
    if module is not None:
        res.update({f"d_{n}": p.grad for n, p in module.named_parameters()})
        module.zero_grad()
    return res, count


def assert_same(got: dict[str, Any], want: dict[str, Any], exact: bool = False,
                **tol: Any) -> None:
    """Same keys; each array equal to the last bit (`exact`) or within `tol` (default TOL)."""
    assert sorted(got) == sorted(want)
    for k in want:
        if want[k] is None:
            assert got[k] is None, k
            continue
        assert got[k] is not None, f"{k}: no gradient"
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
        if exact:
            assert np.array_equal(got[k], want[k]), \
                f"{k}: max |diff| {np.abs(got[k] - want[k]).max():.3g}"
        else:
            np.testing.assert_allclose(got[k], want[k], err_msg=k, **(tol or TOL))


def compile_warnings(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """fn() and the messages of the CompileWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, CompileWarning)]


def line_of(obj: Any, fragment: str) -> int:
    """The line number in this file of the first source line of `obj` containing `fragment`."""
    lines, start = inspect.getsourcelines(obj)
    return start + next(i for i, s in enumerate(lines) if fragment in s)


# ============================================================================= cells
class ElmanCell(nn.Module):
    """h' = tanh(x W + h U + b), y = h'. A None state starts from zeros."""

    def __init__(self, n_in: int = I, n_hid: int = H, seed: int = 0, dtype: Any = F64) -> None:
        super().__init__()
        g = rng(seed)
        self.W = nn.Parameter(g.uniform(-0.7, 0.7, (n_in, n_hid)).astype(dtype))
        self.U = nn.Parameter(g.uniform(-0.7, 0.7, (n_hid, n_hid)).astype(dtype))
        self.b = nn.Parameter(g.uniform(-0.3, 0.3, (n_hid,)).astype(dtype))
        self.log: list[Any] = []
        self.calls = 0

    def pre(self, x_t: tg.Tensor, h: Any) -> tg.Tensor:
        if h is None:
            h = tg.Tensor(np.zeros(x_t.shape[:-1] + self.U.shape[:1], dtype=x_t.dtype))
        return x_t @ self.W + h @ self.U + self.b

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, tg.Tensor]:
        h = self.pre(x_t, h).tanh()
        return h, h


def elman_numpy(cell: ElmanCell, xs: np.ndarray, h0: np.ndarray, seed: int = 0,
                extra: np.ndarray | None = None, detach: bool = False) -> dict[str, Any]:
    """ElmanCell's unroll and its hand-written BPTT for L = sum(ys * R_0) + sum(h_T * R_1),
    keyed as `outcome` keys them; `extra` (T, B, H) is added to each pre-activation (its
    gradient is returned as d_extra), `detach` stops the gradient through h in h U."""
    W, U, b = cell.W.data, cell.U.data, cell.b.data
    n = len(xs)
    hs = [h0]
    for t in range(n):
        hs.append(np.tanh(xs[t] @ W + hs[t] @ U + b + (0.0 if extra is None else extra[t])))
    ys = np.stack(hs[1:])
    gy, dh = upstream(0, ys.shape, ys.dtype, seed), upstream(1, h0.shape, h0.dtype, seed)
    g = {"d_xs": np.zeros_like(xs), "d_W": np.zeros_like(W), "d_U": np.zeros_like(U),
         "d_b": np.zeros_like(b), "d_extra": np.zeros(ys.shape)}
    for t in range(n - 1, -1, -1):
        da = (dh + gy[t]) * (1.0 - hs[t + 1] ** 2)
        g["d_extra"][t] = da
        g["d_xs"][t] = da @ W.T
        g["d_W"] += xs[t].T @ da
        g["d_U"] += hs[t].T @ da
        g["d_b"] += da.sum(axis=0)
        dh = np.zeros_like(dh) if detach else da @ U.T
    # a detached h0 reaches the loss by no path: the tape gives it no gradient at all
    return {"out0": ys, "out1": hs[-1], "d_state0": None if detach else dh, **g}


class CoupledCell(nn.Module):
    """A custom cell with a hoisted input projection returning a tuple and a tuple state:
    xz = x Wz^T + bz, xh = x Wh^T for all steps at once (tg.linear, as the built-in layers);
    z = sigmoid(xz + h Uz), c' = lerp(c, tanh(xh + h Uh), z), h' = tanh(c'); y = h'."""

    def __init__(self, n_in: int = I, n_hid: int = H, seed: int = 0, dtype: Any = F64) -> None:
        super().__init__()
        g = rng(seed)
        self.Wz = nn.Parameter(g.uniform(-0.7, 0.7, (n_hid, n_in)).astype(dtype))
        self.Wh = nn.Parameter(g.uniform(-0.7, 0.7, (n_hid, n_in)).astype(dtype))
        self.Uz = nn.Parameter(g.uniform(-0.7, 0.7, (n_hid, n_hid)).astype(dtype))
        self.Uh = nn.Parameter(g.uniform(-0.7, 0.7, (n_hid, n_hid)).astype(dtype))
        self.bz = nn.Parameter(g.uniform(-0.3, 0.3, (n_hid,)).astype(dtype))

    def project(self, xs: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        return tg.linear(xs, self.Wz, self.bz), tg.linear(xs, self.Wh)

    def forward(self, xp: Any, state: Any) -> tuple[tg.Tensor, Any]:
        (xz, xh), (h, c) = xp, state
        z = (xz + h @ self.Uz).sigmoid()
        c = tg.lerp(c, (xh + h @ self.Uh).tanh(), z)
        h = c.tanh()
        return h, (h, c)


def problem(seed: int, n: int = T, dtype: Any = F64) -> tuple[np.ndarray, np.ndarray]:
    """xs (n, B, I) and h0 (B, H)."""
    g = rng(seed)
    return g.standard_normal((n, B, I)).astype(dtype), g.normal(0, 0.5, (B, H)).astype(dtype)


def unroll_fn(cell: Any, compile: bool = True, **kw: Any) -> Callable[[tg.Tensor, Any], Any]:
    return lambda x, s: nn.unroll(cell, x, s, compile=compile, **kw)


# ============================================================================= A. fallbacks
class ReadsData(ElmanCell):
    """Logs max |h| through .data (monitoring)."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.log.append(float(np.abs(h.data).max()))
        return super().forward(x_t, h)


class CallsItem(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.log.append(h.abs().max().item())
        return super().forward(x_t, h)


class UsesAsBool(ElmanCell):
    """Skips h U for an all-zero state (a Python branch on a traced value)."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        pre = x_t @ self.W + self.b
        if h.abs().sum():
            pre = pre + h @ self.U
        h = pre.tanh()
        return h, h


class ConvertsWithAsarray(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.log.append(np.asarray(h).max())
        return super().forward(x_t, h)


class CallsNumpy(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.log.append(h.numpy().max())
        return super().forward(x_t, h)


class CallsFloat(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.log.append(float(h.abs().max()))
        return super().forward(x_t, h)


class CallsInt(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.log.append(int(h.abs().sum() * 100.0))
        return super().forward(x_t, h)


class Compares(ElmanCell):
    """Clamps the pre-activation at 30 with a mask computed from it (never active here)."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        pre = self.pre(x_t, h)
        h = tg.where(pre > 30.0, 30.0, pre).tanh()
        return h, h


class Detaches(ElmanCell):
    """Stops the gradient through the recurrence (numpy: detach=True)."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        h = self.pre(x_t, h.detach()).tanh()
        return h, h


class BranchesOnCount(ElmanCell):
    """Every other call applies one more primitive (* 1.0, exact): the programs alternate."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.calls += 1
        pre = self.pre(x_t, h)
        if self.calls % 2 == 0:
            pre = pre * 1.0
        h = pre.tanh()
        return h, h


class SwapsOperands(ElmanCell):
    """Every other call adds the two products the other way round (exact: + commutes)."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        self.calls += 1
        if self.calls % 2:
            pre = x_t @ self.W + h @ self.U
        else:
            pre = h @ self.U + x_t @ self.W
        h = (pre + self.b).tanh()
        return h, h


class Tap(tg.Primitive):
    """Identity that keeps a copy of every value it sees: a side effect, hence scan = False."""

    name = "tap"
    scan = False
    seen: list[np.ndarray] = []

    @staticmethod
    def forward(x: np.ndarray) -> tuple[np.ndarray, Any]:
        Tap.seen.append(x.copy())
        return x.copy(), None

    @staticmethod
    def backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> tuple[np.ndarray]:
        return (g,)


class Taps(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        return super().forward(x_t, Tap.apply(h))


class Checkpoints(ElmanCell):
    """The step under tg.checkpoint (recomputed in backward: a primitive with a side effect)."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        h = tg.checkpoint(lambda x, s: self.pre(x, s).tanh(), x_t, h)
        return h, h


FALLBACKS = [  # (cell class, regexes its warning must match, numpy reference options)
    (ReadsData, [r"reads \.data", THIS_FILE], {}),
    (CallsItem, [r"\.item\(\)"], {}),
    (UsesAsBool, [r"uses it as a bool"], {}),
    (ConvertsWithAsarray, [r"np\.asarray"], {}),
    (CallsNumpy, [r"\.numpy\(\)"], {}),
    (CallsFloat, [r"float\(\)"], {}),
    (CallsInt, [r"int\(\)"], {}),
    (Compares, [r"compares it"], {}),
    (Detaches, [r"detaches it"], {"detach": True}),
    (BranchesOnCount, [r"apply \d+ and \d+ primitives"], {}),
    (SwapsOperands, [r"operation \d+ of the step"], {}),
    (Taps, [r"'tap'", r"scan = False"], {}),
    (Checkpoints, [r"'checkpoint'", r"scan = False"], {}),
]


def check_warning(messages: list[str], cls: type, fragments: list[str]) -> None:
    """Exactly one CompileWarning, naming the class, the reason and compile=False."""
    assert len(messages) == 1, messages
    msg = messages[0]
    assert cls.__name__ in msg and "compile=False" in msg, msg
    for frag in fragments:
        assert re.search(frag, msg), f"{frag!r} not in {msg!r}"


@pytest.mark.parametrize("cls, fragments, ref", FALLBACKS, ids=[c[0].__name__ for c in FALLBACKS])
def test_a_cell_that_cannot_be_traced_warns_once_and_gives_the_per_op_results(
        cls: type, fragments: list[str], ref: dict[str, Any]) -> None:
    """One warning naming the reason; no Scan record; outputs and gradients equal to the per-op
    tape's (bit for bit) and to numpy; a second cell of the class does not warn again."""
    xs, h0 = problem(1)
    cell = cls(seed=2)
    (got, count), msgs = compile_warnings(lambda: outcome(unroll_fn(cell), cell, xs, h0))
    check_warning(msgs, cls, fragments)
    assert count == 0
    (want, count), msgs = compile_warnings(
        lambda: outcome(unroll_fn(cell, compile=False), cell, xs, h0))
    assert msgs == [] and count == 0
    assert_same(got, want, exact=True)
    expected = elman_numpy(cell, xs, h0, **ref)
    del expected["d_extra"]
    assert_same(got, expected)
    # once per class: another instance, another call, no new warning, still per op
    other = cls(seed=3)
    (_, count), msgs = compile_warnings(lambda: outcome(unroll_fn(other), other, xs, h0))
    assert msgs == [] and count == 0


class GrowsMemory(ElmanCell):
    """Keeps every h in its state (mem grows by one row per step): the shapes change."""

    def forward(self, x_t: tg.Tensor, state: Any) -> tuple[tg.Tensor, Any]:
        h, mem = state
        h = self.pre(x_t, h).tanh()
        return h, (h, tg.concat([mem, h.unsqueeze(0)], axis=0))


class TradesDtypes(ElmanCell):
    """State (a, b) of a float32 and a float64 part that trade places every step."""

    def forward(self, x_t: tg.Tensor, state: Any) -> tuple[tg.Tensor, Any]:
        a, b = state
        y = (x_t @ self.W + (a + b) @ self.U).tanh()
        return y, ((b * 0.9).tanh(), (a * 0.8).tanh())


def test_a_state_whose_shape_grows_falls_back_naming_the_shapes() -> None:
    """Shapes that change from step to step: the warning names both; per-op results."""
    xs, h0 = problem(4)
    cell = GrowsMemory(seed=5)
    state = (h0, h0[None] * 0.5)
    (got, count), msgs = compile_warnings(lambda: outcome(unroll_fn(cell), cell, xs, state))
    check_warning(msgs, GrowsMemory, [r"has shape \(\d, 2, 4\) and dtype", r"shape \(\d, 2, 4\)"])
    assert count == 0
    want, _ = outcome(unroll_fn(cell, compile=False), cell, xs, state)
    assert_same(got, want, exact=True)
    ref = elman_numpy(cell, xs, h0)
    np.testing.assert_allclose(got["out0"], ref["out0"], **TOL)
    np.testing.assert_allclose(got["out2"], np.concatenate([state[1], ref["out0"]]), **TOL)
    _, msgs = compile_warnings(lambda: nn.unroll(GrowsMemory(), xs, tuple(map(tg.Tensor, state))))
    assert msgs == []


def test_a_state_whose_dtypes_change_falls_back_naming_the_dtypes() -> None:
    """float32 and float64 parts trading places: the warning names both dtypes."""
    xs, h0 = problem(6)
    cell = TradesDtypes(seed=7)
    state = (h0.astype(np.float32), h0 * 0.5)
    (got, count), msgs = compile_warnings(lambda: outcome(unroll_fn(cell), cell, xs, state))
    check_warning(msgs, TradesDtypes, [r"dtype float(32|64) in one traced step and shape "
                                       r"\(2, 4\) and dtype float(32|64) in the next"])
    assert count == 0
    want, _ = outcome(unroll_fn(cell, compile=False), cell, xs, state)
    assert_same(got, want, exact=True)
    _, msgs = compile_warnings(lambda: nn.unroll(TradesDtypes(), xs, tuple(map(tg.Tensor, state))))
    assert msgs == []
    a, b = state  # numpy forward of the trading state
    for t in range(len(xs)):
        y = np.tanh(xs[t] @ cell.W.data + (a + b) @ cell.U.data)
        a, b = np.tanh(b * 0.9), np.tanh(a * 0.8)
        np.testing.assert_allclose(got["out0"][t], y, rtol=1e-6, atol=1e-6)


class AddsFreshNoise(ElmanCell):
    """Adds noise made inside the step from values drawn outside it, one draw per call."""

    def __init__(self, noise: Iterator[np.ndarray], **kw: Any) -> None:
        super().__init__(**kw)
        self.noise = noise
        self.used: list[np.ndarray] = []

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        n = next(self.noise)
        self.used.append(n)
        h = (self.pre(x_t, h) + tg.Tensor(n)).tanh()
        return h, h


def test_a_tensor_drawn_inside_the_step_falls_back_and_every_step_gets_its_own() -> None:
    """A fresh tensor that changes per step: warning; the per-op run uses a new draw at every
    step (the last T draws; tracing drew some before), equal to per-op and numpy with those."""
    xs, h0 = problem(8)
    g = rng(9)
    cell = AddsFreshNoise((g.normal(0, 0.3, (B, H)) for _ in itertools.count()), seed=10)
    (got, count), msgs = compile_warnings(lambda: outcome(unroll_fn(cell), cell, xs, h0))
    check_warning(msgs, AddsFreshNoise, [r"changes from one step to the next"])
    assert count == 0
    drawn = cell.used[-T:]
    replay = AddsFreshNoise(iter(drawn), seed=10)
    want, _ = outcome(unroll_fn(replay, compile=False), replay, xs, h0)
    assert_same(got, want, exact=True)
    expected = elman_numpy(cell, xs, h0, extra=np.stack(drawn))
    del expected["d_extra"]
    assert_same(got, expected)
    other = AddsFreshNoise((g.normal(0, 0.3, (B, H)) for _ in itertools.count()))
    _, msgs = compile_warnings(lambda: nn.unroll(other, xs, tg.Tensor(h0)))
    assert msgs == []


class DropsOut(ElmanCell):
    def __init__(self, use_module: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.drop = nn.Dropout(0.5) if use_module else None

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        h = self.pre(x_t, h).tanh()
        h = self.drop(h) if self.drop is not None else F.dropout(h, 0.5, True)
        return h, h


@pytest.mark.parametrize("use_module", [False, True], ids=["F.dropout", "nn.Dropout"])
def test_dropout_inside_the_step_falls_back_with_the_masks_of_the_per_op_tape(
        use_module: bool) -> None:
    """Random draws in the step: warning; under the same tg.manual_seed the fallback draws
    the same masks as compile=False (the warning promises the same results)."""
    xs, h0 = problem(11)
    cell = DropsOut(use_module, seed=12)
    assert cell.training
    tg.manual_seed(13)
    (got, count), msgs = compile_warnings(lambda: outcome(unroll_fn(cell), cell, xs, h0))
    check_warning(msgs, DropsOut, [r"draws random numbers"])
    assert count == 0
    _, msgs = compile_warnings(lambda: nn.unroll(DropsOut(use_module), xs, tg.Tensor(h0)))
    assert msgs == []
    # the traced steps must leave the library's random stream as they found it
    tg.manual_seed(13)
    want, _ = outcome(unroll_fn(cell, compile=False), cell, xs, h0)
    assert_same(got, want, exact=True)


def test_compile_false_never_warns_and_records_no_scan() -> None:
    """compile=False on nn.unroll, nn.Recurrent and nn.LSTM: per-op tape, no warning, even for
    a cell that would fall back."""
    xs, h0 = problem(14)
    cell = CallsItem(seed=15)
    tg.manual_seed(16)
    lstm = nn.LSTM(I, H, dtype=F64, compile=False)
    runs = {
        "unroll": lambda: nn.unroll(cell, xs, tg.Tensor(h0), compile=False),
        "Recurrent": lambda: nn.Recurrent(cell, compile=False)(xs, tg.Tensor(h0)),
        "Recurrent of a traceable cell": lambda: nn.Recurrent(ElmanCell(), compile=False)(xs),
        "LSTM": lambda: lstm(tg.Tensor(xs, requires_grad=True)),
    }
    for name, run in runs.items():
        out, msgs = compile_warnings(run)
        assert msgs == [], name
        assert n_scans(out) == 0, name
        assert out[0].requires_grad, name  # a tape was recorded, just not a scan


class Softsign(tg.Primitive):
    """x / (1 + |x|): a user primitive with forward and backward only (no scan protocol)."""

    name = "softsign"

    @staticmethod
    def forward(x: np.ndarray) -> tuple[np.ndarray, Any]:
        d = 1.0 + np.abs(x)
        return x / d, d

    @staticmethod
    def backward(g: np.ndarray, d: np.ndarray, needs: tuple[bool, ...]) -> tuple[np.ndarray]:
        return (g / (d * d),)


class SoftsignCell(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        h = Softsign.apply(self.pre(x_t, h))
        return h, h


def test_a_user_primitive_without_the_scan_protocol_runs_inside_the_scan() -> None:
    """A plain user Primitive (no scan attributes) is no fallback: Scan record; outputs and
    gradients equal to the per-op tape's and to numpy."""
    xs, h0 = problem(17)
    cell = SoftsignCell(seed=18)
    got, count = outcome(unroll_fn(cell), cell, xs, h0)
    assert count == 1
    want, count = outcome(unroll_fn(cell, compile=False), cell, xs, h0)
    assert count == 0
    assert_same(got, want)
    h = h0
    for t in range(T):
        a = xs[t] @ cell.W.data + h @ cell.U.data + cell.b.data
        h = a / (1.0 + np.abs(a))
        np.testing.assert_allclose(got["out0"][t], h, **TOL)


def test_a_none_initial_state_is_no_fallback() -> None:
    """A cell that replaces a None state by zeros: no warning; the first step runs per op, the
    others as a scan (a concat record over it); results equal to per-op and numpy."""
    xs, _ = problem(19)
    cell = ElmanCell(seed=20)
    (ys, h), msgs = compile_warnings(lambda: nn.unroll(cell, tg.Tensor(xs)))
    assert msgs == []
    assert ys._node.op.name == "concat"
    assert any(i._node is not None and i._node.op is Scan for i in ys._node.inputs)
    assert h._node.op is Scan
    got, _ = outcome(lambda x, s: nn.unroll(cell, x), cell, xs, None)
    want, _ = outcome(lambda x, s: nn.unroll(cell, x, compile=False), cell, xs, None)
    assert_same(got, want)
    expected = elman_numpy(cell, xs, np.zeros((B, H)))
    np.testing.assert_allclose(got["out0"], expected["out0"], **TOL)
    for name in ("d_xs", "d_W", "d_U", "d_b"):
        np.testing.assert_allclose(got[name], expected[name], err_msg=name, **TOL)


# ============================================================================= B1. checkpointing
def checkpoint_models(kind: str, every: int | None) -> tuple[Callable[..., Any], nn.Module, Any]:
    """(fn(xs, state), module, initial state arrays) of one model, built identically for any
    `every`: a custom cell via nn.unroll / nn.Recurrent, or a built-in layer."""
    g = rng(21)
    h0, c0 = g.normal(0, 0.5, (B, H)), g.normal(0, 0.5, (B, H))
    if kind == "elman":
        cell = ElmanCell(seed=22)
        return unroll_fn(cell, checkpoint_every=every), cell, h0
    if kind == "coupled":
        layer = nn.Recurrent(CoupledCell(seed=23), checkpoint_every=every)
        return (lambda x, s: layer(x, s)), layer, (h0, c0)
    tg.manual_seed(24)
    layer = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](I, H, dtype=F64, checkpoint_every=every)
    state = (h0[None], c0[None]) if kind == "lstm" else None  # the GRU starts from zeros
    return (lambda x, s: layer(x, s)), layer, state


@pytest.mark.parametrize("kind", ["elman", "coupled", "lstm", "gru"])
@pytest.mark.parametrize("every", [1, 2, 3, T])
def test_checkpoint_every_gives_the_gradients_of_the_plain_scan_bit_for_bit(
        kind: str, every: int, scans: dict[str, int]) -> None:
    """checkpoint_every=k of a compiled unroll: every segment is a scan (one Scan.backward per
    segment), and outputs and gradients equal the unsegmented scan's to the last bit."""
    xs = rng(25).standard_normal((T, B, I))
    fn, module, state = checkpoint_models(kind, None)
    plain, count = outcome(fn, module, xs, state)
    assert count == 1
    fn, module, state = checkpoint_models(kind, every)
    scans["backward"] = 0
    ckpt, _ = outcome(fn, module, xs, state)
    assert scans["backward"] == math.ceil(T / every)
    assert_same(ckpt, plain, exact=True)


@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("batch", [1, 3, 32])
@pytest.mark.parametrize("c_order", [True, False])
def test_a_product_over_time_steps_has_numpy_step_by_step_bits(
        dtype: Any, batch: int, c_order: bool) -> None:
    """fused._steps_matmul (linear's and matmul's (T, ..., n) @ (n, m), forward and backward) is
    one GEMM over all rows only where that gives the bits of numpy's step-by-step product, which
    is what segment-by-segment projection under checkpoint_every relies on: at any batch, for a
    weight in either memory order, and on data other than the probe's."""
    from tinygrad_rnn.primitives import fused
    g = rng(80 + batch)
    a = g.standard_normal((13, batch, 300)).astype(dtype)
    w = g.standard_normal((96, 300)).astype(dtype)
    b = w.T if c_order is False else np.ascontiguousarray(w.T)
    for part in (a, a[:5], a[5:6]):  # the whole sequence and two segments
        got = fused._steps_matmul(part, b)
        want = np.stack([part[t] @ b for t in range(part.shape[0])])
        assert got.dtype == dtype and np.array_equal(got, want)


def test_checkpoint_every_is_bit_identical_at_a_batch_where_projections_are_one_gemm(
        scans: dict[str, int]) -> None:
    """float32 nn.LSTM at batch 32 (one GEMM per projection wherever the BLAS's rows agree):
    checkpoint_every = 4 (segments of 4 and a last one of 1) and 9 give the plain scan's outputs
    and gradients to the last bit."""
    n, b, i, h = 13, 32, 24, 40
    xs = rng(81).standard_normal((n, b, i)).astype(np.float32)
    res = {}
    for every in (None, 4, 9):
        tg.manual_seed(82)
        layer = nn.LSTM(i, h, checkpoint_every=every)
        scans["backward"] = 0
        res[every], _ = outcome(lambda x, s: layer(x, s), layer, xs, None)
        assert scans["backward"] == (1 if every is None else math.ceil(n / every))
    assert_same(res[4], res[None], exact=True)
    assert_same(res[9], res[None], exact=True)


class BroadcastBiasCell(CoupledCell):
    """CoupledCell whose projection is written with plain ops: x Wz^T + bz, the bias added by
    broadcasting over (T, B) (not tg.linear)."""

    def project(self, xs: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        return xs @ self.Wz.T + self.bz, xs @ self.Wh.T


def test_checkpoint_every_with_a_broadcast_bias_in_project_is_bit_identical(
        scans: dict[str, int]) -> None:
    """A custom `project` that adds its bias by broadcasting is projected segment by segment:
    the bias gradient is then summed per segment (numpy's pairwise sum over the broadcast rows),
    so checkpoint_every=k agrees to rounding, not to the last bit, with or without compile (the
    bit-for-bit promise holds for projections through tg.linear, tested above)."""
    xs, h0 = problem(68)
    c0 = rng(69).normal(0, 0.5, (B, H))
    res = {}
    for every in (None, 2):
        layer = nn.Recurrent(BroadcastBiasCell(seed=70), checkpoint_every=every)
        scans["backward"] = 0
        res[every], _ = outcome(lambda x, s: layer(x, s), layer, xs, (h0, c0))
        assert scans["backward"] == (1 if every is None else math.ceil(T / every))
    assert_same(res[2], res[None], exact=False)


def test_checkpoint_every_sqrt_T_lowers_the_peak_memory_of_a_compiled_lstm(
        scans: dict[str, int]) -> None:
    """nn.LSTM T=400, B=8, H=64, float32: the scan keeps every step's saved values, so its
    checkpointed run (k = 20) must peak lower, with gradients equal to the last bit."""
    n, b, h, k = 400, 8, 64, 20
    g = rng(26)
    xs = g.standard_normal((n, b, I)).astype(np.float32)
    R = tg.Tensor(g.standard_normal((n, b, h)).astype(np.float32))
    layers = {}
    for every in (None, k):
        tg.manual_seed(27)
        layers[every] = nn.LSTM(I, h, checkpoint_every=every)
    counts = {}

    def run(every: int | None) -> None:
        out, _ = layers[every](xs)
        counts[every] = n_scans(out)
        (out * R).sum().backward()

    peaks = {}
    for every in (None, k):
        scans["backward"] = 0
        peaks[every] = _peak_bytes(lambda: run(every))
        counts[every, "backward"] = scans["backward"]
    assert counts[None] == 1 and counts[None, "backward"] == 1
    assert counts[k, "backward"] == n // k
    for p, q in zip(layers[None].parameters(), layers[k].parameters()):
        assert np.array_equal(p.grad, q.grad)
    assert peaks[k] < 0.7 * peaks[None], {e: f"{v / 1e6:.2f} MB" for e, v in peaks.items()}


# ============================================================================= B2. TBPTT
class Readout(nn.Module):
    """A recurrent layer (compiled or not) and a linear readout: model(x, state) -> (y, state)."""

    def __init__(self, kind: str, compile: bool) -> None:
        super().__init__()
        tg.manual_seed(28)
        if kind == "elman":
            self.rnn = nn.Recurrent(ElmanCell(seed=29), compile=compile)
        else:
            self.rnn = nn.LSTM(I, H, dtype=F64, compile=compile)
        self.out = nn.Linear(H, 2, dtype=F64)

    def forward(self, x: Any, state: Any) -> tuple[tg.Tensor, Any]:
        hs, state = self.rnn(x, state)
        return self.out(hs), state


@pytest.mark.parametrize("kind", ["elman", "lstm"])
@pytest.mark.parametrize("k1, k2", [(4, 4), (3, 6)])
def test_train_truncated_with_a_compiled_model_equals_the_per_op_tape(
        kind: str, k1: int, k2: int, scans: dict[str, int]) -> None:
    """TBPTT(k1, k2) with SGD: the parameters after training agree to 1e-12 with compile=False,
    and the compiled model really ran scans."""
    n = 12
    g = rng(30)
    xs, ys = g.standard_normal((n, B, I)), g.standard_normal((n, B, 2))
    h0 = tg.Tensor(g.normal(0, 0.5, (B, H))) if kind == "elman" else None
    params, losses = {}, {}
    for compile in (True, False):
        model = Readout(kind, compile)
        scans["forward"] = scans["backward"] = 0
        losses[compile], _ = tg.bptt.train_truncated(
            model, xs, ys, F.mse_loss, optim.SGD(model.parameters(), lr=0.2), k1, k2, state=h0)
        params[compile] = dict(model.state_dict())
        assert (scans["backward"] > 0) == compile  # every window's backward ran a scan, or none
    for name in params[False]:
        np.testing.assert_allclose(params[True][name], params[False][name], err_msg=name, **TOL)
    assert losses[True] == pytest.approx(losses[False], rel=1e-12)
    assert not all(np.array_equal(v, Readout(kind, False).state_dict()[k])
                   for k, v in params[True].items())  # training did move the parameters


# ============================================================================= B3. retain_grad
def test_retain_grad_on_the_outputs_and_final_state_of_a_scan() -> None:
    """ys.retain_grad() on a scan's outputs gives the upstream gradient of the loss (two uses
    of ys summed); the same for both parts of the final state."""
    xs, h0 = problem(31)
    c0 = rng(32).normal(0, 0.5, (B, H))
    cell = CoupledCell(seed=33)
    ys, (h, c) = nn.unroll(cell, tg.Tensor(xs, requires_grad=True),
                           (tg.Tensor(h0, requires_grad=True), tg.Tensor(c0)))
    assert ys._node.op is Scan and h._node.op is Scan and c._node.op is Scan
    for t in (ys, h, c):
        t.retain_grad()
    g = rng(34)
    G, G2, GH, GC = (g.standard_normal(s) for s in ((T, B, H), (B, H), (B, H), (B, H)))
    loss = ((ys * tg.Tensor(G)).sum() + (ys[2] * tg.Tensor(G2)).sum()
            + (h * tg.Tensor(GH)).sum() + (c * tg.Tensor(GC)).sum())
    loss.backward()
    want = G.copy()
    want[2] += G2
    np.testing.assert_array_equal(ys.grad, want)
    np.testing.assert_array_equal(h.grad, GH)
    np.testing.assert_array_equal(c.grad, GC)


# ============================================================================= B4. gradient_flow
@pytest.mark.parametrize("kind", ["recurrent", "lstm"])
def test_gradient_flow_of_a_compiled_model_equals_the_per_op_tape(
        kind: str, scans: dict[str, int]) -> None:
    """gradient_flow on a compiled model comes from the scan's backward (the model runs once
    over the whole sequence: one scan forward and backward) and equals compile=False, which
    runs the model step by step, to 1e-12."""
    xs = rng(35).standard_normal((T, B, I))
    R = tg.Tensor(rng(36).standard_normal((T, B, H)))
    h0 = tg.Tensor(rng(37).normal(0, 0.5, (B, H)))
    norms = {}
    for compile in (True, False):
        tg.manual_seed(38)
        if kind == "recurrent":
            model, state = nn.Recurrent(ElmanCell(seed=39), compile=compile), h0
        else:
            model, state = nn.LSTM(I, H, dtype=F64, compile=compile), None
        assert n_scans(model(xs, state)) == int(compile)
        scans["forward"] = scans["backward"] = 0
        norms[compile] = tg.diagnostics.gradient_flow(model, xs, lambda out: (out * R).sum(),
                                                      state=state)
        assert scans["forward"] == scans["backward"] == int(compile)
    assert norms[True].shape == (T,) and np.all(norms[True] > 0)
    np.testing.assert_allclose(norms[True], norms[False], **TOL)


# ============================================================================= B5. detect_anomaly
class LogsInput(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        h = (x_t.log() @ self.W + h @ self.U + self.b).tanh()
        return h, h


class RootsInput(ElmanCell):
    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        h = (x_t.sqrt() @ self.W + h @ self.U + self.b).tanh()
        return h, h


def positive_inputs(seed: int) -> np.ndarray:
    return rng(seed).uniform(0.5, 2.0, (T, B, I))


def test_detect_anomaly_in_a_scan_forward_names_the_primitive_the_line_and_the_step() -> None:
    """log of a -1 at step 5 only (after the traced steps): AnomalyError naming 'log', this
    file's line of the .log() call and step 5, raised from inside the scan."""
    xs = positive_inputs(40)
    xs[5, 1, 0] = -1.0
    cell = LogsInput(seed=41)
    h0 = tg.Tensor(rng(42).normal(0, 0.5, (B, H)))
    with np.errstate(all="ignore"):
        ys, _ = nn.unroll(cell, xs, h0)  # without detect_anomaly: a scan, NaN from step 5 on
        assert ys._node.op is Scan and np.isnan(ys.data[5]).any()
        assert np.isfinite(ys.data[:5]).all()
        with tg.detect_anomaly(), pytest.raises(tg.AnomalyError) as ei:
            nn.unroll(cell, xs, h0)
    msg = str(ei.value)
    assert msg.startswith("log") and "NaN" in msg, msg
    assert f"{THIS_FILE}:{line_of(LogsInput.forward, '.log()')}" in msg, msg
    assert "scan" in msg and "step 5" in msg, msg


def test_detect_anomaly_in_a_scan_backward_names_the_primitive_and_the_line() -> None:
    """sqrt at an input 0 (step 4): the forward is finite, the gradient of sqrt is Inf; the
    AnomalyError from the scan's backward names 'sqrt', gradient, the line and step 4."""
    xs = positive_inputs(43)
    xs[4, 0, 1] = 0.0
    cell = RootsInput(seed=44)
    x = tg.Tensor(xs, requires_grad=True)
    G = tg.Tensor(rng(45).standard_normal((T, B, H)))
    with np.errstate(all="ignore"), tg.detect_anomaly():
        ys, _ = nn.unroll(cell, x, tg.Tensor(rng(46).normal(0, 0.5, (B, H))))
        assert ys._node.op is Scan and np.isfinite(ys.data).all()
        with pytest.raises(tg.AnomalyError) as ei:
            (ys * G).sum().backward()
    msg = str(ei.value)
    assert msg.startswith("sqrt") and "gradient" in msg and "Inf" in msg, msg
    assert f"{THIS_FILE}:{line_of(RootsInput.forward, '.sqrt()')}" in msg, msg
    assert "scan" in msg and "step 4" in msg, msg


# ============================================================================= B6. layer options
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers, bidir, batch_first, with_state",
                         [(2, True, True, True), (2, False, False, False), (1, True, False, True)])
def test_multi_layer_bidirectional_batch_first_compiled_equals_per_op(
        kind: str, layers: int, bidir: bool, batch_first: bool, with_state: bool) -> None:
    """Every (layer, direction) is one scan; outputs, final states and all gradients equal the
    per-op tape's to 1e-12 (float64)."""
    n_dirs = 2 if bidir else 1
    g = rng(47)
    xs = g.standard_normal((B, T, I) if batch_first else (T, B, I))
    shape = (layers * n_dirs, B, H)
    state = None
    if with_state:
        state = ((g.normal(0, .5, shape), g.normal(0, .5, shape)) if kind == "lstm"
                 else g.normal(0, .5, shape))
    res = {}
    for compile in (True, False):
        tg.manual_seed(48)
        layer = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind](
            I, H, num_layers=layers, bidirectional=bidir, batch_first=batch_first, dtype=F64,
            compile=compile)
        res[compile], count = outcome(lambda x, s: layer(x, s), layer, xs, state)
        assert count == (layers * n_dirs if compile else 0)
    assert_same(res[True], res[False])


# ============================================================================= B7. float32
@pytest.mark.parametrize("kind", ["lstm", "coupled"])
def test_float32_stays_float32_through_a_scan(kind: str) -> None:
    """A float32 layer / custom cell, compiled: outputs, final state and every gradient are
    float32 (and close to the per-op tape's)."""
    f32 = np.float32
    g = rng(49)
    xs = g.standard_normal((T, B, I)).astype(f32)
    hc = tuple(g.normal(0, 0.5, (1, B, H)).astype(f32) for _ in range(2))
    res = {}
    for compile in (True, False):
        if kind == "lstm":
            tg.manual_seed(50)
            module = nn.LSTM(I, H, compile=compile)
            state: Any = hc
        else:
            module = nn.Recurrent(CoupledCell(seed=51, dtype=f32), compile=compile)
            state = (hc[0][0], hc[1][0])
        res[compile], count = outcome(lambda x, s: module(x, s), module, xs, state)
        assert count == int(compile)
    for name, a in res[True].items():
        assert a.dtype == f32, name
    assert_same(res[True], res[False], rtol=1e-5, atol=1e-6)


# ============================================================================= B8. long unroll
def test_a_100000_step_scan_backpropagates_and_equals_the_per_op_tape() -> None:
    """T = 100,000, B = 1, H = 4, float32: forward and backward of the scan (no recursion),
    gradients equal to the per-op tape's within float32 tolerance."""
    n = 100_000
    cell = ElmanCell(1, H, seed=52, dtype=np.float32)
    g = rng(53)
    xs = g.standard_normal((n, 1, 1)).astype(np.float32)
    G = tg.Tensor(g.standard_normal((n, 1, H)).astype(np.float32))
    res = {}
    for compile in (True, False):
        x = tg.Tensor(xs, requires_grad=True)
        h0 = tg.Tensor(np.zeros((1, H), np.float32), requires_grad=True)
        ys, h = nn.unroll(cell, x, h0, compile=compile)
        assert (ys._node.op is Scan) == compile
        (ys * G).sum().backward()
        res[compile] = [ys.data, h.data, x.grad, h0.grad] + [p.grad for p in cell.parameters()]
        cell.zero_grad()
    for a, b in zip(res[True], res[False]):
        assert a.dtype == np.float32 and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


# ============================================================================= B9. gradcheck
@pytest.mark.parametrize("kind", ["elman", "coupled", "gru"])
def test_gradcheck_through_a_scan(kind: str, scans: dict[str, int]) -> None:
    """tg.testing.gradcheck of xs and the initial state through a compiled unroll (float64)."""
    xs, h0 = problem(54, n=5)
    if kind == "elman":
        cell = ElmanCell(seed=55)
        fn = lambda x, h: nn.unroll(cell, x, h)  # noqa: E731
        inputs = [xs, h0]
    elif kind == "coupled":
        cell = CoupledCell(seed=56)
        fn = lambda x, h, c: nn.unroll(cell, x, (h, c))  # noqa: E731
        inputs = [xs, h0, rng(57).normal(0, 0.5, (B, H))]
    else:
        tg.manual_seed(58)
        gru = nn.GRU(I, H, dtype=F64)
        fn = lambda x, h: gru(x, h)  # noqa: E731
        inputs = [xs, h0[None]]
    assert gradcheck(fn, inputs)
    assert scans["backward"] > 0 and scans["forward"] > 0


# ============================================================================= B10. no_grad
def test_a_scan_under_no_grad_gives_the_same_outputs_and_records_nothing(
        scans: dict[str, int]) -> None:
    """Under tg.no_grad() the unroll still runs as a scan, with the outputs of the recorded
    scan and of the per-op tape, and records nothing."""
    xs, h0 = problem(59)
    cell = CoupledCell(seed=60)
    c0 = rng(61).normal(0, 0.5, (B, H))

    def run(compile: bool = True) -> Any:
        return nn.unroll(cell, tg.Tensor(xs, requires_grad=True),
                         (tg.Tensor(h0, requires_grad=True), tg.Tensor(c0)), compile=compile)

    recorded = run()
    assert n_scans(recorded) == 1
    per_op = run(compile=False)
    scans["forward"] = 0
    with tg.no_grad():
        quiet = run()
    assert scans["forward"] == 1
    for a, b, c in zip(flat(quiet), flat(recorded), flat(per_op)):
        assert not a.requires_grad and a._node is None and a.is_leaf
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_allclose(a.data, c.data, **TOL)


# ============================================================================= B11. backward twice
def test_backward_twice_through_a_scan() -> None:
    """Without retain_graph the second backward raises GraphError naming retain_graph=True and
    changes nothing; with retain_graph=True twice the gradients double (to rounding: the
    engine adds each contribution to .grad as it comes, as the per-op tape does)."""
    xs, h0 = problem(62)
    cell = ElmanCell(seed=63)
    G = tg.Tensor(rng(64).standard_normal((T, B, H)))
    x, h = tg.Tensor(xs, requires_grad=True), tg.Tensor(h0, requires_grad=True)
    ys, _ = nn.unroll(cell, x, h)
    assert ys._node.op is Scan
    loss = (ys * G).sum()
    loss.backward()
    once = [x.grad.copy(), h.grad.copy()] + [p.grad.copy() for p in cell.parameters()]
    with pytest.raises(RuntimeError, match=r"retain_graph=True") as ei:
        loss.backward()
    assert isinstance(ei.value, GraphError)
    after = [x.grad, h.grad] + [p.grad for p in cell.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(once, after))

    cell.zero_grad()
    x, h = tg.Tensor(xs, requires_grad=True), tg.Tensor(h0, requires_grad=True)
    ys, _ = nn.unroll(cell, x, h)
    assert ys._node.op is Scan
    loss = (ys * G).sum()
    loss.backward(retain_graph=True)
    first = [x.grad.copy(), h.grad.copy()] + [p.grad.copy() for p in cell.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(first, once))
    loss.backward(retain_graph=True)
    second = [x.grad, h.grad] + [p.grad for p in cell.parameters()]
    for a, b in zip(second, first):
        np.testing.assert_allclose(a, 2 * b, rtol=1e-13, atol=1e-15)


# ============================================================================= B12. closures
class AddsContext(ElmanCell):
    """Adds a context tensor computed outside the unroll (an encoder output) at every step."""

    def __init__(self, context: tg.Tensor, **kw: Any) -> None:
        super().__init__(**kw)
        self.context = context

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, Any]:
        h = (self.pre(x_t, h) + self.context).tanh()
        return h, h


def test_a_non_leaf_tensor_the_cell_closes_over_gets_its_gradient_through_the_scan() -> None:
    """context = tanh(e Wc), made from parameters before the unroll and also used after it:
    the gradients of e and Wc through the scan equal the per-op tape's and numpy's."""
    xs, h0 = problem(65)
    g = rng(66)
    e_np, Wc_np = g.standard_normal((B, 5)), g.uniform(-0.5, 0.5, (5, H))
    res = {}
    for compile in (True, False):
        e, Wc = tg.Tensor(e_np, requires_grad=True), tg.Tensor(Wc_np, requires_grad=True)
        context = (e @ Wc).tanh()
        cell = AddsContext(context, seed=67)

        def fn(x: tg.Tensor, s: Any) -> Any:
            ys, h = nn.unroll(cell, x, s, compile=compile)
            return ys, h, context  # the context is used after the unroll too

        res[compile], count = outcome(fn, cell, xs, h0)
        assert count == int(compile)
        res[compile].update(d_e=e.grad, d_Wc=Wc.grad)
    assert_same(res[True], res[False])
    ctx = np.tanh(e_np @ Wc_np)
    ref = elman_numpy(AddsContext(tg.Tensor(ctx), seed=67), xs, h0,
                      extra=np.broadcast_to(ctx, (T, B, H)))
    d_ctx = (ref.pop("d_extra").sum(axis=0) + upstream(2, (B, H), F64, 0)) * (1.0 - ctx ** 2)
    ref.update(out2=ctx, d_e=d_ctx @ Wc_np.T, d_Wc=e_np.T @ d_ctx)
    assert_same(res[True], ref)


# ============================================================================= PyTorch parity
def test_the_torch_parity_lstm_fixture_runs_through_a_scan() -> None:
    """The seq_lstm_l1 fixture (recorded from PyTorch) through the default (compiled) nn.LSTM:
    a Scan record, and PyTorch's outputs and gradients to 1e-10."""
    with np.load(FIXTURES / "seq_lstm_l1.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    layer = nn.LSTM(**meta["kwargs"], dtype=F64)
    layer.load_state_dict({k[len("param."):]: v for k, v in arrays.items()
                           if k.startswith("param.")})
    x, h0, c0 = (tg.Tensor(arrays[f"in.{n}"].copy(), requires_grad=True)
                 for n in ("x", "h0", "c0"))
    out, (h_n, c_n) = layer(x, (h0, c0))
    assert n_scans(out, h_n, c_n) == 1
    outs = {"output": out, "h_n": h_n, "c_n": c_n}
    loss = sum((outs[n] * tg.Tensor(arrays[f"upstream.{n}"])).sum() for n in outs)
    loss.backward()
    tol = dict(rtol=1e-10, atol=1e-10)
    for n, t in outs.items():
        np.testing.assert_allclose(t.data, arrays[f"out.{n}"], err_msg=n, **tol)
    for n, t in (("x", x), ("h0", h0), ("c0", c0)):
        np.testing.assert_allclose(t.grad, arrays[f"grad.in.{n}"], err_msg=n, **tol)
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, arrays[f"grad.param.{n}"], err_msg=n, **tol)


# ============================================================================= hoisting
class TransposedWeights(ElmanCell):
    """The weights used as `W.T` inside the step, as a first draft writes x W^T: the transpose
    of a tensor from outside the step does not change from step to step."""

    def forward(self, x_t: tg.Tensor, h: Any) -> tuple[tg.Tensor, tg.Tensor]:
        a, b = (x_t @ self.W.T.T + h @ self.U.T + self.b).chunk(2, axis=-1)
        h = tg.concat([a.tanh(), b.sigmoid()], axis=-1)
        return h, h


@pytest.mark.parametrize("every", [None, 1, 3])
def test_time_invariant_operations_run_once_and_keep_exact_gradients(
        every: Any, monkeypatch: pytest.MonkeyPatch, scans: dict[str, int]) -> None:
    """An operation on tensors from outside the step only (W.T) runs once per scan, not once
    per step, in the forward and in the backward; outputs and gradients equal the per-op
    tape's, and checkpoint_every gives the unsegmented scan's gradients to the last bit."""
    from tinygrad_rnn import ops
    calls = {"forward": 0, "backward": 0}
    for name, key in (("forward", "forward"), ("backward", "backward"),
                      ("backward_product", "backward")):
        original = getattr(ops.Transpose, name)

        def counted(*args: Any, _f: Callable[..., Any] = original, _n: str = key,
                    **kw: Any) -> Any:
            calls[_n] += 1
            return _f(*args, **kw)

        monkeypatch.setattr(ops.Transpose, name, staticmethod(counted))
    res, counts = {}, {}
    for n in (12, 24):  # how often transpose runs must not grow with the number of steps
        xs, h0 = problem(71, n=n)
        for compile, k in ((False, None), (True, None), (True, every)):
            cell = TransposedWeights(seed=72)
            for name in calls:
                calls[name] = 0
            scans["forward"] = 0
            res[n, compile, k], _ = outcome(
                lambda x, s: nn.unroll(cell, x, s, checkpoint_every=k, compile=compile),
                cell, xs, h0)
            counts[n, compile, k] = dict(calls)
            if compile:
                # checkpointed: each segment's scan runs again in the backward
                assert scans["forward"] == (1 if k is None else 2 * math.ceil(n / k))
    for compile, k in ((False, None), (True, None), (True, every)):
        a, b = counts[12, compile, k], counts[24, compile, k]
        if not compile:  # three transposes (W.T.T, U.T) at every step, both ways
            assert a == {"forward": 36, "backward": 36} and b == {"forward": 72, "backward": 72}
        elif k is None:  # once per scan (and in the traced steps), whatever T
            assert a == b and a["backward"] == 3, (a, b)
        else:  # once per segment, and once more in its recomputation
            more = math.ceil(24 / k) - math.ceil(12 / k)
            assert b["forward"] - a["forward"] == 6 * more, (a, b)
            assert b["backward"] - a["backward"] == 3 * more, (a, b)
    for n in (12, 24):
        assert_same(res[n, True, None], res[n, False, None])
        assert_same(res[n, True, every], res[n, True, None], exact=True)



def test_source_prints_the_generated_loops_of_a_cell_or_of_a_layers_cell() -> None:
    """tg.scan.source(cell, xs): the forward and backward the scan runs, as Python; for a layer
    (nn.LSTM, nn.Recurrent) the code of its cell, not of the layer called as if it were one."""
    tg.manual_seed(90)
    lstm = nn.LSTM(3, 4, dtype=F64)
    xs = rng(91).standard_normal((5, 2, 3))
    text = scan_mod.source(lstm._cells[0], xs)
    assert text.startswith("def forward(") and "\ndef backward(" in text
    assert "for t in range(T):" in text and "for t in range(T - 1, -1, -1):" in text
    assert "np.matmul" in text and "np.tanh" in text
    assert scan_mod.source(lstm, xs) == text
    assert scan_mod.source(nn.Recurrent(lstm._cells[0]), xs) == text
