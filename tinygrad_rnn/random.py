"""The library's random number generator: initialisation and dropout draw from it."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Callable

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every random draw of the library (parameter initialisation, dropout masks)."""
    global _rng
    _rng = np.random.default_rng(seed)


# called at each draw in this thread/task (the scan's tracer watches for random ops: scan.py)
_WATCH: ContextVar[Callable[[], None] | None] = ContextVar("tinygrad_rnn_draw", default=None)


# a generator of this thread/task's own, used instead of the shared one (see `drawing_from`)
_OWN: ContextVar[np.random.Generator | None] = ContextVar("tinygrad_rnn_own_rng", default=None)


def rng() -> np.random.Generator:
    """The current generator (replaced by `manual_seed`, so fetch it at each use)."""
    w = _WATCH.get()
    if w is not None:
        w()
    return rng_quiet()


def generator_at(state: Any) -> np.random.Generator:
    """A new generator, independent of the shared one, starting from `state` (get_state's)."""
    g = np.random.Generator(type(_rng.bit_generator)())
    g.bit_generator.state = state
    return g


class drawing_from:
    """Within the block, this thread's draws come from `gen`, and the shared generator is
    neither read nor moved (how a checkpointed segment repeats its dropout masks while other
    threads draw)."""

    def __init__(self, gen: np.random.Generator) -> None:
        self.gen = gen

    def __enter__(self) -> np.random.Generator:
        self._token = _OWN.set(self.gen)
        return self.gen

    def __exit__(self, *exc: object) -> None:
        _OWN.reset(self._token)


def watch(callback: Callable[[], None] | None) -> Token[Callable[[], None] | None]:
    """Have `callback` called at every draw from this thread until `unwatch(token)`."""
    return _WATCH.set(callback)


def unwatch(token: Token[Callable[[], None] | None]) -> None:
    _WATCH.reset(token)


def shield() -> Token[np.random.Generator | None]:
    """Open a scope (closed by `unshield(token)`) in which `draw_from_copy` can move this
    thread's draws to a private copy of the generator."""
    return _OWN.set(_OWN.get())


def unshield(token: Token[np.random.Generator | None]) -> None:
    _OWN.reset(token)


def draw_from_copy() -> None:
    """From now until the scope's end, this thread draws from a copy of the current generator,
    which leaves the shared one as it is (for a watcher: the scan's tracer)."""
    if _OWN.get() is None:
        _OWN.set(generator_at(rng_quiet().bit_generator.state))


def get_state() -> Any:
    """A snapshot of the current generator's state (checkpointing replays dropout masks with it)."""
    return rng_quiet().bit_generator.state


def set_state(state: dict) -> None:
    rng_quiet().bit_generator.state = state


def rng_quiet() -> np.random.Generator:
    """The current generator, without telling a watcher (snapshots are not draws)."""
    own = _OWN.get()
    return _rng if own is None else own
