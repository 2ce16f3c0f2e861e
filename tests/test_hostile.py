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
