"""`gradcheck`: analytic gradients (the tape) against float64 central differences.

The outputs of `fn` are reduced to one scalar with fixed random cotangents r_k,

    L = sum_k sum(out_k * r_k),

so a single backward checks the whole vector-Jacobian product, and a wrong transpose or a
swapped pair of gradients cannot hide behind an all-ones upstream gradient. The inputs are
checked on float64 copies; the parameters given with `params=` (a module's weights, which `fn`
reads itself) are perturbed in place and restored exactly.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from ..mode import enable_grad, no_grad
from ..errors import GradcheckError
from ..tensor import Tensor


class _HasParameters(Protocol):
    """A module (anything with `named_parameters()`), for `gradcheck(params=module)`."""

    def named_parameters(self) -> Iterable[tuple[str, Tensor]]: ...


_Params = Iterable[Tensor] | Iterable[tuple[str, Tensor]] | _HasParameters

_SEED = 0  # fixed: the same cotangents every run, so a failure reproduces


def gradcheck(fn: Callable[..., Any], inputs: Sequence[Any], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, *, params: _Params | None = None) -> bool:
    """Check the gradients of `fn(*inputs)`, and of the `params` it uses, against central
    differences; return True or raise.

    - `inputs`: numpy arrays, Tensors or numbers. Floating ones are copied, upcast to float64 and
      passed as leaves with `requires_grad=True`; integer and bool ones (indices, masks) are
      passed as constant Tensors. The caller's arrays are never modified.
    - `params`: Tensors that `fn` reads without taking them as arguments, a module's weights:
      `module.parameters()`, `module.named_parameters()` (errors then name the parameter) or the
      module itself. Each must be a float64 leaf that requires grad (build the module with
      `dtype=np.float64`). They are perturbed in place and restored exactly, also when `fn`
      raises, and their `.grad` is left as it was. Without them only the inputs are checked, so
      a wrong gradient of a weight goes unnoticed.
    - `fn` returns a Tensor or a nested tuple/list of Tensors, e.g. `(output, (h, c))`.
    - With fixed random cotangents r_k, L = sum_k sum(out_k * r_k). The analytic gradient of
      each input and parameter comes from `L.backward()` (no gradient at all counts as zeros);
      the numeric one from (L(x + eps) - L(x - eps)) / 2 eps per element, evaluated under
      `tg.no_grad()`.
    - Entries must satisfy |analytic - numeric| <= atol + rtol * |numeric| (np.allclose); the
      first that does not raises `GradcheckError` naming the input index (or the parameter),
      the element index and both values. A non-float output raises TypeError.

    Example -- property-testing your own cell over random sequences with hypothesis::

        import numpy as np
        import tinygrad_rnn as tg
        from hypothesis import given
        from tinygrad_rnn.testing import gradcheck, strategies

        def my_cell(x, h, W, U):                  # x (B, I), h (B, H) -> new h (B, H)
            return tg.tanh(x @ W + h @ U) * tg.sigmoid(h)

        rng = np.random.default_rng(0)
        W, U = rng.normal(size=(3, 4)), rng.normal(size=(4, 4))

        @given(xs=strategies.sequences(T=4, B=2, I=3), h0=strategies.arrays((2, 4)))
        def test_my_cell_bptt(xs, h0):
            def run(xs, h, W, U):                 # unroll over time: BPTT comes from the tape
                for t in range(xs.shape[0]):
                    h = my_cell(xs[t], h, W, U)
                return h
            assert gradcheck(run, [xs, h0, W, U])   # checks d/dxs, d/dh0, d/dW and d/dU
    """
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be positive, got {eps}")
    if isinstance(inputs, (Tensor, np.ndarray, np.generic, int, float)):
        inputs = (inputs,)  # one input given bare: never iterate over an array's rows
    pristine, wants = _prepare(inputs)
    weights, names, places = _params(params)
    kept = [w.data for w in weights]  # the arrays perturbed in place: fn reads these
    originals = [np.array(a, copy=True) for a in kept]

    # analytic: one backward through the whole graph
    leaves = [Tensor(np.array(a, copy=True), requires_grad=w) for a, w in zip(pristine, wants)]
    grads_before = [w.grad for w in weights]
    try:
        for w in weights:
            w.grad = None  # backward accumulates into an existing .grad: keep the caller's intact
        with enable_grad():
            outs = _flatten(fn(*leaves), "fn(*inputs)")
            rng = np.random.default_rng(_SEED)
            cots = [rng.standard_normal(o.shape) for o in outs]
            loss = None
            for o, r in zip(outs, cots):
                if o.requires_grad:
                    term = (o * Tensor(r)).sum()
                    loss = term if loss is None else loss + term
            if loss is not None:
                loss.backward()
        param_grads = [w.grad for w in weights]
    finally:
        for w, g in zip(weights, grads_before):
            w.grad = g
    for i, (t, a) in enumerate(zip(leaves, pristine)):
        if not np.array_equal(t.data, a, equal_nan=a.dtype.kind == "f"):
            raise GradcheckError(f"gradcheck: fn modified input {i} (shape {a.shape}) in place; "
                                 f"operations must return new tensors", input_index=i)
    for j, (w, a, o) in enumerate(zip(weights, kept, originals)):  # type: ignore[assignment]
        if w.data is not a or not np.array_equal(a, o, equal_nan=True):
            label = _param_label(names[j], places[j], o.shape)
            raise GradcheckError(f"gradcheck: fn modified {label} in place; fn must only read "
                                 f"the parameters", param_index=places[j], param_name=names[j])
    analytic = []
    for i, (t, w) in enumerate(zip(leaves, wants)):  # type: ignore[assignment]
        g = t.grad if w and t.grad is not None else np.zeros(t.shape)
        if g.shape != t.shape or g.dtype != np.float64:
            raise GradcheckError(f"gradcheck: the analytic gradient of input {i} has shape "
                                 f"{g.shape} and dtype {g.dtype}; expected the input's shape "
                                 f"{t.shape} and float64", input_index=i)
        analytic.append(g)

    # numeric: central differences of L, one element at a time, on a private copy of each input
    # and in place in each parameter
    shapes = [o.shape for o in outs]
    work = [np.array(a, copy=True) for a in pristine]

    def loss_value() -> float:
        with no_grad():
            outs_ = _flatten(fn(*[Tensor(a, requires_grad=w) for a, w in zip(work, wants)]),
                             "fn(*inputs)")
        if [o.shape for o in outs_] != shapes:
            raise GradcheckError(f"gradcheck: fn returned outputs of shapes "
                                 f"{[o.shape for o in outs_]} on a perturbed input, but {shapes} "
                                 f"at first; fn must be a deterministic function of its inputs")
        return float(sum(np.sum(o.data * r, dtype=np.float64) for o, r in zip(outs_, cots)))

    def compare(x: np.ndarray, grad: np.ndarray, label: str, **which: Any) -> None:
        for idx in np.ndindex(x.shape):
            x0 = x[idx]
            x[idx] = x0 + eps
            hi, lp = x[idx], loss_value()
            x[idx] = x0 - eps
            lo, lm = x[idx], loss_value()
            x[idx] = x0
            n = (lp - lm) / (hi - lo)  # the step actually taken, after rounding
            a = float(grad[idx])
            if not abs(a - n) <= atol + rtol * abs(n):  # also False for NaN
                raise GradcheckError(
                    f"gradcheck: gradient mismatch for {label} at element {idx}: analytic "
                    f"{a!r}, numeric {n!r} (|difference| {abs(a - n):.3g} > atol + rtol * "
                    f"|numeric| = {atol + rtol * abs(n):.3g}; central differences with eps={eps} "
                    f"of L = sum_k sum(out_k * r_k), random r_k)",
                    element_index=idx, analytic=a, numeric=n, **which)

    for i, (x, w) in enumerate(zip(work, wants)):  # type: ignore[assignment]
        if w:
            compare(x, analytic[i], f"input {i} (shape {x.shape})", input_index=i)
    try:
        for j, a in enumerate(kept):
            pg: Any = param_grads[j] if param_grads[j] is not None else np.zeros(a.shape)
            compare(a, pg, _param_label(names[j], places[j], a.shape), param_index=places[j],
                    param_name=names[j])
    finally:
        for a, o in zip(kept, originals):  # type: ignore[assignment]
            np.copyto(a, o)  # exactly the caller's values, also when fn raised mid-perturbation
    return True


def _params(params: _Params | None) -> tuple[list[Tensor], list[str | None], list[int]]:
    """The parameters to check, each once, with their names (when given as (name, Tensor)
    pairs) and their positions in `params`."""
    if params is None:
        return [], [], []
    if hasattr(params, "named_parameters"):  # a Module: its names make errors readable
        params = params.named_parameters()
    if isinstance(params, Tensor):
        params = [params]
    found: list[Tensor] = []
    names: list[str | None] = []
    places: list[int] = []
    for j, item in enumerate(params):
        name, p = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
        what = f"params[{j}]" if name is None else f"parameter {name!r}"
        if not isinstance(p, Tensor):
            raise TypeError(f"gradcheck: {what} is a {type(p).__name__}; params takes Tensors "
                            f"(module.parameters()), (name, Tensor) pairs "
                            f"(module.named_parameters()) or a module")
        if not p.is_leaf or not p.requires_grad:
            raise ValueError(f"gradcheck: {what} must be a leaf that requires grad (a "
                             f"Parameter): a recorded result cannot be perturbed, and a tensor "
                             f"without requires_grad gets no gradient to check")
        if p.dtype != np.float64:
            raise TypeError(f"gradcheck: {what} has dtype {p.dtype}; central differences need "
                            f"float64 parameters (build the module with dtype=np.float64)")
        if any(p is q for q in found):
            continue  # shared between layers: one check covers it
        found.append(p)
        names.append(name)
        places.append(j)
    return found, names, places


def _param_label(name: str | None, place: int, shape: tuple[int, ...]) -> str:
    """How errors name a parameter: its name when known, and always its position and shape."""
    named = "" if name is None else f"{name!r} "
    return f"parameter {named}(params[{place}], shape {shape})"


def _prepare(inputs: Sequence[Any]) -> tuple[list[np.ndarray], list[bool]]:
    """Private copies of the inputs: floats as float64 (differentiated), ints/bools as they are."""
    arrays, wants = [], []
    for i, x in enumerate(inputs):
        a = x.data if isinstance(x, Tensor) else x
        try:
            a = np.asarray(a)
        except Exception:  # noqa: BLE001 - reported below with the input index
            a = np.asarray(None, dtype=object)
        if a.dtype.kind == "f":
            arrays.append(np.array(a, dtype=np.float64, copy=True))
            wants.append(True)
        elif a.dtype.kind in "iub":
            arrays.append(np.array(a, copy=True))
            wants.append(False)
        else:
            raise TypeError(f"gradcheck: input {i} is a {type(x).__name__} of dtype {a.dtype}; "
                            f"inputs must be numpy arrays, Tensors or numbers (float inputs are "
                            f"differentiated, integer/bool ones passed as constants)")
    return arrays, wants


def _flatten(out: Any, path: str) -> list[Tensor]:
    """The Tensors of a nested tuple/list, in order; anything else is a TypeError."""
    found: list[Tensor] = []
    stack = [(out, path)]
    while stack:
        o, p = stack.pop()
        if isinstance(o, Tensor):
            if o.dtype.kind != "f":
                raise TypeError(f"gradcheck: {p} is a Tensor of dtype {o.dtype}; fn must return "
                                f"floating-point Tensors")
            if o.dtype != np.float64:
                raise TypeError(f"gradcheck: {p} has dtype {o.dtype}; central differences need "
                                f"float64 outputs (the inputs are float64: make any parameters "
                                f"or constants inside fn float64 too)")
            found.append(o)
        elif isinstance(o, (tuple, list)):
            stack.extend(reversed([(v, f"{p}[{k}]") for k, v in enumerate(o)]))
        else:
            raise TypeError(f"gradcheck: {p} is a {type(o).__name__}; fn must return a Tensor or "
                            f"a nested tuple/list of Tensors")
    if not found:
        raise TypeError(f"gradcheck: {path} returned no Tensor (an empty tuple/list)")
    return found
