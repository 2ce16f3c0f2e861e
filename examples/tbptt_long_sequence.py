"""Truncated BPTT over a 100,000-step sequence, plain and with checkpointing inside the windows.

Task (delayed recall, long-range by construction): a stream of random symbols x_t from
{0, ..., V-1}; the target at step t is the symbol seen `lag` steps earlier, y_t = x_{t-lag}.
A constant predictor cannot beat log V nats: the whole signal is in the past.

Full BPTT over all T steps would keep the graph of every step until the one backward: far more
memory than TBPTT needs, so we only estimate it (measured bytes per step x T). Instead:

1. TBPTT(k1, k2) with k2 > k1 (`tg.bptt.train_truncated`): an update every k1 steps, its gradient
   reaching k2 steps back, so the gradient of every loss step reaches at least k2 - k1 steps
   into the past (30 with the defaults, more than the lag of 8).
2. The same, with `checkpoint_every=c` inside each window: only every c-th state is kept and the
   steps between are recomputed during backward -- the same gradients to the last bit (so the
   same losses), less memory, more time.

Peak memory is measured with tracemalloc over the first `--mem-steps` steps of each run (it is
constant in T: each window's graph is freed after its update; tracemalloc itself slows Python
down a lot, so it is not left on for the whole run).

    python examples/tbptt_long_sequence.py            # T = 100,000 (a few minutes)
    python examples/tbptt_long_sequence.py --quick    # small, for tests
"""

from __future__ import annotations

import os

# Small matrices: BLAS threads cost more than they give here (set before numpy is imported).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

import tinygrad_rnn as tg  # noqa: E402
import tinygrad_rnn.nn.functional as F  # noqa: E402
from tinygrad_rnn import nn, optim  # noqa: E402
from tinygrad_rnn.progress import Progress, print_result  # noqa: E402


class Recaller(nn.Module):
    """Embedding -> LSTM -> linear read-out of V logits per step."""

    def __init__(self, vocab: int, hidden: int, checkpoint_every: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lstm = nn.LSTM(8, hidden, checkpoint_every=checkpoint_every)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Any, state: Any = None) -> tuple[tg.Tensor, Any]:
        h, state = self.lstm(self.embed(x), state)  # x: (T, B) ints -> h: (T, B, H)
        return self.head(h), state


def make_stream(steps: int, batch: int, vocab: int, lag: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys), both (steps, batch) ints, with ys[t] = xs[t - lag] (a true earlier symbol even
    for t < lag: the stream starts `lag` steps before the first input)."""
    s = rng.integers(0, vocab, size=(steps + lag, batch))
    return s[lag:], s[:-lag]


def cross_entropy(vocab: int) -> Callable[[tg.Tensor, Any], tg.Tensor]:
    return lambda logits, y: F.cross_entropy(logits.reshape(-1, vocab), np.asarray(y).reshape(-1))


def peak_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(peak bytes newly allocated while fn runs, fn's result), measured with tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def full_bptt_bytes_per_step(args: argparse.Namespace, xs: np.ndarray, ys: np.ndarray) -> float:
    """Slope of full-BPTT peak memory (forward over n steps, then backward) in n."""
    model = Recaller(args.vocab, args.hidden)
    loss_fn = cross_entropy(args.vocab)

    def full(n: int) -> None:
        logits, _ = model(xs[:n])
        loss_fn(logits, ys[:n]).backward()

    n1, n2 = args.mem_steps // 2, args.mem_steps
    p1, p2 = peak_bytes(lambda: full(n1))[0], peak_bytes(lambda: full(n2))[0]
    return (p2 - p1) / (n2 - n1)


def train(args: argparse.Namespace, xs: np.ndarray, ys: np.ndarray, init: dict[str, np.ndarray],
          checkpoint_every: int | None, desc: str) -> dict[str, Any]:
    """TBPTT(k1, k2) over the whole stream; returns losses, peak memory, time, final model."""
    model = Recaller(args.vocab, args.hidden, checkpoint_every)
    model.load_state_dict(init)  # both runs start from the same weights
    opt = optim.Adam(model.parameters(), lr=args.lr)
    losses: list[float] = []
    bar = Progress(total=len(xs), desc=desc, enabled=not args.no_progress)
    ce = cross_entropy(args.vocab)

    def loss_fn(logits: tg.Tensor, y: Any) -> tg.Tensor:
        loss = ce(logits, y)  # called once per update, on its k1 new steps
        losses.append(loss.item())
        bar.update(len(y), loss=f"{np.mean(losses[-50:]):.3f}")
        return loss

    def run(lo: int, hi: int, state: Any) -> Any:
        return tg.bptt.train_truncated(model, xs[lo:hi], ys[lo:hi], loss_fn, opt, k1=args.k1,
                                       k2=args.k2, state=state, max_grad_norm=1.0)[1]

    t0 = time.perf_counter()
    # the first mem_steps under tracemalloc, the rest without; the state carries over (only the
    # first window after the split is shorter than k2)
    peak, state = peak_bytes(lambda: run(0, args.mem_steps, None))
    run(args.mem_steps, len(xs), state)
    seconds = time.perf_counter() - t0
    bar.close()
    return {"model": model, "losses": losses, "peak": peak, "seconds": seconds}


def evaluate(model: Recaller, xs: np.ndarray, ys: np.ndarray, vocab: int, warmup: int) -> float:
    """Mean cross-entropy on a held-out stream, skipping the first `warmup` steps."""
    with tg.no_grad():
        logits, _ = model(xs)
        return cross_entropy(vocab)(logits[warmup:], ys[warmup:]).item()


def human(n: float) -> str:
    """Bytes as KiB, MiB or GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:.0f} B"


