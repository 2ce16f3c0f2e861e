"""Variable-length batches: `lengths=` on nn.unroll / nn.Recurrent / the layers, PackedSequence,
and the `nn.utils.rnn` padding and packing functions.

The reference for a batch of sequences of different lengths is each sequence run alone on the
per-op tape (`compile=False`), with no padding at all: outputs, final states and every gradient
(inputs, initial states, parameters) must agree, padded outputs must be zeros, and padded inputs
must get zero gradients. PyTorch parity on packed batches is in test_torch_parity.py.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.errors import ShapeError
from tinygrad_rnn.nn.utils import rnn
from tinygrad_rnn.scan import CompileWarning, Scan
from test_scan import scans  # noqa: F401  (the fixture counting Scan.forward/backward calls)

F64 = np.float64
TOL = dict(rtol=1e-10, atol=1e-12)
LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

pytestmark = pytest.mark.filterwarnings("error::tinygrad_rnn.scan.CompileWarning")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _count_scans(roots: Any) -> int:
    return sum(n.op is Scan for n in tg.engine.walk(*roots))


def layer_grads(layer: nn.Module, x: np.ndarray, state: Any, lengths: Any, R: np.ndarray,
                S: list[np.ndarray]) -> dict[str, Any]:
    """out, final state parts and the gradients of L = sum(out R) + sum_k sum(final_k S_k)
    for layer(x, state, lengths=lengths); state is None or a list of arrays."""
    layer.zero_grad()
    xt = tg.Tensor(x.copy(), requires_grad=True)
    st_ = None if state is None else [tg.Tensor(s.copy(), requires_grad=True) for s in state]
    call_state = None if st_ is None else (tuple(st_) if len(st_) == 2 else st_[0])
    out, final = layer(xt, call_state, lengths=lengths) if lengths is not None else \
        layer(xt, call_state)
    finals = list(final) if isinstance(final, tuple) else [final]
    loss = (out * tg.Tensor(R)).sum()
    for f, s in zip(finals, S):
        loss = loss + (f * tg.Tensor(s)).sum()
    scans = _count_scans([out] + finals)
    loss.backward()
    res: dict[str, Any] = {"out": out.data.copy(), "x": xt.grad, "scans": scans}
    res.update({f"final{k}": f.data.copy() for k, f in enumerate(finals)})
    if st_ is not None:
        res.update({f"state{k}": s.grad for k, s in enumerate(st_)})
    res.update({n: p.grad.copy() for n, p in layer.named_parameters()})
    layer.zero_grad()
    return res


@st.composite
def problems(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(LAYERS)))
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    return dict(kind=kind, T=T, B=B, lengths=lengths, layers=draw(st.integers(1, 2)),
                bidirectional=draw(st.booleans()), batch_first=draw(st.booleans()),
                compile=draw(st.booleans()), with_state=draw(st.booleans()),
                as_array=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@given(p=problems())
def test_a_padded_batch_with_lengths_equals_each_sequence_run_alone(p: dict[str, Any]) -> None:
    """Any layer kind, depth, direction and layout, compiled or not: outputs, final states and
    all gradients of a batch with lengths= equal those of each sequence alone (per op, no
    padding), summed over sequences for the parameters; padded outputs are zeros and padded
    inputs get zero gradients."""
    T, B, I, H, L = p["T"], p["B"], 3, 4, p["lengths"]
    g = rng(p["seed"])
    dirs = 2 if p["bidirectional"] else 1
    tg.manual_seed(p["seed"])
    layer = LAYERS[p["kind"]](I, H, num_layers=p["layers"], bidirectional=p["bidirectional"],
                              batch_first=p["batch_first"], dtype=F64, compile=p["compile"])
    x = g.standard_normal((T, B, I))
    nstate = 2 if p["kind"] == "lstm" else 1
    state = [g.standard_normal((p["layers"] * dirs, B, H)) * 0.5 for _ in range(nstate)] \
        if p["with_state"] else None
    R = g.standard_normal((T, B, dirs * H))
    S = [g.standard_normal((p["layers"] * dirs, B, H)) for _ in range(nstate)]
    bt = (lambda a: np.swapaxes(a, 0, 1)) if p["batch_first"] else (lambda a: a)
    lengths = np.array(L) if p["as_array"] else L
    got = layer_grads(layer, bt(x), state, lengths, bt(R), S)
    out, gx = bt(got["out"]), bt(got["x"])
    layer.compile, layer.batch_first = False, False
    param_sum: dict[str, np.ndarray] = {}
    for b, n in enumerate(L):
        alone = layer_grads(layer, x[:n, b:b + 1], None if state is None else
                            [s[:, b:b + 1] for s in state], None, R[:n, b:b + 1],
                            [s[:, b:b + 1] for s in S])
        np.testing.assert_allclose(out[:n, b], alone["out"][:, 0], **TOL)
        assert np.all(out[n:, b] == 0)
        np.testing.assert_allclose(gx[:n, b], alone["x"][:, 0], **TOL)
        assert np.all(gx[n:, b] == 0)
        for k in range(nstate):
            np.testing.assert_allclose(got[f"final{k}"][:, b], alone[f"final{k}"][:, 0], **TOL)
            if state is not None:
                np.testing.assert_allclose(got[f"state{k}"][:, b], alone[f"state{k}"][:, 0],
                                           **TOL)
        for name, p_ in layer.named_parameters():
            param_sum[name] = param_sum.get(name, 0) + alone[name]
    for name in param_sum:
        np.testing.assert_allclose(got[name], param_sum[name], err_msg=name, **TOL)
    # the compiled layer ran each direction of each layer as one scan when some sequence was
    # shorter than T (all whole: no mask at all, still one scan per unroll for T >= 2)
    if p["compile"] and T >= 2:
        assert got["scans"] == p["layers"] * dirs


class NestedCell(nn.Module):
    """A custom cell with a nested state (h, (c, n)), an output unlike its state and a project:
    c' = tanh(xc + h Wc^T), h' = sigmoid(xh) * c' + h / 2, n' = n + h'; y = 2 h' + 1."""

    def __init__(self, seed: int, I: int = 3, H: int = 4) -> None:  # noqa: E741
        super().__init__()
        g = rng(seed)
        self.W = nn.Parameter(g.normal(0, 0.5, (2 * H, I)))
        self.Wc = nn.Parameter(g.normal(0, 0.5, (H, H)))
        self.H = H

    def project(self, xs: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        xp = tg.linear(xs, self.W)
        return xp[..., :self.H], xp[..., self.H:]

    def step(self, xp: Any, state: Any) -> Any:
        xc, xh = xp
        h, (c, n) = state
        c = tg.tanh(xc + h @ self.Wc.T)
        h = xh.sigmoid() * c + h * 0.5
        return h * 2.0 + 1.0, (h, (c, n + h))


def unroll_grads(cell: NestedCell, x: np.ndarray, state: list[np.ndarray], lengths: Any,
                 R: np.ndarray, S: list[np.ndarray], **kw: Any) -> dict[str, Any]:
    cell.zero_grad()
    xt = tg.Tensor(x.copy(), requires_grad=True)
    st_ = [tg.Tensor(s.copy(), requires_grad=True) for s in state]
    ys, (h, (c, n)) = nn.unroll(cell, xt, (st_[0], (st_[1], st_[2])), lengths=lengths, **kw)
    loss = (ys * tg.Tensor(R)).sum()
    for f, s in zip((h, c, n), S):
        loss = loss + (f * tg.Tensor(s)).sum()
    scans = _count_scans([ys, h, c, n])
    loss.backward()
    res = {"ys": ys.data.copy(), "x": xt.grad, "scans": scans,
           **{f"final{k}": f.data.copy() for k, f in enumerate((h, c, n))},
           **{f"state{k}": s.grad for k, s in enumerate(st_)},
           **{k: p.grad.copy() for k, p in cell.named_parameters()}}
    cell.zero_grad()
    return res


def nested_problem(seed: int, T: int = 7, B: int = 4) -> tuple[Any, ...]:
    g = rng(seed)
    x = g.standard_normal((T, B, 3))
    state = [g.normal(0, 0.5, (B, 4)) for _ in range(3)]
    R = g.standard_normal((T, B, 4))
    S = [g.standard_normal((B, 4)) for _ in range(3)]
    return x, state, R, S


@pytest.mark.parametrize("compile", [True, False])
def test_unroll_with_lengths_runs_a_custom_cell_as_each_sequence_alone(compile: bool) -> None:
    """nn.unroll(cell, xs, state, lengths=) for a custom cell with a nested state and a
    project: the compiled run is one scan, and everything equals each sequence alone."""
    cell = NestedCell(seed=1)
    x, state, R, S = nested_problem(2)
    L = [7, 2, 5, 1]
    got = unroll_grads(cell, x, state, L, R, S, compile=compile)
    assert got["scans"] == (1 if compile else 0)
    total: dict[str, Any] = {}
    for b, n in enumerate(L):
        alone = unroll_grads(cell, x[:n, b:b + 1], [s[b:b + 1] for s in state], None,
                             R[:n, b:b + 1], [s[b:b + 1] for s in S], compile=False)
        np.testing.assert_allclose(got["ys"][:n, b], alone["ys"][:, 0], **TOL)
        assert np.all(got["ys"][n:, b] == 0) and np.all(got["x"][n:, b] == 0)
        np.testing.assert_allclose(got["x"][:n, b], alone["x"][:, 0], **TOL)
        for k in range(3):
            np.testing.assert_allclose(got[f"final{k}"][b], alone[f"final{k}"][0], **TOL)
            want = alone[f"state{k}"]  # c0 is never read: None alone, zeros in the batch
            np.testing.assert_allclose(got[f"state{k}"][b], 0 if want is None else want[0],
                                       **TOL)
        for k in ("W", "Wc"):
            total[k] = total.get(k, 0) + alone[k]
    for k in total:
        np.testing.assert_allclose(got[k], total[k], err_msg=k, **TOL)


@pytest.mark.parametrize("compile", [True, False])
@pytest.mark.parametrize("every", [1, 3])
def test_lengths_with_checkpoint_every_is_bit_identical(compile: bool, every: int,
                                                        scans: dict[str, int]) -> None:
    """checkpoint_every=k with lengths= gives the unsegmented run's outputs and gradients to the
    last bit (the mask is split into segments with the inputs)."""
    x, state, R, S = nested_problem(3)
    L = np.array([3, 7, 1, 6])
    cell = NestedCell(seed=4)
    plain = unroll_grads(cell, x, state, L, R, S, compile=compile)
    scans["backward"] = 0
    ckpt = unroll_grads(cell, x, state, L, R, S, compile=compile, checkpoint_every=every)
    assert scans["backward"] == (math.ceil(7 / every) if compile else 0)
    for k in plain:
        if k != "scans":
            assert np.array_equal(ckpt[k], plain[k]), k


def test_nan_or_inf_padding_changes_nothing() -> None:
    """Padding is replaced by zeros before the steps past an end run: nan and inf there give
    the zero-padded results exactly, gradients included (not 0 * nan)."""
    x, state, R, S = nested_problem(5)
    L = [7, 2, 5, 1]
    cell = NestedCell(seed=6)
    want = unroll_grads(cell, x, state, L, R, S)
    dirty = x.copy()
    for b, n in enumerate(L):
        dirty[n:, b] = np.nan if b % 2 else np.inf
    got = unroll_grads(cell, dirty, state, L, R, S)
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_lengths_all_full_is_the_run_without_lengths() -> None:
    """lengths all equal to T: bit for bit the run without lengths (nothing is masked)."""
    x, state, R, S = nested_problem(7)
    cell = NestedCell(seed=8)
    want = unroll_grads(cell, x, state, None, R, S)
    got = unroll_grads(cell, x, state, [7, 7, 7, 7], R, S)
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_a_cell_without_initial_state_starts_from_none() -> None:
    """A plain function cell given state=None: step 0 (every sequence running) gets None, the
    rest is masked; the final state is each sequence's own."""
    W = tg.Tensor(rng(9).normal(0, 0.5, (3, 3)), requires_grad=True)

    def cell(x: tg.Tensor, h: Any) -> Any:
        h = tg.tanh(x if h is None else x + h @ W)
        return h, h

    x = rng(10).standard_normal((5, 3, 3))
    ys, h = nn.unroll(cell, x, lengths=[5, 1, 3])
    for b, n in enumerate([5, 1, 3]):
        ya, ha = nn.unroll(cell, x[:n, b:b + 1], compile=False)
        np.testing.assert_allclose(ys.data[:n, b], ya.data[:, 0], **TOL)
        np.testing.assert_allclose(h.data[b], ha.data[0], **TOL)


