"""Benchmark suite: one full-BPTT training step of RNN (tanh), LSTM and GRU, ours against the rest.

    python benchmarks/run.py                 # S, M, L configs; float32 and float64
    python benchmarks/run.py --quick         # S and M, float32, fewer repeats (< 1 minute)
    python benchmarks/run.py --configs S,M --kinds lstm,gru --dtypes float32 --json out.json
    python benchmarks/run.py --threads 1 --clock process_time   # on a busy machine

One step = forward over T steps, loss = sum(hs * G) for a fixed random G of the output's shape
(so every contender gets the same upstream gradient: ours and torch call `out.backward(G)`, the
numpy yardstick takes G as dhs), full BPTT, all weight gradients. The input x also requires a
gradient everywhere, because the hand-written numpy backward always computes dL/dx: every
contender then does the same work.

Contenders (same weights, same dtype, same process):
- ours-layer    the built-in nn.RNN / nn.LSTM / nn.GRU;
- ours-custom   the same cell written here as a user would, with public ops only, run by
                nn.Recurrent (input projection hoisted through `project`);
- ours-plain    the same cell spelled as a first draft would: @ and .T, +, chunk, .sigmoid()
                (no tg.linear, tg.gates, addcmul or lerp);
- numpy         the hand-written numpy BPTT of benchmarks/numpy_bptt.py, the yardstick;
- torch-fused   torch.nn.RNN / LSTM / GRU (only if torch imports; default thread count);
- torch-custom  the same cell as an eager PyTorch Python loop over time, projection hoisted.

Method: gradients of every contender are checked against numpy once (this is also the first
warm-up), then one more warm-up call calibrates the inner iteration count so that a repeat lasts at
least --min-time seconds; repeats are interleaved round-robin (the starting contender rotates) so
that machine noise hits everyone alike; the median over the repeats is reported. A ratio A/B is the
median over the repeats of A's time / B's time within the same round (blocks that ran back to back),
which cancels the machine's slow drift better than a ratio of two medians (also in the JSON). The
garbage collector stays on while timing (a user's training loop pays for the collections its
allocations trigger), but runs a full collection before each timed block, outside the clock. Peak
memory per step is measured by tracemalloc in a separate, untimed run (tracemalloc sees numpy's
buffers, not torch's). Minor page faults per call (getrusage, counted around the timed blocks) are
reported too: a step that returns freed memory to the OS and takes it back pays ~1-2 us per 4 KiB
page in the kernel, and how much glibc's malloc returns depends on the process's history. With
--malloc-keep, glibc is told to keep freed memory (mallopt; the same for every contender), which
shows that share. The engine overhead per recorded op is (ours - numpy) / (number of Nodes recorded
in one step) at a tiny size, also expressed in units of one tiny np.add ((1, 32) float32) timed in
the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):  # the working tree's tinygrad_rnn, and numpy_bptt
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy_bptt  # noqa: E402

import tinygrad_rnn as tg  # noqa: E402
from tinygrad_rnn import engine, nn  # noqa: E402

torch: Any = None  # imported by load_torch(): optional, and slow to import


def load_torch() -> Any:
    """Import torch if it is installed (its contenders are skipped otherwise)."""
    global torch
    if torch is None:
        try:
            import torch as _torch
        except ImportError:
            return None
        torch = _torch
    return torch

KINDS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
DTYPES = {"float32": np.float32, "float64": np.float64}
CONTENDERS = ("ours-layer", "ours-custom", "ours-plain", "numpy", "torch-fused", "torch-custom")
PARAM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


@dataclass(frozen=True)
class Config:
    name: str
    B: int  # batch
    I: int  # input features
    H: int  # hidden size
    T: int  # time steps


CONFIGS = {
    "S": Config("S", 1, 16, 32, 100),
    "M": Config("M", 32, 64, 128, 100),
    "L": Config("L", 64, 256, 512, 50),
}
TINY = Config("tiny", 1, 8, 8, 50)  # for the engine overhead per recorded op

# Targets (float32). key -> {config: bound}; "*" applies to every config.
# (Those of compiled recurrences; the per-record overhead has no target since the unroll is one
# record, a scan, and is reported for reference.)
TARGETS = {
    "ours-layer/numpy": {"S": 1.5, "M": 1.10, "L": 1.05},
    "ours-layer/torch-custom": {"S": 0.25, "M": 0.9},
    "ours-custom/ours-layer": {"*": 1.05},
    "ours-plain/ours-layer": {"S": 1.5, "M": 1.15},
    "peak ours-layer/numpy": {"*": 1.3},
    "peak ours-custom/numpy": {"*": 1.3},
}
RATIOS = (("ours-layer", "numpy"), ("ours-custom", "numpy"), ("ours-custom", "ours-layer"),
          ("ours-plain", "ours-layer"), ("ours-layer", "torch-custom"),
          ("ours-layer", "torch-fused"))


def target_for(key: str, config: str, dtype: str) -> float | None:
    if dtype != "float32":
        return None
    bounds = TARGETS.get(key, {})
    return bounds.get(config, bounds.get("*"))


# ----------------------------------------------------------------------------- the problem
@dataclass
class Problem:
    kind: str
    cfg: Config
    dtype: Any
    params: dict[str, np.ndarray]  # PyTorch names: weight_ih_l0, ...
    x: np.ndarray  # (T, B, I)
    G: np.ndarray  # (T, B, H): the upstream gradient, d loss / d hs


def make_problem(kind: str, cfg: Config, dtype: Any, seed: int = 0) -> Problem:
    """Random weights in PyTorch's layout and init range, inputs and upstream gradient."""
    rng = np.random.default_rng(seed)
    rows, k = GATES[kind] * cfg.H, 1.0 / math.sqrt(cfg.H)
    shapes = {"weight_ih_l0": (rows, cfg.I), "weight_hh_l0": (rows, cfg.H),
              "bias_ih_l0": (rows,), "bias_hh_l0": (rows,)}
    params = {n: rng.uniform(-k, k, s).astype(dtype) for n, s in shapes.items()}
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(dtype)
    G = rng.standard_normal((cfg.T, cfg.B, cfg.H)).astype(dtype)
    return Problem(kind, cfg, np.dtype(dtype), params, x, G)


