"""Optimisers against hand-written numpy versions of PyTorch's update rules, over several steps;
parameter groups, the public `update` extension point, state dicts (saved with tg.save: resuming
gives the same weights as not stopping), learning-rate schedulers, and gradient clipping
(clip_grad_norm_ / clip_grad_value_)."""
from __future__ import annotations

import math
import warnings

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


def ref_adam(w, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False,
             decoupled=False):
    """PyTorch's Adam, written out (L2 decay added to the gradient; eps after bias correction);
    decoupled=True is AdamW (the weights shrink by lr * wd before the step)."""
    w = w.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    v_max = np.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            w = w * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        m_hat_step = lr / (1 - b1**t)
        denom = np.sqrt(v_max if amsgrad else v) / math.sqrt(1 - b2**t) + eps
        w = w - m_hat_step * m / denom
        out.append(w.copy())
    return out


def ref_adagrad(w, grads, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                eps=1e-10):
    """PyTorch's Adagrad, written out: the step size decays as lr / (1 + (t - 1) lr_decay)."""
    w = w.copy()
    s = np.full_like(w, initial_accumulator_value)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * w
        s = s + g * g
        w = w - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s) + eps)
        out.append(w.copy())
    return out


def ref_rmsprop(w, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False):
    """PyTorch's RMSprop, written out; centered subtracts the squared running mean gradient."""
    w = w.copy()
    v, mean, buf = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    out = []
    for g in grads:
        g = g + weight_decay * w
        v = alpha * v + (1 - alpha) * g**2
        mean = alpha * mean + (1 - alpha) * g
        denom = np.sqrt(v - mean**2 if centered else v) + eps
        if momentum > 0:
            buf = momentum * buf + g / denom
            w = w - lr * buf
        else:
            w = w - lr * g / denom
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


ADAMW_CASES = [
    dict(),
    dict(lr=0.05, weight_decay=0.3),
    dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
    dict(lr=0.05, weight_decay=0.0),
]


@pytest.mark.parametrize("kwargs", ADAMW_CASES, ids=_ids)
def test_adamw_matches_pytorch_rule(kwargs):
    w0 = np.random.default_rng(2).normal(size=(4,))
    grads = _grad_sequence(3, (4,), steps=8)
    ours = _run(optim.AdamW, kwargs, w0, grads)
    kw = {"weight_decay": 1e-2, **kwargs}  # AdamW's default decay, unlike Adam's 0
    if "betas" in kw:
        kw["b1"], kw["b2"] = kw.pop("betas")
    ref = ref_adam(w0, grads, decoupled=True, **kw)
    for step, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"step {step}")


def test_adam_amsgrad_and_decoupled_decay():
    w0 = np.random.default_rng(4).normal(size=(3, 2))
    # growing then shrinking gradients: v falls below its running maximum
    grads = [g * s for g, s in zip(_grad_sequence(5, (3, 2), steps=8), [4, 4, 3, 1, .2, .1, .1, 1])]
    kw = dict(lr=0.05, weight_decay=0.2, amsgrad=True)
    for decoupled in (False, True):
        ours = _run(optim.Adam, dict(kw, decoupled_weight_decay=decoupled), w0, grads)
        ref = ref_adam(w0, grads, decoupled=decoupled, **kw)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)
    plain = ref_adam(w0, grads, lr=0.05, weight_decay=0.2)
    assert not np.allclose(ref[-1], plain[-1]), "amsgrad should matter for these gradients"


ADAGRAD_CASES = [
    dict(),
    dict(lr=0.1, lr_decay=0.05),
    dict(lr=0.1, weight_decay=0.2, initial_accumulator_value=0.5),
    dict(lr=0.3, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.1, eps=1e-3),
]


