"""`Primitive`: the base of every differentiable operation, and the registry of built-in ones.

A primitive is a class with two static methods that sit side by side:

    forward(*arrays, **params) -> (output, saved)
    backward(grad_output, saved, needs) -> one gradient (or None) per array input

`needs[i]` says whether input i wants a gradient, so backward may skip work. Gradients may have
the broadcast shape of the output: the engine sums them back to each input's shape. A primitive
with several outputs (`split`) sets `nout = None` and returns a tuple of outputs; its backward
receives a list with one gradient or None per output. Users define their own primitives the same
way and call `MyOp.apply(x, y, **params)`.

Inside a compiled unroll (`nn.unroll(compile=True)`, see scan.py) the cell's step is traced once
and every primitive is then run by a scan, once per time step. A primitive needs nothing more to
work there: the scan calls its forward and backward. Optional declarations, next to forward and
backward, make it faster there (the built-in ones use them; a user's primitive may too):
- `local(saved)`: the part of the derivative that does not depend on g (tanh: 1 - y^2), computed
  once for all T steps on the saved values stacked along a new leading axis; `backward_local(g,
  local_t, saved, needs)` then replaces `backward` per step (`local_for(params)` picks it);
- `forward_code(...)` and `grad_code(params, shapes, out_shape)`: the forward and the per-step
  gradient as lines of code (`{0: "g * d"}`), which the scan inlines into the loops it generates;
- `batches(varying, ndims)`: True if backward also accepts time-varying values stacked along a
  leading time axis with the time-invariant inputs broadcast; a weight's gradient is then one
  backward call over all steps (one GEMM for `linear`) instead of one per step;
- `scan = False`: forward or backward has a side effect (`checkpoint`): a cell applying it runs
  on the per-op tape, with a warning.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, ClassVar

import numpy as np

from .engine import Node
from .mode import ANOMALY, GRAD, TRACE, check_finite, get_mode, user_line, user_source_line
from .errors import ShapeError
from .tensor import Tensor

REGISTRY: dict[str, type[Primitive]] = {}
TRACER: ContextVar[Any] = ContextVar("tinygrad_rnn_tracer", default=None)  # see scan.py
_ndarray = np.ndarray  # globals, not attributes: apply reads them per operation
_from_op = Tensor._from_op


def _not_defined(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("a Primitive subclass defines forward and backward")


def _no_check(cls: Any, *arrays: np.ndarray, **params: Any) -> None:
    pass


def register(cls: type[Primitive]) -> type[Primitive]:
    """Class decorator: add a built-in primitive to `REGISTRY` (our gradient tests walk it)."""
    REGISTRY[cls.name] = cls
    return cls


class Primitive:
    """Base class; see the module docstring for the forward/backward contract."""

    name: ClassVar[str] = "primitive"
    nout: ClassVar[int | None] = 1
    # unsummed: backward gets its output's gradient as the Grad of terms that arrived, not
    # added (checkpoint: so that they are added with the replayed records' in record order)
    unsummed: ClassVar[bool] = False

    # The scan protocol (scan.py): how a compiled unroll runs this primitive at every step.
    # scan: False if forward or backward has a side effect, so the step cannot be replayed.
    scan: ClassVar[bool] = True
    # local(saved) -> what backward needs that does not depend on g, called once on the saved
    # values of all steps stacked along a new leading axis; then backward_local(g, local_t,
    # saved, needs) replaces backward at each step. None: backward runs at each step.
    local: ClassVar[Callable[..., Any] | None] = None

    backward_local: ClassVar[Callable[..., tuple[Any, ...]]] = staticmethod(_not_defined)

    @classmethod
    def forward_code(cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...],
                     out_shape: tuple[int, ...]) -> Any:
        """The forward as code, inlined by the scan when inputs and output share one float
        dtype: (lines, names, saved, buffer_shape, aliases). From the inputs a0, a1, ... the
        lines compute the values `forward` computes, writing the output into `y` (an array of
        buffer_shape: row t of the scan's buffer; several outputs: views y0, y1, ... of it), and
        set `s` to what forward saves. `names`: objects the lines use (np is there). `saved`
        mirrors `s`, naming each part: an input ("a0"), the buffer ("y"), a value the same at
        every step (None) or one made at each step ("step"), so that the scan stacks them over
        time as views, or keeps nothing per step when no part is "step". `aliases`: pairs
        (output index, input name) of outputs that view an input. None: forward is called."""
        return None

    @classmethod
    def grad_code(cls, params: dict[str, Any], shapes: tuple[tuple[int, ...], ...],
                  out_shape: tuple[int, ...]) -> tuple[tuple[str, ...], dict[int, str]] | None:
        """The per-step gradient as code, inlined by the scan when inputs and outputs share one
        dtype: (statements, {input index: expression}) in `g` (the output's gradient; a list
        for several outputs), `s` (what forward saved), `d` (`local`'s value at that step) and
        `np`. Each expression must have its input's shape. An optional third element,
        f(g, saved, needs), gives the weights' gradient, over all steps, from the g the
        statements leave (linear: after its activation's derivative). None: backward is called.
        The statement that makes the array the statements leave in `g` may mark its last call
        argument with `@OUT` (`np.multiply(g, d@OUT)`): where that gradient is stored per step,
        the scan writes it there directly (`, out=<row>`) instead of copying it."""
        return None

    @classmethod
    def local_for(cls, params: dict[str, Any]) -> Callable[..., Any] | None:
        """The `local` to use for an application with these parameters (None: backward)."""
        return cls.local

    @classmethod
    def batches(cls, varying: tuple[bool, ...], ndims: tuple[int, ...]) -> bool:
        """True if forward and backward also accept the time-varying inputs (and saved values)
        stacked along a new leading time axis, the others broadcast: the gradient of a weight
        is then one backward call over all steps. `ndims` are the inputs' per-step ranks."""
        return False

    # forward(*arrays, **params) -> (output, saved); backward(g, saved, needs) -> one gradient
    # or None per input. Typed as callables of any signature: each primitive fixes its own.
    forward: ClassVar[Callable[..., tuple[Any, Any]]] = staticmethod(_not_defined)
    backward: ClassVar[Callable[..., tuple[Any, ...]]] = staticmethod(_not_defined)
    # check(*arrays, **params): called only when forward raised: raise a ShapeError naming the
    # operation and the shapes (the default says nothing more than numpy's message)
    check: ClassVar[Callable[..., None]] = classmethod(_no_check)  # type: ignore[assignment]

    @classmethod
    def apply(cls, *inputs: Tensor, **params: Any) -> Any:
        """Run forward on the inputs' data and, if any input requires grad, record a Node."""
        n = len(inputs)
        try:  # the usual arities spelled out: a comprehension costs as much as a small numpy call
            if n == 2:
                a, b = inputs
                out, saved = (cls.forward(a._data, b._data, **params) if params else
                              cls.forward(a._data, b._data))
                needs: tuple[bool, ...] = (a._requires_grad, b._requires_grad)
            elif n == 1:
                a = inputs[0]
                out, saved = cls.forward(a._data, **params) if params else cls.forward(a._data)
                needs = (a._requires_grad,)
            else:
                out, saved = cls.forward(*[t._data for t in inputs], **params)
                needs = tuple([t._requires_grad for t in inputs])
        except (ValueError, IndexError) as e:
            if isinstance(e, ShapeError):
                raise
            arrays = [t.data for t in inputs]
            cls.check(*arrays, **params)
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ShapeError(f"{cls.name}: {e} (input shapes {shapes})") from None
        single = cls.nout == 1
        if single and type(out) is not _ndarray:
            out = np.asarray(out)
        m = get_mode()
        if m & TRACE:  # inside a traced step (scan.py): an instruction, not a record
            return TRACER.get().record(cls, inputs, params, out)
        node = record(cls, inputs, saved, needs, out if single else None,
                      None if single else len(out)) if m & GRAD and True in needs else None
        if m & ANOMALY:
            check_finite(cls.name, "output", [out] if single else list(out),
                         node.where if node is not None else user_source_line())
        return _from_op(out, node) if single else Tensor._from_outputs(out, node)


def record(op: type[Primitive], inputs: Any, saved: Any, needs: tuple[bool, ...],
           out: np.ndarray | None = None, outputs: int | None = None) -> Node:
    """The Node of `op` applied to `inputs` (Tensors): of one output `out`, or of `outputs`
    outputs. It keeps the leaves, and the records or Ports of recorded inputs, not their data;
    and the user's line, for errors: always for a record with a parameter (a leaf that requires
    grad: what optimiser steps write into), else only under detect_anomaly."""
    entries, parameter = [], False
    for t in inputs:  # engine.port of each, and whether a leaf requires grad
        r = t._ref
        if r is None:
            entries.append(t)
            parameter = parameter or t._requires_grad
        else:
            entries.append(r)
    where = user_line() if parameter or get_mode() & ANOMALY else None
    if out is None:
        return Node(op, tuple(entries), saved, needs, outputs, where)
    return Node(op, tuple(entries), saved, needs, None, where, out.shape, out.dtype)
