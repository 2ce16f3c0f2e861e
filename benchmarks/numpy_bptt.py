"""Hand-written numpy BPTT for single-layer RNN (tanh), LSTM and GRU: the speed yardstick.

This is what a careful person writes by hand without an autodiff engine; the library's tape-based
layers are timed against it. It does not import tinygrad_rnn.

Layout: time-major x (T, B, I); PyTorch parameter names and gate order (LSTM i, f, g, o;
GRU r, z, n). `params` holds weight_ih, weight_hh and optionally bias_ih, bias_hh (names with the
layer suffix "_l0" are accepted too; gradients come back under the names given). The computation
runs in x's dtype: float32 stays float32.

The tricks, each explained where it is used:
1. The input projection of all T steps is ONE GEMM before the time loop.
2. sigmoid(a) = (1 + tanh(a/2)) / 2: overflow-free for any input, and by pre-halving the sigmoid
   gates' weight rows once, ONE np.tanh call covers all the sigmoid gates of a step (LSTM: all
   four gates, after moving g to the end). Its error is absolute (~1 ulp of 1), not relative:
   sigmoid values below ~1e-8 lose relative digits, which no gate can notice.
3. Activations are stored; element-wise local derivatives are computed for all T at once before
   the backward loop, which then does only the per-step work: a few in-place multiplies and one
   recurrent GEMM.
4. Each weight gradient is ONE GEMM after the loop over the stacked (T*B, G) gate gradients.
5. Preallocated buffers and `out=` everywhere in the loops; hidden states live in one (T+1, B, H)
   buffer whose first row is h0, so "previous states" is a view, not a concatenation.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import numpy as np

Cache = dict
_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _unpack(kind: str, params: dict, dtype) -> Tuple[dict, dict]:
    """Cell-named arrays in `dtype` (zeros for a missing bias), and the caller's key for each."""
    if kind not in ("rnn", "lstm", "gru"):
        raise ValueError(f"unknown kind {kind!r} (use 'rnn', 'lstm' or 'gru')")
    arrays, keys = {}, {}
    for name in _NAMES:
        key = name if name in params else name + "_l0"
        if key in params:
            arrays[name] = np.asarray(params[key], dtype=dtype)
            keys[name] = key
    for name in ("bias_ih", "bias_hh"):
        if name not in arrays:  # bias=False: zeros cost one add, and keep the code single-path
            arrays[name] = np.zeros(arrays["weight_hh"].shape[0], dtype)
    return arrays, keys


def _lstm_perm(H: int) -> np.ndarray:
    """Row order (i, f, o, g): the three sigmoid gates contiguous, then the tanh gate."""
    return np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]


# --------------------------------------------------------------------------------------------
# forward


