"""The compiled unroll (one `tinygrad_rnn.scan.Scan` record) equals the per-op tape.

`nn.unroll(compile=True)` traces a cell's step and replays it as a scan; `compile=False` runs the
ordinary per-op tape, whose gradients are proven against numpy elsewhere (test_gradients,
test_layers). Here the per-op tape is the only reference: for every cell below both runs get the
same inputs, initial state and parameters, a loss sum(out * G) with fixed random G over the
outputs and every final state part, and must agree on the outputs, the final state and every
gradient (inputs, initial state, each parameter) to a relative 1e-12 in float64. Each compiled
run is checked to have really made a Scan record (and no CompileWarning), so no test compares
the tape with itself.

- `test_random_cell_scan_equals_per_op_tape`: hypothesis builds random steps out of templates
  that together use every registered primitive that can sit in a step (elementwise with
  broadcasting against (H,), (1, H), (B, 1) and 0-d parameters and numbers, reductions with and
  without keepdims, reshape/transpose round trips, slices and index arrays, concat/split/chunk/
  stack/unbind with unused pieces, linear with per-step biases and activations, gates, addcmul,
  lerp, where, maximum, clip, pow, ...) over a state of one or two tensors. A sweep runs every
  template option once and checks that the templates reach every scan-capable primitive.
- `SCAN_CASES`: one small cell per registered primitive; a primitive registered without an entry
  fails `test_every_primitive_runs_in_a_scan`. Primitives with `scan = False` (checkpoint) are in
  `FALLBACK_CASES` instead: the cell must fall back to the per-op tape with a CompileWarning.
- Focused cases: one tensor given twice to a primitive, 0-d values inside a step, one cell
  unrolled again after changes to its sizes, attributes, constants and parameters.
- The built-in cells and layers at several sizes, with and without an initial state.
- Custom cells: tuple, list and nested states, a state part passed through unchanged, swapped
  or never read, outputs that are not the state, `project` returning a tuple, a state built
  from None inside the step (first step per op, then the scan), `step` and `initial_state`.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_rnn as tg
from tinygrad_rnn import nn, ops, scan
from tinygrad_rnn.primitive import REGISTRY, Primitive
from tinygrad_rnn.scan import CompileWarning, Scan

RTOL = 1e-12
F64 = np.float64


def _import_every_module() -> None:
    """A primitive registered in any module of the package must be in REGISTRY here."""
    for info in pkgutil.walk_packages(tg.__path__, prefix="tinygrad_rnn."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed registers nothing
            pass


_import_every_module()


# ======================================================================= running and comparing
@dataclass(frozen=True)
class ScanInfo:
    """A Scan record of a run: the primitives its step program applies, and its steps."""

    ops: frozenset[str]
    steps: int


@dataclass
class Outcome:
    """What one run gave: output values (ys, then the final state parts) and the gradients of the
    inputs (None entries skipped) and then of the parameters, in order."""

    outputs: list[np.ndarray]
    grads: list[np.ndarray | None]
    scans: list[ScanInfo] = field(default_factory=list)  # the Scan records the run made


def leaves_of(tree: Any) -> list[Any]:
    """The Tensors of a nested tuple/list, in order."""
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in leaves_of(t)]
    return [tree]


def scan_records(tensors: list[tg.Tensor]) -> list[Any]:
    """Every Scan record in the graph behind `tensors` (read before backward frees it)."""
    found, seen = [], set()
    todo = [t._node for t in tensors if t._node is not None]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op is Scan:
            found.append(node)
        todo.extend(i._node for i in node.inputs if i._node is not None)
    return found


def scan_info(record: Any) -> ScanInfo:
    """What a Scan record ran (its saved values: the plan, ..., the number of steps, ...)."""
    plan, steps = record.saved[0], record.saved[4]
    assert isinstance(plan, scan.Plan)
    return ScanInfo(frozenset(ins.op.name for ins in plan.instrs), steps)


def evaluate(fn: Callable[..., Any], inputs: list[np.ndarray | None], params: list[tg.Tensor],
             seed: int, check: Callable[[Any], None] | None = None) -> Outcome:
    """fn(*leaves) -> (ys, state) with a fresh requires-grad leaf per input array (None stays
    None), then loss = sum_k sum(out_k * G_k) over ys and every final state part, with fixed
    random G_k (the same for every run with this seed), and backward."""
    for p in params:
        p.grad = None
    leaves = [None if a is None else tg.Tensor(a.copy(), requires_grad=True) for a in inputs]
    out = fn(*leaves)
    if check is not None:
        check(out)
    flat = leaves_of(out)
    scans = [scan_info(r) for r in scan_records(flat)]  # before backward frees them
    rng = np.random.default_rng(seed)
    loss = None
    for t in flat:
        term = (t * tg.Tensor(rng.standard_normal(t.shape))).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    grads = [leaf.grad for leaf in leaves if leaf is not None] + [p.grad for p in params]
    return Outcome([t.data.copy() for t in flat], [None if g is None else np.array(g)
                                                   for g in grads], scans)


def assert_close(got: np.ndarray, want: np.ndarray, what: str, scale: float) -> None:
    """Equal to a relative RTOL, with an absolute slack of RTOL * scale."""
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{what}: {got.shape} {got.dtype} against {want.shape} {want.dtype}"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def assert_same(got: Outcome, want: Outcome) -> None:
    """Compiled (got) against per-op (want): every output and every gradient. The absolute
    slack is RTOL times the largest magnitude in the reference run: a gradient whose terms
    cancel to ~0 keeps rounding residues of the terms' size, which the two runs may sum in
    another order (a missing or doubled term is far larger)."""
    arrays = want.outputs + [g for g in want.grads if g is not None]
    scale = max(float(np.abs(a).max(initial=0.0)) for a in arrays)
    assert len(got.outputs) == len(want.outputs)
    for i, (a, b) in enumerate(zip(got.outputs, want.outputs)):
        assert_close(a, b, f"output {i}", scale)
    assert len(got.grads) == len(want.grads)
    for i, (a, b) in enumerate(zip(got.grads, want.grads)):
        if a is None and b is None:  # e.g. a parameter the step never uses
            continue
        # an input the loss does not depend on: the per-op tape never reaches it (None), the
        # scan, one record for all of them, hands it zeros. The same derivative.
        a = np.zeros_like(b) if a is None else a
        b = np.zeros_like(a) if b is None else b
        assert a.dtype == F64
        assert_close(a, b, f"gradient {i}", scale)


def first_output_is_scan(out: Any) -> None:
    ys = out[0]
    assert ys._node is not None and ys._node.op is Scan, \
        f"the compiled unroll made a {ys._node.op if ys._node else None} record, not a Scan"


def first_output_is_concat(out: Any) -> None:
    ys = out[0]  # the first step's output joined to the scan's (see scan.execute)
    assert ys._node is not None and ys._node.op is ops.Concat, ys._node


@contextmanager
def strict_compile() -> Iterator[None]:
    """A CompileWarning (a silent fall back to the per-op tape) raises inside this context.
    The cell classes' warned-once memory is cleared, so that no earlier warning hides one."""
    scan._WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileWarning)
        yield


