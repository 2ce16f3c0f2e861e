"""Tests of the numpy references themselves (tests/numpy_reference.py).

The first part stands on its own: properties that pin the maths down without any other library.
The last part compares against PyTorch and is skipped when torch is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works with or without tests/__init__
import numpy_reference as ref  # noqa: E402

KINDS = ("rnn", "lstm", "gru")


def close(actual, desired, rtol=1e-12, atol=1e-14, **kw):
    """assert_allclose with float64-reference tolerances (room for BLAS summation order)."""
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, **kw)


def rng(seed=0):
    return np.random.default_rng(seed)


def cell_of(params, layer=0, reverse=False):
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    return {k[: -len(sfx)]: v for k, v in params.items() if k.endswith(sfx)}


def step(kind, x, state, p, nonlinearity="tanh"):
    if kind == "rnn":
        return ref.rnn_cell(x, state, p, nonlinearity)
    if kind == "lstm":
        return ref.lstm_cell(x, *state, p)
    return ref.gru_cell(x, state, p)


def random_state(kind, shape, r):
    h = r.standard_normal(shape)
    return (h, r.standard_normal(shape)) if kind == "lstm" else h


# --------------------------------------------------------------------------------------------
# cells


def test_sigmoid_is_stable_and_exact_at_extremes():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s32 = ref.sigmoid(np.array([-1000.0, 0.0, 1000.0], np.float32))
        s64 = ref.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert s32.dtype == np.float32
    np.testing.assert_array_equal(s32, [0, 0.5, 1])
    np.testing.assert_array_equal(s64, [0, 0.5, 1])
    x = np.linspace(-20, 20, 101)
    np.testing.assert_allclose(ref.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-14, atol=1e-300)


def test_lstm_forget_one_input_zero_keeps_cell():
    r = rng(1)
    I, H, B = 3, 4, 2
    p = ref.make_params("lstm", I, H, rng=r)
    p = cell_of(p)
    # zero the i and f rows, then drive them with huge biases: i = sigma(-1000) = 0, f = 1 exactly
    for w in (p["weight_ih"], p["weight_hh"]):
        w[: 2 * H] = 0
    p["bias_ih"][:H], p["bias_hh"][:H] = -1000, 0
    p["bias_ih"][H : 2 * H], p["bias_hh"][H : 2 * H] = 1000, 0
    h, c = r.standard_normal((B, H)), r.standard_normal((B, H))
    c0 = c.copy()
    for _ in range(5):
        h, c = ref.lstm_cell(r.standard_normal((B, I)), h, c, p)
        np.testing.assert_array_equal(c, c0)
        assert np.all(np.abs(h) <= np.abs(np.tanh(c0)))  # h' = o tanh(c') with 0 < o < 1


def test_lstm_zero_forget_forgets():
    r = rng(2)
    p = cell_of(ref.make_params("lstm", 3, 4, rng=r))
    p["weight_ih"][4:8] = 0
    p["weight_hh"][4:8] = 0
    p["bias_ih"][4:8], p["bias_hh"][4:8] = -1000, 0
    x = r.standard_normal((2, 3))
    h = r.standard_normal((2, 4))
    _, c_a = ref.lstm_cell(x, h, r.standard_normal((2, 4)), p)
    _, c_b = ref.lstm_cell(x, h, r.standard_normal((2, 4)), p)
    np.testing.assert_array_equal(c_a, c_b)  # the old cell contributes nothing


def test_gru_update_gate_one_keeps_h():
    r = rng(3)
    H = 4
    p = cell_of(ref.make_params("gru", 3, H, rng=r))
    p["weight_ih"][H : 2 * H] = 0
    p["weight_hh"][H : 2 * H] = 0
    p["bias_ih"][H : 2 * H], p["bias_hh"][H : 2 * H] = 1000, 0
    h = r.standard_normal((2, H))
    for _ in range(5):
        np.testing.assert_array_equal(ref.gru_cell(r.standard_normal((2, 3)), h, p), h)


def test_gru_update_gate_zero_gives_candidate_with_bhn_inside_reset():
    r = rng(4)
    H = 3
    p = cell_of(ref.make_params("gru", 2, H, rng=r))
    p["weight_ih"][H : 2 * H] = 0
    p["weight_hh"][H : 2 * H] = 0
    p["bias_ih"][H : 2 * H], p["bias_hh"][H : 2 * H] = -1000, 0
    # reset gate forced to 0: then n = tanh(W_in x + b_in), b_hn is multiplied away with W_hn h
    p["weight_ih"][:H] = 0
    p["weight_hh"][:H] = 0
    p["bias_ih"][:H], p["bias_hh"][:H] = -1000, 0
    x, h = r.standard_normal((5, 2)), r.standard_normal((5, H))
    expect = np.tanh(x @ p["weight_ih"][2 * H :].T + p["bias_ih"][2 * H :])
    close(ref.gru_cell(x, h, p), expect)


def test_rnn_cell_by_formula_tanh_and_relu():
    r = rng(5)
    p = cell_of(ref.make_params("rnn", 3, 4, rng=r))
    x, h = r.standard_normal((2, 3)), r.standard_normal((2, 4))
    a = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    close(ref.rnn_cell(x, h, p), np.tanh(a))
    close(ref.rnn_cell(x, h, p, "relu"), np.maximum(a, 0))
    with pytest.raises(ValueError):
        ref.rnn_cell(x, h, p, "gelu")


@pytest.mark.parametrize("kind", KINDS)
def test_cell_without_bias_equals_zero_bias(kind):
    r = rng(6)
    p = cell_of(ref.make_params(kind, 3, 4, rng=r))
    nob = {k: v for k, v in p.items() if k.startswith("weight")}
    zero = dict(nob, bias_ih=0 * p["bias_ih"], bias_hh=0 * p["bias_hh"])
    x, s = r.standard_normal((2, 3)), random_state(kind, (2, 4), r)
    np.testing.assert_array_equal(step(kind, x, s, nob), step(kind, x, s, zero))


@pytest.mark.parametrize("kind", KINDS)
def test_cells_keep_float32(kind):
    r = rng(7)
    p = cell_of(ref.make_params(kind, 3, 4, rng=r, dtype=np.float32))
    x = r.standard_normal((2, 3)).astype(np.float32)
    s = random_state(kind, (2, 4), r)
    s = tuple(a.astype(np.float32) for a in s) if kind == "lstm" else s.astype(np.float32)
    out = step(kind, x, s, p)
    for a in out if kind == "lstm" else (out,):
        assert a.dtype == np.float32


# --------------------------------------------------------------------------------------------
# sequence layers


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_state", [False, True])
def test_one_layer_equals_stepping_the_cell(kind, with_state):
    r = rng(10)
    T, B, I, H = 5, 2, 3, 4
    params = ref.make_params(kind, I, H, rng=r)
    x = r.standard_normal((T, B, I))
    state = random_state(kind, (1, B, H), r) if with_state else None
    out, hn = ref.rnn_layer(kind, x, params, state=state)

    if with_state:
        s = (state[0][0], state[1][0]) if kind == "lstm" else state[0]
    else:
        s = (np.zeros((B, H)), np.zeros((B, H))) if kind == "lstm" else np.zeros((B, H))
    p = cell_of(params)
    for t in range(T):
        s = step(kind, x[t], s, p)
        close(out[t], s[0] if kind == "lstm" else s)
    assert out.shape == (T, B, H)
    if kind == "lstm":
        np.testing.assert_array_equal(hn[0], s[0][None])
        np.testing.assert_array_equal(hn[1], s[1][None])
    else:
        np.testing.assert_array_equal(hn, s[None])


def test_rnn_layer_relu_nonlinearity():
    r = rng(11)
    params = ref.make_params("rnn", 3, 4, rng=r)
    x = r.standard_normal((4, 2, 3))
    out, _ = ref.rnn_layer("rnn", x, params, nonlinearity="relu")
    assert np.all(out >= 0)
    h = np.zeros((2, 4))
    for t in range(4):
        h = ref.rnn_cell(x[t], h, cell_of(params), "relu")
    close(out[-1], h)


@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional_reverse_half_is_reverse_run_on_flipped_input(kind):
    r = rng(12)
    T, B, I, H = 6, 3, 2, 4
    params = ref.make_params(kind, I, H, bidirectional=True, rng=r)
    x = r.standard_normal((T, B, I))
    out, hn = ref.rnn_layer(kind, x, params, bidirectional=True)
    assert out.shape == (T, B, 2 * H)

    fwd = {k: v for k, v in params.items() if not k.endswith("_reverse")}
    rev = {k[: -len("_reverse")]: v for k, v in params.items() if k.endswith("_reverse")}
    out_f, hn_f = ref.rnn_layer(kind, x, fwd)
    out_r, hn_r = ref.rnn_layer(kind, x[::-1], rev)
    close(out[..., :H], out_f)
    close(out[..., H:], out_r[::-1])
    # h_n: [fwd, rev]; the reverse final state is the reverse output at time 0
    h = hn[0] if kind == "lstm" else hn
    np.testing.assert_array_equal(h[0], out[-1, :, :H])
    np.testing.assert_array_equal(h[1], out[0, :, H:])
    if kind == "lstm":
        close(hn[1][1], hn_r[1][0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_layers_feed_the_previous_output(kind, bidirectional):
    r = rng(13)
    T, B, I, H, L = 4, 2, 3, 5, 3
    D = 2 if bidirectional else 1
    params = ref.make_params(kind, I, H, num_layers=L, bidirectional=bidirectional, rng=r)
    x = r.standard_normal((T, B, I))
    state = random_state(kind, (L * D, B, H), r)
    out, hn = ref.rnn_layer(kind, x, params, L, bidirectional, state=state)
    assert out.shape == (T, B, D * H)

    inp, hs, cs = x, [], []
    for k in range(L):
        pk = {n.replace(f"_l{k}", "_l0"): v for n, v in params.items() if f"_l{k}" in n}
        rows = slice(k * D, (k + 1) * D)
        sk = (state[0][rows], state[1][rows]) if kind == "lstm" else state[rows]
        inp, hk = ref.rnn_layer(kind, inp, pk, 1, bidirectional, state=sk)
        hs.append(hk[0] if kind == "lstm" else hk)
        if kind == "lstm":
            cs.append(hk[1])
    close(out, inp)
    if kind == "lstm":
        close(hn[0], np.concatenate(hs))
        close(hn[1], np.concatenate(cs))
    else:
        close(hn, np.concatenate(hs))


@pytest.mark.parametrize("kind", KINDS)
def test_batch_first_and_unbatched(kind):
    r = rng(14)
    T, B, I, H = 4, 3, 2, 3
    params = ref.make_params(kind, I, H, num_layers=2, bidirectional=True, rng=r)
    x = r.standard_normal((T, B, I))
    out, hn = ref.rnn_layer(kind, x, params, 2, True)
    out_bf, hn_bf = ref.rnn_layer(kind, x.transpose(1, 0, 2), params, 2, True, batch_first=True)
    np.testing.assert_array_equal(out_bf, out.transpose(1, 0, 2))
    np.testing.assert_array_equal(np.asarray(hn_bf), np.asarray(hn))  # h_n stays (L*D, B, H)
    # unbatched (T, I) == batch of one
    out_u, hn_u = ref.rnn_layer(kind, x[:, 1], params, 2, True)
    close(out_u, out[:, 1])
    h_u = hn_u[0] if kind == "lstm" else hn_u
    h = hn[0] if kind == "lstm" else hn
    close(h_u, h[:, 1])


def test_rnn_layer_keeps_float32():
    r = rng(15)
    params = ref.make_params("gru", 3, 4, rng=r, dtype=np.float32)
    out, hn = ref.rnn_layer("gru", r.standard_normal((3, 2, 3)).astype(np.float32), params)
    assert out.dtype == hn.dtype == np.float32


# --------------------------------------------------------------------------------------------
# layer norm


def test_layer_norm_normalises_trailing_axes():
    r = rng(20)
    x = 3 + 2 * r.standard_normal((4, 3, 5))
    y = ref.layer_norm(x, (3, 5), eps=0.0)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-14)
    close(y.var(axis=(1, 2)), 1)
    w, b = r.standard_normal(5), r.standard_normal(5)
    y1 = ref.layer_norm(x, 5, w, b, eps=1e-5)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    close(y1, (x - mu) / np.sqrt(var + 1e-5) * w + b)
    with pytest.raises(ValueError):
        ref.layer_norm(x, 4)


def test_layer_norm_constant_row_is_zero_not_nan():
    y = ref.layer_norm(np.full((2, 4), 7.0, np.float32), 4)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, 0)


# --------------------------------------------------------------------------------------------
# attention


def attention_inputs(r, B=3, T=5, D=4, Dv=2):
    return r.standard_normal((B, D)), r.standard_normal((B, T, D)), r.standard_normal((B, T, Dv))


def additive_params(r, Dq=4, Dk=4, hid=6):
    return {"W_q.weight": r.standard_normal((hid, Dq)), "W_k.weight": r.standard_normal((hid, Dk)),
            "v.weight": r.standard_normal((1, hid))}


@pytest.mark.parametrize("which", ["additive", "dot", "dot_unscaled"])
def test_attention_weights_sum_to_one_and_mask_is_exact(which):
    r = rng(21)
    q, k, v = attention_inputs(r)
    mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], bool)

    def run(mask):
        if which == "additive":
            return ref.additive_attention(q, k, v, additive_params(rng(22)), mask)
        return ref.dot_product_attention(q, k, v, mask, scaled=which == "dot")

    ctx, w = run(mask)
    assert ctx.shape == (3, 2) and w.shape == (3, 5)
    close(w.sum(-1), 1)
    assert np.all(w[~mask] == 0)
    np.testing.assert_array_equal(w[1], [0, 0, 0, 0, 1])  # a single allowed position takes it all
    close(ctx, np.einsum("bt,btd->bd", w, v))
    # an all-True mask is the same as no mask
    ctx_all, w_all = run(np.ones((3, 5), bool))
    ctx_none, w_none = run(None)
    close(w_all, w_none)
    close(w[2], w_none[2])
    # masking = renormalising the unmasked weights
    expect = w_none[0] * mask[0] / np.sum(w_none[0] * mask[0])
    close(w[0], expect)


def test_dot_product_attention_scaling_and_formula():
    r = rng(23)
    q, k, v = attention_inputs(r, D=9)
    _, w_scaled = ref.dot_product_attention(q, k, v, scaled=True)
    _, w_manual = ref.dot_product_attention(q / 3.0, k, v, scaled=False)
    close(w_scaled, w_manual)
    s = np.einsum("bd,btd->bt", q, k)
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(
        ref.dot_product_attention(q, k, v, scaled=False)[1], e / e.sum(-1, keepdims=True)
    )


def test_additive_attention_formula():
    r = rng(24)
    q, k, v = attention_inputs(r, B=2, T=3, D=4)
    p = additive_params(r)
    _, w = ref.additive_attention(q, k, v, p)
    for b in range(2):
        s = np.array([p["v.weight"][0] @ np.tanh(p["W_q.weight"] @ q[b] + p["W_k.weight"] @ k[b, t])
                      for t in range(3)])
        close(w[b], np.exp(s) / np.exp(s).sum())


def test_attention_stable_and_float32():
    r = rng(25)
    q, k, v = (a.astype(np.float32) for a in attention_inputs(r))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ctx, w = ref.dot_product_attention(1e4 * q, k, v, np.array([[1, 0, 1, 1, 1]] * 3, bool))
    assert ctx.dtype == w.dtype == np.float32
    assert np.all(np.isfinite(w)) and np.all(w[:, 1] == 0)


def test_fully_masked_row_gives_zero_weights():
    r = rng(26)
    q, k, v = attention_inputs(r, B=2)
    mask = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], bool)
    ctx, w = ref.dot_product_attention(q, k, v, mask)
    np.testing.assert_array_equal(w[0], 0)
    np.testing.assert_array_equal(ctx[0], 0)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**32 - 1), st.floats(0.1, 50),
)
def test_attention_property(B, T, seed, scale):
    r = rng(seed)
    q, k, v = attention_inputs(r, B=B, T=T)
    mask = r.random((B, T)) < 0.6
    mask[:, r.integers(T)] = True  # at least one allowed position per row
    _, w = ref.dot_product_attention(scale * q, k, v, mask)
    close(w.sum(-1), 1)
    assert np.all(w[~mask] == 0) and np.all(w >= 0)


# --------------------------------------------------------------------------------------------
# losses


def test_cross_entropy_is_minus_log_softmax_at_target():
    r = rng(30)
    logits, target = r.standard_normal((6, 4)), r.integers(0, 4, 6)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    each = -np.log(p[np.arange(6), target])
    close(ref.cross_entropy(logits, target, "none"), each)
    close(ref.cross_entropy(logits, target, "sum"), each.sum())
    close(ref.cross_entropy(logits, target), each.mean())
    with pytest.raises(ValueError):
        ref.cross_entropy(logits, target, "avg")


def test_cross_entropy_ignore_index_and_stability():
    r = rng(31)
    logits, target = r.standard_normal((5, 3)), np.array([0, -100, 2, 1, -100])
    keep = target != -100
    full = ref.cross_entropy(logits[keep], target[keep], "none")
    none = ref.cross_entropy(logits, target, "none")
    np.testing.assert_array_equal(none[~keep], 0)
    close(none[keep], full)
    close(ref.cross_entropy(logits, target), full.mean())
    close(ref.cross_entropy(logits, np.where(keep, target, 7), ignore_index=7), full.mean())
    assert np.isnan(ref.cross_entropy(logits, np.full(5, -100)))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        big = ref.cross_entropy(np.array([[1e4, 0.0, -1e4]], np.float32), np.array([1]))
    assert big.dtype == np.float32
    np.testing.assert_allclose(big, 1e4, rtol=1e-6)


def test_bce_with_logits_matches_naive_and_is_stable():
    r = rng(32)
    x, t = r.standard_normal(10) * 3, r.random(10)
    s = 1 / (1 + np.exp(-x))
    naive = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    close(ref.bce_with_logits(x, t, "none"), naive)
    close(ref.bce_with_logits(x, t), naive.mean())
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        x32, t32 = np.array([-1000.0, 1000.0], np.float32), np.array([1.0, 1.0], np.float32)
        out = ref.bce_with_logits(x32, t32, "none")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1000, 0], atol=1e-6)
    np.testing.assert_allclose(ref.binary_cross_entropy(s, t, "none"), naive, rtol=1e-10)
    # log(0) is clamped to -100, as PyTorch does
    p01, t10 = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    np.testing.assert_array_equal(ref.binary_cross_entropy(p01, t10, "none"), [100, 100])


def test_mse():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 1.0])
    np.testing.assert_array_equal(ref.mse(a, b, "none"), [1, 0, 9])
    assert ref.mse(a, b, "sum") == 10
    np.testing.assert_allclose(ref.mse(a, b), 10 / 3)


# --------------------------------------------------------------------------------------------
# against PyTorch (skipped without torch)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def to_torch_layer(torch, kind, I, H, L, bidirectional, bias, batch_first, params, nonlin="tanh"):
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    kw = {"nonlinearity": nonlin} if kind == "rnn" else {}
    m = cls(I, H, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
            dtype=torch.float64, **kw)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    return m


LAYER_CONFIGS = [  # num_layers, bidirectional, bias, batch_first
    (1, False, True, False),
    (2, True, True, False),
    (2, False, False, True),
    (3, True, False, True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L,bidirectional,bias,batch_first", LAYER_CONFIGS)
def test_layers_match_torch(torch, kind, L, bidirectional, bias, batch_first):
    r = rng(40)
    T, B, I, H = 5, 3, 4, 6
    D = 2 if bidirectional else 1
    params = ref.make_params(kind, I, H, L, bidirectional, bias, rng=r)
    m = to_torch_layer(torch, kind, I, H, L, bidirectional, bias, batch_first, params)
    x = r.standard_normal((B, T, I) if batch_first else (T, B, I))
    state = random_state(kind, (L * D, B, H), r)
    t_state = tuple(map(torch.from_numpy, state)) if kind == "lstm" else torch.from_numpy(state)
    with torch.no_grad():
        t_out, t_hn = m(torch.from_numpy(x), t_state)
    out, hn = ref.rnn_layer(kind, x, params, L, bidirectional, batch_first, state)
    np.testing.assert_allclose(out, t_out.numpy(), rtol=1e-12, atol=1e-13)
    if kind == "lstm":
        np.testing.assert_allclose(hn[0], t_hn[0].numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(hn[1], t_hn[1].numpy(), rtol=1e-12, atol=1e-13)
    else:
        np.testing.assert_allclose(hn, t_hn.numpy(), rtol=1e-12, atol=1e-13)


def test_relu_rnn_and_unbatched_match_torch(torch):
    r = rng(41)
    params = ref.make_params("rnn", 3, 4, 2, True, rng=r)
    m = to_torch_layer(torch, "rnn", 3, 4, 2, True, True, False, params, nonlin="relu")
    x = r.standard_normal((6, 3))
    with torch.no_grad():
        t_out, t_hn = m(torch.from_numpy(x))
    out, hn = ref.rnn_layer("rnn", x, params, 2, True, nonlinearity="relu")
    np.testing.assert_allclose(out, t_out.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hn, t_hn.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_cells_match_torch(torch, kind):
    r = rng(42)
    cls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind]
    p = cell_of(ref.make_params(kind, 3, 5, rng=r))
    m = cls(3, 5, dtype=torch.float64)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()})
    x, s = r.standard_normal((4, 3)), random_state(kind, (4, 5), r)
    with torch.no_grad():
        ts = tuple(map(torch.from_numpy, s)) if kind == "lstm" else torch.from_numpy(s)
        t_out = m(torch.from_numpy(x), ts)
    out = step(kind, x, s, p)
    for a, b in zip(out if kind == "lstm" else [out], t_out if kind == "lstm" else [t_out]):
        close(a, b.numpy())


def test_layer_norm_matches_torch(torch):
    r = rng(43)
    x, w, b = r.standard_normal((3, 4, 5)), r.standard_normal((4, 5)), r.standard_normal((4, 5))
    t = torch.nn.functional.layer_norm(torch.from_numpy(x), (4, 5), torch.from_numpy(w),
                                       torch.from_numpy(b), 1e-5)
    close(ref.layer_norm(x, (4, 5), w, b, 1e-5), t.numpy())


def test_losses_match_torch(torch):
    F = torch.nn.functional
    r = rng(44)
    logits, target = r.standard_normal((7, 5)) * 4, r.integers(0, 5, 7)
    target[[1, 4]] = -100
    for red in ("mean", "sum", "none"):
        t = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target), reduction=red)
        close(ref.cross_entropy(logits, target, red), t.numpy())
        x, y = r.standard_normal(6) * 5, r.random(6)
        t = F.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(y),
                                               reduction=red)
        close(ref.bce_with_logits(x, y, red), t.numpy())
        p = ref.sigmoid(x)
        t = F.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(y), reduction=red)
        np.testing.assert_allclose(ref.binary_cross_entropy(p, y, red), t.numpy(), rtol=1e-10)
        t = F.mse_loss(torch.from_numpy(x), torch.from_numpy(y), reduction=red)
        close(ref.mse(x, y, red), t.numpy())


def test_attention_matches_torch(torch):
    r = rng(45)
    q, k, v = attention_inputs(r, B=3, T=5, D=4, Dv=3)
    mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], bool)
    tq, tk, tv, tm = map(torch.from_numpy, (q, k, v, mask))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ctx = sdpa(tq[:, None], tk, tv, attn_mask=tm[:, None])  # one query per batch row
    close(ref.dot_product_attention(q, k, v, mask)[0], ctx[:, 0].numpy())
    # additive: the same maths spelled with torch Linear layers named as the proposal says
    p = additive_params(r, hid=7)
    lin = {n: torch.nn.Linear(*p[n + ".weight"].shape[::-1], bias=False, dtype=torch.float64)
           for n in ("W_q", "W_k", "v")}
    for n, layer in lin.items():
        layer.weight.data = torch.from_numpy(p[n + ".weight"])
    s = lin["v"](torch.tanh(lin["W_q"](tq)[:, None] + lin["W_k"](tk)))[..., 0]
    w = torch.softmax(s.masked_fill(~tm, float("-inf")), -1)
    ctx_ref, w_ref = ref.additive_attention(q, k, v, p, mask)
    np.testing.assert_allclose(w_ref, w.detach().numpy(), rtol=1e-12, atol=1e-15)
    close(ctx_ref, (w[..., None] * tv).sum(1).detach().numpy())
