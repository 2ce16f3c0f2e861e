"""Strictness and numerics (#15): what used to be silently wrong is now refused or exact.

Operands that are not numbers (None, strings) are TypeErrors naming the op; `tg.Tensor(a)` and
`tg.tensor(a)` copy while `tg.from_numpy(a)` shares; float16 sigmoid, float32 BCE-with-logits and
float32 layer_norm match a float64 reference in their extremes; split/chunk refuse non-int
sizes; a tied tensor is in `state_dict` under every name; `load_state_dict` and every
optimiser's `step` check everything before writing anything.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import nn, optim
from tinygrad_rnn.testing import gradcheck

# ============================================================================ 1. operands
NOT_OPERANDS = [None, "2", b"2", object(), 1j, {"a": 1}, [1.0, None], ["1", "2"],
                np.array(["a"]), np.array([1, None], dtype=object)]
_X = tg.Tensor(np.array([1.0, 2.0], np.float32))
_M = tg.Tensor(np.ones((2, 2), np.float32))

# name -> (call with the operand, the op its error names)
BINARY: dict[str, tuple[Callable[[Any], Any], str]] = {
    "add": (lambda v: _X + v, "add"), "radd": (lambda v: v + _X, "add"),
    "sub": (lambda v: _X - v, "sub"), "rsub": (lambda v: v - _X, "sub"),
    "mul": (lambda v: _X * v, "mul"), "rmul": (lambda v: v * _X, "mul"),
    "div": (lambda v: _X / v, "div"), "rdiv": (lambda v: v / _X, "div"),
    "matmul": (lambda v: _M @ v, "matmul"), "rmatmul": (lambda v: v @ _M, "matmul"),
    "lt": (lambda v: _X < v, "lt"), "le": (lambda v: _X <= v, "le"),
    "gt": (lambda v: _X > v, "gt"), "ge": (lambda v: _X >= v, "ge"),
    "pow": (lambda v: _X ** v, "pow"), "rpow": (lambda v: v ** _X, "pow"),
    "maximum": (lambda v: tg.maximum(_X, v), "maximum"),
    "rmaximum": (lambda v: tg.maximum(v, _X), "maximum"),
    "where": (lambda v: tg.where(np.array([True, False]), _X, v), "where"),
    "addcmul": (lambda v: tg.addcmul(_X, _X, v), "addcmul"),
    "lerp": (lambda v: tg.lerp(_X, v, 0.5), "lerp"),
    "linear": (lambda v: tg.linear(_M, v), "linear"), "exp": (lambda v: tg.exp(v), "exp"),
    "sum": (lambda v: tg.sum(v), "sum"), "concat": (lambda v: tg.concat([_X, v]), "concat"),
    "Tensor": (lambda v: tg.Tensor(v), "Tensor"), "tensor": (lambda v: tg.tensor(v), "Tensor"),
    "mse_loss": (lambda v: F.mse_loss(_X, v), "mse_loss"),
    "softmax": (lambda v: F.softmax(v), "softmax"),
}


@pytest.mark.parametrize("case", sorted(BINARY))
@pytest.mark.parametrize("bad", NOT_OPERANDS, ids=repr)
def test_a_non_numeric_operand_is_a_type_error_naming_op_and_type(case: str, bad: Any) -> None:
    # numpy would make None nan and "2" the number 2
    call, op = BINARY[case]
    with pytest.raises(TypeError) as ei:
        call(bad)
    msg = str(ei.value)
    assert msg.startswith(op + ":"), msg
    if not isinstance(bad, np.ndarray):
        assert type(bad).__name__ in msg or "holding" in msg, msg
    if isinstance(bad, list) and op != "pow":  # pow takes only a number: "got list"
        assert f"list holding {type(bad[-1]).__name__}" in msg, msg


def test_the_reported_cases() -> None:
    x = tg.Tensor([1.0, 2.0])
    with pytest.raises(TypeError, match=r"^add: .*NoneType"):
        x + None
    with pytest.raises(TypeError, match=r"^Tensor: .*NoneType"):
        tg.Tensor(None)
    with pytest.raises(TypeError, match=r"^add: .*str"):
        x + "2"
    with pytest.raises(TypeError, match=r"^Tensor: .*list holding NoneType"):
        tg.Tensor([[1.0, 2.0], [3.0, None]])
    with pytest.raises(TypeError, match=r"^pow: the exponent must be a real number, got str"):
        x ** "2"
    with pytest.raises(TypeError, match=r"^clip: lo must be a real number, got str"):
        x.clip("0", 1.0)


def test_equality_with_a_non_operand_is_false_as_in_pytorch() -> None:
    x = tg.Tensor([1.0, 2.0])
    assert (x == None) is False  # noqa: E711 - the operator is what is tested
    assert (x != None) is True  # noqa: E711
    assert (x == "a") is False
    np.testing.assert_array_equal((x == [1.0, 3.0]).data, [True, False])


@pytest.mark.parametrize("good", [2, 2.5, True, np.float32(2), np.float64(2), np.int64(2),
                                  np.bool_(True), [1, 2], (1.0, 2.0), np.array([1.0, 2.0]),
                                  [np.float32(1), 2], tg.Tensor([1.0, 2.0])], ids=repr)
def test_numbers_arrays_lists_and_tensors_are_still_operands(good: Any) -> None:
    x = tg.Tensor(np.array([1.0, 2.0], np.float32))
    want = np.array([1.0, 2.0], np.float32) + np.asarray(np.asarray(good), np.float64)
    np.testing.assert_allclose((x + good).data, want)
    np.testing.assert_allclose((good + x).data, want)
    assert tg.Tensor(good).shape == np.shape(np.asarray(good))


def test_python_ints_beyond_int64_are_numbers() -> None:
    assert tg.Tensor([2 ** 70, 1]).data[0] == np.float32(2.0 ** 70)


# ============================================================================ 2. copy or share
def test_tensor_and_tg_tensor_copy_so_a_step_leaves_the_callers_array_alone() -> None:
    for make in (tg.Tensor, tg.tensor):
        a = np.ones(3, np.float32)
        w = make(a, requires_grad=True)
        assert not np.shares_memory(w.data, a) and w.dtype == np.float32
        (w * w).sum().backward()
        optim.SGD([w], lr=0.1).step()
        np.testing.assert_array_equal(a, np.ones(3, np.float32))
        assert not np.array_equal(w.data, a)


def test_tensor_of_a_tensor_copies_too() -> None:
    t = tg.Tensor(np.arange(3.0))
    u = tg.Tensor(t)
    u.data[0] = 7.0
    assert t.data[0] == 0.0


def test_from_numpy_shares_memory_and_dtype() -> None:
    a = np.ones(3, np.float64)
    w = tg.from_numpy(a).requires_grad_()
    assert w.data is a and w.dtype == np.float64 and w.is_leaf
    (w * w).sum().backward()
    optim.SGD([w], lr=0.5).step()
    np.testing.assert_array_equal(a, [0.0, 0.0, 0.0])  # 1 - 0.5 * 2
    with pytest.raises(TypeError, match="from_numpy: expected a numpy array, got list"):
        tg.from_numpy([1.0])
    with pytest.raises(TypeError, match="from_numpy"):
        tg.from_numpy(np.array(["a"]))


def test_parameters_own_their_data_even_from_a_read_only_array() -> None:
    a = np.ones(3)
    a.flags.writeable = False
    p = nn.Parameter(a)
    assert not np.shares_memory(p.data, a) and p.data.flags.writeable
    q = nn.Parameter(tg.from_numpy(np.ones(2)))
    assert q.requires_grad and q.data.flags.writeable


def test_operands_and_detach_still_share_no_copy_on_the_hot_path() -> None:
    a = np.arange(6.0).reshape(2, 3)
    x = tg.from_numpy(a)
    assert x.detach().data is a
    assert np.shares_memory(tg.reshape(a, 3, 2).data, a)  # an operand is read, never copied


# ============================================================================ 3. numerics
def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in float16 units in the last place, for values >= 0."""
    return np.abs(got.view(np.int16).astype(np.int64) - want.view(np.int16).astype(np.int64))


