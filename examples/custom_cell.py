"""A new recurrent cell in ~15 lines: gradient-checked on random sequences, then trained with TBPTT.

The cell is an LSTM with peephole connections (Gers & Schmidhuber, 2000): its input and forget
gates also look at the cell state c, its output gate at the new one c'. Written as an
`nn.Module` whose `forward(x_t, state) -> (y_t, new_state)` uses only public primitives, it gets
backpropagation through time, `nn.unroll`/`nn.Recurrent` and `tg.bptt.train_truncated` for free.

1. Property test: `tg.testing.gradcheck` (float64 central differences) through a few unrolled
   steps, with respect to the inputs, the initial state (h0, c0) and every parameter, on
   sequences drawn by hypothesis from `tg.testing.strategies.sequences` (skipped with a message
   when hypothesis is not installed; one fixed random sequence is checked either way).
2. Training: predict the next value of noisy sine waves (each series its own frequency and
   phase, noise sigma = 0.1), with TBPTT(k1, k2). Baselines on the same held-out steps: the last
   seen value, and the mean (0). The noise alone costs sigma^2 = 0.01: no predictor can go below.

    python examples/custom_cell.py
    python examples/custom_cell.py --quick
"""

from __future__ import annotations

import os

# Small matrices: BLAS threads cost more than they give here (set before numpy is imported).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402

import tinygrad_rnn as tg  # noqa: E402
import tinygrad_rnn.nn.functional as F  # noqa: E402
from tinygrad_rnn import nn, optim  # noqa: E402
from tinygrad_rnn.testing import gradcheck  # noqa: E402
from tinygrad_rnn.progress import Progress, print_result  # noqa: E402


# ----------------------------------------------------------------------------- the cell
class PeepholeLSTMCell(nn.Module):
    """i = s(W_i[x,h] + p_i c), f = s(W_f[x,h] + p_f c), c' = f c + i tanh(W_g[x,h]),
    o = s(W_o[x,h] + p_o c'), h' = o tanh(c'). State (h, c), each (B, H); output h'."""

    def __init__(self, input_size: int, hidden_size: int, dtype: Any = np.float32) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.gates = nn.Linear(input_size + hidden_size, 4 * hidden_size, dtype=dtype)
        self.peep = nn.Parameter(np.zeros((3, hidden_size), dtype=dtype))  # p_i, p_f, p_o

    def forward(self, x: tg.Tensor, state: Any = None) -> tuple[tg.Tensor, Any]:
        if state is None:
            zeros = tg.Tensor(np.zeros((x.shape[0], self.hidden_size), dtype=x.dtype))
            state = (zeros, zeros)
        h, c = state
        i, f, g, o = self.gates(tg.concat([x, h], axis=-1)).chunk(4, axis=-1)
        p_i, p_f, p_o = self.peep[0], self.peep[1], self.peep[2]
        c = (f + p_f * c).sigmoid() * c + (i + p_i * c).sigmoid() * g.tanh()
        h = (o + p_o * c).sigmoid() * c.tanh()
        return h, (h, c)


