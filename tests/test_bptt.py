"""Truncated BPTT (`tg.bptt`) and memory-bounded BPTT (`tg.checkpoint`), against plain numpy.

The references below never touch the library: a tanh RNN h_t = tanh(W x_t + U h_{t-1} + b) with
a linear readout y_t = V h_t and an MSE loss, its forward and BPTT written by hand in float64, and
the TBPTT(k1, k2) schedule of API section 4 written out step by step with plain SGD. The same
schedule is run through `train_truncated` with three kinds of model that follow the convention
`model(x_chunk, state) -> (outputs, state)`: a user Module, `nn.Recurrent` of a custom cell, and
the built-in `nn.RNN` with an `nn.Linear` readout. Parameters after training must agree to 1e-10.
"""

from __future__ import annotations

import gc
import math
import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import nn, optim
from tinygrad_rnn.engine import Node

F64 = np.float64
TOL = dict(rtol=1e-10, atol=1e-10)
I, H, O, B = 3, 5, 2, 4  # input, hidden, readout sizes and batch of the exactness tests


# ============================================================================ numpy reference
# Parameters are a dict of arrays: W (H, I), U (H, H), V (O, H) and one or more biases (H,)
# whose names are listed in `biases` (all of them are added; each gets the same gradient, which is
# how nn.RNN's bias_ih and bias_hh behave).
def ref_window(P: dict, biases: tuple[str, ...], xs: np.ndarray, ys: np.ndarray,
               h_b: np.ndarray, b: int, s: int, e: int) -> tuple[float, dict, dict]:
    """Run steps [b, e) from the state h_b at step b; MSE (mean over all elements) of the
    outputs of steps [s, e). Returns (loss, gradients, {t: state after t steps, b <= t <= e})."""
    W, U, V = P["W"], P["U"], P["V"]
    bias = sum(P[n] for n in biases)
    hs = {b: h_b}
    for t in range(b, e):
        hs[t + 1] = np.tanh(xs[t] @ W.T + hs[t] @ U.T + bias)
    n = (e - s) * ys[0].size
    diffs = {t: hs[t + 1] @ V.T - ys[t] for t in range(s, e)}
    loss = sum(float(np.sum(d * d)) for d in diffs.values()) / n
    g = {k: np.zeros_like(v) for k, v in P.items()}
    dh = np.zeros_like(h_b)  # dL/dh_{t+1} arriving from later steps
    for t in range(e - 1, b - 1, -1):
        if t >= s:
            dy = 2.0 * diffs[t] / n  # d mean((y - target)^2)
            g["V"] += dy.T @ hs[t + 1]
            dh = dh + dy @ V
        da = dh * (1.0 - hs[t + 1] ** 2)  # d tanh(a) = 1 - tanh(a)^2
        g["W"] += da.T @ xs[t]
        g["U"] += da.T @ hs[t]
        for name in biases:
            g[name] += da.sum(axis=0)
        dh = da @ U
    return loss, g, hs


def sgd(P: dict, g: dict, lr: float, max_norm: float | None = None) -> None:
    """Plain SGD in place, after PyTorch's clip_grad_norm_ (coef = max_norm / (norm + 1e-6))."""
    if max_norm is not None:
        total = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            g = {k: v * coef for k, v in g.items()}
    for k in P:
        P[k] -= lr * g[k]


def ref_full_bptt(P, biases, xs, ys, h0, lr):
    """One update on the loss of all T steps: full BPTT."""
    P = {k: v.copy() for k, v in P.items()}
    T = len(xs)
    loss, g, hs = ref_window(P, biases, xs, ys, h0, 0, 0, T)
    sgd(P, g, lr)
    return P, loss, hs[T]


def ref_detach_every(P, biases, xs, ys, h0, k, lr):
    """The usual loop: windows of k steps, the state detached (just carried as a value) between."""
    P = {k_: v.copy() for k_, v in P.items()}
    T, h, losses = len(xs), h0, []
    for s in range(0, T, k):
        e = min(s + k, T)
        loss, g, hs = ref_window(P, biases, xs, ys, h, s, s, e)
        sgd(P, g, lr)
        losses.append(loss)
        h = hs[e]
    return P, float(np.mean(losses)), h


def ref_tbptt(P, biases, xs, ys, h0, k1, k2, lr, max_norm=None):
    """TBPTT(k1, k2) as API section 4 states it: update j ends at (j+1) k1 (the last one may be
    cut short at T), and its window starts at b = max(0, (j+1) k1 - k2); it re-runs [b, e),
    e = min((j+1) k1, T), from the state at b that the previous update's run computed, with the
    current parameters; its loss is that of the steps new in this update, [j k1, e), only.
    (So k2 = k1 is the usual "detach every k1 steps" loop for every T, short last window
    included.)"""
    P = {k: v.copy() for k, v in P.items()}
    T, losses = len(xs), []
    states = {0: h0}  # states of the previous run, by step index
    j = 0
    while j * k1 < T:
        s = j * k1
        e = min(s + k1, T)
        b = max(0, s + k1 - k2)
        loss, g, hs = ref_window(P, biases, xs, ys, states[b], b, s, e)
        sgd(P, g, lr, max_norm)
        losses.append(loss)
        states = hs
        j += 1
    return P, float(np.mean(losses)), states[T]


