"""One-step-ahead forecasting of monthly sunspot numbers with LSTMs trained by truncated BPTT.

    python examples/forecast_sunspots.py            # about a minute on one core
    python examples/forecast_sunspots.py --quick    # a few seconds, for tests
    python examples/forecast_sunspots.py --select   # choose the recipe, about 15 minutes

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

The recipe (`--base`, `--features`, `--transform`) is chosen by rolling-origin validation,
without looking at a test month: `--select` refits the whole procedure above on the months
before each of three consecutive 22-year blocks (1891-1913, 1913-1935, 1935-1957), forecasts
each block one month ahead, and ranks the candidate recipes by their RMSE averaged over the
blocks and seeds 0-2. The defaults are its choice.
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

# the recipe (base, features, transform) is the one rolling-origin validation chose (--select)
DEFAULTS = {"epochs": 80, "hidden": 16, "streams": 8, "k1": 24, "k2": 72, "lr": 3e-3,
            "base": "last", "transform": "sqrt", "features": "relative", "window": 132,
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


def month_year(t: np.ndarray | int) -> np.ndarray:
    """The (fractional) calendar year of each month index in t (same shape) of the sunspot
    record."""
    year0, month0 = datasets.SUNSPOTS_FIRST_MONTH
    return year0 + (month0 - 1 + np.asarray(t)) / 12.0


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


# ----------------------------------------------------------------------------- fitting
def fit_and_forecast(series: np.ndarray, end: int, months: np.ndarray, args: argparse.Namespace,
                     label: str = "LSTM", show: bool = True) -> dict[str, Any]:
    """Fit the AR baseline and the networks on series[:end] only; forecast series[months] (each
    month >= end) one step ahead, each from all the months before it.

    The AR order and each network's epoch are chosen on the validation months
    [validation_start(end), end), fitted on the months before them. Returns the forecasts
    (len(months),) under "lstm" and "ar", the AR order, the validation RMSEs, the chosen epochs
    and the training losses (networks, epochs)."""
    tg.manual_seed(args.seed)
    order = choose_ar_order(series, end, args.max_ar_order)
    ar = ar_design(series, months, order) @ fit_ar(series, np.arange(order, end), order)
    cut = validation_start(end)
    valid_t = np.arange(cut, end)
    ar_early = fit_ar(series, np.arange(order, cut), order)  # fitted before the validation months
    ar_valid = rmse(ar_design(series, valid_t, order) @ ar_early, series[valid_t])

    # the networks learn from the months before `cut` and keep the epoch that forecasts the
    # validation months [cut, end) best, the same months that chose the AR order
    forward_transform, inverse_transform = TRANSFORMS[args.transform]
    u = forward_transform(series)
    mean, std = u[:cut].mean(), u[:cut].std()
    z = (u - mean) / std
    first = order - 1 if args.base == "ar" else 0  # the first month whose inputs are complete
    # the base AR is fitted before `cut` while epochs are chosen, and on all months before `end`
    # (as the AR baseline is) for the forecasts
    inputs_valid, inputs_final = (
        network_inputs(u, mean, std, args.base, args.features, order, fit_end, args.window)
        for fit_end in (cut, end))

    # training pairs (inputs_t -> z_{t+1}) before `cut`, cut into parallel stretches (time-major)
    span = (cut - 1 - first) // args.streams
    xs = inputs_valid[first:first + span * args.streams]
    xs = xs.reshape(args.streams, span, -1).transpose(1, 0, 2)  # (T, B, F + 2)
    ys = z[first + 1:first + 1 + span * args.streams].astype(np.float32)
    ys = ys.reshape(args.streams, span).T[..., None]  # (T, B, 1)

    def forecast(model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Forecasts of series[targets] on the original scale, running over the record from its
        start (no grad)."""
        with tg.no_grad():
            pred_z, _ = model(inputs[first:targets.max(), None, :])
        pred_u = pred_z.data[targets - 1 - first, 0, 0].astype(np.float64) * std + mean
        return inverse_transform(pred_u)

    features = xs.shape[-1] - 2
    if show:
        base_name = f"AR({order})" if args.base == "ar" else "x_t"
        print(f"model: mean of {args.ensemble} x [{base_name} + Linear(LSTM({features}, "
              f"{args.hidden}))_t], {args.features} inputs, transform {args.transform}; "
              f"TBPTT(k1={args.k1}, k2={args.k2}) over {args.streams} stretches of {span} "
              f"months, {args.epochs} epochs, validated on {int(month_year(cut))}-"
              f"{int(month_year(end - 1))}")

    models, losses, valid_preds, best_epochs = [], [], [], []
    bar = Progress(total=args.ensemble * args.epochs, desc=label, unit="epoch")
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
    lstm = np.mean([forecast(model, inputs_final, months) for model in models], axis=0)
    return {"lstm": lstm, "ar": ar, "order": order,
            "valid_rmse": {"lstm": rmse(np.mean(valid_preds, axis=0), series[valid_t]),
                           "ar": ar_valid},
            "best_epochs": best_epochs, "losses": np.array(losses)}


