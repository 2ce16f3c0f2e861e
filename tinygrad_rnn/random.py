"""The library's random number generator: initialisation and dropout draw from it."""

from __future__ import annotations

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every random draw of the library (parameter initialisation, dropout masks)."""
    global _rng
    _rng = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    """The current generator (replaced by `manual_seed`, so fetch it at each use)."""
    return _rng


def get_state() -> dict:
    """A snapshot of the generator's state (checkpointing replays dropout masks with it)."""
    return _rng.bit_generator.state


def set_state(state: dict) -> None:
    _rng.bit_generator.state = state
