"""Memory-bounded BPTT: `checkpoint(fn, *args)` keeps no inner graph and recomputes on backward."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import ops, random
from .engine import (
    ANOMALY, GRAD, Node, current_seq, enable_grad, get_mode, run_backward, user_source_line,
)
from .primitive import Primitive, register
from .tensor import Tensor


def _flatten(tree: Any, out: list[Tensor]) -> Any:
    """Tensors of a nested tuple/list into `out`; returns the structure with indices in place."""
    if isinstance(tree, Tensor):
        out.append(tree)
        return len(out) - 1
    if isinstance(tree, (tuple, list)):
        return type(tree)(_flatten(t, out) for t in tree)
    raise TypeError(f"checkpoint: fn must return a Tensor or a nested tuple/list of Tensors, "
                    f"got {type(tree).__name__}")


def _unflatten(spec: Any, leaves: list[Any]) -> Any:
    if isinstance(spec, int):
        return leaves[spec]
    return type(spec)(_unflatten(s, leaves) for s in spec)


@register
class Checkpoint(Primitive):
    """fn(*args) whose inner graph is dropped after the forward; on backward fn is re-run with
    recording (and the same random draws) and that tape is replayed in place. Its outputs are
    the flattened tensors fn returned; its inputs are the Tensor arguments."""

    name = "checkpoint"
    nout = None

    @staticmethod
    def forward(*arrays, fn, call):
        rng_state = random.get_state()
        flat: list[Tensor] = []
        # recorded (into a graph dropped right away) only to learn whether any output needs
        # grad: fn may use parameters that no argument reveals
        spec = _flatten(fn(*call.rebuild(arrays, call.needs)), flat)
        out_needs = any(t._requires_grad for t in flat)
        return tuple(t.data for t in flat), (fn, call, arrays, rng_state, spec, out_needs)

    @staticmethod
    def backward(gs, saved, needs):
        fn, call, arrays, rng_state, _, _ = saved
        leaves = call.rebuild(arrays, needs, originals=True)
        current = random.get_state()
        random.set_state(rng_state)  # dropout inside fn must draw the same masks again
        try:
            since = current_seq()
            with enable_grad():
                args = list(leaves)
                for i, nonleaf, need in zip(call.tensor_pos, call.nonleaf, needs):
                    if nonleaf and need and leaves[i]._node is None:
                        # an identity record, so that this argument's gradient contributions
                        # are summed in record order, exactly as in the run without checkpoint
                        args[i] = leaves[i].reshape(leaves[i].shape)
                flat: list[Tensor] = []
                _flatten(fn(*args), flat)
        finally:
            random.set_state(current)
        run_backward(flat, list(gs), since=since)
        # leaf arguments were replayed as themselves: their gradients are in place already
        return tuple(leaves[i].grad if need and nonleaf else None
                     for i, need, nonleaf in zip(call.tensor_pos, needs, call.nonleaf))


class _Call:
    """Where fn's Tensor arguments go among its other (constant) arguments."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.tensor_pos = tuple(i for i, a in enumerate(args) if isinstance(a, Tensor))
        self.consts = {i: a for i, a in enumerate(args) if not isinstance(a, Tensor)}
        self.n_args = len(args)
        self.needs = tuple(args[i]._requires_grad for i in self.tensor_pos)
        self.nonleaf = tuple(args[i]._node is not None for i in self.tensor_pos)
        # leaf arguments (e.g. parameters passed explicitly) are reused as they are on backward,
        # so that their gradients accumulate exactly as without checkpoint
        self.originals = {i: args[i] for i, nonleaf in zip(self.tensor_pos, self.nonleaf)
                          if not nonleaf and args[i]._requires_grad}

    def rebuild(self, arrays: tuple[np.ndarray, ...], needs: Any,
                originals: bool = False) -> list[Any]:
        """fn's argument list: fresh leaves for the Tensor arguments (or, with `originals`, the
        caller's own leaf tensors where they need grad), the others as given."""
        args: list[Any] = [None] * self.n_args
        for a, need, i in zip(arrays, needs, self.tensor_pos):
            if originals and need and i in self.originals:
                args[i] = self.originals[i]
                continue
            t = Tensor._from_op(a, None)
            t._requires_grad = bool(need)
            args[i] = t
        for i, c in self.consts.items():
            args[i] = c
        return args


def checkpoint(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) without keeping its inner graph; recomputed during backward (same gradients).

    fn returns a Tensor or a nested tuple/list of Tensors. It must be deterministic apart from the
    library's RNG (whose state is replayed); it may use parameters (leaves) freely, but any other
    recorded tensor it needs must be passed as an argument. Memory: only the arguments and
    outputs are kept."""
    call = _Call(args)
    inputs = tuple(args[i] for i in call.tensor_pos)
    outs, saved = Checkpoint.forward(*(t.data for t in inputs), fn=fn, call=call)
    m = get_mode()
    node = Node(Checkpoint, inputs, saved, call.needs, len(outs),
                user_source_line() if m & ANOMALY else None) if m & GRAD and saved[5] else None
    tensors = [Tensor._from_op(o, node) for o in outs]
    for i, t in enumerate(tensors):
        t._idx = i
    return _unflatten(saved[4], tensors)


def checkpointed_unroll(step: Callable[..., Any], xs: Tensor, state: Any, every: int,
                        project: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Any]:
    """`unroll`'s loop in segments of `every` steps, each segment (its input projection
    included) under `checkpoint`: only the states at segment boundaries are kept; a segment's
    inner graph is rebuilt during backward."""
    if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
        raise ValueError(f"unroll: checkpoint_every must be a positive int, got {every!r}")

    def segment(spec: Any, xs_seg: Tensor, *flat_state: Tensor) -> Any:
        s = _unflatten(spec, list(flat_state)) if spec is not None else None
        if project is not None:
            xs_seg = project(xs_seg)
        ys = []
        for x_t in ops.unbind(xs_seg, 0):
            y, s = step(x_t, s)
            ys.append(y)
        return ops.stack(ys, 0), s

    pieces = []
    for xs_seg in ops.split(xs, int(every), axis=0):
        flat: list[Tensor] = []
        spec = _flatten(state, flat) if state is not None else None
        ys_seg, state = checkpoint(segment, spec, xs_seg, *flat)
        pieces.append(ys_seg)
    return ops.concat(pieces, axis=0), state
