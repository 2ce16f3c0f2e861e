"""Plain-numpy forward references that tests compare tinygrad_rnn against.

Nothing here imports tinygrad_rnn: these are independent re-statements of the maths, written for
clarity rather than speed. Every function takes and returns numpy arrays and keeps the dtype of its
floating inputs (float32 in -> float32 out).

Parameter layout and gate order follow PyTorch exactly:
- RNN:  h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)
- LSTM: gates (i, f, g, o) stacked in weight_ih (4H, I) / weight_hh (4H, H);
        c' = f*c + i*g, h' = o*tanh(c')
- GRU:  gates (r, z, n) stacked in weight_ih (3H, I) / weight_hh (3H, H);
        n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h
- Sequence layers: names weight_ih_l{k}[_reverse] etc., h_n ordered layer0-fwd, layer0-rev,
  layer1-fwd, ...; layer k>0 reads the previous layer's output (fwd|rev concatenated).

PROPOSAL (the library layer must match): `additive_attention` reads its parameters from
    "W_q.weight" (hidden, Dq), "W_k.weight" (hidden, Dk), "v.weight" (1, hidden)
i.e. nn.AdditiveAttention holds three bias-free nn.Linear submodules named W_q, W_k and v, and the
score of position t is  v^T tanh(W_q q + W_k k_t).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

Params = Mapping[str, np.ndarray]
State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # rows of weight_ih per hidden unit


# --------------------------------------------------------------------------------------------
# elementwise helpers


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-free and accurate to full relative precision in both tails.

    With e = exp(-|x|) <= 1: sigma(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0.
    """
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along `axis`, shifted by the max so exp never overflows."""
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log softmax = x - logsumexp(x), computed stably."""
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def _linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray]) -> np.ndarray:
    """x (..., in) @ w^T (in, out) + b (out,)."""
    y = x @ w.T
    return y if b is None else y + b


# --------------------------------------------------------------------------------------------
# cells: p has keys weight_ih, weight_hh and optionally bias_ih, bias_hh (missing = bias=False)


def rnn_cell(x: np.ndarray, h: np.ndarray, p: Params, nonlinearity: str = "tanh") -> np.ndarray:
    """Elman cell. x (B, I) or (I,), h (B, H) or (H,) -> h' of h's shape."""
    a = _linear(x, p["weight_ih"], p.get("bias_ih")) + _linear(h, p["weight_hh"], p.get("bias_hh"))
    if nonlinearity == "tanh":
        return np.tanh(a)
    if nonlinearity == "relu":
        return np.maximum(a, 0)
    raise ValueError(f"rnn_cell: unknown nonlinearity {nonlinearity!r} (use 'tanh' or 'relu')")


def lstm_cell(
    x: np.ndarray, h: np.ndarray, c: np.ndarray, p: Params
) -> Tuple[np.ndarray, np.ndarray]:
    """LSTM cell, gates (i, f, g, o). x (B, I), h, c (B, H) -> (h', c')."""
    a = _linear(x, p["weight_ih"], p.get("bias_ih")) + _linear(h, p["weight_hh"], p.get("bias_hh"))
    ai, af, ag, ao = np.split(a, 4, axis=-1)
    i, f, g, o = sigmoid(ai), sigmoid(af), np.tanh(ag), sigmoid(ao)
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def gru_cell(x: np.ndarray, h: np.ndarray, p: Params) -> np.ndarray:
    """GRU cell, gates (r, z, n); b_hn sits inside r * (...) as in PyTorch. x (B, I), h (B, H)."""
    gx = _linear(x, p["weight_ih"], p.get("bias_ih"))
    gh = _linear(h, p["weight_hh"], p.get("bias_hh"))
    xr, xz, xn = np.split(gx, 3, axis=-1)
    hr, hz, hn = np.split(gh, 3, axis=-1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1 - z) * n + z * h


# --------------------------------------------------------------------------------------------
# multi-layer, optionally bidirectional sequence layers