def test_float16_sigmoid_of_minus_16_is_right_at_every_size() -> None:
    want = np.float16(1.0 / (1.0 + np.exp(16.0)))  # 1.1e-7, a float16 subnormal
    for n in (1, 5, 4096):
        got = tg.sigmoid(np.full(n, -16, np.float16)).data
        assert got.dtype == np.float16
        assert _ulps(got, np.full(n, want)).max() <= 1, (n, got[0], want)


def test_float16_sigmoid_of_every_float16_is_correctly_rounded_within_one_ulp() -> None:
    every = np.arange(2 ** 16, dtype=np.uint16).view(np.float16)
    every = every[np.isfinite(every)]
    with np.errstate(over="ignore"):  # exp(65504) is inf in float64 too: the reference is 0
        want = (1.0 / (1.0 + np.exp(-every.astype(np.float64)))).astype(np.float16)
    small = np.concatenate([tg.sigmoid(c).data for c in np.array_split(every, 64)])  # clamped
    large = tg.sigmoid(every).data  # errstate
    for got in (small, large):
        assert _ulps(got, want).max() <= 1
    # the fused forms use the same kernel: gates and linear(act="sigmoid")
    x = every[:2048].reshape(2, 1024)
    np.testing.assert_array_equal(tg.gates(x, ("sigmoid",))[0].data, small[:2048].reshape(2, -1))
    eye = np.eye(1024, dtype=np.float16)
    np.testing.assert_array_equal(tg.linear(x, eye, act="sigmoid").data,
                                  small[:2048].reshape(2, -1))


