"""Weight gradients as products a.T @ b, multiplied late: a leaf gathers the products it gets
and multiplies them in one GEMM per block of rows instead of one small product per time step.

Products arrive latest step first, whether or not the unroll is checkpointed or scanned, and a
block is cut every `BLOCK_ROWS` rows counted from the last step; within a block the rows are
put back in time order. So the GEMMs, hence the gradients, are the same to the last bit however
the replay is split, and the cap bounds the memory the gathered rows take.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .tensor import Tensor


class Product:
    """The term a.T @ b of a gradient, not computed yet: a weight's gradient from one step (a
    (N, p), b (N, q)), or with `steps` from S steps at once (a (S, n, p), b (S, n, q), in time
    order). The value is (p, q); a (1, q) value is a (q,) bias's (a = ones)."""

    __slots__ = ("a", "b", "steps")

    def __init__(self, a: np.ndarray, b: np.ndarray, steps: bool = False) -> None:
        self.a, self.b, self.steps = a, b, steps

    def value(self) -> np.ndarray:
        if self.steps:
            return sum((a.T @ b for a, b in zip(self.a[::-1], self.b[::-1])),
                       np.zeros((self.a.shape[-1], self.b.shape[-1]), self.a.dtype))
        return self.a.T @ self.b


# Each leaf's products, gathered per thread (a checkpoint replays inside a replay) until a
# block is full or the outermost backward ends.
BLOCK_ROWS = 1024


class _Blocks(threading.local):
    pending: dict[int, list[Any]]  # id(leaf) -> [leaf, a parts, b parts, rows]

    def __init__(self) -> None:
        self.pending = {}


_blocks = _Blocks()


def defer(t: Tensor, p: Product) -> None:
    """Add product p to leaf t's .grad: now if that fills a block, else with its block."""
    entry = _blocks.pending.get(id(t))
    if entry is None:
        entry = _blocks.pending[id(t)] = [t, [], [], 0]
    if not p.steps:
        entry[1].append(p.a)
        entry[2].append(p.b)
        entry[3] += p.a.shape[0]
        if entry[3] >= BLOCK_ROWS:
            _flush(entry)
        return
    a, b = p.a, p.b
    # as if the steps came one by one, the last first, with each block's steps as one slice
    hi, n = a.shape[0], max(a.shape[1], 1)
    while hi > 0:
        lo = max(0, hi - max(1, -(-(BLOCK_ROWS - entry[3]) // n)))  # the steps the block lacks
        entry[1].append(a[lo:hi].reshape(-1, a.shape[2]))
        entry[2].append(b[lo:hi].reshape(-1, b.shape[2]))
        entry[3] += (hi - lo) * n
        if entry[3] >= BLOCK_ROWS:
            _flush(entry)
        hi = lo


def _flush(entry: list[Any]) -> None:
    t, aa, bb, _ = entry  # parts in arrival order, the latest steps first: reversed here
    a = aa[0] if len(aa) == 1 else np.concatenate(aa[::-1])
    b = bb[0] if len(bb) == 1 else np.concatenate(bb[::-1])
    g = (a.T @ b).reshape(t.data.shape)  # a bias's (1, q) product is (q,)
    if t.grad is None:
        t.grad = g
    else:
        np.add(t.grad, g, out=t.grad)
    entry[1], entry[2], entry[3] = [], [], 0


def flush() -> None:
    """Add every leaf's products gathered so far (at the end of the outermost backward)."""
    pending, _blocks.pending = _blocks.pending, {}
    for entry in pending.values():
        if entry[3]:
            _flush(entry)


def discard() -> None:
    """Drop the products gathered so far (a backward that failed)."""
    _blocks.pending = {}
