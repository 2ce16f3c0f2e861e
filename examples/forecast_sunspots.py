"""One-step-ahead forecasting of monthly sunspot numbers with an LSTM trained by truncated BPTT.

    python examples/forecast_sunspots.py            # about a minute on 2 cores
    python examples/forecast_sunspots.py --quick    # a few seconds, for tests

Data: the monthly mean sunspot number, January 1749 to June 2009 (3,126 months, NOAA, bundled).
The model is trained on the first 80% of the months and forecasts each month of the remaining 20%
(1957-2009, almost five 11-year cycles) from all the months before it. Values are normalised
with the training months' mean and standard deviation.

The LSTM reads one month at a time and predicts the change to the next month, so before training
it is exactly the "same as last month" forecast. It is trained with `tg.bptt.train_truncated`,
TBPTT(k1, k2) over parallel stretches of the training months before 1915, and keeps the epoch
that forecasts 1915-1957 (the validation months) best. Baselines: "same as last month" and a
linear autoregressive model AR(k) fitted by least squares on all training months, its order k
chosen on the same validation months. The result is held-out RMSE in sunspot-number units; a
plot of forecast against truth is saved (with matplotlib). The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import datasets, nn, optim
from tinygrad_rnn.progress import Progress, limit_blas_threads, print_result

DEFAULTS = {"epochs": 40, "hidden": 16, "streams": 8, "k1": 24, "k2": 72, "lr": 3e-3}
QUICK = {"epochs": 8, "hidden": 16, "streams": 8, "k1": 24, "k2": 48, "lr": 1e-2}
TRAIN_FRACTION = 0.8


# ----------------------------------------------------------------------------- baselines
def ar_design(series: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Rows [x_{t-1}, ..., x_{t-k}, 1] for each target index t."""
    return np.stack([series[targets - j] for j in range(1, k + 1)] + [np.ones(len(targets))],
                    axis=1)


