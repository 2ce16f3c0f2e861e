"""`gradcheck(..., params=)`: the parameters a function reads (a module's weights) are checked too,
perturbed in place and restored exactly, with their `.grad` left as it was."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.primitive import Primitive
from tinygrad_rnn.testing import GradcheckError, gradcheck


class _WrongWeightGrad(Primitive):
    """x @ W.T whose backward for x is right and for the weight W is twice too large. Not
    registered."""

    name = "wrong_weight_grad"

    @staticmethod
    def forward(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, Any]:
        return x @ w.T, (x, w)

    @staticmethod
    def backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        x, w = saved
        return g @ w, 2.0 * (g.T @ x)  # d/dW is g^T x: the factor 2 is the planted mistake


class _Layer(nn.Module):
    """y = tanh(x W^T + b) through the faulty primitive: only the weight's gradient is wrong."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(1)
        self.weight = nn.Parameter(rng.normal(size=(3, 4)), dtype=np.float64)
        self.bias = nn.Parameter(rng.normal(size=(3,)), dtype=np.float64)

    def forward(self, x: tg.Tensor) -> tg.Tensor:
        return tg.tanh(_WrongWeightGrad.apply(x, self.weight) + self.bias)


def _x() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(5, 4))


def test_a_wrong_weight_gradient_fails_with_params_and_passes_without() -> None:
    layer = _Layer()
    assert gradcheck(layer, [_x()])  # the inputs' gradient is right: the mistake hides
    with pytest.raises(GradcheckError) as info:
        gradcheck(layer, [_x()], params=layer.parameters())
    err = info.value
    assert err.input_index is None and err.param_index == 0 and err.param_name is None
    assert err.element_index == (0, 0)
    assert err.analytic == pytest.approx(2 * err.numeric)
    assert "parameter (params[0], shape (3, 4))" in str(err)


def test_params_accepts_named_parameters_and_a_module() -> None:
    layer = _Layer()
    for params in (layer.named_parameters(), layer):
        with pytest.raises(GradcheckError, match=r"parameter 'weight' \(params\[0\]") as info:
            gradcheck(layer, [_x()], params=params)
        assert (info.value.param_name, info.value.param_index) == ("weight", 0)
    # the bias's gradient is right, so checking it alone passes
    assert gradcheck(layer, [_x()], params=[layer.bias])
    assert gradcheck(layer, [_x()], params=layer.bias)  # one bare Tensor is one parameter


def test_parameters_restored_exactly_and_grads_kept() -> None:
    layer = _Layer()
    weight, bias = layer.weight.data, layer.bias.data
    before = {n: p.data.copy() for n, p in layer.named_parameters()}
    old_grad = np.full((3,), 7.0)
    layer.bias.grad = old_grad
    with pytest.raises(GradcheckError):
        gradcheck(layer, [_x()], params=layer.parameters())
    assert layer.weight.data is weight and layer.bias.data is bias  # same arrays, in place
    for n, p in layer.named_parameters():
        np.testing.assert_array_equal(p.data, before[n])
    assert layer.bias.grad is old_grad and layer.weight.grad is None
    np.testing.assert_array_equal(old_grad, 7.0)  # not accumulated into


def test_parameters_restored_when_fn_raises_midway() -> None:
    layer = _Layer()
    before = layer.weight.data.copy()
    calls = [0]

    def flaky(x: tg.Tensor) -> tg.Tensor:
        calls[0] += 1
        if calls[0] == 4:  # during the central differences of the weight
            raise RuntimeError("boom")
        return layer(x)

    with pytest.raises(RuntimeError, match="boom"):
        gradcheck(flaky, [np.zeros((0, 4))], params=[layer.weight])
    np.testing.assert_array_equal(layer.weight.data, before)


def test_a_custom_cell_unrolled_with_its_parameters() -> None:
    cell = nn.GRUCell(3, 4, dtype=np.float64)
    xs = np.random.default_rng(3).normal(size=(4, 2, 3))
    assert gradcheck(lambda xs: nn.unroll(cell, xs)[0], [xs], params=cell.named_parameters())
    assert all(p.grad is None for p in cell.parameters())


def test_a_shared_parameter_is_checked_once() -> None:
    w = nn.Parameter(np.array([0.5, -1.5]), dtype=np.float64)
    seen: list[int] = []

    def fn(x: tg.Tensor) -> tg.Tensor:
        seen.append(1)
        return x * w

    assert gradcheck(fn, [np.array([1.0, 2.0])], params=[w, w])
    # one analytic call, then 2 evaluations per element: 2 elements of x and 2 of w
    assert len(seen) == 1 + 2 * 2 + 2 * 2


def test_params_must_be_float64_leaves_that_require_grad() -> None:
    x = np.ones((2, 4))
    with pytest.raises(TypeError, match=r"float64.*dtype=np\.float64"):
        gradcheck(lambda t: t * 2.0, [x], params=nn.Linear(4, 3).parameters())
    w = nn.Parameter(np.ones(4), dtype=np.float64)
    with pytest.raises(ValueError, match="leaf that requires grad"):
        gradcheck(lambda t: t * 2.0, [x], params=[w * 2.0])
    with pytest.raises(ValueError, match="leaf that requires grad"):
        gradcheck(lambda t: t * 2.0, [x], params=[tg.Tensor(np.ones(4))])
    with pytest.raises(TypeError, match=r"params\[0\] is a ndarray"):
        gradcheck(lambda t: t * 2.0, [x], params=[np.ones(4)])


def test_fn_that_writes_into_a_parameter_is_refused() -> None:
    w = nn.Parameter(np.array([0.5, -1.5]), dtype=np.float64)

    def writes(x: tg.Tensor) -> tg.Tensor:
        w.data += 1.0
        return x * w

    with pytest.raises(GradcheckError, match="modified parameter"):
        gradcheck(writes, [np.ones(2)], params=[w])