def make_problem(T: int, seed: int = 0, scale: float = 0.6):
    r = np.random.default_rng(seed)
    P = {"W": r.normal(0, scale, (H, I)), "U": r.normal(0, scale, (H, H)),
         "b": r.normal(0, 0.3, (H,)), "V": r.normal(0, scale, (O, H))}
    xs = r.normal(size=(T, B, I))
    ys = r.normal(size=(T, B, O))
    h0 = r.normal(0, 0.5, (B, H))
    return P, xs, ys, h0


# ============================================================================ library models
class TanhRNN(nn.Module):
    """A user Module with the convention forward(x_chunk, state) -> (outputs, state)."""

    def __init__(self, P: dict) -> None:
        super().__init__()
        self.W, self.U = nn.Parameter(P["W"].copy()), nn.Parameter(P["U"].copy())
        self.b, self.V = nn.Parameter(P["b"].copy()), nn.Parameter(P["V"].copy())

    def forward(self, x: Any, h: Any) -> tuple[tg.Tensor, tg.Tensor]:
        hs = []
        for x_t in tg.unbind(tg.Tensor(x) if not isinstance(x, tg.Tensor) else x, 0):
            h = (x_t @ self.W.T + h @ self.U.T + self.b).tanh()
            hs.append(h)
        return tg.stack(hs, 0) @ self.V.T, h

    def as_ref(self) -> dict:
        return {"W": self.W.data, "U": self.U.data, "b": self.b.data, "V": self.V.data}


