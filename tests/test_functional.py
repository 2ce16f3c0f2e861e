"""tinygrad_rnn.nn.functional: every loss and layer against an independent numpy computation,
gradients by central differences, stability at extreme inputs, dtypes and the error cases."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn.errors import DTypeError, ShapeError
from tinygrad_rnn.random import manual_seed
from tinygrad_rnn.testing import gradcheck

REDUCTIONS = ("mean", "sum", "none")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- numpy references
def np_log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_reduce(loss: np.ndarray, reduction: str) -> np.ndarray:
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction](loss)


def np_cross_entropy(x: np.ndarray, t: np.ndarray, reduction: str, ignore: int) -> np.ndarray:
    lp = np_log_softmax(x.astype(np.float64), axis=1)
    keep = t != ignore
    loss = np.zeros(len(t))
    for n in range(len(t)):
        if keep[n]:
            loss[n] = -lp[n, t[n]]
    if reduction == "mean":
        return loss.sum() / keep.sum()
    return np_reduce(loss, reduction)


def np_bce(p: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    with np.errstate(divide="ignore"):
        lp = np.maximum(np.log(p), -100.0)
        lq = np.maximum(np.log(1 - p), -100.0)
    return np_reduce(-(t * lp + (1 - t) * lq), reduction)


def np_bce_logits(x: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    # softplus(x) - x t, with numpy's own stable softplus
    return np_reduce(np.logaddexp(0.0, x) - x * t, reduction)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def np_layer_norm(x: np.ndarray, k: int, w=None, b=None, eps=1e-5) -> np.ndarray:
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


# ----------------------------------------------------------------------------- softmax
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), data=st.data())
def test_softmax_and_log_softmax_match_numpy(shape, seed, data):
    x = _rng(seed).normal(scale=3.0, size=shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ref = np_log_softmax(x, axis)
    np.testing.assert_allclose(F.log_softmax(tg.Tensor(x), axis=axis).data, ref,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.softmax(tg.Tensor(x), axis=axis).data, np.exp(ref),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(F.softmax(x, axis=axis).data.sum(axis=axis), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_extreme_inputs_are_finite_and_keep_dtype(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [100.0, 100.0, -100.0]], dtype=dtype)
    ls = F.log_softmax(tg.Tensor(x))
    s = F.softmax(tg.Tensor(x))
    assert ls.dtype == dtype and s.dtype == dtype
    assert np.isfinite(ls.data).all() and np.isfinite(s.data).all()
    np.testing.assert_allclose(s.data[0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(s.data[1], [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(ls.data[0], [0.0, -2e4, -1e4], rtol=1e-6)


def test_softmax_masked_entries_get_exactly_zero():
    x = tg.Tensor(np.array([[0.0, -np.inf, 1.0], [2.0, 2.0, -np.inf]]), requires_grad=True)
    s = F.softmax(x)
    np.testing.assert_allclose(s.data, [[np.exp(0) / (1 + np.e), 0, np.e / (1 + np.e)],
                                        [0.5, 0.5, 0.0]], rtol=1e-14)
    assert s.data[0, 1] == 0.0 and s.data[1, 2] == 0.0
    up = _rng(0).normal(size=(2, 3))
    (s * tg.Tensor(up)).sum().backward()
    assert np.isfinite(x.grad).all()
    assert x.grad[0, 1] == 0.0 and x.grad[1, 2] == 0.0


def test_softmax_gradients():
    x = _rng(1).normal(size=(3, 5))
    assert gradcheck(lambda a: F.softmax(a, axis=0), [x])
    assert gradcheck(lambda a: F.log_softmax(a, axis=-1), [x])
    assert gradcheck(lambda a: F.softmax(a, axis=1), [x * 30])


def test_softmax_bad_axis():
    with pytest.raises(ShapeError, match="softmax.*axis"):
        F.softmax(tg.Tensor(np.zeros((2, 3))), axis=2)


# ----------------------------------------------------------------------------- mse
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_matches_numpy_with_gradient(reduction):
    r = _rng(2)
    p, t = r.normal(size=(4, 3)), r.normal(size=(4, 3))
    pt = tg.Tensor(p, requires_grad=True)
    out = F.mse_loss(pt, t, reduction=reduction)
    ref = np_reduce((p - t) ** 2, reduction)
    np.testing.assert_allclose(out.data, ref, rtol=1e-13)
    up = r.normal(size=np.shape(ref))
    (out * tg.Tensor(up)).sum().backward()
    scale = 1.0 / p.size if reduction == "mean" else 1.0
    np.testing.assert_allclose(pt.grad, 2 * (p - t) * up * scale, rtol=1e-12)
    assert gradcheck(lambda a, b: F.mse_loss(a, b, reduction=reduction), [p, t])


def test_mse_loss_float32_with_float64_numpy_target_stays_float32():
    p = tg.Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    out = F.mse_loss(p, np.zeros((2, 2), np.float64))
    assert out.dtype == np.float32
    out.backward()
    assert p.grad.dtype == np.float32


def test_mse_loss_never_broadcasts():
    with pytest.raises(ShapeError, match=r"mse_loss.*\(3, 1\).*\(3,\)"):
        F.mse_loss(tg.Tensor(np.zeros((3, 1))), np.zeros(3))


def test_mse_loss_bad_reduction():
    with pytest.raises(ValueError, match="mse_loss.*reduction.*'avg'"):
        F.mse_loss(tg.Tensor(np.zeros(3)), np.zeros(3), reduction="avg")


# ----------------------------------------------------------------------------- cross entropy
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore", [-100, 1])
def test_cross_entropy_matches_numpy(reduction, ignore):
    r = _rng(3)
    x = r.normal(size=(7, 4))
    t = np.array([0, 1, 3, 1, 2, ignore, 1])
    xt = tg.Tensor(x, requires_grad=True)
    out = F.cross_entropy(xt, t, reduction=reduction, ignore_index=ignore)
    ref = np_cross_entropy(x, t, reduction, ignore)
    np.testing.assert_allclose(out.data, ref, rtol=1e-12)
    up = r.normal(size=np.shape(ref))
    (out * tg.Tensor(up)).sum().backward()
    # d/dx of -log_softmax(x)[t] is softmax(x) - onehot(t), zero on ignored rows
    keep = t != ignore
    g = np.exp(np_log_softmax(x, 1))
    g[np.arange(len(t))[keep], t[keep]] -= 1
    g[~keep] = 0
    g = g * (up[:, None] if reduction == "none" else up)
    if reduction == "mean":
        g = g / keep.sum()
    np.testing.assert_allclose(xt.grad, g, rtol=1e-11, atol=1e-14)


def test_cross_entropy_ignored_rows_are_zero_and_mean_skips_them():
    x = _rng(4).normal(size=(4, 3))
    t = np.array([2, -100, 0, -100])
    none = F.cross_entropy(tg.Tensor(x), t, reduction="none").data
    assert none[1] == 0.0 and none[3] == 0.0
    mean = F.cross_entropy(tg.Tensor(x), t).item()
    np.testing.assert_allclose(mean, (none[0] + none[2]) / 2, rtol=1e-14)


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient():
    xt = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    out = F.cross_entropy(xt, np.array([-100, -100]))
    assert np.isnan(out.item())
    out.backward()
    np.testing.assert_array_equal(xt.grad, np.zeros((2, 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_large_logits_finite_and_dtype(dtype):
    x = np.array([[100.0, -100.0, 0.0], [-100.0, 100.0, 100.0], [1e4, -1e4, 0.0]], dtype=dtype)
    t = np.array([1, 0, 0])
    xt = tg.Tensor(x, requires_grad=True)
    out = F.cross_entropy(xt, t, reduction="none")
    assert out.dtype == dtype
    assert np.isfinite(out.data).all()
    np.testing.assert_allclose(out.data, [200.0, 200.0 + np.log(2), 0.0], rtol=1e-6)
    out.sum().backward()
    assert xt.grad.dtype == dtype and np.isfinite(xt.grad).all()
    mean = F.cross_entropy(tg.Tensor(x), t)
    assert mean.dtype == dtype and np.isfinite(mean.item())


def test_cross_entropy_target_as_tensor_and_gradcheck():
    r = _rng(5)
    x = r.normal(size=(5, 3))
    t = np.array([0, 2, 1, 2, -100])
    a = F.cross_entropy(tg.Tensor(x), tg.Tensor(t)).item()
    b = F.cross_entropy(tg.Tensor(x), t).item()
    assert a == b
    for reduction in REDUCTIONS:
        assert gradcheck(lambda z, tt: F.cross_entropy(z, tt, reduction=reduction), [x, t])


def test_cross_entropy_float_target_is_a_type_error():
    with pytest.raises(TypeError, match="cross_entropy.*integer.*float") as info:
        F.cross_entropy(tg.Tensor(np.zeros((2, 3))), np.array([0.0, 1.0]))
    assert isinstance(info.value, DTypeError)


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_cross_entropy_out_of_range_target(bad):
    with pytest.raises(IndexError, match=rf"cross_entropy: target\[1\] = {bad} .*3 classes"):
        F.cross_entropy(tg.Tensor(np.zeros((2, 3))), np.array([0, bad]))
    with pytest.raises(ValueError):  # also catchable as ValueError
        F.cross_entropy(tg.Tensor(np.zeros((2, 3))), np.array([0, bad]))


def test_cross_entropy_target_shape_follows_the_class_axis():
    """The class axis is 1 (PyTorch): logits (N, C, d) need targets (N, d); a (T, B, C) layout
    with (T, B) targets is refused with the reshape hint."""
    with pytest.raises(ShapeError, match=r"cross_entropy.*\(5, 4\).*class axis is 1.*"
                                         r"reshape\(-1, C\).*\(5, 3\)"):
        F.cross_entropy(tg.Tensor(np.zeros((5, 3, 4))), np.zeros((5, 3), dtype=int))
    with pytest.raises(ShapeError, match=r"cross_entropy.*\(2,\).*\(3,\)"):
        F.cross_entropy(tg.Tensor(np.zeros((2, 3))), np.zeros(3, dtype=int))
    with pytest.raises(ShapeError, match=r"cross_entropy.*0-d"):
        F.cross_entropy(tg.Tensor(np.zeros(())), np.zeros((), dtype=int))
    with pytest.raises(ValueError, match="cross_entropy.*reduction"):
        F.cross_entropy(tg.Tensor(np.zeros((2, 3))), np.zeros(2, dtype=int), reduction="max")


# ----------------------------------------------------------------------------- class weights
# Values are checked against PyTorch in test_torch_parity (fn_nll_loss_*, fn_cross_entropy_*);
# here: central differences, the edge cases and the errors.
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4), (3,)])
def test_nll_loss_and_cross_entropy_gradcheck(reduction, shape):
    r = _rng(21)
    x = r.normal(size=shape)
    t = r.integers(0, 3, size=shape[:1] + shape[2:] if len(shape) > 1 else ())
    if t.ndim:
        t.reshape(-1)[1] = -100
    w = r.uniform(0.2, 2.0, size=3)
    assert gradcheck(lambda z: F.nll_loss(z, t, weight=w, reduction=reduction), [x])
    for smoothing in (0.0, 0.3, 1.0):
        for weight in (None, w):
            assert gradcheck(lambda z: F.cross_entropy(z, t, weight=weight, reduction=reduction,
                                                       label_smoothing=smoothing), [x])


def test_nll_loss_of_log_softmax_is_cross_entropy():
    r = _rng(22)
    x = r.normal(size=(6, 4))
    t = np.array([0, 3, -100, 1, 2, 3])
    w = r.uniform(0.2, 2.0, size=4)
    for reduction in REDUCTIONS:
        a = F.nll_loss(F.log_softmax(tg.Tensor(x), axis=1), t, w, reduction=reduction)
        b = F.cross_entropy(tg.Tensor(x), t, w, reduction=reduction)
        np.testing.assert_allclose(a.data, b.data, rtol=1e-14)


def test_weighted_mean_divides_by_the_kept_weights():
    """The weighted mean is sum(w[t] l) / sum(w[t]) over kept targets, not a mean over rows."""
    x = _rng(23).normal(size=(4, 3))
    t = np.array([0, 2, -100, 2])
    w = np.array([0.5, 7.0, 2.0])
    none = F.cross_entropy(tg.Tensor(x), t, weight=w, reduction="none").data
    mean = F.cross_entropy(tg.Tensor(x), t, weight=w).item()
    np.testing.assert_allclose(mean, none.sum() / (0.5 + 2.0 + 2.0), rtol=1e-14)
    assert none[2] == 0.0


def test_class_weight_edge_cases_give_nan_as_pytorch():
    """Nothing kept: nan with zero gradients; kept targets whose weights sum to 0: nan."""
    xt = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    out = F.nll_loss(xt, np.array([-100, -100]), weight=np.ones(3))
    assert np.isnan(out.item())
    out.backward()
    np.testing.assert_array_equal(xt.grad, np.zeros((2, 3)))
    out = F.cross_entropy(tg.Tensor(np.ones((2, 3))), np.array([1, 1]), weight=[1.0, 0.0, 1.0])
    assert np.isnan(out.item())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_class_losses_keep_the_dtype(dtype):
    x = tg.Tensor(_rng(24).normal(size=(4, 3)).astype(dtype), requires_grad=True)
    t = np.array([0, 1, 2, 1])
    w = np.array([1.0, 2.0, 0.5])  # float64 weights never upcast float32 logits
    out = F.cross_entropy(x, t, weight=w, label_smoothing=0.1)
    out2 = F.nll_loss(x, t, weight=tg.Tensor(w))
    assert out.dtype == dtype and out2.dtype == dtype
    (out + out2).backward()
    assert x.grad.dtype == dtype


def test_class_loss_errors():
    x = tg.Tensor(np.zeros((2, 3)))
    t = np.array([0, 1])
    with pytest.raises(ShapeError, match=r"nll_loss: weight.*\(3,\).*\(2,\)"):
        F.nll_loss(x, t, weight=np.ones(2))
    with pytest.raises(TypeError, match="cross_entropy.*reduction='sum'"):
        F.cross_entropy(x, t, "sum")  # the old positional reduction
    for bad in (-0.1, 1.5, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="cross_entropy: label_smoothing.*\\[0, 1\\]"):
            F.cross_entropy(x, t, label_smoothing=bad)
    with pytest.raises(IndexError, match=r"nll_loss: target\[1, 0\] = 3 .*3 classes"):
        F.nll_loss(tg.Tensor(np.zeros((2, 3, 2))), np.array([[0, 1], [3, 0]]))
    with pytest.raises(DTypeError, match="nll_loss.*integer"):
        F.nll_loss(x, np.array([0.0, 1.0]))


# ----------------------------------------------------------------------------- BCE
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_matches_numpy(reduction):
    r = _rng(6)
    p = r.uniform(0.01, 0.99, size=(5, 3))
    t = r.uniform(size=(5, 3))
    pt = tg.Tensor(p, requires_grad=True)
    out = F.binary_cross_entropy(pt, t, reduction=reduction)
    ref = np_bce(p, t, reduction)
    np.testing.assert_allclose(out.data, ref, rtol=1e-12)
    out.sum().backward()
    scale = 1.0 / p.size if reduction == "mean" else 1.0
    np.testing.assert_allclose(pt.grad, (p - t) / (p * (1 - p)) * scale, rtol=1e-10)
    assert gradcheck(lambda a: F.binary_cross_entropy(a, t, reduction=reduction), [p])


def test_binary_cross_entropy_clamps_log_at_minus_100():
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-50, 0.5])
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    pt = tg.Tensor(p, requires_grad=True)
    with np.errstate(all="raise"):  # no log(0) or 0/0 anywhere, forward or backward
        out = F.binary_cross_entropy(pt, t, reduction="none")
        out.sum().backward()
    np.testing.assert_allclose(out.data, [100.0, 100.0, 0.0, 0.0, 100.0, np.log(2)], rtol=1e-12)
    np.testing.assert_allclose(out.data, np_bce(p, t, "none"), rtol=1e-12)
    assert np.isfinite(pt.grad).all()
    np.testing.assert_allclose(pt.grad[5], -2.0, rtol=1e-12)


def test_binary_cross_entropy_float32_and_errors():
    p = tg.Tensor(np.full((2, 2), 0.3, np.float32), requires_grad=True)
    out = F.binary_cross_entropy(p, np.ones((2, 2)))
    assert out.dtype == np.float32
    out.backward()
    assert p.grad.dtype == np.float32
    with pytest.raises(ValueError, match=r"binary_cross_entropy.*\[0, 1\].*1\.5"):
        F.binary_cross_entropy(tg.Tensor(np.array([0.5, 1.5])), np.ones(2))
    with pytest.raises(ShapeError, match=r"binary_cross_entropy.*\(2, 2\).*\(2,\)"):
        F.binary_cross_entropy(tg.Tensor(np.full((2, 2), 0.5)), np.ones(2))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_numpy(reduction):
    r = _rng(7)
    x = r.normal(scale=4.0, size=(6, 2))
    t = r.uniform(size=(6, 2))
    xt = tg.Tensor(x, requires_grad=True)
    out = F.binary_cross_entropy_with_logits(xt, t, reduction=reduction)
    np.testing.assert_allclose(out.data, np_bce_logits(x, t, reduction), rtol=1e-12)
    out.sum().backward()
    scale = 1.0 / x.size if reduction == "mean" else 1.0
    np.testing.assert_allclose(xt.grad, (np_sigmoid(x) - t) * scale, rtol=1e-10, atol=1e-15)
    assert gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
                     [x, t])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_extreme_logits_finite(dtype):
    x = np.array([100.0, -100.0, 100.0, -100.0, 0.0, 1e4, -1e4], dtype=dtype)
    t = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    xt = tg.Tensor(x, requires_grad=True)
    out = F.binary_cross_entropy_with_logits(xt, t, reduction="none")
    assert out.dtype == dtype and np.isfinite(out.data).all()
    np.testing.assert_allclose(out.data, [100, 100, 0, 0, np.log(2), 1e4, 1e4], rtol=1e-6,
                               atol=1e-30)
    out.sum().backward()
    assert xt.grad.dtype == dtype
    # sigmoid(x) - t everywhere, including exactly 1/2 - t at x = 0
    np.testing.assert_allclose(xt.grad, [1, -1, 0, 0, -0.5, 1, -1], atol=1e-7)


def test_bce_with_logits_never_broadcasts():
    with pytest.raises(ShapeError, match="binary_cross_entropy_with_logits"):
        F.binary_cross_entropy_with_logits(tg.Tensor(np.zeros((3, 2))), np.zeros((1, 2)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_weights_gradcheck(reduction):
    """pos_weight (C,) and weight (N, 1): gradients of logits and target by central differences
    (values against PyTorch: fn_bce_with_logits_*weight*)."""
    r = _rng(25)
    x, t = r.normal(scale=3.0, size=(5, 3)), r.uniform(size=(5, 3))
    pw, w = r.uniform(0.3, 3.0, size=3), r.uniform(0.1, 1.5, size=(5, 1))
    assert gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(
        a, b, weight=w, reduction=reduction, pos_weight=pw), [x, t])
    # pos_weight = 1 is the plain loss
    ones = F.binary_cross_entropy_with_logits(tg.Tensor(x), t, reduction=reduction,
                                              pos_weight=np.ones(3))
    plain = F.binary_cross_entropy_with_logits(tg.Tensor(x), t, reduction=reduction)
    np.testing.assert_allclose(ones.data, plain.data, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_pos_weight_extreme_logits_finite(dtype):
    x = tg.Tensor(np.array([[100.0, -100.0], [1e4, -1e4], [0.0, 0.0]], dtype=dtype),
                  requires_grad=True)
    t = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    out = F.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=[2.0, 3.0])
    assert out.dtype == dtype and np.isfinite(out.data).all()
    out.sum().backward()
    # d/dx = (1 + (p - 1) t) sigmoid(x) - p t, worked out by hand for each entry
    np.testing.assert_allclose(x.grad, [[1, -3], [0, 0], [-1, 0.5]], atol=1e-7)
    assert x.grad.dtype == dtype


def test_bce_with_logits_weight_errors():
    x = tg.Tensor(np.zeros((3, 2)))
    with pytest.raises(ShapeError, match=r"pos_weight of shape \(3,\).*\(3, 2\)"):
        F.binary_cross_entropy_with_logits(x, np.zeros((3, 2)), pos_weight=np.ones(3))
    with pytest.raises(ShapeError, match=r"weight of shape \(2, 3, 2\) does not broadcast"):
        F.binary_cross_entropy_with_logits(x, np.zeros((3, 2)), weight=np.ones((2, 3, 2)))
    with pytest.raises(TypeError, match="reduction='none'"):
        F.binary_cross_entropy_with_logits(x, np.zeros((3, 2)), "none")


# ----------------------------------------------------------------------------- loss modules
# Values and gradients against PyTorch: test_torch_parity (module_*loss_*).
def test_loss_modules_call_their_functions_with_their_options():
    r = _rng(26)
    x, t = r.normal(size=(4, 3)), np.array([0, 2, 1, 2])
    w = r.uniform(0.5, 2.0, size=3)
    ce = tg.nn.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.2)
    np.testing.assert_array_equal(
        ce(tg.Tensor(x), t).data,
        F.cross_entropy(tg.Tensor(x), t, w, 1, "sum", 0.2).data)
    nll = tg.nn.NLLLoss(weight=list(w), reduction="none")
    np.testing.assert_array_equal(nll(tg.Tensor(x), t).data,
                                  F.nll_loss(tg.Tensor(x), t, w, reduction="none").data)
    y = r.normal(size=(4, 3))
    assert tg.nn.MSELoss(reduction="sum")(tg.Tensor(x), y).item() == \
        F.mse_loss(tg.Tensor(x), y, reduction="sum").item()
    bce = tg.nn.BCEWithLogitsLoss(pos_weight=w)
    u = r.uniform(size=(4, 3))
    assert bce(tg.Tensor(x), u).item() == \
        F.binary_cross_entropy_with_logits(tg.Tensor(x), u, pos_weight=w).item()


def test_loss_modules_state_and_errors():
    ce = tg.nn.CrossEntropyLoss(weight=np.array([1.0, 2.0]))
    assert list(ce.parameters()) == [] and list(ce.state_dict()) == ["weight"]
    assert tg.nn.CrossEntropyLoss().state_dict() == {}
    assert list(tg.nn.BCEWithLogitsLoss(pos_weight=np.ones(2)).state_dict()) == ["pos_weight"]
    assert "reduction='sum'" in repr(tg.nn.MSELoss(reduction="sum"))
    with pytest.raises(ValueError, match="MSELoss: reduction.*'avg'"):
        tg.nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="CrossEntropyLoss: label_smoothing"):
        tg.nn.CrossEntropyLoss(label_smoothing=2.0)


# ----------------------------------------------------------------------------- layer norm
@pytest.mark.parametrize("normalized_shape", [4, (4,), (3, 4)])
def test_layer_norm_matches_numpy(normalized_shape):
    r = _rng(8)
    x = r.normal(loc=2.0, scale=3.0, size=(2, 3, 4))
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    w, b = r.normal(size=shape), r.normal(size=shape)
    ref = np_layer_norm(x, len(shape), w, b, eps=1e-3)
    out = F.layer_norm(tg.Tensor(x), normalized_shape, weight=w, bias=b, eps=1e-3)
    np.testing.assert_allclose(out.data, ref, rtol=1e-12, atol=1e-12)
    plain = F.layer_norm(tg.Tensor(x), normalized_shape)
    np.testing.assert_allclose(plain.data, np_layer_norm(x, len(shape)), rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda a, ww, bb: F.layer_norm(a, normalized_shape, ww, bb), [x, w, b])


def test_layer_norm_float32_and_shape_error():
    x = tg.Tensor(np.ones((2, 3), np.float32) * np.arange(3, dtype=np.float32))
    assert F.layer_norm(x, 3).dtype == np.float32
    # numpy float64 weight and bias take the input's dtype: no silent upcast
    assert F.layer_norm(x, 3, weight=np.ones(3), bias=np.zeros(3)).dtype == np.float32
    assert F.linear(x, np.ones((2, 3)), np.zeros(2)).dtype == np.float32
    with pytest.raises(ShapeError, match=r"layer_norm.*\(4,\).*\(2, 3\)"):
        F.layer_norm(x, 4)
    with pytest.raises(ShapeError, match="layer_norm: weight"):
        F.layer_norm(x, 3, weight=np.ones(2, np.float32))


# ----------------------------------------------------------------------------- dropout
def test_dropout_identity_cases_return_the_input():
    x = tg.Tensor(np.ones((3, 3)), requires_grad=True)
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.7, training=False) is x


def test_dropout_p1_gives_zeros_and_zero_gradient():
    x = tg.Tensor(np.ones((3, 3), np.float32), requires_grad=True)
    y = F.dropout(x, 1.0)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.data, 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_scales_kept_values_and_is_seeded(dtype):
    x_np = _rng(9).uniform(1.0, 2.0, size=(200, 50)).astype(dtype)
    x = tg.Tensor(x_np, requires_grad=True)
    manual_seed(123)
    y = F.dropout(x, 0.25)
    assert y.dtype == dtype
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], x_np[kept] / dtype(0.75), rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    up = _rng(10).normal(size=x_np.shape)
    (y * tg.Tensor(up.astype(dtype))).sum().backward()
    np.testing.assert_allclose(x.grad, np.where(kept, up / 0.75, 0), rtol=1e-6)
    manual_seed(123)
    np.testing.assert_array_equal(F.dropout(tg.Tensor(x_np), 0.25).data, y.data)
    assert not np.array_equal(F.dropout(tg.Tensor(x_np), 0.25).data, y.data)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5"])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="dropout: p"):
        F.dropout(tg.Tensor(np.ones(3)), p)


# ----------------------------------------------------------------------------- linear, re-exports
def test_linear_matches_numpy_and_checks_shapes():
    r = _rng(11)
    x, w, b = r.normal(size=(2, 5, 3)), r.normal(size=(4, 3)), r.normal(size=4)
    np.testing.assert_allclose(F.linear(tg.Tensor(x), w, b).data, x @ w.T + b, rtol=1e-12)
    np.testing.assert_allclose(F.linear(tg.Tensor(x), w).data, x @ w.T, rtol=1e-12)
    assert gradcheck(F.linear, [x, w, b])
    b2 = r.normal(size=4)  # two (out,) biases, as the layers' b_ih and b_hh: added as one
    np.testing.assert_allclose(tg.linear(tg.Tensor(x), w, b, b2).data, x @ w.T + b + b2,
                               rtol=1e-12)
    for xx in (x, x[0]):  # stepwise (3-D) and plain
        assert gradcheck(lambda *a: tg.linear(*a), [xx, w, b, b2])
    with pytest.raises(ShapeError, match=r"linear.*\(2, 5, 3\).*\(3, 4\)"):
        F.linear(tg.Tensor(x), w.T)
    with pytest.raises(ShapeError, match=r"linear.*bias.*\(4,\)"):
        F.linear(tg.Tensor(x), w, np.zeros(3))
    with pytest.raises(ValueError, match=r"linear: act must be None, 'tanh' or 'sigmoid'"):
        tg.linear(tg.Tensor(x), w, b, act="relu")


def test_linear_act_is_one_record_with_the_activation_applied():
    """act= fuses the activation into linear's record: the value is tanh/sigmoid of the
    affine map, x's dtype is kept, and the tape holds one record instead of two."""
    r = _rng(13)
    x, w, b = r.normal(size=(3, 4)).astype(np.float32), r.normal(size=(2, 4)), r.normal(size=2)
    xt = tg.Tensor(x, requires_grad=True)
    for act, f in (("tanh", np.tanh), ("sigmoid", lambda z: 1 / (1 + np.exp(-z)))):
        y = tg.linear(xt, w.astype(np.float32), b.astype(np.float32), act=act)
        assert y.dtype == np.float32 and y._node.inputs[0] is xt  # no separate activation record
        np.testing.assert_allclose(y.data, f(x @ w.T + b), rtol=1e-5)


def test_activations_are_reexported():
    x = np.array([-2.0, 0.5, 3.0])
    np.testing.assert_allclose(F.tanh(tg.Tensor(x)).data, np.tanh(x))
    np.testing.assert_allclose(F.sigmoid(tg.Tensor(x)).data, np_sigmoid(x))
    np.testing.assert_array_equal(F.relu(tg.Tensor(x)).data, np.maximum(x, 0))
