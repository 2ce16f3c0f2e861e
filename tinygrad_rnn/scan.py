"""Compiled recurrences: a cell's step traced once, the whole unroll run as one record (a scan).

`nn.unroll(compile=True)` calls the cell twice under a tracer: every primitive it applies is
recorded as an instruction (which primitive, which inputs — the step's input slice, a state part,
a tensor the cell closes over, or an earlier instruction's output — which parameters) instead of
as a tape record. If the two steps give the same program (a `Plan`), it is turned into two plain
Python functions, one running the steps forward and one replaying one step's tape backwards for
t = T-1..0, and the whole unroll becomes one `Scan` record on the tape. BPTT is still tape replay:
the tape of one step, replayed T times, with no Tensor or Node per operation.

How a step runs, cheapest first (the scan protocol, declared by each primitive next to its
forward and backward; see `Primitive`):
- `forward_code` / `grad_code`: the forward and the per-step gradient as lines of code, inlined
  into the generated loops; outputs go with `out=` into preallocated (T, ...) buffers (`_Layout`);
- `local(saved)`: the part of the derivative that does not depend on the incoming gradient
  (tanh's 1 - y^2), computed once for all steps on the saved values stacked over time;
- `batches(varying, ndims)`: a weight's gradient is one backward call over all steps (one GEMM
  per block for `linear`), handed to the engine as a product per step, in time order (see
  engine.Product): checkpointed and plain scans then give the same bits;
- otherwise the ordinary forward and backward, called once per step.
An operation on time-invariant values only (a weight's `W.T`) runs once, before the loop.
A primitive with `scan = False` (a side effect, as `checkpoint`) makes the cell run per op.

A cell that cannot be traced safely (it reads a tensor's values, draws random numbers, or its
program differs from step to step) runs on the per-op tape, with one warning per cell class.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import numpy as np

from . import random as _random
from .engine import Grad, as_array, memory_owner, unbroadcast
from .mode import _MODE, ANOMALY, GRAD, TRACE, check_finite
from .errors import AnomalyError, CompileWarning
from .primitive import TRACER, Primitive
from .products import Product
from .tensor import Tensor

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_DATA = Tensor.__dict__["_data"]  # the slot descriptor: _Traced reads its array through it


class Fallback(Exception):
    """The step cannot run as a scan; the message says why."""


class _Traced(Tensor):
    """A tensor inside a traced step: the cell's Python may pass it to primitives, but any read
    of its values (which could steer the Python differently at another step) stops the scan."""

    __slots__ = ()

    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        code = sys._getframe(1).f_code
        if not code.co_filename.startswith(_PKG_DIR):
            _read(f"reads .data (at {code.co_filename}:{sys._getframe(1).f_lineno})")
        return _DATA.__get__(self)

    @data.setter
    def data(self, value: np.ndarray) -> None:
        _read("assigns .data")

    def numpy(self) -> np.ndarray:
        _read("calls .numpy()")
        return _DATA.__get__(self)

    def item(self) -> Any:
        _read("calls .item()")
        return _DATA.__get__(self).item()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        _read("converts it with np.asarray / np.array")
        return np.asarray(_DATA.__get__(self), dtype=dtype)

    def __bool__(self) -> bool:
        _read("uses it as a bool (if/while/and/or)")
        return bool(_DATA.__get__(self))

    def __float__(self) -> float:
        _read("calls float() on it")
        return float(_DATA.__get__(self))

    def __int__(self) -> int:
        _read("calls int() on it")
        return int(_DATA.__get__(self))

    def detach(self) -> Tensor:
        _read("detaches it (a value the scan would freeze at the traced step)")
        return Tensor._from_op(_DATA.__get__(self), None)

    def _compare(self, other: Any, op: Callable[[Any, Any], Any]) -> Tensor:
        _read("compares it (a mask computed from the step's values)")
        other = _DATA.__get__(other) if isinstance(other, _Traced) else getattr(other, "data",
                                                                                 other)
        return Tensor(op(_DATA.__get__(self), other))

    def __eq__(self, o: Any) -> Tensor:  # type: ignore[override]
        return self._compare(o, np.equal)

    def __ne__(self, o: Any) -> Tensor:  # type: ignore[override]
        return self._compare(o, np.not_equal)

    def __lt__(self, o: Any) -> Tensor:
        return self._compare(o, np.less)

    def __le__(self, o: Any) -> Tensor:
        return self._compare(o, np.less_equal)

    def __gt__(self, o: Any) -> Tensor:
        return self._compare(o, np.greater)

    def __ge__(self, o: Any) -> Tensor:
        return self._compare(o, np.greater_equal)

    __hash__ = Tensor.__hash__


def _read(what: str) -> None:
    tracer = TRACER.get()
    if tracer is not None:
        tracer.fail(f"the step {what} of a tensor computed inside it")


def _traced(arr: Any, requires_grad: bool) -> _Traced:
    t = object.__new__(_Traced)
    _DATA.__set__(t, arr if type(arr) is np.ndarray else np.asarray(arr))
    t.grad = None
    t._node = t._ref = None
    t._requires_grad = requires_grad
    return t


# ----------------------------------------------------------------------------- tracing
class _Instr:
    """One primitive application in the traced step; `ins`/`outs` are slot numbers."""

    __slots__ = ("op", "ins", "params", "outs", "multi", "where")

    def __init__(self, op: type[Primitive], ins: tuple[int, ...], params: dict[str, Any],
                 outs: tuple[int, ...], multi: bool, where: str) -> None:
        self.op, self.ins, self.params, self.outs, self.multi = op, ins, params, outs, multi
        self.where = where


class _Tracer:
    """Records the primitives one call of a step applies. Slots: 'x' (the step's input parts),
    's' (state parts), 'c' (tensors from outside the step), 'v' (instruction outputs)."""

    def __init__(self) -> None:
        self.slot_of: dict[int, int] = {}
        self.keep: list[Tensor] = []  # every tensor seen, alive, so that ids stay unique
        self.kinds: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[np.dtype] = []
        self.consts: list[Tensor] = []
        self.const_slots: list[int] = []
        self.instrs: list[_Instr] = []
        self.failure: str | None = None

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def _new_slot(self, t: Tensor, kind: str) -> int:
        s = len(self.kinds)
        arr = _DATA.__get__(t)
        self.slot_of[id(t)] = s
        self.keep.append(t)
        self.kinds.append(kind)
        self.shapes.append(arr.shape)
        self.dtypes.append(arr.dtype)
        return s

    def placeholder(self, arr: np.ndarray, kind: str, requires_grad: bool) -> _Traced:
        t = _traced(arr, requires_grad)
        self._new_slot(t, kind)
        return t

    def slot(self, t: Tensor) -> int:
        s = self.slot_of.get(id(t))
        if s is None:  # a tensor from outside the step (a weight, a constant): an input
            s = self._new_slot(t, "c")
            self.consts.append(t)
            self.const_slots.append(s)
        return s

    def record(self, op: type[Primitive], inputs: tuple[Tensor, ...], params: dict[str, Any],
               out: Any) -> Any:
        if not op.scan:
            self.fail(f"it applies the primitive '{op.name}', which does not support the scan "
                      f"(scan = False)")
        ins = tuple(self.slot(t) for t in inputs)
        needs = any(t._requires_grad for t in inputs)
        multi = op.nout != 1
        outs = [_traced(o, needs) for o in out] if multi else [_traced(out, needs)]
        slots = tuple(self._new_slot(t, "v") for t in outs)
        self.instrs.append(_Instr(op, ins, dict(params), slots, multi, _cell_line()))
        return tuple(outs) if multi else outs[0]


def _cell_line() -> str:
    """'file:line in function' of the innermost caller outside this package (the cell's line)."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back  # type: ignore[assignment]
    if f is None:
        return "<unknown>"
    return f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"


def _flatten(tree: Any, out: list[Any]) -> Any:
    """The Tensors of a nested tuple/list into `out`; the structure with indices in their place
    (None stays None)."""
    if isinstance(tree, Tensor):
        out.append(tree)
        return len(out) - 1
    if isinstance(tree, (tuple, list)):
        return (type(tree), tuple(_flatten(t, out) for t in tree))
    if tree is None:
        return None
    if isinstance(tree, np.ndarray):  # a numpy state part: a constant
        out.append(Tensor(tree))
        return len(out) - 1
    raise Fallback(f"the state holds a {type(tree).__name__}, not only Tensors")


def _unflatten(spec: Any, leaves: list[Any]) -> Any:
    if spec is None:
        return None
    if isinstance(spec, int):
        return leaves[spec]
    kind, items = spec
    return kind(_unflatten(s, leaves) for s in items)


def _same(a: Any, b: Any) -> bool:
    """Equal parameters or constants, also for arrays and nested sequences."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:
        return False


class _Trace:
    """What one traced call of the step gave: its program and the next state's values."""

    def __init__(self, tracer: _Tracer, nx: int, ns: int, state_spec: Any, y: int,
                 new_spec: Any, new_slots: tuple[int, ...], new_state: Any) -> None:
        self.t, self.nx, self.ns = tracer, nx, ns
        self.state_spec, self.y, self.new_spec, self.new_slots = state_spec, y, new_spec, new_slots
        self.new_state = new_state

    def differs_from(self, other: _Trace) -> str | None:
        """Why the two traced steps are not the same program, or None."""
        a, b = self.t, other.t
        if len(a.instrs) != len(b.instrs):
            return f"the traced steps apply {len(a.instrs)} and {len(b.instrs)} primitives"
        for k, (p, q) in enumerate(zip(a.instrs, b.instrs)):
            if p.op is not q.op or p.ins != q.ins or p.outs != q.outs:
                return (f"operation {k} of the step is '{p.op.name}' on slots {p.ins} in one "
                        f"traced step and '{q.op.name}' on slots {q.ins} in the next")
            if p.params.keys() != q.params.keys() or not all(
                    _same(p.params[n], q.params[n]) for n in p.params):
                return f"'{p.op.name}' (operation {k}) gets other parameters at the next step"
        if a.kinds != b.kinds or a.shapes != b.shapes or a.dtypes != b.dtypes:
            for s, (ka, kb, sa, sb, da, db) in enumerate(zip(a.kinds, b.kinds, a.shapes,
                                                           b.shapes, a.dtypes, b.dtypes)):
                if (ka, sa, da) != (kb, sb, db):
                    return (f"a value of the step has shape {sa} and dtype {da} in one traced "
                            f"step and shape {sb} and dtype {db} in the next")
            return "the traced steps use different numbers of values"
        for ca, cb in zip(a.consts, b.consts):
            if ca is cb:
                continue
            if ca._requires_grad or cb._requires_grad or not _same(ca.data, cb.data):
                return ("a tensor the step uses comes from outside the recorded operations and "
                        "changes from one step to the next (made from values read inside the "
                        "step, or by a random draw)")
        if (self.y, self.new_spec, self.new_slots) != (other.y, other.new_spec, other.new_slots):
            return "the traced steps return differently built outputs or states"
        return None


def trace_step(step: Callable[..., Any], x_parts: list[np.ndarray], x_needs: list[bool],
               tuple_x: bool, state: Any) -> _Trace:
    """Call `step` once under a tracer on the given input slices and state."""
    tracer = _Tracer()
    xs = [tracer.placeholder(a, "x", r) for a, r in zip(x_parts, x_needs)]
    flat: list[Tensor] = []
    spec = _flatten(state, flat)
    leaves = [tracer.placeholder(t.data, "s", t._requires_grad) for t in flat]
    token_t, token_m = TRACER.set(tracer), _MODE.set((_MODE.get() & ~GRAD) | TRACE)
    def drew() -> None:  # the draws of a traced step must not move the real generator
        tracer.fail("it draws random numbers (dropout?), which must differ from step to step")
        _random.draw_from_copy()

    shield, watch = _random.shield(), _random.watch(drew)
    try:
        y, new_state = step(tuple(xs) if tuple_x else xs[0], _unflatten(spec, leaves))
    finally:
        _random.unwatch(watch)
        _random.unshield(shield)
        _MODE.reset(token_m)
        TRACER.reset(token_t)
    if tracer.failure is not None:
        raise Fallback(tracer.failure)
    if not isinstance(y, Tensor):
        raise Fallback(f"the step returns an output of type {type(y).__name__}, not a Tensor")
    new_flat: list[Tensor] = []
    new_spec = _flatten(new_state, new_flat)
    slots = tuple(tracer.slot(t) for t in new_flat)
    y_slot = tracer.slot(y)
    return _Trace(tracer, len(xs), len(leaves), spec, y_slot, new_spec, slots,
                  _unflatten(new_spec, [_DATA.__get__(t) for t in new_flat]))


def _freeze(v: Any) -> Any:
    """A hashable stand-in for a parameter: what generated code may depend on (arrays: their
    shape and dtype only; the code reads their values at run time)."""
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype.str)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_freeze(x) for x in v))
    try:
        hash(v)
    except TypeError:
        return ("id", id(v))
    return (type(v).__name__, v)