def test_the_warning_of_a_cell_that_cannot_compile_names_the_cell_not_the_mask() -> None:
    """With lengths=, a cell that reads a value still falls back with a warning naming it."""

    class Peeking:
        def __call__(self, x: tg.Tensor, h: tg.Tensor) -> Any:
            h = tg.tanh(x + h * float(h.data.mean() > 0))
            return h, h

    x = rng(11).standard_normal((4, 2, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys, _ = nn.unroll(Peeking(), x, tg.Tensor(np.zeros((2, 3))), lengths=[4, 2])
    msgs = [str(w.message) for w in caught if issubclass(w.category, CompileWarning)]
    assert len(msgs) == 1 and "Peeking" in msgs[0] and "_Masked" not in msgs[0]
    assert np.all(ys.data[2:, 1] == 0)


def test_recurrent_takes_lengths_and_a_packed_sequence() -> None:
    """nn.Recurrent(cell)(x, state, lengths=) and nn.Recurrent(cell)(packed, state): the same
    numbers; a packed input gives a packed output with the input's batch_sizes and order."""
    x, state, _, _ = nested_problem(12)
    L = [4, 7, 2, 7]
    layer = nn.Recurrent(NestedCell(seed=13))
    s0 = (tg.Tensor(state[0]), (tg.Tensor(state[1]), tg.Tensor(state[2])))
    ys, (h, _) = layer(tg.Tensor(x), s0, lengths=L)
    packed = rnn.pack_padded_sequence(tg.Tensor(x), L, enforce_sorted=False)
    out, (h2, _) = layer(packed, s0)
    assert isinstance(out, rnn.PackedSequence)
    assert np.array_equal(out.batch_sizes, packed.batch_sizes)
    assert np.array_equal(out.sorted_indices, packed.sorted_indices)
    padded, lens = rnn.pad_packed_sequence(out)
    assert np.array_equal(lens, L)
    assert np.array_equal(padded.data, ys.data) and np.array_equal(h2.data, h.data)
    with pytest.raises(ValueError, match="carries its lengths"):
        layer(packed, s0, lengths=L)


# ----------------------------------------------------------------------------- utilities
def test_pad_sequence_pads_and_passes_gradients_back() -> None:
    """pad_sequence: (T, B, *) or (B, T, *) with padding_value; each sequence gets exactly the
    gradient of its own rows."""
    g = rng(14)
    seqs = [tg.Tensor(g.standard_normal((n, 2)), requires_grad=True) for n in (3, 1, 4)]
    padded = rnn.pad_sequence(seqs, padding_value=-7.0)
    assert padded.shape == (4, 3, 2)
    for b, s in enumerate(seqs):
        n = s.shape[0]
        assert np.array_equal(padded.data[:n, b], s.data)
        assert np.all(padded.data[n:, b] == -7.0)
    U = g.standard_normal((4, 3, 2))
    (padded * tg.Tensor(U)).sum().backward()
    for b, s in enumerate(seqs):
        assert np.array_equal(s.grad, U[:s.shape[0], b])
    bf = rnn.pad_sequence([s.data for s in seqs], batch_first=True)
    assert bf.shape == (3, 4, 2) and np.array_equal(bf.data, np.swapaxes(
        rnn.pad_sequence([s.data for s in seqs]).data, 0, 1))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_pack_then_pad_gives_the_padded_batch_back(batch_first: bool,
                                                   enforce_sorted: bool) -> None:
    """pack_padded_sequence then pad_packed_sequence: the input with its padding zeroed, the
    lengths in the original order; data holds the steps time-major in decreasing length order;
    gradients reach exactly the valid steps."""
    g = rng(15)
    L = [5, 3, 3, 1] if enforce_sorted else [3, 5, 1, 3]
    x = g.standard_normal((5, 4, 2))
    xt = tg.Tensor(np.swapaxes(x, 0, 1).copy() if batch_first else x.copy(), requires_grad=True)
    packed = rnn.pack_padded_sequence(xt, L, batch_first=batch_first,
                                      enforce_sorted=enforce_sorted)
    assert packed.batch_sizes.tolist() == [4, 3, 3, 1, 1]
    order = np.argsort(-np.array(L), kind="stable")
    want_data = np.concatenate([x[t, order[:n]] for t, n in enumerate([4, 3, 3, 1, 1])])
    assert np.array_equal(packed.data.data, want_data)
    if enforce_sorted:
        assert packed.sorted_indices is None and packed.unsorted_indices is None
    else:
        assert packed.sorted_indices.tolist() == order.tolist()
        assert np.array_equal(packed.sorted_indices[packed.unsorted_indices], np.arange(4))
    padded, lens = rnn.pad_packed_sequence(packed, batch_first=batch_first, total_length=6)
    assert lens.tolist() == L and lens.dtype == np.int64
    back = np.swapaxes(padded.data, 0, 1) if batch_first else padded.data
    assert back.shape == (6, 4, 2)
    valid = np.arange(6)[:, None] < np.array(L)[None, :]
    assert np.array_equal(back[valid], np.concatenate([x, np.zeros((1, 4, 2))])[valid])
    assert np.all(back[~valid] == 0)
    U = g.standard_normal(padded.shape)
    (padded * tg.Tensor(U)).sum().backward()
    gx = np.swapaxes(xt.grad, 0, 1) if batch_first else xt.grad
    Ut = np.swapaxes(U, 0, 1) if batch_first else U
    assert np.array_equal(gx[valid[:5]], Ut[:5][valid[:5]]) and np.all(gx[~valid[:5]] == 0)


def test_pack_sequence_is_pad_then_pack() -> None:
    seqs = [rng(16).standard_normal((n, 3)) for n in (2, 4, 1)]
    a = rnn.pack_sequence(seqs, enforce_sorted=False)
    b = rnn.pack_padded_sequence(rnn.pad_sequence(seqs), [2, 4, 1], enforce_sorted=False)
    assert np.array_equal(a.data.data, b.data.data)
    assert np.array_equal(a.batch_sizes, b.batch_sizes)


@pytest.mark.parametrize("lengths, error, match", [
    ([3, 0], ValueError, r"lengths\[1\] = 0 is outside 1\.\.4"),
    ([5, 2], ValueError, r"lengths\[0\] = 5 is outside 1\.\.4"),
    ([3], ShapeError, r"one length per sequence, shape \(2,\)"),
    ([[3, 2]], ShapeError, r"one length per sequence"),
    ([3.0, 2.0], TypeError, "must be integers"),
])
def test_bad_lengths_are_refused_by_every_entry_point(lengths: Any, error: type,
                                                      match: str) -> None:
    x = rng(17).standard_normal((4, 2, 3))
    lstm = nn.LSTM(3, 2, dtype=F64)
    for call in (lambda: nn.unroll(lstm._cells[0], x, lengths=lengths),
                 lambda: lstm(x, lengths=lengths),
                 lambda: rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)):
        with pytest.raises(error, match=match):
            call()


def test_packing_errors_name_the_problem() -> None:
    x = rng(18).standard_normal((4, 3, 2))
    with pytest.raises(ValueError, match="decreasing order .* enforce_sorted=False"):
        rnn.pack_padded_sequence(x, [2, 4, 1])
    packed = rnn.pack_padded_sequence(x, [4, 2, 1])
    with pytest.raises(ValueError, match="total_length=3 is shorter than the longest"):
        rnn.pad_packed_sequence(packed, total_length=3)
    broken = packed._replace(batch_sizes=np.array([3, 2, 2, 1]))
    with pytest.raises(ShapeError, match="sum to 8 steps but data has 7 rows"):
        rnn.pad_packed_sequence(broken)
    with pytest.raises(TypeError, match="expected a PackedSequence"):
        rnn.pad_packed_sequence(x)
    with pytest.raises(ShapeError, match="sequence 1 has shape"):
        rnn.pad_sequence([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ShapeError, match="lengths= needs a batched input"):
        nn.GRU(2, 3, dtype=F64)(x[:, 0], lengths=[4])


def test_a_state_without_a_batch_axis_is_refused_with_lengths() -> None:
    """Masking needs the batch as each state part's leading axis: a scalar state part is a
    clear error, not a wrong broadcast."""

    def cell(x: tg.Tensor, state: Any) -> Any:
        h, count = state
        h = tg.tanh(x + h)
        return h, (h, count + 1.0)

    x = rng(19).standard_normal((3, 2, 4))
    with pytest.raises(ShapeError, match=r"state has shape \(\); it needs the batch \(2\)"):
        nn.unroll(cell, x, (tg.Tensor(np.zeros((2, 4))), tg.Tensor(np.array(0.0))),
                  lengths=[3, 1], compile=False)


def test_a_cell_used_with_lengths_can_still_be_freed() -> None:
    """The per-cell wrapper that lets the scan reuse its plan holds the cell weakly."""
    import gc
    import weakref

    cell = NestedCell(seed=20)
    x, state, _, _ = nested_problem(21)
    nn.unroll(cell, x, (tg.Tensor(state[0]), (tg.Tensor(state[1]), tg.Tensor(state[2]))),
              lengths=[7, 3, 2, 5])
    ref = weakref.ref(cell)
    del cell
    gc.collect()
    assert ref() is None
