"""PyTorch's spellings: dim= / keepdim= wherever axis= / keepdims= is taken (found by walking
the package, so a new function without them fails here), the Tensor methods PyTorch users type
(numel, size(), argmax, t, flatten, new_zeros, view, to, ...) and the errors for what does not
exist here. References are numpy's own functions and central differences."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from typing import Any, Callable

import numpy as np
import pytest

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn.errors import DTypeError, ShapeError
from tinygrad_rnn.primitive import Primitive
from tinygrad_rnn.testing import gradcheck

X = np.random.default_rng(0).normal(size=(2, 3, 4))


def _public_callables() -> dict[str, Callable[..., Any]]:
    """Every public function and public method of a public class defined in the package, by
    'module.qualname'. Primitive classes are left out: their forward/backward take the
    parameters the public functions pass them (an internal protocol)."""
    found: dict[str, Callable[..., Any]] = {}
    for info in pkgutil.walk_packages(tg.__path__, "tinygrad_rnn."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not (getattr(obj, "__module__", None) or "") \
                    .startswith("tinygrad_rnn"):
                continue
            if inspect.isclass(obj):
                if issubclass(obj, Primitive):
                    continue
                members = [v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
                           for k, v in vars(obj).items() if not k.startswith("_")]
            else:
                members = [obj]
            for f in members:
                if inspect.isfunction(f) or inspect.ismethod(f):
                    found[f"{f.__module__}.{f.__qualname__}"] = f
    return found


def _params(f: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(f).parameters)


AXIS_FUNCTIONS = {k: f for k, f in _public_callables().items() if "axis" in _params(f)}
KEEPDIMS = {k for k, f in AXIS_FUNCTIONS.items() if "keepdims" in _params(f)}


# name -> (call(**axis_kwargs), the axis to use: not the default, so an ignored dim shows)
def _t() -> tg.Tensor:
    return tg.Tensor(X)


def _t1() -> tg.Tensor:
    return tg.Tensor(X[:1, :1])  # (1, 1, 4): squeezing axis 1 differs from squeezing all


CALLS: dict[str, tuple[Callable[..., Any], int]] = {
    "tinygrad_rnn.ops.sum": (lambda **kw: tg.sum(_t(), **kw), 1),
    "tinygrad_rnn.ops.mean": (lambda **kw: tg.mean(_t(), **kw), 1),
    "tinygrad_rnn.ops.max": (lambda **kw: tg.max(_t(), **kw), 1),
    "tinygrad_rnn.ops.logsumexp": (lambda **kw: tg.logsumexp(_t(), **kw), 1),
    "tinygrad_rnn.ops.argmax": (lambda **kw: tg.argmax(_t(), **kw), 1),
    "tinygrad_rnn.ops.argmin": (lambda **kw: tg.argmin(_t(), **kw), 1),
    "tinygrad_rnn.ops.concat": (lambda **kw: tg.concat([_t(), _t()], **kw), 1),
    "tinygrad_rnn.ops.stack": (lambda **kw: tg.stack([_t(), _t()], **kw), 1),
    "tinygrad_rnn.ops.split": (lambda **kw: tg.split(_t(), 2, **kw), 2),
    "tinygrad_rnn.ops.chunk": (lambda **kw: tg.chunk(_t(), 2, **kw), 2),
    "tinygrad_rnn.ops.unbind": (lambda **kw: tg.unbind(_t(), **kw), 1),
    "tinygrad_rnn.ops.squeeze": (lambda **kw: tg.squeeze(_t1(), **kw), 1),
    "tinygrad_rnn.ops.unsqueeze": (lambda **kw: tg.unsqueeze(_t(), **kw), 1),
    "tinygrad_rnn.nn.functional.softmax": (lambda **kw: F.softmax(_t(), **kw), 1),
    "tinygrad_rnn.nn.functional.log_softmax": (lambda **kw: F.log_softmax(_t(), **kw), 1),
    "tinygrad_rnn.tensor.Tensor.sum": (lambda **kw: _t().sum(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.mean": (lambda **kw: _t().mean(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.max": (lambda **kw: _t().max(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.logsumexp": (lambda **kw: _t().logsumexp(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.argmax": (lambda **kw: _t().argmax(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.argmin": (lambda **kw: _t().argmin(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.split": (lambda **kw: _t().split(2, **kw), 2),
    "tinygrad_rnn.tensor.Tensor.chunk": (lambda **kw: _t().chunk(2, **kw), 2),
    "tinygrad_rnn.tensor.Tensor.unbind": (lambda **kw: _t().unbind(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.squeeze": (lambda **kw: _t1().squeeze(**kw), 1),
    "tinygrad_rnn.tensor.Tensor.unsqueeze": (lambda **kw: _t().unsqueeze(**kw), 1),
}


def _arrays(result: Any) -> list[np.ndarray]:
    items = result if isinstance(result, tuple) else (result,)
    return [np.asarray(r.data) for r in items]


# ----------------------------------------------------------------------------- dim= and keepdim=
def test_every_axis_parameter_also_takes_dim():
    """Found by inspection: a public function or method taking axis= (keepdims=) must also take
    dim= (keepdim=) as a keyword."""
    assert len(AXIS_FUNCTIONS) >= 20, sorted(AXIS_FUNCTIONS)  # the walk itself works
    missing = [k for k, f in AXIS_FUNCTIONS.items() if "dim" not in _params(f)]
    assert not missing, f"these take axis= but not dim=: {missing}"
    keep = {k: f for k, f in _public_callables().items() if "keepdims" in _params(f)}
    missing = [k for k, f in keep.items() if "keepdim" not in _params(f)]
    assert keep and not missing, f"these take keepdims= but not keepdim=: {missing}"


def test_every_axis_function_has_a_call_below():
    """CALLS (used by the tests below) covers every function found: add a row for a new one."""
    assert sorted(CALLS) == sorted(AXIS_FUNCTIONS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_dim_means_axis(name):
    call, axis = CALLS[name]
    by_axis, by_dim = _arrays(call(axis=axis)), _arrays(call(dim=axis))
    try:
        default = _arrays(call())
    except TypeError:  # the axis is required (unsqueeze)
        default = []
    assert [a.shape for a in by_axis] != [a.shape for a in default] or \
        any((a != b).any() for a, b in zip(by_axis, default)), "axis must differ from default"
    assert len(by_axis) == len(by_dim)
    for a, b in zip(by_axis, by_dim):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_axis_and_dim_together_is_a_type_error_naming_the_function(name):
    call, axis = CALLS[name]
    who = name.split(".", 2)[-1].removeprefix("functional.").removeprefix("tensor.")
    with pytest.raises(TypeError, match=rf"^{re.escape(who)}: got both axis= and dim="):
        call(axis=axis, dim=axis)


def test_positional_axis_and_dim_is_a_type_error():
    with pytest.raises(TypeError, match=r"Tensor\.sum: got both axis= and dim="):
        _t().sum(1, dim=1)
    with pytest.raises(TypeError, match=r"concat: got both axis= and dim="):
        tg.cat([_t(), _t()], 0, dim=0)
    with pytest.raises(TypeError, match=r"Tensor\.mean: got both keepdims= and keepdim="):
        _t().mean(1, True, keepdim=True)


@pytest.mark.parametrize("name", sorted(KEEPDIMS & set(CALLS)))
def test_keepdim_means_keepdims(name):
    call, axis = CALLS[name]
    a, b = _arrays(call(axis=axis, keepdims=True))[0], _arrays(call(dim=axis, keepdim=True))[0]
    assert a.shape == b.shape == X.shape[:axis] + (1,) + X.shape[axis + 1:]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="got both keepdims= and keepdim="):
        call(axis=axis, keepdims=True, keepdim=True)


def test_dim_keeps_gradients():
    """The aliases change nothing on the tape: central differences through dim= calls."""
    assert gradcheck(lambda x: F.log_softmax(x, dim=0).sum(dim=1, keepdim=True)
                     * x.max(dim=-1, keepdim=True), [X])
    assert gradcheck(lambda x: tg.cat(x.chunk(2, dim=2), dim=1).unsqueeze(dim=0), [X])


def test_pytorch_style_calls_match_numpy():
    x = tg.Tensor(X)
    np.testing.assert_allclose(x.sum(dim=(0, 2)).data, X.sum(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(x.mean(-1, keepdim=True).data, X.mean(-1, keepdims=True),
                               rtol=1e-14)
    np.testing.assert_allclose(F.softmax(x, dim=1).data.sum(axis=1), 1.0, rtol=1e-14)


# ----------------------------------------------------------------------------- new methods
def test_size_numel_and_dim():
    x = tg.Tensor(X)
    assert x.size == X.size and isinstance(x.size, int)  # numpy's attribute, as before
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4 and x.size(dim=0) == 2
    assert x.numel() == 24 and x.dim() == 3
    assert tg.Tensor(1.0).size() == () and tg.Tensor(1.0).size == 1
    with pytest.raises(ShapeError, match="size: axis 3 is out of range"):
        x.size(3)


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
def test_argmax_argmin_match_numpy(fn):
    x = tg.Tensor(X, requires_grad=True)
    ref = getattr(np, fn)
    for axis in (None, 0, 1, -1):
        for keep in (False, True):
            out = getattr(x, fn)(dim=axis, keepdim=keep)
            assert out.dtype == np.int64 and not out.requires_grad
            np.testing.assert_array_equal(out.data, ref(X, axis=axis, keepdims=keep))
            np.testing.assert_array_equal(getattr(tg, fn)(x, axis, keep).data, out.data)
    ties = tg.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]))
    np.testing.assert_array_equal(getattr(ties, fn)(1).data, ref(ties.data, axis=1))  # first
    assert getattr(tg.Tensor(5.0), fn)(0).item() == 0  # a 0-d tensor has axis 0 (torch)
    with pytest.raises(ShapeError, match=f"{fn}: axis 3 is out of range"):
        getattr(x, fn)(3)
    with pytest.raises(ValueError, match=f"{fn}: .*empty"):
        getattr(tg.Tensor(np.zeros((0, 2))), fn)()


def test_t_flatten_squeeze_unsqueeze_shapes_match_numpy():
    x = tg.Tensor(X)
    m = tg.Tensor(X[0])
    np.testing.assert_array_equal(m.t().data, X[0].T)
    v = tg.Tensor(X[0, 0])
    assert v.t() is v and tg.Tensor(2.0).t().shape == ()
    with pytest.raises(ShapeError, match=r"t: expects a tensor with at most 2 dims.*swapaxes"):
        x.t()
    for start, end in ((0, -1), (1, 2), (0, 1), (2, 2), (-2, -1)):
        shape = X.shape[:start % 3] + (-1,) + X.shape[end % 3 + 1:]
        np.testing.assert_array_equal(x.flatten(start, end).data, X.reshape(shape))
    np.testing.assert_array_equal(tg.flatten(x, start_dim=1).data, X.reshape(2, -1))
    assert tg.Tensor(3.0).flatten().shape == (1,)
    with pytest.raises(ShapeError, match="flatten: start_dim 2 comes after end_dim 1"):
        x.flatten(2, 1)
    y = X.reshape(2, 1, 3, 1, 4)
    t = tg.Tensor(y)
    assert t.squeeze().shape == np.squeeze(y).shape
    assert t.squeeze(1).shape == np.squeeze(y, 1).shape
    assert t.squeeze((1, 3)).shape == np.squeeze(y, (1, 3)).shape
    assert t.squeeze(0) is t  # a non-1 axis is left alone, as PyTorch
    for axis in (0, 2, 3, -1, -4):
        assert x.unsqueeze(axis).shape == np.expand_dims(X, axis).shape
    with pytest.raises(ShapeError, match="unsqueeze: axis 4 is out of range"):
        x.unsqueeze(4)
    with pytest.raises(ShapeError, match="squeeze: axis 5 is out of range"):
        t.squeeze(5)
    assert gradcheck(lambda a: a.flatten(1).t().unsqueeze(1).squeeze(dim=1), [X[:, :, :2]])


def test_new_zeros_view_contiguous_cpu():
    x = tg.Tensor(X.astype(np.float32), requires_grad=True)
    z = x.new_zeros(2, 5)
    assert z.shape == (2, 5) and z.dtype == np.float32 and not z.requires_grad
    assert not z.data.any()
    assert x.new_zeros((3,), dtype=np.float64).dtype == np.float64
    assert x.new_zeros([2, 2], requires_grad=True).requires_grad
    assert x.contiguous() is x and x.cpu() is x and x.to("cpu") is x
    np.testing.assert_array_equal(x.view(6, 4).data, X.astype(np.float32).reshape(6, 4))
    assert gradcheck(lambda a: a.swapaxes(0, 2).view(-1) * 2.0, [X])  # non-contiguous: a copy


def test_to_and_type():
    x = tg.Tensor(X.astype(np.float32))
    y = x.to(np.float64)
    assert y.dtype == np.float64 and y is not x
    np.testing.assert_array_equal(y.data, X.astype(np.float32).astype(np.float64))
    assert x.to("float32") is x and x.to(dtype=np.float32) is x
    assert x.to("cpu", "float64").dtype == np.float64
    assert x.to(tg.Tensor(np.zeros(1, dtype=np.int64))).dtype == np.int64
    assert x.type(np.float64).dtype == np.float64

    class FakeTorchDtype:  # torch.float64 prints as "torch.float64"
        def __str__(self) -> str:
            return "torch.float64"

    assert x.to(FakeTorchDtype()).dtype == np.float64
    with pytest.raises(TypeError, match=r"type: .*\.dtype"):
        x.type()
    w = tg.Tensor(X, requires_grad=True)
    assert w.to(np.float64) is w
    with pytest.raises(DTypeError, match=r"to: .*requires grad.*detach"):
        w.to(np.float32)
    with pytest.raises(DTypeError, match="to: .*not a dtype"):
        x.to(object())


@pytest.mark.parametrize("call", [lambda x: x.cuda(), lambda x: x.to("cuda"),
                                  lambda x: x.to("cuda:0", np.float32),
                                  lambda x: x.to(device="mps")])
def test_other_devices_say_cpu_only(call):
    with pytest.raises(RuntimeError, match="CPU with numpy only"):
        call(tg.Tensor(X))


def test_cat_is_concat():
    assert tg.cat is tg.concat