class TanhCell(nn.Module):
    """A custom cell, cell(x_t, h) -> (y_t, h)."""

    def __init__(self, W: np.ndarray, U: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.W, self.U, self.b = (nn.Parameter(a.copy()) for a in (W, U, b))

    def forward(self, x_t: tg.Tensor, h: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        h = (x_t @ self.W.T + h @ self.U.T + self.b).tanh()
        return h, h


class CellModel(nn.Module):
    """nn.Recurrent of the custom cell plus a readout."""

    def __init__(self, P: dict, checkpoint_every: int | None = None) -> None:
        super().__init__()
        self.rnn = nn.Recurrent(TanhCell(P["W"], P["U"], P["b"]),
                                checkpoint_every=checkpoint_every)
        self.V = nn.Parameter(P["V"].copy())

    def forward(self, x: Any, h: Any) -> tuple[tg.Tensor, Any]:
        hs, h = self.rnn(x, h)
        return hs @ self.V.T, h

    def as_ref(self) -> dict:
        c = self.rnn.cell
        return {"W": c.W.data, "U": c.U.data, "b": c.b.data, "V": self.V.data}


class BuiltinModel(nn.Module):
    """The built-in nn.RNN (PyTorch layout) plus an nn.Linear readout; state (1, B, H)."""

    def __init__(self, P: dict, checkpoint_every: int | None = None) -> None:
        super().__init__()
        self.rnn = nn.RNN(I, H, dtype=F64, checkpoint_every=checkpoint_every)
        self.out = nn.Linear(H, O, bias=False, dtype=F64)
        half = P["b"] / 2  # two biases that add up to the reference's b
        self.load_state_dict({"rnn.weight_ih_l0": P["W"], "rnn.weight_hh_l0": P["U"],
                              "rnn.bias_ih_l0": half, "rnn.bias_hh_l0": P["b"] - half,
                              "out.weight": P["V"]})

    def forward(self, x: Any, h: Any) -> tuple[tg.Tensor, Any]:
        hs, h_n = self.rnn(x, h)
        return self.out(hs), h_n

    def as_ref(self) -> dict:
        r = self.rnn
        return {"W": r.weight_ih_l0.data, "U": r.weight_hh_l0.data, "V": self.out.weight.data,
                "b_ih": r.bias_ih_l0.data, "b_hh": r.bias_hh_l0.data}


MODELS = {"module": TanhRNN, "recurrent": CellModel, "builtin": BuiltinModel}


def ref_setup(kind: str, P: dict) -> tuple[dict, tuple[str, ...]]:
    """The reference's parameters and bias names for model `kind` (nn.RNN has two biases)."""
    if kind != "builtin":
        return dict(P), ("b",)
    half = P["b"] / 2
    Q = {k: v for k, v in P.items() if k != "b"}
    Q.update(b_ih=half, b_hh=P["b"] - half)
    return Q, ("b_ih", "b_hh")


def lib_state(kind: str, h0: np.ndarray) -> tg.Tensor:
    return tg.Tensor(h0[None] if kind == "builtin" else h0)


def state_array(kind: str, h: tg.Tensor) -> np.ndarray:
    return h.data[0] if kind == "builtin" else h.data


def mse(out: tg.Tensor, y: Any) -> tg.Tensor:
    return F.mse_loss(out, y)


def lib_train(kind: str, P: dict, xs, ys, h0, k1, k2=None, lr=0.1, max_grad_norm=None,
              **model_kw):
    model = MODELS[kind](P, **model_kw)
    opt = optim.SGD(model.parameters(), lr=lr)
    loss, h = tg.bptt.train_truncated(model, xs, ys, mse, opt, k1, k2,
                                      state=lib_state(kind, h0), max_grad_norm=max_grad_norm)
    return model, loss, h


def assert_matches(kind, model, loss, h, ref_P, ref_loss, ref_h) -> None:
    got = model.as_ref()
    assert set(got) == set(ref_P)
    for name in ref_P:
        np.testing.assert_allclose(got[name], ref_P[name], **TOL, err_msg=name)
    assert loss == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    assert h.is_leaf and not h.requires_grad  # the returned state is detached
    np.testing.assert_allclose(state_array(kind, h), ref_h, **TOL)


# ============================================================================ chunks
def test_chunks_yields_aligned_windows_the_last_shorter():
    xs = np.arange(7 * 2 * 3, dtype=F64).reshape(7, 2, 3)
    ys = -np.arange(7 * 2, dtype=F64).reshape(7, 2, 1)
    got = list(tg.bptt.chunks(xs, ys, 3))
    assert [x.shape[0] for x, _ in got] == [3, 3, 1]
    for (x, y), lo in zip(got, (0, 3, 6)):
        np.testing.assert_array_equal(np.asarray(x), xs[lo:lo + 3])
        np.testing.assert_array_equal(np.asarray(y), ys[lo:lo + 3])
    # batch_first: the windows run along axis 1
    bf = list(tg.bptt.chunks(xs.transpose(1, 0, 2), ys.transpose(1, 0, 2), 3, batch_first=True))
    for (x, y), (xt, yt) in zip(bf, got):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(xt).transpose(1, 0, 2))
        np.testing.assert_array_equal(np.asarray(y), np.asarray(yt).transpose(1, 0, 2))
    # ys may be None; Tensors are accepted; k >= T gives one window
    assert [y for _, y in tg.bptt.chunks(xs, None, 4)] == [None, None]
    (x, y), = tg.bptt.chunks(tg.Tensor(xs), tg.Tensor(ys), 10)
    assert isinstance(x, tg.Tensor) and x.shape == (7, 2, 3)


@pytest.mark.parametrize("k", [0, -2, 2.5])
def test_chunks_rejects_a_non_positive_or_fractional_k(k):
    with pytest.raises(ValueError, match="k"):
        list(tg.bptt.chunks(np.zeros((4, 1, 1)), None, k))


def test_a_hand_written_loop_over_chunks_matches_detach_every_k():
    T, k, lr = 10, 3, 0.1
    P, xs, ys, h0 = make_problem(T, seed=1)
    model = TanhRNN(P)
    opt = optim.SGD(model.parameters(), lr=lr)
    h = tg.Tensor(h0)
    for x_c, y_c in tg.bptt.chunks(xs, ys, k):
        out, h = model(x_c, h)
        loss = mse(out, y_c)
        opt.zero_grad()
        loss.backward()
        opt.step()
        h = tg.detach(h)
    ref_P, _, ref_h = ref_detach_every(P, ("b",), xs, ys, h0, k, lr)
    for name, v in model.as_ref().items():
        np.testing.assert_allclose(v, ref_P[name], **TOL)
    np.testing.assert_allclose(h.data, ref_h, **TOL)


# ============================================================================ exactness
@pytest.mark.parametrize("kind", list(MODELS))
def test_k1_equal_k2_equal_T_is_full_bptt(kind):
    T, lr = 9, 0.2
    P, xs, ys, h0 = make_problem(T, seed=2)
    Q, biases = ref_setup(kind, P)
    model, loss, h = lib_train(kind, P, xs, ys, h0, k1=T, k2=T, lr=lr)
    assert_matches(kind, model, loss, h, *ref_full_bptt(Q, biases, xs, ys, h0, lr))
    # and the library's own full BPTT (one backward over the whole sequence) agrees too
    full = MODELS[kind](P)
    opt = optim.SGD(full.parameters(), lr=lr)
    out, _ = full(xs, lib_state(kind, h0))
    mse(out, ys).backward()
    opt.step()
    for name, v in full.as_ref().items():
        np.testing.assert_array_equal(v, model.as_ref()[name])


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("T,k", [(12, 4), (11, 4), (7, 1)])
def test_k1_equal_k2_is_detach_every_k_steps(kind, T, k):
    P, xs, ys, h0 = make_problem(T, seed=3)
    Q, biases = ref_setup(kind, P)
    model, loss, h = lib_train(kind, P, xs, ys, h0, k1=k, k2=None, lr=0.1)
    assert_matches(kind, model, loss, h, *ref_detach_every(Q, biases, xs, ys, h0, k, 0.1))
    # k2 = k1 given explicitly is the same thing
    model2, loss2, h2 = lib_train(kind, P, xs, ys, h0, k1=k, k2=k, lr=0.1)
    assert loss2 == loss and np.array_equal(h2.data, h.data)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("T,k1,k2", [
    (11, 3, 5),   # T % k1 != 0: the last update's loss covers only [9, 11), window [7, 11)
    (12, 2, 6),   # k2 a multiple of k1
    (10, 4, 7),   # k2 not a multiple of k1; last update: loss [8, 10), window [5, 10)
    (8, 3, 20),   # k2 > T: every window starts at step 0
])
def test_k2_greater_than_k1_follows_the_documented_schedule(kind, T, k1, k2):
    P, xs, ys, h0 = make_problem(T, seed=4)
    Q, biases = ref_setup(kind, P)
    model, loss, h = lib_train(kind, P, xs, ys, h0, k1=k1, k2=k2, lr=0.15)
    assert_matches(kind, model, loss, h, *ref_tbptt(Q, biases, xs, ys, h0, k1, k2, 0.15))


@given(T=st.integers(1, 12), k1=st.integers(1, 14), extra=st.integers(0, 14),
       seed=st.integers(0, 2**16))
def test_any_schedule_matches_the_reference(T, k1, extra, seed):
    k2 = k1 + extra
    P, xs, ys, h0 = make_problem(T, seed=seed)
    model, loss, h = lib_train("module", P, xs, ys, h0, k1=k1, k2=k2, lr=0.1)
    assert_matches("module", model, loss, h, *ref_tbptt(P, ("b",), xs, ys, h0, k1, k2, 0.1))


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("k1,k2", [(3, 3), (3, 5)])
def test_max_grad_norm_is_clip_grad_norm_inside_each_update(kind, k1, k2):
    T, lr, max_norm = 12, 0.3, 0.05  # small enough that every update is clipped
    P, xs, ys, h0 = make_problem(T, seed=5)
    Q, biases = ref_setup(kind, P)
    model, loss, h = lib_train(kind, P, xs, ys, h0, k1, k2, lr=lr, max_grad_norm=max_norm)
    ref = ref_tbptt(Q, biases, xs, ys, h0, k1, k2, lr, max_norm=max_norm)
    assert_matches(kind, model, loss, h, *ref)
    # the clipping really happened: the unclipped run ends elsewhere
    free = ref_tbptt(Q, biases, xs, ys, h0, k1, k2, lr)
    assert not np.allclose(free[0]["U"], ref[0]["U"], rtol=1e-6, atol=1e-6)
    if k1 == k2:  # ... and equals clip_grad_norm_ applied by hand in a chunks loop
        hand = MODELS[kind](P)
        opt = optim.SGD(hand.parameters(), lr=lr)
        st_ = lib_state(kind, h0)
        for x_c, y_c in tg.bptt.chunks(xs, ys, k1):
            out, st_ = hand(x_c, st_)
            l_ = mse(out, y_c)
            opt.zero_grad()
            l_.backward()
            nn.utils.clip_grad_norm_(hand.parameters(), max_norm)
            opt.step()
            st_ = tg.detach(st_)
        for name, v in hand.as_ref().items():
            np.testing.assert_array_equal(v, model.as_ref()[name])


def test_batch_first_is_the_same_schedule():
    T, k1, k2 = 10, 2, 5
    P, xs, ys, h0 = make_problem(T, seed=6)

    class BatchFirst(TanhRNN):
        def forward(self, x, h):
            out, h = super().forward(tg.swapaxes(x, 0, 1), h)
            return tg.swapaxes(out, 0, 1), h

    model = BatchFirst(P)
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss, h = tg.bptt.train_truncated(model, tg.Tensor(xs.transpose(1, 0, 2)),
                                      ys.transpose(1, 0, 2), mse, opt, k1, k2,
                                      state=tg.Tensor(h0), batch_first=True)
    assert_matches("module", model, loss, h, *ref_tbptt(P, ("b",), xs, ys, h0, k1, k2, 0.1))


def test_the_state_is_detached_at_every_window_boundary():
    """Spy on the model: the first call of every update gets a leaf state with no history, and
    the loss graph of an update reaches back only to records made during that update."""
    T, k1, k2 = 13, 3, 5
    P, xs, ys, h0 = make_problem(T, seed=7)
    inner = TanhRNN(P)
    first_states, window_starts, losses = [], [], []
    new_update = [True]

    def model(x, h):
        if new_update[0]:
            first_states.append(h)
            window_starts.append(tg.engine.current_seq())
            new_update[0] = False
        return inner(x, h)

    def loss_fn(out, y):
        loss = mse(out, y)
        losses.append(loss)
        # every record below this loss was made after the window's first model call
        node_seqs = [n.seq for n in tg.engine.walk(loss)]
        assert min(node_seqs) > window_starts[-1]
        return loss

    class Opt(optim.SGD):
        def step(self, closure=None):
            new_update[0] = True
            return super().step(closure)

    tg.bptt.train_truncated(model, xs, ys, loss_fn, Opt(inner.parameters(), lr=0.1), k1, k2,
                            state=tg.Tensor(h0))
    assert len(first_states) == math.ceil(T / k1) == len(losses)
    assert all(s.is_leaf and not s.requires_grad for s in first_states)
    assert all(loss._node is None or loss._node.op is None for loss in losses)  # graphs freed


def _live_nodes() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Node)