def _cell_params(params: Params, layer: int, reverse: bool) -> dict:
    """Pick weight_ih_l{k}[_reverse] etc. out of a layer state dict, renamed to cell names."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    out = {}
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        if name + suffix in params:
            out[name] = params[name + suffix]
    return out


def _run_direction(kind, x, p, h, c, nonlinearity, reverse):
    """One direction of one layer over time-major x (T, B, I). Returns (out (T, B, H), h, c)."""
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outs = [None] * x.shape[0]
    for t in steps:
        if kind == "rnn":
            h = rnn_cell(x[t], h, p, nonlinearity)
        elif kind == "lstm":
            h, c = lstm_cell(x[t], h, c, p)
        else:
            h = gru_cell(x[t], h, p)
        outs[t] = h  # reverse direction: output at t is the state after reading x[T-1..t]
    return np.stack(outs), h, c


def rnn_layer(
    kind: str,
    x: np.ndarray,
    params: Params,
    num_layers: int = 1,
    bidirectional: bool = False,
    batch_first: bool = False,
    state: Optional[State] = None,
    nonlinearity: str = "tanh",
):
    """nn.RNN / nn.LSTM / nn.GRU forward exactly as PyTorch defines it.

    kind: "rnn" | "lstm" | "gru"; x (T, B, I), (B, T, I) with batch_first, or unbatched (T, I).
    state: None (zeros), h0 (L*D, B, H), or (h0, c0) for LSTM.
    Returns (output (T, B, D*H), h_n (L*D, B, H)) -- LSTM: (output, (h_n, c_n)).
    """
    if kind not in GATES:
        raise ValueError(f"rnn_layer: unknown kind {kind!r} (use 'rnn', 'lstm' or 'gru')")
    x = np.asarray(x)
    unbatched = x.ndim == 2
    if unbatched:  # PyTorch accepts (T, I) with state (L*D, H); add a batch axis of 1
        x = x[:, None, :]
        if state is not None:
            state = tuple(s[:, None, :] for s in state) if kind == "lstm" else state[:, None, :]
    elif batch_first:
        x = x.transpose(1, 0, 2)

    num_dirs = 2 if bidirectional else 1
    hidden = params["weight_hh_l0"].shape[1]
    batch = x.shape[1]
    dtype = np.result_type(x, params["weight_ih_l0"])
    if state is None:
        h0 = np.zeros((num_layers * num_dirs, batch, hidden), dtype)
        c0 = np.zeros_like(h0)
    elif kind == "lstm":
        h0, c0 = state
    else:
        h0, c0 = state, None

    layer_in = x
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(num_dirs):
            idx = layer * num_dirs + d
            p = _cell_params(params, layer, reverse=d == 1)
            c_init = c0[idx] if kind == "lstm" else None
            out, h, c = _run_direction(kind, layer_in, p, h0[idx], c_init, nonlinearity, d == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_in = np.concatenate(outs, axis=-1)

    output = layer_in
    h_n = np.stack(h_n)
    c_n = np.stack(c_n) if kind == "lstm" else None
    if unbatched:
        output, h_n = output[:, 0], h_n[:, 0]
        c_n = c_n[:, 0] if c_n is not None else None
    elif batch_first:
        output = output.transpose(1, 0, 2)
    return (output, (h_n, c_n)) if kind == "lstm" else (output, h_n)


def make_params(
    kind: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    bias: bool = True,
    rng: Optional[np.random.Generator] = None,
    dtype=np.float64,
    scale: Optional[float] = None,
) -> dict:
    """Random layer state dict with PyTorch names/shapes, U(-scale, scale), scale = 1/sqrt(H)."""
    rng = np.random.default_rng(0) if rng is None else rng
    scale = 1.0 / np.sqrt(hidden_size) if scale is None else scale
    rows = GATES[kind] * hidden_size
    num_dirs = 2 if bidirectional else 1
    params = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else num_dirs * hidden_size
        for d in range(num_dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            shapes = {"weight_ih": (rows, in_size), "weight_hh": (rows, hidden_size)}
            if bias:
                shapes.update(bias_ih=(rows,), bias_hh=(rows,))
            for name, shape in shapes.items():
                params[name + sfx] = rng.uniform(-scale, scale, shape).astype(dtype)
    return params


# --------------------------------------------------------------------------------------------
# normalisation and attention


def layer_norm(
    x: np.ndarray,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing `normalized_shape` axes.

    The variance is the biased one (divide by N), as in PyTorch.
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"layer_norm: trailing shape of {x.shape} is not {shape}")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    mu = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def masked_softmax(scores: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """Softmax over the last axis where masked-out positions (mask False) get weight exactly 0.

    A row with no allowed position at all gets all-zero weights (not NaN).
    """
    if mask is None:
        return softmax(scores, axis=-1)
    mask = np.asarray(mask, dtype=bool)
    s = np.where(mask, scores, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # fully masked row: any shift will do
    e = np.where(mask, np.exp(np.where(mask, s - m, 0)), 0)
    total = np.sum(e, axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def additive_attention(
    query: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    params: Params,
    mask: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Bahdanau attention: score_t = v^T tanh(W_q q + W_k k_t).

    query (B, Dq), keys (B, T, Dk), values (B, T, Dv), mask (B, T) bool (True = may attend).
    Params "W_q.weight" (hid, Dq), "W_k.weight" (hid, Dk), "v.weight" (1, hid) -- see module doc.
    Returns (context (B, Dv), weights (B, T)).
    """
    q = query @ params["W_q.weight"].T  # (B, hid)
    k = keys @ params["W_k.weight"].T  # (B, T, hid)
    scores = (np.tanh(q[:, None, :] + k) @ params["v.weight"].T)[..., 0]  # (B, T)
    w = masked_softmax(scores, mask)
    return np.einsum("bt,btd->bd", w, values), w


