"""Truncated backpropagation through time, TBPTT(k1, k2) (Williams & Peng 1990; Sutskever 2013).

A model follows the convention `model(x_chunk, state) -> (outputs, state)` (built-in layers,
`nn.Recurrent` of a custom cell, or any user Module). k1 says how often the parameters are updated,
k2 how far back gradients flow.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from . import ops
from .errors import GraphError, ShapeError
from .tensor import Tensor


def _length(a: Any, axis: int, who: str) -> int:
    shape = np.shape(a.data if isinstance(a, Tensor) else a)
    if len(shape) <= axis:
        raise ShapeError(f"{who}: expected a sequence with a time axis {axis}, got shape {shape}")
    return shape[axis]


def _slice(a: Any, start: int, stop: int, axis: int) -> Any:
    """Steps [start, stop) of `a` along its time axis (numpy view, or a Tensor without history
    when `a` needs no grad)."""
    index = (slice(None),) * axis + (slice(start, stop),)
    if isinstance(a, Tensor):
        return a[index] if a.requires_grad else Tensor(a.data[index])
    return np.asarray(a)[index]


def chunks(xs: Any, ys: Any, k: int, batch_first: bool = False) -> Iterator[tuple[Any, Any]]:
    """Aligned (x_chunk, y_chunk) windows of k time steps (the last may be shorter).

    xs (T, B, ...) and ys (T, B, ...) — or (B, T, ...) with batch_first; ys may be None."""
    if int(k) != k or k < 1:
        raise ValueError(f"chunks: k must be a positive int, got {k!r}")
    axis = 1 if batch_first else 0
    T = _length(xs, axis, "chunks")
    if ys is not None and _length(ys, axis, "chunks") != T:
        raise ShapeError(f"chunks: xs and ys differ in length along the time axis {axis}: "
                         f"{np.shape(np.asarray(xs))} vs {np.shape(np.asarray(ys))}")
    for start in range(0, T, int(k)):
        stop = min(start + int(k), T)
        yield _slice(xs, start, stop, axis), (None if ys is None else _slice(ys, start, stop, axis))


def _has_history(state: Any) -> bool:
    if isinstance(state, Tensor):
        return state._node is not None
    if isinstance(state, (tuple, list)):
        return any(_has_history(s) for s in state)
    return False


def train_truncated(model: Callable[..., Any], xs: Any, ys: Any,
                    loss_fn: Callable[[Any, Any], Tensor], optimizer: Any, k1: int,
                    k2: int | None = None, state: Any = None, max_grad_norm: float | None = None,
                    batch_first: bool = False) -> tuple[float, Any]:
    """Train on one long sequence with TBPTT(k1, k2); returns (mean update loss, final state).

    The T steps are consumed k1 at a time: update j covers the new steps [s, e) with
    s = j k1, e = min(s + k1, T), and its window starts k2 - k1 steps earlier, at
    b = max(0, s - (k2 - k1)) (= e - k2 for every full update; a short last update keeps the
    same look-back, so k1 = k2 is exactly "detach every k1 steps"). The model runs over [b, e) from
    the detached state at step b with the *current* parameters, so no gradient ever mixes
    activations computed under older parameters; the loss is `loss_fn(outputs, targets)` of the
    steps new in this update, [s, e) (the last k1 steps, fewer for a short last update); then
    zero_grad, backward, optional `clip_grad_norm_(max_grad_norm)`, `optimizer.step()`. The
    state at the next window's start is taken, detached, from this run.
    k2 = None means k2 = k1 (detach every k1 steps); k1 = k2 = T is full BPTT.
    Cost: about k2 / k1 forward steps (and their backward) per step of data.
    """
    k2 = k1 if k2 is None else k2
    for name, k in (("k1", k1), ("k2", k2)):
        if int(k) != k or k < 1:
            raise ValueError(f"train_truncated: {name} must be a positive int, got {k!r}")
    if k2 < k1:
        raise ValueError(f"train_truncated: k2 ({k2}) must be >= k1 ({k1}): the loss of the k1 "
                         f"new steps needs a window at least that long")
    if _has_history(state):
        raise GraphError("train_truncated: the initial state still carries the recorded history "
                         "of an earlier computation, which a backward here would try to reach "
                         "(and which may already be freed). Pass tg.detach(state) instead.")
    axis = 1 if batch_first else 0
    T = _length(xs, axis, "train_truncated")
    if T == 0:
        raise ShapeError(f"train_truncated: the sequence has no time steps (axis {axis} of xs "
                         f"is empty); there is nothing to train on")
    if _length(ys, axis, "train_truncated") != T:
        raise ShapeError(f"train_truncated: xs and ys differ in length along the time axis "
                         f"{axis}")
    params = getattr(optimizer, "params", None)
    if max_grad_norm is not None and params is None:
        raise TypeError("train_truncated: max_grad_norm needs an optimizer with a .params list")

    losses = []
    start_state, b = state, 0  # detached state at step b
    final = state
    for s in range(0, T, k1):
        e = min(s + k1, T)
        b_next = max(0, e - (k2 - k1)) if e < T else e  # = e' - k2 for a full next update
        # run [b, e) in pieces cut where the loss starts (s) and where the next window starts
        cuts = sorted({b, s, b_next, e})
        outs, st = [], start_state
        for lo, hi in zip(cuts, cuts[1:]):
            out, st = model(_slice(xs, lo, hi, axis), st)
            if lo >= s:
                outs.append(out)
            if hi == b_next:
                next_state = ops.detach(st)
        if b_next == b:  # possible only when the next window starts where this one does
            next_state = start_state
        outputs = outs[0] if len(outs) == 1 else ops.concat(outs, axis=axis)
        loss = loss_fn(outputs, _slice(ys, s, e, axis))
        if not isinstance(loss, Tensor) or loss.size != 1:
            raise ShapeError("train_truncated: loss_fn must return a scalar Tensor, got "
                             f"{type(loss).__name__} {getattr(loss, 'shape', '')}")
        optimizer.zero_grad()
        loss.backward()
        if max_grad_norm is not None:
            from .nn.utils import clip_grad_norm_
            clip_grad_norm_(params, max_grad_norm)  # type: ignore[arg-type]
        optimizer.step()
        losses.append(loss.item())
        start_state, b = next_state, b_next
        final = ops.detach(st)
    return float(np.mean(losses)), final
