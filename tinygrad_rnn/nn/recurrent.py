"""Recurrence: `unroll` runs any cell over time; the built-in cells and layers are such cells.

A cell is a callable `cell(x_t, state) -> (y_t, new_state)`, where state is a Tensor or a nested
tuple/list of Tensors. Optionally it may also have
- `step(x_t, state)`: used instead of calling the cell (built-in cells, whose `__call__` keeps
  PyTorch's one-step signature, define it);
- `project(xs)`: applied once to the whole (T, B, I) sequence before the loop, its result sliced
  per step and passed to `step` — this is how the input projection of every time step becomes one
  matmul. It may return a tuple of (T, ...) tensors; `step` then gets a tuple of their slices.
  Custom cells can define it the same way;
- `initial_state(batch_size)`: the state used when `state=None` (otherwise None is passed on).
Backpropagation through time is just the tape; nothing here has a hand-written backward.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import numpy as np

from .. import ops
from .. import scan
from ..checkpoint import checkpointed_scan, checkpointed_unroll, time_slices
from ..errors import DTypeError, ShapeError
from ..random import rng
from ..tensor import Tensor
from .module import Module, Parameter
from .utils.rnn import PackedSequence, check_lengths, pad_packed_sequence, repack

State = Any


def _as_tensor(x: Any, who: str, dtype: Any = None) -> Tensor:
    """x as a float Tensor; a list (not an array) becomes `dtype` (a layer's), if given."""
    if isinstance(x, Tensor):
        return x
    arr = np.asarray(x, dtype=None if isinstance(x, np.ndarray) else dtype)
    if arr.dtype.kind != "f":
        raise DTypeError(f"{who}: expected a float array or Tensor as input, got dtype "
                         f"{arr.dtype}")
    return Tensor(arr)


def _fit_dtype(x: Any, want: np.dtype, who: str, what: str) -> Any:
    """x for a layer computing in `want`: lists and numbers are made that dtype; a float array
    or Tensor of another dtype is refused (it would silently turn the computation into its
    dtype, as numpy promotes); anything else is left to the caller's checks."""
    if isinstance(x, (Tensor, np.ndarray)):
        have = x.dtype
        if have.kind == "f" and have != want:
            raise DTypeError(f"{who}: the {what} is {have} but the layer's weights are {want}; "
                             f"convert it with .astype(np.{want.name}), or the layer's "
                             f"parameters to {have}")
        return x
    if isinstance(x, (list, tuple, int, float)):
        return Tensor(np.asarray(x, dtype=want))
    return x


def unroll(cell: Callable[..., Any], xs: Any, state: State = None, batch_first: bool = False,
           checkpoint_every: int | None = None, compile: bool = True,
           lengths: Any = None) -> tuple[Tensor, State]:
    """Run `cell` over the time axis of xs (T, B, ...) (or (B, T, ...) with batch_first).

    Returns (ys, final_state) with ys the stacked y_t along the same time axis. BPTT comes from the
    tape. With `compile=True` the cell's step is traced (its Python runs twice) and the unroll is
    one scan record (tinygrad_rnn.scan; same results, far less Python per step); a cell that
    cannot be traced safely runs per op, with one warning per cell class. A cell whose Python
    depends on state outside its tensors (a step counter) needs compile=False. With
    `checkpoint_every=k` only every k-th state is kept; the steps between are recomputed during
    backward (memory O(T/k + k), identical gradients). With `lengths` (B,) (ints in 1..T) sequence
    b ends after lengths[b] steps: its outputs after that are zeros that take no gradient, and
    its final state is the state after its own last step (every state part must have the batch
    as its leading axis)."""
    xs = _as_tensor(xs, "unroll")
    if xs.ndim < 2:
        raise ShapeError(f"unroll: xs must have a time and a batch axis, got shape {xs.shape}")
    if batch_first:
        xs = ops.swapaxes(xs, 0, 1)
    if xs.shape[0] == 0:
        raise ShapeError(f"unroll: xs has no time steps (shape {xs.shape}); a sequence needs at "
                         f"least one")
    if state is None and hasattr(cell, "initial_state"):
        state = cell.initial_state(xs.shape[1])
    seq: Any = xs
    runner: Any = cell  # `cell` stays referenced here: the wrapper below holds it only weakly
    if lengths is not None:
        lens = check_lengths(lengths, xs.shape[0], xs.shape[1], "unroll")
        if lens.min() < xs.shape[0]:  # else every sequence is whole: nothing to mask
            runner = _masked(cell)
            valid = np.arange(xs.shape[0])[:, None] < lens[None, :]  # (T, B)
            # the steps past an end still run (their results are dropped), on zeros: padding
            # that holds nan or inf would otherwise reach the gradients as 0 * nan
            xs = ops.where(valid.reshape(valid.shape + (1,) * (xs.ndim - 2)), xs, 0.0)
            seq = (xs, Tensor(valid[:, :, None]))
    step = getattr(runner, "step", runner)
    project = getattr(runner, "project", None)
    if checkpoint_every is not None:  # projects segment by segment: memory stays O(T/k + k)
        plan = None
        if compile:  # traced on the first steps' projection alone
            head = tuple(x[:3] for x in seq) if isinstance(seq, tuple) else seq[:3]
            plan = scan.prepare(runner, step, project(head) if project is not None else seq,
                                state)
        if plan is not None:
            ys, state = checkpointed_scan(plan, step, seq, state, checkpoint_every, project)
        else:
            ys, state = checkpointed_unroll(step, seq, state, checkpoint_every, project)
        return (ops.swapaxes(ys, 0, 1) if batch_first else ys), state
    xp = project(seq) if project is not None else seq
    plan = scan.prepare(runner, step, xp, state) if compile else None
    if plan is not None:
        ys, state = scan.execute(plan, step, xp, state)
    else:
        ys_list = []
        for x_t in time_slices(xp):
            y, state = step(x_t, state)
            ys_list.append(y)
        ys = ops.stack(ys_list, 0)
    if batch_first:
        ys = ops.swapaxes(ys, 0, 1)
    return ys, state


class _Masked:
    """`cell` over a batch of sequences of different lengths: its step runs on every sequence,
    and where a sequence has ended (m_t False) `where` keeps the old state and gives a zero
    output, so those steps take no gradient. The per-step input is (*the cell's projected
    parts, m_t (B, 1) bool). Kept per cell, so that the scan reuses its plan; it holds the cell
    weakly, or the cache would keep every cell alive."""

    def __init__(self, cell: Any, weak: bool) -> None:
        self._cell: Callable[[], Any] = weakref.ref(cell) if weak else (lambda: cell)
        self.tuple_x = False

    @property
    def wraps(self) -> Any:
        return self._cell()

    def project(self, seq: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        xs, mask = seq
        project = getattr(self._cell(), "project", None)
        xp = project(xs) if project is not None else xs
        self.tuple_x = isinstance(xp, (tuple, list))
        return (*xp, mask) if self.tuple_x else (xp, mask)

    def step(self, inp: tuple[Tensor, ...], state: State) -> tuple[Tensor, State]:
        *parts, m = inp
        cell = self._cell()
        y, new = getattr(cell, "step", cell)(tuple(parts) if self.tuple_x else parts[0], state)
        if state is not None:  # None only at step 0, where every sequence is running
            new = _keep_ended(m, new, state)
        return ops.where(_batch_mask(m, y, "output"), y, 0.0), new


_MASKED: weakref.WeakKeyDictionary[Any, _Masked] = weakref.WeakKeyDictionary()


def _masked(cell: Any) -> _Masked:
    try:
        wrapper = _MASKED.get(cell)
        if wrapper is None:
            wrapper = _MASKED[cell] = _Masked(cell, weak=True)
        return wrapper
    except TypeError:  # not weakly referable: a fresh wrapper (its plan is not reused)
        return _Masked(cell, weak=False)


def _batch_mask(m: Tensor, like: Tensor, what: str) -> Tensor:
    """The (B, 1) step mask shaped to broadcast over `like` (B, ...)."""
    if like.ndim == 0 or like.shape[0] != m.shape[0]:
        raise ShapeError(f"unroll with lengths: the step's {what} has shape {like.shape}; it "
                         f"needs the batch ({m.shape[0]}) as its leading axis")
    return m if like.ndim == 2 else m.reshape((m.shape[0],) + (1,) * (like.ndim - 1))


def _keep_ended(m: Tensor, new: State, old: State) -> State:
    """The new state where the step ran (m), the old one where the sequence had ended."""
    if isinstance(new, (tuple, list)):
        if not isinstance(old, (tuple, list)) or len(old) != len(new):
            raise ShapeError("unroll with lengths: the step's new state is not shaped like the "
                             "state it was given")
        return type(new)(_keep_ended(m, n, o) for n, o in zip(new, old))
    return ops.where(_batch_mask(m, new, "state"), new, old)


class Recurrent(Module):
    """Wrap a cell as a sequence layer: `forward(x, state=None) -> (outputs, final_state)`."""

    def __init__(self, cell: Callable[..., Any], batch_first: bool = False,
                 checkpoint_every: int | None = None, compile: bool = True) -> None:
        super().__init__()
        self.cell = cell
        self.batch_first = batch_first
        self.checkpoint_every = checkpoint_every
        self.compile = compile

    def forward(self, x: Any, state: State = None, lengths: Any = None) -> tuple[Any, State]:
        """x (T, B, ...) (batch_first: (B, T, ...)), or a PackedSequence (then the output is
        one too) -> (outputs, final_state); `lengths` as in `unroll`."""
        if isinstance(x, PackedSequence):
            padded, lens = _unpack(x, lengths, "Recurrent")
            ys, state = unroll(self.cell, padded, state, False, self.checkpoint_every,
                               self.compile, lens)
            return repack(ys, x), state
        return unroll(self.cell, x, state, self.batch_first, self.checkpoint_every,
                      self.compile, lengths)


def _unpack(x: PackedSequence, lengths: Any, who: str) -> tuple[Tensor, np.ndarray]:
    if lengths is not None:
        raise ValueError(f"{who}: a PackedSequence carries its lengths; do not pass lengths= too")
    return pad_packed_sequence(x)


# ----------------------------------------------------------------------------- built-in cells
def _check_sizes(who: str, input_size: Any, hidden_size: Any) -> None:
    for name, n, least in (("input_size", input_size, 0), ("hidden_size", hidden_size, 1)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < least:
            raise ValueError(f"{who}: {name} must be an int >= {least}, got {n!r}")


def _uniform(shape: tuple[int, ...], bound: float, dtype: Any) -> Parameter:
    return Parameter(rng().uniform(-bound, bound, size=shape).astype(dtype))


class _CellBase(Module):
    """Shared parameters and checks of RNNCell/LSTMCell/GRUCell (PyTorch layout and init)."""

    gates = 1
    bias_ih: Parameter | None
    bias_hh: Parameter | None

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, input_size, hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        k = 1.0 / math.sqrt(hidden_size)  # PyTorch: U(-1/sqrt(H), 1/sqrt(H)) for every weight
        gh = self.gates * hidden_size
        self.weight_ih = _uniform((gh, input_size), k, dtype)
        self.weight_hh = _uniform((gh, hidden_size), k, dtype)
        if bias:
            self.bias_ih = _uniform((gh,), k, dtype)
            self.bias_hh = _uniform((gh,), k, dtype)
        else:
            self.bias_ih = self.bias_hh = None

    @classmethod
    def _from_params(cls, params: dict[str, Parameter], **kw: Any) -> _CellBase:
        """A cell that shares existing Parameters (how the multi-layer layers build theirs)."""
        cell = cls.__new__(cls)
        Module.__init__(cell)
        w = params["weight_ih"]
        cell.input_size, cell.hidden_size = w.shape[1], params["weight_hh"].shape[1]
        cell.bias = params.get("bias_ih") is not None
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(cell, name, params.get(name))
        for k, v in kw.items():
            setattr(cell, k, v)
        return cell

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def initial_state(self, batch_size: int) -> State:
        """Zeros (B, H) in the weights' dtype (LSTM: (h, c)), as PyTorch's default state."""
        h = Tensor(np.zeros((batch_size, self.hidden_size), dtype=self.weight_hh.dtype))
        return (h, Tensor(h.data.copy())) if self.gates == 4 else h

    def _zeros(self, like: Tensor) -> Tensor:
        return Tensor(np.zeros(like.shape[:-1] + (self.hidden_size,), dtype=like.dtype))

    def _check_state(self, h: Any, xp: Tensor) -> Tensor:
        h = _fit_dtype(h, xp.dtype, type(self).__name__, "state")
        h = h if isinstance(h, Tensor) else Tensor(np.asarray(h, dtype=xp.dtype))
        want = xp.data.shape[:-1] + (self.hidden_size,)
        if h.data.shape != want:
            raise ShapeError(f"{type(self).__name__}: expected a state of shape {want}, "
                             f"got {h.shape}")
        return h

    def _check_input(self, x: Any) -> Tensor:
        want = self.weight_ih.dtype
        x = _as_tensor(x, type(self).__name__, want)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}: expected input of shape (B, "
                             f"{self.input_size}) or ({self.input_size},), got {x.shape}")
        return _fit_dtype(x, want, type(self).__name__, "input")

    # b_hh joins b_ih in the projection of the whole sequence: one add and one bias-gradient
    # sum per step fewer (GRU's b_hn, which sits inside r (W_hn h + b_hn), see GRUCell).
    fold_bias_hh = True

    def project(self, xs: Tensor) -> Tensor:
        """x W_ih^T + b_ih (+ b_hh) for all time steps at once: (..., I) -> (..., gates*H)."""
        if xs.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}: expected inputs with {self.input_size} "
                             f"features, got shape {xs.shape}")
        if self.fold_bias_hh:
            return ops.linear(xs, self.weight_ih, self.bias_ih, self.bias_hh)
        return ops.linear(xs, self.weight_ih, self.bias_ih)

    def _recurrent(self, h: Tensor, xp: Tensor | None = None, act: str | None = None) -> Tensor:
        """act(xp + h W_hh^T (+ b_hh unless the projection has it)), one record."""
        if self.fold_bias_hh:
            return ops.linear(h, self.weight_hh, xp, act=act)
        return ops.linear(h, self.weight_hh, xp, self.bias_hh, act=act)

    def forward(self, x: Any, state: State = None) -> State:
        """One step, PyTorch's cell signature: returns the new state (h, or (h, c) for LSTM)."""
        x = self._check_input(x)
        return self.step(self.project(x), state)[1]

    def step(self, xp: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError


class RNNCell(_CellBase):
    """h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", dtype: Any = np.float32) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', "
                             f"got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, dtype)
        self.nonlinearity = nonlinearity

    def step(self, xp: Tensor, state: State) -> tuple[Tensor, State]:
        h = self._zeros(xp) if state is None else self._check_state(state, xp)
        if self.nonlinearity == "tanh":
            h = self._recurrent(h, xp, act="tanh")
        else:
            h = self._recurrent(h, xp).relu()
        return h, h


class LSTMCell(_CellBase):
    """Gates i, f, g, o: c' = f c + i g, h' = o tanh(c'). State is (h, c)."""

    gates = 4

    def step(self, xp: Tensor, state: State) -> tuple[Tensor, State]:
        if state is None:
            h = c = self._zeros(xp)
        else:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ShapeError(f"LSTMCell: the state must be a tuple (h, c), got "
                                 f"{_describe(state)}")
            h, c = self._check_state(state[0], xp), self._check_state(state[1], xp)
        i, f, g, o = ops.gates(self._recurrent(h, xp), ("sigmoid", "sigmoid", "tanh", "sigmoid"))
        c = ops.addcmul(f * c, i, g)  # f c + i g in two records, not three
        h = o * c.tanh()
        return h, (h, c)


class GRUCell(_CellBase):
    """Gates r, z, n: n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h."""

    gates = 3
    # b_hh stays in the step: b_hn must not reach xn. (Folding it and subtracting b_hn from
    # xn again sums b_hn's gradient once per projection, which breaks checkpoint's bit-identity.)
    fold_bias_hh = False

    def project(self, xs: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(x W_ih^T + b_ih, its n part x W_in^T + b_in): (..., I) -> ((..., 3H), (..., H))."""
        xp = super().project(xs)
        return xp, xp[..., 2 * self.hidden_size:]

    def step(self, xp: Any, state: State) -> tuple[Tensor, State]:
        xp, xn = xp
        h = self._zeros(xp) if state is None else self._check_state(state, xp)
        # one linear and one gates record for all three: r, z get x_rz + h_rz + b_rz, and the
        # n part is a = xn + W_hn h + b_hn, so xn + r (W_hn h + b_hn) = lerp(xn, a, r)
        r, z, a = ops.gates(self._recurrent(h, xp), ("sigmoid", "sigmoid", "identity"))
        n = ops.lerp(xn, a, r).tanh()
        h = ops.lerp(n, h, z)  # (1 - z) n + z h
        return h, h


# ----------------------------------------------------------------------------- sequence layers
class _RNNBase(Module):
    """Multi-layer, optionally bidirectional recurrence with PyTorch's parameter names."""

    cell_class: type[_CellBase] = RNNCell
    _cells: list[_CellBase]  # one per layer and direction, sharing this module's Parameters

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 nonlinearity: str = "tanh", dtype: Any = np.float32,
                 checkpoint_every: int | None = None, compile: bool = True) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, input_size, hidden_size)
        if num_layers < 1:
            raise ValueError(f"{type(self).__name__}: num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1], got {dropout}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{type(self).__name__}: nonlinearity must be 'tanh' or 'relu', "
                             f"got {nonlinearity!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, dropout
        self.bidirectional, self.nonlinearity = bidirectional, nonlinearity
        self.checkpoint_every = checkpoint_every
        self.compile = compile
        dirs = 2 if bidirectional else 1
        k = 1.0 / math.sqrt(hidden_size)
        gh = self.cell_class.gates * hidden_size
        cells = []
        for layer in range(num_layers):
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                in_size = input_size if layer == 0 else hidden_size * dirs
                params = {"weight_ih": _uniform((gh, in_size), k, dtype),
                          "weight_hh": _uniform((gh, hidden_size), k, dtype)}
                if bias:
                    params["bias_ih"] = _uniform((gh,), k, dtype)
                    params["bias_hh"] = _uniform((gh,), k, dtype)
                for name, p in params.items():
                    setattr(self, name + sfx, p)
                extra = {"nonlinearity": nonlinearity} if self.cell_class is RNNCell else {}
                cells.append(self.cell_class._from_params(params, **extra))
        object.__setattr__(self, "_cells", cells)  # share our Parameters; not registered twice

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def _check(self, x: Tensor) -> None:
        name = type(self).__name__
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            layout = "(B, T" if self.batch_first else "(T, B"
            raise ShapeError(f"{name}: expected input of shape {layout}, {self.input_size}) or "
                             f"(T, {self.input_size}), got {x.shape}")
        if x.shape[1 if self.batch_first and x.ndim == 3 else 0] == 0:
            raise ShapeError(f"{name}: the input {x.shape} has no time steps; a sequence needs "
                             f"at least one")

    def _check_unbatched_state(self, state: Any) -> None:
        want = (len(self._cells), self.hidden_size)
        parts = state if isinstance(state, (tuple, list)) else (state,)
        for s in parts:
            if np.shape(s.data if isinstance(s, Tensor) else s) != want:
                raise ShapeError(f"{type(self).__name__}: expected a state of shape {want}, got "
                                 f"{np.shape(s.data if isinstance(s, Tensor) else s)} (unbatched "
                                 f"input (T, {self.input_size}))")

    def _split_state(self, state: Any, batch: int, dtype: Any) -> list[Any]:
        """The user's (L*D, B, H) state(s) as one initial state per (layer, direction)."""
        n = len(self._cells)
        want = (n, batch, self.hidden_size)
        is_lstm = self.cell_class is LSTMCell
        if state is None:
            return [None] * n
        parts = state if is_lstm else (state,)
        if is_lstm and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise ShapeError(f"{type(self).__name__}: the state must be a tuple (h_0, c_0), got "
                             f"{_describe(state)}")
        per = []
        for s in parts:
            s = _fit_dtype(s, np.dtype(dtype), type(self).__name__, "state")
            s = s if isinstance(s, Tensor) else Tensor(np.asarray(s, dtype=dtype))
            if s.shape != want:
                raise ShapeError(f"{type(self).__name__}: expected a state of shape {want}, "
                                 f"got {s.shape}")
            per.append(ops.unbind(s, 0))
        return [tuple(p[i] for p in per) if is_lstm else per[0][i] for i in range(n)]

    def forward(self, x: Any, state: Any = None, lengths: Any = None) -> tuple[Any, Any]:
        """x (T, B, I) (or (B, T, I), or unbatched (T, I)) -> (output, h_n) — LSTM:
        (output, (h_n, c_n)) — with output (T, B, D*H) and h_n (L*D, B, H) as PyTorch.

        Variable lengths: x a PackedSequence (the output is then packed the same way), or
        `lengths` (B,) with a padded x. Each sequence's h_n is its state after its own last step,
        the reverse direction starts at each sequence's own end, and outputs past a sequence's
        end are zeros."""
        if isinstance(x, PackedSequence):
            padded, lens = _unpack(x, lengths, type(self).__name__)
            first, self.batch_first = self.batch_first, False
            try:
                out, final = self.forward(padded, state, lens)
            finally:
                self.batch_first = first
            return repack(out, x), final
        want = self._cells[0].weight_ih.dtype
        x = _as_tensor(x, type(self).__name__, want)
        self._check(x)
        x = _fit_dtype(x, want, type(self).__name__, "input")
        unbatched = x.ndim == 2
        if unbatched and lengths is not None:
            raise ShapeError(f"{type(self).__name__}: lengths= needs a batched input (T, B, "
                             f"{self.input_size}); an unbatched one is a single sequence")
        if unbatched:
            x = x.unsqueeze(1)
            if state is not None:
                self._check_unbatched_state(state)
                state = _unsqueeze(state)
        elif self.batch_first:
            x = ops.swapaxes(x, 0, 1)
        init = self._split_state(state, x.shape[1], x.dtype)
        dirs = 2 if self.bidirectional else 1
        flip: Any = slice(None, None, -1)  # how the reverse direction reads and writes time
        if lengths is not None:
            lengths = check_lengths(lengths, x.shape[0], x.shape[1], type(self).__name__)
            if lengths.min() == x.shape[0]:
                lengths = None
            else:  # each sequence reversed within its own length; padding stays in place
                t = np.arange(x.shape[0])[:, None]
                flip = (np.where(t < lengths, lengths - 1 - t, t), np.arange(x.shape[1]))
        finals = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                from .functional import dropout
                x = dropout(x, self.dropout, True)
            outs = []
            for d in range(dirs):
                i = layer * dirs + d
                xs = x if d == 0 else x[flip]
                ys, s = unroll(self._cells[i], xs, init[i],
                               checkpoint_every=self.checkpoint_every, compile=self.compile,
                               lengths=lengths)
                outs.append(ys if d == 0 else ys[flip])
                finals.append(s)
            x = outs[0] if dirs == 1 else ops.concat(outs, axis=-1)
        if self.cell_class is LSTMCell:
            final = (ops.stack([s[0] for s in finals]), ops.stack([s[1] for s in finals]))
        else:
            final = ops.stack(finals)
        if unbatched:
            return x.squeeze(1), _squeeze(final)
        return (ops.swapaxes(x, 0, 1) if self.batch_first else x), final


def _describe(state: Any) -> str:
    if isinstance(state, (tuple, list)):
        return f"{type(state).__name__} of length {len(state)}"
    return f"{type(state).__name__}" + (f" of shape {state.shape}" if hasattr(state, "shape")
                                        else "")


def _unsqueeze(state: Any) -> Any:
    if isinstance(state, (tuple, list)):
        return type(state)(_unsqueeze(s) for s in state)
    s = state if isinstance(state, Tensor) else Tensor(state)
    return s.unsqueeze(1)


def _squeeze(state: Any) -> Any:
    if isinstance(state, (tuple, list)):
        return type(state)(_squeeze(s) for s in state)
    return state.squeeze(1)


class RNN(_RNNBase):
    """Elman RNN, h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu."""

    cell_class = RNNCell


class LSTM(_RNNBase):
    """LSTM with PyTorch's gate order i, f, g, o; state (h, c)."""

    cell_class = LSTMCell

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("nonlinearity", "tanh") != "tanh":
            raise ValueError("LSTM: has no nonlinearity option")
        super().__init__(*args, **kwargs)


class GRU(_RNNBase):
    """GRU with PyTorch's gates r, z, n."""

    cell_class = GRUCell

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("nonlinearity", "tanh") != "tanh":
            raise ValueError("GRU: has no nonlinearity option")
        super().__init__(*args, **kwargs)
