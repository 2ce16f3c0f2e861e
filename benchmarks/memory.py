"""Peak memory of one LSTM training step, with and without `checkpoint_every`.

    python benchmarks/memory.py                  # T = 250, 1000, 4000 (a few minutes)
    python benchmarks/memory.py --quick          # T = 100, 400, smaller layer (seconds)
    python benchmarks/memory.py --json out.json  # also write the rows as JSON

One step = nn.LSTM(I, H) forward over T steps (B, I, H = 32, 32, 256, float32), the scalar loss
sum(out * G) for a fixed random G, and backward (all weight gradients). It is run twice per T:
plain (every activation of every step is kept for the backward) and with
`checkpoint_every = k = round(sqrt(T))` (only every k-th state is kept; a segment of k steps is
recomputed during the backward). Both give bit-identical gradients, which is checked.

Peaks are tracemalloc's (every numpy buffer is traced) above the memory held before the step;
parameters, inputs and G are allocated before and are not counted. "kept after fwd" is what the
forward leaves alive for the backward. For reference, the activations a hand-written numpy BPTT
must store are estimated as T * B * H * bytes * 7 (an LSTM keeps 4 gate activations, c, tanh(c)
and h per step) and measured on benchmarks/numpy_bptt.py, the same step written by hand.

Checkpointing promises O(T/k + k) = O(sqrt(T)) for what the recurrence keeps. What is O(T) in
any case: the inputs, the outputs and the gradient of the outputs, and in the built-in layers the
input projection x W_ih^T of all T steps (T, B, 4H), hoisted out of the loop into one GEMM, and
its gradient. The last columns show how the checkpointed peak grows from row to row against the
sqrt(T) factor and the T factor of the change of T.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):  # the working tree's tinygrad_rnn, and numpy_bptt
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy_bptt  # noqa: E402

import tinygrad_rnn as tg  # noqa: E402
from tinygrad_rnn import nn  # noqa: E402

SAVED_PER_STEP = 7  # LSTM: i, f, g, o, c, tanh(c), h — each (B, H) — per time step
MB = 1e6


def traced(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """(result, peak bytes, bytes still held afterwards) of fn(), above the starting point."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak - base, current - base


def lstm_step(lstm: nn.LSTM, xs: np.ndarray, G: tg.Tensor) -> dict[str, Any]:
    """Forward, scalar loss, backward; returns the memory kept by the forward and the grads.
    G of shape (T, B, H) weighs every output; G of shape (B, H) only the final state h_T."""
    lstm.zero_grad()
    out, (h_n, _) = lstm(xs)
    loss = (out * G).sum() if G.ndim == 3 else (h_n[-1] * G).sum()
    kept = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    loss.backward()
    return {"kept": kept, "grads": [p.grad for p in lstm.parameters()]}


def measure(T: int, B: int, I: int, H: int, seed: int = 0, loss: str = "all") -> dict[str, Any]:
    dtype = np.float32
    r = np.random.default_rng(seed)
    xs = r.normal(size=(T, B, I)).astype(dtype)
    G_np = r.normal(size=(T, B, H)).astype(dtype)
    if loss == "last":  # many-to-one: only h_T enters the loss
        G_np[:-1] = 0
    G = tg.Tensor(G_np if loss == "all" else G_np[-1])
    k = max(1, round(math.sqrt(T)))
    row: dict[str, Any] = {"T": T, "B": B, "I": I, "H": H, "k": k}
    grads = {}
    for name, every in (("plain", None), ("ckpt", k)):
        tg.manual_seed(seed)  # the same parameters for both runs
        lstm = nn.LSTM(I, H, dtype=dtype, checkpoint_every=every)
        # the baseline is taken inside `traced`; lstm_step reads the absolute current value
        gc.collect()
        t0 = time.perf_counter()
        res, peak, _ = traced(lambda: _with_base(lstm_step, lstm, xs, G))
        row[f"{name}_seconds"] = time.perf_counter() - t0
        row[f"{name}_peak_mb"] = peak / MB
        row[f"{name}_kept_mb"] = res["kept"] / MB
        grads[name] = res["grads"]
        del lstm, res
    row["bit_identical"] = all(np.array_equal(a, b) for a, b in zip(grads["plain"], grads["ckpt"]))
    del grads
    row["ratio"] = row["ckpt_peak_mb"] / row["plain_peak_mb"]
    row["ckpt_peak_per_sqrtT"] = row["ckpt_peak_mb"] / math.sqrt(T)
    row["numpy_estimate_mb"] = T * B * H * np.dtype(dtype).itemsize * SAVED_PER_STEP / MB

    params = {n: r.uniform(-1 / math.sqrt(H), 1 / math.sqrt(H), s).astype(dtype) for n, s in
              (("weight_ih", (4 * H, I)), ("weight_hh", (4 * H, H)), ("bias_ih", (4 * H,)),
               ("bias_hh", (4 * H,)))}
    _, peak, _ = traced(lambda: numpy_bptt.train_step("lstm", params, xs, G_np)[1])
    row["numpy_peak_mb"] = peak / MB
    return row