def test_the_tape_and_memory_stay_bounded_over_1000_windows():
    """1,000 updates of train_truncated: the live records (Node objects) and the traced memory
    after update 1000 are those after update 10, give or take the list of losses."""
    k, n_windows, Hb = 2, 1000, 32
    r = np.random.default_rng(8)
    P = {"W": r.normal(0, 0.3, (Hb, I)), "U": r.normal(0, 0.1, (Hb, Hb)),
         "b": np.zeros(Hb), "V": r.normal(0, 0.3, (O, Hb))}
    xs = r.normal(size=(k * n_windows, B, I))
    ys = r.normal(size=(k * n_windows, B, O))
    model = TanhRNN(P)
    seen: dict[int, tuple[int, int]] = {}

    class Probe(optim.SGD):
        count = 0

        def step(self, closure=None):
            out = super().step(closure)
            self.count += 1
            if self.count in (10, n_windows):
                seen[self.count] = (_live_nodes(), tracemalloc.get_traced_memory()[0])
            return out

    opt = Probe(model.parameters(), lr=0.01)
    tracemalloc.start()
    try:
        tg.bptt.train_truncated(model, xs, ys, mse, opt, k, state=tg.Tensor(np.zeros((B, Hb))))
    finally:
        tracemalloc.stop()
    (n10, m10), (n1000, m1000) = seen[10], seen[n_windows]
    # one window records ~8 nodes per step; a tape kept across windows would hold ~16,000
    assert n1000 <= n10 + 2, (n10, n1000)
    # a kept tape would also keep ~1000 * 2 * several (4, 32) float64 arrays: megabytes.
    # What may grow is the list of 1000 update losses (~32 kB) train_truncated returns the mean of.
    assert m1000 - m10 < 150_000, (m10, m1000)

    # control: the probe does see a tape that is kept alive
    base = _live_nodes()
    h, kept = tg.Tensor(np.zeros((B, Hb))), []
    for x_c, _ in tg.bptt.chunks(xs[:100], None, k):
        out, h = model(x_c, h)
        kept.append(out)
    assert _live_nodes() - base >= 50 * k * 4
    del kept, h, out


