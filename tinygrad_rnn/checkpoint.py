"""Memory-bounded BPTT: `checkpoint(fn, *args)` keeps no inner graph and recomputes on backward."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from . import ops, random
from .engine import current_seq, port, run_backward
from .mode import GRAD, enable_grad, get_mode
from .errors import GraphError, ShapeError
from .primitive import TRACER, Primitive, record, register
from .primitives.shape import Stack
from .tensor import Tensor


class _Const:
    """A non-Tensor argument, kept as it is in a flattened structure."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _flatten(tree: Any, out: list[Tensor], constants: bool = False) -> Any:
    """Tensors of a nested tuple/list into `out`; returns the structure with indices in place.
    Anything else is kept as a constant if `constants`, else an error (fn's outputs)."""
    if isinstance(tree, Tensor):
        out.append(tree)
        return len(out) - 1
    if isinstance(tree, (tuple, list)):
        return type(tree)(_flatten(t, out, constants) for t in tree)
    if constants:
        return _Const(tree)
    raise TypeError(f"checkpoint: fn must return a Tensor or a nested tuple/list of Tensors, "
                    f"got {type(tree).__name__}")


def _unflatten(spec: Any, leaves: list[Any]) -> Any:
    if isinstance(spec, int):
        return leaves[spec]
    if isinstance(spec, _Const):
        return spec.value
    return type(spec)(_unflatten(s, leaves) for s in spec)


class _Saved(NamedTuple):
    fn: Callable[..., Any]
    call: _Call
    arrays: tuple[np.ndarray, ...]  # the inputs' data, to rebuild fn's arguments from
    rng_state: Any  # the generator's state when fn first ran: its draws are replayed
    spec: Any  # the structure of fn's outputs
    out_needs: bool  # whether any output requires grad