class Forecaster(nn.Module):
    """The cell over time (`nn.Recurrent`) and a linear read-out: (T, B, 1) -> (T, B, 1)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.Recurrent(PeepholeLSTMCell(1, hidden))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Any, state: Any = None) -> tuple[tg.Tensor, Any]:
        h, state = self.rnn(x, state)
        return self.head(h), state


# ----------------------------------------------------------------------------- gradient checks
def functional_call(module: nn.Module, params: Sequence[tg.Tensor], fn: Callable[[], Any]) -> Any:
    """fn() with module's parameters (in named_parameters() order) temporarily replaced by
    `params`, so that gradcheck can differentiate with respect to them as inputs."""
    slots = []
    for (name, _), new in zip(module.named_parameters(), params):
        *path, attr = name.split(".")
        owner = module
        for part in path:
            owner = getattr(owner, part)
        slots.append((owner, attr, getattr(owner, attr)))
        object.__setattr__(owner, attr, new)  # bypasses registration: restored below
    try:
        return fn()
    finally:
        for owner, attr, old in slots:
            object.__setattr__(owner, attr, old)


def check_cell(cell: PeepholeLSTMCell, xs: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> bool:
    """gradcheck of the unrolled cell w.r.t. xs, h0, c0 and every parameter (float64)."""
    params = [p.data for p in cell.parameters()]

    def run(xs: tg.Tensor, h0: tg.Tensor, c0: tg.Tensor, *ps: tg.Tensor) -> Any:
        ys, (h, c) = functional_call(cell, ps, lambda: nn.unroll(cell, xs, (h0, c0)))
        return ys, h, c  # every output gets its own random cotangent

    return gradcheck(run, [xs, h0, c0, *params])


def property_test(cell: PeepholeLSTMCell, examples: int) -> int | None:
    """gradcheck on `examples` hypothesis-drawn sequences (1-4 steps, batch 1-3); returns how
    many ran, or None when hypothesis is not installed."""
    try:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        from tinygrad_rnn.testing import strategies
    except ImportError:
        return None
    H, inp = cell.hidden_size, cell.gates.in_features - cell.hidden_size
    ran = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(xs=strategies.sequences(T=st.integers(1, 4), B=st.integers(1, 3), I=inp),
           data=st.data())
    def prop(xs: np.ndarray, data: Any) -> None:
        h0 = data.draw(strategies.arrays((xs.shape[1], H), min_value=-1.0, max_value=1.0))
        c0 = data.draw(strategies.arrays((xs.shape[1], H)))
        assert check_cell(cell, xs, h0, c0)
        ran.append(xs.shape)

    prop()
    return len(ran)


# ----------------------------------------------------------------------------- data and training
def noisy_sines(steps: int, batch: int, noise: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) of shape (steps, batch, 1): ys[t] = xs[t + 1]; each series has its own frequency
    (period about 20-125 steps) and phase, plus Gaussian noise of std `noise`."""
    omega = rng.uniform(0.05, 0.3, size=batch)
    phase = rng.uniform(0, 2 * np.pi, size=batch)
    t = np.arange(steps + 1)[:, None]
    series = np.sin(omega * t + phase) + noise * rng.standard_normal((steps + 1, batch))
    series = series[..., None].astype(np.float32)
    return series[:-1], series[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=32, help="hidden size of the cell")
    p.add_argument("--epochs", type=int, default=10, help="each epoch: fresh series")
    p.add_argument("--steps", type=int, default=2000, help="length of each epoch's series")
    p.add_argument("--batch", type=int, default=16, help="series side by side")
    p.add_argument("--k1", type=int, default=20, help="TBPTT: steps between updates")
    p.add_argument("--k2", type=int, default=40, help="TBPTT: steps backpropagated through")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--noise", type=float, default=0.1, help="std of the observation noise")
    p.add_argument("--examples", type=int, default=10,
                   help="hypothesis examples for the gradient check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small settings for tests (~10 s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.epochs, args.steps, args.examples = 16, 3, 400, 3
    t_start, cpu_start = time.perf_counter(), time.process_time()
    tg.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    # 1. gradients against central differences (float64, random peepholes so they matter)
    cell64 = PeepholeLSTMCell(3, 4, dtype=np.float64)
    cell64.peep.data[...] = rng.normal(scale=0.5, size=cell64.peep.shape)
    check_cell(cell64, rng.normal(size=(5, 2, 3)), rng.normal(size=(2, 4)),
               rng.normal(size=(2, 4)))
    print("gradcheck, 5 steps of one random sequence (inputs, h0, c0, all parameters): ok")
    ran = property_test(cell64, args.examples)
    if ran is None:
        print("hypothesis is not installed (pip install hypothesis): property test skipped")
    else:
        print(f"gradcheck on {ran} hypothesis-drawn sequences "
              f"(tg.testing.strategies.sequences): ok")

    # 2. training with truncated BPTT
    model = Forecaster(args.hidden)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    epoch_losses = []
    bar = Progress(total=args.epochs, desc="training", enabled=not args.no_progress)
    t_train = time.perf_counter()
    for _ in range(args.epochs):
        xs, ys = noisy_sines(args.steps, args.batch, args.noise, rng)
        loss, _ = tg.bptt.train_truncated(model, xs, ys, F.mse_loss, opt, k1=args.k1,
                                          k2=args.k2, max_grad_norm=1.0)
        epoch_losses.append(loss)
        bar.update(1, loss=f"{loss:.4f}")
    bar.close()
    train_seconds = time.perf_counter() - t_train

    # held-out series; every predictor is scored on the same steps, after a warm-up
    warmup = 50
    xs, ys = noisy_sines(1000, 64, args.noise, rng)
    with tg.no_grad():
        pred, _ = model(xs)
    mse = {
        "model": float(np.mean((pred.numpy()[warmup:] - ys[warmup:]) ** 2)),
        "last_value": float(np.mean((xs[warmup:] - ys[warmup:]) ** 2)),
        "mean": float(np.mean(ys[warmup:] ** 2)),
    }
    print(f"\nnext-value MSE on held-out noisy sines (64 series x {1000 - warmup} steps; noise "
          f"floor sigma^2 = {args.noise ** 2:.4f}):")
    print(f"  peephole LSTM cell, TBPTT({args.k1}, {args.k2})  {mse['model']:.4f}")
    print(f"  baseline: last seen value             {mse['last_value']:.4f}")
    print(f"  baseline: the mean (0)                {mse['mean']:.4f}")
    print(f"training loss per epoch: " + " ".join(f"{x:.4f}" for x in epoch_losses)
          + f" ({train_seconds:.1f}s)")

    seconds, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    print(f"wall time {seconds:.1f}s (CPU {cpu:.1f}s)")
    result = {
        "example": "custom_cell",
        "task": "next value of noisy sines, peephole LSTM cell trained with TBPTT",
        "metric": "held-out MSE", "higher_is_better": False,
        "ours": mse["model"], "baseline": mse["last_value"],
        "baseline_name": "last seen value", "baseline_mean": mse["mean"],
        "noise_floor": args.noise ** 2, "loss_start": epoch_losses[0],
        "loss_end": epoch_losses[-1], "epoch_losses": epoch_losses,
        "gradcheck_examples": ran, "seconds": seconds, "cpu_seconds": cpu,
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
