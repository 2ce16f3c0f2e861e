"""Hostile use, kept so it stays fixed: threads, generators, in-place writes behind the tape,
bad files and bad arguments. Each defect found has a test here that failed before its fix."""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def in_threads(fns: list[Callable[[], Any]], switch: float = 1e-6) -> list[BaseException]:
    """Run the callables in threads at once, with frequent switches; the exceptions raised."""
    errors: list[BaseException] = []

    def guard(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(switch)
    try:
        threads = [threading.Thread(target=guard, args=(fn,)) for fn in fns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return errors


# ----------------------------------------------------------------------------- threads
def test_checkpoint_replays_its_dropout_masks_while_another_thread_draws() -> None:
    """A checkpointed segment with dropout, backward 10 times while another thread draws from
    the library's generator nonstop: each gradient is the one of the masks its forward used
    (read off the output: out = mask * 2 x w, so dL/dw = out / w * u)."""
    n = 4000
    x = rng(1).uniform(0.5, 1.5, n)
    w = tg.Tensor(rng(2).uniform(0.5, 1.5, n), requires_grad=True)
    u = rng(3).standard_normal(n)
    stop = threading.Event()
    wrong: list[int] = []

    def drawer() -> None:
        while not stop.is_set():
            F.dropout(tg.Tensor(np.ones(64)), 0.5)

    def segment(a: tg.Tensor) -> tg.Tensor:
        for _ in range(20):  # Python work before the draw: room for the other thread to run
            a = a * 1.0
        return F.dropout(a * w, 0.5, True)

    def trainer() -> None:
        try:
            for k in range(10):
                w.grad = None
                out = tg.checkpoint(segment, tg.Tensor(x))
                (out * tg.Tensor(u)).sum().backward()
                if not np.allclose(w.grad, out.data / w.data * u, rtol=1e-12, atol=0):
                    wrong.append(k)
        finally:
            stop.set()

    assert in_threads([drawer, trainer]) == []
    assert wrong == []


def test_checkpoint_backward_leaves_the_shared_generator_alone() -> None:
    """Replaying a segment's draws does not move the generator other code draws from."""
    tg.manual_seed(4)
    out = tg.checkpoint(lambda a: F.dropout(a, 0.5, True), tg.Tensor(np.ones(50),
                                                                       requires_grad=True))
    before = tg.random.get_state()
    out.sum().backward()
    assert tg.random.get_state() == before


def test_one_no_grad_object_entered_by_two_threads() -> None:
    """`ng = no_grad()` used as `with ng:` in two threads at once: each thread's mode is right
    inside and restored after, with no error (the object keeps a stack per thread)."""
    ng = tg.no_grad()
    seen: list[bool] = []
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:  # enters first and leaves first, while the other is still inside
        with ng:
            a_in.set()
            b_in.wait(5)
            seen.append(tg.is_grad_enabled())
        seen.append(not tg.is_grad_enabled())
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with ng:
            b_in.set()
            a_out.wait(5)
            seen.append(tg.is_grad_enabled())
        seen.append(not tg.is_grad_enabled())

    def busy() -> None:
        for _ in range(300):
            with ng:
                seen.append(tg.is_grad_enabled())
                with ng:
                    seen.append(tg.is_grad_enabled())
            seen.append(not tg.is_grad_enabled())

    assert in_threads([first, second]) == []
    assert in_threads([busy, busy]) == []
    assert len(seen) == 4 + 2 * 300 * 3 and not any(seen)


# ----------------------------------------------------------------------------- generators
def test_no_grad_on_a_generator_function_covers_its_body() -> None:
    """@no_grad() on a generator function: what the body computes records nothing, at each
    resumption; the caller's mode between resumptions is its own; send, throw and the return
    value work as without the decorator."""
    x = tg.Tensor(np.ones(3), requires_grad=True)

    @tg.no_grad()
    def doubles(t: tg.Tensor) -> Iterator[tg.Tensor]:
        got = yield t * 2
        while got is not None:
            got = yield got * 2
        return "done"

    g = doubles(x)
    first = next(g)
    assert not first.requires_grad
    assert tg.is_grad_enabled()  # the caller, between resumptions
    second = g.send(x + 1)
    assert not second.requires_grad and np.array_equal(second.data, [4.0, 4.0, 4.0])
    with pytest.raises(StopIteration) as stop:
        g.send(None)
    assert stop.value.value == "done"

    @tg.no_grad
    def counter() -> Iterator[bool]:
        try:
            while True:
                yield tg.is_grad_enabled()
        except KeyError:
            yield tg.is_grad_enabled()

    c = counter()
    assert next(c) is False
    assert c.throw(KeyError("x")) is False
    c.close()


# ----------------------------------------------------------------------------- errors that say
@pytest.mark.parametrize("call, error, match", [
    (lambda: tg.nn.LSTM(4, 3)(np.zeros((0, 2, 4), np.float32)), tg.errors.ShapeError,
     r"LSTM: the input \(0, 2, 4\) has no time steps"),
    (lambda: tg.nn.GRU(4, 3, batch_first=True)(np.zeros((2, 0, 4), np.float32)),
     tg.errors.ShapeError, "GRU: the input .* has no time steps"),
    (lambda: tg.nn.unroll(lambda x, h: (x, x), np.zeros((0, 2, 3))), tg.errors.ShapeError,
     "unroll: xs has no time steps"),
    (lambda: tg.nn.LSTM(4, 0), ValueError, "LSTM: hidden_size must be an int >= 1, got 0"),
    (lambda: tg.nn.LSTM(4, -3), ValueError, "hidden_size must be an int >= 1, got -3"),
    (lambda: tg.nn.RNNCell(-1, 3), ValueError, "RNNCell: input_size must be an int >= 0"),
    (lambda: tg.nn.GRUCell(4, 2.5), ValueError, "GRUCell: hidden_size must be an int"),
    (lambda: tg.bptt.train_truncated(tg.nn.RNN(2, 3), np.zeros((0, 1, 2), np.float32),
                                     np.zeros((0, 1, 3), np.float32), F.mse_loss,
                                     tg.optim.SGD(tg.nn.RNN(2, 3).parameters(), lr=0.1), k1=2),
     tg.errors.ShapeError, "train_truncated: the sequence has no time steps"),
])
def test_bad_arguments_name_the_call_and_what_is_allowed(call: Callable[[], Any], error: type,
                                                         match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_a_primitive_whose_backward_returns_too_few_gradients_is_an_error() -> None:
    class Half(tg.Primitive):
        name = "half_of_a_sum"

        @staticmethod
        def forward(a, b):
            return a + b, None

        @staticmethod
        def backward(g, saved, needs):
            return (g,)  # one gradient for two inputs

    a = tg.Tensor(np.ones(3), requires_grad=True)
    b = tg.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(tg.errors.GraphError, match="half_of_a_sum: backward returned 1 "
                                                   "gradients for 2 inputs"):
        Half.apply(a, b).sum().backward()


def test_a_checkpointed_function_that_returns_less_on_replay_is_an_error() -> None:
    calls = []

    def fickle(x: tg.Tensor) -> Any:
        calls.append(1)
        return (x * 2.0, x * 3.0) if len(calls) == 1 else (x * 2.0,)

    x = tg.Tensor(np.ones(3), requires_grad=True)
    a, b = tg.checkpoint(fickle, x)
    with pytest.raises(tg.errors.GraphError, match="checkpoint: fn returned 1 tensors when "
                                                   "recomputed for backward but 2"):
        (a + b).sum().backward()


# ----------------------------------------------------------------------------- in-place writes
def _mlp() -> tuple[Any, tg.Tensor]:
    tg.manual_seed(5)
    l1, l2 = tg.nn.Linear(3, 4, dtype=np.float64), tg.nn.Linear(4, 2, dtype=np.float64)
    x = tg.Tensor(rng(6).standard_normal((5, 3)))
    return (l1, l2), (l2(l1(x).tanh()) ** 2).sum()


def test_an_optimizer_step_between_two_backwards_is_refused() -> None:
    """backward(retain_graph=True); opt.step(); backward() would use the new weights with the
    old activations: a GraphError names the operation, the shape and this file's line."""
    (l1, l2), loss = _mlp()
    opt = tg.optim.SGD([*l1.parameters(), *l2.parameters()], lr=0.1)
    loss.backward(retain_graph=True)
    opt.step()
    with pytest.raises(tg.errors.GraphError, match=r"linear: a value of shape \(2, 4\) .* changed "
                                                   r"in place .* recorded at .*test_hostile"):
        loss.backward()


@pytest.mark.parametrize("how", ["detach_data_imul", "data_imul", "init", "load_state_dict"])
def test_a_write_into_a_saved_weight_between_forward_and_backward_is_refused(how: str) -> None:
    (l1, l2), loss = _mlp()
    w = l2.weight
    if how == "detach_data_imul":
        d = w.detach()
        d.data *= 5
    elif how == "data_imul":
        w.data *= 5
    elif how == "init":
        tg.nn.init.zeros_(w)
    else:
        l2.load_state_dict({k: v * 2 for k, v in l2.state_dict().items()})
    with pytest.raises(tg.errors.GraphError, match="changed in place"):
        loss.backward()


def test_assigning_a_new_array_is_not_an_in_place_write() -> None:
    """`w.data = other` leaves the saved array as it was: backward gives the gradient of the
    recorded forward, with no error."""
    (l1, l2), loss = _mlp()
    (l1b, l2b), loss_b = _mlp()
    l2.weight.data = l2.weight.data * 5  # a new array: the record still holds the old one
    loss.backward()
    loss_b.backward()
    assert np.array_equal(l1.weight.grad, l1b.weight.grad)


def test_training_as_usual_raises_nothing() -> None:
    """forward, backward, step, again: every write happens after the backward that needed it."""
    (l1, l2), _ = _mlp()
    opt = tg.optim.Adam([*l1.parameters(), *l2.parameters()], lr=0.01)
    x = tg.Tensor(rng(7).standard_normal((5, 3)))
    for _ in range(5):
        opt.zero_grad()
        (l2(l1(x).tanh()) ** 2).sum().backward()
        opt.step()


@pytest.mark.parametrize("compile", [True, False])
def test_a_weight_changed_under_a_compiled_unroll_is_refused(compile: bool) -> None:
    """The same inside the scan: an LSTM's step saved its weights (and its outputs); a step of
    the optimiser before backward, or `ys.data *= 2`, is a GraphError naming the scan's
    operation and the line that ran the layer."""
    tg.manual_seed(8)
    lstm = tg.nn.LSTM(3, 4, dtype=np.float64, compile=compile)
    x = rng(9).standard_normal((6, 2, 3))
    ys, _ = lstm(x)
    loss = (ys * ys).sum()
    lstm.weight_hh_l0.grad = np.ones_like(lstm.weight_hh_l0.data)
    tg.optim.SGD([lstm.weight_hh_l0], lr=0.1).step()
    match = r"scan \(a compiled unroll; its linear at .*test_hostile" if compile else "linear"
    with pytest.raises(tg.errors.GraphError, match=match):
        loss.backward()
    ys, _ = lstm(x)
    loss = (ys * ys).sum()
    ys.data *= 2
    with pytest.raises(tg.errors.GraphError, match="changed in place"):
        loss.backward()


# ----------------------------------------------------------------------------- silent float64
@pytest.mark.parametrize("call, what", [
    (lambda: tg.nn.LSTM(3, 4)(np.zeros((5, 2, 3))), "input"),
    (lambda: tg.nn.GRU(3, 4)(np.zeros((5, 2, 3), np.float32), np.zeros((1, 2, 4))), "state"),
    (lambda: tg.nn.RNN(3, 4)(tg.Tensor(np.zeros((5, 2, 3)))), "input"),
    (lambda: tg.nn.LSTMCell(3, 4)(np.zeros((2, 3))), "input"),
    (lambda: tg.nn.GRUCell(3, 4)(np.zeros((2, 3), np.float32), tg.Tensor(np.zeros((2, 4)))),
     "state"),
])
def test_float64_into_a_float32_layer_is_refused(call: Callable[[], Any], what: str) -> None:
    """Numpy would promote the whole computation to float64; the layer says so instead."""
    with pytest.raises(tg.errors.DTypeError, match=f"the {what} is float64 but the layer's "
                                                   r"weights are float32; convert it with "
                                                   r"\.astype\(np\.float32\)"):
        call()


def test_a_python_list_takes_the_layers_dtype() -> None:
    ys, h = tg.nn.GRU(2, 3)([[[0.5, -1.0]], [[1.0, 2.0]]])
    assert ys.dtype == np.float32 and h.dtype == np.float32
    assert tg.nn.RNNCell(2, 3)([[0.5, -1.0]]).dtype == np.float32


# ----------------------------------------------------------------------------- failure
class _Flaky(tg.Primitive):
    """Identity whose backward raises while `fail` is set."""

    name = "flaky"
    fail = [True]

    @staticmethod
    def forward(x):
        return x.copy(), None

    @staticmethod
    def backward(g, saved, needs):
        if _Flaky.fail[0]:
            raise RuntimeError("flaky backward")
        return (g,)


def _flaky_loss(w: tg.Tensor) -> tg.Tensor:
    b = _Flaky.apply(w * 3.0).sum()  # recorded first, so replayed after the term below
    return b + (w * 2.0).sum()


def test_a_backward_that_fails_half_way_leaves_the_gradients_as_they_were() -> None:
    """w got 2 from one term before the other term's backward raised: w.grad is what it was
    before the backward (all or nothing), and a retry says the graph was partly freed by a
    backward that failed, naming the error."""
    w = tg.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    w.grad = np.array([10.0, 20.0])
    loss = _flaky_loss(w)
    _Flaky.fail[0] = True
    with pytest.raises(RuntimeError, match="flaky backward"):
        loss.backward()
    assert np.array_equal(w.grad, [10.0, 20.0])
    _Flaky.fail[0] = False
    with pytest.raises(tg.errors.GraphError, match=r"an earlier backward through this graph "
                                                   r"raised RuntimeError \(flaky backward\)"):
        loss.backward()


def test_a_failed_backward_with_retain_graph_can_be_retried() -> None:
    w = tg.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    loss = _flaky_loss(w)
    _Flaky.fail[0] = True
    with pytest.raises(RuntimeError, match="flaky backward"):
        loss.backward(retain_graph=True)
    assert w.grad is None
    _Flaky.fail[0] = False
    loss.backward()
    assert np.array_equal(w.grad, [5.0, 5.0])


def test_assigning_float64_data_to_a_float32_parameter_is_refused() -> None:
    """One float64 parameter would make a float32 model compute in float64; Module.to converts
    the whole model at once."""
    lstm = tg.nn.LSTM(3, 4)
    w = lstm.weight_hh_l0
    with pytest.raises(tg.errors.DTypeError, match=r"assigning float64 data to a float32 "
                                                   r"parameter of shape \(16, 4\).*module\.to"):
        w.data = w.data.astype(np.float64)
    assert w.dtype == np.float32
    w.data = w.data * 2  # same dtype: fine
    assert lstm.double() is lstm
    assert {p.dtype for p in lstm.parameters()} == {np.dtype(np.float64)}
    ys, _ = lstm(np.zeros((2, 1, 3)))
    assert ys.dtype == np.float64
    lstm.float()
    assert {p.dtype for p in lstm.parameters()} == {np.dtype(np.float32)}


def test_integer_input_to_a_recurrence_is_a_dtype_error() -> None:
    """A dtype problem is a DTypeError (it was a ShapeError), naming the call and the dtype."""
    with pytest.raises(tg.errors.DTypeError, match="unroll: expected a float array or Tensor as "
                                                   "input, got dtype int64"):
        tg.nn.unroll(lambda x, h: (x, x), np.zeros((3, 2, 4), dtype=np.int64))
    with pytest.raises(tg.errors.DTypeError, match="LSTM: expected a float array"):
        tg.nn.LSTM(4, 3)(np.zeros((3, 2, 4), dtype=np.int64))
