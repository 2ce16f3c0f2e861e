"""PyTorch parity: layers, losses, optimisers, schedulers and clipping against fixtures from torch.

The fixtures in tests/fixtures/*.npz were made once by tests/fixtures/make_torch_fixtures.py (its
docstring documents the format); torch itself is not needed here. Everything runs in float64 and
must agree with PyTorch to 1e-10.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import nn, optim

FIXTURES = Path(__file__).parent / "fixtures"
KINDS = ("seq", "packed", "cell", "module", "fn", "optim", "clip", "sched")
TOL = {"rtol": 1e-10, "atol": 1e-10}


class Fixture:
    """One fixture file: its parsed meta plus its arrays, grouped by key prefix."""

    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as f:
            self.arrays = {key: f[key] for key in f.files}
        self.meta: dict[str, Any] = json.loads(str(self.arrays.pop("meta")))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """{NAME: array} for every key 'prefix.NAME' (NAME may itself contain dots)."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.arrays.items() if k.startswith(prefix + ".")}


def _cases(kind: str, name_prefix: str = "") -> Any:
    """Parametrize a test over the fixture files of one kind, one test id per file."""
    files = sorted(FIXTURES.glob(f"{kind}_{name_prefix}*.npz"))
    return pytest.mark.parametrize("fx", [Fixture(f) for f in files], ids=[f.stem for f in files])


def _close(ours: Any, theirs: np.ndarray, what: str) -> None:
    """Compare a result of ours with PyTorch's: same shape, float64, equal to 1e-10."""
    assert ours is not None, f"{what}: got None"
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch {theirs.shape}"
    if theirs.dtype == np.float64:
        assert ours.dtype == np.float64, f"{what}: dtype {ours.dtype}, expected float64"
    np.testing.assert_allclose(ours, theirs, **TOL, err_msg=what)


def _inputs(fx: Fixture) -> dict[str, Any]:
    """in.* as call arguments: float arrays become float64 Tensors (requiring a gradient iff the
    fixture has grad.in.NAME); integer arrays (indices, targets) stay plain numpy."""
    wants_grad = fx.group("grad.in")
    out: dict[str, Any] = {}
    for name, value in fx.group("in").items():
        if value.dtype.kind == "f":
            out[name] = tg.Tensor(value.copy(), requires_grad=name in wants_grad)
        else:
            out[name] = value.copy()
    return out


def _build(fx: Fixture) -> nn.Module:
    """Construct the layer named by meta in float64 and load PyTorch's state dict into it."""
    kwargs = dict(fx.meta["kwargs"])
    if fx.meta["cls"].endswith("Loss"):
        return _build_loss(fx, kwargs)
    if isinstance(kwargs.get("normalized_shape"), list):
        kwargs["normalized_shape"] = tuple(kwargs["normalized_shape"])
    module = getattr(nn, fx.meta["cls"])(**kwargs, dtype=np.float64)
    torch_state = fx.group("param")
    module.load_state_dict({k: v.copy() for k, v in torch_state.items()})
    ours = module.state_dict()
    assert sorted(ours) == sorted(torch_state), "state_dict keys differ from PyTorch's"
    for name, value in torch_state.items():
        np.testing.assert_array_equal(np.asarray(ours[name]), value, err_msg=name)
    return module


def _build_loss(fx: Fixture, kwargs: dict[str, Any]) -> nn.Module:
    """A loss module: PyTorch's buffers (weight, pos_weight) are constructor arguments, and the
    module's state_dict() must hold exactly them, as PyTorch's."""
    buffers = fx.group("buffer")
    module = getattr(nn, fx.meta["cls"])(**kwargs, **{k: v.copy() for k, v in buffers.items()})
    ours = module.state_dict()
    assert sorted(ours) == sorted(buffers), "state_dict keys differ from PyTorch's"
    for name, value in buffers.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    return module


