"""Layers of `tg.nn` against the independent numpy references, their gradients, and bad input.

Forward values are compared in float64 to `tests/numpy_reference.py` (which never imports the
library) after loading the same parameters into both. Gradients are checked with
`tg.testing.gradcheck` for the inputs and with central differences of a random-projection loss
for the parameters (gradcheck perturbs only its `inputs`). Checkpointed unrolls must give
gradients equal to the last bit. Errors must name the layer, what it expected and what it got.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import nn
from tinygrad_rnn.testing import gradcheck

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works with or without tests/__init__
import numpy_reference as ref  # noqa: E402

F64 = np.float64
TOL = dict(rtol=1e-12, atol=1e-12)
LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- helpers
def flat_tensors(tree: Any) -> list[Any]:
    """The leaves of a nested tuple/list, in order."""
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in flat_tensors(t)]
    return [tree]


def projection(tree: Any, seed: int = 0) -> Callable[[Any], Any]:
    """A random linear functional L(outputs) = sum_k sum(out_k * R_k), R_k fixed and random
    (never all-ones, so a wrong transpose or a swapped gate cannot hide)."""
    g = rng(seed)
    rs = [g.standard_normal(t.shape) for t in flat_tensors(tree)]

    def loss(out: Any) -> Any:
        total = None
        for t, r in zip(flat_tensors(out), rs):
            term = (t * tg.Tensor(r)).sum()
            total = term if total is None else total + term
        return total

    return loss


def check_parameter_gradients(module: nn.Module, loss_fn: Callable[[], Any], eps: float = 1e-6,
                              rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Every parameter's `.grad` after `loss_fn().backward()` against central differences of
    `loss_fn()` with the parameter's `.data` perturbed one element at a time (float64)."""
    params = list(module.named_parameters())
    assert params, "the module has no parameters"
    module.zero_grad()
    loss_fn().backward()
    for name, p in params:
        assert p.dtype == F64, name
        assert p.grad is not None, f"{name} got no gradient"
        analytic = np.array(p.grad, copy=True)
        numeric = np.empty_like(analytic)
        for idx in np.ndindex(p.shape):
            old = p.data[idx]
            with tg.no_grad():
                p.data[idx] = old + eps
                hi = float(loss_fn().data)
                p.data[idx] = old - eps
                lo = float(loss_fn().data)
            p.data[idx] = old
            numeric[idx] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=name)
        assert np.any(analytic != 0), f"{name}: gradient is identically zero"
    module.zero_grad()


def cell_params(kind: str, I: int, H: int, bias: bool = True, seed: int = 0) -> dict:  # noqa: E741
    """Reference parameters for a single cell (make_params' layer-0 names without `_l0`)."""
    p = ref.make_params(kind, I, H, bias=bias, rng=rng(seed))
    return {k[: -len("_l0")]: v for k, v in p.items()}


def make_layer(kind: str, I: int, H: int, **kw: Any) -> nn.Module:  # noqa: E741
    return LAYERS[kind](I, H, dtype=F64, **kw)


def loaded_layer(kind: str, I: int, H: int, L: int = 1, bidir: bool = False,  # noqa: E741
                 seed: int = 0, nonlinearity: str = "tanh", **kw: Any) -> tuple[nn.Module, dict]:
    params = ref.make_params(kind, I, H, L, bidir, rng=rng(seed))
    extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    layer = make_layer(kind, I, H, num_layers=L, bidirectional=bidir, **extra, **kw)
    layer.load_state_dict(params)
    return layer, params


def random_state(kind: str, shape: tuple[int, ...], seed: int) -> Any:
    g = rng(seed)
    if kind == "lstm":
        return g.standard_normal(shape), g.standard_normal(shape)
    return g.standard_normal(shape)


def as_tensors(state: Any) -> Any:
    if isinstance(state, tuple):
        return tuple(tg.Tensor(s) for s in state)
    return tg.Tensor(state)


def assert_tree_close(got: Any, want: Any, **tol: Any) -> None:
    g, w = flat_tensors(got), flat_tensors(want)
    assert len(g) == len(w)
    for a, b in zip(g, w):
        a = a.data if isinstance(a, tg.Tensor) else a
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **(tol or TOL))


# ============================================================================= cells
@pytest.mark.parametrize("kind,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"),
                                               ("lstm", None), ("gru", None)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_cell_matches_reference(kind: str, nonlinearity: str | None, bias: bool, batched: bool,
                                with_state: bool) -> None:
    I, H, B = 3, 4, 2  # noqa: E741
    p = cell_params(kind, I, H, bias, seed=1)
    kw = {"nonlinearity": nonlinearity} if nonlinearity else {}
    cell = CELLS[kind](I, H, bias=bias, dtype=F64, **kw)
    assert sorted(cell.state_dict()) == sorted(p)
    cell.load_state_dict(p)
    g = rng(2)
    lead = (B,) if batched else ()
    x = g.standard_normal(lead + (I,))
    h = g.standard_normal(lead + (H,)) if with_state else np.zeros(lead + (H,))
    c = g.standard_normal(lead + (H,)) if with_state else np.zeros(lead + (H,))
    if kind == "lstm":
        got = cell(tg.Tensor(x), (tg.Tensor(h), tg.Tensor(c)) if with_state else None)
        want = ref.lstm_cell(x, h, c, p)
        assert isinstance(got, tuple) and len(got) == 2
    elif kind == "gru":
        got = cell(tg.Tensor(x), tg.Tensor(h) if with_state else None)
        want = ref.gru_cell(x, h, p)
    else:
        got = cell(tg.Tensor(x), tg.Tensor(h) if with_state else None)
        want = ref.rnn_cell(x, h, p, nonlinearity)
    assert_tree_close(got, want)
    for t in flat_tensors(got):
        assert t.dtype == F64 and t.shape == lead + (H,)


def test_relu_cell_really_uses_relu() -> None:
    p = cell_params("rnn", 3, 8, seed=3)
    cell = nn.RNNCell(3, 8, nonlinearity="relu", dtype=F64)
    cell.load_state_dict(p)
    h = cell(rng(0).standard_normal((5, 3))).data
    assert (h == 0).any() and (h > 1e-3).any() and (h >= 0).all()


