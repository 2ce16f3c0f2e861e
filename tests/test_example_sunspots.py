"""The sunspot example's building blocks: trailing mean, network inputs, the correction model."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

import tinygrad_rnn as tg
from test_examples_data import load_example


@pytest.fixture(scope="module")
def fs() -> ModuleType:
    return load_example("forecast_sunspots")


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    t = np.arange(400)
    return 60 + 50 * np.sin(2 * np.pi * t / 132) + np.random.default_rng(0).uniform(0, 20, 400)


def test_trailing_mean(fs: ModuleType) -> None:
    u = np.random.default_rng(1).uniform(0, 5, 50)
    expected = [u[max(0, t - 6):t + 1].mean() for t in range(50)]
    np.testing.assert_allclose(fs.trailing_mean(u, 7), expected)


def test_transforms_invert(fs: ModuleType, series: np.ndarray) -> None:
    for forward, inverse in fs.TRANSFORMS.values():
        np.testing.assert_allclose(inverse(forward(series)), series)


def test_ar_base_is_the_fitted_ar_forecast(fs: ModuleType, series: np.ndarray) -> None:
    mean, std, order, fit_end = series.mean(), series.std(), 5, 300
    rows = fs.network_inputs(series, mean, std, "ar", "level", order, fit_end, 132)
    z = (series - mean) / std
    coef = fs.fit_ar(z, np.arange(order, fit_end), order)
    t = np.arange(order - 1, len(z) - 1)  # row t forecasts z[t + 1]
    np.testing.assert_allclose(rows[t, -1], fs.ar_design(z, t + 1, order) @ coef, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(rows[:, 0], z[:-1], rtol=1e-6)  # the level feature
    np.testing.assert_array_equal(rows[:, -2], 1.0)  # level features: unscaled correction


@pytest.mark.parametrize("base", ["ar", "last"])
def test_relative_inputs_do_not_see_the_scale(fs: ModuleType, series: np.ndarray,
                                              base: str) -> None:
    # a cycle twice as large (with its statistics) gives the network the same inputs
    args = (base, "relative", 5, 300, 24)
    small = fs.network_inputs(series, series.mean(), series.std(), *args)
    large = fs.network_inputs(2 * series, 2 * series.mean(), 2 * series.std(), *args)
    np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-6)


def test_untrained_model_is_its_base(fs: ModuleType, series: np.ndarray) -> None:
    rows = fs.network_inputs(series, series.mean(), series.std(), "last", "relative", 5, 300, 24)
    model = fs.CorrectionForecaster(rows.shape[1] - 2, 4)
    with tg.no_grad():
        out, _ = model(rows[:50, None, :])
    np.testing.assert_array_equal(out.data[:, 0, 0], rows[:50, -1])


# ----------------------------------------------------------------------------- rolling origins
TINY = ["--quick", "--epochs", "2", "--hidden", "4", "--streams", "2", "--k1", "8", "--k2", "16",
        "--max-ar-order", "6", "--window", "24", "--plot", ""]


def test_rolling_blocks_lie_before_the_test_months(fs: ModuleType) -> None:
    n_train = int(fs.TRAIN_FRACTION * 3126)  # the first test month of the bundled record
    blocks = fs.rolling_blocks(n_train)
    assert len(blocks) == fs.ROLLING_BLOCKS
    assert blocks[-1][1] == n_train and blocks[0][0] > 0
    for (origin, stop), (next_origin, _) in zip(blocks, blocks[1:] + [(n_train, None)]):
        assert stop - origin == fs.ROLLING_MONTHS and stop == next_origin  # consecutive
    assert 1880 < fs.month_year(blocks[0][0]) < 1900 and fs.month_year(n_train) > 1957
    with pytest.raises(ValueError):
        fs.rolling_blocks(100, 4, 25)  # no months left to train on


@pytest.mark.parametrize("recipe", [["--base", "ar", "--features", "relative"],
                                    ["--base", "last", "--transform", "sqrt"]])
def test_a_fit_sees_only_the_months_before_each_forecast(fs: ModuleType, series: np.ndarray,
                                                         recipe: list[str]) -> None:
    # changing the months from `end` on leaves everything fitted (AR, networks, epochs) and the
    # forecast of month `end` alone; later forecasts read the changed months, so they move
    args = fs.parse_args(TINY + recipe)
    end, months = 300, np.arange(300, 340)
    changed = series.copy()
    changed[end:] = 2 * changed[end:] + 5
    a, b = (fs.fit_and_forecast(s, end, months, args, show=False) for s in (series, changed))
    assert a["order"] == b["order"] and a["best_epochs"] == b["best_epochs"]
    assert a["valid_rmse"] == b["valid_rmse"]
    for name in ("lstm", "ar"):
        assert a[name][0] == b[name][0]
        assert np.all(a[name][1:] != b[name][1:])


def test_rolling_validation_refits_before_each_origin(fs: ModuleType,
                                                      series: np.ndarray) -> None:
    args = fs.parse_args(TINY)
    n_train = 360
    scores = fs.rolling_validation(series, n_train, args, blocks=2, length=30)
    assert len(scores["lstm"]) == 2 and np.isfinite(scores["lstm"]).all()
    for (origin, stop), order, ar in zip([(300, 330), (330, 360)], scores["ar_order"],
                                         scores["ar"]):
        # AR is refitted on the months before each origin, its order chosen on them too
        assert order == fs.choose_ar_order(series, origin, 6)
        months = np.arange(origin, stop)
        coef = fs.fit_ar(series, np.arange(order, origin), order)
        assert ar == pytest.approx(fs.rmse(fs.ar_design(series, months, order) @ coef,
                                           series[months]))
    # the test months (from n_train on) play no part in selection
    changed = series.copy()
    changed[n_train:] = 200.0
    assert fs.rolling_validation(changed, n_train, args, blocks=2, length=30) == scores


def test_candidate_recipes_are_distinct(fs: ModuleType) -> None:
    recipes = {(a.base, a.features, a.transform)
               for a in (fs.parse_args(flags) for flags in fs.CANDIDATES.values())}
    assert len(recipes) == len(fs.CANDIDATES)