@register
class Checkpoint(Primitive):
    """fn(*args) whose inner graph is dropped after the forward; on backward fn is re-run with
    recording (and the same random draws) and that tape is replayed in place. Its outputs are
    the flattened tensors fn returned; its inputs are the Tensors among the arguments."""

    name = "checkpoint"
    nout = None
    scan = False  # its forward runs fn: a compiled unroll would not replay it per step
    unsummed = True  # the outputs' terms join the inner records' (see _Collect)

    @staticmethod
    def forward(*arrays: np.ndarray, fn: Callable[..., Any], call: _Call) -> tuple[Any, Any]:
        # fn draws (dropout) from a copy of the generator that only this thread uses, so that
        # draws of other threads meanwhile cannot make the replay's masks differ; afterwards
        # the shared generator moves on past what fn drew, as if fn had drawn from it
        rng_state = random.get_state()
        own = random.generator_at(rng_state)
        flat: list[Tensor] = []
        # recorded (into a graph dropped right away) only to learn whether any output needs
        # grad: fn may use parameters that no argument reveals
        args, _ = call.rebuild(arrays, call.needs)
        with random.drawing_from(own):
            spec = _flatten(fn(*args), flat)
        random.set_state(dict(own.bit_generator.state))
        out_needs = any(t._requires_grad for t in flat)
        return tuple(t.data for t in flat), _Saved(fn, call, arrays, rng_state, spec, out_needs)

    @staticmethod
    def backward(gs: list[Any], saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        fn, call, arrays, rng_state, spec, _ = saved  # a _Saved
        since = current_seq()
        # the same masks again, from the forward's starting state; the shared generator and
        # other threads' draws are left alone
        with enable_grad(), random.drawing_from(random.generator_at(rng_state)):
            args, holders = call.rebuild(arrays, needs, replay=True)
            flat: list[Tensor] = []
            again = _flatten(fn(*args), flat)
        if again != spec:
            raise GraphError(f"checkpoint: fn returned {len(flat)} tensors when recomputed for "
                             f"backward but {len(gs)} when first run (or another structure); "
                             f"it must compute the same thing both times (no Python state "
                             f"that changes between calls)")
        run_backward(flat, list(gs), since=since)
        # leaf arguments were replayed as themselves: their gradients are in place already
        return tuple(h[0] if h else None for h in holders)


class _Collect(Primitive):
    """Identity on a non-leaf argument of a replayed checkpoint: its backward puts the
    argument's gradient contributions, unsummed, into `holder`. Checkpoint passes them on to
    the record that made the argument, to be summed there with the contributions from outside
    the checkpoint in record order, as in the run without checkpoint."""

    name = "checkpoint_argument"
    scan = False  # its backward fills a holder
    unsummed = True

    @staticmethod
    def forward(x: np.ndarray, holder: Any) -> tuple[Any, Any]:
        return x, holder

    @staticmethod
    def backward(g: Any, holder: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        holder.append(g)
        return (None,)



class _Call:
    """fn's arguments: where its Tensors sit (also inside tuples/lists) among constants."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.tensors: list[Tensor] = []
        self.spec = _flatten(args, self.tensors, constants=True)
        self.needs = tuple(t._requires_grad for t in self.tensors)
        self.nonleaf = tuple(t._node is not None for t in self.tensors)
        # leaf arguments (e.g. parameters passed explicitly) are replayed as themselves, so
        # that their gradients accumulate exactly as without checkpoint
        self.originals = {j: t for j, t in enumerate(self.tensors)
                          if t._node is None and t._requires_grad}

    def rebuild(self, arrays: tuple[np.ndarray, ...], needs: Any,
                replay: bool = False) -> tuple[tuple[Any, ...], list[list[Any] | None]]:
        """fn's arguments with fresh leaves for its Tensors, and per argument a holder for its
        gradient (None where none is collected). On `replay`, leaf arguments that need grad are
        the caller's own tensors, and non-leaf ones go through a `_Collect` record."""
        used: list[Any] = []
        holders: list[list[Any] | None] = []
        for j, (a, need) in enumerate(zip(arrays, needs)):
            if replay and need and j in self.originals:
                used.append(self.originals[j])
                holders.append(None)
                continue
            t = Tensor._from_op(a, None)
            t._requires_grad = bool(need)
            holder: list[Any] | None = [] if replay and need and self.nonleaf[j] else None
            used.append(t if holder is None else _Collect.apply(t, holder=holder))
            holders.append(holder)
        return _unflatten(self.spec, used), holders


def checkpoint(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) without keeping its inner graph; recomputed during backward (same gradients).

    Arguments may be Tensors, nested tuples/lists of Tensors, or anything else (passed as is).
    fn returns a Tensor or a nested tuple/list of Tensors. It must be deterministic apart from the
    library's RNG (whose state is replayed); it may use parameters (leaves) freely, but any other
    recorded tensor it needs must be passed as an argument. Memory: only the arguments and
    outputs are kept."""
    tracer = TRACER.get()
    if tracer is not None:  # inside a traced step: the per-op tape must run it (see scan.py)
        tracer.fail("it applies the primitive 'checkpoint', which does not support the scan "
                    "(scan = False)")
    call = _Call(args)
    inputs = tuple(call.tensors)
    outs, saved = Checkpoint.forward(*(t.data for t in inputs), fn=fn, call=call)
    node = record(Checkpoint, inputs, saved, call.needs, None, len(outs)) \
        if get_mode() & GRAD and saved.out_needs else None
    return _unflatten(saved.spec, list(Tensor._from_outputs(outs, node)))


def time_slices(xs: Any) -> Any:
    """The per-step inputs of a projected sequence: xs's slices along axis 0, or, for a tuple of
    (T, ...) tensors (a cell's `project` may return several), tuples of their slices."""
    if isinstance(xs, (tuple, list)):
        return zip(*[ops.unbind(x, 0) for x in xs])
    return ops.unbind(xs, 0)


class _StackedSteps:
    """The steps' outputs y_t stacked along a new axis 0 as they come, recorded as one `stack`
    at the end, as `unroll` does: each y_t is copied into the (T, ...) result at once, so a
    checkpointed segment's outputs are not held twice; the record keeps only their Nodes or
    Ports. (For `unroll` itself, a list and one `stack` measured faster.)"""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.out: np.ndarray | None = None
        self.refs: list[Any] = []
        self.needs: list[bool] = []

    def add(self, y: Any) -> None:
        y = y if isinstance(y, Tensor) else Tensor(y)
        i = len(self.refs)
        if self.out is None:
            self.out = np.empty((self.steps,) + y.data.shape, dtype=y.data.dtype)
        elif y.data.shape != self.out.shape[1:] or y.data.dtype != self.out.dtype:
            raise ShapeError(f"unroll: step {i} returned an output of shape {y.shape} and "
                             f"dtype {y.dtype}, the steps before it {self.out.shape[1:]} and "
                             f"{self.out.dtype}")
        self.out[i] = y.data
        self.refs.append(port(y) if y._requires_grad else _NOT_NEEDED)
        self.needs.append(y._requires_grad)

    def result(self) -> Tensor:
        if self.out is None or len(self.refs) != self.steps:
            raise ShapeError(f"unroll: expected {self.steps} outputs to stack, got "
                             f"{len(self.refs)} (is the time axis empty?)")
        node = record(Stack, self.refs, 0, tuple(self.needs), self.out) \
            if get_mode() & GRAD and any(self.needs) else None
        return Tensor._from_op(self.out, node)


_NOT_NEEDED = Tensor(np.zeros(0))  # a stack input that gets no gradient: its data is not kept


def _check_every(every: Any) -> None:
    if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
        raise ValueError(f"unroll: checkpoint_every must be a positive int, got {every!r}")


def _segments(xs: Any, every: int) -> Any:
    """xs (T, ...) in segments of `every` steps; for a tuple of (T, ...) sequences (the inputs
    and a length mask), tuples of their segments."""
    if isinstance(xs, tuple):
        return zip(*(ops.split(x, int(every), axis=0) for x in xs))
    return ops.split(xs, int(every), axis=0)


def checkpointed_unroll(step: Callable[..., Any], xs: Any, state: Any, every: int,
                        project: Callable[[Any], Any] | None = None) -> tuple[Tensor, Any]:
    """`unroll`'s loop in segments of `every` steps, each segment (its input projection
    included) under `checkpoint`: only the states at segment boundaries are kept; a segment's
    inner graph is rebuilt during backward."""
    _check_every(every)

    def segment(spec: Any, xs_seg: Tensor, *flat_state: Tensor) -> Any:
        s = _unflatten(spec, list(flat_state)) if spec is not None else None
        ys = []
        for x_t in time_slices(project(xs_seg) if project is not None else xs_seg):
            y, s = step(x_t, s)
            ys.append(y)
        return tuple(ys), s

    # The steps' outputs are stacked by one record after the last segment, as `unroll` does: a
    # y_t also carried in the state then gets its gradient contributions in the same order (the
    # next step's, then the stack's), which keeps the gradients identical to the last bit.
    ys = _StackedSteps((xs[0] if isinstance(xs, tuple) else xs).shape[0])
    for xs_seg in _segments(xs, every):
        flat: list[Tensor] = []
        # a non-Tensor part of the state (a numpy h0) is passed on as is, as unroll does
        spec = _flatten(state, flat, constants=True) if state is not None else None
        ys_seg, state = checkpoint(segment, spec, xs_seg, *flat)
        for y in ys_seg:
            ys.add(y)
        ys_seg = y = None  # type: ignore[assignment]  # each step's output is held once: in ys
    return ys.result(), state


def checkpointed_scan(plan: Any, step: Callable[..., Any], xs: Any, state: Any, every: int,
                      project: Callable[[Any], Any] | None = None) -> tuple[Tensor, Any]:
    """A compiled unroll in segments of `every` steps, each segment (its projection and its scan)
    under `checkpoint`; the segments' outputs joined by one record."""
    from . import scan
    _check_every(every)

    def segment(spec: Any, xs_seg: Tensor, *flat_state: Tensor) -> Any:
        s = _unflatten(spec, list(flat_state)) if spec is not None else None
        return scan.execute(plan, step, project(xs_seg) if project is not None else xs_seg, s)

    outs = []
    for xs_seg in _segments(xs, every):
        flat: list[Tensor] = []
        spec = _flatten(state, flat, constants=True) if state is not None else None
        ys_seg, state = checkpoint(segment, spec, xs_seg, *flat)
        outs.append(ys_seg)
    return (ops.concat(outs, 0) if len(outs) > 1 else outs[0]), state
