"""RMSprop (Hinton), plain or centered (Graves), with momentum and L2 weight decay."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer, _lerp_, _non_negative

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop as PyTorch: g = grad + wd * w; v = alpha v + (1 - alpha) g^2; centered:
    a = alpha a + (1 - alpha) g and d = sqrt(v - a^2) + eps, else d = sqrt(v) + eps; with
    momentum b = momentum b + g / d and w = w - lr b, else w = w - lr g / d.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-2,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps,
                                  "centered": centered, "weight_decay": weight_decay})

    def _check_group(self, group: dict[str, Any]) -> None:
        for key in ("lr", "momentum", "alpha", "eps", "weight_decay"):
            group[key] = _non_negative(group[key], key, "RMSprop")
        group["centered"] = bool(group["centered"])

    def update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        alpha, momentum, g = group["alpha"], group["momentum"], grad
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(param)
        if momentum > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = np.zeros_like(param)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = np.zeros_like(param)
        state["step"] += 1
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * param
        v = state["square_avg"]
        v *= alpha
        v += (1 - alpha) * g * g
        if group["centered"]:
            a = state["grad_avg"]
            _lerp_(a, g, 1 - alpha)
            d = v - a * a
            np.sqrt(d, out=d)
        else:
            d = np.sqrt(v)
        d += group["eps"]
        if momentum > 0:
            buf = state["momentum_buffer"]
            buf *= momentum
            buf += g / d
            param -= group["lr"] * buf
        else:
            param += (-group["lr"] * g) / d