# ============================================================================ checkpoint
class NestedCell(nn.Module):
    """A cell with a nested-tuple state (h, (c, m))."""

    def __init__(self, seed: int = 0, dtype: Any = F64) -> None:
        super().__init__()
        r = np.random.default_rng(seed)
        self.Wx = nn.Parameter(r.normal(0, 0.5, (I, H)).astype(dtype))
        self.Wh = nn.Parameter(r.normal(0, 0.5, (H, H)).astype(dtype))
        self.Wc = nn.Parameter(r.normal(0, 0.5, (H, H)).astype(dtype))

    def forward(self, x_t, state):
        h, (c, m) = state
        h2 = (x_t @ self.Wx + h @ self.Wh + (c * m) @ self.Wc).tanh()
        c2 = (c + h2).sigmoid()
        m2 = 0.9 * m + 0.1 * h2 * c2
        return h2 * m2, (h2, (c2, m2))


def _nested_state(seed: int, dtype=F64):
    r = np.random.default_rng(seed)
    return tuple(r.normal(0, 0.5, (B, H)).astype(dtype) for _ in range(3))


@pytest.mark.parametrize("k1,k2", [(4, 4), (3, 7)])
def test_checkpoint_inside_train_truncated_is_bit_identical(k1, k2):
    T = 12  # segments of 3 steps against windows of 4 or 7 steps
    P, xs, ys, h0 = make_problem(T, seed=9)
    runs = {}
    for every in (None, 3):
        for kind in ("recurrent", "builtin"):
            runs[kind, every] = lib_train(kind, P, xs, ys, h0, k1, k2, lr=0.1,
                                          checkpoint_every=every)

    # and a user Module that wraps its whole chunk in tg.checkpoint
    class Wrapped(TanhRNN):
        def forward(self, x, h):
            return tg.checkpoint(super().forward, tg.Tensor(x), h)

    for every, cls in ((None, TanhRNN), ("ckpt", Wrapped)):
        model = cls(P)
        opt = optim.SGD(model.parameters(), lr=0.1)
        runs["module", every] = (model, *tg.bptt.train_truncated(
            model, xs, ys, mse, opt, k1, k2, state=tg.Tensor(h0)))
    for kind, every in [("recurrent", 3), ("builtin", 3), ("module", "ckpt")]:
        (m0, l0, h_0), (m1, l1, h_1) = runs[kind, None], runs[kind, every]
        assert l1 == l0
        assert np.array_equal(h_1.data, h_0.data)
        for (name, a), b in zip(m0.as_ref().items(), m1.as_ref().values()):
            assert np.array_equal(a, b), (kind, name)
    Q, biases = ref_setup("builtin", P)
    assert_matches("builtin", *runs["builtin", 3], *ref_tbptt(Q, biases, xs, ys, h0, k1, k2, 0.1))