def fit_ar(series: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Least-squares AR(k) coefficients predicting series[t] for every t in `targets` (t >= k)."""
    coef, *_ = np.linalg.lstsq(ar_design(series, targets, k), series[targets], rcond=None)
    return coef


def validation_start(n_train: int) -> int:
    """The last 20% of the training months validate model choices (AR order, LSTM epoch)."""
    return int(0.8 * n_train)


def choose_ar_order(series: np.ndarray, n_train: int, max_order: int) -> int:
    """The order with the lowest RMSE on the validation months when fitted on the months before
    them (no test month is looked at)."""
    cut = validation_start(n_train)
    errors = []
    for k in range(1, max_order + 1):
        coef = fit_ar(series, np.arange(k, cut), k)
        valid = np.arange(cut, n_train)
        errors.append(rmse(ar_design(series, valid, k) @ coef, series[valid]))
    return int(np.argmin(errors)) + 1


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(truth)) ** 2)))


# ----------------------------------------------------------------------------- model
class ResidualForecaster(nn.Module):
    """x_t (T, B, 1) -> forecast of x_{t+1}: x_t + Linear(LSTM(x)_t). The head starts at zero, so
    the untrained model is the "same as last month" forecast."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(1, hidden)
        self.head = nn.Linear(hidden, 1)
        self.head.weight.data[...] = 0.0
        self.head.bias.data[...] = 0.0

    def forward(self, x: Any, state: Any = None) -> tuple[tg.Tensor, Any]:
        x = x if isinstance(x, tg.Tensor) else tg.Tensor(np.asarray(x))
        h, state = self.rnn(x, state)
        return x + self.head(h), state


# ----------------------------------------------------------------------------- plot
def save_plot(path: str, years: np.ndarray, truth: np.ndarray,
              forecasts: dict[str, np.ndarray]) -> bool:
    """Truth and forecasts over the test months as a PNG; False (with a message) without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path} "
              f"(pip install 'tinygrad_rnn[examples]')")
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), height_ratios=[3, 1.4],
                                      sharex=True)
    top.plot(years, truth, color="black", lw=1.0, label="observed")
    errs = {}
    for (name, pred), color in zip(forecasts.items(), ("tab:red", "tab:blue", "tab:gray")):
        top.plot(years, pred, color=color, lw=0.8, alpha=0.85, label=name)
        errs[name] = pred - truth
    top.set_ylabel("monthly mean sunspot number")
    top.set_title("One-step-ahead forecasts on the held-out months")
    top.legend(loc="upper right", fontsize=8)
    for (name, err), color in zip(errs.items(), ("tab:red", "tab:blue", "tab:gray")):
        # 12-month rolling RMSE shows where each forecast struggles
        window = np.ones(12) / 12
        bottom.plot(years[11:], np.sqrt(np.convolve(err ** 2, window, mode="valid")),
                    color=color, lw=0.9, label=name)
    bottom.set_ylabel("12-month RMSE")
    bottom.set_xlabel("year")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Forecast next month's sunspot number with an LSTM trained by truncated "
                    "BPTT; compare held-out RMSE with 'same as last month' and a linear AR(k).")
    d = DEFAULTS
    p.add_argument("--epochs", type=int, help=f"passes over the training months "
                                               f"(default {d['epochs']})")
    p.add_argument("--hidden", type=int, help=f"LSTM hidden size (default {d['hidden']})")
    p.add_argument("--streams", type=int, help=f"the training months are cut into this many "
                                                f"parallel stretches (default {d['streams']})")
    p.add_argument("--k1", type=int, help=f"months between updates (default {d['k1']})")
    p.add_argument("--k2", type=int, help=f"months of gradient history per update, >= k1 "
                                          f"(default {d['k2']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--max-ar-order", type=int, default=48, help="largest AR order tried "
                                                                "(default 48)")
    p.add_argument("--plot", default="sunspots_forecast.png",
                   help="PNG of forecast vs truth (default sunspots_forecast.png in the current "
                        "folder; '' for none)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads, applied if threadpoolctl is installed; 0 leaves numpy's "
                        "default (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run for tests: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "hidden", "streams", "k1", "k2", "max_ar_order"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer")
    if args.k2 < args.k1:
        p.error("--k2 must be at least --k1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit_blas_threads(args.blas_threads)
    t_start = time.perf_counter()
    tg.manual_seed(args.seed)

    series = datasets.sunspots()
    n, n_train = len(series), int(TRAIN_FRACTION * len(series))
    year0, month0 = datasets.SUNSPOTS_FIRST_MONTH
    years = year0 + (month0 - 1 + np.arange(n)) / 12.0
    test_t = np.arange(n_train, n)  # months to forecast, each from all the months before it
    print(f"sunspots: {n:,} months; training on {year0}-{int(years[n_train - 1])} "
          f"({n_train:,} months), forecasting {int(years[n_train])}-{int(years[-1])} "
          f"({len(test_t):,} months) one month ahead")

    persistence = series[test_t - 1]
    order = choose_ar_order(series, n_train, args.max_ar_order)
    ar = ar_design(series, test_t, order) @ fit_ar(series, np.arange(order, n_train), order)
    cut = validation_start(n_train)
    valid_t = np.arange(cut, n_train)
    ar_early = fit_ar(series, np.arange(order, cut), order)  # fitted before the validation months
    ar_valid = rmse(ar_design(series, valid_t, order) @ ar_early, series[valid_t])

    # the LSTM learns from the months before `cut` and keeps the epoch that forecasts the
    # validation months [cut, n_train) best, the same months that chose the AR order
    mean, std = series[:cut].mean(), series[:cut].std()
    z = ((series - mean) / std).astype(np.float32)
    # training pairs (z_t -> z_{t+1}) before `cut`, cut into parallel stretches (time-major)
    span = (cut - 1) // args.streams
    xs = z[:span * args.streams].reshape(args.streams, span).T[..., None]  # (T, B, 1)
    ys = z[1:span * args.streams + 1].reshape(args.streams, span).T[..., None]

    model = ResidualForecaster(args.hidden)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    print(f"model: x_t + Linear(LSTM(1, {args.hidden}))_t, "
          f"{sum(p.size for p in model.parameters()):,} parameters; TBPTT(k1={args.k1}, "
          f"k2={args.k2}) over {args.streams} stretches of {span} months, {args.epochs} epochs, "
          f"validated on {int(years[cut])}-{int(years[n_train - 1])}")

    def forecast(months: np.ndarray) -> np.ndarray:
        """Forecasts of series[months], running over the record from its start (no grad)."""
        with tg.no_grad():
            pred_z, _ = model(z[:months.max(), None, None])
        return pred_z.data[months - 1, 0, 0].astype(np.float64) * std + mean

    losses, best, best_rmse, best_epoch = [], model.state_dict(), np.inf, 0
    bar = Progress(total=args.epochs, desc="LSTM", unit="epoch")
    for epoch in range(1, args.epochs + 1):
        loss, _ = tg.bptt.train_truncated(model, xs, ys, F.mse_loss, opt, k1=args.k1, k2=args.k2,
                                          max_grad_norm=1.0)
        losses.append(loss)
        valid_rmse = rmse(forecast(valid_t), series[valid_t])
        if valid_rmse < best_rmse:
            best, best_rmse, best_epoch = model.state_dict(), valid_rmse, epoch
        bar.update(1, train_mse=f"{loss:.4f}", valid_rmse=f"{valid_rmse:.2f}")
    bar.close()
    model.load_state_dict(best)

    ours = forecast(test_t)
    truth = series[test_t]
    scores = {"lstm": rmse(ours, truth), "persistence": rmse(persistence, truth),
              f"ar{order}": rmse(ar, truth)}

    plot_path = None
    if args.plot:
        if save_plot(args.plot, years[test_t], truth,
                     {f"LSTM (RMSE {scores['lstm']:.2f})": ours,
                      f"AR({order}) (RMSE {scores[f'ar{order}']:.2f})": ar}):
            plot_path = args.plot

    seconds = time.perf_counter() - t_start
    first, last = float(losses[0]), float(losses[-1])
    print(f"\nLSTM training loss (normalised MSE) {first:.4f} -> {last:.4f} "
          f"(first / last epoch)")
    print(f"held-out RMSE over {len(test_t)} months, sunspot-number units (lower is better):")
    print(f"  same as last month     {scores['persistence']:7.3f}")
    print(f"  linear AR({order:<2d}), lstsq   {scores[f'ar{order}']:7.3f}   (order chosen on "
          f"validation months)")
    print(f"  LSTM (this run)        {scores['lstm']:7.3f}   (epoch {best_epoch} of "
          f"{args.epochs}, the best on validation)")
    print(f"validation RMSE ({int(years[cut])}-{int(years[n_train - 1])}, both fitted on the "
          f"months before): AR({order}) {ar_valid:.3f}, LSTM {best_rmse:.3f}")
    if plot_path:
        print(f"plot saved to {plot_path}")
    print(f"done in {seconds:.1f} s")
    result = {
        "program": "forecast_sunspots", "task": "monthly sunspots, one-step-ahead forecast",
        "metric": "test_rmse", "higher_is_better": False, "ours": round(scores["lstm"], 4),
        "baselines": {"persistence": round(scores["persistence"], 4),
                      "ar": round(scores[f"ar{order}"], 4)},
        "ar_order": order,
        "valid_rmse": {"lstm": round(float(best_rmse), 4), "ar": round(ar_valid, 4)},
        "loss_first": round(first, 5), "loss_last": round(last, 5),
        "plot": plot_path, "seconds": round(seconds, 1), "quick": args.quick,
        "config": {k: getattr(args, k) for k in ("epochs", "hidden", "streams", "k1", "k2",
                                                 "lr", "seed")},
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