@pytest.mark.parametrize("kwargs", ADAGRAD_CASES, ids=_ids)
def test_adagrad_matches_pytorch_rule(kwargs):
    w0 = np.random.default_rng(6).normal(size=(2, 3))
    grads = _grad_sequence(7, (2, 3), steps=8)
    ours = _run(optim.Adagrad, kwargs, w0, grads)
    for step, (a, b) in enumerate(zip(ours, ref_adagrad(w0, grads, **kwargs))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"step {step}")


RMSPROP_CASES = [
    dict(),
    dict(lr=0.01, alpha=0.9, eps=1e-6),
    dict(lr=0.01, centered=True),
    dict(lr=0.01, momentum=0.9, weight_decay=0.1),
    dict(lr=0.01, alpha=0.9, centered=True, momentum=0.8, weight_decay=0.1),
    dict(lr=0.02, alpha=0.3, centered=True),  # 1 - alpha > 0.5: the other side of lerp
]


@pytest.mark.parametrize("kwargs", RMSPROP_CASES, ids=_ids)
def test_rmsprop_matches_pytorch_rule(kwargs):
    w0 = np.random.default_rng(8).normal(size=(5,))
    grads = _grad_sequence(9, (5,), steps=8)
    ours = _run(optim.RMSprop, kwargs, w0, grads)
    for step, (a, b) in enumerate(zip(ours, ref_rmsprop(w0, grads, **kwargs))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"step {step}")


def test_defaults_are_pytorchs():
    p = _param(np.ones(2))
    assert optim.Adagrad([p]).defaults == dict(lr=1e-2, lr_decay=0, weight_decay=0,
                                               initial_accumulator_value=0, eps=1e-10)
    assert optim.RMSprop([p]).defaults == dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
                                               momentum=0, centered=False)
    assert optim.AdamW([p]).defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                             weight_decay=1e-2, amsgrad=False,
                                             decoupled_weight_decay=True)


def test_adam_first_step_is_lr_times_sign():
    # bias correction makes the first update lr * g / (|g| + eps)
    p = _param(np.zeros(3))
    opt = optim.Adam([p], lr=0.01, eps=0.0)
    p.grad = np.array([3.0, -0.001, 7.0])
    opt.step()
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01], rtol=1e-12)


FLOAT32_CASES = [
    (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (optim.Adam, dict(lr=0.01, weight_decay=0.01, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01, amsgrad=True)),
    (optim.Adagrad, dict(lr=0.1, lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.1)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
]


@pytest.mark.parametrize("opt_cls,kwargs", FLOAT32_CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_float32_stays_float32(opt_cls, kwargs):
    p = _param(np.ones((2, 3), np.float32))
    data = p.data
    opt = opt_cls([p], **kwargs)
    for g in _grad_sequence(4, (2, 3), dtype=np.float32):
        p.grad = g
        opt.step()
    assert p.data is data and p.data.dtype == np.float32
    arrays = [v for v in opt.state[p].values() if isinstance(v, np.ndarray)]
    assert arrays and all(a.dtype == np.float32 for a in arrays), "state must stay float32"
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
    lambda p: optim.AdamW(p, weight_decay=-0.1),
    lambda p: optim.AdamW(p, betas=(0.9, 1.0)),
    lambda p: optim.Adagrad(p, lr_decay=-0.1),
    lambda p: optim.Adagrad(p, initial_accumulator_value=-1.0),
    lambda p: optim.Adagrad(p, eps=-1.0),
    lambda p: optim.RMSprop(p, alpha=-0.5),
    lambda p: optim.RMSprop(p, momentum=-0.5),
    lambda p: optim.RMSprop(p, eps=-1e-8),
    lambda p: optim.SGD([{"params": p, "lr": -1.0}], lr=0.1),
], ids=["sgd-lr", "nesterov-no-momentum", "nesterov-dampening", "sgd-momentum", "sgd-wd",
        "adam-lr", "adam-beta1", "adam-beta2", "adam-betas-pair", "adam-eps", "adam-nan-lr",
        "adamw-wd", "adamw-beta2", "adagrad-lr-decay", "adagrad-init", "adagrad-eps",
        "rmsprop-alpha", "rmsprop-momentum", "rmsprop-eps", "group-lr"])
def test_invalid_hyperparameters_raise(make):
    with pytest.raises(ValueError, match="SGD|Adam|Adagrad|RMSprop"):
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


# ----------------------------------------------------------------------------- param groups
def test_param_groups_have_their_own_hyperparameters():
    a, b = _param(np.zeros(2)), _param(np.zeros(3))
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[0]["momentum"] == 0.0 and opt.param_groups[1]["params"] == [b]
    assert opt.params == [a, b]
    ga, gb = _grad_sequence(10, (2,)), _grad_sequence(11, (3,))
    for x, y in zip(ga, gb):
        a.grad, b.grad = x.copy(), y.copy()
        opt.step()
    np.testing.assert_allclose(a.data, ref_sgd(np.zeros(2), ga, lr=0.1)[-1], rtol=1e-13)
    np.testing.assert_allclose(b.data, ref_sgd(np.zeros(3), gb, lr=0.5, momentum=0.9)[-1],
                               rtol=1e-13)


def test_step_reads_lr_from_param_groups_and_attribute_shortcut():
    a, b = _param(np.zeros(1)), _param(np.zeros(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 2.0}], lr=1.0)
    with pytest.raises(AttributeError, match="different lr"):
        opt.lr
    opt.param_groups[1]["lr"] = 3.0
    a.grad, b.grad = np.ones(1), np.ones(1)
    opt.step()
    np.testing.assert_array_equal([a.data[0], b.data[0]], [-1.0, -3.0])
    opt.lr = 0.25  # sets every group
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25] and opt.lr == 0.25
    with pytest.raises(ValueError, match="SGD: invalid lr"):
        opt.lr = -1.0
    assert opt.lr == 0.25, "a rejected value must change no group"
    with pytest.raises(AttributeError, match="no attribute 'lrr'"):
        opt.lrr