def physical_memory() -> int | None:
    """This machine's RAM in bytes, where the OS tells (Linux, macOS)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=100_000, help="length T of the training stream")
    p.add_argument("--batch", type=int, default=32, help="independent streams side by side")
    p.add_argument("--vocab", type=int, default=4, help="number of symbols V")
    p.add_argument("--lag", type=int, default=8, help="y_t = x_{t-lag}")
    p.add_argument("--hidden", type=int, default=32, help="LSTM hidden size")
    p.add_argument("--k1", type=int, default=50, help="steps between updates")
    p.add_argument("--k2", type=int, default=80, help="steps each update backpropagates through")
    p.add_argument("--checkpoint-every", type=int, default=10,
                   help="keep every c-th state inside a window (second run)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--mem-steps", type=int, default=2000,
                   help="steps measured with tracemalloc (a multiple of k1)")
    p.add_argument("--eval-steps", type=int, default=4000, help="length of the held-out stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small settings for tests (~10 s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.mem_steps, args.eval_steps, args.batch = 3000, 300, 1000, 8
        args.k1, args.k2, args.checkpoint_every = 50, 150, 10
        args.vocab, args.lag, args.lr = 4, 3, 1e-2
    if args.k2 <= args.k1:
        p.error("this example is about TBPTT(k1, k2) with k2 > k1")
    args.mem_steps = max(args.k1, args.mem_steps // args.k1 * args.k1)
    if args.steps <= args.mem_steps:
        p.error("--steps must be larger than --mem-steps")

    t_start, cpu_start = time.perf_counter(), time.process_time()
    tg.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    xs, ys = make_stream(args.steps, args.batch, args.vocab, args.lag, rng)
    xs_test, ys_test = make_stream(args.eval_steps, args.batch, args.vocab, args.lag, rng)
    init = Recaller(args.vocab, args.hidden).state_dict()
    print(f"delayed recall: V={args.vocab}, lag={args.lag}, T={args.steps:,} steps x "
          f"{args.batch} streams; LSTM({args.hidden}); TBPTT(k1={args.k1}, k2={args.k2})")

    per_step = full_bptt_bytes_per_step(args, xs, ys)
    plain = train(args, xs, ys, init, None, f"TBPTT({args.k1},{args.k2})")
    ckpt = train(args, xs, ys, init, args.checkpoint_every,
                 f"TBPTT({args.k1},{args.k2}) + checkpoint_every={args.checkpoint_every}")

    # trivial predictor: the symbol frequencies of the training stream, whatever came before
    freq = np.bincount(xs.ravel(), minlength=args.vocab) / xs.size
    baseline = float(-np.mean(np.log(freq[ys_test[args.lag:]])))
    results = {}
    for name, run in (("tbptt", plain), ("tbptt_checkpoint", ckpt)):
        n = max(1, len(run["losses"]) // 20)
        results[name] = {
            "test_loss": evaluate(run["model"], xs_test, ys_test, args.vocab, args.lag),
            "train_loss_first": float(np.mean(run["losses"][:n])),
            "train_loss_last": float(np.mean(run["losses"][-n:])),
            "peak_bytes": int(run["peak"]),
            "seconds": run["seconds"],
        }
    identical = plain["losses"] == ckpt["losses"]

    print(f"\nheld-out cross-entropy (nats, {args.eval_steps:,} fresh steps; log V = "
          f"{math.log(args.vocab):.3f}):")
    print(f"  {'run':<34} {'test loss':>9} {'train loss first->last 5%':>26} "
          f"{'peak memory':>12} {'time':>8}")
    for label, name in ((f"TBPTT({args.k1}, {args.k2})", "tbptt"),
                        (f"  + checkpoint_every={args.checkpoint_every}", "tbptt_checkpoint")):
        r = results[name]
        print(f"  {label:<34} {r['test_loss']:9.4f} {r['train_loss_first']:12.4f} -> "
              f"{r['train_loss_last']:<10.4f} {human(r['peak_bytes']):>12} {r['seconds']:7.1f}s")
    print(f"  {'trivial predictor (frequencies)':<34} {baseline:9.4f}")
    print(f"checkpointed run reproduces every update loss bit for bit: {identical}")
    ram = physical_memory()
    print(f"full BPTT would need ~{human(per_step)} per step x {args.steps:,} steps = "
          f"~{human(per_step * args.steps)}" + (f" (this machine has {human(ram)} of RAM)"
                                              if ram else ""))
    ratio = results["tbptt"]["peak_bytes"] / max(1, results["tbptt_checkpoint"]["peak_bytes"])
    print(f"checkpointing: peak memory / {ratio:.2f}, time x "
          f"{ckpt['seconds'] / plain['seconds']:.2f}")

    seconds, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    print(f"wall time {seconds:.1f}s (CPU {cpu:.1f}s)")
    result = {
        "example": "tbptt_long_sequence",
        "task": f"delayed recall (V={args.vocab}, lag={args.lag}), T={args.steps}",
        "metric": "held-out cross-entropy (nats)", "higher_is_better": False,
        "ours": results["tbptt"]["test_loss"], "baseline": baseline,
        "baseline_name": "trivial predictor (symbol frequencies)",
        "loss_start": results["tbptt"]["train_loss_first"],
        "loss_end": results["tbptt"]["train_loss_last"],
        "runs": results, "checkpoint_losses_identical": identical,
        "full_bptt_bytes_per_step": per_step, "full_bptt_bytes_estimate": per_step * args.steps,
        "steps": args.steps, "k1": args.k1, "k2": args.k2,
        "checkpoint_every": args.checkpoint_every, "seconds": seconds, "cpu_seconds": cpu,
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
