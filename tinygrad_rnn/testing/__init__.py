"""Testing helpers for users and for our own suite: the same tools on both sides.

- `gradcheck(fn, inputs, params=module.parameters())`: tape gradients of the inputs and of a
  module's parameters against float64 central differences.
- `strategies`: hypothesis strategies (arrays, shapes, broadcastable shapes, time-major
  sequences, ...). Loaded on first access, because hypothesis is only a dev dependency
  (`pip install "tinygrad_rnn[dev]"`); importing this package does not need it.

Property-testing your own cell::

    import numpy as np
    import tinygrad_rnn as tg
    from hypothesis import given
    from tinygrad_rnn.testing import gradcheck, strategies

    W = np.random.default_rng(0).normal(size=(7, 4))   # float64 (I + H, H)

    @given(xs=strategies.sequences(T=4, B=2, I=3), h0=strategies.arrays((2, 4)))
    def test_my_cell(xs, h0):
        def run(xs, h, W):
            for t in range(xs.shape[0]):
                h = tg.tanh(tg.concat([xs[t], h], axis=1) @ W)
            return h
        assert gradcheck(run, [xs, h0, W])

(see `gradcheck`'s docstring for a fuller example).
"""

from __future__ import annotations

from typing import Any

from .checks import GradcheckError, gradcheck

__all__ = ["GradcheckError", "gradcheck"]

HYPOTHESIS_MISSING = ('tinygrad_rnn.testing.strategies needs hypothesis, a dev dependency: '
                      'pip install "tinygrad_rnn[dev]" (or pip install hypothesis)')


def __getattr__(name: str) -> Any:
    # `strategies` imports hypothesis, so it is loaded only when asked for
    if name == "strategies":
        import importlib

        return importlib.import_module(f"{__name__}.strategies")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "strategies"])
