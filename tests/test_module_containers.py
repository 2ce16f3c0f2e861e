"""`nn.Sequential`, `nn.ModuleDict`, `Module.apply` and `Module.register_buffer` (API.md section 6).

The contract is PyTorch's: Sequential names its modules "0", "1", ... (or by an OrderedDict's
keys, which slices keep), buffers are saved and loaded with the parameters but are not parameters,
non-persistent buffers are not saved, and `apply` calls fn on the children before the parent.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.nn import init


class Tanh(nn.Module):
    def forward(self, x):
        return tg.tanh(x)


def _lin(i: int, o: int) -> nn.Linear:
    return nn.Linear(i, o, dtype=np.float64)


def _x(*shape: int) -> tg.Tensor:
    return tg.Tensor(np.random.default_rng(0).standard_normal(shape))


# ----------------------------------------------------------------------------- Sequential
def test_sequential_forward_is_the_chain() -> None:
    l1, act, l2 = _lin(3, 5), Tanh(), _lin(5, 2)
    seq = nn.Sequential(l1, act, l2)
    x = _x(4, 3)
    y = seq(x)
    np.testing.assert_array_equal(y.data, l2(tg.tanh(l1(x))).data)
    # the gradient reaches the layers' own parameters
    y.sum().backward()
    assert l1.weight.grad is not None and l2.bias.grad is not None
    np.testing.assert_allclose(l2.bias.grad, np.full(2, 4.0))
    assert nn.Sequential()(x) is x  # the empty chain is the identity


def test_sequential_indexing_len_iter_and_names() -> None:
    mods = [_lin(3, 4), Tanh(), _lin(4, 4), _lin(4, 2)]
    seq = nn.Sequential(*mods)
    assert len(seq) == 4 and list(seq) == mods
    assert seq[0] is mods[0] and seq[2] is mods[2] and seq[-1] is mods[3] and seq[-4] is mods[0]
    for i in (4, -5):
        with pytest.raises(IndexError, match=f"index {i}"):
            seq[i]
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2", "3"]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias",
                                      "3.weight", "3.bias"]
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and list(tail) == mods[1:]
    # a slice keeps the names (as PyTorch), so its state dict matches the original's keys
    assert list(tail.state_dict()) == ["2.weight", "2.bias", "3.weight", "3.bias"]
    assert list(seq[::2]) == [mods[0], mods[2]]
    assert len(seq[5:]) == 0
    x = _x(2, 3)
    np.testing.assert_array_equal(seq[:2](x).data, tg.tanh(mods[0](x)).data)
    np.testing.assert_array_equal(seq(x).data, seq[2:](seq[:2](x)).data)


def test_sequential_append_and_nesting() -> None:
    inner = nn.Sequential(_lin(2, 3))
    assert inner.append(Tanh()) is inner
    assert inner.append(_lin(3, 1)) is inner
    assert len(inner) == 3 and list(inner.state_dict()) == ["0.weight", "0.bias", "2.weight",
                                                           "2.bias"]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = inner
            self.head = _lin(1, 1)

        def forward(self, x):
            return self.head(self.body(x))

    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight",
        "head.bias"]
    with pytest.raises(TypeError, match="Sequential"):
        inner.append(np.zeros(2))


def test_sequential_from_an_ordered_dict() -> None:
    enc, dec = _lin(3, 2), _lin(2, 3)
    seq = nn.Sequential(OrderedDict([("enc", enc), ("act", Tanh()), ("dec", dec)]))
    assert seq.enc is enc and seq[2] is dec and seq[-1] is dec
    assert list(seq.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    assert list(seq[1:].state_dict()) == ["dec.weight", "dec.bias"]
    x = _x(2, 3)
    np.testing.assert_array_equal(seq(x).data, dec(tg.tanh(enc(x))).data)
    seq.append(Tanh())
    assert [n for n, _ in seq.named_children()] == ["enc", "act", "dec", "3"]


def test_sequential_errors() -> None:
    with pytest.raises(TypeError, match="OrderedDict"):
        nn.Sequential({"a": _lin(2, 2)})  # a plain dict is not a module (as PyTorch)
    with pytest.raises(TypeError, match="entry 1"):
        nn.Sequential(_lin(2, 2), np.tanh)
    with pytest.raises(KeyError, match="forward"):
        nn.Sequential(OrderedDict([("forward", _lin(2, 2))]))  # would shadow the method
    with pytest.raises(KeyError, match=re.escape("'.'")):
        nn.Sequential(OrderedDict([("a.b", _lin(2, 2))]))


# ----------------------------------------------------------------------------- ModuleDict
def test_module_dict_registers_and_behaves_like_a_dict() -> None:
    a, b, c = _lin(2, 3), _lin(3, 2), Tanh()
    d = nn.ModuleDict({"enc": a, "dec": b})
    assert len(d) == 2 and list(d) == ["enc", "dec"]
    assert d["enc"] is a and d.dec is b
    assert "enc" in d and "act" not in d and 0 not in d
    assert d.keys() == ["enc", "dec"] and d.values() == [a, b]
    assert d.items() == [("enc", a), ("dec", b)]
    assert list(d.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    d["act"] = c
    assert list(d) == ["enc", "dec", "act"] and d.act is c
    # replacing keeps the position (as a dict, and as PyTorch)
    a2 = _lin(2, 3)
    d["enc"] = a2
    assert list(d) == ["enc", "dec", "act"] and d["enc"] is a2
    assert dict(d.named_parameters())["enc.weight"] is a2.weight
    del d["enc"]
    assert list(d) == ["dec", "act"] and not hasattr(d, "enc")
    assert not any(n.startswith("enc.") for n in d.state_dict())
    with pytest.raises(KeyError):
        d["enc"]
    with pytest.raises(KeyError):
        del d["enc"]
    assert d.pop("act") is c and list(d) == ["dec"]
    d.clear()
    assert len(d) == 0 and list(d.parameters()) == []


def test_module_dict_update_and_construction_from_pairs() -> None:
    a, b, c = _lin(2, 2), _lin(2, 2), _lin(2, 2)
    d = nn.ModuleDict([("x", a), ("y", b)])
    assert list(d) == ["x", "y"]
    d.update(nn.ModuleDict({"z": c}))
    d.update([("x", b)])
    assert d.items() == [("x", b), ("y", b), ("z", c)]
    # a module held twice is one set of parameters, under its first name
    assert [n for n, _ in d.named_parameters()] == ["x.weight", "x.bias", "z.weight", "z.bias"]
    assert len(nn.ModuleDict()) == 0

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleDict({"a": _lin(3, 1), "b": _lin(3, 2)})

    assert list(Net().state_dict()) == ["heads.a.weight", "heads.a.bias", "heads.b.weight",
                                        "heads.b.bias"]


def test_module_dict_errors() -> None:
    d = nn.ModuleDict()
    with pytest.raises(TypeError, match="ModuleDict.*ndarray"):
        d["w"] = np.zeros(2)
    for bad in ("keys", "forward", "training"):  # would shadow an attribute (as PyTorch)
        with pytest.raises(KeyError, match=bad):
            d[bad] = _lin(2, 2)
    with pytest.raises(KeyError):
        d["a.b"] = _lin(2, 2)
    with pytest.raises(KeyError):
        d[""] = _lin(2, 2)
    with pytest.raises(TypeError):
        d[3] = _lin(2, 2)
    with pytest.raises(ValueError, match="#1"):
        d.update([("a", _lin(2, 2)), ("b",)])
    with pytest.raises(TypeError, match="update"):
        d.update(5)
    assert list(d) == ["a"]  # update adds pairs in order until the bad one (as PyTorch)


# ----------------------------------------------------------------------------- apply
class Tree(nn.Module):
    """root(a(a1, a2), seq(s0, s1), w) with a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(np.ones(2))
        self.a = nn.Module()
        self.a.a1 = _lin(2, 2)
        self.a.a2 = _lin(2, 2)
        self.seq = nn.Sequential(_lin(2, 3), Tanh())


