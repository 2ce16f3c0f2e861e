"""One-step-ahead forecasting of monthly sunspot numbers with LSTMs trained by truncated BPTT.

    python examples/forecast_sunspots.py            # about a minute on one core
    python examples/forecast_sunspots.py --quick    # a few seconds, for tests

Data: the monthly mean sunspot number, January 1749 to June 2009 (3,126 months, NOAA, bundled).
The model is trained on the first 80% of the months and forecasts each month of the remaining 20%
(1957-2009, almost five 11-year cycles) from all the months before it.

Each network corrects a base forecast: it outputs base + Linear(LSTM(inputs)) with the head
starting at zero, so before training it is exactly the base. The base is the linear AR(k) model
(`--base ar`) or "same as last month" (`--base last`). The LSTM reads the (optionally square-root
transformed, `--transform`) series normalised with the training months' mean and standard
deviation (`--features level`), or each month relative to the mean of the last `--window` months,
with its correction scaled by that mean (`--features relative`). Networks are trained with
`tg.bptt.train_truncated`, TBPTT(k1, k2) over parallel stretches of the training months before
1915; each keeps the epoch that forecasts 1915-1957 (the validation months) best, and
`--ensemble` networks from different initialisations are averaged.

Baselines: "same as last month" and a linear autoregressive model AR(k) fitted by least squares
on all training months, its order k chosen on the same validation months. The result is
held-out RMSE in sunspot-number units; a plot of forecast against truth is saved (with
matplotlib). The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import datasets, nn, optim
from tinygrad_rnn.progress import Progress, limit_blas_threads, print_result

DEFAULTS = {"epochs": 80, "hidden": 16, "streams": 8, "k1": 24, "k2": 72, "lr": 3e-3,
            "base": "ar", "transform": "none", "features": "level", "window": 132,
            "ensemble": 5}
QUICK = {**DEFAULTS, "epochs": 8, "k2": 48, "lr": 1e-2, "ensemble": 1}
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
class CorrectionForecaster(nn.Module):
    """Inputs (T, B, F + 2): F features, a scale s and a base forecast of the next value.
    Output: base + s * Linear(LSTM(features)). The head starts at zero, so the untrained model is
    the base."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden)
        self.head = nn.Linear(hidden, 1)
        self.head.weight.data[...] = 0.0
        self.head.bias.data[...] = 0.0

    def forward(self, x: Any, state: Any = None) -> tuple[tg.Tensor, Any]:
        x = x if isinstance(x, tg.Tensor) else tg.Tensor(np.asarray(x))
        h, state = self.rnn(x[..., :-2], state)
        return x[..., -1:] + x[..., -2:-1] * self.head(h), state


Transform = Callable[[np.ndarray], np.ndarray]
TRANSFORMS: dict[str, tuple[Transform, Transform]] = {
    "none": (lambda x: x, lambda y: y),
    # the square root roughly equalises the noise of quiet and active years
    "sqrt": (np.sqrt, lambda y: np.maximum(y, 0.0) ** 2)}


def trailing_mean(u: np.ndarray, window: int) -> np.ndarray:
    """Mean of u over the `window` months up to and including each month (fewer at the start)."""
    total = np.concatenate([[0.0], np.cumsum(u)])
    t = np.arange(1, len(u) + 1)
    return (total[t] - total[np.maximum(t - window, 0)]) / np.minimum(t, window)