def test_add_param_group_and_its_errors():
    a, b = _param(np.zeros(1)), _param(np.zeros(1))
    opt = optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": [b], "betas": (0.5, 0.6)})
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[1]["betas"] == (0.5, 0.6)
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(TypeError, match="'params' entry"):
        opt.add_param_group({"lr": 0.1})
    with pytest.raises(ValueError, match="beta1"):
        opt.add_param_group({"params": [_param(np.zeros(1))], "betas": (1.5, 0.9)})
    assert len(opt.param_groups) == 2


# ----------------------------------------------------------------------------- your own optimiser
class SignMomentum(optim.Optimizer):
    """A custom optimiser through the public extension point: b = beta b + sign(g) (b = sign(g)
    at the first step); w = w - lr / sqrt(t) * b."""

    def __init__(self, params, lr=0.1, beta=0.5):
        super().__init__(params, {"lr": lr, "beta": beta})

    def update(self, param, grad, state, group):
        if not state:
            state["step"] = 0
            state["buf"] = np.zeros_like(param)
        state["step"] += 1
        state["buf"] *= group["beta"]
        state["buf"] += np.sign(grad)
        param -= group["lr"] / math.sqrt(state["step"]) * state["buf"]


def test_custom_optimizer_through_public_update(tmp_path):
    w0 = np.random.default_rng(12).normal(size=(2, 3))
    grads = _grad_sequence(13, (2, 3), steps=6)
    ours = _run(SignMomentum, dict(lr=0.2, beta=0.7), w0, grads)
    w, b = w0.copy(), np.zeros_like(w0)
    for t, (g, got) in enumerate(zip(grads, ours), start=1):
        b = 0.7 * b + np.sign(g)
        w = w - 0.2 / math.sqrt(t) * b
        np.testing.assert_allclose(got, w, rtol=1e-13, err_msg=f"step {t}")
    # state_dict, tg.save / tg.load and schedulers work for it unchanged
    p = _param(w0)
    opt = SignMomentum([p], lr=0.2, beta=0.7)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for g in grads[:3]:
        p.grad = g
        opt.step()
        sched.step()
    tg.save({"optimizer": opt, "scheduler": sched}, tmp_path / "ck.npz")
    ck = tg.load(tmp_path / "ck.npz")
    q = _param(p.data)
    opt2 = SignMomentum([q], lr=1.0, beta=0.0)
    sched2 = optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    opt2.load_state_dict(tg.io.subdict(ck, "optimizer"))
    sched2.load_state_dict(tg.io.subdict(ck, "scheduler"))
    assert opt2.state[q]["step"] == 3 and type(opt2.state[q]["step"]) is int
    assert opt2.param_groups[0]["beta"] == 0.7 and opt2.param_groups[0]["lr"] == 0.1
    for g in grads[3:]:
        for o, s, t in ((opt, sched, p), (opt2, sched2, q)):
            t.grad = g
            o.step()
            s.step()
    np.testing.assert_array_equal(q.data, p.data)


