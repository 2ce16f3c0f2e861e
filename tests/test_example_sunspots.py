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
