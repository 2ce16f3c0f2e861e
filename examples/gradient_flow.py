"""The vanishing/exploding-gradient picture: how much of dL/dh_t reaches back to early steps.

For each model we run T steps of random input, put the loss on the last output only, and ask
`tg.diagnostics.gradient_flow` for ||dL/dh_t||, t = 1..T: the total derivative of the loss with
respect to the state after step t, through every path. We compare

- a tanh RNN whose recurrent matrix W_hh is rescaled to a small spectral radius (0.5): each step
  back multiplies the gradient by roughly W_hh^T diag(1 - h^2), so it shrinks geometrically;
- the same RNN with a large spectral radius (2.0): the gradient grows geometrically instead;
- an LSTM and a GRU with PyTorch's default initialisation, whose additive state updates
  (c' = f c + ..., h' = (1 - z) n + z h) let more of the gradient through;
- the LSTM with forget-gate bias +1, the usual remedy (Jozefowicz et al., 2015).

Everything runs in float64, whose range (~1e-308) holds ratios that float32 would flush to 0.
One PNG with all curves on a log scale is written with `tg.diagnostics.plot_gradient_flow`.

    python examples/gradient_flow.py                     # T = 200, writes gradient_flow.png
    python examples/gradient_flow.py --quick --plot g.png
"""

from __future__ import annotations

import os

# Small matrices: BLAS threads cost more than they give here (set before numpy is imported).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import tinygrad_rnn as tg  # noqa: E402
import tinygrad_rnn.nn.functional as F  # noqa: E402
from tinygrad_rnn import nn  # noqa: E402
from tinygrad_rnn.progress import Progress, print_result  # noqa: E402


def tanh_rnn(inputs: int, hidden: int, radius: float) -> nn.RNN:
    """A tanh RNN whose W_hh is rescaled to spectral radius `radius` (PyTorch init otherwise)."""
    rnn = nn.RNN(inputs, hidden, dtype=np.float64)
    w = rnn.weight_hh_l0.data
    w *= radius / np.max(np.abs(np.linalg.eigvals(w)))
    return rnn


def lstm_forget_bias(inputs: int, hidden: int, bias: float) -> nn.LSTM:
    """An LSTM with `bias` added to the forget gate's bias (gates i, f, g, o)."""
    lstm = nn.LSTM(inputs, hidden, dtype=np.float64)
    lstm.bias_hh_l0.data[hidden:2 * hidden] += bias
    return lstm


def horizon(norms: np.ndarray, fraction: float = 1e-3) -> int:
    """How many steps back from T the gradient stays within `fraction` of ||dL/dh_T||
    (T - 1 if it never falls that low)."""
    low = np.nonzero(norms[::-1] < fraction * norms[-1])[0]
    return int(low[0]) - 1 if len(low) else len(norms) - 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="sequence length T")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inputs", type=int, default=4, help="input features")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of every model")
    p.add_argument("--small-radius", type=float, default=0.5,
                   help="spectral radius of W_hh for the 'small weights' tanh RNN")
    p.add_argument("--large-radius", type=float, default=2.0,
                   help="spectral radius of W_hh for the 'large weights' tanh RNN")
    p.add_argument("--plot", default="gradient_flow.png", help="where to write the PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small settings for tests (~2 s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.hidden = 100, 32
    if args.steps < 2:
        p.error("--steps must be at least 2")

    t_start, cpu_start = time.perf_counter(), time.process_time()
    tg.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    T, B, inp, H = args.steps, args.batch, args.inputs, args.hidden
    xs = rng.standard_normal((T, B, inp))
    target = rng.standard_normal((B, 1))
    head = nn.Linear(H, 1, dtype=np.float64)  # one fixed read-out shared by all models

    def loss_fn(outputs: tg.Tensor) -> tg.Tensor:
        return F.mse_loss(head(outputs[-1]), target)  # the loss sees only the last output

    models = {
        f"tanh RNN, radius {args.small_radius:g}": tanh_rnn(inp, H, args.small_radius),
        f"tanh RNN, radius {args.large_radius:g}": tanh_rnn(inp, H, args.large_radius),
        "LSTM": nn.LSTM(inp, H, dtype=np.float64),
        "GRU": nn.GRU(inp, H, dtype=np.float64),
        "LSTM, forget bias +1": lstm_forget_bias(inp, H, 1.0),
    }
    norms: dict[str, np.ndarray] = {}
    bar = Progress(total=len(models), desc="gradient_flow", enabled=not args.no_progress)
    for label, model in models.items():
        norms[label] = tg.diagnostics.gradient_flow(model, xs, loss_fn)
        bar.update(1, model=label)
    bar.close()

    ratios = {label: float(g[0] / g[-1]) for label, g in norms.items()}
    print(f"||dL/dh_t|| over T = {T} steps, loss on the last output (batch {B}, hidden {H}, "
          f"float64)")
    print(f"  {'model':<26} {'||dL/dh_T||':>12} {'||dL/dh_1||':>12} {'t=1 / t=T':>11} "
          f"{'steps back within 1e-3':>23}")
    for label, g in norms.items():
        print(f"  {label:<26} {g[-1]:12.3e} {g[0]:12.3e} {ratios[label]:11.2e} "
              f"{horizon(g):>23d}")

    small, large = list(ratios)[:2]
    vanishes = ratios[small] < 1e-6
    explodes = ratios[large] > 1.0
    lstm_keeps_more = ratios["LSTM"] > ratios[small]
    print(f"claim: the small-weight tanh RNN vanishes (ratio < 1e-6): {vanishes}")
    print(f"claim: the LSTM keeps more gradient than it: {lstm_keeps_more} "
          f"({ratios['LSTM'] / ratios[small]:.1e}x)")
    print(f"claim: the large-weight tanh RNN explodes (ratio > 1): {explodes}")

    plot: str | None = None
    try:
        plot = tg.diagnostics.plot_gradient_flow(
            norms, args.plot, title=f"||dL/dh_t||, loss on step T = {T}")
        print(f"plot: {os.path.abspath(plot)}")
    except ImportError as e:  # matplotlib is an optional extra
        print(f"no plot: {e}")

    seconds, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    print(f"wall time {seconds:.1f}s (CPU {cpu:.1f}s)")
    result = {
        "example": "gradient_flow",
        "task": f"gradient flow over T={T} steps, loss on the last output",
        "metric": "||dL/dh_1|| / ||dL/dh_T||", "higher_is_better": True,
        "ours": ratios["LSTM"], "ours_name": "LSTM",
        "baseline": ratios[small], "baseline_name": small,
        "ratios": ratios, "vanishes": vanishes, "explodes": explodes,
        "lstm_keeps_more": lstm_keeps_more, "plot": plot, "steps": T,
        "seconds": seconds, "cpu_seconds": cpu,
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
