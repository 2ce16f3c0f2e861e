"""The tape: how operations are recorded and how `backward` replays them.

Every differentiable operation that has an input requiring grad appends one `Node` to the graph
of its output: the primitive, its inputs (leaf tensors, or the records that produced them), what
the primitive saved for its derivative and a sequence number. Sequence numbers grow in
recording order, so the tape of a root is simply the nodes reachable from it, sorted by sequence
number; `backward` replays that tape from the last record to the first, iteratively (no
recursion, so a 10,000-step unroll is fine), and then frees it. Un-broadcasting of gradients
happens here, once, for every primitive.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import operator
from contextvars import ContextVar, Token
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np

from .errors import AnomalyError, GraphError, ShapeError

if TYPE_CHECKING:
    from .primitive import Primitive
    from .tensor import Tensor

F = TypeVar("F", bound=Callable[..., Any])


# Recording mode, per thread and per asyncio task (as PyTorch's grad mode is per thread): a
# ContextVar read costs ~50 ns, a third of a threading.local attribute, and it is read per op.
GRAD, ANOMALY, TRACE = 1, 2, 4  # TRACE: primitives go to scan.py's tracer, not to the tape
_MODE: ContextVar[int] = ContextVar("tinygrad_rnn_mode", default=GRAD)
get_mode = _MODE.get
_seq = itertools.count()


class Node:
    """One record of the tape: `op` applied to `inputs`; `grad` collects d(root)/d(output).

    A single-output record also stands for its output in the records that use it: they need
    only where the gradient goes and its shape and dtype, not the data. So an intermediate
    result nobody saved for backward (a pre-activation, say) is freed as soon as the user drops
    it, and no extra object is made per input. Leaves are kept as Tensors (their .grad is the
    destination); an output of a multi-output record is kept as a `Port`."""

    __slots__ = ("op", "inputs", "saved", "needs", "seq", "grad", "nout", "where", "retained",
                 "shape", "dtype")
    _requires_grad = requires_grad = True

    def __init__(self, op: type[Primitive], inputs: tuple[Any, ...], saved: Any,
                 needs: tuple[bool, ...], nout: int | None = None, where: Any = None,
                 shape: tuple[int, ...] = (), dtype: Any = None) -> None:
        self.op: type[Primitive] | None = op  # None once the record has been freed
        self.inputs = inputs  # leaf Tensors, Nodes (single-output inputs) and Ports
        self.saved = saved
        self.needs = needs
        self.seq = next(_seq)
        self.nout = nout  # None: one output; an int: a multi-output op (grad is a list)
        self.grad: Any = None if nout is None else [None] * nout
        self.where = where  # the user's line (SourceLine or str): for errors
        self.retained: list[Tensor] | None = None
        self.shape, self.dtype = shape, dtype  # of the (single) output

    @property
    def _node(self) -> Node:
        """As an input entry, a record is its own producer (Ports and leaves have _node too)."""
        return self


class Port:
    """What a record keeps of an input that is one output of a multi-output record: that record,
    the output's index, shape and dtype, not its data (see Node)."""

    __slots__ = ("_node", "_idx", "shape", "dtype", "grad")
    _requires_grad = requires_grad = True

    def __init__(self, node: Node, idx: int | None, shape: tuple[int, ...], dtype: Any) -> None:
        self._node, self._idx, self.shape, self.dtype, self.grad = node, idx, shape, dtype, None

    def retain_grad(self) -> None:
        retain(self._node, self)


def retain(node: Node, who: Any) -> None:
    """Have backward store the gradient of `who` (a Tensor or Port of node's output) in
    `who.grad`, once however often this is asked."""
    if node.op is None:
        raise GraphError("retain_grad: the graph of this tensor was already freed")
    if node.retained is None:
        node.retained = []
    if not any(r is who for r in node.retained):
        node.retained.append(who)


def port(t: Tensor) -> Any:
    """What a record stores for input `t`: the leaf itself, the record that made it, or (for
    one output of a multi-output record) its Port."""
    r = t._ref
    return t if r is None else r


# ----------------------------------------------------------------------------- grad mode
class _ModeSwitch:
    """Sets mode bits on enter and restores the previous mode on exit (nests, reentrant, and
    one object may be entered by several threads at once: each keeps its own stack)."""

    def __init__(self) -> None:
        self._tokens = threading.local()

    def _new_mode(self, m: int) -> int:
        raise NotImplementedError

    def __enter__(self) -> Any:
        stack = self._tokens.__dict__.setdefault("stack", [])
        stack.append(_MODE.set(self._new_mode(_MODE.get())))
        return self

    def __exit__(self, *exc: object) -> None:
        _MODE.reset(self._tokens.stack.pop())