class Plan:
    """A verified step program, ready to run as a scan over any number of steps."""

    def __init__(self, tr: _Trace, tuple_x: bool) -> None:
        self.trace = tr
        t = tr.t
        self.instrs, self.shapes, self.dtypes = t.instrs, t.shapes, t.dtypes
        # an operation on time-invariant values only (W.T) runs once, before the loop: its
        # output is an 'h' slot, as invariant as the tensors the step closes over ('c')
        self.kinds = list(t.kinds)
        self.hoisted = [False] * len(self.instrs)
        for i, ins in enumerate(self.instrs):
            if not ins.multi and ins.op.scan and all(self.kinds[s] in "ch" for s in ins.ins):
                self.hoisted[i] = True
                self.kinds[ins.outs[0]] = "h"
        self.consts, self.const_slots = t.consts, t.const_slots
        self.nx, self.ns, self.y, self.tuple_x = tr.nx, tr.ns, tr.y, tuple_x
        self.spec, self.new_slots = tr.new_spec, tr.new_slots
        self.x_slots = tuple(range(self.nx))
        self.s_slots = tuple(range(self.nx, self.nx + self.ns))
        self.state_sig = [(self.shapes[s], self.dtypes[s]) for s in self.s_slots]
        self._layout: _Layout | None = None
        self._lean: _Layout | None = None
        self.const_index = {s: k for k, s in enumerate(self.const_slots)}
        self.F = [ins.op.forward for ins in self.instrs]
        self.P = [ins.params for ins in self.instrs]
        self.key = (tuple((ins.op, ins.ins, ins.outs, ins.multi, _freeze(ins.params))
                          for ins in self.instrs),
                    self.nx, self.ns, self.y, self.new_slots, tuple(self.const_slots),
                    tuple(self.kinds), tuple(self.shapes), tuple(self.dtypes))
        self._batch = [not ins.multi and ins.op.batches(
            tuple(self.kinds[s] not in "ch" for s in ins.ins),
            tuple(len(self.shapes[s]) for s in ins.ins)) for ins in self.instrs]

    @property
    def layout(self) -> _Layout:
        if self._layout is None:
            self._layout = _Layout(self)
        return self._layout

    @property
    def lean_layout(self) -> _Layout:
        """The layout of a forward whose gradient will not be asked for (see _Layout)."""
        if self._lean is None:
            self._lean = _Layout(self, keep=False)
        return self._lean

    def layout_for(self, keep: bool) -> _Layout:
        """`layout` when what the steps save is kept (for a backward, or anomaly mode's
        per-step records), else `lean_layout`."""
        return self.layout if keep else self.lean_layout

    def batchable(self, i: int) -> bool:
        """Whether instruction i's weight gradients are computed once over all steps."""
        return self._batch[i]

    def forward_code(self, keep: bool, anomaly: bool) -> Callable[..., Any]:
        keep = keep or anomaly  # anomaly mode keeps every step's record
        return _cached(("f", self.key, keep, anomaly), lambda: _gen_forward(self, keep, anomaly))

    def backward_code(self, needs: tuple[bool, ...], has_y_grad: bool) -> _Backward:
        return _cached(("b", self.key, needs, has_y_grad),
                       lambda: _Backward(self, needs, has_y_grad))

    def fits(self, state: Any) -> bool:
        """Whether `state` has the structure, shapes and dtypes the program was traced with."""
        flat: list[Any] = []
        try:
            spec = _flatten(state, flat)
        except Fallback:
            return False
        if spec != self.spec:
            return False
        return all(np.shape(getattr(t, "data", t)) == s and np.asarray(getattr(t, "data", t))
                   .dtype == d for t, (s, d) in zip(flat, self.state_sig))


def make_plan(step: Callable[..., Any], x_first: list[np.ndarray], x_needs: list[bool],
              tuple_x: bool, state: Any, previous: Plan | None = None) -> tuple[Plan, bool]:
    """Trace the step on the first two (or three) input slices. Returns the plan and whether the
    first step must run on the per-op tape (its program differs, e.g. a None initial state).
    A `previous` plan of the same cell is reused if the first traced step gives its program."""
    steps = x_first[0].shape[0]
    t0 = trace_step(step, [x[0] for x in x_first], x_needs, tuple_x, state)
    if previous is not None and previous.trace.differs_from(t0) is None and \
            t0.state_spec == t0.new_spec and previous.tuple_x == tuple_x:
        return previous, False  # the program verified at an earlier call, traced again
    t1 = trace_step(step, [x[1] for x in x_first], x_needs, tuple_x, t0.new_state)
    why = t0.differs_from(t1)
    if why is None and t0.state_spec == t0.new_spec:
        return Plan(t0, tuple_x), False
    if steps < 3:
        raise Fallback(why or "the state the step returns is built unlike the one it gets")
    t2 = trace_step(step, [x[2] for x in x_first], x_needs, tuple_x, t1.new_state)
    why2 = t1.differs_from(t2)
    if why2 is not None or t1.state_spec != t1.new_spec:
        raise Fallback(why2 or why or "the state the step returns is built unlike the one it gets")
    return Plan(t1, tuple_x), True