def test_apply_visits_children_before_parents_once_each() -> None:
    t = Tree()
    seen: list[Any] = []
    assert t.apply(seen.append) is t
    expected = [t.a.a1, t.a.a2, t.a, t.seq[0], t.seq[1], t.seq, t]  # post-order, as PyTorch
    assert [id(m) for m in seen] == [id(m) for m in expected]
    # a child registered twice under one parent is visited once (PyTorch's children() dedup)
    t.a.again = t.a.a1
    seen.clear()
    t.apply(seen.append)
    assert len(seen) == len(expected) and len({id(m) for m in seen}) == len(expected)


def test_apply_with_an_initialiser() -> None:
    def init_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            init.ones_(m.weight)
            init.zeros_(m.bias)

    t = Tree()
    weights = [t.a.a1.weight, t.a.a2.weight, t.seq[0].weight]
    t.apply(init_linear)
    assert all(w is v for w, v in zip(weights, [t.a.a1.weight, t.a.a2.weight, t.seq[0].weight]))
    for name, p in t.named_parameters():
        expected = 1.0 if name.endswith("weight") or name == "w" else 0.0
        np.testing.assert_array_equal(p.data, np.full(p.shape, expected), err_msg=name)


# ----------------------------------------------------------------------------- buffers
class Normed(nn.Module):
    """A layer with running statistics: a persistent buffer, a non-persistent one, and None."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.scale = nn.Parameter(np.ones(n))
        self.register_buffer("running_mean", np.zeros(n))
        self.register_buffer("cache", np.full(n, 5.0), persistent=False)
        self.register_buffer("absent", None)
        self.register_buffer("steps", tg.Tensor(np.zeros((), dtype=np.int64)))
        self.lin = _lin(n, n)

    def forward(self, x):
        return self.lin((x - self.running_mean) * self.scale)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", np.array([True, False]))
        self.inner = nn.Sequential(Normed(), Normed())


OUTER_STATE = ["mask",
               "inner.0.scale", "inner.0.running_mean", "inner.0.steps",
               "inner.0.lin.weight", "inner.0.lin.bias",
               "inner.1.scale", "inner.1.running_mean", "inner.1.steps",
               "inner.1.lin.weight", "inner.1.lin.bias"]


def test_buffers_are_state_but_not_parameters() -> None:
    m = Outer()
    # PyTorch's order: a module's parameters, then its persistent buffers, then its submodules
    assert list(m.state_dict()) == OUTER_STATE
    params = [n for n, _ in m.named_parameters()]
    assert params == [k for k in OUTER_STATE if k.endswith(("scale", "weight", "bias"))]
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    assert [n for n, _ in m.named_buffers()] == [
        "mask", "inner.0.running_mean", "inner.0.cache", "inner.0.steps",
        "inner.1.running_mean", "inner.1.cache", "inner.1.steps"]
    assert len(list(m.buffers())) == 7
    n0 = m.inner[0]
    assert isinstance(n0.running_mean, tg.Tensor) and not n0.running_mean.requires_grad
    assert n0.absent is None
    assert m.state_dict()["inner.0.steps"].dtype == np.int64
    assert m.state_dict()["mask"].dtype == bool
    # the buffer takes part in the forward; no gradient reaches it
    x = _x(2, 3)
    n0.running_mean.data[...] = 1.0
    y = n0(x)
    np.testing.assert_allclose(y.data, n0.lin(tg.Tensor(x.data - 1.0)).data)
    y.sum().backward()
    assert n0.running_mean.grad is None and n0.scale.grad is not None


def test_state_dict_copies_buffers_and_register_buffer_copies_arrays() -> None:
    arr = np.zeros(3)
    m = nn.Module()
    m.register_buffer("b", arr)
    assert not np.shares_memory(m.b.data, arr)  # an array is copied into a new Tensor
    t = tg.Tensor(np.ones(2))
    m.register_buffer("t", t)
    assert m.t is t  # a Tensor is kept as is (as PyTorch)
    sd = m.state_dict()
    sd["b"][...] = 9.0
    assert np.all(m.b.data == 0.0)


def test_assigning_to_a_buffer_keeps_it_a_buffer() -> None:
    m = Normed()
    m.running_mean = np.full(3, 2.0)  # an array becomes a Tensor buffer
    assert isinstance(m.running_mean, tg.Tensor)
    np.testing.assert_array_equal(m.state_dict()["running_mean"], np.full(3, 2.0))
    t = tg.Tensor(np.full(3, 4.0))
    m.running_mean = t
    assert m.running_mean is t and dict(m.named_buffers())["running_mean"] is t
    m.cache = np.ones(3)  # stays non-persistent
    assert "cache" not in m.state_dict() and "cache" in dict(m.named_buffers())
    m.running_mean = None  # a None buffer is kept registered but not saved (as PyTorch)
    assert "running_mean" not in m.state_dict()
    m.running_mean = np.zeros(3)
    assert list(m.state_dict()) == ["scale", "running_mean", "steps", "lin.weight", "lin.bias"]
    with pytest.raises(TypeError, match="buffer 'running_mean'"):
        m.running_mean = "zeros"
    # a Parameter or a Module replaces the buffer (as PyTorch)
    m.cache = nn.Parameter(np.ones(3))
    assert "cache" in dict(m.named_parameters()) and "cache" not in dict(m.named_buffers())
    assert "cache" in m.state_dict()
    del m.steps
    assert "steps" not in m.state_dict() and "steps" not in dict(m.named_buffers())


def test_register_buffer_name_clashes_and_bad_values() -> None:
    m = Normed()
    with pytest.raises(KeyError, match="scale"):
        m.register_buffer("scale", np.zeros(3))  # a parameter's name
    with pytest.raises(KeyError, match="lin"):
        m.register_buffer("lin", np.zeros(3))  # a submodule's name
    m.plain = 3
    for name in ("plain", "forward", "training"):
        with pytest.raises(KeyError, match=name):
            m.register_buffer(name, np.zeros(3))
    with pytest.raises(KeyError):
        m.register_buffer("a.b", np.zeros(3))
    with pytest.raises(KeyError):
        m.register_buffer("", np.zeros(3))
    with pytest.raises(TypeError, match="string"):
        m.register_buffer(1, np.zeros(3))
    with pytest.raises(TypeError, match="list"):
        m.register_buffer("new", [1.0, 2.0])
    with pytest.raises(TypeError, match="Parameter"):
        m.register_buffer("new", nn.Parameter(np.ones(2)))
    assert "new" not in dict(m.named_buffers()) and not hasattr(m, "new")
    # re-registering a buffer replaces it, and may change its persistence
    m.register_buffer("cache", np.ones(3))
    assert "cache" in m.state_dict()
    m.register_buffer("running_mean", np.ones(3), persistent=False)
    assert "running_mean" not in m.state_dict()

    class Early(nn.Module):
        def __init__(self) -> None:
            self.register_buffer("b", np.zeros(2))

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Early()


def _snapshot(m: nn.Module) -> dict[str, bytes]:
    return {k: np.asarray(v.data).tobytes() for k, v in
            list(m.named_parameters()) + list(m.named_buffers())}


def test_load_state_dict_restores_buffers() -> None:
    src, dst = Outer(), Outer()
    for b in src.buffers():
        b.data[...] = np.arange(b.size).reshape(b.shape) % 2 + 1
    cache = dst.inner[0].cache
    buf = dst.inner[0].running_mean
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k], v, err_msg=k)
    assert dst.inner[0].running_mean is buf  # loaded in place
    np.testing.assert_array_equal(cache.data, np.full(3, 5.0))  # non-persistent: not loaded
    x = _x(2, 3)
    with tg.no_grad():
        np.testing.assert_array_equal(dst.inner(x).data, src.inner(x).data)


def test_failed_load_leaves_buffers_unchanged() -> None:
    m = Outer()
    before = _snapshot(m)
    good = {k: v + 1 if v.dtype.kind == "f" else v for k, v in Outer().state_dict().items()}
    bad = dict(good)
    bad["inner.1.running_mean"] = np.zeros(4)  # a buffer of the wrong shape
    with pytest.raises(ValueError, match=r"inner\.1\.running_mean.*\(4,\).*\(3,\)"):
        m.load_state_dict(bad)
    assert _snapshot(m) == before
    bad = dict(good)
    bad["inner.0.steps"] = np.zeros((), dtype=np.float64)  # a buffer of the wrong dtype
    with pytest.raises(ValueError, match="inner.0.steps"):
        m.load_state_dict(bad, strict=False)
    assert _snapshot(m) == before
    bad = dict(good)
    del bad["mask"]
    bad["inner.0.cache"] = np.zeros(3)  # non-persistent buffers are not expected
    with pytest.raises(ValueError) as info:
        m.load_state_dict(bad)
    assert re.search(r"missing key 'mask'", str(info.value))
    assert re.search(r"unexpected key 'inner\.0\.cache'", str(info.value))
    assert _snapshot(m) == before
    # non-strict: the missing buffer keeps its value, the rest is loaded
    result = m.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["mask"] and result.unexpected_keys == ["inner.0.cache"]
    np.testing.assert_array_equal(m.inner[0].cache.data, np.full(3, 5.0))
    np.testing.assert_array_equal(m.inner[1].running_mean.data, np.ones(3))


def test_reassigned_parameter_or_module_keeps_its_place() -> None:
    m = Normed()
    m.shift = nn.Parameter(np.zeros(3))
    m.head = _lin(3, 1)
    order = ["scale", "shift", "lin.weight", "lin.bias", "head.weight", "head.bias"]
    assert [n for n, _ in m.named_parameters()] == order
    m.scale = nn.Parameter(np.full(3, 2.0))
    m.lin = _lin(3, 3)
    assert [n for n, _ in m.named_parameters()] == order  # as PyTorch
    np.testing.assert_array_equal(m.state_dict()["scale"], np.full(3, 2.0))


# ----------------------------------------------------------------------------- torch
def test_names_and_apply_order_match_torch() -> None:
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    def build(lib: Any, linear: Any, tanh: Any, buf: Any) -> Any:
        class Block(lib.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("running", buf(3))
                self.register_buffer("scratch", buf(3), persistent=False)
                self.proj = linear(3, 3)
                self.gain = lib.Parameter(buf(3))

        class Net(lib.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("count", buf(1))
                shared = linear(3, 3)
                self.body = lib.Sequential(Block(), tanh(), Block())
                self.heads = lib.ModuleDict({"b": linear(3, 2), "a": shared})
                self.extra = lib.Sequential(OrderedDict([("tied", shared), ("last", Block())]))
                self.scale = lib.Parameter(buf(1))

        return Net()

    ours = build(nn, _lin, Tanh, np.zeros)
    theirs = build(tnn, tnn.Linear, tnn.Tanh, torch.zeros)
    # a shared tensor is in state_dict under each of its names, as in PyTorch
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.body[1:].state_dict()) == list(theirs.body[1:].state_dict())

    def visits(model: Any) -> list[str]:
        names = {id(m): n for n, m in model.named_modules()}
        order: list[str] = []
        model.apply(lambda m: order.append(names[id(m)]))
        return order

    # the shared Linear is under two parents: both visit it (PyTorch's apply does not dedup)
    assert visits(ours) == visits(theirs)