class no_grad(_ModeSwitch):
    """Context manager and decorator: operations inside record nothing (results need no grad).

    Nests, restores the previous mode on exceptions, and works as `@no_grad()` or `@no_grad`.
    """

    def __new__(cls, func: F | None = None) -> Any:
        self = super().__new__(cls)
        _ModeSwitch.__init__(self)
        return self(func) if func is not None else self

    def __init__(self, func: Callable[..., Any] | None = None) -> None:
        pass

    def _new_mode(self, m: int) -> int:
        return m & ~GRAD

    def __call__(self, func: F) -> F:
        if inspect.isgeneratorfunction(func):  # the mode must hold while the body runs, which
            @functools.wraps(func)             # is at each next()/send(), not at the call
            def generator(*args: Any, **kwargs: Any) -> Any:
                gen = func(*args, **kwargs)
                try:
                    with type(self)():
                        request = next(gen)
                    while True:
                        try:
                            response = yield request
                        except GeneratorExit:
                            with type(self)():
                                gen.close()
                            raise
                        except BaseException as e:  # noqa: BLE001 - thrown in: pass it on
                            with type(self)():
                                request = gen.throw(e)
                        else:
                            with type(self)():
                                request = gen.send(response)
                except StopIteration as stop:
                    return stop.value

            return generator  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with type(self)():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class enable_grad(no_grad):
    """Switches recording back on inside a `no_grad` block."""

    def _new_mode(self, m: int) -> int:
        return m | GRAD


def is_grad_enabled() -> bool:
    return bool(_MODE.get() & GRAD)


class detect_anomaly(_ModeSwitch):
    """Context manager: raise `AnomalyError` at the first NaN/Inf in a forward value or gradient,
    naming the operation, the shapes and the user source line that recorded it. Slow; debug only."""

    def _new_mode(self, m: int) -> int:
        return m | ANOMALY


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


_IN_PKG: dict[str, bool] = {}  # file name -> whether it is this package's (a str's hash is
# cached; a code object's is computed from its contents at every lookup)


class SourceLine:
    """Where the user's code made a record: prints as 'file:line in function' (formatted only
    when printed, so that taking it costs little)."""

    __slots__ = ("code", "line")

    def __init__(self, code: Any, line: int) -> None:
        self.code, self.line = code, line

    def __str__(self) -> str:
        return f"{self.code.co_filename}:{self.line} in {self.code.co_name}"

    __repr__ = __str__


def user_line() -> SourceLine | None:
    """The innermost caller outside this package (None if there is none)."""
    frame: Any = sys._getframe(1)
    in_pkg = _IN_PKG
    while frame is not None:
        code = frame.f_code
        name = code.co_filename
        inside = in_pkg.get(name)
        if inside is None:
            inside = in_pkg[name] = os.path.abspath(name).startswith(_PKG_DIR)
        if not inside:
            return SourceLine(code, frame.f_lineno)
        frame = frame.f_back
    return None


def user_source_line() -> str:
    """'file:line in function' of the innermost caller outside this package."""
    where = user_line()
    return "<unknown>" if where is None else str(where)


def check_finite(op_name: str, what: str, arrays: Iterator[np.ndarray] | list[np.ndarray],
                 where: Any) -> None:
    for a in arrays:
        if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = "NaN" if np.isnan(a).any() else "Inf"
            raise AnomalyError(f"{op_name}: {what} of shape {a.shape} contains {bad}"
                               f" (operation recorded at {where})")


# ----------------------------------------------------------------------------- backward
def unbroadcast(g: np.ndarray, shape: tuple[int, ...], op_name: str) -> np.ndarray:
    """Sum a gradient over the axes numpy broadcast, so it gets the input's `shape`."""
    extra = g.ndim - len(shape)
    if extra < 0:
        raise ShapeError(f"{op_name}: backward produced a gradient of shape {g.shape} "
                         f"for an input of shape {shape}")
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if extra:
        g = g.reshape(shape)
    if g.shape != shape:
        raise ShapeError(f"{op_name}: backward produced a gradient of shape {g.shape} "
                         f"for an input of shape {shape}")
    return g


_FREED = ("backward: trying to backward through a graph a second time: its records were freed by "
          "an earlier backward(). Pass retain_graph=True to the first backward if you need a "
          "second one. In truncated BPTT this means the state carried into this window still "
          "holds the previous window's history: detach it at the boundary "
          "(state = tg.detach(state)).")