def test_checkpointed_unroll_with_a_nested_tuple_state_in_train_truncated():
    T, k1, k2 = 14, 3, 6
    r = np.random.default_rng(10)
    xs, ys = r.normal(size=(T, B, I)), r.normal(size=(T, B, H))
    init = _nested_state(11)
    results = []
    for every in (None, 4):
        model = nn.Recurrent(NestedCell(seed=12), checkpoint_every=every)
        opt = optim.SGD(model.parameters(), lr=0.2)
        state = (tg.Tensor(init[0]), (tg.Tensor(init[1]), tg.Tensor(init[2])))
        loss, final = tg.bptt.train_truncated(model, xs, ys, mse, opt, k1, k2, state=state)
        results.append((loss, final, [p.data.copy() for p in model.parameters()]))
    (l0, f0, p0), (l1, f1, p1) = results
    assert l0 == l1
    assert isinstance(f1, tuple) and isinstance(f1[1], tuple)  # structure kept
    for a, b in zip((f0[0], f0[1][0], f0[1][1]), (f1[0], f1[1][0], f1[1][1])):
        assert b.is_leaf and not b.requires_grad and np.array_equal(a.data, b.data)
    assert all(np.array_equal(a, b) for a, b in zip(p0, p1))


def _nested_grads(use_checkpoint: bool):
    """Gradients of a loss through one cell step whose nested state has history (non-leaf)."""
    cell = NestedCell(seed=13)
    r = np.random.default_rng(14)
    x = tg.Tensor(r.normal(size=(B, I)), requires_grad=True)
    a = nn.Parameter(r.normal(size=(B, H)))
    state = ((a * 2.0).tanh(), (a.sigmoid(), a * a))  # recorded: computed before the checkpoint
    fn = cell.forward
    y, (h, (c, m)) = tg.checkpoint(fn, x, state) if use_checkpoint else fn(x, state)
    R = [r.normal(size=(B, H)) for _ in range(4)]
    sum((t * tg.Tensor(q)).sum() for t, q in zip((y, h, c, m), R)).backward()
    return [x.grad, a.grad] + [p.grad for p in cell.parameters()]


def test_checkpoint_accepts_a_state_that_is_a_nested_tuple():
    """`tg.checkpoint(fn, x, (h, (c, m)))`: the Tensors inside a tuple argument are arguments
    too; their gradients must reach what computed them, bit-identically to the plain call."""
    plain = _nested_grads(False)
    ckpt = _nested_grads(True)
    assert all(g is not None for g in ckpt)
    assert all(np.array_equal(p, c) for p, c in zip(plain, ckpt))


def test_checkpoint_of_a_nested_tuple_state_passed_flat_is_bit_identical():
    """The same step with the state's tensors passed as separate arguments (the form
    checkpointed_unroll uses) and a nested tuple coming back out."""
    cell = NestedCell(seed=13)
    r = np.random.default_rng(15)
    x = tg.Tensor(r.normal(size=(B, I)), requires_grad=True)
    a = nn.Parameter(r.normal(size=(B, H)))

    def step(x_, h, c, m):
        return cell.forward(x_, (h, (c, m)))

    grads = []
    for use in (False, True):
        for t in (x, a, *cell.parameters()):
            t.grad = None
        h, c, m = (a * 2.0).tanh(), a.sigmoid(), a * a
        y, (h2, (c2, m2)) = tg.checkpoint(step, x, h, c, m) if use else step(x, h, c, m)
        (y.sum() + (h2 * c2 * m2).sum()).backward()
        grads.append([x.grad.copy(), a.grad.copy()] + [p.grad.copy() for p in cell.parameters()])
    assert all(np.array_equal(p, q) for p, q in zip(*grads))


def test_checkpoint_rejects_a_recorded_tensor_from_outside_that_is_not_an_argument():
    r = np.random.default_rng(16)
    w = nn.Parameter(r.normal(size=(3,)))
    outside = w * 2.0  # recorded, not a leaf
    x = tg.Tensor(r.normal(size=(2, 3)), requires_grad=True)
    y = tg.checkpoint(lambda x_: (x_ * outside).tanh(), x)
    with pytest.raises(RuntimeError, match="checkpoint") as info:
        y.sum().backward()
    assert "argument" in str(info.value)
    assert x.grad is None and w.grad is None  # nothing half-accumulated... at least on leaves
    # passed as an argument, it works and matches the plain computation
    y = tg.checkpoint(lambda x_, o: (x_ * o).tanh(), x, w * 2.0)
    y.sum().backward()
    gx, gw = x.grad.copy(), w.grad.copy()
    x.grad = w.grad = None
    (x * (w * 2.0)).tanh().sum().backward()
    assert np.array_equal(gx, x.grad) and np.array_equal(gw, w.grad)