def _check(fx: Fixture, outs: dict[str, Any], inputs: dict[str, Any],
           params: dict[str, Any] | None = None) -> None:
    """Compare forward results, backprop L = sum(out * upstream), compare all gradients."""
    assert sorted(outs) == sorted(fx.group("out")), "outputs differ from the fixture's"
    for name, expected in fx.group("out").items():
        _close(outs[name].data, expected, f"output {name}")
    loss = None
    for name, upstream in fx.group("upstream").items():
        term = (outs[name] * tg.Tensor(upstream)).sum()
        loss = term if loss is None else loss + term
    assert loss is not None
    loss.backward()
    for name, expected in fx.group("grad.in").items():
        _close(inputs[name].grad, expected, f"gradient of input {name}")
    expected_params = fx.group("grad.param")
    if params is not None:
        assert sorted(params) == sorted(expected_params), "parameter names differ from PyTorch's"
        for name, expected in expected_params.items():
            _close(params[name].grad, expected, f"gradient of parameter {name}")


def _state(fx: Fixture, inputs: dict[str, Any]) -> Any:
    """The initial state the fixture was run with: None, h0, or (h0, c0) for LSTMs."""
    if "h0" not in inputs:
        return None
    if "c0" in inputs:
        return (inputs["h0"], inputs["c0"])
    return inputs["h0"]


# ----------------------------------------------------------------------------- layers

def _layer_outs(fx: Fixture, output: Any, final: Any) -> dict[str, Any]:
    """A layer's output and final state by the fixture's names: output, h_n [c_n]."""
    if fx.meta["cls"] == "LSTM":
        return {"output": output, "h_n": final[0], "c_n": final[1]}
    return {"output": output, "h_n": final}


@_cases("seq")
def test_recurrent_layer(fx: Fixture) -> None:
    """nn.RNN / nn.LSTM / nn.GRU: outputs, final states and every gradient."""
    layer = _build(fx)
    inputs = _inputs(fx)
    state = _state(fx, inputs)
    output, final = layer(inputs["x"]) if state is None else layer(inputs["x"], state)
    _check(fx, _layer_outs(fx, output, final), inputs, dict(layer.named_parameters()))


@_cases("packed")
@pytest.mark.parametrize("how", ["packed", "lengths", "per-op"])
def test_variable_length_layer(fx: Fixture, how: str) -> None:
    """nn.RNN / nn.LSTM / nn.GRU over sequences of different lengths: given PyTorch's packed
    batch (its batch_sizes and sorted_indices checked), or the padded batch with lengths= (also
    on the per-op tape): outputs (padded), final states and every gradient."""
    rnn = nn.utils.rnn
    layer = _build(fx)
    if how == "per-op":
        layer.compile = False
    inputs = _inputs(fx)
    state = _state(fx, inputs)
    bf = fx.meta["kwargs"].get("batch_first", False)
    if how == "packed":
        packed = rnn.pack_padded_sequence(inputs["x"], inputs["lengths"], batch_first=bf,
                                          enforce_sorted=fx.meta["enforce_sorted"])
        np.testing.assert_array_equal(packed.batch_sizes, fx["packed.batch_sizes"])
        if fx.meta["enforce_sorted"]:
            assert packed.sorted_indices is None and "packed.sorted_indices" not in fx.arrays
        else:
            np.testing.assert_array_equal(packed.sorted_indices, fx["packed.sorted_indices"])
        out, final = layer(packed, state)
        assert isinstance(out, rnn.PackedSequence)
        np.testing.assert_array_equal(out.batch_sizes, packed.batch_sizes)
        output, lengths = rnn.pad_packed_sequence(out, batch_first=bf)
        np.testing.assert_array_equal(lengths, inputs["lengths"])
    else:
        output, final = layer(inputs["x"], state, lengths=inputs["lengths"])
    _check(fx, _layer_outs(fx, output, final), inputs, dict(layer.named_parameters()))


@_cases("cell")
def test_cell(fx: Fixture) -> None:
    """nn.RNNCell / nn.LSTMCell / nn.GRUCell: one step, new state and every gradient."""
    cell = _build(fx)
    inputs = _inputs(fx)
    state = _state(fx, inputs)
    result = cell(inputs["x"]) if state is None else cell(inputs["x"], state)
    if fx.meta["cls"] == "LSTMCell":
        h, c = result
        outs = {"h": h, "c": c}
    else:
        outs = {"h": result}
    _check(fx, outs, inputs, dict(cell.named_parameters()))