def walk(*roots: Any, since: int = 0, leaves: dict[int, Any] | None = None) -> list[Node]:
    """Every record reachable from `roots` (Tensors, or records), latest recorded first: the
    order backward replays them in. The leaf tensors met go into `leaves` (by id), if given.
    A freed record is a GraphError; so is one recorded before sequence number `since` (records
    of an enclosing graph, which a checkpoint's replay must not reach)."""
    seen: set[Node] = set()
    node_t = Node
    for r in roots:
        m = r if type(r) is node_t else r._node
        if m is not None:
            seen.add(m)
        elif leaves is not None:
            leaves[id(r)] = r
    stack = list(seen)
    add, push, pop = seen.add, stack.append, stack.pop  # locals: once per record
    while stack:
        n = pop()
        if n.op is None:  # freed: by a backward, or by one that failed (its saved says why)
            raise GraphError(n.saved if type(n.saved) is str else _FREED)
        if since and n.seq < since:  # stop at the boundary, before reaching freed records
            raise GraphError("checkpoint: the checkpointed function uses a tensor that was "
                             "computed outside it and is not one of its arguments; pass that "
                             "tensor as an argument (leaves such as parameters are fine)")
        for t in n.inputs:
            m = t if type(t) is node_t else t._node
            if m is not None:
                if m not in seen:
                    add(m)
                    push(m)
            elif leaves is not None:
                leaves[id(t)] = t
    return sorted(seen, key=_seq_of, reverse=True)


_seq_of = operator.attrgetter("seq")  # a C-level key: sorting 10^5 records calls it per record


# ----------------------------------------------------------------------------- in-place writes
# PyTorch's version counter, kept per memory owner instead of per tensor: every in-place write
# the library makes (an optimiser step, load_state_dict, nn.init, `t.data *= 2`) notes the
# record number (seq) it happened at; a record made before it that saved that memory refuses
# to backpropagate. Nothing is done when a record is made, and backward looks at what a record
# saved only if some write happened after it.
_WRITES: dict[int, int] = {}  # id(memory owner) -> seq of its last in-place write
_last_write = -1


def memory_owner(a: np.ndarray) -> Any:
    """The object that owns `a`'s memory: a itself, or the array (or buffer) it views."""
    return a if a.base is None else a.base


def written(a: np.ndarray) -> None:
    """Note an in-place write into `a` (any view of its memory): records made before now that
    saved that memory raise a GraphError at backward instead of using the changed values."""
    global _last_write
    _last_write = s = next(_seq)
    _WRITES[id(memory_owner(a))] = s


def _check_saved(n: Node) -> None:
    """Raise if an array record n saved was written in place after n was made."""
    stack = [n.saved]
    while stack:
        x = stack.pop()
        if type(x) is tuple or type(x) is list:
            stack.extend(x)
        elif isinstance(x, np.ndarray):
            w = _WRITES.get(id(memory_owner(x)))
            if w is not None and w > n.seq:
                op: Any = n.op
                describe = getattr(op, "describe_saved", None)
                what = (describe(n.saved, x) if describe is not None else None) or op.name
                at = (f", recorded at {n.where}" if n.where else
                      " (run the forward under tg.detect_anomaly() to see the line that "
                      "recorded it)")
                raise GraphError(
                    f"{what}: a value of shape {x.shape} ({x.dtype}) that it saved for backward "
                    f"was changed in place after it was recorded{at} (by an optimizer step, "
                    f"load_state_dict, an nn.init function or an in-place write such as "
                    f"`t.data *= 2`). Call backward before changing it, or run the forward "
                    f"again after the change.")


def current_seq() -> int:
    """The sequence number the next record will get (records made from now on are >= it)."""
    return next(_seq)


class Deferred:
    """A weight-gradient contribution a.T @ b (a (N, p), b (N, q)) that is not computed yet.

    `linear`/`matmul` give their weight gradient in this form, one piece per time step. Pieces
    for the same leaf are gathered during the replay and multiplied in one GEMM per block of
    `DEFERRED_ROWS` rows (and at the end), instead of one small product and one addition per
    step. Pieces arrive in descending time order whether or not the unroll is checkpointed, so
    the blocks are the same; within a block the rows are put in ascending time order, so the
    GEMMs, and hence the gradients, are the same to the last bit. The cap bounds memory.
    With `steps`, a and b are (S, n, p) and (S, n, q): S pieces in time order, of which those
    in one block are multiplied as one slice, without being copied."""

    __slots__ = ("a", "b", "steps")

    def __init__(self, a: np.ndarray, b: np.ndarray, steps: bool = False) -> None:
        self.a, self.b, self.steps = a, b, steps

    def value(self) -> np.ndarray:
        if self.steps:
            return sum((a.T @ b for a, b in zip(self.a[::-1], self.b[::-1])),
                       np.zeros((self.a.shape[-1], self.b.shape[-1]), self.a.dtype))
        return self.a.T @ self.b