def test_cells_accept_numpy_inputs_and_states() -> None:
    p = cell_params("gru", 3, 2, seed=4)
    cell = nn.GRUCell(3, 2, dtype=F64)
    cell.load_state_dict(p)
    x, h = rng(1).standard_normal((2, 3)), rng(2).standard_normal((2, 2))
    np.testing.assert_allclose(cell(x, h).data, ref.gru_cell(x, h, p), **TOL)


def test_float32_cells_and_layers_stay_float32() -> None:
    x = rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    for kind in LAYERS:
        out, _ = LAYERS[kind](3, 5, num_layers=2)(x)
        assert out.dtype == np.float32, kind
        s = CELLS[kind](3, 5)(x[0])
        assert all(t.dtype == np.float32 for t in flat_tensors(s)), kind


# ============================================================================= sequence layers
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_sequence_layer_matches_reference(kind: str, L: int, bidir: bool, batch_first: bool,
                                          with_state: bool) -> None:
    T, B, I, H = 5, 2, 3, 4  # noqa: E741
    D = 2 if bidir else 1
    layer, params = loaded_layer(kind, I, H, L, bidir, seed=L + 2 * bidir,
                                 batch_first=batch_first)
    x = rng(7).standard_normal((B, T, I) if batch_first else (T, B, I))
    state = random_state(kind, (L * D, B, H), seed=8) if with_state else None
    out, final = layer(tg.Tensor(x), as_tensors(state) if with_state else None)
    want_out, want_final = ref.rnn_layer(kind, x, params, L, bidir, batch_first, state)
    assert out.shape == ((B, T, D * H) if batch_first else (T, B, D * H))  # PyTorch's shapes
    np.testing.assert_allclose(out.data, want_out, **TOL)
    if kind == "lstm":
        assert isinstance(final, tuple) and len(final) == 2
        for got, want in zip(final, want_final):
            assert got.shape == (L * D, B, H)
            np.testing.assert_allclose(got.data, want, **TOL)
    else:
        assert final.shape == (L * D, B, H)
        np.testing.assert_allclose(final.data, want_final, **TOL)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_layer_unbatched_input(kind: str, with_state: bool, batch_first: bool) -> None:
    T, I, H, L = 4, 3, 2, 2  # noqa: E741
    layer, params = loaded_layer(kind, I, H, L, bidir=True, seed=5, batch_first=batch_first)
    x = rng(9).standard_normal((T, I))
    state = random_state(kind, (2 * L, H), seed=10) if with_state else None
    out, final = layer(x, state)  # plain numpy arrays are accepted too
    want_out, want_final = ref.rnn_layer(kind, x, params, L, True, batch_first, state)
    assert out.shape == (T, 2 * H)
    assert_tree_close((out, final), (want_out, want_final))
    for t in flat_tensors(final):
        assert t.shape == (2 * L, H)


def test_rnn_layer_relu_matches_reference() -> None:
    layer, params = loaded_layer("rnn", 3, 4, 2, True, seed=11, nonlinearity="relu")
    x = rng(12).standard_normal((6, 2, 3))
    out, h = layer(x)
    want_out, want_h = ref.rnn_layer("rnn", x, params, 2, True, nonlinearity="relu")
    np.testing.assert_allclose(out.data, want_out, **TOL)
    np.testing.assert_allclose(h.data, want_h, **TOL)
    assert (out.data == 0).any()


@given(data=st.data())
def test_sequence_layers_property(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(LAYERS)))
    T, B, I, H = (data.draw(st.integers(1, 4)) for _ in range(4))  # noqa: E741
    L = data.draw(st.integers(1, 2))
    bidir, batch_first, with_state = (data.draw(st.booleans()) for _ in range(3))
    D = 2 if bidir else 1
    x = data.draw(tg.testing.strategies.arrays((B, T, I) if batch_first else (T, B, I)))
    layer, params = loaded_layer(kind, I, H, L, bidir, seed=T * 7 + H, batch_first=batch_first)
    state = random_state(kind, (L * D, B, H), seed=B) if with_state else None
    with tg.no_grad():
        got = layer(x, state)
    assert_tree_close(got, ref.rnn_layer(kind, x, params, L, bidir, batch_first, state))


def test_lstm_parameter_names_and_shapes_follow_pytorch() -> None:
    lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    got = [(n, p.shape) for n, p in lstm.named_parameters()]
    want = []
    for layer, in_size in ((0, 3), (1, 10)):
        for sfx in ("", "_reverse"):
            s = f"_l{layer}{sfx}"
            want += [(f"weight_ih{s}", (20, in_size)), (f"weight_hh{s}", (20, 5)),
                     (f"bias_ih{s}", (20,)), (f"bias_hh{s}", (20,))]
    assert got == want