def test_a_custom_optimizer_step_is_seen_by_the_in_place_write_check():
    # step() (not update) notes the write, so a backward through the old weights is refused
    w = _param(np.ones((2, 2)))
    loss = (tg.Tensor(np.ones((3, 2))) @ w).tanh().sum()
    loss.backward(retain_graph=True)
    SignMomentum([w]).step()
    with pytest.raises(tg.GraphError, match="changed in place"):
        loss.backward()


def test_update_gets_a_read_only_gradient_and_base_class_needs_update():
    class Scribbler(optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        def update(self, param, grad, state, group):
            grad *= 2  # must not be allowed to change p.grad

    p = _param(np.ones(2))
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match="read-only"):
        Scribbler([p]).step()
    np.testing.assert_array_equal(p.grad, [1.0, 1.0])
    with pytest.raises(NotImplementedError, match="update"):
        optim.Optimizer([p], {"lr": 0.1}).step()


# ----------------------------------------------------------------------------- state dicts
def _stepped(opt_cls, kwargs, steps=3, dtype=np.float64):
    """An optimiser over two parameters (the second never gets a gradient), stepped a few times."""
    a, b = _param(np.ones((2, 3), dtype)), _param(np.ones(4, dtype))
    opt = opt_cls([a, b], **kwargs)
    for g in _grad_sequence(14, (2, 3), steps=steps, dtype=dtype):
        a.grad = g
        opt.step()
    return opt, a, b


def test_state_dict_has_pytorchs_layout_and_is_a_copy():
    opt, a, _ = _stepped(optim.Adam, dict(lr=0.1, amsgrad=True))
    sd = opt.state_dict()
    assert list(sd) == ["state", "param_groups"]
    assert list(sd["state"]) == [0]  # parameter 1 has no state yet
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert sd["state"][0]["step"] == 3
    assert sd["param_groups"] == [dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                       amsgrad=True, decoupled_weight_decay=False, params=[0, 1])]
    sd["state"][0]["exp_avg"] += 1.0
    sd["param_groups"][0]["lr"] = 5.0
    assert opt.param_groups[0]["lr"] == 0.1
    assert not np.array_equal(opt.state[a]["exp_avg"], sd["state"][0]["exp_avg"])