def _with_base(step: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run step with its 'kept' reading made relative to the memory held when it started."""
    base = tracemalloc.get_traced_memory()[0]
    res = step(*args)
    res["kept"] -= base
    return res


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'T':>5} {'k':>3} | {'plain peak':>10} {'ckpt peak':>10} {'ratio':>6} | "
            f"{'kept after fwd':>15} | {'ckpt/sqrtT':>10} {'growth':>7} {'sqrtT x':>7} "
            f"{'T x':>5} | {'numpy est':>9} {'numpy peak':>10} | {'bits':>4}")
    sub = (f"{'':>5} {'':>3} | {'MB':>10} {'MB':>10} {'':>6} | {'plain / ckpt MB':>15} | "
           f"{'MB':>10} {'ckpt':>7} {'':>7} {'':>5} | {'MB':>9} {'MB':>10} | {'same':>4}")
    lines = [head, sub, "-" * len(head)]
    prev = None
    for row in rows:
        if prev is None:
            growth = sq = tf = "-"
        else:
            growth = f"{row['ckpt_peak_mb'] / prev['ckpt_peak_mb']:.2f}"
            sq = f"{math.sqrt(row['T'] / prev['T']):.2f}"
            tf = f"{row['T'] / prev['T']:.1f}"
        kept = f"{row['plain_kept_mb']:.1f} / {row['ckpt_kept_mb']:.1f}"
        lines.append(
            f"{row['T']:>5} {row['k']:>3} | {row['plain_peak_mb']:>10.1f} "
            f"{row['ckpt_peak_mb']:>10.1f} {row['ratio']:>6.2f} | {kept:>15} | "
            f"{row['ckpt_peak_per_sqrtT']:>10.2f} {growth:>7} {sq:>7} {tf:>5} | "
            f"{row['numpy_estimate_mb']:>9.1f} {row['numpy_peak_mb']:>10.1f} | "
            f"{'yes' if row['bit_identical'] else 'NO':>4}")
        prev = row
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="T = 100, 400 with B = 8, H = 64")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON to PATH")
    ap.add_argument("--T", type=int, nargs="+", help="sequence lengths (default 250 1000 4000)")
    ap.add_argument("--loss", choices=("all", "last"), default="all",
                    help="all: sum(out * G) over every step (the (T, B, H) output and its "
                         "gradient are then O(T) whatever is checkpointed); last: sum(h_T * G), "
                         "a many-to-one step, where only the recurrence's own memory remains")
    args = ap.parse_args(argv)
    if args.quick:
        Ts, B, I, H = args.T or [100, 400], 8, 32, 64
    else:
        Ts, B, I, H = args.T or [250, 1000, 4000], 32, 32, 256
    loss = "sum(out * G)" if args.loss == "all" else "sum(h_T * G)"
    print(f"nn.LSTM({I}, {H}), B = {B}, float32; one step = forward over T + {loss} + "
          f"backward; peaks by tracemalloc; checkpoint_every = k = round(sqrt(T))")
    rows = []
    for T in Ts:
        row = measure(T, B, I, H, loss=args.loss)
        rows.append(row)
        print(f"  T = {T}: plain {row['plain_peak_mb']:.1f} MB in {row['plain_seconds']:.1f} s, "
              f"checkpointed {row['ckpt_peak_mb']:.1f} MB in {row['ckpt_seconds']:.1f} s",
              flush=True)
    print()
    print(table(rows))
    print()
    print("ratio = checkpointed peak / plain peak; growth = checkpointed peak / previous row's, "
          "against the growth of sqrt(T) and of T;")
    print(f"numpy est = T*B*H*4 bytes*{SAVED_PER_STEP} saved arrays; numpy peak = measured on "
          f"benchmarks/numpy_bptt.py (hand-written BPTT, same step)")
    if args.json:
        meta = {"python": sys.version.split()[0], "numpy": np.__version__,
                "machine": platform.machine(), "tinygrad_rnn": getattr(tg, "__version__", "?")}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
