"""The module system: registration, naming, train/eval, state dicts, seeding, Parameter.

What is checked is the PyTorch contract of API.md section 2: Parameters and Modules assigned as
attributes (also inside `nn.ModuleList`) are registered, `named_parameters()` gives dotted names
in a fixed order with shared parameters once, and `load_state_dict` is all-or-nothing with one
`ValueError` that lists every problem.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import nn


# ----------------------------------------------------------------------------- a nested model
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(np.ones(3))
        self.lin = nn.Linear(3, 3, dtype=np.float64)
        self.drop = nn.Dropout(0.5)
        self.not_a_param = np.zeros(3)  # plain arrays are not registered

    def forward(self, x):
        return self.drop(self.lin(x) * self.gain)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(np.array([2.0]))
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(3, 2, bias=False, dtype=np.float64)
        self.offset = nn.Parameter(np.zeros(2))  # registered after the submodules

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x) * self.scale + self.offset


NET_NAMES = [
    "scale", "offset",
    "blocks.0.gain", "blocks.0.lin.weight", "blocks.0.lin.bias",
    "blocks.1.gain", "blocks.1.lin.weight", "blocks.1.lin.bias",
    "head.weight",
]


def _snapshot(module: nn.Module) -> dict[str, bytes]:
    return {k: p.data.tobytes() + str(p.data.dtype).encode() + str(p.shape).encode()
            for k, p in module.named_parameters()}


# ----------------------------------------------------------------------------- registration
def test_named_parameters_exact_names_and_order() -> None:
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == NET_NAMES  # own parameters first, then submodules depth first (as PyTorch)
    assert [n for n, _ in Net().named_parameters()] == names  # deterministic
    assert list(net.state_dict()) == NET_NAMES
    params = list(net.parameters())
    assert len(params) == len(NET_NAMES)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert params[3] is net.blocks[0].lin.weight
    assert net.blocks[1].lin.bias is dict(net.named_parameters())["blocks.1.lin.bias"]


def test_modules_and_modulelist_registration() -> None:
    net = Net()
    mods = list(net.modules())
    assert mods[0] is net
    assert net.blocks in mods and net.head in mods
    assert net.blocks[0] in mods and net.blocks[1].lin in mods and net.blocks[1].drop in mods
    assert len(mods) == 1 + 1 + 2 * 3 + 1  # net, list, 2 x (block, lin, drop), head
    assert len(net.blocks) == 2
    assert [type(m) for m in net.blocks] == [Block, Block]
    net.blocks.append(Block())
    assert "blocks.2.lin.weight" in dict(net.named_parameters())
    with pytest.raises(TypeError, match="ModuleList"):
        net.blocks.append(np.zeros(3))


def test_reassigning_an_attribute_unregisters_it() -> None:
    net = Net()
    net.head = None
    assert not any(n.startswith("head.") for n, _ in net.named_parameters())
    net.offset = np.zeros(2)  # a plain array now: no longer a parameter
    assert "offset" not in dict(net.named_parameters())
    del net.scale
    assert "scale" not in dict(net.named_parameters())


def test_shared_parameters_and_modules_appear_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(3, 3, dtype=np.float64)
            self.dec = nn.Linear(3, 3, dtype=np.float64)
            self.dec.weight = self.enc.weight  # tied weights
            self.again = self.enc  # the same module under a second name
            self.p = nn.Parameter(np.ones(2))
            self.q = self.p

    m = Tied()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["p", "enc.weight", "enc.bias", "dec.bias"]
    assert len({id(p) for p in m.parameters()}) == len(names)
    assert len(list(m.modules())) == 3  # Tied, enc, dec (again == enc)
    # the shared weight gets the gradient of both uses, once
    x = tg.Tensor(np.arange(3.0))
    (m.dec(m.enc(x)).sum()).backward()
    w = m.enc.weight.data
    # L = 1^T (W (W x + b) + b_dec): dL/dW = 1 (W x + b)^T + (W^T 1) x^T
    expected = np.outer(np.ones(3), w @ x.data + m.enc.bias.data) + np.outer(w.sum(axis=0), x.data)
    np.testing.assert_allclose(m.enc.weight.grad, expected, rtol=1e-12, atol=1e-12)


def test_zero_grad_sets_grads_to_none() -> None:
    net = Net()
    net.eval()
    net(tg.Tensor(np.ones((2, 3)))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_train_eval_recurse() -> None:
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert not net.blocks[1].drop.training
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())
    # eval() switches dropout off in the submodules: the forward is deterministic
    x = tg.Tensor(np.random.default_rng(0).standard_normal((4, 3)))
    with tg.no_grad():
        np.testing.assert_array_equal(net(x).data, net(x).data)


def test_module_without_super_init_is_reported() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            self.w = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Bad()


# ----------------------------------------------------------------------------- state dicts
def test_state_dict_returns_numpy_copies() -> None:
    net = Net()
    before = _snapshot(net)
    sd = net.state_dict()
    assert all(type(v) is np.ndarray for v in sd.values())
    for k, p in net.named_parameters():
        np.testing.assert_array_equal(sd[k], p.data)
        assert sd[k].dtype == p.dtype and sd[k].shape == p.shape
        assert not np.shares_memory(sd[k], p.data)
        sd[k][...] = 123.0
    assert _snapshot(net) == before


def test_load_state_dict_copies_values() -> None:
    a, b = Net(), Net()
    sd = a.state_dict()
    result = b.load_state_dict(sd)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    for k, p in b.named_parameters():
        np.testing.assert_array_equal(p.data, sd[k])
        assert not np.shares_memory(p.data, sd[k])
    sd["head.weight"][...] = 7.0  # the loaded model does not alias the dict
    assert not np.any(b.head.weight.data == 7.0)
    # the Parameter objects are updated in place (an optimizer holding them sees the new values)
    w = b.head.weight
    b.load_state_dict({k: v + 1.0 for k, v in a.state_dict().items()})
    assert b.head.weight is w
    np.testing.assert_array_equal(w.data, a.head.weight.data + 1.0)
    x = tg.Tensor(np.ones((2, 3)))
    a.eval(), b.eval()
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_reports_every_problem_at_once_and_changes_nothing() -> None:
    net = Net()
    before = _snapshot(net)
    sd = {k: v + 1.0 for k, v in Net().state_dict().items()}
    del sd["scale"]                                    # missing
    del sd["blocks.1.lin.bias"]                        # missing
    sd["blocks.7.gain"] = np.ones(3)                   # unexpected
    sd["extra"] = np.ones(1)                           # unexpected
    sd["head.weight"] = np.zeros((3, 3))               # shape mismatch (2, 3) expected
    sd["blocks.0.gain"] = np.ones(3, dtype=np.float32)  # dtype mismatch
    with pytest.raises(ValueError) as info:
        net.load_state_dict(sd, strict=True)
    msg = str(info.value)
    for key in ("scale", "blocks.1.lin.bias", "blocks.7.gain", "extra", "head.weight",
                "blocks.0.gain"):
        assert key in msg, (key, msg)
    assert re.search(r"missing.*'scale'", msg) and re.search(r"unexpected.*'extra'", msg)
    assert "(3, 3)" in msg and "(2, 3)" in msg
    assert "float32" in msg and "float64" in msg
    # all-or-nothing: the valid entries (e.g. offset, blocks.0.lin.weight) were not loaded either
    assert _snapshot(net) == before


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_load_state_dict_single_mismatch_changes_nothing(bad: str) -> None:
    net = Net()
    before = _snapshot(net)
    sd = {k: v + 1.0 for k, v in net.state_dict().items()}
    if bad == "shape":
        sd["head.weight"] = np.zeros((2, 4))
    else:
        sd["head.weight"] = sd["head.weight"].astype(np.float32)
    for strict in (True, False):  # mismatches are errors even when strict=False (as PyTorch)
        with pytest.raises(ValueError, match="head.weight"):
            net.load_state_dict(sd, strict=strict)
        assert _snapshot(net) == before


def test_load_state_dict_non_strict_ignores_missing_and_unexpected() -> None:
    net = Net()
    other = Net()
    sd = {"head.weight": other.head.weight.data.copy(), "nonsense": np.ones(4)}
    before = net.state_dict()
    result = net.load_state_dict(sd, strict=False)
    assert "nonsense" in result.unexpected_keys
    assert set(result.missing_keys) == set(NET_NAMES) - {"head.weight"}
    np.testing.assert_array_equal(net.head.weight.data, other.head.weight.data)
    for k, v in net.state_dict().items():
        if k != "head.weight":
            np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="nonsense"):
        net.load_state_dict(sd, strict=True)


def test_load_state_dict_accepts_tensors() -> None:
    a, b = Net(), Net()
    b.load_state_dict({k: tg.Tensor(v) for k, v in a.state_dict().items()})
    for (k, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)


def test_lstm_state_dict_round_trip() -> None:
    a = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    b = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    with tg.no_grad():
        (ya, (ha, ca)), (yb, (hb, cb)) = a(x), b(x)
    np.testing.assert_array_equal(ya.data, yb.data)
    np.testing.assert_array_equal(ca.data, cb.data)


# ----------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU, nn.RNN])
def test_manual_seed_makes_initialisation_reproducible(layer) -> None:
    tg.manual_seed(1234)
    a = layer(3, 5, num_layers=2, bidirectional=True)
    tg.manual_seed(1234)
    b = layer(3, 5, num_layers=2, bidirectional=True)
    tg.manual_seed(1235)
    c = layer(3, 5, num_layers=2, bidirectional=True)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb) == list(sc)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        assert not np.array_equal(sa[k], sc[k]), k
    # without re-seeding the next layer differs from the first
    d = layer(3, 5, num_layers=2, bidirectional=True)
    assert not np.array_equal(d.state_dict()["weight_ih_l0"], sb["weight_ih_l0"])


def test_manual_seed_covers_linear_embedding_and_cells() -> None:
    def build():
        return (nn.Linear(4, 3), nn.Embedding(6, 2), nn.LSTMCell(3, 2),
                nn.AdditiveAttention(2, 3, 4))

    tg.manual_seed(7)
    first = [m.state_dict() for m in build()]
    tg.manual_seed(7)
    second = [m.state_dict() for m in build()]
    for s1, s2 in zip(first, second):
        for k in s1:
            np.testing.assert_array_equal(s1[k], s2[k])


def test_manual_seed_makes_dropout_masks_reproducible() -> None:
    x = tg.Tensor(np.ones((50, 40)))
    drop = nn.Dropout(0.5)
    tg.manual_seed(3)
    m1 = drop(x).data
    m2 = drop(x).data  # the next draw differs
    tg.manual_seed(3)
    m3 = drop(x).data
    tg.manual_seed(4)
    m4 = drop(x).data
    np.testing.assert_array_equal(m1, m3)
    assert not np.array_equal(m1, m2)
    assert not np.array_equal(m1, m4)
    tg.manual_seed(3)
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=True).data, m1)


def test_manual_seed_makes_rnn_dropout_between_layers_reproducible() -> None:
    tg.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=3, dropout=0.5, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    with tg.no_grad():
        tg.manual_seed(11)
        y1 = lstm(x)[0].data
        y2 = lstm(x)[0].data
        tg.manual_seed(11)
        y3 = lstm(x)[0].data
        lstm.eval()
        e1, e2 = lstm(x)[0].data, lstm(x)[0].data
    np.testing.assert_array_equal(y1, y3)
    assert not np.array_equal(y1, y2)
    np.testing.assert_array_equal(e1, e2)


# ----------------------------------------------------------------------------- Parameter
def test_parameter_copies_its_data() -> None:
    a = np.arange(6.0).reshape(2, 3)
    p = nn.Parameter(a)
    assert p.requires_grad and p.is_leaf and p.grad is None
    assert not np.shares_memory(p.data, a)
    a[0, 0] = 100.0
    assert p.data[0, 0] == 0.0
    t = tg.Tensor(np.ones(3))
    q = nn.Parameter(t)
    t.data[0] = 5.0
    assert q.data[0] == 1.0
    assert nn.Parameter(np.ones(2, dtype=np.float32)).dtype == np.float32
    assert nn.Parameter(np.ones(2, dtype=np.float64)).dtype == np.float64


def test_parameter_from_python_list_uses_default_dtype() -> None:
    # API.md: "Python numbers and lists become tg.default_dtype (float32)" -- a Parameter is a Tensor
    assert tg.Tensor([1.0, 2.0]).dtype == np.float32
    assert nn.Parameter([1.0, 2.0]).dtype == tg.default_dtype
    assert nn.Parameter([1, 2]).dtype == tg.Tensor([1, 2]).dtype == tg.default_dtype
    assert nn.Parameter([1.0], dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("data", [np.arange(3), np.array([True, False]),
                                  np.arange(3, dtype=np.uint8), tg.Tensor(np.arange(2))])
def test_parameter_refuses_integer_and_bool_data(data) -> None:
    with pytest.raises(TypeError, match="Parameter"):
        nn.Parameter(data)