# Rolling-origin validation: consecutive blocks of two solar cycles (22 years) each, the last
# ending where the test months begin. For the default record: 1891-1913, 1913-1935, 1935-1957.
ROLLING_BLOCKS, ROLLING_MONTHS = 3, 264


def rolling_blocks(n_train: int, blocks: int = ROLLING_BLOCKS,
                   length: int = ROLLING_MONTHS) -> list[tuple[int, int]]:
    """`blocks` consecutive [origin, stop) ranges of `length` months, earliest first, the last
    stopping at n_train (the first test month)."""
    if blocks * length >= n_train:
        raise ValueError(f"{blocks} blocks of {length} months do not fit before month {n_train}")
    return [(n_train - (blocks - i) * length, n_train - (blocks - i - 1) * length)
            for i in range(blocks)]


def rolling_validation(series: np.ndarray, n_train: int, args: argparse.Namespace,
                       blocks: int = ROLLING_BLOCKS,
                       length: int = ROLLING_MONTHS) -> dict[str, list[float]]:
    """RMSE of the recipe `args` and of AR on each rolling block: for each origin the whole
    protocol of the test run (AR order, networks, epochs) is refitted on the months before the
    origin, and the block is forecast one month ahead. Returns lists (one entry per block) under
    "lstm", "ar" and "ar_order"."""
    scores: dict[str, list[float]] = {"lstm": [], "ar": [], "ar_order": []}
    for origin, stop in rolling_blocks(n_train, blocks, length):
        months = np.arange(origin, stop)
        fit = fit_and_forecast(series, origin, months, args, label=f"LSTM to month {origin}",
                               show=False)
        scores["lstm"].append(rmse(fit["lstm"], series[months]))
        scores["ar"].append(rmse(fit["ar"], series[months]))
        scores["ar_order"].append(fit["order"])
    return scores


# The recipes --select compares (flags of this script); the others keep their defaults.
CANDIDATES = {
    "ar level none": ["--base", "ar", "--features", "level", "--transform", "none"],
    "last relative sqrt": ["--base", "last", "--features", "relative", "--transform", "sqrt"],
    "ar relative sqrt": ["--base", "ar", "--features", "relative", "--transform", "sqrt"],
    "ar level sqrt": ["--base", "ar", "--features", "level", "--transform", "sqrt"]}
SELECT_SEEDS = (0, 1, 2)


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
    p.add_argument("--select", action="store_true",
                   help="choose a recipe instead of testing one: rolling-origin validation of "
                        "each candidate recipe on the training months at seeds 0, 1, 2 "
                        "(about 15 minutes); no test month is used")
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


