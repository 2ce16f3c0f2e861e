"""`tg.diagnostics.gradient_flow` (||dL/dh_t|| for every t) and `plot_gradient_flow`.

gradient_flow is checked against quantities computed in plain numpy, never with the library:
the closed form ||(W^T)^(T-t) G|| of a linear recurrence, and a hand-written BPTT of a tanh RNN
with readout and MSE loss (the total derivative through every path: the step's own output and
all later steps). Then the qualitative picture it exists for: a tanh RNN with small weights
decays geometrically, an LSTM whose forget gate is ~1 barely decays.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import nn

F64 = np.float64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- models
class LinearCell(nn.Module):
    """h_t = W h_{t-1} + U x_t (batch rows: h_t = h_{t-1} W^T + x_t U^T); y_t = h_t."""

    def __init__(self, W: np.ndarray, U: np.ndarray) -> None:
        super().__init__()
        self.W, self.U = nn.Parameter(W.copy()), nn.Parameter(U.copy())

    def forward(self, x_t, h):
        h = h @ self.W.T + x_t @ self.U.T
        return h, h


class TanhRNN(nn.Module):
    """A user Module with the convention model(x_chunk, h) -> (outputs, h)."""

    def __init__(self, W, U, b, V) -> None:
        super().__init__()
        self.W, self.U, self.b, self.V = (nn.Parameter(a.copy()) for a in (W, U, b, V))

    def forward(self, x, h):
        hs = []
        for x_t in tg.unbind(tg.Tensor(x) if not isinstance(x, tg.Tensor) else x, 0):
            h = (x_t @ self.W.T + h @ self.U.T + self.b).tanh()
            hs.append(h)
        return tg.stack(hs, 0) @ self.V.T, h


class TanhCell(nn.Module):
    def __init__(self, W, U, b) -> None:
        super().__init__()
        self.W, self.U, self.b = (nn.Parameter(a.copy()) for a in (W, U, b))

    def forward(self, x_t, h):
        h = (x_t @ self.W.T + h @ self.U.T + self.b).tanh()
        return h, h


class WithReadout(nn.Module):
    """Any sequence layer followed by y = h V^T."""

    def __init__(self, layer: nn.Module, V: np.ndarray) -> None:
        super().__init__()
        self.layer, self.V = layer, nn.Parameter(V.copy())

    def forward(self, x, state):
        hs, state = self.layer(x, state)
        return hs @ self.V.T, state


def last_step_loss(G: np.ndarray):
    """L = sum(h_T * G): a loss of the last output only (outputs (T, B, H), time-major)."""
    Gt = tg.Tensor(G)
    return lambda outputs: (outputs[-1] * Gt).sum()


# ----------------------------------------------------------------------------- exact values
def test_linear_cell_norms_are_the_closed_form():
    """dL/dh_t = (W^T)^(T-t) G for L = sum(h_T * G) (per batch column), exactly."""
    T, B, I, H = 12, 3, 2, 5
    r = np.random.default_rng(0)
    W = r.normal(0, 0.45, (H, H))
    U = r.normal(size=(H, I))
    G = r.normal(size=(B, H))
    xs = r.normal(size=(T, B, I))
    model = nn.Recurrent(LinearCell(W, U))
    norms = tg.diagnostics.gradient_flow(model, xs, last_step_loss(G),
                                         state=tg.Tensor(r.normal(size=(B, H))))
    want = [np.linalg.norm(np.linalg.matrix_power(W.T, T - t) @ G.T) for t in range(1, T + 1)]
    assert isinstance(norms, np.ndarray) and norms.shape == (T,) and norms.dtype == F64
    np.testing.assert_allclose(norms, want, rtol=1e-10)
    assert norms[-1] == pytest.approx(np.linalg.norm(G), rel=1e-12)


def ref_tanh_rnn_flow(W, U, b, V, xs, ys, h0):
    """||dL/dh_t||, t = 1..T, for L = mean((h_t V^T - y_t)^2) over all steps: hand BPTT."""
    T = len(xs)
    hs = [h0]
    for t in range(T):
        hs.append(np.tanh(xs[t] @ W.T + hs[-1] @ U.T + b))
    n = ys.size
    norms = np.zeros(T)
    carry = np.zeros_like(h0)  # dL/dh_t through step t+1 and later
    for t in range(T, 0, -1):
        dh = 2.0 * (hs[t] @ V.T - ys[t - 1]) / n @ V + carry  # own output + the future
        norms[t - 1] = np.linalg.norm(dh)
        carry = (dh * (1.0 - hs[t] ** 2)) @ U
    return norms


@pytest.mark.parametrize("kind", ["module", "recurrent", "builtin"])
def test_tanh_rnn_norms_are_the_total_derivative_through_every_path(kind):
    T, B, I, H, O = 10, 4, 3, 6, 2
    r = np.random.default_rng(1)
    W, U = r.normal(0, 0.6, (H, I)), r.normal(0, 0.5, (H, H))
    b, V = r.normal(0, 0.2, (H,)), r.normal(size=(O, H))
    xs, ys = r.normal(size=(T, B, I)), r.normal(size=(T, B, O))
    h0 = r.normal(0, 0.5, (B, H))
    if kind == "module":
        model, state = TanhRNN(W, U, b, V), tg.Tensor(h0)
    elif kind == "recurrent":
        model, state = WithReadout(nn.Recurrent(TanhCell(W, U, b)), V), tg.Tensor(h0)
    else:
        rnn = nn.RNN(I, H, dtype=F64)
        rnn.load_state_dict({"weight_ih_l0": W, "weight_hh_l0": U, "bias_ih_l0": b / 2,
                             "bias_hh_l0": b - b / 2})
        model, state = WithReadout(rnn, V), tg.Tensor(h0[None])
    norms = tg.diagnostics.gradient_flow(model, xs, lambda out: F.mse_loss(out, ys), state=state)
    np.testing.assert_allclose(norms, ref_tanh_rnn_flow(W, U, b, V, xs, ys, h0), rtol=1e-10)


def test_a_tuple_state_reports_its_first_tensor_for_builtin_and_custom_alike():
    """nn.LSTM (state (h_n, c_n) stacked over layers) and nn.Recurrent(nn.LSTMCell) with the
    same parameters: the same ||dL/dh_t||."""
    T, B, I, H = 8, 2, 3, 4
    r = np.random.default_rng(2)
    lstm = nn.LSTM(I, H, dtype=F64)
    cell = nn.LSTMCell(I, H, dtype=F64)
    cell.load_state_dict({k[:-3]: v for k, v in lstm.state_dict().items()})
    xs = r.normal(size=(T, B, I))
    G = r.normal(size=(B, H))
    a = tg.diagnostics.gradient_flow(lstm, xs, last_step_loss(G))
    b = tg.diagnostics.gradient_flow(nn.Recurrent(cell), xs, last_step_loss(G))
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert np.all(a > 0)


# ----------------------------------------------------------------------------- the picture
def _rnn(I, H, seed, W_hh=None):
    tg.manual_seed(seed)
    rnn = nn.RNN(I, H, dtype=F64)
    if W_hh is not None:
        rnn.weight_hh_l0.data[...] = W_hh
    return rnn


def test_a_tanh_rnn_with_small_weights_decays_geometrically():
    T, B, I, H = 30, 3, 4, 8
    r = np.random.default_rng(3)
    Q, _ = np.linalg.qr(r.normal(size=(H, H)))
    W_hh = 0.5 * Q  # spectral norm exactly 0.5
    rnn = _rnn(I, H, 3, W_hh)
    norms = tg.diagnostics.gradient_flow(rnn, r.normal(size=(T, B, I)),
                                         last_step_loss(r.normal(size=(B, H))))
    ratios = norms[:-1] / norms[1:]  # ||dL/dh_{t-1}|| / ||dL/dh_t||, going back in time
    # |tanh'| <= 1, so every step back multiplies the norm by at most ||W_hh||_2 = 0.5
    assert np.all(ratios <= 0.5 + 1e-12), ratios
    assert norms[0] <= 0.5 ** (T - 1) * norms[-1] * (1 + 1e-9)


def test_an_lstm_with_forget_gate_near_one_decays_much_more_slowly_than_a_tanh_rnn():
    T, B, I, H = 60, 4, 4, 16
    r = np.random.default_rng(4)
    xs = r.normal(size=(T, B, I))
    G = r.normal(size=(B, H))
    tg.manual_seed(4)
    lstm = nn.LSTM(I, H, dtype=F64)
    lstm.bias_hh_l0.data[H:2 * H] = 5.0  # gates i, f, g, o: f = sigmoid(... + 5) ~ 0.99
    lstm_norms = tg.diagnostics.gradient_flow(lstm, xs, last_step_loss(G))
    rnn_norms = tg.diagnostics.gradient_flow(_rnn(I, H, 4), xs, last_step_loss(G))
    lstm_rel = lstm_norms[0] / lstm_norms[-1]
    rnn_rel = rnn_norms[0] / rnn_norms[-1]
    assert rnn_rel < 1e-6, rnn_rel  # the tanh RNN has forgotten step 1
    assert lstm_rel > 1e-3, lstm_rel  # the LSTM has not
    assert lstm_rel > 1e4 * rnn_rel


# ----------------------------------------------------------------------------- side effects
def test_gradient_flow_leaves_every_grad_and_parameter_untouched():
    T, B, I, H, O = 6, 2, 3, 4, 2
    r = np.random.default_rng(5)
    model = TanhRNN(r.normal(size=(H, I)), r.normal(0, 0.5, (H, H)), r.normal(size=(H,)),
                    r.normal(size=(O, H)))
    model.W.grad = r.normal(size=(H, I))  # mid-accumulation, as in a training loop
    model.U.grad = r.normal(size=(H, H))
    before_grads = {n: (None if p.grad is None else p.grad.copy())
                    for n, p in model.named_parameters()}
    before_data = {n: p.data.copy() for n, p in model.named_parameters()}
    xs = tg.Tensor(r.normal(size=(T, B, I)), requires_grad=True)  # a leaf that wants grad too
    h0 = tg.Tensor(r.normal(size=(B, H)), requires_grad=True)
    norms = tg.diagnostics.gradient_flow(model, xs, lambda out: (out * out).mean(), state=h0)
    assert norms.shape == (T,) and np.all(np.isfinite(norms)) and np.all(norms > 0)
    for name, p in model.named_parameters():
        want = before_grads[name]
        if want is None:
            assert p.grad is None, name
        else:
            assert np.array_equal(p.grad, want), name
        assert np.array_equal(p.data, before_data[name]), name
    assert xs.grad is None and h0.grad is None


# ----------------------------------------------------------------------------- plotting
def test_plot_gradient_flow_writes_a_png_with_a_log_scale(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    axes: list[Any] = []
    real_subplots = plt.subplots

    def spy(*args, **kwargs):
        fig, ax = real_subplots(*args, **kwargs)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", spy)
    path = tmp_path / "flow.png"
    curves = {"rnn": np.geomspace(1e-8, 1.0, 40), "lstm": np.linspace(0.3, 1.0, 40)}
    out = tg.diagnostics.plot_gradient_flow(curves, path)
    assert str(out) == str(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert axes and all(ax.get_yscale() == "log" for ax in axes)


def test_plot_gradient_flow_without_matplotlib_names_the_plot_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` -> ImportError
    path = tmp_path / "flow.png"
    with pytest.raises(ImportError, match="matplotlib") as info:
        tg.diagnostics.plot_gradient_flow({"rnn": [1.0, 0.1]}, path)
    assert "plot" in str(info.value) and "tinygrad_rnn[plot]" in str(info.value)
    assert not path.exists()
