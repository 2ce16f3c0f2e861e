"""The tape: how operations are recorded and how `backward` replays them.

Every differentiable operation that has an input requiring grad appends one `Node` to the graph
of its output: the primitive, its inputs (leaf tensors, or the records that produced them), what
the primitive saved for its derivative and a sequence number. Sequence numbers grow in
recording order, so the tape of a root is simply the nodes reachable from it, sorted by sequence
number; `backward` replays that tape from the last record to the first, iteratively (no
recursion, so a 10,000-step unroll is fine), and then frees it.

A gradient is an array, or a `Grad`: the terms that add up to it, not added yet. `accumulate`
is the one place gradients are added: into a record's gradient (kept as terms, summed when the
record is replayed, in record order) or into a leaf's `.grad` (at once). Un-broadcasting
happens there too, once, for every primitive.
"""

from __future__ import annotations

import itertools
import operator
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from . import products
from .errors import GraphError, ShapeError
from .mode import ANOMALY, check_finite, get_mode
from .products import Product

if TYPE_CHECKING:
    from .primitive import Primitive
    from .tensor import Tensor

_seq = itertools.count()
_ndarray = np.ndarray  # a global: accumulate reads it per gradient


class Node:
    """One record of the tape: `op` applied to `inputs`; `grad` collects d(root)/d(output), one
    slot per output (an array, a Grad of terms, or None).

    A single-output record also stands for its output in the records that use it: they need
    only where the gradient goes and its shape and dtype, not the data. So an intermediate
    result nobody saved for backward (a pre-activation, say) is freed as soon as the user drops
    it, and no extra object is made per input. Leaves are kept as Tensors (their .grad is the
    destination); an output of a multi-output record is kept as a `Port`."""

    __slots__ = ("op", "inputs", "saved", "needs", "seq", "grad", "outputs", "where", "retained",
                 "shape", "dtype")
    _requires_grad = requires_grad = True
    _ref = None  # as an input given to primitive.record, a record stands for itself
    _idx = 0  # as an input entry: the gradient slot of its (single) output

    def __init__(self, op: type[Primitive], inputs: tuple[Any, ...], saved: Any,
                 needs: tuple[bool, ...], outputs: int | None = None, where: Any = None,
                 shape: tuple[int, ...] = (), dtype: Any = None) -> None:
        self.op: type[Primitive] | None = op  # None once the record has been freed
        self.inputs = inputs  # leaf Tensors, Nodes (single-output inputs) and Ports
        self.saved = saved
        self.needs = needs
        self.seq = next(_seq)
        self.outputs = outputs  # None: one output (op.nout == 1); else how many
        self.grad: list[Any] = [None] * (outputs or 1)
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
    _ref = None  # as Node's

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


def current_seq() -> int:
    """The sequence number the next record will get (records made from now on are >= it)."""
    return next(_seq)


# ----------------------------------------------------------------------------- gradients
class Grad(list):
    """A gradient as the terms that add up to it, in arrival order (the latest record's first):
    arrays of the target's shape (or broadcast to it) and `Product`s. A backward may return one
    for an input (a weight's product, one term per time step)."""

    def total(self) -> np.ndarray:
        """The sum, in record order (the reverse of arrival): the same bits however the terms
        arrived in groups."""
        terms = [x.value() if type(x) is Product else x for x in reversed(self)]
        if len(terms) == 1:
            return terms[0]
        g = terms[0] + terms[1]
        for x in terms[2:]:
            g += x
        return g

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, steps: bool = False) -> Grad:
        """The gradient a.T @ b (see Product)."""
        return cls((Product(a, b, steps),))


def total(g: Any) -> Any:
    """A gradient (array or Grad) as one array."""
    return g.total() if type(g) is Grad else g


def as_array(g: Any, shape: tuple[int, ...], dtype: Any, op_name: str) -> np.ndarray:
    """Term g as an array of `shape` and `dtype`: an array summed over the axes numpy broadcast,
    a product computed (a (1, q) product is a (q,) bias's)."""
    if type(g) is Product:
        g = g.value()
        if g.shape != shape:
            g = g.reshape(shape)
    elif g.shape != shape:
        g = unbroadcast(g, shape, op_name)
    if g.dtype != dtype:
        g = g.astype(dtype)
    return g


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


def accumulate(t: Any, g: Any, op_name: str = "backward") -> None:
    """Add gradient g (array or Grad) for input entry t (leaf Tensor, Node or Port) of a record
    of `op_name`: a leaf adds each term to .grad as it arrives; a record keeps the terms apart,
    to be added when it is replayed (Grad.total)."""
    if type(g) is Grad:
        for x in g:
            accumulate(t, x, op_name)
        return
    m = t if type(t) is Node else t._node  # (a record's _node is a property: slower)
    if m is None:  # a leaf: .grad is ours, so the term is added in place
        dtype = t._data.dtype
        if type(g) is Product and g.a.dtype == g.b.dtype == dtype:
            products.defer(t, g)
        else:
            g = as_array(g, t._data.shape, dtype, op_name)
            if t.grad is None:
                t.grad = np.array(g, copy=True)  # g may be (a view of) an array kept elsewhere
            else:
                np.add(t.grad, g, t.grad)
        return
    if type(g) is not _ndarray or g.shape != t.shape or g.dtype is not t.dtype \
            and g.dtype != t.dtype:
        g = as_array(g, t.shape, t.dtype, op_name)
    slots, i = m.grad, t._idx
    cur = slots[i]
    if cur is None:
        slots[i] = g
    elif type(cur) is Grad:
        cur.append(g)
    else:
        slots[i] = Grad((cur, g))


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
        if type(x) is tuple or type(x) is list or isinstance(x, tuple):
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


