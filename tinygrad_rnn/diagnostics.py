"""Gradient-flow diagnostics: how strongly the loss reaches back to each time step."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from . import ops, scan
from .engine import Node, Port, walk
from .errors import ShapeError
from .tensor import Tensor


def _first(state: Any) -> Tensor:
    while isinstance(state, (tuple, list)):
        state = state[0]
    if not isinstance(state, Tensor):
        raise TypeError(f"gradient_flow: the model returned a state of type "
                        f"{type(state).__name__}; expected a Tensor or a tuple of Tensors")
    return state


def gradient_flow(model: Callable[..., Any], xs: Any, loss_fn: Callable[..., Tensor],
                  state: Any = None, ys: Any = None,
                  batch_first: bool = False) -> np.ndarray:
    """||dL/dh_t|| for t = 1..T: the norm over the whole batch of the total derivative of the loss
    with respect to the state after step t (its first tensor for a tuple state, h of an LSTM).

    The model (`model(x_chunk, state) -> (outputs, state)`) is run one step at a time so that
    every intermediate state is a tensor we can ask about; it must therefore be causal
    (unidirectional). When the returned state only re-arranges tensors computed inside the model
    (the built-in layers return h_n = stack of each layer's h), the derivative is taken with
    respect to those inner tensors, so that the path through the step's own output counts too.
    The loss is `loss_fn(outputs)` or, when `ys` is given, `loss_fn(outputs, ys)`, on the
    outputs of all T steps. Parameters' .grad are left untouched. Returns float64 (T,)."""
    from .bptt import _length, _slice

    axis = 1 if batch_first else 0
    T = _length(xs, axis, "gradient_flow")
    norms = _flow_from_scans(model, xs, loss_fn, state, ys, T)
    if norms is not None:
        return norms
    outs, probes = [], []
    for t in range(T):
        out, state = model(_slice(xs, t, t + 1, axis), state)
        h = _first(state)
        if not h.requires_grad:
            raise ShapeError("gradient_flow: the state does not depend on anything that "
                             "requires grad, so dL/dh_t is undefined (is the model under "
                             "no_grad, or are its parameters frozen?)")
        inner = _sources(h)
        for p in inner:
            p.retain_grad()
        outs.append(out)
        probes.append(inner)
    outputs = ops.concat(outs, axis=axis)
    _backward_untouched(loss_fn(outputs) if ys is None else loss_fn(outputs, ys))
    return np.array([np.sqrt(sum(float(np.sum(np.square(p.grad))) for p in inner
                                 if p.grad is not None)) for inner in probes])


def _backward_untouched(loss: Tensor) -> None:
    """loss.backward() leaving the .grad of every parameter as it was (a diagnostic must not
    disturb training)."""
    params = _leaves_below(loss)
    saved = [(p, p.grad) for p in params]
    for p in params:
        p.grad = None
    try:
        loss.backward()
    finally:
        for p, g in saved:
            p.grad = g


def _flow_from_scans(model: Callable[..., Any], xs: Any, loss_fn: Callable[..., Tensor],
                     state: Any, ys: Any, T: int) -> np.ndarray | None:
    """gradient_flow from one run over the whole sequence, when the state the model returns is
    (a re-arrangement of) the final states of compiled unrolls of all T steps: their backward
    gives dL/dh_t of every step. None when it is not so (then the model runs step by step)."""
    with scan.probing() as probes:
        out, final = model(xs, state)
    h = _first(final)
    if not probes or not h.requires_grad:
        return None
    sources = [s._ref if isinstance(s, Tensor) else s for s in _sources(h)]
    ports = [p["port"] for p in probes]
    if any(p["steps"] != T for p in probes) or len(sources) != len(ports) or \
            any(not any(s is q for q in ports) for s in sources):
        return None
    _backward_untouched(loss_fn(out) if ys is None else loss_fn(out, ys))
    total = np.zeros(T)
    for p in probes:
        g = p["grads"]
        if g is not None:
            total += np.sum(np.square(g.reshape(T, -1), dtype=np.float64), axis=1)
    return np.sqrt(total)


_REARRANGING = ("stack", "concat", "reshape")


def _sources(t: Any) -> list[Any]:
    """The tensors that `t` merely re-arranges (through stack/concat/reshape), else [t]: each
    a Tensor or a Port (an input kept by a record), both of which can retain their grad."""
    n = t._node
    if n is None or n.op is None or n.op.name not in _REARRANGING:
        return [Port(n, None, n.shape, n.dtype) if type(t) is Node else t]
    return [s for inp in n.inputs if inp.requires_grad for s in _sources(inp)]


def _leaves_below(root: Tensor) -> list[Tensor]:
    """The leaves that requires grad in the graph of `root` (their .grad will be touched)."""
    if root._node is None:
        return []
    leaves: dict[int, Tensor] = {}
    walk(root, leaves=leaves)
    return [t for t in leaves.values() if t.requires_grad]


def plot_gradient_flow(norms: Mapping[str, Any], path: str | os.PathLike[str],
                       title: str = "Gradient flow: ||dL/dh_t||") -> str:
    """Write a PNG at `path` with one curve per label (log-scale y axis); returns the path.
    Needs matplotlib: `pip install "tinygrad_rnn[plot]"`."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError('plot_gradient_flow needs matplotlib, which is the optional "plot" '
                          'extra: pip install "tinygrad_rnn[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for label, values in norms.items():
            v = np.asarray(values, dtype=float)
            ax.plot(np.arange(1, len(v) + 1), np.where(v > 0, v, np.nan), label=str(label))
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_ylabel("||dL/dh_t||")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png")
    finally:
        plt.close(fig)
    return os.fspath(path)
