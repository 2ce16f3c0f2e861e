"""Adam (Kingma & Ba) and AdamW (Loshchilov & Hutter), with PyTorch's update rules."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer, _lerp_, _non_negative, _number

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam with PyTorch's update; L2 weight decay added to the gradient, or decoupled (AdamW).

    g = grad + wd * w (or w = w * (1 - lr * wd) when decoupled); m = b1 m + (1 - b1) g;
    v = b2 v + (1 - b2) g^2; v_max = max(v_max, v) with amsgrad (used for v below); at step t
    w = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *,
                 decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "amsgrad": amsgrad,
                                  "decoupled_weight_decay": decoupled_weight_decay})

    def _check_group(self, group: dict[str, Any]) -> None:
        owner = type(self).__name__
        for key in ("lr", "eps", "weight_decay"):
            group[key] = _non_negative(group[key], key, owner)
        try:
            b1, b2 = group["betas"]
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got "
                             f"{group['betas']!r}") from None
        b1, b2 = _number(b1, "beta1", owner), _number(b2, "beta2", owner)
        for k, b in ((1, b1), (2, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{owner}: invalid beta{k} {b}, expected 0 <= beta{k} < 1")
        group["betas"] = (b1, b2)
        group["amsgrad"] = bool(group["amsgrad"])
        group["decoupled_weight_decay"] = bool(group["decoupled_weight_decay"])

    def update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        lr, (b1, b2), wd, g = group["lr"], group["betas"], group["weight_decay"], grad
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(param)
        state["step"] += 1
        t = state["step"]
        if wd != 0:
            if group["decoupled_weight_decay"]:
                param *= 1 - lr * wd
            else:
                g = g + wd * param
        m, v = state["exp_avg"], state["exp_avg_sq"]
        # one scratch array for every intermediate: each fresh temporary of a large parameter
        # would be new pages to fault in
        tmp = np.empty_like(m)
        _lerp_(m, g, 1 - b1, tmp)  # m = b1 m + (1 - b1) g
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v *= b2
        v += tmp
        step_size = lr / (1 - b1 ** t)
        if group["amsgrad"]:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        denom = np.sqrt(v, out=tmp)
        denom /= (1 - b2 ** t) ** 0.5
        denom += group["eps"]  # eps after the bias correction
        np.divide(m, denom, out=tmp)
        tmp *= -step_size
        param += tmp


class AdamW(Adam):
    """Adam with decoupled weight decay: w = w * (1 - lr * wd) before the Adam step."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad,
                         decoupled_weight_decay=True)

    def _check_group(self, group: dict[str, Any]) -> None:
        group["decoupled_weight_decay"] = True  # as PyTorch, also for a loaded Adam state
        super()._check_group(group)