def compare_unrolls(cell: Any, inputs: list[np.ndarray | None], params: list[tg.Tensor],
                    build_state: Callable[..., Any], seed: int = 0,
                    expect_scan: str = "ys") -> Outcome:
    """nn.unroll(cell, xs, build_state(*state_leaves)) compiled and per op; returns the compiled
    outcome. expect_scan: "ys" (ys is the Scan record's output) or "inside" (ys is made from a
    first per-op step and a Scan); either way no CompileWarning may be raised."""
    def fn(compile_: bool) -> Callable[..., Any]:
        return lambda xs, *s: nn.unroll(cell, xs, build_state(*s), compile=compile_)

    with strict_compile():
        got = evaluate(fn(True), inputs, params, seed,
                       first_output_is_scan if expect_scan == "ys" else first_output_is_concat)
    assert len(got.scans) == 1, f"expected one Scan record, found {len(got.scans)}"
    want = evaluate(fn(False), inputs, params, seed)
    assert not want.scans
    assert_same(got, want)
    # under no_grad the scan keeps only the outputs and the state (two rows used in turn for a
    # state part): the same outputs, to the bit, as the recorded scan
    with strict_compile(), tg.no_grad():
        quiet = leaves_of(fn(True)(*[None if a is None else tg.Tensor(a.copy())
                                     for a in inputs]))
    assert len(quiet) == len(got.outputs)
    for k, (a, b) in enumerate(zip(quiet, got.outputs)):
        np.testing.assert_array_equal(a.data, b, err_msg=f"output {k} under no_grad")
    return got


# ============================================================================= random cells
@dataclass
class Ctx:
    """What a random step's templates may use besides their operands: sizes, the parameters
    (Tensors the cell closes over) and fixed arrays (masks, index arrays, a numpy matrix)."""

    B: int
    H: int
    P: dict[str, tg.Tensor]
    mask_bh: np.ndarray
    mask_h: np.ndarray
    perm: np.ndarray
    dup: np.ndarray
    fixed: np.ndarray


@dataclass(frozen=True)
class Template:
    """A piece of a random step: `arity` operands (each (B, H)) -> a (B, H) value. `choices`
    lists each option's values (hypothesis samples them, the sweep runs each one)."""

    arity: int
    choices: dict[str, tuple[Any, ...]]
    build: Callable[[list[tg.Tensor], dict[str, Any], Ctx], tg.Tensor]