def forward(
    kind: str,
    params: dict,
    x: np.ndarray,
    h0: Optional[np.ndarray] = None,
    c0: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, Cache]:
    """Run the layer over x (T, B, I) from h0 (B, H) [and c0]. Returns (hs (T, B, H), cache).

    hs is a view into the cache: do not modify it before calling backward.
    """
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    x = x.astype(dtype, copy=False)
    p, keys = _unpack(kind, params, dtype)
    T, B, I = x.shape
    H = p["weight_hh"].shape[1]
    h_all = np.empty((T + 1, B, H), dtype)  # h_all[0] = h0, h_all[t+1] = h_t
    h_all[0] = 0 if h0 is None else h0
    cache = {"kind": kind, "x": x, "h_all": h_all, "keys": keys}
    x2 = x.reshape(T * B, I)

    if kind == "rnn":
        # trick 1: every step's input projection (both biases folded in) in one GEMM
        xp = (x2 @ p["weight_ih"].T).reshape(T, B, H)
        xp += p["bias_ih"] + p["bias_hh"]
        w_hh_t = p["weight_hh"].T
        for t in range(T):
            h = h_all[t + 1]
            np.matmul(h_all[t], w_hh_t, out=h)
            h += xp[t]
            np.tanh(h, out=h)
        cache.update(w_ih=p["weight_ih"], w_hh=p["weight_hh"])

    elif kind == "lstm":
        perm = _lstm_perm(H)
        w_ih, w_hh = p["weight_ih"][perm], p["weight_hh"][perm]  # (i, f, o, g) row order
        bias = (p["bias_ih"] + p["bias_hh"])[perm]
        # trick 2: halve the sigmoid rows so tanh of the pre-activation gives tanh(a/2) there
        half = np.ones(4 * H, dtype)
        half[:3 * H] = 0.5
        xp = (x2 @ (w_ih * half[:, None]).T).reshape(T, B, 4 * H)
        xp += bias * half
        w_hh_t = (w_hh * half[:, None]).T
        gates = np.empty((T, B, 4 * H), dtype)  # activated gates, (i, f, o, g)
        c_all = np.empty((T + 1, B, H), dtype)
        c_all[0] = 0 if c0 is None else c0
        tanh_c = np.empty((T, B, H), dtype)
        ig = np.empty((B, H), dtype)
        for t in range(T):
            a = gates[t]
            np.matmul(h_all[t], w_hh_t, out=a)
            a += xp[t]
            np.tanh(a, out=a)  # one call: tanh(a/2) for i, f, o and tanh(a) for g
            s = a[:, :3 * H]
            s *= 0.5
            s += 0.5  # sigmoid = (1 + tanh(a/2)) / 2
            i, f, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            c = c_all[t + 1]
            np.multiply(f, c_all[t], out=c)
            np.multiply(i, g, out=ig)
            c += ig
            np.tanh(c, out=tanh_c[t])
            np.multiply(o, tanh_c[t], out=h_all[t + 1])
        cache.update(w_ih=w_ih, w_hh=w_hh, perm=perm, gates=gates, c_all=c_all, tanh_c=tanh_c)

    else:  # gru
        # trick 2 for r and z; n needs r first, so it gets its own tanh call
        half = np.ones(3 * H, dtype)
        half[:2 * H] = 0.5
        # b_hr, b_hz fold into the input projection; b_hn must stay inside r * (W_hn h + b_hn)
        b_x = p["bias_ih"].copy()
        b_x[:2 * H] += p["bias_hh"][:2 * H]
        xp = (x2 @ (p["weight_ih"] * half[:, None]).T).reshape(T, B, 3 * H)
        xp += b_x * half
        w_hh_t = (p["weight_hh"] * half[:, None]).T
        b_hn = p["bias_hh"][2 * H:]
        hproj = np.empty((T, B, 3 * H), dtype)  # h W_hh^T (halved r, z); [..., 2H:] = W_hn h + b_hn
        rz = np.empty((T, B, 2 * H), dtype)
        n_all = np.empty((T, B, H), dtype)
        for t in range(T):
            hp = hproj[t]
            np.matmul(h_all[t], w_hh_t, out=hp)
            hn = hp[:, 2 * H:]
            hn += b_hn
            a = rz[t]
            np.add(xp[t, :, :2 * H], hp[:, :2 * H], out=a)
            np.tanh(a, out=a)
            a *= 0.5
            a += 0.5
            r, z = a[:, :H], a[:, H:]
            n = n_all[t]
            np.multiply(r, hn, out=n)
            n += xp[t, :, 2 * H:]
            np.tanh(n, out=n)
            h = h_all[t + 1]  # h' = (1 - z) n + z h = n + z (h - n)
            np.subtract(h_all[t], n, out=h)
            h *= z
            h += n
        cache.update(w_ih=p["weight_ih"], w_hh=p["weight_hh"], rz=rz, n_all=n_all,
                     hn=hproj[:, :, 2 * H:])
    return h_all[1:], cache


# --------------------------------------------------------------------------------------------
# backward


