"""Optimisers against hand-written numpy versions of PyTorch's update rules, over several steps,
and gradient clipping (clip_grad_norm_ / clip_grad_value_)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import optim
from tinygrad_rnn.nn.utils import NonFiniteNormError, clip_grad_norm_, clip_grad_value_

STEPS = 5


def _param(a: np.ndarray) -> tg.Tensor:
    return tg.Tensor(np.array(a, copy=True), requires_grad=True)


def _grad_sequence(seed: int, shape, steps=STEPS, dtype=np.float64):
    r = np.random.default_rng(seed)
    return [r.normal(size=shape).astype(dtype) for _ in range(steps)]


# ----------------------------------------------------------------------------- references
def ref_sgd(w, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    """PyTorch's SGD, written out: the trajectory of w for the given gradients."""
    w = w.copy()
    buf = None
    out = []
    for g in grads:
        d = g + weight_decay * w
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        w = w - lr * d
        out.append(w.copy())
    return out


def ref_adam(w, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """PyTorch's Adam, written out (L2 decay added to the gradient; eps after bias correction)."""
    w = w.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat_step = lr / (1 - b1**t)
        denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
        w = w - m_hat_step * m / denom
        out.append(w.copy())
    return out


def _run(opt_cls, kwargs, w0, grads):
    p = _param(w0)
    data_id = id(p.data)
    opt = opt_cls([p], **kwargs)
    traj = []
    for g in grads:
        p.grad = g.copy()
        before = p.grad.copy()
        grad_obj = p.grad
        opt.step()
        assert p.grad is grad_obj and np.array_equal(p.grad, before), "step modified p.grad"
        assert id(p.data) == data_id, "step must update p.data in place"
        traj.append(p.data.copy())
    return traj


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, weight_decay=0.2),
    dict(lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.1),
]


def _ids(kwargs: dict) -> str:
    return ",".join(f"{a}={b}" for a, b in kwargs.items()) or "default"


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=_ids)
def test_sgd_matches_pytorch_rule(kwargs):
    w0 = np.random.default_rng(0).normal(size=(3, 4))
    grads = _grad_sequence(1, (3, 4))
    ours = _run(optim.SGD, kwargs, w0, grads)
    ref = ref_sgd(w0, grads, **kwargs)
    for step, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13, err_msg=f"step {step}")


def test_sgd_momentum_buffer_starts_at_first_gradient():
    # with b0 = g1 (not 0) the first step is the full gradient step
    p = _param(np.zeros(2))
    opt = optim.SGD([p], lr=1.0, momentum=0.9, dampening=0.5)
    p.grad = np.array([1.0, -2.0])
    opt.step()
    np.testing.assert_array_equal(p.data, [-1.0, 2.0])
    opt.step()  # b = 0.9 b + 0.5 g = 1.4 g
    np.testing.assert_allclose(p.data, [-2.4, 4.8], rtol=1e-15)


ADAM_CASES = [
    dict(),
    dict(lr=0.1),
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.1, weight_decay=0.1),
    dict(lr=0.01, betas=(0.0, 0.0)),
]


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=_ids)
def test_adam_matches_pytorch_rule(kwargs):
    w0 = np.random.default_rng(2).normal(size=(4,))
    grads = _grad_sequence(3, (4,), steps=8)
    ours = _run(optim.Adam, kwargs, w0, grads)
    kw = dict(kwargs)
    if "betas" in kw:
        kw["b1"], kw["b2"] = kw.pop("betas")
    ref = ref_adam(w0, grads, **kw)
    for step, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"step {step}")


def test_adam_first_step_is_lr_times_sign():
    # bias correction makes the first update lr * g / (|g| + eps)
    p = _param(np.zeros(3))
    opt = optim.Adam([p], lr=0.01, eps=0.0)
    p.grad = np.array([3.0, -0.001, 7.0])
    opt.step()
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01], rtol=1e-12)


@pytest.mark.parametrize("opt_cls,kwargs", [(optim.SGD, dict(lr=0.1, momentum=0.9,
                                                               weight_decay=0.01)),
                                             (optim.Adam, dict(lr=0.01, weight_decay=0.01))])
def test_float32_stays_float32(opt_cls, kwargs):
    p = _param(np.ones((2, 3), np.float32))
    opt = opt_cls([p], **kwargs)
    for g in _grad_sequence(4, (2, 3), dtype=np.float32):
        p.grad = g
        opt.step()
    assert p.data.dtype == np.float32
    # a float64 gradient is cast to the parameter's dtype, not the other way round
    p.grad = np.ones((2, 3), np.float64)
    opt.step()
    assert p.data.dtype == np.float32 and p.grad.dtype == np.float64