class Pieces(list):
    """A gradient given as several arrays, added to the input one after another in this order
    (a bias of a stepwise `linear` gets one per time step; see Deferred for why)."""

    rows: np.ndarray | None = None  # the pieces as the rows of one array, if they came so

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> Pieces:
        """The rows of `rows` (n, ...) as n pieces, in row order (iterated as views made on
        demand: a list of T views would cost more memory than the rows at batch 1)."""
        p = cls()
        p.rows = rows
        return p

    def __iter__(self) -> Any:
        return iter(self.rows) if self.rows is not None else list.__iter__(self)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else list.__len__(self)

    def stacked(self) -> np.ndarray:
        """The pieces as one array (n, ...)."""
        return self.rows if self.rows is not None else np.stack(list(list.__iter__(self)))


DEFERRED_ROWS = 1024


class _ReplayState(threading.local):
    """Per-thread state shared by nested replays (a checkpoint replays inside a replay)."""

    depth = 0
    deferred: dict[int, list[Any]]  # id(leaf) -> [leaf, a pieces, b pieces, rows]

    def __init__(self) -> None:
        self.deferred = {}


_Replay = _ReplayState()


def _flush(entry: list[Any]) -> None:
    t, aa, bb, _ = entry  # pieces in arrival order, the latest steps first: reversed here
    a = aa[0] if len(aa) == 1 else np.concatenate(aa[::-1])
    b = bb[0] if len(bb) == 1 else np.concatenate(bb[::-1])
    g = a.T @ b
    if t.grad is None:
        t.grad = g
    else:
        np.add(t.grad, g, out=t.grad)
    entry[1], entry[2], entry[3] = [], [], 0


def _flush_deferred() -> None:
    pending, _Replay.deferred = _Replay.deferred, {}
    for entry in pending.values():
        if entry[3]:
            _flush(entry)