# ----------------------------------------------------------------------------- code generation
def _fit(g: Any, shape: tuple[int, ...], dtype: np.dtype, name: str) -> Any:
    """A per-step gradient brought to its slot's shape and dtype (the engine's un-broadcasting)."""
    if g is None:
        return None
    if type(g) is Grad:
        return Grad(as_array(x, shape, dtype, name) for x in g).total()
    return as_array(np.asarray(g), shape, dtype, name)


def _acc(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


_CODE: dict[Any, Any] = {}  # generated functions by program structure: unrolls repeat


def _cached(key: Any, make: Callable[[], Any]) -> Any:
    fn = _CODE.get(key)
    if fn is None:
        if len(_CODE) > 512:
            _CODE.clear()
        fn = _CODE[key] = make()
    return fn


class _Layout:
    """Where a plan's values live over time. An operation whose forward is inlined as code
    writes its output into row t of a (T, ...) buffer; a state part that such an operation
    computes gets a (T + 1, ...) buffer whose row 0 is the initial state (as hand-written BPTT
    keeps h_all). Stacking what the steps saved is then a view of these buffers, not a copy.

    Without `keep` (no gradient will be asked for) only the outputs and the state are kept: the
    other operations write into scratch arrays, and a state part that is not the output lives in
    two rows used in turn, so evaluation holds O(1) steps of intermediates instead of O(T)."""

    def __init__(self, p: Plan, keep: bool = True) -> None:
        self.tmpl: list[Any] = []
        for i, ins in enumerate(p.instrs):
            tmpl = None
            if not p.hoisted[i] and len({p.dtypes[s] for s in ins.ins + ins.outs}) == 1 and \
                    p.dtypes[ins.outs[0]].kind == "f":
                tmpl = ins.op.forward_code(ins.params, tuple(p.shapes[s] for s in ins.ins),
                                           p.shapes[ins.outs[0]])
            self.tmpl.append(tmpl)
        # An output nothing keeps (not saved, not returned, not aliased) needs no history: its
        # operation writes into one scratch array, reused at every step
        kept_slot = set(p.new_slots) | {p.y}
        for ins, tmpl in zip(p.instrs, self.tmpl) if keep else ():
            if tmpl is None:
                kept_slot.update(ins.ins)  # its forward may save any input
            else:
                kept_slot.update(ins.ins[int(r[1:])] for r in _refs(tmpl[2]) if r[0] == "a")
        viewed: set[int] = set()  # slots that a kept slot is a view of
        changed = True
        while changed:  # an output that views an input (a chunk of split) keeps the input
            changed = False
            for ins, tmpl in zip(p.instrs, self.tmpl):
                for k, r in (tmpl[4] if tmpl is not None else ()):
                    s = ins.ins[int(r[1:])]
                    if ins.outs[k] in kept_slot and s not in viewed:
                        kept_slot.add(s)
                        viewed.add(s)
                        changed = True
        # the per-step inputs the backward reads (the others are not held after the forward)
        self.x_kept = tuple(s in kept_slot for s in p.x_slots)
        self.kept = [t is not None and t[3] is not None and (
            ("y" in _refs(t[2]) and keep) or any(o in kept_slot for o in ins.outs))
            for ins, t in zip(p.instrs, self.tmpl)]
        self.producer = {}  # slot -> the inlined single-output operation that keeps it over time
        for i, (ins, tmpl) in enumerate(zip(p.instrs, self.tmpl)):
            if tmpl is not None and not ins.multi and self.kept[i]:
                self.producer[ins.outs[0]] = i
        self.offset = [0] * len(p.instrs)  # 1: a state buffer, row t + 1 written at step t
        self.state_buf: dict[int, int] = {}  # state part -> its operation's buffer
        for j, s in enumerate(p.new_slots):
            k = self.producer.get(s)
            if k is not None and p.new_slots.count(s) == 1 and self.offset[k] == 0:
                self.offset[k] = 1
                self.state_buf[j] = k
        self.y_buf = self.producer.get(p.y)
        # Without keep a state part's history is not needed: two rows used in turn will do
        # (row (t + 1) % 2 written at step t), unless a kept value is a view of it, or a part
        # of the next state is (a view of) a part of this one (a swap: c' = h), which would
        # still hold row t % 2 when step t + 1 writes it
        carried = {s for s in kept_slot if p.kinds[s] == "s"}
        self.ring = set() if keep or carried else {
            i for i in self.state_buf.values()
            if i != self.y_buf and p.instrs[i].outs[0] not in viewed}
        # Where every part of what an operation saves is a buffer row, a time-invariant value
        # or a constant, nothing is kept per step: the backward reads the rows (`rows_of`)
        self.ref_kinds = [[self._ref_kind(p, i, r) for r in _ref_list(t[2])] if t else []
                          for i, t in enumerate(self.tmpl)]
        self.resolved = [t is not None and None not in k
                         for t, k in zip(self.tmpl, self.ref_kinds)]

    def _ref_kind(self, p: Plan, i: int, ref: Any) -> str | None:
        """'rows' (a buffer row per step), 'const' (the same every step) or None (neither)."""
        if ref is None:
            return "const"
        if ref == "y":
            return "rows" if self.kept[i] else None
        if ref[0] == "a":
            s = p.instrs[i].ins[int(ref[1:])]
            kind = p.kinds[s]
            if kind in "ch":
                return "const"
            if kind == "x" or (kind == "s" and p.s_slots.index(s) in self.state_buf) or \
                    (kind == "v" and s in self.producer):
                return "rows"
        return None  # "step": a value computed at each step (lerp's b - a)

    def rows_of(self, p: Plan, bufs: list[Any], X: Any, C: Any, H: Any, i: int,
                last: Any) -> list[Any]:
        """For a resolved operation: per part of what it saved, its rows (T, ...) or its value."""
        ins, out = p.instrs[i], []
        consts = dict(zip(p.const_slots, C))
        consts.update(zip([q.outs[0] for k, q in enumerate(p.instrs) if p.hoisted[k]], H))
        refs = self.tmpl[i][2]
        for k, ref in enumerate(_ref_list(refs)):
            if ref is None:
                out.append(last[k] if isinstance(refs, tuple) else last)
            elif ref == "y":
                out.append(self.rows(bufs, i))
            else:
                s = ins.ins[int(ref[1:])]
                out.append(consts[s] if p.kinds[s] in "ch" else self.slot_rows(p, bufs, X, s))
        return out

    def buffers(self, p: Plan, T: int, S: Any) -> list[Any]:
        bufs: list[Any] = []
        for i, tmpl in enumerate(self.tmpl):
            if tmpl is None or tmpl[3] is None:  # called, or its outputs are views (split)
                bufs.append(None)
                continue
            rows = (2,) if i in self.ring else (T + self.offset[i],) if self.kept[i] else ()
            bufs.append(np.empty(rows + tmpl[3], p.dtypes[p.instrs[i].outs[0]]))
        for j, i in self.state_buf.items():
            bufs[i][0] = S[j]
        return bufs

    def rows(self, bufs: list[Any], i: int) -> np.ndarray:
        """Operation i's outputs of all steps, (T, ...)."""
        return bufs[i][self.offset[i]:]

    def slot_rows(self, p: Plan, bufs: list[Any], X: Any, s: int) -> np.ndarray | None:
        """The values slot s took at every step, (T, ...), if they are kept together."""
        kind = p.kinds[s]
        if kind == "x":
            return X[p.x_slots.index(s)]
        if kind == "s":
            i = self.state_buf.get(p.s_slots.index(s))
            return None if i is None else bufs[i][:-1]
        i = self.producer.get(s)
        return None if i is None or kind != "v" else self.rows(bufs, i)


def _transposed(name: str) -> str:
    """The pattern of `name.T` in a template's code: a matrix it multiplies by transposed."""
    return rf"\b{re.escape(name)}\.T\b"


def _refs(saved: Any) -> list[str]:
    """The names in a forward_code's `saved` description."""
    return [r for r in _ref_list(saved) if isinstance(r, str)]


def _ref_list(saved: Any) -> list[Any]:
    """A forward_code's `saved` description as a list, one entry per part saved."""
    return list(saved) if isinstance(saved, tuple) else [saved]


class _SavedRows:
    """What a resolved operation saved at step t, rebuilt from its rows (for a backward that is
    called rather than inlined)."""

    def __init__(self, parts: list[Any], kinds: list[str], single: bool) -> None:
        self.parts, self.kinds, self.single = parts, kinds, single

    def __getitem__(self, t: int) -> Any:
        vals = [p[t] if k == "rows" else p for p, k in zip(self.parts, self.kinds)]
        return vals[0] if self.single else tuple(vals)


# The generated code is plain Python over local variables: v<slot> for values, g<slot> for their
# gradients, K<i> for what instruction i saved at each step. `fn.source` holds the text.
def _gen_forward(p: Plan, keep: bool, anomaly: bool) -> Callable[..., Any]:
    lay = p.layout_for(keep)
    L = ["def forward(T, X, S, C, F, P, Y, K, OUT, H, check):"]
    for i, s in enumerate(p.x_slots):
        L.append(f"    X{s} = X[{i}]")
    for i, s in enumerate(p.s_slots):
        L.append(f"    v{s} = S[{i}]")
    for k, s in enumerate(p.const_slots):
        L.append(f"    v{s} = C[{k}]")
    inline = [t is not None and not anomaly for t in lay.tmpl]
    for i, ins in enumerate(p.instrs):
        if inline[i]:
            L.append(f"    OUT{i} = OUT[{i}]")
        else:
            L.append(f"    f{i} = F[{i}]")
            if ins.params:
                L.append(f"    p{i} = P[{i}]")
        if keep:
            L.append(f"    K{i} = K[{i}]")
    for i, ins in enumerate(p.instrs):
        if p.hoisted[i]:  # once, before the loop; what it saved is kept once too
            args = ", ".join(f"v{s}" for s in ins.ins) + (f", **p{i}" if ins.params else "")
            o = ins.outs[0]
            L.append(f"    v{o}, k{i} = f{i}({args})")
            if not p.shapes[o]:
                L.append(f"    v{o} = asarray(v{o})")
            if keep:
                L.append(f"    K[{i}] = k{i}")
            if anomaly:
                L.append(f"    check({i}, -1, [v{o}])")
    # OpenBLAS multiplies a few rows by a transposed matrix up to twice as slowly as by a
    # contiguous one (16 x 384 @ (1536 x 384).T: 468 us against 249 us on 2 threads), so a
    # matrix that is the same at every step and that a template multiplies by as `a<j>.T`
    # (linear's weight) is transposed into a contiguous copy once, before the loop
    flipped = {(i, j): s for i, ins in enumerate(p.instrs) if inline[i] and not p.hoisted[i]
               for j, s in enumerate(ins.ins) if p.kinds[s] in "ch" and len(p.shapes[s]) == 2
               and any(re.search(_transposed(f"a{j}"), ln) for ln in lay.tmpl[i][0])}
    for s in sorted(set(flipped.values())):
        L.append(f"    v{s}T = np.ascontiguousarray(v{s}.T)")
    last: list[int] = []  # resolved operations: the last step's saved, for its constants
    hoisted = [f"v{ins.outs[0]}" for i, ins in enumerate(p.instrs) if p.hoisted[i]]
    L.append(f"    H[:] = [{', '.join(hoisted)}]")
    L.append("    for t in range(T):")
    for s in p.x_slots:
        L.append(f"        v{s} = X{s}[t]")
    env: dict[str, Any] = {"asarray": np.asarray, "np": np}
    for i, ins in enumerate(p.instrs):
        if p.hoisted[i]:
            continue
        if inline[i]:  # the forward inline, into row t of its buffer (Primitive.forward_code)
            lines, names = lay.tmpl[i][:2]
            for j, s in enumerate(ins.ins):
                L.append(f"        a{j} = v{s}")
            if lay.tmpl[i][3] is not None:
                L.append(f"        y = OUT{i}[(t + 1) % 2]" if i in lay.ring else
                         f"        y = OUT{i}[t + 1]" if lay.offset[i] else
                         f"        y = OUT{i}[t]" if lay.kept[i] else f"        y = OUT{i}")
            for name, value in names.items():
                env[f"{name}_{i}"] = value
                lines = [re.sub(rf"\b{name}\b", f"{name}_{i}", ln) for ln in lines]
            for j, s in enumerate(ins.ins):
                if (i, j) in flipped:
                    lines = [re.sub(_transposed(f"a{j}"), f"v{s}T", ln) for ln in lines]
            L.extend(f"        {ln}" for ln in lines)
            if ins.multi:
                L.append(f"        {', '.join(f'v{o}' for o in ins.outs)}, = "
                         f"{', '.join(f'y{j}' for j in range(len(ins.outs)))},")
            else:
                L.append(f"        v{ins.outs[0]} = y")
            if keep and lay.resolved[i]:
                L.append(f"        k{i} = s")  # nothing per step: the rows hold it
                last.append(i)
            elif keep:
                L.append(f"        K{i}[t] = s")
            continue
        args = ", ".join(f"v{s}" for s in ins.ins) + (f", **p{i}" if ins.params else "")
        outs = ("(" + "".join(f"v{o}, " for o in ins.outs) + ")") if ins.multi else \
            f"v{ins.outs[0]}"
        L.append(f"        {outs}, k{i} = f{i}({args})")
        if not ins.multi and len(p.shapes[ins.outs[0]]) == 0:  # numpy gives scalars for 0-d
            L.append(f"        v{ins.outs[0]} = asarray(v{ins.outs[0]})")
        if keep:
            L.append(f"        K{i}[t] = k{i}")
        if anomaly:
            L.append(f"        check({i}, t, [{', '.join(f'v{o}' for o in ins.outs)}])")
    if lay.y_buf is None or anomaly:
        L.append(f"        Y[t] = v{p.y}")
    if p.ns:
        L.append(f"        {', '.join(f'v{s}' for s in p.s_slots)}, = "
                 f"{', '.join(f'v{s}' for s in p.new_slots)},")
    L.extend(f"    K[{i}] = k{i}" for i in last)
    L.append(f"    return [{', '.join(f'v{s}' for s in p.s_slots)}]")
    return _compile(L, "forward", env)


class _Backward:
    """The generated backward of a plan for one pattern of needs, and what it was built on."""

    def __init__(self, p: Plan, needs: tuple[bool, ...], has_y_grad: bool) -> None:
        nx, ns, kinds = p.nx, p.ns, p.kinds
        x_need, s_need, c_need = needs[:nx], needs[nx:nx + ns], needs[nx + ns:]
        # which slots carry a gradient (a state part does if its next value does: a fixed point)
        grad = [False] * len(kinds)
        for flags, slots in ((x_need, p.x_slots), (s_need, p.s_slots),
                             (c_need, p.const_slots)):
            for f, s in zip(flags, slots):
                grad[s] = bool(f)
        changed = True
        while changed:
            for ins in p.instrs:
                flag = any(grad[s] for s in ins.ins)
                for o in ins.outs:
                    grad[o] = flag
            changed = False
            for i, s in enumerate(p.s_slots):
                if grad[p.new_slots[i]] and not grad[s]:
                    grad[s] = changed = True
        self.grad = grad
        # per instruction: the needs passed at each step, and the inputs (weights) whose
        # gradient is computed once over all steps instead
        self.step_needs: list[tuple[bool, ...]] = []
        self.batched: list[tuple[int, ...]] = []
        for i, ins in enumerate(p.instrs):
            can = p.batchable(i)
            step_n, batch_n = [], []
            if p.hoisted[i]:  # its backward runs once, after the loop (Scan.backward)
                self.step_needs.append((False,) * len(ins.ins))
                self.batched.append(())
                continue
            for j, s in enumerate(ins.ins):
                need = grad[s]
                if need and kinds[s] in "ch" and can:
                    batch_n.append(j)
                    need = False
                step_n.append(need)
            self.step_needs.append(tuple(step_n))
            self.batched.append(tuple(batch_n))
        self.uses_local = [ins.op.local_for(ins.params) is not None and any(n) and
                           any(grad[o] for o in ins.outs)
                           for ins, n in zip(p.instrs, self.step_needs)]
        # per instruction: its gradient as code (the primitive's `grad_code`), where it applies
        self.code: list[Any] = []
        for i, ins in enumerate(p.instrs):
            tmpl = None
            dts = {p.dtypes[s] for s in ins.ins + ins.outs}
            if len(dts) == 1 and any(self.step_needs[i]):
                tmpl = ins.op.grad_code(ins.params, tuple(p.shapes[s] for s in ins.ins),
                                        p.shapes[ins.outs[0]])
                if tmpl is not None and not all(j in tmpl[1] for j, n in
                                                enumerate(self.step_needs[i]) if n):
                    tmpl = None
            self.code.append(tmpl)
        # where grad_code names it: a weight's batched gradient from the gradient after its lines
        self.post = [tmpl[2] if tmpl is not None and len(tmpl) > 2 else None
                     for tmpl in self.code]
        # a state part's gradient is never None inside the loop if its slot always gets one
        # (then the final state's missing gradient is zeros): found by a first generation
        self.filled = [True] * ns
        while True:  # assume it of every part, then drop the parts for which it fails
            self.fn = self._generate(p, has_y_grad, False)
            filled = [f and s in self._defined_sure for f, s in zip(self.filled, p.s_slots)]
            if filled == self.filled:
                break
            self.filled = filled
        self.fn_anomaly = self._generate(p, has_y_grad, True)
        self.fn_probe = self._generate(p, has_y_grad, False, probe=True)

    @staticmethod
    def _direct(p: Plan, i: int, tmpl: Any) -> Any:
        """Operation i's gradient code with `s[k]` (what it saved) read from the rows."""
        refs, kinds = p.layout.tmpl[i][2], p.layout.ref_kinds[i]

        def part(k: int) -> str:
            return f"RS{i}_{k}[t]" if kinds[k] == "rows" else f"RS{i}_{k}"

        def sub(text: str) -> str:
            if isinstance(refs, tuple):
                return re.sub(r"\bs\[(\d+)\]", lambda m: part(int(m.group(1))), text)
            return re.sub(r"\bs\b", part(0), text)

        return (tuple(sub(x) for x in tmpl[0]), {j: sub(e) for j, e in tmpl[1].items()},
                *tmpl[2:])

    def _generate(self, p: Plan, has_y_grad: bool, anomaly: bool,
                  probe: bool = False) -> Callable[..., Any]:
        grad = self.grad
        L = ["def backward(T, GY, GS, K, LOC, B, N, GX, GB, GC, GH, fit, acc, check, PR=None, "
             "RS=None):"]
        lay = p.layout
        # a resolved operation's saved parts are read from their rows (RS<i>_<k>[t])
        direct = [lay.resolved[i] and self.code[i] is not None and not anomaly
                  for i in range(len(p.instrs))]
        for i in range(len(p.instrs)):
            if direct[i]:
                for k in range(len(_ref_list(lay.tmpl[i][2]))):
                    L.append(f"    RS{i}_{k} = RS[{i}][{k}]")
        # a saved constant that a gradient multiplies by transposed (matmul's dA = G B^T):
        # transposed once, before the loop, for the reason given in _gen_forward
        flipped: set[tuple[int, int]] = set()
        for i, tmpl in enumerate(self.code):
            if tmpl is not None and not anomaly and lay.tmpl[i] is not None and \
                    isinstance(lay.tmpl[i][2], tuple):
                for k, kind in enumerate(lay.ref_kinds[i]):
                    if kind == "const" and any(re.search(_transposed(f"s[{k}]"), e)
                                               for e in (*tmpl[0], *tmpl[1].values())):
                        flipped.add((i, k))
                        L.append(f"    RT{i}_{k} = np.ascontiguousarray(K[{i}][0][{k}].T)")
        for i in range(len(p.s_slots)):
            L.append(f"    n{i} = GS[{i}]")
        for i, ins in enumerate(p.instrs):
            L.append(f"    K{i} = K[{i}]; N{i} = N[{i}]; b{i} = B[{i}]")
            if self.uses_local[i]:
                L.append(f"    L{i} = LOC[{i}]")
            if self.batched[i]:
                L.append(f"    GB{i} = GB[{i}]")
        for i, s in enumerate(p.x_slots):
            if grad[s]:
                L.append(f"    GX{s} = GX[{i}]")
        for k, s in enumerate(p.const_slots):
            if grad[s]:
                L.append(f"    GC{s} = GC[{k}]")
        for i, ins in enumerate(p.instrs):
            if p.hoisted[i] and grad[ins.outs[0]]:
                L.append(f"    GC{ins.outs[0]} = GH[{i}]")
        L.append("    for t in range(T - 1, -1, -1):")
        defined: set[int] = set()
        maybe_none: set[int] = set()  # gradients that may be None (from outside the step)

        def add(s: int, expr: str, ind: str, none: bool) -> None:
            if s not in defined:
                L.append(f"{ind}g{s} = {expr}")
            elif none or s in maybe_none:
                L.append(f"{ind}g{s} = acc(g{s}, {expr})")
            else:
                L.append(f"{ind}g{s} = g{s} + {expr}")
            defined.add(s)
            if none:
                maybe_none.add(s)

        for i, s in enumerate(p.new_slots):  # the next step's gradient of the state
            if grad[s]:
                add(s, f"n{i}", "        ", not self.filled[i])
        if has_y_grad and grad[p.y]:
            add(p.y, "GY[t]", "        ", False)
        # slot -> what its gradient is the same array as: another slot (a + b passes g on), or
        # -1 - i: operation i's gradient after its grad_code's lines (q<i>)
        same: dict[int, int] = {}
        owner: dict[int, int] = {}  # such a gradient -> the operation whose buffer keeps it
        out_line: dict[int, int] = {}  # operation -> its line that may write q<i> into a row
        share: dict[int, Any] = {}  # operation -> the operation (or ("x", k)) it shares with
        writes: list[tuple[int, str, int]] = []
        post_used: set[int] = set()  # operations whose GB holds g after their grad_code lines

        def root(s: int) -> int:
            while s in same:
                s = same[s]
            return s

        for i in range(len(p.instrs) - 1, -1, -1):
            ins, sn = p.instrs[i], self.step_needs[i]
            outs = [o for o in ins.outs if o in defined]
            # the template (grad_code) runs where every output's gradient is surely there
            tmpl = self.code[i] if any(sn) and len(outs) == len(ins.outs) and not anomaly and \
                not any(o in maybe_none for o in outs) else None
            post = self.batched[i] and self.post[i] is not None and tmpl is not None
            if post:
                post_used.add(i)
            if self.batched[i] and not post:  # stored at the end of the step (see below)
                o = ins.outs[0]
                if o in maybe_none:
                    L.append(f"        if g{o} is not None: GB{i}[t] = g{o}")
                elif o in defined:
                    writes.append((i, f"g{o}", root(o)))
            if not any(sn) or not outs:
                continue
            garg = ("[" + ", ".join(f"g{o}" if o in defined else "None" for o in ins.outs) + "]"
                    if ins.multi else f"g{ins.outs[0]}")
            guard = [o for o in outs if o in maybe_none]
            ind = "        "
            if guard:
                L.append(f"{ind}if {' or '.join(f'g{o} is not None' for o in guard)}:")
                ind += "    "
            if tmpl is not None:  # the gradient formulas inline: no call, no checks
                for k in {k for j, k in flipped if j == i}:
                    pat, rt = _transposed(f"s[{k}]"), f"RT{i}_{k}"
                    tmpl = (tuple(re.sub(pat, rt, x) for x in tmpl[0]),
                            {j: re.sub(pat, rt, e) for j, e in tmpl[1].items()}, *tmpl[2:])
                if direct[i]:
                    tmpl = self._direct(p, i, tmpl)
                    L.append(f"{ind}g = {garg}" + (f"; d = L{i}[t]" if self.uses_local[i] else ""))
                else:
                    L.append(f"{ind}g = {garg}; s = K{i}[t]" +
                             (f"; d = L{i}[t]" if self.uses_local[i] else ""))
                for line in tmpl[0]:
                    if "@OUT" in line and not guard:
                        out_line[i] = len(L)
                        line = line.replace("@OUT", f"@OUT{i}@")
                    L.append(f"{ind}{line}")
                if post:  # the weights' gradient from g after the lines above (after act)
                    L.append(f"{ind}q{i} = g")
                    writes.append((i, f"q{i}", -1 - i if tmpl[0] or ins.multi
                                   else root(ins.outs[0])))
            else:
                local = f"L{i}[t], " if self.uses_local[i] else ""
                L.append(f"{ind}r = b{i}({garg}, {local}K{i}[t], N{i})")
                if anomaly:
                    L.append(f"{ind}check({i}, t, r)")
            targets: list[int] = []
            for j, s in enumerate(ins.ins):
                if not sn[j]:
                    continue
                if tmpl is not None:
                    expr = f"({tmpl[1][j]})"
                else:
                    L.append(f"{ind}c = r[{j}]")
                    L.append(f"{ind}if c.__class__ is not ndarray or c.shape != SH{s} or "
                             f"c.dtype is not DT{s}: c = fit(c, SH{s}, DT{s}, {ins.op.name!r})")
                    expr = "c"
                if s in targets:  # the same value twice in this operation (h * h): add up
                    L.append(f"{ind}g{s} = g{s} + {expr}")
                    same.pop(s, None)
                elif s not in defined:
                    L.append(f"{ind}g{s} = {expr}")
                    # g itself, passed on: the output's gradient, or the array the lines made
                    lines = tmpl[0] if tmpl is not None else ()
                    if expr == "(g)" and (lines or not ins.multi) and not guard:
                        same[s] = -1 - i if lines else root(ins.outs[0])
                elif s in maybe_none:
                    L.append(f"{ind}g{s} = acc(g{s}, {expr})")
                    same.pop(s, None)
                else:
                    L.append(f"{ind}g{s} = g{s} + {expr}")
                    same.pop(s, None)
                if s not in targets:
                    targets.append(s)
            if guard:
                fresh = [s for s in targets if s not in defined]
                L.append("        else:")
                L.extend(f"            g{s} = None" for s in fresh)
                if not fresh:
                    L.append("            pass")
                maybe_none.update(targets)
            defined.update(targets)
        self._defined_sure = defined - maybe_none
        for i, s in enumerate(p.s_slots):
            L.append(f"        n{i} = g{s}" if s in defined else f"        n{i} = None")
        def write_in_place(r: int, dest: str) -> bool:
            """Make operation -1 - r's marked line write the gradient into dest, if it can."""
            i = -1 - r
            if r >= 0 or i not in out_line:
                return False
            k = out_line.pop(i)
            L[k] = L[k].replace(f"@OUT{i}@", f", out={dest}")
            return True

        x_root: dict[int, int] = {}  # a gradient array -> the input buffer it is written to
        for k, s in enumerate(p.x_slots):
            if grad[s] and s in defined:
                if s in maybe_none:
                    L.append(f"        if g{s} is not None: GX{s}[t] = g{s}")
                elif not write_in_place(root(s), f"GX{s}[t]"):
                    L.append(f"        GX{s}[t] = g{s}")
                if s not in maybe_none:
                    x_root.setdefault(root(s), k)
        # the weights' step gradients, each array stored once: where an input's gradient is the
        # same array (linear(h, W, xp_t): both are G), its buffer serves both
        for i, var, r in writes:
            if r in x_root:
                share[i] = ("x", x_root[r])
            elif r in owner:
                share[i] = owner[r]
            else:
                owner[r] = i
                if not write_in_place(r, f"GB{i}[t]"):
                    L.append(f"        GB{i}[t] = {var}")
        invariant = list(p.const_slots) + [ins.outs[0] for i, ins in enumerate(p.instrs)
                                           if p.hoisted[i]]
        for s in invariant:
            if grad[s] and s in defined:
                L.append(f"        if g{s} is not None: GC{s}.append(g{s})" if s in maybe_none
                         else f"        GC{s}.append(g{s})")
        s0 = p.new_slots[0] if p.new_slots else None
        if probe and s0 is not None and s0 in defined:  # dL/d(state part 0 after step t)
            L.append(f"        if g{s0} is not None: PR[t] = g{s0}" if s0 in maybe_none else
                     f"        PR[t] = g{s0}")
        L.append(f"    return [{', '.join(f'n{i}' for i in range(len(p.s_slots)))}]")
        L = [re.sub(r"@OUT\d+@", "", line) for line in L]  # not stored: a fresh array
        env: dict[str, Any] = {"ndarray": np.ndarray, "np": np}
        for s in range(len(p.kinds)):
            env[f"SH{s}"], env[f"DT{s}"] = p.shapes[s], p.dtypes[s]
        fn = _compile(L, "backward", env)
        fn.share = share  # type: ignore[attr-defined]
        fn.post = post_used  # type: ignore[attr-defined]
        return fn


def _compile(lines: list[str], name: str, env: dict[str, Any]) -> Callable[..., Any]:
    source = "\n".join(lines) + "\n"
    code = compile(source, f"<scan {name}>", "exec")
    exec(code, env)
    fn = env[name]
    fn.source = source
    return fn


# ----------------------------------------------------------------------------- the record
def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """np.stack of same-shape arrays along a new axis 0; one concatenate where it can (np.stack's
    Python costs 0.5 us per array)."""
    a = arrays[0]
    if a.ndim == 0 or len({x.shape for x in arrays}) != 1:
        return np.stack(arrays)
    return np.concatenate(arrays).reshape((len(arrays),) + a.shape)


def _stack_saved(per_step: list[Any], fixed: set[int], out_ndim: int) -> Any:
    """The saved values of all steps, each time-varying array stacked along a new leading axis
    (a lower-rank one first padded to the output's rank, so that broadcasting still lines up);
    the scan's own inputs (weights, `fixed` by id) and non-arrays are taken as they are."""
    first = per_step[0]
    if isinstance(first, np.generic):  # a 0-d forward may save a numpy scalar
        per_step = [np.asarray(a) for a in per_step]
        first = per_step[0]
    if isinstance(first, np.ndarray):
        if id(first) in fixed:
            return first
        if first.ndim < out_ndim:
            pad = (1,) * (out_ndim - first.ndim)
            return _stack([a.reshape(pad + a.shape) for a in per_step])
        return _stack(per_step)
    if isinstance(first, (tuple, list)):
        return type(first)(_stack_saved([s[k] for s in per_step], fixed, out_ndim)
                           for k in range(len(first)))
    return first


def _stacked(p: Plan, bufs: list[Any] | None, X: Any, i: int, per_step: list[Any],
             fixed: set[int]) -> Any:
    """What operation i saved at every step, time-varying arrays stacked along a new leading
    axis: views of the forward's buffers where the operation's code says which saved value is
    which (its forward_code), copies otherwise."""
    ins, lay = p.instrs[i], p.layout
    out_ndim = len(p.shapes[ins.outs[0]])
    refs = lay.tmpl[i][2] if bufs is not None and lay.tmpl[i] is not None else None
    if refs is None:
        return _stack_saved(per_step, fixed, out_ndim)

    assert bufs is not None  # refs come from the buffers' layout

    def one(ref: Any, values: list[Any]) -> Any:
        rows = None
        if ref == "y":
            rows = lay.rows(bufs, i)
        elif isinstance(ref, str) and ref.startswith("a"):
            s = ins.ins[int(ref[1:])]
            if p.kinds[s] in "ch":
                return values[0]
            rows = lay.slot_rows(p, bufs, X, s)
        return _stack_saved(values, fixed, out_ndim) if rows is None else _pad(rows, out_ndim)

    if isinstance(refs, tuple):
        return tuple(one(r, [s[k] for s in per_step]) for k, r in enumerate(refs))
    return one(refs, per_step)


def _stacked_rows(p: Plan, i: int, parts: list[Any]) -> Any:
    """A resolved operation's saved values of all steps: its rows (padded to the output's rank,
    as _stack_saved does) and its constants, in the structure forward saves."""
    lay, out_ndim = p.layout, len(p.shapes[p.instrs[i].outs[0]])
    vals = [_pad(part, out_ndim) if kind == "rows" else part
            for part, kind in zip(parts, lay.ref_kinds[i])]
    return tuple(vals) if isinstance(lay.tmpl[i][2], tuple) else vals[0]


def _pad(rows: np.ndarray, out_ndim: int) -> np.ndarray:
    """Rows (T, ...) of a value of lower rank than the output given size-1 axes after T, as
    _stack_saved pads, so that broadcasting against the output's rows still lines up."""
    if rows.ndim - 1 >= out_ndim:
        return rows
    return rows.reshape(rows.shape[:1] + (1,) * (out_ndim - rows.ndim + 1) + rows.shape[1:])


def _per_step(g: Any, steps: int, shape: tuple[int, ...], dtype: np.dtype, name: str) -> Any:
    """A gradient computed over all steps at once for a time-invariant input, as one piece per
    step, the last first: the engine adds them in that order, as it would the per-op records'."""
    if g is None or type(g) is Grad:
        return g
    g = np.asarray(g)
    extra = g.ndim - 1 - len(shape)
    if g.ndim == 0 or g.shape[0] != steps or extra < 0:
        return unbroadcast(g, shape, name)
    axes = tuple(range(1, 1 + extra)) + tuple(
        1 + extra + i for i, n in enumerate(shape) if n == 1 and g.shape[1 + extra + i] != 1)
    if axes:
        g = g.sum(axis=axes)
    g = g.reshape((steps,) + shape)
    if g.dtype != dtype:
        g = g.astype(dtype)
    return Grad.of(np.ones((steps, 1, 1), g.dtype), g.reshape(steps, 1, -1), steps=True)


class Scan(Primitive):
    """An unroll of a traced step as one record. Inputs: the per-step input parts (T, ...), the
    initial state parts, the tensors the step closes over, then each weight once more per
    operation whose gradient for it is batched over time (`channels`). Outputs: the stacked step
    outputs (T, ...) and the final state parts."""

    name = "scan"
    nout = None
    scan = False  # the scan of an unroll inside a traced step: that unroll runs per op

    @staticmethod
    def forward(*arrays: np.ndarray, plan: Plan, channels: Any, keep: bool,
                probe: dict[str, Any] | None = None) -> tuple[Any, Any]:
        p: Plan = plan
        nx, ns, nc = p.nx, p.ns, len(p.consts)
        X, S, C = arrays[:nx], arrays[nx:nx + ns], arrays[nx + ns:nx + ns + nc]
        T = X[0].shape[0]
        anomaly = bool(_MODE.get() & ANOMALY)
        keep = keep or anomaly
        K = [[None] * T for _ in p.instrs] if keep else None
        lay = p.layout_for(keep)
        bufs = None if anomaly else lay.buffers(p, T, S)
        if bufs is not None and lay.y_buf is not None:
            ys = lay.rows(bufs, lay.y_buf)
        else:
            ys = np.empty((T,) + p.shapes[p.y], dtype=p.dtypes[p.y])
        fwd = p.forward_code(keep, anomaly)
        H: list[Any] = []
        final = fwd(T, X, S, C, p.F, p.P, ys, K, bufs, H, _checker(p, "output"))
        kept = tuple(x if k else None for x, k in zip(X, lay.x_kept))
        return [ys, *final], (p, channels, K, C, T, kept, bufs, probe, H)

    @staticmethod
    def describe_saved(saved: Any, a: np.ndarray) -> str:
        """Which operation of the step saved `a` (for the error of a value changed in place)."""
        p, _, _, C, _, _, bufs, _, _ = saved
        owner = memory_owner
        for k, c in enumerate(C):
            if isinstance(c, np.ndarray) and owner(c) is owner(a):
                users = [f"{ins.op.name} at {ins.where}" for ins in p.instrs
                         if p.const_slots[k] in ins.ins]
                return f"scan (a compiled unroll; its {', '.join(users)})"
        for ins, b in zip(p.instrs, bufs or ()):
            if isinstance(b, np.ndarray) and owner(b) is owner(a):
                return f"scan (a compiled unroll; the outputs of its {ins.op.name} at {ins.where})"
        return "scan (a compiled unroll)"

    @staticmethod
    def backward(gs: list[Any], saved: Any, needs: tuple[bool, ...]) -> tuple[Any, ...]:
        p, channels, K, C, T, X, bufs, probe, H = saved
        nx, ns, nc = p.nx, p.ns, len(p.consts)
        main = needs[:nx + ns + nc]
        code = p.backward_code(main, gs[0] is not None)
        fixed = {id(c) for c in C} | {id(h) for h in H}
        lay = p.layout
        RS: dict[int, list[Any]] = {}
        if bufs is not None:  # resolved operations kept only their last step's saved
            K = list(K)
            for i in range(len(p.instrs)):
                if lay.resolved[i]:
                    RS[i] = lay.rows_of(p, bufs, X, C, H, i, K[i])
                    K[i] = _SavedRows(RS[i], lay.ref_kinds[i],
                                      not isinstance(lay.tmpl[i][2], tuple))
        LOC: list[Any] = [None] * len(p.instrs)
        stacked: dict[int, Any] = {}
        for i, ins in enumerate(p.instrs):
            if code.uses_local[i] or code.batched[i]:
                stacked[i] = (_stacked_rows(p, i, RS[i]) if i in RS else
                              _stacked(p, bufs, X, i, K[i], fixed))
            if code.uses_local[i]:
                LOC[i] = ins.op.local(stacked[i])
        GX = [np.zeros((T,) + p.shapes[s], p.dtypes[s]) if code.grad[s] else None
              for s in p.x_slots]
        fn = code.fn_anomaly if _MODE.get() & ANOMALY else code.fn
        GB: list[Any] = [None] * len(p.instrs)
        for i, (b, ins) in enumerate(zip(code.batched, p.instrs)):
            if b and i not in fn.share:
                GB[i] = np.zeros((T,) + p.shapes[ins.outs[0]], p.dtypes[ins.outs[0]])
        for i, j in fn.share.items():
            GB[i] = GX[j[1]] if isinstance(j, tuple) else GB[j]
        GC: list[Any] = [[] if code.grad[s] else None for s in p.const_slots]
        GH: list[Any] = [[] if p.hoisted[i] and code.grad[ins.outs[0]] else None
              for i, ins in enumerate(p.instrs)]
        B = [ins.op.backward_local if code.uses_local[i] else ins.op.backward
             for i, ins in enumerate(p.instrs)]
        GS = [np.zeros(p.shapes[s], p.dtypes[s]) if g is None and filled else g
              for g, filled, s in zip(gs[1:], code.filled, p.new_slots)]
        check = _checker(p, "gradient") if _MODE.get() & ANOMALY else _no_check
        PR = None
        if probe is not None and p.ns:  # gradient_flow asked for dL/dh_t of every step
            fn = code.fn if _MODE.get() & ANOMALY else code.fn_probe
            s0 = p.new_slots[0]
            PR = probe["grads"] = np.zeros((T,) + p.shapes[s0], p.dtypes[s0])
        g_init = fn(T, gs[0], GS, K, LOC, B, code.step_needs, GX, GB, GC, GH, _fit, _acc, check,
                    PR, RS)
        grads: list[Any] = [*GX, *g_init]
        for k, s in enumerate(p.const_slots):
            grads.append(Grad(GC[k]) if GC[k] else None)
        # weights: one backward call over all steps per operation
        batched: dict[tuple[int, int], Any] = {}
        for i, js in enumerate(code.batched):
            if not js:
                continue
            ins = p.instrs[i]
            want = tuple(j in js for j in range(len(ins.ins)))
            if i in fn.post:  # GB holds the gradient after grad_code's lines
                r = code.post[i](GB[i], stacked[i], want)
            elif code.uses_local[i]:  # the local derivative of all steps is there already
                r = ins.op.backward_local(GB[i], LOC[i], stacked[i], want)
            else:
                r = ins.op.backward(GB[i], stacked[i], want)
            GB[i] = LOC[i] = None  # type: ignore[call-overload]
            if _MODE.get() & ANOMALY:
                _checker(p, "gradient")(i, -1, [x for x in r if isinstance(x, np.ndarray)])
            for j in js:
                s = ins.ins[j]
                batched[i, j] = _per_step(r[j], T, p.shapes[s], p.dtypes[s], ins.op.name)
        _hoisted_backward(p, code, K, GH, batched)
        grads.extend(batched.get(ch) for ch in channels)
        return tuple(grads)


def _hoisted_backward(p: Plan, code: _Backward, K: list[Any], GH: list[Any],
                      batched: dict[Any, Any]) -> None:
    """The backward of the operations run once before the loop, latest first: each gets the
    gradients its output received at every step (pieces in step order, or a weight gradient
    over all steps) and passes them on, piece by piece, to its inputs: for a weight, into
    `batched` under ("h", i, j), one of the record's input channels (see `run`)."""
    got: dict[int, list[Any]] = {}  # hoisted slot -> its gradients
    for (i, j), g in batched.items():
        s = p.instrs[i].ins[j]
        if p.kinds[s] == "h" and g is not None:
            got.setdefault(s, []).append(g)
    for i in range(len(p.instrs) - 1, -1, -1):
        ins = p.instrs[i]
        if not p.hoisted[i]:
            continue
        o = ins.outs[0]
        items = ([Grad(GH[i])] if GH[i] else []) + got.get(o, [])
        needs = tuple(code.grad[s] for s in ins.ins)
        if not items or not any(needs):
            continue
        for item in items:
            for j, g in enumerate(_through(ins, item, K[i], needs, p)):
                if g is None or not needs[j]:
                    continue
                s = ins.ins[j]
                if p.kinds[s] == "h":
                    got.setdefault(s, []).append(g)
                else:
                    prev = batched.get(("h", i, j))
                    if prev is None:
                        batched["h", i, j] = g
                    elif p.consts[p.const_index[s]]._node is None:  # a leaf adds them in order
                        batched["h", i, j] = Grad((*(prev if type(prev) is Grad else (prev,)),
                                                   *(g if type(g) is Grad else (g,))))
                    else:
                        batched["h", i, j] = _fit(prev, p.shapes[s], p.dtypes[s], "scan") + \
                            _fit(g, p.shapes[s], p.dtypes[s], "scan")


def _through(ins: _Instr, g: Any, saved: Any, needs: tuple[bool, ...], p: Plan) -> list[Any]:
    """An operation's backward applied to a gradient of its output: an array, or a Grad whose
    terms go through one by one, so that per-step terms stay per-step terms in step order (a
    product over steps is taken step by step, except where the operation keeps it a product:
    a transpose)."""
    def fit(x: Any, j: int) -> Any:
        s = ins.ins[j]
        return None if x is None else _fit(x, p.shapes[s], p.dtypes[s], ins.op.name)

    if type(g) is not Grad:
        r = ins.op.backward(g, saved, needs)
        return [fit(x, j) if needs[j] else None for j, x in enumerate(r)]
    out: list[Any] = [Grad() if need else None for need in needs]
    via = getattr(ins.op, "backward_product", None)
    o = ins.outs[0]
    for term in g:
        if type(term) is Product:
            kept = via(term, saved, needs) if via is not None else None
            if kept is not None:  # kept a product (a transpose)
                for j, x in enumerate(kept):
                    if needs[j] and x is not None:
                        out[j].extend(x)
                continue
            steps = [Product(a, b) for a, b in zip(term.a[::-1], term.b[::-1])] \
                if term.steps else [term]  # one term per step, so segments change nothing
            terms = [as_array(x, p.shapes[o], p.dtypes[o], ins.op.name) for x in steps]
        else:
            terms = [term]
        for x in terms:
            r = ins.op.backward(x, saved, needs)
            for j, need in enumerate(needs):
                if need:
                    out[j].append(fit(r[j], j))
    return out


def _checker(plan: Plan, what: str) -> Callable[[int, int, Any], None]:
    def check(i: int, t: int, arrays: Any) -> None:
        ins = plan.instrs[i]
        try:
            check_finite(ins.op.name, what,
                         [a for a in arrays if isinstance(a, np.ndarray)], ins.where)
        except AnomalyError as e:
            at = "all steps" if t < 0 else f"step {t}"
            raise AnomalyError(f"{e}, inside the compiled unroll (scan), {at}") from None
    return check


def _no_check(i: int, t: int, arrays: Any) -> None:
    return None


def run(plan: Plan, x_parts: list[Tensor], state: Any) -> tuple[Tensor, Any]:
    """The scan of `plan` over the inputs (each (T, ...)) from `state`: (ys (T, ...), state)."""
    flat: list[Any] = []
    _flatten(state, flat)
    leaves = [t if isinstance(t, Tensor) else Tensor(t) for t in flat]
    x_parts = [t if isinstance(t, Tensor) else Tensor(t) for t in x_parts]
    consts = plan.consts
    channels: list[Any] = [
        (i, j) for i, ins in enumerate(plan.instrs) if plan.batchable(i)
        for j, s in enumerate(ins.ins)
        if plan.kinds[s] == "c" and consts[plan.const_index[s]]._requires_grad]
    channels += [("h", i, j) for i, ins in enumerate(plan.instrs) if plan.hoisted[i]
                 for j, s in enumerate(ins.ins)
                 if plan.kinds[s] == "c" and consts[plan.const_index[s]]._requires_grad]
    extra = [consts[plan.const_index[plan.instrs[ch[-2]].ins[ch[-1]]]] for ch in channels]
    inputs = [*x_parts, *leaves, *consts, *extra]
    keep = bool(_MODE.get() & GRAD) and any(t._requires_grad for t in inputs)
    probes = _PROBES.get()
    if probes is None:
        outs = Scan.apply(*inputs, plan=plan, channels=channels, keep=keep)
    else:
        holder: dict[str, Any] = {"grads": None, "steps": x_parts[0].shape[0]}
        outs = Scan.apply(*inputs, plan=plan, channels=channels, keep=keep, probe=holder)
        holder["port"] = outs[1]._ref if plan.ns else None
        probes.append(holder)
    return outs[0], _unflatten(plan.spec, list(outs[1:]))


_PROBES: ContextVar[list[dict[str, Any]] | None] = ContextVar("tinygrad_rnn_probes", default=None)


@contextmanager
def probing() -> Iterator[list[dict[str, Any]]]:
    """Scans recorded inside keep, at backward, the gradient of their first state part after
    every step ("grads", (T, ...)), for `diagnostics.gradient_flow`. Yields the list of them
    ({"grads", "steps", "port": the record's final-state output})."""
    token = _PROBES.set([])
    try:
        yield _PROBES.get()  # type: ignore[misc]
    finally:
        _PROBES.reset(token)


# ----------------------------------------------------------------------------- unroll's entry
_WARNED: set[Any] = set()
_PLANS: weakref.WeakKeyDictionary[Any, Plan] = weakref.WeakKeyDictionary()  # by cell: the last


def _warn(cell: Any, reason: str) -> None:
    cell = getattr(cell, "wraps", cell)  # a cell run with lengths= is warned about as itself
    key = cell if isinstance(cell, type(_warn)) else type(cell)
    if key in _WARNED:
        return
    _WARNED.add(key)
    name = getattr(key, "__qualname__", repr(key))
    warnings.warn(f"nn.unroll: {name} runs on the per-op tape, not as a compiled scan: {reason}. "
                  f"The results are the same, only slower. Pass compile=False to nn.unroll, "
                  f"nn.Recurrent or the layer to choose the per-op tape and silence this.",
                  CompileWarning, stacklevel=4)


def prepare(cell: Any, step: Callable[..., Any], xp: Any, state: Any) -> Plan | None:
    """A verified plan for unrolling `step` over the (projected) inputs xp ((T, B, ...), or a
    tuple of them; only the first three steps are used), or None (with a warning when the cell
    cannot be compiled) to run it per op."""
    T = (xp[0] if isinstance(xp, (tuple, list)) else xp).shape[0]
    if T < 2 or TRACER.get() is not None:  # nested in a traced step: the outer trace records it
        return None
    from .errors import DTypeError, GraphError, ShapeError
    try:
        tuple_x = isinstance(xp, (tuple, list))
        parts = list(xp) if tuple_x else [xp]
        if not all(isinstance(p, Tensor) for p in parts):
            raise Fallback("its project() returns something other than Tensors")
        try:
            previous = _PLANS.get(cell)
        except TypeError:  # not hashable or not weakly referable: no reuse
            previous = None
        plan, prefix = make_plan(step, [p.data[:3] for p in parts],
                                 [p._requires_grad for p in parts], tuple_x, state, previous)
        if not prefix and plan is not previous:
            try:
                _PLANS[cell] = plan
            except TypeError:
                pass
        return plan
    except Fallback as e:
        _warn(cell, str(e))
    except (ShapeError, DTypeError, GraphError):
        pass  # a genuine error of the call: the per-op run raises it where it belongs
    except Exception as e:  # noqa: BLE001 - whatever tracing broke, the per-op tape is right
        _warn(cell, f"tracing its step raised {type(e).__name__}: {e}")
    return None


def execute(plan: Plan, step: Callable[..., Any], xsp: Any, state: Any) -> tuple[Tensor, Any]:
    """Run the unroll of projected inputs `xsp` ((T, ...) Tensor, or a tuple of them) as a scan.
    A state unlike the traced one (a None initial state) gets one step on the per-op tape first."""
    from . import ops
    parts = list(xsp) if plan.tuple_x else [xsp]
    if plan.fits(state):
        return run(plan, parts, state)
    T = parts[0].shape[0]
    first = [p[0] for p in parts]
    y0, state = step(tuple(first) if plan.tuple_x else first[0], state)
    if T == 1:
        return ops.stack([y0]), state
    rest = [p[1:] for p in parts]
    if plan.fits(state):
        ys, state = run(plan, rest, state)
    else:  # the program was traced from another state: stay per op
        outs = []
        for x_t in zip(*[ops.unbind(p, 0) for p in rest]):
            y, state = step(tuple(x_t) if plan.tuple_x else x_t[0], state)
            outs.append(y)
        ys = ops.stack(outs)
    return ops.concat([y0.unsqueeze(0), ys]), state


def source(cell: Any, xs: Any, state: Any = None) -> str:
    """The Python the scan generates for unrolling `cell` over xs (T, B, ...) from `state`: its
    forward and its backward (for gradients of everything), for reading. For a layer
    (`nn.LSTM`, `nn.Recurrent`, ...) it is the code of its (first) cell."""
    cells = getattr(cell, "_cells", None)  # nn.RNN / LSTM / GRU: one cell per layer and direction
    cell = cells[0] if cells else getattr(cell, "cell", cell)  # nn.Recurrent wraps one
    xs = xs if isinstance(xs, Tensor) else Tensor(xs)
    step = getattr(cell, "step", cell)
    if state is None and hasattr(cell, "initial_state"):
        state = cell.initial_state(xs.shape[1])
    project = getattr(cell, "project", None)
    plan = prepare(cell, step, project(xs) if project is not None else xs, state)
    if plan is None:
        raise Fallback("this cell runs on the per-op tape (see the warning)")
    needs = (True,) * (plan.nx + plan.ns + len(plan.consts))
    fwd: Any = plan.forward_code(True, False)
    bwd: Any = plan.backward_code(needs, True).fn
    return fwd.source + "\n" + bwd.source