def _bce_reference(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    x, t = x.astype(np.float64), t.astype(np.float64)
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


@pytest.mark.parametrize("target", [1.0, 0.0, 0.3])
def test_float32_bce_with_logits_matches_float64_in_the_tails(target: float) -> None:
    x = np.concatenate([np.linspace(-30, 30, 121), [20.0, -20.0, 1e-4, 0.0]]).astype(np.float32)
    t = np.full_like(x, target)
    xt = tg.Tensor(x, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(xt, t, reduction="none")
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.data, _bce_reference(x, t), rtol=2e-6, atol=0)
    loss.sum().backward()
    x64 = x.astype(np.float64)  # d/dx = sigmoid(x) - t, without cancelling
    grad = (1 - target) / (1 + np.exp(-x64)) - target / (1 + np.exp(x64))
    np.testing.assert_allclose(xt.grad, grad, rtol=2e-6, atol=0)


def test_bce_with_logits_at_20_is_2e_9_not_0() -> None:
    loss = F.binary_cross_entropy_with_logits(np.float32([20.0]), np.float32([1.0]))
    np.testing.assert_allclose(loss.item(), np.log1p(np.exp(-20.0)), rtol=1e-6)


def test_bce_with_logits_gradcheck_with_and_without_pos_weight() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)) * 8
    t = rng.random((3, 4))
    assert gradcheck(lambda v: F.binary_cross_entropy_with_logits(v, t, reduction="none"), [x])
    assert gradcheck(lambda v: F.binary_cross_entropy_with_logits(
        v, t, pos_weight=np.array([0.5, 1.0, 2.0, 3.0]), reduction="none"), [x])


def test_float32_layer_norm_of_huge_values_matches_float64() -> None:
    x = np.array([[1e20, -1e20, 0.0], [1.0, 2.0, 4.0], [3e38, -3e38, 1e38]], np.float32)
    g = np.array([[0.3, -1.2, 0.7], [1.1, 0.2, -0.5], [0.4, 0.9, -0.6]])
    xt = tg.Tensor(x, requires_grad=True)
    y = F.layer_norm(xt, 3)
    y.backward(g.astype(np.float32))
    x64 = tg.Tensor(x.astype(np.float64), requires_grad=True)
    y64 = F.layer_norm(x64, 3)
    y64.backward(g)
    assert y.dtype == np.float32 and np.isfinite(y.data).all()
    np.testing.assert_allclose(y.data, y64.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xt.grad, x64.grad, rtol=1e-4, atol=0)
    np.testing.assert_allclose(y.data[0], [np.sqrt(1.5), -np.sqrt(1.5), 0.0], rtol=1e-6)