def dot_product_attention(
    query: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    mask: Optional[np.ndarray] = None,
    scaled: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """score_t = q . k_t (/ sqrt(Dq) when scaled). query (B, D), keys (B, T, D), values (B, T, Dv).

    Returns (context (B, Dv), weights (B, T)); masked positions get weight exactly 0.
    """
    scores = np.einsum("bd,btd->bt", query, keys)
    if scaled:
        scores = scores / np.sqrt(query.shape[-1]).astype(scores.dtype)
    w = masked_softmax(scores, mask)
    return np.einsum("bt,btd->bd", w, values), w


# --------------------------------------------------------------------------------------------
# losses


def _reduce(loss: np.ndarray, reduction: str, name: str) -> np.ndarray:
    if reduction == "mean":
        return np.mean(loss)
    if reduction == "sum":
        return np.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: unknown reduction {reduction!r} (use 'mean', 'sum' or 'none')")


def cross_entropy(
    logits: np.ndarray, target: np.ndarray, reduction: str = "mean", ignore_index: int = -100
) -> np.ndarray:
    """-log softmax(logits)[n, target[n]]. logits (N, C), target int (N,).

    Entries whose target == ignore_index contribute 0 and are left out of the mean's count
    (all ignored -> mean is nan, like PyTorch).
    """
    target = np.asarray(target)
    keep = target != ignore_index
    safe = np.where(keep, target, 0)  # any valid class; the row is zeroed below
    logp = log_softmax(logits, axis=-1)
    nll = -np.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
    nll = np.where(keep, nll, 0).astype(logp.dtype)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return (np.sum(nll) / np.sum(keep)).astype(logp.dtype)
    return _reduce(nll, reduction, "cross_entropy")


def bce_with_logits(logits: np.ndarray, target: np.ndarray, reduction: str = "mean") -> np.ndarray:
    """-[t log sigma(x) + (1-t) log(1 - sigma(x))] = max(x, 0) - x t + log(1 + exp(-|x|))."""
    x = np.asarray(logits)
    loss = np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))
    return _reduce(loss, reduction, "bce_with_logits")


def binary_cross_entropy(probs: np.ndarray, target: np.ndarray, reduction: str = "mean"):
    """-[t log p + (1-t) log(1-p)] with each log clamped at >= -100, as PyTorch does."""
    with np.errstate(divide="ignore"):
        logp = np.maximum(np.log(probs), -100)
        log1mp = np.maximum(np.log1p(-probs), -100)
    return _reduce(-(target * logp + (1 - target) * log1mp), reduction, "binary_cross_entropy")


def mse(pred: np.ndarray, target: np.ndarray, reduction: str = "mean") -> np.ndarray:
    """(pred - target)^2, reduced."""
    return _reduce((pred - target) ** 2, reduction, "mse")
