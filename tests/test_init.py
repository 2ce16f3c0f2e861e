"""`tg.nn.init`: PyTorch's initialisers (API.md section 6).

Every expectation is computed here from PyTorch's documented formulas, not from the library: fans
(size(1) resp. size(0) times the receptive field), the gain table, std = gain / sqrt(fan) for
Kaiming, gain * sqrt(2 / (fan_in + fan_out)) for Xavier, uniform bound = sqrt(3) * std. Fills are
in place (same array object, same dtype) and draw from the generator `tg.manual_seed` seeds.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Callable

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.nn import init
from tinygrad_rnn.nn.init import _calculate_fan_in_and_fan_out

ROWS, COLS = 400, 300  # fan_in = 300, fan_out = 400: 120,000 draws, sample std within ~0.5 %

# name -> (call, is random); every initialiser with arguments that make its effect visible
FILLS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "uniform_": (lambda t: init.uniform_(t, -2.0, 3.0), True),
    "normal_": (lambda t: init.normal_(t, 1.5, 0.3), True),
    "zeros_": (init.zeros_, False),
    "ones_": (init.ones_, False),
    "constant_": (lambda t: init.constant_(t, 0.25), False),
    "xavier_uniform_": (lambda t: init.xavier_uniform_(t, gain=2.0), True),
    "xavier_normal_": (lambda t: init.xavier_normal_(t, gain=2.0), True),
    "kaiming_uniform_": (lambda t: init.kaiming_uniform_(t, a=0.2), True),
    "kaiming_normal_": (lambda t: init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"),
                        True),
    "orthogonal_": (lambda t: init.orthogonal_(t, gain=1.5), True),
}


def _param(shape: tuple[int, ...], dtype: Any = np.float64, fill: float = -7.0) -> nn.Parameter:
    return nn.Parameter(np.full(shape, fill, dtype=dtype))


# ----------------------------------------------------------------------------- in place
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(FILLS))
def test_fills_in_place_keeping_shape_dtype_and_array(name: str, dtype: Any) -> None:
    fn, _ = FILLS[name]
    param = _param((6, 5), dtype)
    for p in (param, tg.Tensor(np.full((4, 3, 2, 2), -7.0, dtype=dtype))):
        arr, shape = p.data, p.shape
        out = fn(p)
        assert out is p
        assert p.data is arr  # the same array object: holders of it see the new values
        assert p.dtype == dtype and p.shape == shape
        assert not np.any(arr == -7.0), name  # every element was written
    assert param.requires_grad and param.is_leaf and param.grad is None


def test_deterministic_fills_values() -> None:
    p = _param((3, 4), np.float32)
    np.testing.assert_array_equal(init.zeros_(p).data, np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(init.ones_(p).data, np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(init.constant_(p, -0.5).data, np.full((3, 4), -0.5, np.float32))
    # integer tensors may be filled with constants (as PyTorch), not with random draws
    t = tg.Tensor(np.arange(6))
    np.testing.assert_array_equal(init.constant_(t, 3).data, np.full(6, 3))
    assert t.dtype == np.arange(6).dtype
    with pytest.raises(TypeError, match="uniform_.*floating"):
        init.uniform_(t)


# ----------------------------------------------------------------------------- statistics
def _check_uniform(x: np.ndarray, lo: float, hi: float) -> None:
    assert x.min() >= lo and x.max() <= hi  # never exceeded
    width = hi - lo
    assert x.min() < lo + 0.01 * width and x.max() > hi - 0.01 * width  # nearly reached
    # U(lo, hi): std = width / sqrt(12)
    np.testing.assert_allclose(x.std(), width / math.sqrt(12), rtol=0.02)
    assert abs(x.mean() - (lo + hi) / 2) < 5 * width / math.sqrt(12 * x.size)


def _check_normal(x: np.ndarray, mean: float, std: float) -> None:
    np.testing.assert_allclose(x.std(), std, rtol=0.02)
    assert abs(x.mean() - mean) < 5 * std / math.sqrt(x.size)
    # a normal, not a uniform of the same std: about 4.55 % lies beyond 2 std (uniform: none)
    assert 0.04 < np.mean(np.abs(x - mean) > 2 * std) < 0.051


def test_uniform_and_normal_statistics() -> None:
    tg.manual_seed(0)
    _check_uniform(init.uniform_(_param((ROWS, COLS))).data, 0.0, 1.0)  # default U(0, 1)
    _check_uniform(init.uniform_(_param((ROWS, COLS)), -2.0, 3.0).data, -2.0, 3.0)
    _check_normal(init.normal_(_param((ROWS, COLS))).data, 0.0, 1.0)
    _check_normal(init.normal_(_param((ROWS, COLS)), 1.5, 0.3).data, 1.5, 0.3)


@pytest.mark.parametrize("gain", [1.0, 5 / 3])
def test_xavier_statistics(gain: float) -> None:
    tg.manual_seed(1)
    std = gain * math.sqrt(2.0 / (COLS + ROWS))
    bound = math.sqrt(3.0) * std  # = gain * sqrt(6 / (fan_in + fan_out))
    _check_uniform(init.xavier_uniform_(_param((ROWS, COLS)), gain=gain).data, -bound, bound)
    _check_normal(init.xavier_normal_(_param((ROWS, COLS)), gain=gain).data, 0.0, std)


# (kwargs, gain by PyTorch's table, fan)
KAIMING_CASES = [
    ({}, math.sqrt(2.0), COLS),  # defaults: leaky_relu with slope a=0 (not 0.01), fan_in
    ({"a": 0.2}, math.sqrt(2.0 / 1.04), COLS),
    ({"nonlinearity": "relu"}, math.sqrt(2.0), COLS),
    ({"nonlinearity": "relu", "mode": "fan_out"}, math.sqrt(2.0), ROWS),
    ({"nonlinearity": "tanh", "mode": "fan_out", "a": 3.0}, 5.0 / 3, ROWS),  # a only for leaky
    ({"nonlinearity": "linear"}, 1.0, COLS),
]


@pytest.mark.parametrize("kwargs,gain,fan", KAIMING_CASES)
def test_kaiming_statistics(kwargs: dict, gain: float, fan: int) -> None:
    tg.manual_seed(2)
    std = gain / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    _check_uniform(init.kaiming_uniform_(_param((ROWS, COLS)), **kwargs).data, -bound, bound)
    _check_normal(init.kaiming_normal_(_param((ROWS, COLS)), **kwargs).data, 0.0, std)


def test_float32_uniform_bound_holds_after_the_cast() -> None:
    tg.manual_seed(3)
    p = init.kaiming_uniform_(_param((ROWS, COLS), np.float32), nonlinearity="relu")
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(COLS)
    assert p.dtype == np.float32
    assert np.abs(p.data).max() <= np.float32(bound)  # rounding is monotone: no value beyond
    assert np.abs(p.data).max() > 0.99 * bound


# ----------------------------------------------------------------------------- fans
@pytest.mark.parametrize("shape,fans", [
    ((ROWS, COLS), (COLS, ROWS)),
    ((7, 2), (2, 7)),
    ((5, 4, 7), (4 * 7, 5 * 7)),
    ((16, 8, 3, 5), (8 * 15, 16 * 15)),
    ((2, 3, 1, 1, 4), (3 * 4, 2 * 4)),
])
def test_fan_in_and_fan_out(shape: tuple[int, ...], fans: tuple[int, int]) -> None:
    assert _calculate_fan_in_and_fan_out(tg.Tensor(np.zeros(shape))) == fans


def test_fans_of_a_4d_tensor_set_the_bounds() -> None:
    # a conv-like weight: fan_in = 8 * 3 * 5 = 120, fan_out = 16 * 15 = 240; 1920 draws
    tg.manual_seed(4)
    shape = (16, 8, 3, 5)
    for mode, fan in (("fan_in", 120), ("fan_out", 240)):
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(fan)
        x = init.kaiming_uniform_(_param(shape), mode=mode, nonlinearity="relu").data
        assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound, mode
    bound = math.sqrt(6.0 / (120 + 240))
    x = init.xavier_uniform_(_param(shape)).data
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound


# ----------------------------------------------------------------------------- gains
@pytest.mark.parametrize("args,gain", [
    (("linear",), 1.0), (("conv1d",), 1.0), (("conv2d",), 1.0), (("conv3d",), 1.0),
    (("conv_transpose1d",), 1.0), (("conv_transpose2d",), 1.0), (("conv_transpose3d",), 1.0),
    (("sigmoid",), 1.0), (("tanh",), 5.0 / 3), (("relu",), math.sqrt(2.0)),
    (("relu", 0.7), math.sqrt(2.0)),  # the parameter is only leaky_relu's
    (("leaky_relu",), math.sqrt(2.0 / (1 + 0.01 ** 2))),
    (("leaky_relu", 0.2), math.sqrt(2.0 / (1 + 0.04))),
    (("leaky_relu", 0), math.sqrt(2.0)), (("leaky_relu", 1), 1.0),
    (("selu",), 0.75),
])
def test_calculate_gain_table(args: tuple, gain: float) -> None:
    assert init.calculate_gain(*args) == pytest.approx(gain, rel=1e-15)


# ----------------------------------------------------------------------------- orthogonal
@pytest.mark.parametrize("shape", [(4, 4), (3, 7), (7, 3), (1, 5), (5, 1), (4, 2, 3, 3),
                                   (12, 2, 3)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_rows_or_columns_are_orthonormal(shape: tuple[int, ...], gain: float) -> None:
    tg.manual_seed(5)
    for dtype, tol in ((np.float64, 1e-6), (np.float32, 1e-5)):
        p = init.orthogonal_(_param(shape, dtype), gain=gain)
        q = p.data.reshape(shape[0], -1).astype(np.float64)
        rows, cols = q.shape
        gram = q @ q.T if rows <= cols else q.T @ q
        np.testing.assert_allclose(gram, gain ** 2 * np.eye(min(rows, cols)), atol=tol * gain ** 2)


@pytest.mark.parametrize("shape", [(3, 7), (7, 3), (2, 3, 2)])
def test_orthogonal_is_the_sign_corrected_q_of_a_seeded_normal_matrix(shape) -> None:
    # PyTorch's algorithm, written out: draw (rows, cols) from N(0, 1), transpose when
    # rows < cols, QR, multiply Q's columns by the sign of R's diagonal, transpose back
    rows = shape[0]
    cols = int(np.prod(shape)) // rows
    tg.manual_seed(11)
    got = init.orthogonal_(_param(shape), gain=3.0).data
    a = np.random.default_rng(11).standard_normal((rows, cols))  # what manual_seed(11) seeds
    a = a.T if rows < cols else a
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    q = q.T if rows < cols else q
    np.testing.assert_allclose(got, 3.0 * q.reshape(shape), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("name", [n for n, (_, random) in FILLS.items() if random])
def test_manual_seed_makes_the_draws_reproducible(name: str) -> None:
    fn, _ = FILLS[name]
    tg.manual_seed(21)
    a = fn(_param((6, 5))).data.copy()
    b = fn(_param((6, 5))).data.copy()  # the next draw differs
    tg.manual_seed(21)
    c = fn(_param((6, 5))).data.copy()
    tg.manual_seed(22)
    d = fn(_param((6, 5))).data.copy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, d)
    # float32 gets the same draws, rounded
    tg.manual_seed(21)
    np.testing.assert_array_equal(fn(_param((6, 5), np.float32)).data, a.astype(np.float32))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [init.xavier_uniform_, init.xavier_normal_, init.kaiming_uniform_,
                                init.kaiming_normal_, init.orthogonal_])
def test_fewer_than_two_dims_is_an_error_naming_function_and_shape(fn) -> None:
    for shape in ((5,), ()):
        p = tg.Tensor(np.zeros(shape))
        with pytest.raises(ValueError, match=rf"{fn.__name__}.*{re.escape(str(shape))}"):
            fn(p)
        assert np.all(p.data == 0)
    with pytest.raises(ValueError, match=r"_calculate_fan_in_and_fan_out.*\(5,\)"):
        _calculate_fan_in_and_fan_out(tg.Tensor(np.zeros(5)))


def test_gain_errors() -> None:
    with pytest.raises(ValueError, match="'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="'gelu'"):
        init.kaiming_uniform_(_param((3, 4)), nonlinearity="gelu")
    for bad in ("0.2", True, [0.1]):
        with pytest.raises(ValueError, match="negative_slope"):
            init.calculate_gain("leaky_relu", bad)


def test_mode_and_argument_errors() -> None:
    p = _param((3, 4))
    for fn in (init.kaiming_uniform_, init.kaiming_normal_):
        with pytest.raises(ValueError, match="fan_avg.*'fan_in' or 'fan_out'"):
            fn(p, mode="fan_avg")
    assert np.all(p.data == -7.0)  # nothing was drawn into it
    # PyTorch lower-cases the mode
    tg.manual_seed(8)
    upper = init.kaiming_uniform_(_param((3, 4)), mode="FAN_OUT").data
    tg.manual_seed(8)
    np.testing.assert_array_equal(upper, init.kaiming_uniform_(p, mode="fan_out").data)
    tg.manual_seed(8)
    assert not np.array_equal(upper, init.kaiming_uniform_(p, mode="fan_in").data)
    with pytest.raises(TypeError, match="xavier_uniform_.*Tensor"):
        init.xavier_uniform_(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="std"):
        init.normal_(p, std=-1.0)
    with pytest.raises(ValueError, match="a <= b"):
        init.uniform_(p, 1.0, 0.0)


def test_zero_element_tensors() -> None:
    for fn in (init.kaiming_uniform_, init.kaiming_normal_):
        with pytest.warns(UserWarning, match="zero-element"):
            assert fn(_param((0, 3))).shape == (0, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert init.orthogonal_(_param((0, 3))).shape == (0, 3)
        assert init.xavier_uniform_(_param((0, 3))).shape == (0, 3)


# ----------------------------------------------------------------------------- torch
def test_gain_and_fans_match_torch() -> None:
    torch = pytest.importorskip("torch")
    for args in (("linear",), ("conv2d",), ("sigmoid",), ("tanh",), ("relu",), ("selu",),
                 ("leaky_relu",), ("leaky_relu", 0.3), ("leaky_relu", 2), ("relu", 5.0)):
        assert init.calculate_gain(*args) == pytest.approx(torch.nn.init.calculate_gain(*args),
                                                           rel=1e-15), args
    for shape in ((3, 4), (4, 3), (1, 9), (6, 2, 5), (16, 8, 3, 5), (2, 3, 1, 2, 4), (0, 3)):
        ours = _calculate_fan_in_and_fan_out(tg.Tensor(np.zeros(shape)))
        assert ours == torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(shape)), shape
    for shape in ((5,), ()):
        with pytest.raises(ValueError):
            torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(shape))
        with pytest.raises(ValueError):
            _calculate_fan_in_and_fan_out(tg.Tensor(np.zeros(shape)))