def _arith(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    P = c.P
    # every form keeps |out| <= max |operands| (times a small factor): no blow-up over a step
    return {
        "add": lambda: (a + b) * 0.5,
        "radd": lambda: 0.25 + a,
        "sub": lambda: (a - b) * 0.5,
        "rsub": lambda: 1.0 - a,
        "sub_bias": lambda: a - P["b"],
        "mul_e": lambda: a * P["e"],
        "mul_r": lambda: P["r"] * a,
        "mul_q": lambda: a * P["q"],
        "mul_alpha": lambda: a * P["alpha"],
        "mul_ab": lambda: tg.tanh(a) * b,
        "rmul": lambda: 0.5 * a,
        "div": lambda: a / (b * b + 1.0),
        "div_param": lambda: a / P["d"],
        "rdiv": lambda: 1.0 / (a * a + 1.0),
        "neg": lambda: -a,
    }[o["form"]]()


def _pow(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    (a,) = v
    p = o["p"]
    # positive integer powers of tanh(a) (|base| <= 1); other powers of a base in [0.5, 1.5]
    base = tg.tanh(a) if float(p).is_integer() and p > 0 else tg.sigmoid(a) + 0.5
    return {"op": lambda: base ** p, "function": lambda: tg.pow(base, p),
            "method": lambda: base.pow(p)}[o["style"]]()


def _unary(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    (a,) = v
    # exp, log and sqrt only see bounded or positive arguments
    return {
        "exp_tanh": lambda: tg.exp(tg.tanh(a)),
        "exp_negsq": lambda: (-(a * a)).exp(),
        "log_sq": lambda: tg.log(a * a + 1.0),
        "log_sigmoid": lambda: tg.sigmoid(a).log(),
        "sqrt_sq": lambda: tg.sqrt(a * a + 1.0),
        "sqrt_exp": lambda: tg.exp(tg.tanh(a)).sqrt(),
        "abs": lambda: tg.abs(a) - 0.5,
        "abs_method": lambda: a.abs(),
        "tanh": lambda: tg.tanh(a),
        "tanh_method": lambda: a.tanh(),
        "sigmoid": lambda: tg.sigmoid(a),
        "sigmoid_method": lambda: a.sigmoid(),
        "relu": lambda: tg.relu(a) - 0.5,
        "relu_method": lambda: a.relu(),
    }[o["fn"]]()


def _clip(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    (a,) = v
    lo, hi = o["bounds"]
    if o["style"] == "function":
        return tg.clip(a, lo=lo, hi=hi) if lo is not None else tg.clip(a, hi=hi)
    return a.clip(lo, hi) if o["style"] == "method" else a.clamp(lo, hi)


def _where(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    m = c.mask_bh if o["mask"] == "bh" else c.mask_h  # fixed: the same at every step
    return {"ab": lambda: tg.where(m, a, b), "a0": lambda: tg.where(m, a, 0.0),
            "1b": lambda: tg.where(m, 1.0, b), "param": lambda: tg.where(m, c.P["e"], a),
            "tensor_mask": lambda: tg.where(tg.Tensor(m), b, a)}[o["form"]]()


def _maximum(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    return {"ab": lambda: tg.maximum(a, b), "a_num": lambda: tg.maximum(a, 0.1),
            "num_a": lambda: tg.maximum(-0.2, a), "param": lambda: tg.maximum(c.P["e"], a),
            "method": lambda: a.maximum(b), "same": lambda: tg.maximum(a, a)}[o["form"]]()


def _reduce(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    kind, axis, keep = o["kind"], o["axis"], o["keepdims"]
    r = (getattr(tg, kind)(a, axis=axis, keepdims=keep) if o["style"] == "function"
         else getattr(a, kind)(axis=axis, keepdims=keep))
    if not keep and axis == -1:
        r = r.reshape(c.B, 1)  # (B,) back to a shape that broadcasts against (B, H)
    return b * tg.tanh(r)  # (B, 1), (1, H), (H,), (1, 1) or 0-d, broadcast back


def _shape(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    (a,) = v
    B, H = c.B, c.H
    return {
        "fold": lambda: a.reshape(B, H // 2, 2).transpose(0, 2, 1).reshape(B, H),
        "flat": lambda: a.reshape(-1).view(B, H),
        "T_param": lambda: (a.T * c.P["v"].reshape(H, 1)).T,
        "swapaxes": lambda: tg.swapaxes(a.reshape(B, H, 1), 1, 2).reshape((B, H)),
        "permute": lambda: a.reshape(B, 2, H // 2).permute(2, 0, 1).permute(1, 2, 0)
        .reshape(B, H),
        "transpose_fn": lambda: tg.reshape(tg.transpose(a.unsqueeze(-1), (2, 0, 1)), (B, H)),
        "squeeze": lambda: a.unsqueeze(0).squeeze(0),
    }[o["form"]]()


def _index(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    (a,) = v
    return {
        "roll": lambda: tg.concat([a[:, 1:], a[:, :1]], axis=-1),
        "reverse": lambda: a[:, ::-1],
        "rows": lambda: a[::-1],
        "perm": lambda: a[:, c.perm],
        "dup": lambda: a[:, c.dup],  # repeated indices: their gradients accumulate
        "newaxis": lambda: a[None][0],
        "ellipsis_list": lambda: a[..., list(c.perm)],
        "row_broadcast": lambda: tg.tanh(a + a[0]),
        "column": lambda: a * a[:, 0:1],
    }[o["form"]]()


def _split(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    H = c.H

    def swapped(pieces: tuple[tg.Tensor, ...], axis: int = -1) -> tg.Tensor:
        return tg.concat(list(pieces[::-1]), axis=axis)

    return {
        "sizes": lambda: swapped(tg.split(a, [1, H - 1], axis=-1)),
        "empty": lambda: swapped(tg.split(a, [0, H], axis=1)),  # a (B, 0) piece
        "int": lambda: swapped(tg.split(a, 3, axis=-1)),
        "chunk": lambda: tg.concat([p * s for p, s in zip(a.chunk(2, -1), (0.5, 1.0))], -1),
        "chunk_fn": lambda: swapped(tg.chunk(a, 2, axis=1)),
        "method": lambda: swapped(a.split([H // 2, H - H // 2], axis=1)),
        "rows": lambda: swapped(tg.split(a, 1, axis=0), axis=0),
        "partial": lambda: b * tg.split(a, [1, H - 1], axis=-1)[0],  # the other piece unused
    }[o["form"]]()


def _stack(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    return {
        "mean0": lambda: tg.stack([a, b], axis=0).mean(axis=0),
        "max_last": lambda: tg.stack([a, b], axis=-1).max(axis=-1),
        "sum1": lambda: tg.stack([a, b, a], axis=1).sum(axis=1) * (1 / 3),
        "unbind1": lambda: tg.stack(list(tg.unbind(a, 1)[::-1]), axis=1),
        "unbind0": lambda: tg.stack(list(a.unbind(0)[::-1]), axis=0),
        "unbind_partial": lambda: b * tg.unbind(a, -1)[0].reshape(c.B, 1),
    }[o["form"]]()


def _linear(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    W, P, act = c.P[o["W"]], c.P, o["act"]
    return {
        "none": lambda: tg.linear(a, W, act=act),
        "b": lambda: tg.linear(a, W, P["b"], act=act),
        "b_b2": lambda: tg.linear(a, W, P["b"], P["b2"], act=act),  # two (H,) biases: fused
        "step": lambda: tg.linear(a, W, b, act=act),  # a bias that changes every step
        "step_b": lambda: tg.linear(a, W, b, P["b"], act=act),
        "none_skipped": lambda: tg.linear(a, W, None, P["b2"], act=act),
        "row": lambda: b * 0.5 + tg.linear(a[0], W, P["b"], act=act),  # a 1-d x
    }[o["bias"]]()


def _matmul(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    (a,) = v
    P = c.P
    return {
        "right": lambda: a @ P["W"],
        "left": lambda: (P["W2"] @ a.T).T,
        "vector": lambda: tg.tanh((a @ P["v"]).reshape(c.B, 1)) * a,
        "function": lambda: tg.matmul(a, P["W2"]),
        "ndarray": lambda: a @ c.fixed,  # a numpy matrix the step closes over
    }[o["form"]]()


GATE_ACTS = (("tanh",), ("sigmoid", "tanh"), ("identity", "relu"), ("identity", "tanh"),
             ("sigmoid", "sigmoid", "identity"), ("sigmoid", "sigmoid", "tanh", "sigmoid"))


def _gates(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b = v
    acts = o["acts"]
    k = len(acts)
    if o["source"] == "concat" and k == 2:
        z = tg.concat([a, b], axis=-1)
    elif o["source"] == "step_bias":
        z = tg.linear(a, c.P[f"Wg{k}"], tg.concat([b] * k, axis=-1))
    else:
        z = tg.linear(a, c.P[f"Wg{k}"], c.P[f"bg{k}"])
    outs = tg.gates(z, acts)
    if o["used"] == "first":  # the other gates get no gradient
        return outs[0]
    total = outs[0]
    for g in outs[1:]:
        total = total + g
    return total * (1.0 / k)


def _addcmul(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b, d = v
    return {
        "param": lambda: tg.addcmul(a * 0.5, b, c.P["e"], value=0.5),
        "method": lambda: (a * 0.5).addcmul(tg.tanh(b), tg.sigmoid(d), value=-0.5),
        "number": lambda: tg.addcmul(a * 0.5, b, 0.25, value=-1),
        "default_value": lambda: tg.addcmul(a * 0.5, tg.tanh(b), d * 0.5),
    }[o["form"]]()


def _lerp(v: list[tg.Tensor], o: dict[str, Any], c: Ctx) -> tg.Tensor:
    a, b, d = v
    return {
        "gate": lambda: tg.lerp(a, b, tg.sigmoid(d)),
        "number": lambda: tg.lerp(a, b, 0.3),
        "param": lambda: tg.lerp(a, b, c.P["w01"]),
        "method": lambda: a.lerp(b, tg.sigmoid(d)),
    }[o["form"]]()


TEMPLATES: dict[str, Template] = {
    "arith": Template(2, {"form": ("add", "radd", "sub", "rsub", "sub_bias", "mul_e", "mul_r",
                                   "mul_q", "mul_alpha", "mul_ab", "rmul", "div", "div_param",
                                   "rdiv", "neg")}, _arith),
    "pow": Template(1, {"p": (2, 3, 2.0, -1, 0.5, 1.5, -0.5),
                        "style": ("op", "function", "method")}, _pow),
    "unary": Template(1, {"fn": ("exp_tanh", "exp_negsq", "log_sq", "log_sigmoid", "sqrt_sq",
                                 "sqrt_exp", "abs", "abs_method", "tanh", "tanh_method",
                                 "sigmoid", "sigmoid_method", "relu", "relu_method")}, _unary),
    "clip": Template(1, {"bounds": ((-1.0, 1.0), (-0.5, None), (None, 0.5)),
                         "style": ("function", "method", "clamp")}, _clip),
    "where": Template(2, {"form": ("ab", "a0", "1b", "param", "tensor_mask"),
                          "mask": ("bh", "h")}, _where),
    "maximum": Template(2, {"form": ("ab", "a_num", "num_a", "param", "method", "same")},
                        _maximum),
    "reduce": Template(2, {"kind": ("sum", "mean", "max", "logsumexp"),
                           "axis": (-1, 0, None, (0, 1)), "keepdims": (True, False),
                           "style": ("function", "method")}, _reduce),
    "shape": Template(1, {"form": ("fold", "flat", "T_param", "swapaxes", "permute",
                                   "transpose_fn", "squeeze")}, _shape),
    "index": Template(1, {"form": ("roll", "reverse", "rows", "perm", "dup", "newaxis",
                                   "ellipsis_list", "row_broadcast", "column")}, _index),
    "split": Template(2, {"form": ("sizes", "empty", "int", "chunk", "chunk_fn", "method",
                                   "rows", "partial")}, _split),
    "stack": Template(2, {"form": ("mean0", "max_last", "sum1", "unbind1", "unbind0",
                                   "unbind_partial")}, _stack),
    "linear": Template(2, {"bias": ("none", "b", "b_b2", "step", "step_b", "none_skipped",
                                    "row"),
                           "act": (None, "tanh", "sigmoid"), "W": ("W", "W2")}, _linear),
    "matmul": Template(1, {"form": ("right", "left", "vector", "function", "ndarray")},
                       _matmul),
    "gates": Template(2, {"acts": GATE_ACTS, "source": ("linear", "concat", "step_bias"),
                          "used": ("all", "first")}, _gates),
    "addcmul": Template(3, {"form": ("param", "method", "number", "default_value")}, _addcmul),
    "lerp": Template(3, {"form": ("gate", "number", "param", "method")}, _lerp),
}

# Registered primitives no template uses, and why; the sweep fails if any other is missing.
NOT_GENERATED = {"checkpoint": "scan = False: a step using it runs per op (FALLBACK_CASES)"}


@dataclass(frozen=True)
class Op:
    template: str
    args: tuple[int, ...]  # indices into the step's values: u (the input), h, [c], results...
    opts: dict[str, Any]


@dataclass(frozen=True)
class Program:
    """A random step and the sizes and seed of its data."""

    T: int
    B: int
    I: int  # noqa: E741
    H: int
    two_states: bool
    ops: tuple[Op, ...]
    inp: str  # how the input enters: "linear", "matmul", "project", "project_tuple"
    mix: str  # the state update reads "all" values (their mean) or only the "last" one
    h_update: str  # "tanh", "lerp", "clip"
    c_update: str  # two states: "pass" (unchanged), "update", "swap"
    state_kind: type  # tuple or list
    y_kind: str  # "state", "value" (one of the step's values), "reduced"
    y_index: int
    seed: int

    def parameters(self) -> dict[str, np.ndarray]:
        g = np.random.default_rng(self.seed)
        H, I = self.H, self.I  # noqa: E741
        u = lambda lo, hi, *shape: g.uniform(lo, hi, shape)  # noqa: E731
        s = 0.6 / np.sqrt(H)  # |W h| stays below about |h|
        p = {"Wx": u(-1, 1, H, I) / np.sqrt(I), "Mx": u(-1, 1, I, H) / np.sqrt(I),
             "bx": u(-0.5, 0.5, H), "W": u(-s, s, H, H), "W2": u(-s, s, H, H),
             "b": u(-0.5, 0.5, H), "b2": u(-0.5, 0.5, H), "e": u(-1, 1, H), "d": u(1, 2, H),
             "w01": u(0.1, 0.9, H), "alpha": np.asarray(g.uniform(0.5, 1.5)),
             "r": u(-1, 1, 1, H), "q": u(-1, 1, self.B, 1), "v": u(-1, 1, H)}
        for k in range(1, 5):
            p[f"Wg{k}"] = u(-s, s, k * H, H)
            p[f"bg{k}"] = u(-0.5, 0.5, k * H)
        return p

    def inputs(self) -> list[np.ndarray]:
        g = np.random.default_rng(self.seed + 1)
        arrays = [g.standard_normal((self.T, self.B, self.I)),
                  g.uniform(-0.9, 0.9, (self.B, self.H))]
        if self.two_states:
            arrays.append(g.uniform(-0.9, 0.9, (self.B, self.H)))
        return arrays

    def cell(self) -> tuple[Any, list[tg.Tensor]]:
        """A fresh cell with fresh Parameters (so runs never share gradients)."""
        P = {k: nn.Parameter(a) for k, a in self.parameters().items()}
        g = np.random.default_rng(self.seed + 2)
        ctx = Ctx(self.B, self.H, P, g.random((self.B, self.H)) < 0.5, g.random(self.H) < 0.5,
                  g.permutation(self.H), g.integers(0, self.H, self.H),
                  g.uniform(-0.5, 0.5, (self.H, self.H)) / self.H)
        cls = ProjectedRandomCell if self.inp.startswith("project") else RandomCell
        return cls(self, ctx), list(P.values())

    def state(self, h: tg.Tensor, c: tg.Tensor | None = None) -> Any:
        return self.state_kind((h, c)) if self.two_states else h


class RandomCell:
    """cell(x_t, state) -> (y_t, new_state) running a Program's step."""

    def __init__(self, prog: Program, ctx: Ctx) -> None:
        self.prog, self.ctx = prog, ctx

    def __call__(self, x: Any, state: Any) -> tuple[tg.Tensor, Any]:
        prog, c, P = self.prog, self.ctx, self.ctx.P
        h, cs = (state[0], state[1]) if prog.two_states else (state, None)
        u = {"linear": lambda: tg.linear(x, P["Wx"], P["bx"]), "matmul": lambda: x @ P["Mx"],
             "project": lambda: x, "project_tuple": lambda: x[0] * 0.5 + x[1]}[prog.inp]()
        values = [u, h] + ([cs] if cs is not None else [])
        for op in prog.ops:
            values.append(TEMPLATES[op.template].build([values[i] for i in op.args], op.opts, c))
        if prog.mix == "all":
            m = values[0]
            for t in values[1:]:
                m = m + t
            m = m * (1.0 / len(values))
        else:
            m = values[-1]
        h_new = {"tanh": lambda: tg.tanh(m), "lerp": lambda: tg.lerp(h, tg.tanh(m), P["w01"]),
                 "clip": lambda: (m * 0.5 + h * 0.5).clip(-2.0, 2.0)}[prog.h_update]()
        if cs is None:
            new_state: Any = h_new
        else:
            parts = {"pass": (h_new, cs), "update": (h_new, tg.lerp(cs, tg.tanh(m), 0.5)),
                     "swap": (cs, h_new)}[prog.c_update]
            new_state = prog.state_kind(parts)
        y = {"state": lambda: h_new, "value": lambda: values[prog.y_index % len(values)],
             "reduced": lambda: h_new.sum(axis=-1)}[prog.y_kind]()
        return y, new_state


class ProjectedRandomCell(RandomCell):
    """The same with the input projection done once for the whole sequence by `project`."""

    def project(self, xs: tg.Tensor) -> Any:
        P = self.ctx.P
        if self.prog.inp == "project_tuple":
            return tg.linear(xs, P["Wx"], P["bx"]), xs @ P["Mx"]
        return tg.linear(xs, P["Wx"], P["bx"])


@st.composite
def programs(draw: Any) -> Program:
    two = draw(st.booleans())
    ops_: list[Op] = []
    n_values = 3 if two else 2
    for _ in range(draw(st.integers(1, 7))):
        name = draw(st.sampled_from(sorted(TEMPLATES)))
        tpl = TEMPLATES[name]
        # operands: any earlier value, so the input, the state and results all get reused
        args = tuple(draw(st.integers(0, n_values - 1)) for _ in range(tpl.arity))
        opts = {k: draw(st.sampled_from(v)) for k, v in tpl.choices.items()}
        ops_.append(Op(name, args, opts))
        n_values += 1
    return Program(
        T=draw(st.integers(2, 4)), B=draw(st.integers(1, 2)), I=draw(st.sampled_from([1, 3])),
        H=draw(st.sampled_from([2, 4])), two_states=two, ops=tuple(ops_),
        inp=draw(st.sampled_from(["linear", "matmul", "project", "project_tuple"])),
        mix=draw(st.sampled_from(["all", "all", "last"])),
        h_update=draw(st.sampled_from(["tanh", "lerp", "clip"])),
        c_update=draw(st.sampled_from(["pass", "update", "swap"])),
        state_kind=draw(st.sampled_from([tuple, list])),
        y_kind=draw(st.sampled_from(["state", "value", "reduced"])),
        y_index=draw(st.integers(0, 20)), seed=draw(st.integers(0, 2**31)))


def check_program(prog: Program) -> set[str]:
    """Compiled against per-op for one random program; returns the primitives its scan ran."""
    cell, params = prog.cell()
    got = compare_unrolls(cell, prog.inputs(), params, prog.state, seed=prog.seed)
    return set(got.scans[0].ops)


@settings(max_examples=300)  # a program costs ~15 ms: wide coverage on every run, CI's too
@given(prog=programs())
def test_random_cell_scan_equals_per_op_tape(prog: Program) -> None:
    """Random steps over the public primitives: compiled == per-op (outputs, all gradients)."""
    check_program(prog)


def _sweep() -> list[tuple[str, dict[str, Any]]]:
    """Every option value of every template once (the other options at their first value)."""
    cases = []
    for name, tpl in sorted(TEMPLATES.items()):
        first = {k: v[0] for k, v in tpl.choices.items()}
        for key, values in tpl.choices.items():
            for value in values if key == next(iter(tpl.choices)) else values[1:]:
                cases.append((name, {**first, key: value}))
    return cases


SWEEP = _sweep()


def _sweep_program(name: str, opts: dict[str, Any], k: int) -> Program:
    arity = TEMPLATES[name].arity
    return Program(T=3, B=2, I=3, H=4, two_states=True, ops=(Op(name, (0, 1, 2)[:arity], opts),),
                   inp=("linear", "matmul", "project", "project_tuple")[k % 4], mix="all",
                   h_update="tanh", c_update="update", state_kind=tuple, y_kind="state",
                   y_index=0, seed=k)


def test_template_sweep_covers_every_scannable_primitive() -> None:
    """Each template option once, compiled vs per-op; together they run every primitive of
    REGISTRY but those in NOT_GENERATED inside a scan."""
    seen: set[str] = set()
    for k, (name, opts) in enumerate(SWEEP):
        try:
            seen |= check_program(_sweep_program(name, opts, k))
        except AssertionError as e:
            raise AssertionError(f"template {name} with {opts}: {e}") from None
    missing = sorted(set(REGISTRY) - set(NOT_GENERATED) - seen)
    assert not missing, (f"registered primitives no random-cell template produces: {missing}; "
                         f"add a template (or a reason to NOT_GENERATED)")


# ======================================================================= one case per primitive
B_, H_, T_ = 2, 4, 4  # sizes of the per-primitive cases (input size = H_)


def _case_params(seed: int = 7) -> dict[str, tg.Tensor]:
    g = np.random.default_rng(seed)
    s = 0.6 / np.sqrt(H_)
    return {"W": nn.Parameter(g.uniform(-s, s, (H_, H_))),
            "Wg": nn.Parameter(g.uniform(-s, s, (2 * H_, H_))),
            "bg": nn.Parameter(g.uniform(-0.5, 0.5, 2 * H_)),
            "b": nn.Parameter(g.uniform(-0.5, 0.5, H_)), "e": nn.Parameter(g.uniform(-1, 1, H_)),
            "w01": nn.Parameter(g.uniform(0.1, 0.9, H_)),
            "v": nn.Parameter(g.uniform(-1, 1, (H_, 1)))}


MASK = np.array([[True, False, True, True], [False, False, True, False]])
Step = Callable[[tg.Tensor, tg.Tensor, dict[str, tg.Tensor]], tg.Tensor]


def _split_case(x: tg.Tensor, h: tg.Tensor, P: dict[str, tg.Tensor]) -> tg.Tensor:
    a, b = tg.split(h, [1, H_ - 1], axis=1)
    return tg.tanh(x + tg.concat([b, a * P["e"][:1]], axis=1))


def _gates_case(x: tg.Tensor, h: tg.Tensor, P: dict[str, tg.Tensor]) -> tg.Tensor:
    i, g = tg.gates(tg.linear(h, P["Wg"], P["bg"]), ("sigmoid", "tanh"))
    return i * g + x * 0.5


# name -> new h from (x_t, h, parameters); each must make its primitive run inside the scan
SCAN_CASES: dict[str, Step] = {
    "add": lambda x, h, P: tg.tanh(x + h),
    "sub": lambda x, h, P: tg.tanh(x - h * 0.5 - P["b"]),
    "mul": lambda x, h, P: tg.tanh(x * P["e"] + h),
    "div": lambda x, h, P: x / (tg.sigmoid(h) + 0.5) + h / (P["w01"] + 1.0),
    "neg": lambda x, h, P: tg.tanh(-h + x),
    "pow": lambda x, h, P: tg.tanh(h) ** 3 + (tg.sigmoid(x) + 0.5) ** -0.5,
    "matmul": lambda x, h, P: tg.tanh(x + h @ P["W"]),
    "linear": lambda x, h, P: tg.linear(h, P["W"], x, P["b"], act="tanh"),
    "exp": lambda x, h, P: tg.exp(tg.tanh(h)) * 0.5 + x,
    "log": lambda x, h, P: tg.log(tg.sigmoid(h) + 0.5) + x * 0.5,
    "tanh": lambda x, h, P: tg.tanh(x + h),
    "sigmoid": lambda x, h, P: tg.sigmoid(x + h),
    "relu": lambda x, h, P: tg.relu(x + h * 0.5),
    "sqrt": lambda x, h, P: tg.sqrt(tg.sigmoid(h) + 0.5) + x,
    "abs": lambda x, h, P: tg.abs(h) * 0.5 - x,
    "clip": lambda x, h, P: (x + h).clip(-0.5, 0.5),
    "where": lambda x, h, P: tg.where(MASK, tg.tanh(x + h), h * P["e"]),
    "maximum": lambda x, h, P: tg.maximum(x, h * 0.5),
    "sum": lambda x, h, P: tg.tanh(h.sum(axis=-1, keepdims=True) + x),
    "mean": lambda x, h, P: tg.tanh(h - h.mean(axis=0, keepdims=True) + x),
    "max": lambda x, h, P: tg.tanh(x + h.max(axis=-1, keepdims=True)),
    "logsumexp": lambda x, h, P: tg.tanh(x - tg.logsumexp(h, axis=-1, keepdims=True)),
    "reshape": lambda x, h, P: tg.tanh(x + h.reshape(B_, 2, H_ // 2).reshape(-1, H_)),
    "transpose": lambda x, h, P: tg.tanh(x + (h.T * P["v"]).T),
    "getitem": lambda x, h, P: tg.tanh(x + h[:, ::-1] * P["e"][None]),
    "concat": lambda x, h, P: tg.tanh(x + tg.concat([h[:, 1:], h[:, :1]], axis=1)),
    "stack": lambda x, h, P: tg.tanh(tg.stack([x, h * P["e"]], axis=0).sum(axis=0)),
    "split": _split_case,
    "gates": _gates_case,
    "unbind": lambda x, h, P: tg.tanh(x + tg.stack(list(tg.unbind(h, 1)[::-1]), axis=1)),
    "addcmul": lambda x, h, P: tg.tanh(tg.addcmul(x, h, P["e"], value=0.5)),
    "lerp": lambda x, h, P: tg.lerp(h, tg.tanh(x), P["w01"]),
}


class CaseCell:
    """A cell whose new state (and output) is step(x_t, h, parameters)."""

    def __init__(self, step: Step, params: dict[str, tg.Tensor]) -> None:
        self.fn, self.P = step, params

    def __call__(self, x: tg.Tensor, h: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        h = self.fn(x, h, self.P)
        return h, h


def _checkpoint_state(x: tg.Tensor, h: tg.Tensor, P: dict[str, tg.Tensor]) -> tg.Tensor:
    return tg.checkpoint(lambda a, s: tg.tanh(a + s @ P["W"]), x, h)  # the whole step


def _checkpoint_input(x: tg.Tensor, h: tg.Tensor, P: dict[str, tg.Tensor]) -> tg.Tensor:
    return tg.tanh(tg.checkpoint(lambda a: a * P["e"], x) + h @ P["W"])  # only the input part


# name -> steps using a primitive with `scan = False`: unroll must run them on the per-op tape
FALLBACK_CASES: dict[str, tuple[Step, ...]] = {"checkpoint": (_checkpoint_state,
                                                              _checkpoint_input)}
FALLBACK_IDS = [(name, k) for name, steps in sorted(FALLBACK_CASES.items())
                for k in range(len(steps))]


def test_every_primitive_runs_in_a_scan() -> None:
    """Every registered primitive has a scan case (or, with scan = False, a fall-back case)."""
    missing = sorted(set(REGISTRY) - set(SCAN_CASES) - set(FALLBACK_CASES))
    assert not missing, (f"primitives without a scan case: {missing}; add an entry to SCAN_CASES "
                         f"(or FALLBACK_CASES) in tests/test_scan_equivalence.py")
    assert not set(SCAN_CASES) & set(FALLBACK_CASES)


def test_fallback_cases_are_exactly_the_scan_false_primitives() -> None:
    """A primitive is in FALLBACK_CASES if and only if it declares `scan = False`."""
    declared = {n for n, cls in REGISTRY.items() if not cls.scan}
    assert declared == set(FALLBACK_CASES), (
        f"scan = False: {sorted(declared)}; FALLBACK_CASES: {sorted(FALLBACK_CASES)}")


def _case_inputs(seed: int, T: int = T_) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.standard_normal((T, B_, H_)), g.uniform(-0.9, 0.9, (B_, H_))]


@pytest.mark.parametrize("name", sorted(SCAN_CASES))
def test_primitive_in_a_scan(name: str) -> None:
    """The primitive's case cell, compiled vs per-op; the scan's program really applies it."""
    P = _case_params()
    cell = CaseCell(SCAN_CASES[name], P)
    got = compare_unrolls(cell, _case_inputs(3), list(P.values()), lambda h: h, seed=4)
    assert name in got.scans[0].ops, f"the {name} case does not use {name} in its scan"


def _expect_fallback(run: Callable[[], Any]) -> tuple[Any, list[str]]:
    """run()'s result and the CompileWarnings it raised (warned-once memory cleared first)."""
    scan._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run()
    return out, [str(w.message) for w in caught if issubclass(w.category, CompileWarning)]


@pytest.mark.parametrize("name,k", FALLBACK_IDS)
def test_scan_false_primitive_falls_back(name: str, k: int) -> None:
    """A step using a scan = False primitive: the same results as per op, and a CompileWarning
    that names the reason."""
    P = _case_params()
    cell = CaseCell(FALLBACK_CASES[name][k], P)
    params = list(P.values())

    def fn(compile_: bool) -> Callable[..., Any]:
        return lambda xs, h: nn.unroll(cell, xs, h, compile=compile_)

    got, found = _expect_fallback(lambda: evaluate(fn(True), _case_inputs(5), params, 6))
    want = evaluate(fn(False), _case_inputs(5), params, 6)
    assert not got.scans
    assert_same(got, want)
    assert found and all("scan = False" in m for m in found), found


@pytest.mark.parametrize("name,k", FALLBACK_IDS)
def test_scan_false_primitive_falls_back_without_gradients(name: str, k: int,
                                                           monkeypatch: Any) -> None:
    """The same without gradients and with the first two input slices equal, so that both
    traced steps see the same values: the step must still run per op, not be frozen."""
    P = {n: tg.Tensor(p.data) for n, p in _case_params().items()}  # constants: no gradients
    cell = CaseCell(FALLBACK_CASES[name][k], P)
    xs, h0 = _case_inputs(8, T=5)
    xs[1] = xs[0]
    scans: list[int] = []
    run = scan.run
    monkeypatch.setattr(scan, "run", lambda *a: (scans.append(1), run(*a))[1])  # no record here
    (got, _), found = _expect_fallback(lambda: nn.unroll(cell, xs, tg.Tensor(h0)))
    want, _ = nn.unroll(cell, xs, tg.Tensor(h0), compile=False)
    assert_close(got.data, want.data, "ys", float(np.abs(want.data).max()))
    assert not scans, "a step using a scan = False primitive was compiled"
    assert found and all("scan = False" in m for m in found), found


class _Tally(Primitive):
    """x + 1 that counts its backward calls: a side effect, hence scan = False. Not registered."""

    name = "tally"
    scan = False
    calls = 0

    @staticmethod
    def forward(x):
        return x + 1.0, None

    @staticmethod
    def backward(g, saved, needs):
        _Tally.calls += 1
        return (g,)


def test_a_primitive_declaring_scan_false_makes_unroll_fall_back() -> None:
    """The mechanism itself, with a primitive of our own: warning, per-op run, same results."""
    P = _case_params()
    cell = CaseCell(lambda x, h, P: tg.tanh(_Tally.apply(x) + h @ P["W"]), P)
    params = list(P.values())

    def fn(compile_: bool) -> Callable[..., Any]:
        return lambda xs, h: nn.unroll(cell, xs, h, compile=compile_)

    _Tally.calls = 0
    got, found = _expect_fallback(lambda: evaluate(fn(True), _case_inputs(9), params, 1))
    assert _Tally.calls == T_  # its backward ran once per step: per op
    want = evaluate(fn(False), _case_inputs(9), params, 1)
    assert not got.scans
    assert_same(got, want)
    assert len(found) == 1 and "scan = False" in found[0] and "tally" in found[0]


# ===================================================================== built-in cells and layers
SIZES = [(2, 1, 3, 2), (3, 2, 4, 3), (40, 3, 5, 4)]  # (T, B, H, I)
CELL_KINDS = {"rnn_tanh": (nn.RNNCell, {"nonlinearity": "tanh"}),
              "rnn_relu": (nn.RNNCell, {"nonlinearity": "relu"}),
              "lstm": (nn.LSTMCell, {}), "gru": (nn.GRUCell, {})}


@pytest.mark.parametrize("kind", sorted(CELL_KINDS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}-B{}-H{}-I{}".format(*s))
@pytest.mark.parametrize("with_state", [True, False])
def test_builtin_cell(kind: str, bias: bool, size: tuple[int, ...], with_state: bool) -> None:
    """nn.unroll of a built-in cell, compiled vs per-op, given an initial state or None."""
    T, B, H, I = size  # noqa: E741
    cls, kw = CELL_KINDS[kind]
    tg.manual_seed(11)
    cell = cls(I, H, bias=bias, dtype=F64, **kw)
    g = np.random.default_rng(12)
    inputs: list[np.ndarray | None] = [g.standard_normal((T, B, I))]
    n_state = 2 if kind == "lstm" else 1
    inputs += [g.uniform(-0.9, 0.9, (B, H)) if with_state else None for _ in range(n_state)]

    def state(*parts: Any) -> Any:
        if parts[0] is None:
            return None  # the cell's initial_state: zeros
        return tuple(parts) if kind == "lstm" else parts[0]

    compare_unrolls(cell, inputs, list(cell.parameters()), state, seed=13)


LAYER_KINDS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
LAYER_CONFIGS = {
    "plain": {}, "two_layers": {"num_layers": 2}, "bidirectional": {"bidirectional": True},
    "batch_first": {"batch_first": True}, "no_bias": {"bias": False},
    "all": {"num_layers": 2, "bidirectional": True, "batch_first": True},
}


def compare_layers(layer: Any, inputs: list[np.ndarray | None], n_unrolls: int, seed: int,
                   state: Callable[..., Any]) -> None:
    """layer(x, state(...)) with layer.compile True and False: same outputs and gradients, and
    the compiled run made one Scan record per (layer, direction) without a warning."""
    params = list(layer.parameters())

    def fn(*leaves: Any) -> Any:
        return layer(leaves[0], state(*leaves[1:]))

    layer.compile = True
    with strict_compile():
        got = evaluate(fn, inputs, params, seed)
    layer.compile = False
    want = evaluate(fn, inputs, params, seed)
    assert len(got.scans) == n_unrolls and not want.scans
    assert_same(got, want)


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
@pytest.mark.parametrize("config", sorted(LAYER_CONFIGS))
@pytest.mark.parametrize("size", SIZES[:2] + [(40, 2, 3, 2)],
                         ids=lambda s: "T{}-B{}-H{}-I{}".format(*s))
@pytest.mark.parametrize("with_state", [True, False])
def test_builtin_layer(kind: str, config: str, size: tuple[int, ...], with_state: bool) -> None:
    """nn.RNN/LSTM/GRU, compiled vs per-op: output, final states, input, state and parameter
    gradients."""
    T, B, H, I = size  # noqa: E741
    kw = LAYER_CONFIGS[config]
    tg.manual_seed(21)
    layer = LAYER_KINDS[kind](I, H, dtype=F64, **kw)
    L, D = kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1
    g = np.random.default_rng(22)
    x = g.standard_normal((B, T, I) if kw.get("batch_first") else (T, B, I))
    n_state = 2 if kind == "lstm" else 1
    inputs = [x] + [g.uniform(-0.9, 0.9, (L * D, B, H)) if with_state else None
                    for _ in range(n_state)]

    def state(*parts: Any) -> Any:
        if parts[0] is None:
            return None
        return tuple(parts) if kind == "lstm" else parts[0]

    compare_layers(layer, inputs, L * D, 23, state)


def test_relu_rnn_layer_and_recurrent_wrapper() -> None:
    """nn.RNN(nonlinearity='relu', 2 layers) and nn.Recurrent(batch_first=True) of a cell."""
    tg.manual_seed(31)
    layer = nn.RNN(3, 4, num_layers=2, nonlinearity="relu", dtype=F64)
    g = np.random.default_rng(32)
    compare_layers(layer, [g.standard_normal((6, 2, 3)), g.uniform(-1, 1, (2, 2, 4))], 2, 33,
                   lambda h: h)
    wrapper = nn.Recurrent(nn.GRUCell(3, 4, dtype=F64), batch_first=True)
    compare_layers(wrapper, [g.standard_normal((2, 6, 3)), g.uniform(-1, 1, (2, 4))], 1, 34,
                   lambda h: h)


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_builtin_layer_with_checkpoint_every(kind: str) -> None:
    """A compiled layer in checkpointed segments equals the per-op one (no fall back)."""
    tg.manual_seed(41)
    layer = LAYER_KINDS[kind](3, 4, num_layers=2, dtype=F64, checkpoint_every=3)
    g = np.random.default_rng(42)
    params = list(layer.parameters())
    x = g.standard_normal((7, 2, 3))
    layer.compile = True
    with strict_compile():
        got = evaluate(lambda t: layer(t), [x], params, 43)
    layer.compile = False
    assert_same(got, evaluate(lambda t: layer(t), [x], params, 43))


# ============================================================================= custom cells
def _param(g: np.random.Generator, *shape: int, scale: float = 0.5) -> nn.Parameter:
    return nn.Parameter(g.uniform(-scale, scale, shape))


class TwoStates(nn.Module):
    """State (h, c), both updated: an LSTM-like cell written with plain primitives."""

    def __init__(self, I: int, H: int, seed: int = 0) -> None:  # noqa: E741
        super().__init__()
        g = np.random.default_rng(seed)
        self.U, self.W, self.b = _param(g, H, I), _param(g, H, H), _param(g, H)

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        h, c = state
        z = tg.linear(h, self.W, x @ self.U.T, self.b)
        f = tg.sigmoid(z)
        c = f * c + (1.0 - f) * tg.tanh(z)
        h = tg.tanh(c) * tg.sigmoid(h)
        return h, (h, c)


class PassThrough(TwoStates):
    """State (h, k) whose k is read every step but returned unchanged."""

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        h, k = state
        h = tg.tanh(tg.linear(h, self.W, x @ self.U.T) + k * self.b)
        return h, (h, k)


class Swapped(TwoStates):
    """State (a, b) -> (b, f(a, b, x)): the parts trade places every step (a list state)."""

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        a, b = state
        new = tg.tanh(tg.linear(a, self.W, x @ self.U.T) + b * self.b)
        return new, [b, new]


class Nested(TwoStates):
    """A nested state (h, (c1, c2)) with the inner pair updated and passed on."""

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        h, (c1, c2) = state
        c1 = tg.lerp(c1, tg.tanh(x @ self.U.T), 0.5)
        h = tg.tanh(tg.linear(h, self.W, c1, c2 * self.b))
        return h * 2.0, (h, (c1, c2))


class OutputNotState(TwoStates):
    """y_t = V h_t + x_t-dependent term, of another width than the state."""

    def __init__(self, I: int, H: int, seed: int = 0) -> None:  # noqa: E741
        super().__init__(I, H, seed)
        g = np.random.default_rng(seed + 1)
        self.V, self.Vx = _param(g, H + 1, H), _param(g, H + 1, I)

    def forward(self, x: Any, h: Any) -> tuple[Any, Any]:
        h = tg.tanh(tg.linear(h, self.W, x @ self.U.T, self.b))
        return tg.linear(h, self.V, tg.linear(x, self.Vx)), h


class DelayedOutput(TwoStates):
    """y_t is the state the step received (h_{t-1}), not the one it returns."""

    def forward(self, x: Any, h: Any) -> tuple[Any, Any]:
        return h, tg.tanh(tg.linear(h, self.W, x @ self.U.T, self.b))


class EchoInput(TwoStates):
    """y_t is the step's input slice itself."""

    def forward(self, x: Any, h: Any) -> tuple[Any, Any]:
        return x, tg.tanh(tg.linear(h, self.W, x @ self.U.T, self.b))


class UnreadPart(TwoStates):
    """State (h, m) where m' comes from the input alone and the next step never reads m: only
    the last step's m' reaches the loss (through the final state)."""

    def __init__(self, I: int, H: int, seed: int = 0) -> None:  # noqa: E741
        super().__init__(I, H, seed)
        self.M = _param(np.random.default_rng(seed + 3), H, I)

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        h, _ = state
        h = tg.tanh(tg.linear(h, self.W, x @ self.U.T, self.b))
        m = tg.tanh((self.M @ x.T).T)  # M only here, on the left: its gradient comes per step
        return h, (h, m)


class TupleProject(TwoStates):
    """`project` returns two (T, B, H) tensors; the step gets a tuple of their slices."""

    def __init__(self, I: int, H: int, seed: int = 0) -> None:  # noqa: E741
        super().__init__(I, H, seed)
        self.U2 = _param(np.random.default_rng(seed + 2), H, I)
        self.project_calls = 0

    def project(self, xs: Any) -> Any:
        self.project_calls += 1
        return tg.linear(xs, self.U, self.b), xs @ self.U2.T

    def forward(self, xp: Any, h: Any) -> tuple[Any, Any]:
        xa, xb = xp
        z = tg.sigmoid(xb + h @ self.W.T)
        h = tg.lerp(h, tg.linear(h, self.W, xa, act="tanh"), z)
        return h, h


class ZerosWhenNone(TwoStates):
    """Starts from zeros it builds itself when the state is None (no initial_state)."""

    def forward(self, x: Any, h: Any) -> tuple[Any, Any]:
        if h is None:
            h = tg.Tensor(np.zeros((x.shape[0], self.W.shape[0])))
        h = tg.tanh(tg.linear(h, self.W, x @ self.U.T, self.b))
        return h, h


class PairWhenNone(TwoStates):
    """The same with a (h, c) state built from None."""

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        if state is None:
            zeros = np.zeros((x.shape[0], self.W.shape[0]))
            state = (tg.Tensor(zeros), tg.Tensor(zeros.copy()))
        return super().forward(x, state)


class StepAndInitialState(TwoStates):
    """A `step` (used instead of calling the cell) and an `initial_state` (used for None)."""

    def forward(self, x: Any, state: Any) -> Any:
        raise AssertionError("unroll must call step, not the cell")

    def step(self, x: Any, state: Any) -> tuple[Any, Any]:
        return TwoStates.forward(self, x, state)

    def initial_state(self, batch_size: int) -> Any:
        h = np.full((batch_size, self.W.shape[0]), 0.1)
        return tg.Tensor(h), tg.Tensor(-h)


def _one(h: Any) -> Any:
    return h


def _pair(h: Any, c: Any) -> Any:
    return (h, c)


def _nested(h: Any, c1: Any, c2: Any) -> Any:
    return (h, (c1, c2))


def _none(*_: Any) -> Any:
    return None


# name -> (cell class, number of state parts given, how the state is built, expect_scan)
CUSTOM = {
    "two_states": (TwoStates, 2, _pair, "ys"),
    "pass_through": (PassThrough, 2, _pair, "ys"),
    "swapped_list": (Swapped, 2, lambda a, b: [a, b], "ys"),
    "nested": (Nested, 3, _nested, "ys"),
    "output_not_state": (OutputNotState, 1, _one, "ys"),
    "unread_state_part": (UnreadPart, 2, _pair, "ys"),
    "delayed_output": (DelayedOutput, 1, _one, "ys"),
    "echo_input": (EchoInput, 1, _one, "ys"),
    "tuple_project": (TupleProject, 1, _one, "ys"),
    "zeros_when_none": (ZerosWhenNone, 0, _none, "inside"),  # first step per op, then a scan
    "pair_when_none": (PairWhenNone, 0, _none, "inside"),
    "step_and_initial_state": (StepAndInitialState, 0, _none, "ys"),
}


@pytest.mark.parametrize("name", sorted(CUSTOM))
@pytest.mark.parametrize("T,B", [(3, 1), (3, 2), (8, 2)])
def test_custom_cell(name: str, T: int, B: int) -> None:
    """Custom cells with unusual states and outputs: compiled vs per-op."""
    cls, n_state, state, expect = CUSTOM[name]
    I, H = 3, 4  # noqa: E741
    cell = cls(I, H, seed=T + B)
    g = np.random.default_rng(T * B)
    inputs = [g.standard_normal((T, B, I))] + [g.uniform(-0.9, 0.9, (B, H))
                                               for _ in range(n_state)]
    got = compare_unrolls(cell, inputs, list(cell.parameters()), state, seed=5,
                          expect_scan=expect)
    if expect == "inside":  # ys = concat(first step, the scan's steps)
        assert got.scans[0].steps == T - 1  # the scan ran the T - 1 later steps


# steps in which one primitive gets the same tensor as two (or three) of its inputs
TWICE: dict[str, Step] = {
    "x * x": lambda x, h, P: tg.tanh(x * x + h),
    "h * h": lambda x, h, P: tg.tanh(x + h * h),
    "h + h": lambda x, h, P: tg.tanh(x + (h + h) * 0.5),
    "maximum(h, h)": lambda x, h, P: tg.tanh(x + tg.maximum(h, h)),
    "concat([h, h])": lambda x, h, P: tg.tanh(x + tg.concat([h, h], axis=-1)[:, 1:H_ + 1]),
    "stack([h, h])": lambda x, h, P: tg.tanh(x + tg.stack([h, h], axis=0).sum(axis=0)),
    "addcmul(h, h, h)": lambda x, h, P: tg.tanh(x + tg.addcmul(h, h, h, value=0.5)),
    "linear(h, W, h)": lambda x, h, P: tg.linear(h, P["W"], h, x, act="tanh"),
    "h * h, h used after": lambda x, h, P: tg.tanh(x + h * h) * h,
}


@pytest.mark.parametrize("name", sorted(TWICE))
def test_same_tensor_twice_in_one_primitive(name: str) -> None:
    """A primitive whose inputs are one tensor twice sends both contributions back."""
    P = _case_params()
    compare_unrolls(CaseCell(TWICE[name], P), _case_inputs(14), list(P.values()), _one, seed=15)


# steps with a 0-d value inside (a reduction over all axes) that goes through more primitives
ZERO_D: dict[str, Step] = {
    "tanh(sum)": lambda x, h, P: tg.tanh(x + h * tg.tanh(h.sum())),
    "sigmoid(mean)": lambda x, h, P: tg.tanh(x + h * tg.sigmoid(tg.mean(h))),
    "relu(max)": lambda x, h, P: tg.tanh(x + h * tg.relu(h.max())),
    "exp(-logsumexp)": lambda x, h, P: tg.tanh(x + h * tg.exp(-tg.logsumexp(h))),
    "sum * 2": lambda x, h, P: tg.tanh(x + h * (h.sum() * 2.0)),
    "linear(h, W, sum)": lambda x, h, P: tg.linear(h, P["W"], x, h.sum(), act="tanh"),
}


@pytest.mark.parametrize("name", sorted(ZERO_D))
def test_zero_dim_value_inside_a_step(name: str) -> None:
    """A 0-d intermediate (the step's reductions over all axes) in a compiled step."""
    P = _case_params()
    compare_unrolls(CaseCell(ZERO_D[name], P), _case_inputs(17), list(P.values()), _one,
                    seed=18)


class Tunable(TwoStates):
    """A cell whose step depends on Python attributes that may change between unrolls."""

    def __init__(self, I: int, H: int, seed: int = 0) -> None:  # noqa: E741
        super().__init__(I, H, seed)
        self.scale, self.act = 1.0, "tanh"
        self.shift = tg.Tensor(np.full(H, 0.1))  # a constant it closes over

    def forward(self, x: Any, h: Any) -> tuple[Any, Any]:
        if h is None:
            h = tg.Tensor(np.zeros((x.shape[0], self.W.shape[0])))
        z = tg.linear(h, self.W, x @ self.U.T, self.b) * self.scale + self.shift
        h = getattr(tg, self.act)(z)
        return h, h


def test_same_cell_unrolled_again() -> None:
    """Unrolling one cell object repeatedly (its plan may be reused) after changes of sizes,
    state, attributes, constants and parameters: each time compiled == per op."""
    cell = Tunable(3, 4, seed=1)
    g = np.random.default_rng(16)

    def check(T: int, B: int, with_state: bool = True) -> None:
        inputs = [g.standard_normal((T, B, 3))] + ([g.uniform(-1, 1, (B, 4))] if with_state
                                                   else [])
        compare_unrolls(cell, inputs, list(cell.parameters()), _one if with_state else _none,
                        seed=T + B, expect_scan="ys" if with_state else "inside")

    check(5, 2)
    check(3, 2)
    check(4, 1)  # another batch size
    check(6, 2, with_state=False)  # state built from None
    check(3, 2)
    cell.scale = 0.5  # a number the step uses
    check(4, 2)
    cell.act = "sigmoid"  # another primitive
    check(4, 2)
    cell.shift.data[:] = -0.3  # a constant changed in place
    check(4, 2)
    cell.W.data -= 0.1 * np.sign(cell.W.data)  # an optimizer step, in place
    check(4, 2)
    cell.W = nn.Parameter(g.uniform(-0.5, 0.5, (4, 4)))  # a parameter replaced
    check(4, 2)


def test_tuple_project_runs_once_per_unroll() -> None:
    """`project` is applied once to the whole sequence in the compiled unroll as well."""
    cell = TupleProject(3, 4, seed=1)
    xs = np.random.default_rng(2).standard_normal((5, 2, 3))
    h0 = tg.Tensor(np.zeros((2, 4)))
    nn.unroll(cell, xs, h0)
    assert cell.project_calls == 1


def test_recurrent_batch_first_custom_cell() -> None:
    """nn.Recurrent(batch_first=True) around a two-state custom cell."""
    layer = nn.Recurrent(TwoStates(3, 4, seed=3), batch_first=True)
    g = np.random.default_rng(4)
    inputs = [g.standard_normal((2, 5, 3)), g.uniform(-1, 1, (2, 4)), g.uniform(-1, 1, (2, 4))]
    compare_layers(layer, inputs, 1, 6, _pair)


def test_a_weight_whose_operation_may_get_no_gradient_at_a_step() -> None:
    """A step that never reads its state: the next step's gradient may then be missing, the
    per-step gradient code is guarded, and the weight of the input's linear (batched over all
    steps) must still get its gradient (it once got zeros: found by a random program)."""
    check_program(Program(
        T=2, B=1, I=1, H=2, two_states=False,
        ops=(Op(template="arith", args=(0, 0), opts={"form": "add"}),), inp="linear",
        mix="last", h_update="tanh", c_update="pass", state_kind=tuple, y_kind="state",
        y_index=0, seed=0))