def _defer(t: Tensor, g: Deferred) -> None:
    entry = _Replay.deferred.get(id(t))
    if entry is None:
        entry = _Replay.deferred[id(t)] = [t, [], [], 0]
    if not g.steps:
        entry[1].append(g.a)
        entry[2].append(g.b)
        entry[3] += g.a.shape[0]
        if entry[3] >= DEFERRED_ROWS:
            _flush(entry)
        return
    # as if the steps came one by one, the last first, with each block's steps as one slice
    hi, n = g.a.shape[0], max(g.a.shape[1], 1)
    while hi > 0:
        lo = max(0, hi - max(1, -(-(DEFERRED_ROWS - entry[3]) // n)))  # the steps the block lacks
        entry[1].append(g.a[lo:hi].reshape(-1, g.a.shape[2]))
        entry[2].append(g.b[lo:hi].reshape(-1, g.b.shape[2]))
        entry[3] += (hi - lo) * n
        if entry[3] >= DEFERRED_ROWS:
            _flush(entry)
        hi = lo


def _accumulate(t: Tensor, g: Any) -> None:
    """Add gradient `g` (of t's shape and dtype, or Deferred/Pieces) to where t's gradient lives."""
    m = t._node
    if type(g) is Deferred:
        if m is None and g.a.dtype == g.b.dtype == t.data.dtype:
            _defer(t, g)
            return
        g = g.value().astype(t.dtype, copy=False)
    elif type(g) is _Pending:  # unsummed contributions (see UNSUMMED): they stay unsummed
        if m is None:  # ... except in a leaf, which adds them in arrival order, as the replay does
            for x in g:
                _accumulate(t, x)
        elif m.nout is None:
            m.grad = _extend_pending(m.grad, g)
        else:
            m.grad[t._idx] = _extend_pending(m.grad[t._idx], g)
        return
    elif type(g) is Pieces:
        if m is None:  # a leaf: fold the pieces in, in order
            dtype = t.data.dtype
            if g.rows is not None and g.rows.dtype == dtype:
                rows = np.ascontiguousarray(g.rows)  # in row order (a reversed view is copied)
            else:
                rows = np.stack([p.astype(dtype, copy=False) for p in g])
            if t.grad is not None:
                rows = np.concatenate((t.grad[None], rows))
            if rows.ndim > 1 and rows.shape[-1] > 1:
                # numpy reduces a non-contiguous axis row after row, in order (tested); it is
                # 2-15x faster than add.accumulate, which loops column by column
                t.grad = np.add.reduce(rows, axis=0)
            else:
                acc = rows[0].copy()
                for p in rows[1:]:
                    acc += p
                t.grad = acc
        else:
            for p in g:
                _accumulate(t, p.astype(t.dtype, copy=False))
        return
    if m is None:  # a leaf: .grad is ours, so accumulate in place
        if t.grad is None:
            t.grad = np.array(g, dtype=t.dtype, copy=True)
        else:
            np.add(t.grad, g, out=t.grad)
    elif m.nout is None:
        m.grad = _add_pending(m.grad, g)
    else:
        m.grad[t._idx] = _add_pending(m.grad[t._idx], g)


UNSUMMED: set[Any] = set()
"""Primitives whose backward gets a node's gradient contributions unsummed (a _Pending list, in
arrival order) and may pass them on as its input's gradient, unsummed too. `checkpoint` uses
this so that contributions made inside and outside a checkpointed segment are summed in one
list, in record order, as in the run without checkpoint."""


class _Pending(list):
    """Gradient contributions to one non-leaf output, in arrival (= descending record) order.

    They are summed only when their node is replayed, in ascending record order. The sum then
    does not depend on how the replay is grouped, which is what makes `checkpoint` reproduce
    the plain run's gradients to the last bit."""

    def total(self) -> np.ndarray:
        if len(self) == 1:
            return self[0]
        g = self[-1] + self[-2]
        for c in self[-3::-1]:
            g += c
        return g


def _add_pending(cur: Any, g: np.ndarray) -> Any:
    if cur is None:
        return g
    if type(cur) is _Pending:
        cur.append(g)
        return cur
    return _Pending((cur, g))


def _extend_pending(cur: Any, gs: _Pending) -> _Pending:
    """Contributions `gs`, still unsummed, joined to those a node already has (see UNSUMMED)."""
    if cur is None:
        return _Pending(gs)
    if type(cur) is _Pending:
        cur.extend(gs)
        return cur
    return _Pending((cur, *gs))


def backward(root: Tensor, grad: Any = None, retain_graph: bool = False) -> None:
    """Replay the tape of `root` in reverse, accumulating d(root)/d(leaf) into each leaf's .grad."""
    if not root._requires_grad:
        raise GraphError("backward: this tensor does not require grad and has no recorded "
                         "history (was it created under no_grad, or detached?)")
    data = root.data
    if grad is None:
        if data.size != 1:
            raise ShapeError(f"backward: grad can be omitted only for a root with one element; "
                             f"this root has shape {data.shape}. Pass grad= of that shape")
        g = np.ones_like(data)
    else:
        g = np.asarray(getattr(grad, "data", grad), dtype=data.dtype)
        if g.shape != data.shape:
            raise ShapeError(f"backward: grad of shape {g.shape} does not match the root's "
                             f"shape {data.shape}")
    run_backward([root], [g], retain_graph)


def run_backward(roots: list[Tensor], grads: list[np.ndarray | None], retain_graph: bool = False,
                 since: int = 0) -> None:
    """Seed each root with its gradient and replay the union of their tapes in reverse order.

    Only records made at or after sequence number `since` may be replayed (see `checkpoint`)."""
    pairs = [(t, g) for t, g in zip(roots, grads) if g is not None and t._requires_grad]
    leaves: dict[int, Any] | None = {} if _Replay.depth == 0 else None
    nodes = walk(*[t for t, _ in pairs], since=since, leaves=leaves)
    # the leaves' gradients as they were, to restore if this backward fails half-way (copies
    # only of gradients that already exist, i.e. when accumulating over several backwards)
    before = [(t, None if t.grad is None else t.grad.copy()) for t in leaves.values()] \
        if leaves is not None else None
    _Replay.depth += 1
    ok = False
    try:
        for t, g in pairs:  # seeded only now: a failed walk must leave nothing behind
            _accumulate(t, g)
        _replay(nodes, retain_graph)
        ok = True
    except BaseException as e:
        if before is not None:  # all or nothing: no gradient of the failed backward stays
            _Replay.deferred = {}
            for t, old in before:
                t.grad = old
            why = (f"backward: an earlier backward through this graph raised {type(e).__name__}"
                   f" ({e}) after freeing part of it; the gradients it had accumulated were "
                   f"undone. Run the forward again (with retain_graph=True nothing is freed, so "
                   f"a failed backward can be retried).")
            for n in nodes:
                if n.op is None and n.saved is None:
                    n.saved = why
        raise
    finally:
        _Replay.depth -= 1
        if _Replay.depth == 0 and ok:
            _flush_deferred()
        if not ok:  # leave no half-accumulated gradients behind
            for n in nodes:
                if n.op is not None:
                    n.grad = None if n.nout is None else [None] * n.nout


def _replay(nodes: list[Node], retain_graph: bool) -> None:
    """The hot loop of backward: one iteration per record, latest first."""
    anomaly = get_mode() & ANOMALY
    pending, node_t, port_t, array_t, unsummed = _Pending, Node, Port, np.ndarray, UNSUMMED
    last_write = _last_write
    for n in nodes:
        g = n.grad
        if n.nout is None:
            n.grad = None
            if type(g) is pending and n.op not in unsummed:
                g = g.total()
        else:
            n.grad = [None] * n.nout
            # C-level scans (map), not Python loops: no loop variable may keep a gradient alive
            if pending in map(type, g) and n.op not in unsummed:
                g = [x.total() if type(x) is pending else x for x in g]
            if not any(map(_is_not_none, g)):
                g = None
        if n.retained is not None:
            _store_retained(n, g)
            if not retain_graph:
                n.retained = None
        op = n.op
        if g is not None:
            if last_write > n.seq:  # something was written in place after this record
                _check_saved(n)
            grads_in = op.backward(g, n.saved, n.needs)  # type: ignore[union-attr]
            if len(grads_in) != len(n.inputs):
                raise GraphError(f"{op.name}: backward returned "  # type: ignore[union-attr]
                                 f"{len(grads_in)} gradients for {len(n.inputs)} inputs; return "
                                 f"one per input (None where an input needs none)")
            if anomaly:
                check_finite(op.name, "gradient",  # type: ignore[union-attr]
                             [x.value() if type(x) is Deferred else
                              np.asarray(x) if type(x) is not Pieces else x.stacked()
                              for x in grads_in if x is not None], n.where)
            for t, gi, need in zip(n.inputs, grads_in, n.needs):
                if not need or gi is None:
                    continue
                if type(gi) is not array_t and type(gi) in _SPECIAL:  # Deferred, Pieces, _Pending
                    _accumulate(t, gi)
                    continue
                kind = type(t)
                if kind is node_t or kind is port_t:
                    shape, dtype = t.shape, t.dtype
                else:  # a leaf Tensor
                    shape, dtype = t.data.shape, t.data.dtype
                if gi.shape != shape:
                    gi = unbroadcast(gi, shape, op.name)  # type: ignore[union-attr]
                if gi.dtype is not dtype and gi.dtype != dtype:
                    gi = gi.astype(dtype)
                # _accumulate inlined for the common cases. No local may keep a gradient: it
                # would stay alive after its record is replayed (tested in test_engine).
                if kind is node_t:
                    if t.grad is None:
                        t.grad = gi
                    elif type(t.grad) is pending:
                        t.grad.append(gi)
                    else:
                        t.grad = pending((t.grad, gi))
                elif kind is port_t:  # records hold Ports only for multi-output inputs
                    m, i = t._node, t._idx
                    m.grad[i] = gi if m.grad[i] is None else _add_pending(m.grad[i], gi)
                elif t.grad is None:  # a leaf: .grad is ours, so accumulate in place
                    # a copy: gi may be (a view of) an array kept elsewhere
                    t.grad = gi.copy() if type(gi) is np.ndarray else np.array(gi)
                else:
                    np.add(t.grad, gi, t.grad)
        if not retain_graph:
            n.op = n.inputs = n.saved = None  # type: ignore[assignment]


_SPECIAL = frozenset((Deferred, Pieces, _Pending))  # gradients that _accumulate unpacks
_is_not_none = functools.partial(operator.is_not, None)


def _store_retained(n: Node, g: Any) -> None:
    for t in n.retained or ():
        gi = g if n.nout is None or g is None else g[t._idx]
        if gi is None:
            gi = np.zeros(t.shape, t.dtype)
        elif type(gi) is _Pending:
            gi = gi.total()
        t.grad = np.array(gi, copy=True) if t.grad is None else t.grad + gi