def test_layer_norm_scaled_path_is_the_same_function_with_the_right_gradient(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 4)) * np.array([0.1, 3.0, 50.0])[:, None, None]
    w, b = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    plain = F.layer_norm(x, (2, 4), w, b).data
    monkeypatch.setattr(F, "_norm_limit", lambda dtype, n: 0.5)  # scale every row above 0.5
    np.testing.assert_array_equal(F.layer_norm(x, (2, 4), w, b).data, plain)  # powers of two
    assert gradcheck(lambda v, wv, bv: F.layer_norm(v, (2, 4), wv, bv), [x, w, b])


# ============================================================================ 4. split and chunk
@pytest.mark.parametrize("call,error,match", [
    (lambda x: tg.chunk(x, 2.5), TypeError, r"chunk: n .*positive int, got 2\.5 of type float"),
    (lambda x: x.chunk(np.float64(2)), TypeError, r"chunk: n .*positive int.*float64"),
    (lambda x: tg.chunk(x, True), TypeError, r"chunk: n .*positive int.*bool"),
    (lambda x: tg.chunk(x, 0), ValueError, r"chunk: n .*positive int, got 0"),
    (lambda x: tg.chunk(x, -2), ValueError, r"chunk: n .*positive int, got -2"),
    (lambda x: tg.split(x, 2.5), TypeError, r"split: split_size_or_sizes must be a positive int"
                                            r" .* or a list of ints >= 0 .*got 2\.5"),
    (lambda x: tg.split(x, "2"), TypeError, r"split: split_size_or_sizes .*got '2' of type str"),
    (lambda x: tg.split(x, 0), ValueError, r"split: split_size_or_sizes must be a positive int"),
    (lambda x: tg.split(x, -1), ValueError, r"split: .*got -1"),
    (lambda x: x.split([2.5, 2.5]), TypeError, r"split: every entry .* int >= 0, got 2\.5"),
    (lambda x: tg.split(x, [6, -1]), ValueError, r"split: every entry .* int >= 0, got -1"),
])
def test_split_and_chunk_refuse_non_int_sizes_naming_the_argument(
        call: Callable[[tg.Tensor], Any], error: type[Exception], match: str) -> None:
    x = tg.Tensor(np.ones((5, 2)), requires_grad=True)
    with pytest.raises(error, match=match):
        call(x)


def test_numpy_int_sizes_are_fine() -> None:
    x = tg.Tensor(np.ones((5, 2)))
    assert [p.shape for p in tg.split(x, np.array([2, 3]))] == [(2, 2), (3, 2)]
    assert [p.shape for p in tg.chunk(x, np.int64(2))] == [(3, 2), (2, 2)]


# ============================================================================ 5. tied weights
class TiedLM(nn.Module):
    def __init__(self, vocab: int = 5, dim: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)
        self.out.weight = self.emb.weight  # tied input and output embeddings


def test_state_dict_lists_a_tied_tensor_under_every_name() -> None:
    m = TiedLM()
    assert list(m.state_dict()) == ["emb.weight", "out.weight", "out.bias"]
    assert [n for n, _ in m.named_parameters()] == ["emb.weight", "out.bias"]  # once
    assert len(list(m.parameters())) == 2
    sd = m.state_dict()
    assert not np.shares_memory(sd["emb.weight"], sd["out.weight"])


def test_state_dict_names_match_pytorch_for_tied_and_shared_modules() -> None:
    torch = pytest.importorskip("torch")

    class TorchTied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5)
            self.out.weight = self.emb.weight
            self.again = self.out  # a shared module: PyTorch lists it under both names too

    class OurTied(TiedLM):
        def __init__(self) -> None:
            super().__init__()
            self.again = self.out

    theirs = TorchTied()
    ours = OurTied()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_array_equal(ours.out.weight.data, theirs.emb.weight.detach().numpy())