# ----------------------------------------------------------------------------- backward
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
    for r in roots:
        m = r._node
        if m is not None:
            seen.add(m)
        elif leaves is not None:
            leaves[id(r)] = r
    stack = list(seen)
    while stack:
        n = stack.pop()
        if n.op is None:  # freed: by a backward, or by one that failed (its saved says why)
            raise GraphError(n.saved if type(n.saved) is str else _FREED)
        if since and n.seq < since:  # stop at the boundary, before reaching freed records
            raise GraphError("checkpoint: the checkpointed function uses a tensor that was "
                             "computed outside it and is not one of its arguments; pass that "
                             "tensor as an argument (leaves such as parameters are fine)")
        for t in n.inputs:
            m = t if type(t) is Node else t._node
            if m is not None:
                if m not in seen:
                    seen.add(m)
                    stack.append(m)
            elif leaves is not None:
                leaves[id(t)] = t
    return sorted(seen, key=operator.attrgetter("seq"), reverse=True)


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


class _Depth(threading.local):
    n = 0  # this thread's replays in progress (a checkpoint replays inside a replay)


_depth = _Depth()


def run_backward(roots: list[Tensor], grads: list[Any], retain_graph: bool = False,
                 since: int = 0) -> None:
    """Seed each root with its gradient (array or Grad) and replay the union of their tapes in
    reverse order. Only records made at or after sequence number `since` may be replayed (see
    `checkpoint`). All or nothing: if it raises, no leaf keeps a gradient from it."""
    pairs = [(t, g) for t, g in zip(roots, grads) if g is not None and t._requires_grad]
    leaves: dict[int, Any] | None = {} if _depth.n == 0 else None
    nodes = walk(*[t for t, _ in pairs], since=since, leaves=leaves)
    before = [(t, None if t.grad is None else t.grad.copy()) for t in leaves.values()] \
        if leaves is not None else None
    _depth.n += 1
    ok = False
    try:
        for t, g in pairs:  # seeded only now: a failed walk must leave nothing behind
            accumulate(port(t), g)
        _replay(nodes, retain_graph)
        ok = True
    except BaseException as e:
        if before is not None:
            products.discard()
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
        _depth.n -= 1
        if _depth.n == 0 and ok:
            products.flush()
        if not ok:  # leave no half-accumulated gradients behind
            for n in nodes:
                if n.op is not None:
                    n.grad = [None] * (n.outputs or 1)


def _replay(nodes: list[Node], retain_graph: bool) -> None:
    """The loop of backward: one iteration per record, latest first."""
    anomaly, last_write = get_mode() & ANOMALY, _last_write
    for n in nodes:
        op: Any = n.op
        gs = n.grad  # after this record nothing can add to it: emptied only for a next backward
        n.grad = [None] * len(gs) if retain_graph else None  # type: ignore[assignment]
        if n.outputs is None:  # a Grad's terms are added (in record order) unless op.unsummed
            g = gs[0]
            if type(g) is Grad and not op.unsummed:
                g = g.total()
        elif any(x is not None for x in gs):
            g = [x.total() if type(x) is Grad and not op.unsummed else x for x in gs]
        else:
            g = None
        if n.retained is not None:
            _store_retained(n, g)
            if not retain_graph:
                n.retained = None
        if g is not None:
            if last_write > n.seq:  # something was written in place after this record
                _check_saved(n)
            grads_in = op.backward(g, n.saved, n.needs)
            if len(grads_in) != len(n.inputs):
                raise GraphError(f"{op.name}: backward returned {len(grads_in)} gradients for "
                                 f"{len(n.inputs)} inputs; return one per input (None where an "
                                 f"input needs none)")
            if anomaly:
                check_finite(op.name, "gradient", [total(x) for x in grads_in if x is not None],
                             n.where)
            name = op.name
            for t, gi, need in zip(n.inputs, grads_in, n.needs):
                if need and gi is not None:
                    accumulate(t, gi, name)
            g = grads_in = gi = None  # no local may keep a gradient alive past its record
        if not retain_graph:
            n.op = n.inputs = n.saved = None  # type: ignore[assignment]


def _store_retained(n: Node, g: Any) -> None:
    for t in n.retained or ():
        gi = g if n.outputs is None or g is None else g[t._idx]
        gi = np.zeros(t.shape, t.dtype) if gi is None else total(gi)
        t.grad = np.array(gi, copy=True) if t.grad is None else t.grad + gi