# ----------------------------------------------------------------------------- custom cells
class _CustomCell(nn.Module):
    """Parameters in PyTorch's layout; zero initial state. Subclasses: project + forward."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, dtype: Any = np.float32) -> None:
        super().__init__()
        rows = self.gates * hidden_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(np.zeros((rows, input_size), dtype))
        self.weight_hh = nn.Parameter(np.zeros((rows, hidden_size), dtype))
        self.bias_ih = nn.Parameter(np.zeros(rows, dtype))
        self.bias_hh = nn.Parameter(np.zeros(rows, dtype))

    def _zeros(self, batch_size: int) -> tg.Tensor:
        return tg.Tensor(np.zeros((batch_size, self.hidden_size), self.weight_hh.dtype))

    def initial_state(self, batch_size: int) -> Any:
        return self._zeros(batch_size)

    def project(self, xs: tg.Tensor) -> tg.Tensor:
        """Input projection of all steps in one record: (T, B, I) -> (T, B, gates*H). Where
        b_hh is simply added to the pre-activation (RNN, LSTM) it joins the projection too."""
        if self.gates == 3:
            return tg.linear(xs, self.weight_ih, self.bias_ih)
        return tg.linear(xs, self.weight_ih, self.bias_ih, self.bias_hh)


# The cells below are what a user writes with the public primitives; `tg.linear` (x W^T + biases
# in one record) and `tg.gates` (chunked activations in one record) are the two that matter for
# speed. The same cells spelled with @, .T, + and chunk + sigmoid compute the same values with
# 1.5-2x the records per step.
class CustomRNNCell(_CustomCell):
    """h' = tanh(x W_ih^T + b_ih + b_hh + h W_hh^T); the projection holds both biases."""

    def forward(self, xp_t: tg.Tensor, h: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        h = tg.linear(h, self.weight_hh, xp_t, act="tanh")
        return h, h


class CustomLSTMCell(_CustomCell):
    """Gates i, f, g, o (PyTorch order); c' = f c + i g, h' = o tanh(c')."""

    gates = 4

    def initial_state(self, batch_size: int) -> Any:
        return self._zeros(batch_size), self._zeros(batch_size)

    def forward(self, xp_t: tg.Tensor, state: Any) -> tuple[tg.Tensor, Any]:
        h, c = state
        z = tg.linear(h, self.weight_hh, xp_t)
        i, f, g, o = tg.gates(z, ("sigmoid", "sigmoid", "tanh", "sigmoid"))
        c = tg.addcmul(f * c, i, g)  # f c + i g
        h = o * c.tanh()
        return h, (h, c)


class CustomGRUCell(_CustomCell):
    """Gates r, z, n: n = tanh(x_n + r (W_hn h + b_hn)), h' = (1 - z) n + z h."""

    gates = 3

    def project(self, xs: tg.Tensor) -> Any:
        """The projection and its n part; the step gets a slice of each."""
        xp = super().project(xs)
        return xp, xp[..., 2 * self.hidden_size:]

    def forward(self, xp_t: Any, h: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        xp_t, xn = xp_t
        # r, z pre-activations and a = xn + W_hn h + b_hn, in one linear and one gates record
        r, z, a = tg.gates(tg.linear(h, self.weight_hh, xp_t, self.bias_hh),
                           ("sigmoid", "sigmoid", "identity"))
        n = tg.lerp(xn, a, r).tanh()  # tanh(xn + r (W_hn h + b_hn))
        h = tg.lerp(n, h, z)  # (1 - z) n + z h
        return h, h


# The same cells as a first draft spells them: @ and .T, +, chunk, .sigmoid(), .tanh(), with
# no tg.linear / tg.gates / addcmul / lerp, and W.T inside the step (the scan computes it once).
class PlainRNNCell(_CustomCell):
    """h' = tanh(xp + h W_hh^T), xp = x W_ih^T + b_ih + b_hh."""

    def project(self, xs: tg.Tensor) -> tg.Tensor:
        return xs @ self.weight_ih.T + self.bias_ih + self.bias_hh

    def forward(self, xp_t: tg.Tensor, h: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        h = (xp_t + h @ self.weight_hh.T).tanh()
        return h, h


class PlainLSTMCell(PlainRNNCell):
    """c' = f c + i g, h' = o tanh(c'), gates from chunk."""

    gates = 4
    initial_state = CustomLSTMCell.initial_state

    def forward(self, xp_t: tg.Tensor,  # type: ignore[override]
                state: Any) -> tuple[tg.Tensor, Any]:
        h, c = state
        i, f, g, o = (xp_t + h @ self.weight_hh.T).chunk(4, axis=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        return h, (h, c)


class PlainGRUCell(_CustomCell):
    """n = tanh(xn + r (W_hn h + b_hn)), h' = (1 - z) n + z h, gates from chunk."""

    gates = 3

    def project(self, xs: tg.Tensor) -> tg.Tensor:
        return xs @ self.weight_ih.T + self.bias_ih

    def forward(self, xp_t: tg.Tensor, h: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        xr, xz, xn = xp_t.chunk(3, axis=-1)
        hr, hz, hn = (h @ self.weight_hh.T + self.bias_hh).chunk(3, axis=-1)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        h = (1 - z) * n + z * h
        return h, h


CUSTOM_CELLS = {"rnn": CustomRNNCell, "lstm": CustomLSTMCell, "gru": CustomGRUCell}
PLAIN_CELLS = {"rnn": PlainRNNCell, "lstm": PlainLSTMCell, "gru": PlainGRUCell}
LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


# ----------------------------------------------------------------------------- contenders
# Each builder returns step() -> grads: one full training step, returning the gradients as
# numpy arrays under PyTorch's names plus "x".
Step = Callable[[], dict[str, np.ndarray]]


def _ours_step(model: nn.Module, names: dict[str, str], p: Problem) -> Step:
    x = tg.Tensor(p.x, requires_grad=True)
    G = p.G
    params = [(names[n], q) for n, q in model.named_parameters()]

    def step() -> dict[str, np.ndarray]:
        for _, q in params:
            q.grad = None
        x.grad = None
        out, _ = model(x)
        out.backward(G)
        grads = {n: q.grad for n, q in params}
        grads["x"] = x.grad
        return grads

    return step


def build_ours_layer(p: Problem) -> Step:
    layer = LAYERS[p.kind](p.cfg.I, p.cfg.H, dtype=p.dtype)
    layer.load_state_dict(p.params)
    return _ours_step(layer, {n: n for n in p.params}, p)


def build_ours_custom(p: Problem, cells: dict[str, type[_CustomCell]] = CUSTOM_CELLS) -> Step:
    cell = cells[p.kind](p.cfg.I, p.cfg.H, dtype=p.dtype)
    cell.load_state_dict({n[: -len("_l0")]: v for n, v in p.params.items()})
    model = nn.Recurrent(cell)
    return _ours_step(model, {"cell." + n[: -len("_l0")]: n for n in p.params}, p)


def build_ours_plain(p: Problem) -> Step:
    return build_ours_custom(p, PLAIN_CELLS)


def build_numpy(p: Problem) -> Step:
    def step() -> dict[str, np.ndarray]:
        _, grads = numpy_bptt.train_step(p.kind, p.params, p.x, p.G)
        return grads

    return step


def _torch_dtype(dtype: Any) -> Any:
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def build_torch_fused(p: Problem) -> Step:
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[p.kind]
    m = cls(p.cfg.I, p.cfg.H, dtype=_torch_dtype(p.dtype))
    with torch.no_grad():
        for n, q in m.named_parameters():
            q.copy_(torch.from_numpy(p.params[n]))
    x = torch.from_numpy(p.x.copy()).requires_grad_(True)
    G = torch.from_numpy(p.G)
    params = list(m.named_parameters())

    def step() -> dict[str, np.ndarray]:
        m.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = m(x)
        out.backward(G)
        grads = {n: q.grad.numpy() for n, q in params}
        grads["x"] = x.grad.numpy()
        return grads

    return step


def _torch_custom_forward(kind: str, W: dict[str, Any], x: Any) -> Any:
    """The same cells as an eager PyTorch loop over time; the input projection is hoisted, and
    where torch has the fused op our cell uses (addmm for tg.linear, addcmul, lerp) it is used."""
    w_ih, w_hh, b_ih, b_hh = (W[n] for n in PARAM_NAMES)
    T, B, _ = x.shape
    h = x.new_zeros(B, w_hh.shape[1])
    outs = []
    if kind == "rnn":
        xp = x @ w_ih.T + (b_ih + b_hh)
        for xp_t in xp.unbind(0):
            h = torch.tanh(torch.addmm(xp_t, h, w_hh.T))
            outs.append(h)
    elif kind == "lstm":
        xp = x @ w_ih.T + (b_ih + b_hh)
        c = h
        for xp_t in xp.unbind(0):
            i, f, g, o = torch.addmm(xp_t, h, w_hh.T).chunk(4, dim=-1)
            c = torch.addcmul(f.sigmoid() * c, i.sigmoid(), g.tanh())
            h = o.sigmoid() * c.tanh()
            outs.append(h)
    else:
        xp = x @ w_ih.T + b_ih
        for xp_t in xp.unbind(0):
            xr, xz, xn = xp_t.chunk(3, dim=-1)
            hr, hz, hn = torch.addmm(b_hh, h, w_hh.T).chunk(3, dim=-1)
            r = (xr + hr).sigmoid()
            z = (xz + hz).sigmoid()
            n = torch.addcmul(xn, r, hn).tanh()
            h = torch.lerp(n, h, z)
            outs.append(h)
    return torch.stack(outs)


def build_torch_custom(p: Problem) -> Step:
    W = {n: torch.from_numpy(v.copy()).requires_grad_(True) for n, v in p.params.items()}
    x = torch.from_numpy(p.x.copy()).requires_grad_(True)
    G = torch.from_numpy(p.G)

    def step() -> dict[str, np.ndarray]:
        for q in W.values():
            q.grad = None
        x.grad = None
        out = _torch_custom_forward(p.kind, W, x)
        out.backward(G)
        grads = {n: q.grad.numpy() for n, q in W.items()}
        grads["x"] = x.grad.numpy()
        return grads

    return step


BUILDERS: dict[str, Callable[[Problem], Step]] = {
    "ours-layer": build_ours_layer, "ours-custom": build_ours_custom,
    "ours-plain": build_ours_plain, "numpy": build_numpy,
    "torch-fused": build_torch_fused, "torch-custom": build_torch_custom,
}


def available_contenders(use_torch: bool = True) -> list[str]:
    have_torch = use_torch and load_torch() is not None
    return [c for c in CONTENDERS if not c.startswith("torch") or have_torch]


def max_rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: a scale-aware error for whole gradient arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_grads(kind: str, grads: dict[str, dict[str, np.ndarray]], dtype: Any) -> None:
    """Every contender's weight and input gradients must match numpy's (and ours-custom
    ours-layer's); raises AssertionError naming the contender, the array and the error."""
    tol = 1e-9 if np.dtype(dtype) == np.float64 else 2e-3
    pairs = [(c, "numpy") for c in grads if c != "numpy"]
    if "ours-custom" in grads and "ours-layer" in grads:
        pairs.append(("ours-custom", "ours-layer"))
    for a, b in pairs:
        for name in PARAM_NAMES + ("x",):
            err = max_rel_error(grads[a][name], grads[b][name])
            assert err <= tol, (f"{kind}: gradient {name} of {a} differs from {b}'s: max rel "
                                f"error {err:.2e} > {tol:.0e}")


# ----------------------------------------------------------------------------- timing
CLOCKS = {"perf_counter": time.perf_counter, "process_time": time.process_time}
_clock = time.perf_counter  # set by --clock; process_time = this process's CPU time (all threads)


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_loop(fn: Callable[[], Any], n: int) -> float:
    """Seconds per call of fn, averaged over n back-to-back calls."""
    clock = _clock
    t0 = clock()
    for _ in range(n):
        fn()
    return (clock() - t0) / n


def malloc_keep() -> bool:
    """Ask glibc's malloc to keep freed memory (no trimming, no mmap for large blocks), for the
    whole process. Returns False where that is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 2**30) and
                    libc.mallopt(m_mmap_threshold, 2**25))  # 32 MiB: glibc's maximum
    except (OSError, AttributeError):
        return False


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, min_time: float
                ) -> dict[str, dict[str, Any]]:
    """Median seconds per call of each fn: warm-up/calibration, then round-robin repeats.

    Each repeat runs every fn `inner` times back to back (inner chosen so a repeat lasts at least
    `min_time`); the starting fn rotates from repeat to repeat."""
    inner = {}
    for name, fn in fns.items():
        t1 = timed_loop(fn, 1)  # callers already ran fn once (gradient check); this calibrates
        inner[name] = max(1, math.ceil(min_time / max(t1, 1e-9)))
    names = list(fns)
    runs: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()  # garbage of the previous contender is not billed to this one
            f0 = _minor_faults()
            runs[name].append(timed_loop(fns[name], inner[name]))
            faults[name].append((_minor_faults() - f0) / inner[name])
    return {n: {"median_s": statistics.median(runs[n]), "repeats_s": runs[n], "inner": inner[n],
                "faults_per_call": statistics.median(faults[n])} for n in names}


def peak_bytes(step: Step) -> int:
    """Peak traced memory above the starting point during one call (tracemalloc; untimed)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        grads = step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del grads
    return peak - base


def count_ops(step: Step) -> int:
    """Number of tape records (Nodes) made by one step. Reading engine._seq consumes a number."""
    before = next(engine._seq)
    step()
    return next(engine._seq) - before - 1


def tiny_add_loop(n: int = 1000) -> Callable[[], None]:
    a = np.ones((1, 32), np.float32)
    b = np.full((1, 32), 0.5, np.float32)
    add = np.add

    def loop() -> None:
        for _ in range(n):
            add(a, b)

    loop.n = n  # type: ignore[attr-defined]
    return loop


# ----------------------------------------------------------------------------- the suite
def run_case(kind: str, cfg: Config, dtype_name: str, contenders: list[str], repeats: int,
             min_time: float, memory: bool) -> dict[str, Any]:
    p = make_problem(kind, cfg, DTYPES[dtype_name])
    steps = {c: BUILDERS[c](p) for c in contenders}
    check_grads(kind, {c: s() for c, s in steps.items()}, p.dtype)  # also the first warm-up
    timing = interleaved(steps, repeats, min_time)
    med = {c: timing[c]["median_s"] * 1e3 for c in contenders}
    best = {c: min(timing[c]["repeats_s"]) * 1e3 for c in contenders}
    reps = {c: timing[c]["repeats_s"] for c in contenders}
    # each ratio is the median over rounds of the ratio within a round, where the two blocks
    # ran within a fraction of a second of each other: this machine's speed drifts by 2x over
    # minutes, which a ratio of two medians does not cancel (see benchmarks/ab.py)
    ratios = {f"{a}/{b}": statistics.median(x / y for x, y in zip(reps[a], reps[b]))
              for a, b in RATIOS if a in med and b in med}
    res: dict[str, Any] = {
        "kind": kind, "config": cfg.name, "dtype": dtype_name,
        "B": cfg.B, "I": cfg.I, "H": cfg.H, "T": cfg.T,
        "contenders": {c: {"median_ms": med[c], "min_ms": best[c],
                           "repeats_ms": [t * 1e3 for t in timing[c]["repeats_s"]],
                           "inner": timing[c]["inner"],
                           "minor_faults": timing[c]["faults_per_call"]} for c in contenders},
        "ratios": ratios,
        "ratios_of_medians": {f"{a}/{b}": med[a] / med[b] for a, b in RATIOS
                              if a in med and b in med},
        # the same ratios of the fastest repeats: less sensitive to other load on the machine
        "ratios_of_min": {f"{a}/{b}": best[a] / best[b] for a, b in RATIOS
                          if a in best and b in best},
    }
    if memory:
        peaks = {c: peak_bytes(steps[c]) for c in ("ours-layer", "ours-custom", "numpy")
                 if c in steps}
        res["peak_bytes"] = peaks
        if "numpy" in peaks:
            res["peak_ratios"] = {f"peak {c}/numpy": peaks[c] / peaks["numpy"]
                                  for c in peaks if c != "numpy"}
    return res


def run_overhead(kind: str, repeats: int, min_time: float) -> dict[str, Any]:
    """(ours - numpy) per recorded op at a tiny size, in µs and in tiny np.adds."""
    p = make_problem(kind, TINY, np.float32)
    steps = {c: BUILDERS[c](p) for c in ("ours-layer", "ours-custom", "numpy")}
    check_grads(kind, {c: s() for c, s in steps.items()}, p.dtype)
    ops = {c: count_ops(steps[c]) for c in ("ours-layer", "ours-custom")}
    add_loop = tiny_add_loop()
    timing = interleaved({**steps, "np.add": add_loop}, repeats, min_time)
    ms = {c: timing[c]["median_s"] * 1e3 for c in steps}
    add_us = timing["np.add"]["median_s"] * 1e6 / add_loop.n  # type: ignore[attr-defined]
    res: dict[str, Any] = {"kind": kind, "config": f"B={TINY.B} I={TINY.I} H={TINY.H} "
                           f"T={TINY.T}", "dtype": "float32", "ops": ops, "ms": ms,
                           "np_add_us": add_us, "us_per_op": {}, "np_adds_per_op": {}}
    for c in ops:
        us = (ms[c] - ms["numpy"]) * 1e3 / ops[c]
        res["us_per_op"][c] = us
        res["np_adds_per_op"][c] = us / add_us
    return res


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu": cpu, "nproc": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__,
        "tinygrad_rnn": getattr(tg, "__version__", "?"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "torch": None if torch is None else {"version": torch.__version__,
                                             "num_threads": torch.get_num_threads()},
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def blas_info() -> list[dict[str, Any]] | str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed: pip install threadpoolctl)"
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture",
            "threading_layer", "filepath")
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def blas_summary(blas: list[dict[str, Any]] | str) -> str:
    if isinstance(blas, str):
        return blas
    parts = [f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
             f"{d.get('num_threads')} threads, {Path(str(d.get('filepath'))).name})"
             for d in blas]
    return "; ".join(parts) if parts else "none found"


# ----------------------------------------------------------------------------- reporting
def _verdict(value: float | None, bound: float | None) -> str:
    if value is None or bound is None:
        return ""
    return "PASS" if value <= bound else "FAIL"


def _ratio_cell(v: float | None, bound: float | None, show_bound: bool) -> str:
    """'1.23', with ' [2] FAIL' (or ' FAIL' without the bound) when there is a target."""
    if v is None:
        return "-"
    s = f"{v:.2f}"
    if bound is not None:
        s += (f" [{bound:g}]" if show_bound else "") + f" {_verdict(v, bound)}"
    return s


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 1000 else f"{v:.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def collect_targets(results: list[dict[str, Any]], overhead: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    out = []
    for r in results:
        vals = dict(r["ratios"], **r.get("peak_ratios", {}))
        for key, v in vals.items():
            bound = target_for(key, r["config"], r["dtype"])
            if bound is not None:
                out.append({"what": key, "kind": r["kind"], "config": r["config"],
                            "dtype": r["dtype"], "value": v, "target": bound,
                            "pass": v <= bound})
    for o in overhead:
        bound = target_for("overhead per op / np.add", "*", "float32")
        if bound is None:
            continue
        for c, v in o["np_adds_per_op"].items():
            out.append({"what": f"overhead per op / np.add ({c})", "kind": o["kind"],
                        "config": "tiny", "dtype": "float32", "value": v, "target": bound,
                        "pass": v <= bound})
    return out


def report(meta: dict[str, Any], results: list[dict[str, Any]], overhead: list[dict[str, Any]],
           targets: list[dict[str, Any]], contenders: list[str]) -> str:
    out = []
    m = meta["machine"]
    out.append(f"machine: {m['cpu']}, nproc {m['nproc']}, {m['platform']}, python {m['python']}, "
               f"numpy {m['numpy']}" + (f", torch {m['torch']['version']} "
                                        f"({m['torch']['num_threads']} threads)"
                                        if m["torch"] else ", torch not installed"))
    out.append(f"BLAS: {blas_summary(meta['blas'])}")
    out.append(f"OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE']}  date {m['date']}  load average "
               f"{' '.join(f'{v:.1f}' for v in m.get('loadavg_start', []))} -> "
               f"{' '.join(f'{v:.1f}' for v in meta.get('loadavg_end', []))}")
    out.append(f"repeats {meta['repeats']} (median), >= {meta['min_time'] * 1e3:.0f} ms per "
               f"repeat, clock {meta.get('clock', 'perf_counter')}, thread limit "
               f"{meta.get('threads_limit') or 'none (defaults)'}")

    out.append("\nTime per training step, ms (median); spread = max over contenders of "
               "IQR/median")
    rows = []
    for r in results:
        cs = r["contenders"]
        spread = max(_iqr(c["repeats_ms"]) / c["median_ms"] for c in cs.values())
        rows.append([f"{r['kind']} {r['config']} {r['dtype']}"]
                    + [_fmt_ms(cs[c]["median_ms"]) if c in cs else "-" for c in contenders]
                    + [f"{100 * spread:.0f}%"])
    out.append(table(["case"] + contenders + ["spread"], rows))

    out.append("\nMinor page faults per step (median over repeats)"
               + (", malloc-keep on" if meta.get("malloc_keep") else ""))
    rows = [[f"{r['kind']} {r['config']} {r['dtype']}"]
            + [f"{r['contenders'][c].get('minor_faults', 0):.0f}" if c in r["contenders"] else "-"
               for c in contenders] for r in results]
    out.append(table(["case"] + contenders, rows))

    out.append("\nRatios (median over rounds of the ratio within a round; lower is better for "
               "ours); [target] PASS/FAIL for float32")
    rows = []
    for r in results:
        cells = [f"{r['kind']} {r['config']} {r['dtype']}"]
        for a, b in RATIOS:
            key = f"{a}/{b}"
            cells.append(_ratio_cell(r["ratios"].get(key),
                                     target_for(key, r["config"], r["dtype"]), True))
        rows.append(cells)
    out.append(table(["case"] + [f"{a}/{b}" for a, b in RATIOS], rows))

    if any("peak_bytes" in r for r in results):
        out.append("\nPeak memory per step (tracemalloc, MiB); target ours <= 1.3 x numpy "
                   "(float32)")
        rows = []
        for r in results:
            if "peak_bytes" not in r:
                continue
            pk, pr = r["peak_bytes"], r.get("peak_ratios", {})
            cells = [f"{r['kind']} {r['config']} {r['dtype']}"]
            cells += [f"{pk[c] / 2**20:.2f}" if c in pk else "-"
                      for c in ("ours-layer", "ours-custom", "numpy")]
            for c in ("ours-layer", "ours-custom"):
                key = f"peak {c}/numpy"
                cells.append(_ratio_cell(pr.get(key), target_for(key, r["config"], r["dtype"]),
                                         False))
            rows.append(cells)
        out.append(table(["case", "ours-layer", "ours-custom", "numpy", "layer/numpy",
                          "custom/numpy"], rows))

    if overhead:
        o0 = overhead[0]
        out.append(f"\nEngine overhead per recorded op ({o0['config']}, float32): "
                   f"(ours - numpy) / ops; one tiny np.add ((1, 32) float32) = "
                   f"{o0['np_add_us']:.3f} us; target <= 5 np.add")
        rows = []
        for o in overhead:
            for c in o["ops"]:
                v = o["np_adds_per_op"][c]
                rows.append([o["kind"], c, str(o["ops"][c]), f"{o['ms'][c]:.3f}",
                             f"{o['ms']['numpy']:.3f}", f"{o['us_per_op'][c]:.2f}",
                             f"{o['np_add_us']:.3f}", f"{v:.1f} {_verdict(v, 5.0)}"])
        out.append(table(["kind", "ours", "ops/step", "ours ms", "numpy ms", "us/op",
                          "np.add us", "np.adds/op"], rows))

    fails = [t for t in targets if not t["pass"]]
    out.append(f"\nTargets: {len(targets) - len(fails)} PASS, {len(fails)} FAIL")
    for t in fails:
        out.append(f"  FAIL {t['what']:<34} {t['kind']:4} {t['config']:4} {t['dtype']}: "
                   f"{t['value']:.2f} > {t['target']:g} (x{t['value'] / t['target']:.2f})")
    return "\n".join(out)


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="S and M, float32, 3 repeats, 20 ms per repeat (< 1 minute)")
    ap.add_argument("--configs", help="comma-separated subset of S,M,L")
    ap.add_argument("--kinds", help="comma-separated subset of rnn,lstm,gru")
    ap.add_argument("--dtypes", help="comma-separated subset of float32,float64")
    ap.add_argument("--repeats", type=int, help="timed repeats per contender (default 7, "
                    "quick 3)")
    ap.add_argument("--min-time", type=float, help="seconds per repeat at least (default 0.05, "
                    "quick 0.02)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch contenders")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    ap.add_argument("--no-overhead", action="store_true", help="skip the per-op overhead")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="perf_counter",
                    help="perf_counter (wall, default) or process_time (CPU time of this "
                         "process: immune to preemption on a busy machine; use with --threads 1)")
    ap.add_argument("--threads", type=int,
                    help="limit BLAS (threadpoolctl) and torch intra-op threads to N (default: "
                         "leave both as they are)")
    ap.add_argument("--malloc-keep", action="store_true",
                    help="tell glibc's malloc to keep freed memory (every contender alike): "
                         "shows what page faults cost")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON")
    args = ap.parse_args(argv)

    def pick(value: str | None, allowed: tuple[str, ...], default: tuple[str, ...]) -> list[str]:
        items = default if value is None else tuple(v.strip() for v in value.split(",") if v)
        bad = [v for v in items if v not in allowed]
        if bad:
            ap.error(f"unknown {bad}; choose from {','.join(allowed)}")
        return list(items)

    args.configs = pick(args.configs, tuple(CONFIGS), ("S", "M") if args.quick else tuple(CONFIGS))
    args.kinds = pick(args.kinds, KINDS, KINDS)
    args.dtypes = pick(args.dtypes, tuple(DTYPES), ("float32",) if args.quick else tuple(DTYPES))
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.min_time is None:
        args.min_time = 0.02 if args.quick else 0.05
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    contenders = available_contenders(not args.no_torch)
    limiter = None
    if args.threads:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=args.threads, user_api="blas")
        if torch is not None:
            torch.set_num_threads(args.threads)
    meta: dict[str, Any] = {"argv": sys.argv[1:], "machine": machine_info(), "blas": blas_info(),
                            "repeats": args.repeats, "min_time": args.min_time,
                            "contenders": contenders, "targets": TARGETS,
                            "loss": "out.backward(G) with G fixed random of the output's shape; "
                                    "x requires grad for every contender"}
    meta["threads_limit"], meta["clock"] = args.threads, args.clock
    meta["malloc_keep"] = malloc_keep() if args.malloc_keep else False
    if args.malloc_keep and not meta["malloc_keep"]:
        print("warning: --malloc-keep: not glibc (mallopt unavailable); nothing changed",
              file=sys.stderr)
    print(f"BLAS: {blas_summary(meta['blas'])}; "
          f"OPENBLAS_CORETYPE={meta['machine']['OPENBLAS_CORETYPE']}", file=sys.stderr)
    load = meta["machine"].get("loadavg_start")
    if load and load[0] > (os.cpu_count() or 1):
        print(f"warning: load average {load[0]:.1f} > {os.cpu_count()} CPUs: other processes "
              f"compete; multi-threaded BLAS/torch suffer most (try --threads 1)", file=sys.stderr)
    started = time.perf_counter()
    results, overhead = [], []
    for dtype_name in args.dtypes:
        for cname in args.configs:
            for kind in args.kinds:
                t0 = time.perf_counter()
                r = run_case(kind, CONFIGS[cname], dtype_name, contenders, args.repeats,
                             args.min_time, not args.no_memory)
                results.append(r)
                summary = "  ".join(f"{c} {_fmt_ms(v['median_ms'])}"
                                    for c, v in r["contenders"].items())
                print(f"[{time.perf_counter() - started:6.1f}s] {kind} {cname} {dtype_name}: "
                      f"{summary} ms  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    if not args.no_overhead:
        for kind in args.kinds:
            overhead.append(run_overhead(kind, args.repeats, args.min_time))
    if hasattr(os, "getloadavg"):
        meta["loadavg_end"] = list(os.getloadavg())
    meta["wall_s"] = time.perf_counter() - started
    targets = collect_targets(results, overhead)
    print(report(meta, results, overhead, targets, contenders))
    print(f"\n(total {meta['wall_s']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "overhead": overhead,
                       "targets": targets}, f, indent=1)
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