def _peak_bytes(fn: Callable[[], Any]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


class LSTMLikeCell(nn.Module):
    """A custom LSTM cell (no `project`): everything it computes happens inside the loop."""

    def __init__(self, n_in: int, n_hid: int, seed: int = 0) -> None:
        super().__init__()
        r = np.random.default_rng(seed)
        self.Wx = nn.Parameter(r.normal(0, 0.3, (n_in, 4 * n_hid)).astype(np.float32))
        self.Wh = nn.Parameter(r.normal(0, 0.1, (n_hid, 4 * n_hid)).astype(np.float32))
        self.b = nn.Parameter(np.zeros(4 * n_hid, np.float32))

    def forward(self, x_t, state):
        h, c = state
        i, f, g, o = tg.chunk(x_t @ self.Wx + h @ self.Wh + self.b, 4, axis=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        return h, (h, c)


T_MEM, B_MEM, H_MEM, I_MEM = 400, 8, 64, 8
K_MEM = round(math.sqrt(T_MEM))


def _peaks(run: Callable[..., Any]) -> tuple[dict, dict]:
    """Peak traced bytes of forward + scalar loss + backward, without and with checkpointing,
    and the parameter gradients of both runs."""
    peaks, grads = {}, {}
    for every in (None, K_MEM):
        params = run(every, dry=True)
        peaks[every] = _peak_bytes(lambda: run(every))
        grads[every] = [p.grad for p in params]
    return peaks, grads


def test_checkpoint_every_sqrt_T_lowers_the_peak_memory_of_a_custom_cell_unroll():
    """nn.unroll of a custom cell, T = 400, B = 8, H = 64, float32, checkpoint_every = 20.
    Only xs, the outputs and their gradient are O(T) here; the rest must be O(T/k + k), in the
    backward as well as in the forward (plain: ~26 MB; checkpointed: ~3.5 MB is reachable)."""
    r = np.random.default_rng(17)
    xs = tg.Tensor(r.normal(size=(T_MEM, B_MEM, I_MEM)).astype(np.float32))
    R = tg.Tensor(r.normal(size=(T_MEM, B_MEM, H_MEM)).astype(np.float32))
    z = tg.Tensor(np.zeros((B_MEM, H_MEM), np.float32))
    cell = LSTMLikeCell(I_MEM, H_MEM)

    def run(every, dry=False):
        cell.zero_grad()
        if not dry:
            out, _ = nn.unroll(cell, xs, (z, z), checkpoint_every=every)
            (out * R).sum().backward()
        return list(cell.parameters())

    peaks, grads = _peaks(run)
    assert all(np.array_equal(a, b) for a, b in zip(grads[None], grads[K_MEM]))
    # Since records keep Ports instead of input tensors the plain run itself is leaner (~11 MB,
    # was ~26 MB), so the bound is relative to that; the checkpointed run is ~5 MB, of which
    # ~3.2 MB are the O(T) outputs, out * R and their gradients.
    assert peaks[K_MEM] < 0.5 * peaks[None], {k: f"{v / 1e6:.2f} MB" for k, v in peaks.items()}
    assert peaks[K_MEM] < 6.5e6, {k: f"{v / 1e6:.2f} MB" for k, v in peaks.items()}


def test_checkpoint_every_sqrt_T_lowers_the_peak_memory_of_the_builtin_lstm():
    """nn.LSTM(checkpoint_every=20), same sizes. The built-in layers hoist the input projection
    x W_ih^T of all T steps (T, B, 4H) out of the loop, and it and its gradient stay O(T)
    (~3.3 MB each here); the loose bound allows for them."""
    r = np.random.default_rng(18)
    xs = r.normal(size=(T_MEM, B_MEM, I_MEM)).astype(np.float32)
    R = tg.Tensor(r.normal(size=(T_MEM, B_MEM, H_MEM)).astype(np.float32))
    layers = {}
    for every in (None, K_MEM):
        tg.manual_seed(0)  # the same initial parameters
        layers[every] = nn.LSTM(I_MEM, H_MEM, checkpoint_every=every)

    def run(every, dry=False):
        lstm = layers[every]
        lstm.zero_grad()
        if not dry:
            out, _ = lstm(xs)
            (out * R).sum().backward()
        return list(lstm.parameters())

    peaks, grads = _peaks(run)
    assert all(np.array_equal(a, b) for a, b in zip(grads[None], grads[K_MEM]))
    assert peaks[K_MEM] < 0.7 * peaks[None], {k: f"{v / 1e6:.2f} MB" for k, v in peaks.items()}


# ============================================================================ errors that teach
def test_a_state_with_history_passed_to_train_truncated_says_to_detach_it():
    T = 6
    P, xs, ys, h0 = make_problem(T, seed=18)
    model = TanhRNN(P)
    opt = optim.SGD(model.parameters(), lr=0.1)
    _, h = model(xs[:2], tg.Tensor(h0))  # still carries the recorded history of that run
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"tg\.detach") as info:
        tg.bptt.train_truncated(model, xs, ys, mse, opt, 2, state=h)
    assert "history" in str(info.value)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    # nested states are inspected too: one recorded tensor deep inside is enough
    nested = nn.Recurrent(NestedCell())
    inner = tg.Tensor(h0) * nn.Parameter(np.ones((B, H)))
    with pytest.raises(RuntimeError, match=r"tg\.detach"):
        tg.bptt.train_truncated(nested, xs, np.zeros((T, B, H)), mse,
                                optim.SGD(nested.parameters(), lr=0.1), 2,
                                state=(tg.Tensor(h0), (tg.Tensor(h0), inner)))
    # the fix the message suggests works
    loss, _ = tg.bptt.train_truncated(model, xs, ys, mse, opt, 2, state=tg.detach(h))
    assert np.isfinite(loss)


def test_forgetting_to_detach_in_a_hand_written_loop_says_detach_or_retain_graph():
    P, xs, ys, h0 = make_problem(6, seed=19)
    model = TanhRNN(P)
    h = tg.Tensor(h0)
    out, h = model(xs[:3], h)
    mse(out, ys[:3]).backward()  # frees window 1's graph
    grads = [p.grad.copy() for p in model.parameters()]
    out, h = model(xs[3:], h)  # h was not detached: window 2's graph reaches window 1's
    loss2 = mse(out, ys[3:])
    with pytest.raises(RuntimeError) as info:
        loss2.backward()
    msg = str(info.value)
    assert "retain_graph" in msg and "tg.detach" in msg and "detach" in msg
    # the failed backward left the accumulated gradients as they were
    assert all(np.array_equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def test_backward_twice_through_the_same_window_says_retain_graph():
    P, xs, ys, h0 = make_problem(4, seed=20)
    model = TanhRNN(P)
    out, h = model(xs, tg.Tensor(h0))
    loss = mse(out, ys)
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
    # a second root through the same (already freed) window
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * h).sum().backward()
    # with retain_graph=True the second backward is allowed and doubles the gradients
    model = TanhRNN(P)
    out, _ = model(xs, tg.Tensor(h0))
    loss = mse(out, ys)
    loss.backward(retain_graph=True)
    once = model.U.grad.copy()
    loss.backward()
    np.testing.assert_allclose(model.U.grad, 2 * once, rtol=1e-14)


@pytest.mark.parametrize("k1,k2,match", [
    (4, 2, "k2"), (3, 1, "k2"),            # k2 < k1
    (0, None, "k1"), (-1, None, "k1"), (2.5, None, "k1"),
    (2, 0, "k2"), (2, -3, "k2"),
])
def test_train_truncated_rejects_bad_k(k1, k2, match):
    P, xs, ys, h0 = make_problem(5, seed=21)
    model = TanhRNN(P)
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        tg.bptt.train_truncated(model, xs, ys, mse, opt, k1, k2, state=tg.Tensor(h0))
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))