def select(argv: list[str]) -> int:
    """Rolling-origin validation of every recipe in CANDIDATES at SELECT_SEEDS (the other flags
    in `argv` apply to all of them); prints the table and the recipe with the lowest mean RMSE.
    No test month is looked at."""
    t_start = time.perf_counter()
    series = datasets.sunspots()
    n_train = int(TRAIN_FRACTION * len(series))
    spans = ", ".join(f"{int(month_year(a))}-{int(month_year(b))}"
                      for a, b in rolling_blocks(n_train))
    print(f"rolling-origin validation on {spans}: everything refitted on the months before each "
          f"block, block RMSEs averaged; seeds {list(SELECT_SEEDS)}")
    table: dict[str, list[float]] = {}
    for name, flags in CANDIDATES.items():
        table[name] = []
        for seed in SELECT_SEEDS:
            args = parse_args(argv + flags + ["--seed", str(seed)])
            scores = rolling_validation(series, n_train, args)
            table[name].append(float(np.mean(scores["lstm"])))
            print(f"  {name:20s} seed {seed}: blocks "
                  f"{' '.join(f'{s:6.2f}' for s in scores['lstm'])}  mean {table[name][-1]:.3f}")
    ar = float(np.mean(scores["ar"]))  # the same for every recipe and seed
    print(f"  AR({', '.join(map(str, scores['ar_order']))}) per block: "
          f"{' '.join(f'{s:6.2f}' for s in scores['ar'])}  mean {ar:.3f}")
    print("\nrolling-origin validation RMSE, mean +- std over seeds (lower is better):")
    for name, values in table.items():
        print(f"  {name:20s} {np.mean(values):7.3f} +- {np.std(values, ddof=1):.3f}")
    print(f"  {'AR(k), refitted':20s} {ar:7.3f}")
    chosen = min(table, key=lambda name: np.mean(table[name]))
    print(f"chosen: {chosen} ({' '.join(CANDIDATES[chosen])})")
    seconds = time.perf_counter() - t_start
    print(f"done in {seconds:.1f} s")
    print_result({"program": "forecast_sunspots", "task": "recipe selection",
                  "metric": "rolling_valid_rmse", "higher_is_better": False,
                  "recipes": {name: [round(v, 4) for v in values]
                              for name, values in table.items()},
                  "ar": round(ar, 4), "chosen": chosen, "seconds": round(seconds, 1)})
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    limit_blas_threads(args.blas_threads)
    if args.select:
        return select([a for a in argv if a != "--select"])
    t_start = time.perf_counter()

    series = datasets.sunspots()
    n, n_train = len(series), int(TRAIN_FRACTION * len(series))
    years = month_year(np.arange(n))
    test_t = np.arange(n_train, n)  # months to forecast, each from all the months before it
    print(f"sunspots: {n:,} months; training on {int(years[0])}-{int(years[n_train - 1])} "
          f"({n_train:,} months), forecasting {int(years[n_train])}-{int(years[-1])} "
          f"({len(test_t):,} months) one month ahead")

    fit = fit_and_forecast(series, n_train, test_t, args)
    order, ours, truth = fit["order"], fit["lstm"], series[test_t]
    scores = {"lstm": rmse(ours, truth), "persistence": rmse(series[test_t - 1], truth),
              f"ar{order}": rmse(fit["ar"], truth)}

    plot_path = None
    if args.plot:
        if save_plot(args.plot, years[test_t], truth,
                     {f"LSTM (RMSE {scores['lstm']:.2f})": ours,
                      f"AR({order}) (RMSE {scores[f'ar{order}']:.2f})": fit["ar"]}):
            plot_path = args.plot

    seconds = time.perf_counter() - t_start
    mean_losses = fit["losses"].mean(axis=0)
    first_loss, last_loss = float(mean_losses[0]), float(mean_losses[-1])
    valid = fit["valid_rmse"]
    cut = validation_start(n_train)
    print(f"\nLSTM training loss (normalised MSE, mean over networks) {first_loss:.4f} -> "
          f"{last_loss:.4f} (first / last epoch)")
    print(f"held-out RMSE over {len(test_t)} months, sunspot-number units (lower is better):")
    print(f"  same as last month     {scores['persistence']:7.3f}")
    print(f"  linear AR({order:<2d}), lstsq   {scores[f'ar{order}']:7.3f}   (order chosen on "
          f"validation months)")
    print(f"  LSTM (this run)        {scores['lstm']:7.3f}   (epochs {fit['best_epochs']} of "
          f"{args.epochs}, each the best on validation)")
    print(f"validation RMSE ({int(years[cut])}-{int(years[n_train - 1])}, both fitted on the "
          f"months before): AR({order}) {valid['ar']:.3f}, LSTM {valid['lstm']:.3f}")
    if plot_path:
        print(f"plot saved to {plot_path}")
    print(f"done in {seconds:.1f} s")
    result = {
        "program": "forecast_sunspots", "task": "monthly sunspots, one-step-ahead forecast",
        "metric": "test_rmse", "higher_is_better": False, "ours": round(scores["lstm"], 4),
        "baselines": {"persistence": round(scores["persistence"], 4),
                      "ar": round(scores[f"ar{order}"], 4)},
        "ar_order": order,
        "valid_rmse": {"lstm": round(valid["lstm"], 4), "ar": round(valid["ar"], 4)},
        "best_epochs": fit["best_epochs"],
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