@pytest.mark.parametrize("kind,gates", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_layer_and_cell_parameter_shapes(kind: str, gates: int) -> None:
    layer = LAYERS[kind](3, 5, num_layers=2, bias=False)
    assert {n: p.shape for n, p in layer.named_parameters()} == {
        "weight_ih_l0": (gates * 5, 3), "weight_hh_l0": (gates * 5, 5),
        "weight_ih_l1": (gates * 5, 5), "weight_hh_l1": (gates * 5, 5)}
    cell = CELLS[kind](3, 5)
    assert [(n, p.shape) for n, p in cell.named_parameters()] == [
        ("weight_ih", (gates * 5, 3)), ("weight_hh", (gates * 5, 5)),
        ("bias_ih", (gates * 5,)), ("bias_hh", (gates * 5,))]


def test_bias_false_layer_matches_reference() -> None:
    params = ref.make_params("gru", 3, 4, 2, True, bias=False, rng=rng(3))
    layer = nn.GRU(3, 4, num_layers=2, bidirectional=True, bias=False, dtype=F64)
    layer.load_state_dict(params)
    x = rng(4).standard_normal((5, 2, 3))
    assert_tree_close(layer(x), ref.rnn_layer("gru", x, params, 2, True))


# ============================================================================= initialisation
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_init_is_pytorch_uniform(kind: str) -> None:
    H = 16
    k = 1.0 / np.sqrt(H)
    tg.manual_seed(0)
    layer = LAYERS[kind](7, H, num_layers=2, bidirectional=True)
    cell = CELLS[kind](7, H)
    for module in (layer, cell):
        for name, p in module.named_parameters():
            assert p.dtype == np.float32, name
            assert np.all(np.abs(p.data) <= k), name
            assert np.unique(p.data).size > p.size // 2, f"{name}: values repeat"
        allw = np.concatenate([p.data.ravel() for p in module.parameters()])
        # U(-k, k): std k / sqrt(3), reaching close to both ends
        assert abs(allw.std() - k / np.sqrt(3)) < 0.08 * k
        assert allw.max() > 0.95 * k and allw.min() < -0.95 * k
        assert abs(allw.mean()) < 0.05 * k


def test_linear_init_is_pytorch_uniform() -> None:
    tg.manual_seed(0)
    lin = nn.Linear(25, 400)
    k = 1.0 / np.sqrt(25)
    for p in (lin.weight, lin.bias):
        assert np.all(np.abs(p.data) <= k)
        assert abs(p.data.std() - k / np.sqrt(3)) < 0.1 * k
        assert p.data.max() > 0.9 * k and p.data.min() < -0.9 * k
    assert lin.weight.shape == (400, 25) and lin.bias.shape == (400,)
    assert lin.weight.dtype == np.float32
    assert nn.Linear(3, 2, bias=False).bias is None
    assert [n for n, _ in nn.Linear(3, 2, bias=False).named_parameters()] == ["weight"]


def test_embedding_init_is_standard_normal() -> None:
    tg.manual_seed(0)
    w = nn.Embedding(2000, 8).weight.data
    assert w.shape == (2000, 8) and w.dtype == np.float32
    assert abs(w.mean()) < 0.05
    assert abs(w.std() - 1.0) < 0.05
    assert (np.abs(w) > 2.5).any()  # a normal, not a uniform on [-1, 1]
    pad = nn.Embedding(10, 4, padding_idx=3).weight.data
    np.testing.assert_array_equal(pad[3], 0)
    assert np.all(np.abs(pad[[0, 1, 2, 4]]).sum(axis=1) > 0)
    np.testing.assert_array_equal(nn.Embedding(10, 4, padding_idx=-1).weight.data[9], 0)


def test_layernorm_init() -> None:
    ln = nn.LayerNorm((2, 3))
    np.testing.assert_array_equal(ln.weight.data, np.ones((2, 3)))
    np.testing.assert_array_equal(ln.bias.data, np.zeros((2, 3)))
    assert list(nn.LayerNorm(4, elementwise_affine=False).named_parameters()) == []


# ============================================================================= Linear, Embedding
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3,), (5, 3), (2, 4, 3)])
def test_linear_matches_numpy(bias: bool, shape: tuple[int, ...]) -> None:
    lin = nn.Linear(3, 2, bias=bias, dtype=F64)
    g = rng(0)
    w, b = g.standard_normal((2, 3)), g.standard_normal(2)
    lin.load_state_dict({"weight": w, "bias": b} if bias else {"weight": w})
    x = g.standard_normal(shape)
    y = lin(tg.Tensor(x))
    np.testing.assert_allclose(y.data, x @ w.T + (b if bias else 0), **TOL)
    assert y.shape == shape[:-1] + (2,)
    assert gradcheck(lambda t: lin(t), [x])
    check_parameter_gradients(lin, lambda: (lin(tg.Tensor(x)) * tg.Tensor(
        rng(1).standard_normal(shape[:-1] + (2,)))).sum())


def test_embedding_lookup_and_padding_gradient() -> None:
    emb = nn.Embedding(6, 3, padding_idx=2, dtype=F64)
    w = emb.weight.data.copy()
    idx = np.array([[1, 2, 1, 5], [2, 0, 1, 2]])
    out = emb(idx)
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out.data, w[idx])
    np.testing.assert_array_equal(emb(tg.Tensor(idx)).data, w[idx])  # Tensor indices
    G = rng(0).standard_normal((2, 4, 3))
    (out * tg.Tensor(G)).sum().backward()
    g = emb.weight.grad
    assert g.shape == (6, 3)
    assert np.all(g[2] == 0.0)  # padding row: exactly zero, even though it was looked up 3 times
    np.testing.assert_allclose(g[1], G[0, 0] + G[0, 2] + G[1, 2], **TOL)  # repeated: accumulated
    np.testing.assert_allclose(g[0], G[1, 1], **TOL)
    np.testing.assert_allclose(g[5], G[0, 3], **TOL)
    np.testing.assert_array_equal(g[[3, 4]], 0.0)
    # a second backward accumulates; padding stays exactly zero
    (emb(idx) * tg.Tensor(G)).sum().backward()
    np.testing.assert_allclose(emb.weight.grad[1], 2 * (G[0, 0] + G[0, 2] + G[1, 2]), **TOL)
    assert np.all(emb.weight.grad[2] == 0.0)


def test_embedding_without_padding_gets_gradient_everywhere_looked_up() -> None:
    emb = nn.Embedding(4, 2, dtype=F64)
    idx = np.array([3, 3, 3, 0])
    G = rng(1).standard_normal((4, 2))
    (emb(idx) * tg.Tensor(G)).sum().backward()
    np.testing.assert_allclose(emb.weight.grad[3], G[:3].sum(axis=0), **TOL)
    np.testing.assert_allclose(emb.weight.grad[0], G[3], **TOL)
    np.testing.assert_array_equal(emb.weight.grad[[1, 2]], 0.0)


# ============================================================================= LayerNorm
@pytest.mark.parametrize("normalized_shape,x_shape", [(4, (3, 4)), ((2, 3), (4, 2, 3)),
                                                      (5, (5,))])
def test_layernorm_matches_reference(normalized_shape: Any, x_shape: tuple[int, ...]) -> None:
    ln = nn.LayerNorm(normalized_shape, eps=1e-3, dtype=F64)
    g = rng(0)
    wshape = ln.weight.shape
    w, b = g.standard_normal(wshape), g.standard_normal(wshape)
    ln.load_state_dict({"weight": w, "bias": b})
    x = 3.0 + 2.0 * g.standard_normal(x_shape)
    np.testing.assert_allclose(ln(x).data, ref.layer_norm(x, normalized_shape, w, b, 1e-3), **TOL)
    assert gradcheck(lambda t: ln(t), [x])
    r = tg.Tensor(g.standard_normal(x_shape))
    check_parameter_gradients(ln, lambda: (ln(tg.Tensor(x)) * r).sum())


def test_layernorm_without_affine() -> None:
    ln = nn.LayerNorm(6, elementwise_affine=False)
    x = rng(1).standard_normal((3, 6))
    y = ln(x).data
    np.testing.assert_allclose(y, ref.layer_norm(x, 6), **TOL)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)