def test_step_skips_params_without_grad_and_their_state_does_not_advance():
    a, b = _param(np.ones(2)), _param(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = np.array([1.0, 2.0])
    opt.step()
    np.testing.assert_array_equal(b.data, [1.0, 1.0])
    a.grad, b.grad = None, np.array([5.0, -5.0])
    a_before = a.data.copy()
    opt.step()
    np.testing.assert_array_equal(a.data, a_before)
    # b's first real step: bias-corrected, so exactly lr * sign(g) (up to eps)
    np.testing.assert_allclose(b.data, [0.9, 1.1], rtol=1e-9)


def test_zero_grad_sets_none():
    p = _param(np.ones(3))
    (p * p).sum().backward()
    assert p.grad is not None
    opt = optim.SGD([p], lr=0.1)
    opt.zero_grad()
    assert p.grad is None


def test_optimizer_minimises_with_tape_gradients():
    r = np.random.default_rng(5)
    X, Y = r.normal(size=(20, 3)), r.normal(size=(20, 1))
    for opt_cls, kwargs in [(optim.SGD, dict(lr=0.01, momentum=0.9)), (optim.Adam, dict(lr=0.05))]:
        W = _param(np.zeros((3, 1)))
        opt = opt_cls([W], **kwargs)
        losses = []
        for _ in range(100):
            opt.zero_grad()
            loss = ((tg.Tensor(X) @ W - tg.Tensor(Y)) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        best = np.linalg.lstsq(X, Y, rcond=None)[0]
        np.testing.assert_allclose(W.data, best, atol=2e-2, err_msg=opt_cls.__name__)
        assert losses[-1] < losses[0]


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=-0.1),
    lambda p: optim.SGD(p, lr=0.1, nesterov=True),
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, dampening=0.1),
    lambda p: optim.SGD(p, lr=0.1, momentum=-0.5),
    lambda p: optim.SGD(p, lr=0.1, weight_decay=-1.0),
    lambda p: optim.Adam(p, lr=-1e-3),
    lambda p: optim.Adam(p, betas=(1.0, 0.999)),
    lambda p: optim.Adam(p, betas=(0.9, -0.1)),
    lambda p: optim.Adam(p, betas=(0.9,)),
    lambda p: optim.Adam(p, eps=-1e-8),
    lambda p: optim.Adam(p, lr=float("nan")),
], ids=["sgd-lr", "nesterov-no-momentum", "nesterov-dampening", "sgd-momentum", "sgd-wd",
        "adam-lr", "adam-beta1", "adam-beta2", "adam-betas-pair", "adam-eps", "adam-nan-lr"])
def test_invalid_hyperparameters_raise(make):
    with pytest.raises(ValueError, match="SGD|Adam"):
        make([_param(np.ones(2))])


def test_empty_and_invalid_parameter_lists():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam(iter(()))
    with pytest.raises(TypeError, match="item 1"):
        optim.SGD([_param(np.ones(1)), np.ones(1)], lr=0.1)
    p = _param(np.ones(2))
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="not a leaf"):
        optim.SGD([p * 2], lr=0.1)


def test_grad_of_wrong_shape_is_reported():
    p = _param(np.ones(3))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match=r"SGD.step.*\(3,\).*\(2,\)"):
        opt.step()