@given(seed=st.integers(0, 2**16), every=st.integers(1, 4), cut=st.integers(1, 6))
def test_checkpoint_sums_gradient_contributions_in_record_order(seed: int, every: int,
                                                                 cut: int) -> None:
    """A state tensor used by several records on both sides of a segment boundary, and by the
    stacked output: its gradient contributions must be summed in the same order as without
    checkpoint. Two unrolls joined at `cut` add a boundary that no segment knows about.
    (A different order changes the last bit of some gradients in most examples.)"""
    T = 7
    r = np.random.default_rng(seed)
    xs = r.normal(size=(T, B, I))
    init = _nested_state(seed + 1)
    results = []
    for ckpt in (None, every):
        cell = NestedCell(seed=seed + 2)
        state = (tg.Tensor(init[0], requires_grad=True),
                 (tg.Tensor(init[1], requires_grad=True), tg.Tensor(init[2])))
        y1, s1 = nn.unroll(cell, xs[:cut], state, checkpoint_every=ckpt)
        y2, s2 = nn.unroll(cell, xs[cut:], s1, checkpoint_every=ckpt)
        loss = (y1 * y1).sum() + (y2 * s2[1][1]).sum() + (s2[0] * s2[1][0]).sum()
        loss.backward()
        results.append([state[0].grad, state[1][0].grad] + [p.grad for p in cell.parameters()])
    for a, b in zip(*results):
        assert np.array_equal(a, b), np.abs(a - b).max()