# ============================================================================= Dropout
def test_dropout_train_eval_and_p0() -> None:
    p = 0.3
    x = tg.Tensor(rng(0).uniform(1.0, 2.0, (400, 500)), requires_grad=True)
    drop = nn.Dropout(p)
    tg.manual_seed(0)
    y = drop(x)
    kept = y.data != 0
    frac_zero = 1.0 - kept.mean()
    assert abs(frac_zero - p) < 0.01  # 200k draws: std of the fraction is ~0.001
    np.testing.assert_allclose(y.data[kept], x.data[kept] / (1 - p), rtol=1e-15)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, kept / (1 - p), rtol=1e-15)
    drop.eval()
    np.testing.assert_array_equal(drop(x).data, x.data)
    drop.train()
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).data, x.data)
    assert nn.Dropout(0.5)(x).data.dtype == x.dtype
    np.testing.assert_array_equal(nn.Dropout(1.0)(x).data, 0.0)
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.5)


def test_dropout_float32_scale_stays_float32() -> None:
    x = tg.Tensor(np.ones((100, 100), dtype=np.float32))
    y = nn.Dropout(0.5)(x)
    assert y.dtype == np.float32
    assert set(np.unique(y.data)) == {np.float32(0.0), np.float32(2.0)}


# ============================================================================= attention
def _attention_case(B: int = 3, T: int = 5, Dq: int = 4, Dk: int = 4, Dv: int = 2,
                    seed: int = 0) -> tuple[np.ndarray, ...]:
    g = rng(seed)
    mask = g.random((B, T)) < 0.6
    mask[:, 0] = True  # every row has at least one allowed position
    mask[0] = True
    return (g.standard_normal((B, Dq)), g.standard_normal((B, T, Dk)),
            g.standard_normal((B, T, Dv)), mask)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("mask_as_tensor", [False, True])
