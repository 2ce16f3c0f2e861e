"""Optimisers with PyTorch's exact update rules. They work on numpy, outside the tape.

`step()` updates each parameter's `.data` in place, in the parameter's own dtype (float32 stays
float32), reads `.grad` without ever modifying it, and skips parameters whose `.grad` is None.
Hyper-parameters are plain attributes (`opt.lr = 1e-4` takes effect at the next step).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np

from .engine import enable_grad
from .errors import ShapeError
from .tensor import Tensor

__all__ = ["Adam", "Optimizer", "SGD"]


def _number(value: Any, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__}")
    value = float(value)  # a Python float never upcasts a float32 array
    if math.isnan(value):
        raise ValueError(f"{owner}: {name} must not be nan")
    return value


def _non_negative(value: Any, name: str, owner: str) -> float:
    value = _number(value, name, owner)
    if value < 0:
        raise ValueError(f"{owner}: invalid {name} {value}, expected >= 0")
    return value


class Optimizer:
    """Base class: holds a flat list of parameters (leaf Tensors) and per-parameter state."""

    def __init__(self, params: Iterable[Tensor]) -> None:
        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params must be an iterable of Tensors (e.g. "
                            f"model.parameters()), got a single Tensor; wrap it in a list")
        self.params: list[Tensor] = list(params)
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list (did the model register its "
                             f"Parameters, or was the parameters() generator already consumed?)")
        seen: set[int] = set()
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: params must be Tensors, item {i} is a "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name}: param {i} (shape {p.shape}) is not a leaf tensor; "
                                 f"optimise leaves such as nn.Parameter")
            if p.dtype.kind != "f":
                raise TypeError(f"{name}: param {i} has dtype {p.dtype}; only floating-point "
                                f"tensors can be optimised")
            if id(p) in seen:
                raise ValueError(f"{name}: param {i} (shape {p.shape}) appears more than once; "
                                 f"it would be updated twice per step")
            seen.add(id(p))
        # per-parameter state, parallel to self.params (None until the first update)
        self.state: list[dict[str, Any] | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Set every parameter's `.grad` to None (the next backward starts from scratch)."""
        for p in self.params:
            p.grad = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient. `closure`, if given, re-evaluates the
        model and returns the loss (called first, with recording enabled); step returns it."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = np.asarray(p.grad)
            if g.shape != p.data.shape:
                raise ShapeError(f"{type(self).__name__}.step: param {i} has shape "
                                 f"{p.data.shape} but its grad has shape {g.shape}")
            if self.state[i] is None:
                self.state[i] = {}
            # cast to the param's dtype; never write into g (it may be p.grad itself)
            self._update(p.data, g.astype(p.data.dtype, copy=False), self.state[i])
        return loss

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, Any]) -> None:
        """Update the array `w` in place from its gradient `g` (read-only) and its state."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    As PyTorch: g = grad + wd * w; with momentum, b = g at the first step, afterwards
    b = momentum * b + (1 - dampening) * g, and g = g + momentum * b (Nesterov) or g = b;
    then w = w - lr * g.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 dampening: float = 0.0) -> None:
        self.lr = _non_negative(lr, "lr", "SGD")
        self.momentum = _non_negative(momentum, "momentum", "SGD")
        self.weight_decay = _non_negative(weight_decay, "weight_decay", "SGD")
        self.dampening = _number(dampening, "dampening", "SGD")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"SGD: nesterov=True requires momentum > 0 and dampening = 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")
        super().__init__(params)

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, Any]) -> None:
        if self.weight_decay != 0:
            g = g + self.weight_decay * w
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, copy=True)  # never alias p.grad
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        w -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's update and L2 weight decay added to the gradient.

    g = grad + wd * w; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; at step t
    w = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.lr = _non_negative(lr, "lr", "Adam")
        self.eps = _non_negative(eps, "eps", "Adam")
        self.weight_decay = _non_negative(weight_decay, "weight_decay", "Adam")
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}") \
                from None
        b1, b2 = _number(b1, "beta1", "Adam"), _number(b2, "beta2", "Adam")
        for k, b in ((1, b1), (2, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Adam: invalid beta{k} {b}, expected 0 <= beta{k} < 1")
        self.betas = (b1, b2)
        super().__init__(params)

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, Any]) -> None:
        b1, b2 = self.betas
        if self.weight_decay != 0:
            g = g + self.weight_decay * w
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(w)
            state["exp_avg_sq"] = np.zeros_like(w)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1 - b1) * (g - m)  # = b1 m + (1 - b1) g, in PyTorch's lerp form
        v *= b2
        v += (1 - b2) * (g * g)
        step_size = self.lr / (1 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + self.eps  # eps after the bias correction
        w -= step_size * (m / denom)