def backward(kind: str, params: dict, cache: Cache, dhs: np.ndarray) -> Dict[str, np.ndarray]:
    """Gradients of sum(hs * dhs) given dhs (T, B, H).

    Returns weight_ih, weight_hh, bias_ih, bias_hh (under the caller's names; biases only if
    given), 'x' (T, B, I), 'h0' (B, H) and for LSTM 'c0' (B, H).
    """
    if kind != cache["kind"]:
        raise ValueError(f"backward: cache is from {cache['kind']!r}, not {kind!r}")
    x, h_all = cache["x"], cache["h_all"]
    dtype = x.dtype
    dhs = np.asarray(dhs, dtype=dtype)
    T, B, I = x.shape
    H = h_all.shape[2]
    h_prev = h_all[:-1]  # (T, B, H) states each step started from: a view, no copy
    w_hh = cache["w_hh"]
    dh = np.empty((B, H), dtype)
    dh_next = np.zeros((B, H), dtype)  # dL/dh_t arriving from step t+1
    grads: Dict[str, np.ndarray] = {}

    if kind == "rnn":
        hs = h_all[1:]
        dtanh = 1 - hs * hs  # trick 3: local derivatives of all steps at once
        da = np.empty((T, B, H), dtype)  # dL/d(pre-activation)
        for t in range(T - 1, -1, -1):
            np.add(dhs[t], dh_next, out=dh)
            np.multiply(dh, dtanh[t], out=da[t])
            np.matmul(da[t], w_hh, out=dh_next)
        g_x = g_h = da  # the pre-activation gradient feeds both weight matrices

    elif kind == "lstm":
        gates, c_all, tanh_c = cache["gates"], cache["c_all"], cache["tanh_c"]
        i, f, o, g = (gates[..., k * H:(k + 1) * H] for k in range(4))
        # trick 3: with dc = dL/dc_t and dh = dL/dh_t, the pre-activation gradients are
        #   (i, f, o, g) = (dc, dc, dh, dc) * coef, coef = (g i(1-i), c_prev f(1-f), tanh_c o(1-o),
        #   i (1-g^2)); dc = dc_next + dh * o (1 - tanh_c^2).  All coefs computed before the loop.
        coef = np.empty((T, B, 4, H), dtype)
        coef[:, :, 0] = g * i * (1 - i)
        coef[:, :, 1] = c_all[:-1] * f * (1 - f)
        coef[:, :, 2] = tanh_c * o * (1 - o)
        coef[:, :, 3] = i * (1 - g * g)
        dc_from_h = o * (1 - tanh_c * tanh_c)
        da = np.empty((T, B, 4, H), dtype)
        dc = np.zeros((B, H), dtype)  # holds dL/dc_t; after step t it becomes dL/dc_{t-1}
        tmp = np.empty((B, H), dtype)
        for t in range(T - 1, -1, -1):
            np.add(dhs[t], dh_next, out=dh)
            np.multiply(dh, dc_from_h[t], out=tmp)
            dc += tmp
            np.multiply(coef[t], dc[:, None, :], out=da[t])  # i, f, g (o overwritten next)
            np.multiply(coef[t, :, 2], dh, out=da[t, :, 2])
            dc *= f[t]
            np.matmul(da[t].reshape(B, 4 * H), w_hh, out=dh_next)
        grads["c0"] = dc
        g_x = g_h = da.reshape(T, B, 4 * H)

    else:  # gru
        rz, n, hn = cache["rz"], cache["n_all"], cache["hn"]
        r, z = rz[..., :H], rz[..., H:]
        # trick 3: with dh = dL/dh_t:  d a_n = dh (1-z)(1-n^2);  d a_z = dh (h_prev - n) z(1-z);
        #   d a_r = d a_n * hn r(1-r);  d(W_hn h + b_hn) = d a_n * r;  dh_prev gets dh z + ...
        coef_n = (1 - z) * (1 - n * n)
        coef_z = (h_prev - n) * z * (1 - z)
        coef_r = hn * r * (1 - r)
        g_h = np.empty((T, B, 3 * H), dtype)  # grads of h W_hh^T + b_hh, (r, z, hn)
        g_x = np.empty((T, B, 3 * H), dtype)  # grads of x W_ih^T + b_ih, (r, z, n)
        tmp = np.empty((B, H), dtype)
        for t in range(T - 1, -1, -1):
            np.add(dhs[t], dh_next, out=dh)
            dan = g_x[t, :, 2 * H:]
            np.multiply(dh, coef_n[t], out=dan)
            np.multiply(dh, coef_z[t], out=g_h[t, :, H:2 * H])
            np.multiply(dan, coef_r[t], out=g_h[t, :, :H])
            np.multiply(dan, r[t], out=g_h[t, :, 2 * H:])
            np.matmul(g_h[t], w_hh, out=dh_next)
            np.multiply(dh, z[t], out=tmp)
            dh_next += tmp
        g_x[..., :2 * H] = g_h[..., :2 * H]  # r and z enter both projections identically

    # trick 4: one GEMM per weight gradient over all T*B rows
    G = g_x.shape[-1]
    gx2, gh2 = g_x.reshape(T * B, G), g_h.reshape(T * B, G)
    d_wih = gx2.T @ x.reshape(T * B, I)
    d_whh = gh2.T @ h_prev.reshape(T * B, H)
    d_bih, d_bhh = gx2.sum(axis=0), gh2.sum(axis=0)
    grads["x"] = (gx2 @ cache["w_ih"]).reshape(T, B, I)
    grads["h0"] = dh_next
    if kind == "lstm":  # undo the (i, f, o, g) row order
        inv = np.argsort(cache["perm"])
        d_wih, d_whh, d_bih, d_bhh = d_wih[inv], d_whh[inv], d_bih[inv], d_bhh[inv]
    keys = cache["keys"]
    for name, value in zip(_NAMES, (d_wih, d_whh, d_bih, d_bhh)):
        if name in keys:
            grads[keys[name]] = value
    return grads


def train_step(
    kind: str,
    params: dict,
    x: np.ndarray,
    dhs: np.ndarray,
    h0: Optional[np.ndarray] = None,
    c0: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """forward + backward. Returns (hs (T, B, H), grads) as `forward` and `backward` do."""
    hs, cache = forward(kind, params, x, h0, c0)
    return hs, backward(kind, params, cache, dhs)


# --------------------------------------------------------------------------------------------


def _time(kind: str, T: int, B: int, I: int, H: int, dtype, repeat: int = 5) -> float:
    """Best wall time (seconds) of one train_step on random data."""
    rng = np.random.default_rng(0)
    rows = {"rnn": 1, "lstm": 4, "gru": 3}[kind] * H
    s = 1 / np.sqrt(H)
    shapes = {"weight_ih": (rows, I), "weight_hh": (rows, H), "bias_ih": rows, "bias_hh": rows}
    params = {k: rng.uniform(-s, s, shape).astype(dtype) for k, shape in shapes.items()}
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        train_step(kind, params, x, dhs)
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    for T, B, I, H in [(100, 32, 32, 64), (200, 64, 128, 256)]:
        for kind in ("rnn", "lstm", "gru"):
            ms = 1e3 * _time(kind, T, B, I, H, np.float32)
            print(f"{kind:4s} T={T} B={B} I={I} H={H} float32: {ms:8.2f} ms / train step")
