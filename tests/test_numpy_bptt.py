"""Tests of the hand-written BPTT yardstick (benchmarks/numpy_bptt.py).

Gradients are checked against float64 central differences of loss = sum(hs * G) with a random G
(not all ones, so a wrong transpose or a swapped gate cannot hide), and the forward against the
independent reference layer in tests/numpy_reference.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = Path(__file__).resolve().parents[1]
for _dir in (_ROOT / "tests", _ROOT / "benchmarks"):  # works with or without __init__ files
    sys.path.insert(0, str(_dir))
import numpy_bptt as bptt  # noqa: E402
import numpy_reference as ref  # noqa: E402

KINDS = ("rnn", "lstm", "gru")
SHAPE = (4, 2, 3, 4)  # T, B, I, H


def problem(kind, seed=0, dtype=np.float64, bias=True, with_state=True, shape=SHAPE):
    """Random cell-named params, x (T, B, I), h0, c0 (B, H) or None, and G (T, B, H)."""
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    # scale 0.7 > 1/sqrt(H): gates away from their linear regime, so errors show
    p = ref.make_params(kind, I, H, bias=bias, rng=rng, dtype=dtype, scale=0.7)
    params = {k[: -len("_l0")]: v for k, v in p.items()}
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) if with_state else None
    c0 = rng.standard_normal((B, H)).astype(dtype) if with_state and kind == "lstm" else None
    G = rng.standard_normal((T, B, H)).astype(dtype)
    return params, x, h0, c0, G


def numeric_grads(kind, params, x, h0, c0, G, eps=1e-6):
    """Central differences of sum(hs * G) w.r.t. every parameter and input."""
    B, H = G.shape[1:]
    inputs = dict(params, x=x, h0=h0 if h0 is not None else np.zeros((B, H)))
    if kind == "lstm":
        inputs["c0"] = c0 if c0 is not None else np.zeros((B, H))

    def loss():
        p = {k: v for k, v in inputs.items() if k not in ("x", "h0", "c0")}
        hs, _ = bptt.forward(kind, p, inputs["x"], inputs["h0"], inputs.get("c0"))
        return float(np.sum(hs * G))

    grads = {}
    for name, arr in inputs.items():
        arr = inputs[name] = arr.copy()
        g = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = loss()
            arr[idx] = old - eps
            down = loss()
            arr[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias,with_state", [(True, True), (False, True), (True, False)])
def test_backward_matches_central_differences(kind, bias, with_state):
    params, x, h0, c0, G = problem(kind, seed=1, bias=bias, with_state=with_state)
    hs, grads = bptt.train_step(kind, params, x, G, h0, c0)
    expect = numeric_grads(kind, params, x, h0, c0, G)
    assert set(grads) == set(expect)
    for name, g in expect.items():
        assert grads[name].shape == g.shape, name
        np.testing.assert_allclose(grads[name], g, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 3, 2, 5)])
def test_backward_other_shapes(kind, shape):
    params, x, h0, c0, G = problem(kind, seed=2, shape=shape)
    _, grads = bptt.train_step(kind, params, x, G, h0, c0)
    expect = numeric_grads(kind, params, x, h0, c0, G)
    for name, g in expect.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_state", [False, True])
def test_forward_matches_reference_layer(kind, with_state):
    params, x, h0, c0, _ = problem(kind, seed=3, with_state=with_state)
    hs, _ = bptt.forward(kind, params, x, h0, c0)
    layer_params = {k + "_l0": v for k, v in params.items()}
    state = None
    if with_state:
        state = (h0[None], c0[None]) if kind == "lstm" else h0[None]
    out, _ = ref.rnn_layer(kind, x, layer_params, state=state)
    np.testing.assert_allclose(hs, out, rtol=1e-12, atol=1e-14)
    # layer-style names work too, and gradients come back under them
    _, grads = bptt.train_step(kind, layer_params, x, np.ones_like(hs), h0, c0)
    assert {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"} <= set(grads)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_stays_float32(kind):
    params, x, h0, c0, G = problem(kind, seed=4, dtype=np.float32)
    hs, grads = bptt.train_step(kind, params, x, G, h0, c0)
    assert hs.dtype == np.float32
    for name, g in grads.items():
        assert g.dtype == np.float32, name
    # and agrees with the float64 computation to float32 accuracy
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    c64 = None if c0 is None else c0.astype(np.float64)
    hs64, grads64 = bptt.train_step(kind, p64, x.astype(np.float64), G.astype(np.float64),
                                    h0.astype(np.float64), c64)
    np.testing.assert_allclose(hs, hs64, rtol=1e-4, atol=1e-5)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads64[name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_saturated_gates_raise_no_warnings(kind):
    params, x, h0, c0, G = problem(kind, seed=5, dtype=np.float32)
    x = x * np.float32(1000)  # pre-activations in the thousands: exp would overflow in float32
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        hs, grads = bptt.train_step(kind, params, x, G, h0, c0)
    assert np.all(np.isfinite(hs))
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_are_not_mutated(kind):
    params, x, h0, c0, G = problem(kind, seed=6)
    before = [a.copy() for a in (*params.values(), x, h0, G)]
    bptt.train_step(kind, params, x, G, h0, c0)
    for a, b in zip(before, (*params.values(), x, h0, G)):
        np.testing.assert_array_equal(a, b)


def test_unknown_kind_and_mismatched_cache():
    params, x, h0, _, G = problem("rnn")
    with pytest.raises(ValueError):
        bptt.forward("lstmx", params, x)
    _, cache = bptt.forward("rnn", params, x, h0)
    with pytest.raises(ValueError):
        bptt.backward("gru", params, cache, G)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_torch_autograd(kind):
    torch = pytest.importorskip("torch")
    params, x, h0, c0, G = problem(kind, seed=7)
    _, grads = bptt.train_step(kind, params, x, G, h0, c0)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    m = cls(*SHAPE[2:], dtype=torch.float64)
    m.load_state_dict({k + "_l0": torch.from_numpy(v) for k, v in params.items()})
    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0[None], requires_grad=True)
    if kind == "lstm":
        tc0 = torch.tensor(c0[None], requires_grad=True)
        out, _ = m(tx, (th0, tc0))
    else:
        out, _ = m(tx, th0)
    (out * torch.from_numpy(G)).sum().backward()
    for name in params:
        np.testing.assert_allclose(grads[name], getattr(m, name + "_l0").grad.numpy(),
                                   rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["h0"], th0.grad.numpy()[0], rtol=1e-10, atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(grads["c0"], tc0.grad.numpy()[0], rtol=1e-10, atol=1e-12)