def test_additive_attention_matches_reference(masked: bool, mask_as_tensor: bool) -> None:
    q, k, v, mask = _attention_case(Dq=3, Dk=4)
    attn = nn.AdditiveAttention(3, 4, 5, dtype=F64)
    assert [(n, p.shape) for n, p in attn.named_parameters()] == [
        ("W_q.weight", (5, 3)), ("W_k.weight", (5, 4)), ("v.weight", (1, 5))]
    g = rng(1)
    params = {"W_q.weight": g.standard_normal((5, 3)), "W_k.weight": g.standard_normal((5, 4)),
              "v.weight": g.standard_normal((1, 5))}
    attn.load_state_dict(params)
    m = (tg.Tensor(mask) if mask_as_tensor else mask) if masked else None
    ctx, w = attn(q, k, v, m)
    want_ctx, want_w = ref.additive_attention(q, k, v, params, mask if masked else None)
    assert ctx.shape == (3, 2) and w.shape == (3, 5)
    np.testing.assert_allclose(ctx.data, want_ctx, **TOL)
    np.testing.assert_allclose(w.data, want_w, **TOL)
    np.testing.assert_allclose(w.data.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    if masked:
        assert np.all(w.data[~mask] == 0.0)
        assert np.all(w.data[mask] > 0.0)
        assert not mask.all()
    # gradients through (masked) attention: inputs and parameters
    assert gradcheck(lambda a, b, c: attn(a, b, c, m), [q, k, v])
    loss = projection((ctx, w), seed=2)
    check_parameter_gradients(attn, lambda: loss(attn(q, k, v, m)))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scaled", [True, False])
def test_dot_product_attention_matches_reference(masked: bool, scaled: bool) -> None:
    q, k, v, mask = _attention_case(Dq=4, Dk=4, Dv=3, seed=3)
    attn = nn.DotProductAttention(scaled=scaled)
    assert list(attn.named_parameters()) == []
    m = mask if masked else None
    ctx, w = attn(tg.Tensor(q), tg.Tensor(k), tg.Tensor(v), m)
    want_ctx, want_w = ref.dot_product_attention(q, k, v, m, scaled=scaled)
    np.testing.assert_allclose(ctx.data, want_ctx, **TOL)
    np.testing.assert_allclose(w.data, want_w, **TOL)
    np.testing.assert_allclose(w.data.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    if masked:
        assert np.all(w.data[~mask] == 0.0)
    assert gradcheck(lambda a, b, c: attn(a, b, c, m), [q, k, v])


def test_dot_product_attention_scaling_is_sqrt_dq() -> None:
    q, k, v, _ = _attention_case(Dq=9, Dk=9, seed=4)
    _, w_scaled = nn.DotProductAttention(scaled=True)(q, k, v)
    _, w_plain = nn.DotProductAttention(scaled=False)(q / 3.0, k, v)
    np.testing.assert_allclose(w_scaled.data, w_plain.data, **TOL)


def test_masked_positions_get_no_gradient() -> None:
    q, k, v, mask = _attention_case(seed=5)
    kt, vt = tg.Tensor(k, requires_grad=True), tg.Tensor(v, requires_grad=True)
    ctx, w = nn.DotProductAttention()(tg.Tensor(q), kt, vt, mask)
    projection((ctx, w), seed=6)((ctx, w)).backward()
    assert np.all(vt.grad[~mask] == 0.0) and np.all(kt.grad[~mask] == 0.0)
    assert np.all(np.isfinite(kt.grad)) and np.any(kt.grad[mask] != 0)


# ============================================================================= gradients: layers
def _layer_fn(layer: nn.Module, kind: str) -> Callable[..., Any]:
    if kind == "lstm":
        return lambda x, h0, c0: layer(x, (h0, c0))
    return lambda x, h0: layer(x, h0)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_layer_gradcheck_inputs_and_state(kind: str) -> None:
    T, B, I, H, L = 5, 2, 3, 3, 2  # noqa: E741
    tg.manual_seed(1)
    layer = make_layer(kind, I, H, num_layers=L, bidirectional=True)
    x = rng(0).standard_normal((T, B, I))
    state = flat_tensors(random_state(kind, (2 * L, B, H), seed=1))
    assert gradcheck(_layer_fn(layer, kind), [x, *state])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_layer_parameter_gradients(kind: str) -> None:
    T, B, I, H, L = 5, 2, 3, 3, 2  # noqa: E741
    if kind == "lstm":
        H = 2  # keeps the element-by-element parameter check quick
    tg.manual_seed(2)
    layer = make_layer(kind, I, H, num_layers=L, bidirectional=True)
    x = tg.Tensor(rng(3).standard_normal((T, B, I)))
    state = as_tensors(random_state(kind, (2 * L, B, H), seed=4))
    loss = projection(layer(x, state), seed=5)
    check_parameter_gradients(layer, lambda: loss(layer(x, state)))


def test_gradcheck_batch_first_unbatched_and_no_state() -> None:
    tg.manual_seed(3)
    gru = make_layer("gru", 2, 3, num_layers=2, bidirectional=True, batch_first=True)
    assert gradcheck(lambda x: gru(x), [rng(0).standard_normal((2, 5, 2))])
    lstm = make_layer("lstm", 2, 2, num_layers=2, bidirectional=True)
    h0, c0 = random_state("lstm", (4, 2), seed=1)
    assert gradcheck(lambda x, h, c: lstm(x, (h, c)), [rng(2).standard_normal((5, 2)), h0, c0])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_gradcheck(kind: str) -> None:
    tg.manual_seed(4)
    cell = CELLS[kind](3, 2, dtype=F64)
    x = rng(0).standard_normal((2, 3))
    state = flat_tensors(random_state(kind, (2, 2), seed=1))
    fn = (lambda x, h, c: cell(x, (h, c))) if kind == "lstm" else (lambda x, h: cell(x, h))
    assert gradcheck(fn, [x, *state])
    xt, st_ = tg.Tensor(x), as_tensors(tuple(state)) if kind == "lstm" else tg.Tensor(state[0])
    loss = projection(cell(xt, st_), seed=3)
    check_parameter_gradients(cell, lambda: loss(cell(xt, st_)))


# ============================================================================= custom cells
class MinimalGated(nn.Module):
    """z = sigmoid(x Wz + h Uz), h' = (1 - z) h + z tanh(x Wh + h Uh); returns (h', h')."""

    def __init__(self, I: int, H: int, seed: int = 0) -> None:  # noqa: E741
        super().__init__()
        g = rng(seed)
        self.H = H
        self.Wz = nn.Parameter(g.uniform(-0.8, 0.8, (I, H)))
        self.Uz = nn.Parameter(g.uniform(-0.8, 0.8, (H, H)))
        self.Wh = nn.Parameter(g.uniform(-0.8, 0.8, (I, H)))
        self.Uh = nn.Parameter(g.uniform(-0.8, 0.8, (H, H)))

    def _zeros(self, x_t: Any) -> Any:
        return tg.Tensor(np.zeros(x_t.shape[:-1] + (self.H,), dtype=x_t.dtype))

    def forward(self, x_t: Any, h: Any) -> tuple[Any, Any]:
        h = self._zeros(x_t) if h is None else h
        z = (x_t @ self.Wz + h @ self.Uz).sigmoid()
        h = (1 - z) * h + z * (x_t @ self.Wh + h @ self.Uh).tanh()
        return h, h


class HoistedGated(MinimalGated):
    """The same cell with both input projections done once for the whole sequence."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.project_calls = 0

    def project(self, xs: Any) -> Any:
        self.project_calls += 1
        return tg.concat([xs @ self.Wz, xs @ self.Wh], axis=-1)

    def forward(self, xp: Any, h: Any) -> tuple[Any, Any]:
        xz, xh = xp.chunk(2, axis=-1)
        h = self._zeros(xz) if h is None else h
        z = (xz + h @ self.Uz).sigmoid()
        h = (1 - z) * h + z * (xh + h @ self.Uh).tanh()
        return h, h


class TupleHoistedGated(MinimalGated):
    """The same cell whose `project` returns the two projections as a tuple: each step gets a
    tuple of their slices."""

    def project(self, xs: Any) -> Any:
        return xs @ self.Wz, xs @ self.Wh

    def forward(self, xp: Any, h: Any) -> tuple[Any, Any]:
        xz, xh = xp
        h = self._zeros(xz) if h is None else h
        z = (xz + h @ self.Uz).sigmoid()
        h = (1 - z) * h + z * (xh + h @ self.Uh).tanh()
        return h, h


def minimal_gated_numpy(cell: MinimalGated, xs: np.ndarray, h: np.ndarray) -> tuple:
    ys = []
    for x in xs:
        z = ref.sigmoid(x @ cell.Wz.data + h @ cell.Uz.data)
        h = (1 - z) * h + z * np.tanh(x @ cell.Wh.data + h @ cell.Uh.data)
        ys.append(h)
    return np.stack(ys), h


def test_custom_cell_unroll_and_recurrent_forward() -> None:
    cell = MinimalGated(3, 4, seed=1)
    xs, h0 = rng(0).standard_normal((20, 2, 3)), rng(1).standard_normal((2, 4))
    want = minimal_gated_numpy(cell, xs, h0)
    assert_tree_close(nn.unroll(cell, xs, tg.Tensor(h0)), want)
    layer = nn.Recurrent(cell)
    assert_tree_close(layer(tg.Tensor(xs), tg.Tensor(h0)), want)
    assert [n for n, _ in layer.named_parameters()] == ["cell.Wz", "cell.Uz", "cell.Wh", "cell.Uh"]
    # batch_first: (B, T, I) in, (B, T, H) out
    ys, h = nn.Recurrent(cell, batch_first=True)(xs.transpose(1, 0, 2), h0)
    np.testing.assert_allclose(ys.data, want[0].transpose(1, 0, 2), **TOL)
    ys, h = nn.unroll(cell, xs.transpose(1, 0, 2), h0, batch_first=True)
    np.testing.assert_allclose(h.data, want[1], **TOL)
    # state=None reaches the cell, which starts from zeros
    assert_tree_close(nn.unroll(cell, xs), minimal_gated_numpy(cell, xs, np.zeros((2, 4))))


def test_custom_cell_gradcheck_20_steps() -> None:
    T, B, I, H = 20, 2, 2, 3  # noqa: E741
    cell = MinimalGated(I, H, seed=2)
    xs, h0 = rng(3).standard_normal((T, B, I)), rng(4).standard_normal((B, H))
    assert gradcheck(lambda x, h: nn.unroll(cell, x, h), [xs, h0])
    layer = nn.Recurrent(cell)
    assert gradcheck(lambda x, h: layer(x, h), [xs, h0])
    xt, ht = tg.Tensor(xs), tg.Tensor(h0)
    loss = projection(nn.unroll(cell, xt, ht), seed=5)
    check_parameter_gradients(cell, lambda: loss(nn.unroll(cell, xt, ht)))
    check_parameter_gradients(layer, lambda: loss(layer(xt, ht)))


def test_custom_cell_with_project_equals_plain() -> None:
    T, B, I, H = 7, 2, 3, 4  # noqa: E741
    plain, hoisted = MinimalGated(I, H, seed=6), HoistedGated(I, H, seed=6)
    xs, h0 = rng(7).standard_normal((T, B, I)), rng(8).standard_normal((B, H))
    loss = projection(nn.unroll(plain, xs, h0), seed=9)
    grads = []
    for cell in (plain, hoisted):
        x, h = tg.Tensor(xs, requires_grad=True), tg.Tensor(h0, requires_grad=True)
        out = nn.unroll(cell, x, h)
        loss(out).backward()
        grads.append(([t.data for t in flat_tensors(out)],
                      [x.grad, h.grad] + [p.grad for p in cell.parameters()]))
    assert hoisted.project_calls == 1  # once for the whole sequence, not per step
    for a, b in zip(grads[0][0] + grads[0][1], grads[1][0] + grads[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    assert gradcheck(lambda x, h: nn.unroll(hoisted, x, h), [xs, h0])


@pytest.mark.parametrize("checkpoint_every", [None, 3])
def test_custom_cell_project_may_return_a_tuple(checkpoint_every: Any) -> None:
    T, B, I, H = 7, 2, 3, 4  # noqa: E741
    plain, tupled = MinimalGated(I, H, seed=6), TupleHoistedGated(I, H, seed=6)
    xs, h0 = rng(7).standard_normal((T, B, I)), rng(8).standard_normal((B, H))
    want = minimal_gated_numpy(plain, xs, h0)
    assert_tree_close(nn.unroll(tupled, xs, h0, checkpoint_every=checkpoint_every), want)
    loss = projection(nn.unroll(plain, xs, h0), seed=9)
    grads = []
    for cell, every in ((plain, None), (tupled, checkpoint_every)):
        x, h = tg.Tensor(xs, requires_grad=True), tg.Tensor(h0, requires_grad=True)
        loss(nn.unroll(cell, x, h, checkpoint_every=every)).backward()
        grads.append([x.grad, h.grad] + [p.grad for p in cell.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_state", [False, True])
def test_unroll_builtin_cell_equals_layer(kind: str, with_state: bool) -> None:
    T, B, I, H = 6, 2, 3, 4  # noqa: E741
    layer, params = loaded_layer(kind, I, H, seed=12)
    cell = CELLS[kind](I, H, dtype=F64)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in params.items()})
    xs = rng(13).standard_normal((T, B, I))
    st1 = random_state(kind, (1, B, H), seed=14) if with_state else None
    cell_state = None if st1 is None else (
        tuple(tg.Tensor(s[0]) for s in st1) if kind == "lstm" else tg.Tensor(st1[0]))
    ys, final = nn.unroll(cell, xs, cell_state)  # y_t = h_t
    out, layer_final = layer(xs, st1)
    np.testing.assert_allclose(ys.data, out.data, **TOL)
    if kind == "lstm":
        assert isinstance(final, tuple)
        np.testing.assert_allclose(final[0].data, layer_final[0].data[0], **TOL)
        np.testing.assert_allclose(final[1].data, layer_final[1].data[0], **TOL)
        np.testing.assert_allclose(ys.data[-1], final[0].data, **TOL)
    else:
        np.testing.assert_allclose(final.data, layer_final.data[0], **TOL)
    # and the cell, called one step at a time, agrees with the unroll
    s = cell_state
    for t in range(T):
        s = cell(xs[t], s)
    assert_tree_close(s, final)


# ============================================================================= checkpointing
def _grads_of(run: Callable[..., Any], module: nn.Module, arrays: list[np.ndarray],
              seed: int = 0) -> list[np.ndarray]:
    """Outputs and gradients (inputs, then parameters) of a random projection of run(*tensors)."""
    module.zero_grad()
    ts = [tg.Tensor(a, requires_grad=True) for a in arrays]
    out = run(*ts)
    projection(out, seed=seed)(out).backward()
    res = [t.data.copy() for t in flat_tensors(out)] + [t.grad.copy() for t in ts]
    res += [p.grad.copy() for p in module.parameters()]
    module.zero_grad()
    return res


def _assert_bit_identical(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype == F64
        assert np.array_equal(x, y), f"item {i}: max |diff| {np.abs(x - y).max():.3g}"


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 10, 13])
def test_unroll_checkpoint_every_custom_cell_bit_identical(k: int) -> None:
    T = 10
    cell = MinimalGated(3, 4, seed=20)
    arrays = [rng(21).standard_normal((T, 2, 3)), rng(22).standard_normal((2, 4))]
    plain = _grads_of(lambda x, h: nn.unroll(cell, x, h), cell, arrays)
    ckpt = _grads_of(lambda x, h: nn.unroll(cell, x, h, checkpoint_every=k), cell, arrays)
    _assert_bit_identical(plain, ckpt)
    layer = nn.Recurrent(cell, checkpoint_every=k)
    _assert_bit_identical(plain, _grads_of(lambda x, h: layer(x, h), cell, arrays))


@pytest.mark.parametrize("k", [2, 4])
def test_unroll_checkpoint_every_hoisted_cell_and_no_state(k: int) -> None:
    cell = HoistedGated(3, 4, seed=23)
    arrays = [rng(24).standard_normal((2, 8, 3))]  # batch_first, state None
    plain = _grads_of(lambda x: nn.unroll(cell, x, batch_first=True), cell, arrays)
    ckpt = _grads_of(lambda x: nn.unroll(cell, x, batch_first=True, checkpoint_every=k), cell,
                     arrays)
    _assert_bit_identical(plain, ckpt)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_layer_checkpoint_every_bit_identical(kind: str, k: int) -> None:
    T, B, I, H, L = 6, 2, 3, 3, 2  # noqa: E741
    tg.manual_seed(30)
    plain = make_layer(kind, I, H, num_layers=L, bidirectional=True)
    ckpt = make_layer(kind, I, H, num_layers=L, bidirectional=True, checkpoint_every=k)
    ckpt.load_state_dict(plain.state_dict())
    arrays = [rng(31).standard_normal((T, B, I))]
    arrays += flat_tensors(random_state(kind, (2 * L, B, H), seed=32))
    want = _grads_of(_layer_fn(plain, kind), plain, arrays)
    got = _grads_of(_layer_fn(ckpt, kind), ckpt, arrays)
    _assert_bit_identical(want, got)


def test_layer_checkpoint_every_only_output_used() -> None:
    """A final state (c_n) that the loss ignores must not break the checkpointed backward."""
    tg.manual_seed(33)
    plain = make_layer("lstm", 2, 3, num_layers=2)
    ckpt = make_layer("lstm", 2, 3, num_layers=2, checkpoint_every=3)
    ckpt.load_state_dict(plain.state_dict())
    arrays = [rng(34).standard_normal((7, 2, 2))]
    want = _grads_of(lambda x: plain(x)[0], plain, arrays)
    got = _grads_of(lambda x: ckpt(x)[0], ckpt, arrays)
    _assert_bit_identical(want, got)


def test_checkpoint_function_matches_direct_call_with_dropout() -> None:
    lin = nn.Linear(3, 4, dtype=F64)

    def fn(x, h, scale):
        a = F.dropout((lin(x) + h).tanh(), 0.5, True) * scale
        return a, (a * h).sum(axis=1)

    x, h = rng(40).standard_normal((5, 3)), rng(41).standard_normal((5, 4))

    def run(use_checkpoint: bool) -> list[np.ndarray]:
        lin.zero_grad()
        xt, ht = tg.Tensor(x, requires_grad=True), tg.Tensor(h, requires_grad=True)
        tg.manual_seed(7)
        out = tg.checkpoint(fn, xt, ht, 2.0) if use_checkpoint else fn(xt, ht, 2.0)
        F.dropout(tg.Tensor(np.ones(100)), 0.5)  # the RNG moves on before the backward
        tg.manual_seed(99)
        projection(out, seed=42)(out).backward()
        after = F.dropout(tg.Tensor(np.ones(50)), 0.5).data  # backward must not move the RNG
        return [o.data for o in flat_tensors(out)] + [xt.grad, ht.grad, lin.weight.grad,
                                                      lin.bias.grad, after]

    direct, ckpt = run(False), run(True)
    assert (direct[0] == 0).any()  # dropout really dropped something
    for a, b in zip(direct, ckpt):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_function_gradcheck() -> None:
    w = rng(50).standard_normal((3, 3))

    def fn(x, h):
        return tg.checkpoint(lambda a, b: ((a @ tg.Tensor(w)) * b).tanh(), x, h)

    assert gradcheck(fn, [rng(51).standard_normal((2, 3)), rng(52).standard_normal((2, 3))])


# ============================================================================= bad input
def _bad_cases() -> list[Any]:
    g = rng(0)
    x = lambda *s: g.standard_normal(s).astype(np.float32)  # noqa: E731  (the layers' dtype)
    lin, ln, ln2 = nn.Linear(3, 2), nn.LayerNorm(4), nn.LayerNorm((3, 4))
    cells = {k: CELLS[k](3, 4) for k in CELLS}
    layers = {k: LAYERS[k](3, 4) for k in LAYERS}
    bf = nn.GRU(3, 4, batch_first=True)
    add, dot = nn.AdditiveAttention(3, 5, 6), nn.DotProductAttention()
    S = tg.ShapeError
    cases = [
        ("linear-rank", lambda: lin(x()), S, ["Linear", r"\(\.\.\., 3\)", r"got \(\)"]),
        ("linear-features", lambda: lin(x(2, 4)), S, ["Linear", r"\(\.\.\., 3\)", r"\(2, 4\)"]),
        ("layernorm-rank", lambda: ln2(x(4)), S, ["LayerNorm", r"\(\.\.\., 3, 4\)", r"\(4,\)"]),
        ("layernorm-features", lambda: ln(x(2, 5)), S,
         ["LayerNorm", r"\(\.\.\., 4\)", r"\(2, 5\)"]),
    ]
    for name, cell in cells.items():
        cname = type(cell).__name__
        state = (lambda s: (tg.Tensor(s), tg.Tensor(s))) if name == "lstm" else tg.Tensor
        cases += [
            (f"{name}cell-rank", lambda c=cell: c(x(2, 2, 3)), S,
             [cname, r"\(B, 3\)", r"\(2, 2, 3\)"]),
            (f"{name}cell-features", lambda c=cell: c(x(2, 5)), S,
             [cname, r"\(B, 3\)", r"\(2, 5\)"]),
            (f"{name}cell-state", lambda c=cell, s=state: c(x(2, 3), s(x(2, 5))), S,
             [cname, r"state", r"\(2, 4\)", r"\(2, 5\)"]),
            (f"{name}cell-state-batch", lambda c=cell, s=state: c(x(3), s(x(2, 4))), S,
             [cname, r"state", r"\(4,\)", r"\(2, 4\)"]),
        ]
    for name, layer in layers.items():
        lname = type(layer).__name__
        state = (lambda s: (tg.Tensor(s), tg.Tensor(s))) if name == "lstm" else tg.Tensor
        cases += [
            (f"{name}-rank", lambda m=layer: m(x(5, 2, 1, 3)), S,
             [lname, r"\(T, B, 3\)", r"\(5, 2, 1, 3\)"]),
            (f"{name}-rank1", lambda m=layer: m(x(5)), S, [lname, r"\(T, 3\)", r"\(5,\)"]),
            (f"{name}-features", lambda m=layer: m(x(5, 2, 4)), S,
             [lname, r"\(T, B, 3\)", r"\(5, 2, 4\)"]),
            (f"{name}-state", lambda m=layer, s=state: m(x(5, 2, 3), s(x(2, 2, 4))), S,
             [lname, "state", r"\(1, 2, 4\)", r"\(2, 2, 4\)"]),
            (f"{name}-state-hidden", lambda m=layer, s=state: m(x(5, 2, 3), s(x(1, 2, 3))), S,
             [lname, "state", r"\(1, 2, 4\)", r"\(1, 2, 3\)"]),
        ]
    cases += [
        ("gru-batch-first-features", lambda: bf(x(2, 5, 4)), S,
         ["GRU", r"\(B, T, 3\)", r"\(2, 5, 4\)"]),
        ("lstm-c-state", lambda: layers["lstm"](x(5, 2, 3), (tg.Tensor(x(1, 2, 4)),
                                                              tg.Tensor(x(1, 3, 4)))), S,
         ["LSTM", "state", r"\(1, 2, 4\)", r"\(1, 3, 4\)"]),
        ("additive-query-rank", lambda: add(x(2, 1, 3), x(2, 6, 5), x(2, 6, 2)), S,
         ["AdditiveAttention", r"query \(B, 3\)", r"\(2, 1, 3\)"]),
        ("additive-query-features", lambda: add(x(2, 4), x(2, 6, 5), x(2, 6, 2)), S,
         ["AdditiveAttention", r"query \(B, 3\)", r"got \(2, 4\)"]),
        ("additive-key-features", lambda: add(x(2, 3), x(2, 6, 4), x(2, 6, 2)), S,
         ["AdditiveAttention", r"keys \(B, T, 5\)", r"\(2, 6, 4\)"]),
        ("additive-keys-rank", lambda: add(x(2, 3), x(2, 5), x(2, 6, 2)), S,
         ["AdditiveAttention", r"keys \(B, T, 5\)", r"\(2, 5\)"]),
        ("dot-key-features", lambda: dot(x(2, 3), x(2, 6, 4), x(2, 6, 2)), S,
         ["DotProductAttention", r"keys \(B, T, 3\)", r"\(2, 6, 4\)"]),
        ("dot-values-length", lambda: dot(x(2, 3), x(2, 6, 3), x(2, 5, 2)), S,
         ["DotProductAttention", r"values \(B, T, Dv\)", r"\(2, 5, 2\)"]),
        ("additive-mask-shape", lambda: add(x(2, 3), x(2, 6, 5), x(2, 6, 2),
                                            np.ones((2, 5), bool)), S,
         ["AdditiveAttention", "mask", r"\(2, 5\)", r"\(2, 6\)"]),
        ("dot-mask-shape", lambda: dot(x(2, 3), x(2, 6, 3), x(2, 6, 2), np.ones((6,), bool)), S,
         ["DotProductAttention", "mask", r"\(6,\)", r"\(2, 6\)"]),
    ]
    return cases


BAD = _bad_cases()


@pytest.mark.parametrize("call,exc,fragments", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_message(call: Callable[[], Any], exc: type, fragments: list[str]) -> None:
    with pytest.raises(exc, match=".*".join(fragments)):
        call()


def test_lstm_state_that_is_not_a_tuple() -> None:
    f32 = np.float32
    h = tg.Tensor(np.zeros((2, 4), f32))
    with pytest.raises(ValueError, match=r"LSTMCell: .*tuple \(h, c\).*got Tensor"):
        nn.LSTMCell(3, 4)(np.zeros((2, 3), f32), h)
    h0 = tg.Tensor(np.zeros((1, 2, 4), f32))
    with pytest.raises(ValueError, match=r"LSTM: .*tuple \(h_0, c_0\).*got Tensor"):
        nn.LSTM(3, 4)(np.zeros((5, 2, 3), f32), h0)
    with pytest.raises(ValueError, match=r"LSTM: .*tuple"):
        nn.LSTM(3, 4)(np.zeros((5, 2, 3), f32), (h0, h0, h0))


def test_unbatched_state_error_shows_the_shapes_the_user_passed() -> None:
    # for unbatched input (T, I) the state is (L*D, H); the message must not show the internal
    # batch axis of 1 that the layer inserts
    with pytest.raises(ValueError, match=r"RNN: expected a state of shape \(1, 4\), got \(1, 5\)"):
        nn.RNN(3, 4)(np.zeros((5, 3), np.float32), np.zeros((1, 5), np.float32))


def test_cross_entropy_float_target() -> None:
    logits = tg.Tensor(np.zeros((3, 4)))
    with pytest.raises(TypeError, match=r"cross_entropy.*integer.*float64"):
        F.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("idx,bad", [(np.array([0, 10]), "10"), (np.array([[3, -1]]), "-1"),
                                     (np.array([11, 0]), "11")])
def test_embedding_out_of_range(idx: np.ndarray, bad: str) -> None:
    emb = nn.Embedding(10, 2)
    with pytest.raises(IndexError, match=rf"Embedding: index {bad} is out of range for 10 "
                                         r"embeddings.*0\.\.9"):
        emb(idx)


@pytest.mark.parametrize("idx", [np.array([0.0, 1.0]), [1.5], tg.Tensor(np.array([1.0]))])
def test_embedding_float_indices(idx: Any) -> None:
    with pytest.raises(TypeError, match=r"Embedding: indices must be integers, got dtype float"):
        nn.Embedding(10, 2)(idx)


def test_attention_mask_must_be_bool() -> None:
    q, k, v, mask = _attention_case()
    with pytest.raises(TypeError, match=r"DotProductAttention: mask must be a bool.*float64"):
        nn.DotProductAttention()(q, k, v, mask.astype(np.float64))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match=r"RNNCell: nonlinearity.*'gelu'"):
        nn.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"LSTM: num_layers must be >= 1, got 0"):
        nn.LSTM(3, 4, num_layers=0)
    with pytest.raises(ValueError, match=r"GRU: dropout must be in \[0, 1\], got 1.5"):
        nn.GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match=r"Embedding: padding_idx 5 is out of range"):
        nn.Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match=r"checkpoint_every must be a positive int, got 0"):
        nn.unroll(MinimalGated(2, 2), np.zeros((3, 1, 2)), checkpoint_every=0)


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_checkpointed_unroll_rejects_a_step_output_unlike_the_others(bad: str) -> None:
    """The segments' outputs are copied into one array as they come: an output of another
    shape or dtype must raise, not be broadcast or cast into it. (Per op: this cell's Python
    depends on a call counter, which a compiled unroll cannot see; see nn.unroll.)"""
    def cell(x_t: tg.Tensor, h: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        h = (x_t + h).tanh()
        if bad == "shape" and cell.calls == 3:
            y = h[:1]  # (1, 4) would broadcast into a (2, 4) slot
        elif bad == "dtype" and cell.calls == 3:
            y = tg.Tensor(h.data.astype(np.float32))
        else:
            y = h
        cell.calls += 1
        return y, h

    cell.calls = 0
    xs = tg.Tensor(rng(40).standard_normal((6, 2, 4)), requires_grad=True)
    with pytest.raises(tg.ShapeError, match=r"unroll: step 3 returned an output of shape"):
        nn.unroll(cell, xs, tg.Tensor(np.zeros((2, 4))), checkpoint_every=2, compile=False)