def test_lr_can_be_changed_between_steps():
    p = _param(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    p.grad = np.ones(1)
    opt.step()
    opt.lr = 0.5
    opt.step()
    np.testing.assert_array_equal(p.data, [-1.5])


# ----------------------------------------------------------------------------- clip_grad_norm_
def _with_grads(grads):
    ps = [tg.Tensor(np.zeros_like(g), requires_grad=True) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = g.copy()
    return ps


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_returns_preclip_norm_and_scales_in_place(norm_type, max_norm):
    r = np.random.default_rng(6)
    grads = [r.normal(size=(3, 4)), r.normal(size=5), r.normal(size=())]
    ps = _with_grads(grads)
    ps.append(tg.Tensor(np.ones(2), requires_grad=True))  # grad None: skipped
    objs = [p.grad for p in ps]
    flat = np.concatenate([g.ravel() for g in grads])
    expected = np.abs(flat).max() if norm_type == math.inf else \
        (np.abs(flat) ** norm_type).sum() ** (1 / norm_type)
    total = clip_grad_norm_(ps, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, expected, rtol=1e-13)
    coef = min(1.0, max_norm / (expected + 1e-6))
    for p, g, obj in zip(ps, grads, objs):
        assert p.grad is obj  # in place
        np.testing.assert_allclose(p.grad, g * coef, rtol=1e-13)
    assert ps[-1].grad is None
    if max_norm < expected:
        clipped = np.concatenate([p.grad.ravel() for p in ps[:-1]])
        new = np.abs(clipped).max() if norm_type == math.inf else \
            (np.abs(clipped) ** norm_type).sum() ** (1 / norm_type)
        assert new <= max_norm


@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 1e2), seed=st.integers(0, 1000))
def test_clip_grad_norm_property(scale, max_norm, seed):
    g = np.random.default_rng(seed).normal(size=7) * scale
    (p,) = _with_grads([g])
    total = clip_grad_norm_(p, max_norm)  # a single Tensor is accepted too
    np.testing.assert_allclose(total, np.linalg.norm(g), rtol=1e-12)
    assert np.linalg.norm(p.grad) <= max_norm * (1 + 1e-9) or total <= max_norm
    np.testing.assert_allclose(p.grad, g * min(1.0, max_norm / (total + 1e-6)), rtol=1e-12)


def test_clip_grad_norm_float32_stays_float32_and_large_values_do_not_overflow():
    g = np.full(4, 3e20, np.float32)  # sum of squares overflows float32, the norm does not
    (p,) = _with_grads([g])
    total = clip_grad_norm_([p], 1.0)
    assert math.isfinite(total)
    np.testing.assert_allclose(total, 6e20, rtol=1e-6)
    assert p.grad.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p.grad.astype(np.float64)), 1.0, rtol=1e-5)


def test_clip_grad_norm_float64_near_overflow():
    ps = _with_grads([np.array([1e200, -1e200]), np.array([1e200])])
    total = clip_grad_norm_(ps, 1.0)
    np.testing.assert_allclose(total, math.sqrt(3) * 1e200, rtol=1e-14)
    np.testing.assert_allclose(ps[0].grad, [3**-0.5, -(3**-0.5)], rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_grad_norm_nonfinite_raises_and_leaves_grads(bad, norm_type):
    grads = [np.array([1.0, 2.0]), np.array([3.0, bad])]
    ps = _with_grads(grads)
    with pytest.raises(NonFiniteNormError, match="clip_grad_norm_.*unchanged") as info:
        clip_grad_norm_(ps, 1.0, norm_type=norm_type)
    assert isinstance(info.value, RuntimeError)
    for p, g in zip(ps, grads):
        np.testing.assert_array_equal(p.grad, g)


def test_clip_grad_norm_nonfinite_torch_behaviour_on_request():
    ps = _with_grads([np.array([1.0, np.inf])])
    total = clip_grad_norm_(ps, 1.0, error_if_nonfinite=False)
    assert total == math.inf
    assert ps[0].grad[0] == 0.0  # scaled by max_norm / inf = 0, as PyTorch


def test_clip_grad_norm_edge_cases():
    assert clip_grad_norm_([tg.Tensor(np.ones(2), requires_grad=True)], 1.0) == 0.0
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(_with_grads([np.ones(2)]), 1.0, norm_type=0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_(_with_grads([np.ones(2)]), -1.0)


# ----------------------------------------------------------------------------- clip_grad_value_
def test_clip_grad_value_in_place():
    grads = [np.array([[-3.0, 0.2], [0.7, 5.0]]), np.array([-0.1, -0.9], np.float32)]
    ps = _with_grads(grads)
    ps.append(tg.Tensor(np.ones(1), requires_grad=True))
    objs = [p.grad for p in ps]
    assert clip_grad_value_(ps, 0.5) is None
    for p, g, obj in zip(ps, grads, objs):
        assert p.grad is obj and p.grad.dtype == g.dtype
        np.testing.assert_array_equal(p.grad, np.clip(g, -0.5, 0.5))
    assert ps[-1].grad is None
    (p,) = _with_grads([np.array([2.0, -2.0])])
    clip_grad_value_(p, 1.0)
    np.testing.assert_array_equal(p.grad, [1.0, -1.0])
    with pytest.raises(ValueError, match="clip_grad_value_"):
        clip_grad_value_(p, -1.0)