@_cases("module")
def test_module(fx: Fixture) -> None:
    """nn.Linear / nn.Embedding / nn.LayerNorm and the loss modules: output and every gradient."""
    module = _build(fx)
    inputs = _inputs(fx)
    out = module(*[inputs[name] for name in fx.meta["args"]])
    _check(fx, {"out": out}, inputs, dict(module.named_parameters()))


@_cases("module", "layernorm")
def test_layer_norm_functional(fx: Fixture) -> None:
    """F.layer_norm with explicit weight and bias matches nn.LayerNorm's fixture."""
    inputs = _inputs(fx)
    params = {k: tg.Tensor(v.copy(), requires_grad=True) for k, v in fx.group("param").items()}
    shape = fx.meta["kwargs"]["normalized_shape"]
    shape = tuple(shape) if isinstance(shape, list) else shape
    eps = fx.meta["kwargs"].get("eps", 1e-5)
    out = F.layer_norm(inputs["x"], shape, weight=params["weight"], bias=params["bias"], eps=eps)
    _check(fx, {"out": out}, inputs, params)


# ----------------------------------------------------------------------------- functions

@_cases("fn")
def test_function(fx: Fixture) -> None:
    """Losses, softmax and log_softmax: value and input gradients (random upstream). Class
    weights and pos_weight are passed by keyword (tensor_kwargs), as Tensors."""
    inputs = _inputs(fx)
    func = getattr(F, fx.meta["func"])
    by_name = {name: inputs[name] for name in fx.meta.get("tensor_kwargs", [])}
    out = func(*[inputs[name] for name in fx.meta["args"]], **by_name, **fx.meta["kwargs"])
    _check(fx, {"out": out}, inputs)


# ----------------------------------------------------------------------------- optimisers

def _optimizer(fx: Fixture, params: list[Any]) -> Any:
    """The optimiser named by meta, with PyTorch's hyper-parameters."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in fx.meta["kwargs"].items()}
    return getattr(optim, fx.meta["optimizer"])(params, **kwargs)


def _start(fx: Fixture) -> dict[str, Any]:
    """Fresh float64 parameters at the trajectory's starting point."""
    assert fx.meta["params"] == ["weight", "bias"]
    return {k: nn.Parameter(fx[f"steps.param.{k}"][0].copy()) for k in fx.meta["params"]}


@_cases("optim")
def test_optimizer_trajectory(fx: Fixture) -> None:
    """Gradients of sum((X W^T + b - Y)^2) from our tape drive the optimiser along torch's path."""
    params = _start(fx)
    opt = _optimizer(fx, list(params.values()))
    X, Y = tg.Tensor(fx["in.X"]), tg.Tensor(fx["in.Y"])
    for step in range(fx.meta["steps"]):
        opt.zero_grad()
        loss = ((X @ params["weight"].T + params["bias"] - Y) ** 2).sum()
        loss.backward()
        for k, p in params.items():
            _close(p.grad, fx[f"steps.grad.{k}"][step], f"gradient of {k} at step {step}")
        opt.step()
        for k, p in params.items():
            _close(p.data, fx[f"steps.param.{k}"][step + 1], f"{k} after step {step}")


def _given_gradients(fx: Fixture) -> Any:
    """The optimiser after stepping with torch's recorded gradients; the parameters checked
    against torch's after every step."""
    params = _start(fx)
    opt = _optimizer(fx, list(params.values()))
    for step in range(fx.meta["steps"]):
        for k, p in params.items():
            p.grad = fx[f"steps.grad.{k}"][step].copy()
        opt.step()
        for k, p in params.items():
            _close(p.data, fx[f"steps.param.{k}"][step + 1], f"{k} after step {step}")
    return opt


@_cases("optim")
def test_optimizer_given_gradients(fx: Fixture) -> None:
    """Feeding torch's recorded gradients directly gives torch's parameters after every step."""
    _given_gradients(fx)