def test_tied_names_with_equal_values_load_and_with_different_values_are_refused() -> None:
    m = TiedLM()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    new = np.arange(15.0, dtype=np.float32).reshape(5, 3)
    good = {"emb.weight": new, "out.weight": new.copy(), "out.bias": np.zeros(5, np.float32)}
    m.load_state_dict(good)
    np.testing.assert_array_equal(m.out.weight.data, new)
    assert m.out.weight is m.emb.weight
    bad = dict(good, **{"out.weight": new + 1, "out.bias": np.ones(5, np.float32)})
    m2 = TiedLM()
    with pytest.raises(ValueError, match=r"'emb.weight' and 'out.weight' name one tied tensor"):
        m2.load_state_dict(bad)
    for k, v in m2.state_dict().items():  # nothing was loaded, not even the bias
        assert not np.array_equal(v, bad[k])
    assert before.keys() == m2.state_dict().keys()


def test_a_missing_tied_name_is_reported_with_its_twin_and_loads_when_not_strict() -> None:
    m = TiedLM()
    sd = {"emb.weight": np.full((5, 3), 2.0, np.float32), "out.bias": np.zeros(5, np.float32)}
    with pytest.raises(ValueError, match=r"missing key 'out.weight' \(the same tensor as "
                                         r"'emb.weight', which is given\)"):
        m.load_state_dict(sd)
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["out.weight"]
    np.testing.assert_array_equal(m.out.weight.data, sd["emb.weight"])


def test_save_and_load_of_a_tied_model_round_trip(tmp_path: Any) -> None:
    m = TiedLM()
    path = str(tmp_path / "tied.npz")
    tg.save(m, path)
    m2 = TiedLM()
    m2.load_state_dict(tg.load(path))
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)
    assert m2.out.weight is m2.emb.weight


# ============================================================================ 6. all or nothing
class Four(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2, dtype=np.float64)
        self.b = nn.Linear(2, 2, dtype=np.float64)


def test_load_state_dict_checks_every_target_is_writable_before_writing() -> None:
    m = Four()
    m.b.bias.data.flags.writeable = False
    before = m.state_dict()
    sd = {k: v + 1.0 for k, v in before.items()}
    with pytest.raises(ValueError, match=r"'b.bias': the model's array is read-only") as ei:
        m.load_state_dict(sd)
    assert "Nothing was loaded" in str(ei.value)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


OPTIMISERS = {
    "SGD": lambda ps: optim.SGD(ps, lr=0.1),
    "SGD-momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    "Adam": lambda ps: optim.Adam(ps, lr=0.1),
    "AdamW": lambda ps: optim.AdamW(ps, lr=0.1),
    "Adam-amsgrad": lambda ps: optim.Adam(ps, lr=0.1, amsgrad=True),
    "Adagrad": lambda ps: optim.Adagrad(ps, lr=0.1),
    "RMSprop": lambda ps: optim.RMSprop(ps, lr=0.1, momentum=0.5, centered=True),
}


def _two_params() -> list[tg.Tensor]:
    ps = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))]
    for p in ps:
        p.grad = np.full(p.shape, 0.5)
    return ps


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_a_step_with_a_read_only_param_changes_nothing(name: str) -> None:
    ps = _two_params()
    opt = OPTIMISERS[name](ps)
    ps[1].data.flags.writeable = False
    with pytest.raises(ValueError, match=r"step: param 1 \(shape \(2,\)\) is read-only"):
        opt.step()
    np.testing.assert_array_equal(ps[0].data, np.ones(3))
    assert not any(opt.state.get(p) for p in ps)  # no state advanced either
    ps[1].data.flags.writeable = True  # once fixed, the same step runs
    opt.step()
    assert not np.array_equal(ps[0].data, np.ones(3))


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_a_step_with_a_misshapen_grad_changes_nothing(name: str) -> None:
    ps = _two_params()
    opt = OPTIMISERS[name](ps)
    opt.step()
    state = {id(p): {k: np.array(v, copy=True) for k, v in opt.state[p].items()} for p in ps}
    data = [p.data.copy() for p in ps]
    ps[1].grad = np.ones(5)
    with pytest.raises(tg.ShapeError, match=r"step: param 1 \(shape \(2,\)\) has a grad of "
                                            r"shape \(5,\); nothing was updated"):
        opt.step()
    for p, d in zip(ps, data):
        np.testing.assert_array_equal(p.data, d)
        for k, v in opt.state[p].items():
            np.testing.assert_array_equal(v, state[id(p)][k], err_msg=k)