@pytest.mark.parametrize("opt_cls,kwargs", FLOAT32_CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_state_round_trips_through_tg_save_with_types_and_dtypes(tmp_path, opt_cls, kwargs):
    opt, a, _ = _stepped(opt_cls, kwargs, dtype=np.float32)
    tg.save(opt, tmp_path / "opt.npz")
    flat = tg.load(tmp_path / "opt.npz")
    assert "param_groups.0.lr" in flat and "param_groups.0.params" in flat
    fresh, a2, _ = _stepped(opt_cls, dict(kwargs, lr=123.0), steps=0, dtype=np.float32)
    fresh.load_state_dict(flat)
    want, got = opt.state_dict(), fresh.state_dict()
    assert got["param_groups"] == want["param_groups"]
    for name, value in want["param_groups"][0].items():
        assert type(got["param_groups"][0][name]) is type(value), name
    assert list(got["state"]) == list(want["state"])
    for name, value in want["state"][0].items():
        loaded = fresh.state[a2][name]
        assert type(loaded) is type(value), name
        if isinstance(value, np.ndarray):
            assert loaded.dtype == np.float32 and loaded is not flat[f"state.0.{name}"]
            np.testing.assert_array_equal(loaded, value)
        else:
            assert loaded == value


def test_loaded_state_takes_the_parameters_dtype():
    opt, _, _ = _stepped(optim.SGD, dict(lr=0.1, momentum=0.9))  # float64
    p, q = _param(np.ones((2, 3), np.float32)), _param(np.ones(4, np.float32))
    fresh = optim.SGD([p, q], lr=0.1, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state[p]["momentum_buffer"].dtype == np.float32


def _bad(sd, kind):
    """A corrupted copy of a (nested) Adam state dict."""
    if kind == "flat-missing":
        return {k: v for k, v in sd.items() if k != "param_groups.0.betas"}
    if kind == "flat-shape":
        return {**sd, "state.0.exp_avg": np.zeros((3, 2))}
    if kind == "flat-unexpected":
        return {**sd, "extra.thing": np.zeros(1)}
    if kind == "flat-index":
        return {**sd, "state.7.exp_avg": np.zeros((2, 3))}
    sd = {"state": dict(sd["state"]), "param_groups": [dict(g) for g in sd["param_groups"]]}
    if kind == "too-few-params":
        sd["param_groups"][0]["params"] = [0]
    elif kind == "repeated-index":
        sd["param_groups"][0]["params"] = [1, 1]
    elif kind == "two-groups":
        sd["param_groups"].append(dict(sd["param_groups"][0]))
    elif kind == "missing-lr":
        del sd["param_groups"][0]["lr"]
    elif kind == "shape":
        sd["state"][0] = {**sd["state"][0], "exp_avg_sq": np.zeros(6)}
    elif kind == "bad-value":
        sd["param_groups"][0]["betas"] = (2.0, 0.9)
    elif kind == "no-groups":
        del sd["param_groups"]
    return sd


@pytest.mark.parametrize("kind,match", [
    ("too-few-params", r"'param_groups.0.params': 1 parameters saved.*has 2"),
    ("repeated-index", r"'param_groups.0.params': a parameter index occurs twice"),
    ("two-groups", r"2 groups saved, the optimizer has 1"),
    ("missing-lr", r"missing key 'param_groups.0.lr'"),
    ("shape", r"'state.0.exp_avg_sq': shape \(6,\) in the state dict, \(2, 3\)"),
    ("bad-value", r"'param_groups.0'.*beta1"),
    ("no-groups", r"missing key 'param_groups'"),
    ("flat-missing", r"missing key 'param_groups.0.betas'"),
    ("flat-shape", r"'state.0.exp_avg': shape \(3, 2\)"),
    ("flat-unexpected", r"unexpected key 'extra.thing'"),
    ("flat-index", r"'state.7': no parameter has this index"),
])
def test_rejected_load_names_the_key_and_changes_nothing(tmp_path, kind, match):
    saved, _, _ = _stepped(optim.Adam, dict(lr=0.1), steps=4)
    sd = saved.state_dict()
    if kind.startswith("flat"):
        tg.save(saved, tmp_path / "opt.npz")
        sd = tg.load(tmp_path / "opt.npz")
    opt, a, b = _stepped(optim.Adam, dict(lr=0.2, betas=(0.5, 0.6)), steps=2)
    before = opt.state_dict()
    groups = opt.param_groups[0]
    with pytest.raises(ValueError, match=match) as info:
        opt.load_state_dict(_bad(sd, kind))
    assert "Nothing was loaded" in str(info.value)
    after = opt.state_dict()
    assert opt.param_groups[0] is groups and after["param_groups"] == before["param_groups"]
    assert sorted(after["state"][0]) == sorted(before["state"][0])
    for name, value in before["state"][0].items():
        np.testing.assert_array_equal(after["state"][0][name], value, err_msg=name)


def test_load_replaces_state_and_hyperparameters_like_pytorch():
    saved, _, _ = _stepped(optim.RMSprop, dict(lr=0.05, momentum=0.5))
    opt, a, b = _stepped(optim.RMSprop, dict(lr=0.2), steps=5)
    opt.state[b] = {"step": 9, "square_avg": np.ones(4)}  # state the saved dict does not have
    opt.load_state_dict(saved.state_dict())
    assert opt.lr == 0.05 and opt.momentum == 0.5
    assert list(opt.state) == [a] and opt.state[a]["step"] == 3


# ----------------------------------------------------------------------------- resuming
class _Net(tg.nn.Module):
    """A small float32 GRU regressor."""

    def __init__(self):
        super().__init__()
        self.rnn = tg.nn.GRU(3, 5)
        self.head = tg.nn.Linear(5, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


RESUME_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
     "StepLR", dict(step_size=3, gamma=0.5)),
    ("Adam", dict(lr=0.01, amsgrad=True), "CosineAnnealingLR", dict(T_max=4, eta_min=1e-3)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1), "ExponentialLR", dict(gamma=0.9)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
     "ReduceLROnPlateau", dict(factor=0.5, patience=0)),
    ("RMSprop", dict(lr=0.005, momentum=0.9, centered=True, weight_decay=1e-3),
     "LambdaLR", dict(lr_lambda=lambda e: 1 / (1 + e))),
]
N_STEPS, K_STEPS = 8, 5