@_cases("optim")
def test_optimizer_state_dict(fx: Fixture) -> None:
    """After the trajectory our state_dict() is torch's: the same state names and values per
    parameter index, and every hyper-parameter of ours (defaults included) equal to torch's."""
    ours = _given_gradients(fx).state_dict()
    theirs = fx.group("state")
    assert sorted(f"{i}.{name}" for i, s in ours["state"].items() for name in s) == \
        sorted(theirs), "state names differ from torch's"
    for key, expected in theirs.items():
        i, name = key.split(".", 1)
        np.testing.assert_allclose(ours["state"][int(i)][name], expected, **TOL, err_msg=key)
    (group,) = ours["param_groups"]
    assert group.pop("params") == [0, 1]
    torch_group = fx.meta["param_group"]
    for name, value in group.items():
        assert name in torch_group, f"hyper-parameter {name} is not torch's"
        expected = torch_group[name]
        assert (list(value) if isinstance(value, tuple) else value) == expected, name


# ----------------------------------------------------------------------------- schedulers

def _scheduler(fx: Fixture) -> tuple[Any, Any]:
    """A two-group SGD with the fixture's lrs and the scheduler named by meta on it."""
    groups = [{"params": [nn.Parameter(np.zeros(2))], "lr": lr} for lr in fx.meta["lrs"]]
    opt = optim.SGD(groups, lr=1.0)
    kwargs = dict(fx.meta["kwargs"])
    if fx.meta["scheduler"] == "LambdaLR":
        factors = fx["in.factors"]
        kwargs["lr_lambda"] = [lambda e, g=g: float(factors[e, g]) for g in range(len(groups))]
    return opt, getattr(optim.lr_scheduler, fx.meta["scheduler"])(opt, **kwargs)


@_cases("sched")
def test_scheduler(fx: Fixture) -> None:
    """Every group's lr after construction and after each step, get_last_lr(), last_epoch and
    the final state_dict() (ours a subset of torch's) match torch's."""
    opt, sched = _scheduler(fx)
    lrs, last_epochs = [[g["lr"] for g in opt.param_groups]], [sched.last_epoch]
    assert sched.get_last_lr() == lrs[0]
    for epoch in range(fx.meta["epochs"]):
        opt.step()
        if "in.metrics" in fx.arrays:
            sched.step(fx["in.metrics"][epoch])
        else:
            sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        last_epochs.append(sched.last_epoch)
        assert sched.get_last_lr() == lrs[-1]
        assert all(type(lr) is float for lr in lrs[-1]), "a group's lr must stay a Python float"
    _close(np.array(lrs), fx["out.lr"], "learning rates")
    np.testing.assert_array_equal(last_epochs, fx["out.last_epoch"])
    theirs = fx.group("state")
    for name, value in sched.state_dict().items():
        assert name in theirs, f"state {name} is not in torch's scheduler state_dict"
        _close(np.array(value, dtype=np.float64), theirs[name], f"scheduler state {name}")


# ----------------------------------------------------------------------------- clipping

@_cases("clip")
def test_clip(fx: Fixture) -> None:
    """clip_grad_norm_ (2 and inf) and clip_grad_value_ clip .grad in place like torch."""
    grads = [fx[f"in.grad{k}"] for k in range(fx.meta["n"])]
    params = [nn.Parameter(np.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    kwargs = {k: float("inf") if v == "inf" else v for k, v in fx.meta["kwargs"].items()}
    result = getattr(nn.utils, fx.meta["func"])(params, **kwargs)
    if "out.total_norm" in fx.arrays:
        assert isinstance(result, float), f"total norm should be a float, got {type(result)}"
        np.testing.assert_allclose(result, fx["out.total_norm"], **TOL)
    for k, p in enumerate(params):
        _close(p.grad, fx[f"out.grad{k}"], f"clipped gradient {k}")


# ----------------------------------------------------------------------------- the fixtures

def test_fixtures_present_and_plain() -> None:
    """Every kind has fixtures; all load without pickle, hold float64 data and stay small."""
    files = sorted(FIXTURES.glob("*.npz"))
    kinds = {f.stem.split("_", 1)[0] for f in files}
    assert kinds == set(KINDS), f"fixture kinds {sorted(kinds)} != {sorted(KINDS)}"
    assert sum(f.stat().st_size for f in files) < 1_000_000
    for f in files:
        fx = Fixture(f)
        assert fx.meta["case"] == f.stem
        assert fx.meta["kind"] == f.stem.split("_", 1)[0]
        for key, value in fx.arrays.items():
            assert value.dtype.kind in "fi", (f.name, key, value.dtype)
            assert value.dtype.kind != "f" or value.dtype == np.float64, (f.name, key)
