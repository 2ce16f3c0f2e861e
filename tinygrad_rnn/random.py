"""The library's random number generator: initialisation and dropout draw from it."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Callable

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every random draw of the library (parameter initialisation, dropout masks)."""
    global _rng
    _rng = np.random.default_rng(seed)


# called at each draw in this thread/task (the scan's tracer watches for random ops: scan.py)
_WATCH: ContextVar[Callable[[], None] | None] = ContextVar("tinygrad_rnn_draw", default=None)


def rng() -> np.random.Generator:
    """The current generator (replaced by `manual_seed`, so fetch it at each use)."""
    w = _WATCH.get()
    if w is not None:
        w()
    return _rng


def watch(callback: Callable[[], None] | None) -> Token[Callable[[], None] | None]:
    """Have `callback` called at every draw from this thread until `unwatch(token)`."""
    return _WATCH.set(callback)


def unwatch(token: Token[Callable[[], None] | None]) -> None:
    _WATCH.reset(token)


def get_state() -> dict:
    """A snapshot of the generator's state (checkpointing replays dropout masks with it)."""
    return _rng.bit_generator.state


def set_state(state: dict) -> None:
    _rng.bit_generator.state = state