def network_inputs(u: np.ndarray, mean: float, std: float, base: str, features: str,
                   order: int, fit_end: int, window: int) -> np.ndarray:
    """Row t (t = 0 .. len(u) - 2) holds what forecasts z[t + 1], z = (u - mean) / std: the
    features, a scale and the base forecast (z[t], or the AR(order) forecast of z fitted on the
    months before `fit_end`).

    "level": z[t] (and the AR forecast), scale 1. "relative": u[t] (and the AR forecast) over L,
    the mean of u over the last `window` months, minus 1, and scale L / std: the network sees no
    absolute level and its correction grows with the level, so a larger cycle is treated like a
    scaled-up smaller one."""
    z = (u - mean) / std
    base_next = z[:-1].copy()
    if base == "ar":
        coef = fit_ar(z, np.arange(order, fit_end), order)
        # rows before order - 1 lack the history and keep z[t]; training starts after them
        base_next[order - 1:] = ar_design(z, np.arange(order, len(z)), order) @ coef
    extra = [base_next] if base == "ar" else []
    if features == "level":
        cols, scale = [z[:-1]] + extra, np.ones(len(u) - 1)
    else:
        level = trailing_mean(u, window)[:-1]
        cols = [(c * std + mean) / level - 1 for c in [z[:-1]] + extra]
        scale = level / std
    return np.stack(cols + [scale, base_next], axis=1).astype(np.float32)


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
        description="Forecast next month's sunspot number with LSTMs trained by truncated "
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
    p.add_argument("--base", choices=("ar", "last"),
                   help=f"the forecast each network corrects: AR(k) fitted on the (transformed) "
                        f"training months, or 'same as last month' (default {d['base']})")
    p.add_argument("--transform", choices=sorted(TRANSFORMS),
                   help=f"applied to the series before the networks see it; forecasts are "
                        f"transformed back before the RMSE (default {d['transform']})")
    p.add_argument("--features", choices=("level", "relative"),
                   help=f"what the LSTM reads: the normalised level, or the level relative to "
                        f"the mean of the last --window months, with the correction scaled by "
                        f"that mean (default {d['features']})")
    p.add_argument("--window", type=int, help=f"months in that trailing mean "
                                               f"(default {d['window']})")
    p.add_argument("--ensemble", type=int, help=f"networks from different initialisations, "
                                                 f"forecasts averaged (default {d['ensemble']})")
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
    for key in ("epochs", "hidden", "streams", "k1", "k2", "window", "ensemble",
                "max_ar_order"):
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

    # the networks learn from the months before `cut` and keep the epoch that forecasts the
    # validation months [cut, n_train) best, the same months that chose the AR order
    forward_transform, inverse_transform = TRANSFORMS[args.transform]
    u = forward_transform(series)
    mean, std = u[:cut].mean(), u[:cut].std()
    z = (u - mean) / std
    first = order - 1 if args.base == "ar" else 0  # the first month whose inputs are complete
    # the base AR is fitted before `cut` while epochs are chosen, and on all training months
    # (as the AR baseline is) for the test
    inputs_valid, inputs_test = (
        network_inputs(u, mean, std, args.base, args.features, order, end, args.window)
        for end in (cut, n_train))

    # training pairs (inputs_t -> z_{t+1}) before `cut`, cut into parallel stretches (time-major)
    span = (cut - 1 - first) // args.streams
    xs = inputs_valid[first:first + span * args.streams]
    xs = xs.reshape(args.streams, span, -1).transpose(1, 0, 2)  # (T, B, F + 2)
    ys = z[first + 1:first + 1 + span * args.streams].astype(np.float32)
    ys = ys.reshape(args.streams, span).T[..., None]  # (T, B, 1)

    def forecast(model: nn.Module, inputs: np.ndarray, months: np.ndarray) -> np.ndarray:
        """Forecasts of series[months] on the original scale, running over the record from its
        start (no grad)."""
        with tg.no_grad():
            pred_z, _ = model(inputs[first:months.max(), None, :])
        pred_u = pred_z.data[months - 1 - first, 0, 0].astype(np.float64) * std + mean
        return inverse_transform(pred_u)

    features = xs.shape[-1] - 2
    base_name = f"AR({order})" if args.base == "ar" else "x_t"
    print(f"model: mean of {args.ensemble} x [{base_name} + Linear(LSTM({features}, "
          f"{args.hidden}))_t], {args.features} inputs, transform {args.transform}; "
          f"TBPTT(k1={args.k1}, k2={args.k2}) over {args.streams} stretches of {span} months, "
          f"{args.epochs} epochs, validated on {int(years[cut])}-{int(years[n_train - 1])}")

    models, losses, valid_preds, best_epochs = [], [], [], []
    bar = Progress(total=args.ensemble * args.epochs, desc="LSTM", unit="epoch")
    for _ in range(args.ensemble):
        model = CorrectionForecaster(features, args.hidden)
        opt = optim.Adam(model.parameters(), lr=args.lr)
        best, best_rmse, best_epoch, model_losses = model.state_dict(), np.inf, 0, []
        best_pred = np.zeros(len(valid_t))
        for epoch in range(1, args.epochs + 1):
            loss, _ = tg.bptt.train_truncated(model, xs, ys, F.mse_loss, opt, k1=args.k1,
                                              k2=args.k2, max_grad_norm=1.0)
            model_losses.append(loss)
            pred = forecast(model, inputs_valid, valid_t)
            valid_rmse = rmse(pred, series[valid_t])
            if valid_rmse < best_rmse:
                best, best_rmse, best_epoch, best_pred = (model.state_dict(), valid_rmse, epoch,
                                                          pred)
            bar.update(1, train_mse=f"{loss:.4f}", valid_rmse=f"{valid_rmse:.2f}")
        model.load_state_dict(best)
        models.append(model)
        losses.append(model_losses)
        valid_preds.append(best_pred)
        best_epochs.append(best_epoch)
    bar.close()
    valid_ours = rmse(np.mean(valid_preds, axis=0), series[valid_t])

    ours = np.mean([forecast(model, inputs_test, test_t) for model in models], axis=0)
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
    first_loss, last_loss = float(np.mean(losses, axis=0)[0]), float(np.mean(losses, axis=0)[-1])
    print(f"\nLSTM training loss (normalised MSE, mean over networks) {first_loss:.4f} -> "
          f"{last_loss:.4f} (first / last epoch)")
    print(f"held-out RMSE over {len(test_t)} months, sunspot-number units (lower is better):")
    print(f"  same as last month     {scores['persistence']:7.3f}")
    print(f"  linear AR({order:<2d}), lstsq   {scores[f'ar{order}']:7.3f}   (order chosen on "
          f"validation months)")
    print(f"  LSTM (this run)        {scores['lstm']:7.3f}   (epochs {best_epochs} of "
          f"{args.epochs}, each the best on validation)")
    print(f"validation RMSE ({int(years[cut])}-{int(years[n_train - 1])}, both fitted on the "
          f"months before): AR({order}) {ar_valid:.3f}, LSTM {valid_ours:.3f}")
    if plot_path:
        print(f"plot saved to {plot_path}")
    print(f"done in {seconds:.1f} s")
    result = {
        "program": "forecast_sunspots", "task": "monthly sunspots, one-step-ahead forecast",
        "metric": "test_rmse", "higher_is_better": False, "ours": round(scores["lstm"], 4),
        "baselines": {"persistence": round(scores["persistence"], 4),
                      "ar": round(scores[f"ar{order}"], 4)},
        "ar_order": order,
        "valid_rmse": {"lstm": round(valid_ours, 4), "ar": round(ar_valid, 4)},
        "best_epochs": best_epochs,
        "loss_first": round(first_loss, 5), "loss_last": round(last_loss, 5),
        "plot": plot_path, "seconds": round(seconds, 1), "quick": args.quick,
        "config": {k: getattr(args, k) for k in ("epochs", "hidden", "streams", "k1", "k2",
                                                 "lr", "base", "transform", "features",
                                                 "window", "ensemble", "seed")},
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