def _batches():
    r = np.random.default_rng(15)
    return [(r.normal(size=(4, 2, 3)).astype(np.float32),
             r.normal(size=(4, 2, 1)).astype(np.float32)) for _ in range(N_STEPS)]


def _setup(opt_name, opt_kw, sched_name, sched_kw, seed):
    tg.manual_seed(seed)
    model = _Net()
    opt = getattr(optim, opt_name)(model.parameters(), **opt_kw)
    return model, opt, getattr(optim.lr_scheduler, sched_name)(opt, **sched_kw)


def _train(model, opt, sched, batches):
    for x, y in batches:
        opt.zero_grad()
        loss = ((model(tg.Tensor(x)) - tg.Tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
        if isinstance(sched, optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(loss.item())
        else:
            sched.step()


@pytest.mark.parametrize("opt_name,opt_kw,sched_name,sched_kw", RESUME_CASES,
                         ids=[c[0] for c in RESUME_CASES])
def test_resuming_gives_the_same_weights_as_not_stopping(tmp_path, opt_name, opt_kw, sched_name,
                                                         sched_kw):
    batches = _batches()
    straight = _setup(opt_name, opt_kw, sched_name, sched_kw, seed=0)
    _train(*straight, batches)

    first = _setup(opt_name, opt_kw, sched_name, sched_kw, seed=0)
    _train(*first, batches[:K_STEPS])
    model, opt, sched = first
    tg.save({"model": model, "optimizer": opt, "scheduler": sched}, tmp_path / "ck.npz")

    # a different initialisation and learning rate, so only what is loaded can make them agree
    resumed = _setup(opt_name, dict(opt_kw, lr=0.5), sched_name, sched_kw, seed=1)
    unloaded = _setup(opt_name, opt_kw, sched_name, sched_kw, seed=1)
    ck = tg.load(tmp_path / "ck.npz")
    for part, (m, o, s) in ((True, resumed), (False, unloaded)):
        m.load_state_dict(tg.io.subdict(ck, "model"))
        if part:
            o.load_state_dict(tg.io.subdict(ck, "optimizer"))
            s.load_state_dict(tg.io.subdict(ck, "scheduler"))
    assert resumed[2].get_last_lr() == first[2].get_last_lr()
    _train(*resumed, batches[K_STEPS:])
    _train(*unloaded, batches[K_STEPS:])

    want = straight[0].state_dict()
    got, control = resumed[0].state_dict(), unloaded[0].state_dict()
    for name, value in want.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert any(not np.array_equal(control[k], v) for k, v in want.items()), \
        "without the optimiser's state the run should differ"
    assert [g["lr"] for g in resumed[1].param_groups] == \
        [g["lr"] for g in straight[1].param_groups]


# ----------------------------------------------------------------------------- schedulers
def _sgd(lrs=(0.1,)):
    return optim.SGD([{"params": [_param(np.zeros(1))], "lr": lr} for lr in lrs], lr=1.0)


def _lrs(opt, sched, epochs, metrics=None):
    """Every group's lr after construction and after each epoch's scheduler step."""
    out = [[g["lr"] for g in opt.param_groups]]
    for e in range(epochs):
        opt.step()
        sched.step() if metrics is None else sched.step(metrics[e])
        out.append([g["lr"] for g in opt.param_groups])
        assert sched.get_last_lr() == out[-1] and sched.last_epoch == e + 1
    return np.array(out)


def test_step_and_exponential_lr_closed_forms():
    S = optim.lr_scheduler
    opt = _sgd((0.1, 0.4))
    got = _lrs(opt, S.StepLR(opt, step_size=3, gamma=0.5), 10)
    t = np.arange(11)[:, None]
    np.testing.assert_allclose(got, np.array([[0.1, 0.4]]) * 0.5 ** (t // 3), rtol=1e-15)
    opt = _sgd((0.1, 0.4))
    got = _lrs(opt, S.ExponentialLR(opt, gamma=0.8), 10)
    np.testing.assert_allclose(got, np.array([[0.1, 0.4]]) * 0.8 ** t, rtol=1e-14)


def test_cosine_annealing_follows_the_closed_form_and_keeps_oscillating():
    opt = _sgd((0.1, 0.02))
    T, eta_min = 6, 0.01
    got = _lrs(opt, optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=eta_min), 30)
    t = np.arange(31)[:, None]
    closed = eta_min + (np.array([[0.1, 0.02]]) - eta_min) * (1 + np.cos(np.pi * t / T)) / 2
    np.testing.assert_allclose(got, closed, rtol=1e-12, atol=1e-15)
    assert got[T, 0] == eta_min


def test_lambda_lr_per_group_and_plateau_by_hand():
    S = optim.lr_scheduler
    opt = _sgd((0.1, 0.2))
    sched = S.LambdaLR(opt, [lambda e: 0.5 ** e, lambda e: 1 + e])
    got = _lrs(opt, sched, 4)
    e = np.arange(5)
    np.testing.assert_allclose(got, np.stack([0.1 * 0.5 ** e, 0.2 * (1 + e)], 1), rtol=1e-15)
    # min mode, rel threshold 0.1, patience 1, cooldown 1, floor 0.02. Epoch: metric -> bad
    # epochs: 1: 1.0 best -> 0; 2: 0.95 is not < 0.9 -> 1; 3: 0.92 -> 2 > 1: halve, cooldown 1,
    # 0; 4: 0.5 best -> 0 (cooldown over); 5: 0.5 -> 1; 6: -> 2: halve, cooldown; 7: bad epoch
    # ignored in the cooldown; 8: 1; 9: 2: halve (group 0 stops at its floor 0.02); 10: cooldown
    opt = _sgd((0.1, 0.3))
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0.1, cooldown=1,
                                min_lr=0.02)
    got = _lrs(opt, sched, 10, metrics=[1.0, 0.95, 0.92, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    halvings = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    np.testing.assert_allclose(got[:, 0], np.maximum(0.1 * 0.5 ** halvings, 0.02), rtol=1e-15)
    np.testing.assert_allclose(got[:, 1], 0.3 * 0.5 ** halvings, rtol=1e-15)
    assert sched.best == 0.5 and sched.last_epoch == 10


def test_the_optimizer_steps_with_the_scheduled_lr():
    p = _param(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(4):
        p.grad = np.ones(1)
        opt.step()
        sched.step()
    np.testing.assert_array_equal(p.data, [-(1 + 0.5 + 0.25 + 0.125)])


def test_scheduler_warns_when_stepped_before_the_optimizer():
    opt = _sgd()
    sched = optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    with pytest.warns(UserWarning, match="before optimizer.step"):
        sched.step()
    opt = _sgd()
    sched = optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()


def test_cosine_resumed_by_last_epoch_continues_from_the_current_lr():
    # as PyTorch 2.13 (checked by hand: 0.0763932...): the constructor's step keeps the lr, and
    # the next step applies the recursion from there, not the closed form
    opt = _sgd((0.1,))
    S = optim.lr_scheduler
    with pytest.raises(KeyError, match="initial_lr"):
        S.CosineAnnealingLR(opt, T_max=10, last_epoch=3)
    opt.param_groups[0]["initial_lr"] = 0.1
    sched = S.CosineAnnealingLR(opt, T_max=10, last_epoch=3)
    assert sched.last_epoch == 4 and sched.get_last_lr() == [0.1]
    opt.step()
    sched.step()
    ratio = (1 + math.cos(math.pi * 5 / 10)) / (1 + math.cos(math.pi * 4 / 10))
    np.testing.assert_allclose(sched.get_last_lr(), [0.1 * ratio], rtol=1e-14)
    np.testing.assert_allclose(sched.get_last_lr(), [0.07639320225002104], rtol=1e-14)


def test_scheduler_state_dict_round_trip_and_rejected_loads(tmp_path):
    S = optim.lr_scheduler
    opt = _sgd((0.1, 0.2))
    sched = S.ReduceLROnPlateau(opt, patience=0, min_lr=[0.0, 0.05])
    _lrs(opt, sched, 3, metrics=[1.0, 2.0, 3.0])
    tg.save(sched, tmp_path / "s.npz")
    flat = tg.load(tmp_path / "s.npz")
    opt2 = _sgd((0.1, 0.2))
    fresh = S.ReduceLROnPlateau(opt2)
    fresh.load_state_dict(flat)
    assert fresh.state_dict() == sched.state_dict()
    assert type(fresh.num_bad_epochs) is int and type(fresh.best) is float
    for bad, match in [({k: v for k, v in flat.items() if k != "best"}, "missing key 'best'"),
                       ({**flat, "min_lrs": np.zeros(3)}, "'min_lrs': 3 values"),
                       ({**flat, "gamma": np.ones(())}, "unexpected key 'gamma'"),
                       ({**flat, "patience": "ten"}, "'patience': expected a number")]:
        other = S.ReduceLROnPlateau(_sgd((0.1, 0.2)), patience=4)
        before = other.state_dict()
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(bad)
        assert other.state_dict() == before


@pytest.mark.parametrize("make,match", [
    (lambda o: optim.lr_scheduler.StepLR(o, step_size=0), "step_size"),
    (lambda o: optim.lr_scheduler.CosineAnnealingLR(o, T_max=0), "T_max"),
    (lambda o: optim.lr_scheduler.LambdaLR(o, [lambda e: 1.0] * 3), "2 lr_lambdas"),
    (lambda o: optim.lr_scheduler.ReduceLROnPlateau(o, factor=1.0), "factor"),
    (lambda o: optim.lr_scheduler.ReduceLROnPlateau(o, mode="up"), "mode"),
    (lambda o: optim.lr_scheduler.ReduceLROnPlateau(o, threshold_mode="x"), "threshold_mode"),
    (lambda o: optim.lr_scheduler.ReduceLROnPlateau(o, min_lr=[0.1]), "2 min_lrs"),
])
def test_invalid_scheduler_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_sgd((0.1, 0.2)))
    with pytest.raises(TypeError, match="Optimizer"):
        optim.lr_scheduler.StepLR(object(), step_size=1)


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
