"""Loss modules, as PyTorch's: each holds its options and calls the function of the same name in
`nn.functional`. Class weights and `pos_weight` are buffers (in `state_dict()`, as PyTorch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import Tensor
from . import functional as F
from .module import Module


def _weight_buffer(module: Module, name: str, weight: Any) -> None:
    """Register `weight` (None, an array, a list or a Tensor) as a buffer; lists become arrays."""
    if weight is not None and not isinstance(weight, Tensor):
        weight = np.asarray(weight)
    module.register_buffer(name, weight)


class _Loss(Module):
    """A loss with a `reduction` ('mean', 'sum' or 'none'), checked when it is made."""

    weight: Tensor | None  # class weights (a buffer), in the losses that take them
    pos_weight: Tensor | None

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        F._check_reduction(reduction, type(self).__name__)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """forward(pred, target): F.mse_loss, (pred - target)^2 reduced."""

    def forward(self, pred: Any, target: Any) -> Tensor:
        return F.mse_loss(pred, target, reduction=self.reduction)


class NLLLoss(_Loss):
    """forward(log_probs (N, C, ...), target (N, ...)): F.nll_loss with class weights (C,)."""

    def __init__(self, weight: Any = None, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        _weight_buffer(self, "weight", weight)
        self.ignore_index = ignore_index

    def forward(self, log_probs: Any, target: Any) -> Tensor:
        return F.nll_loss(log_probs, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class CrossEntropyLoss(NLLLoss):
    """forward(logits (N, C, ...), target (N, ...)): F.cross_entropy with class weights (C,)
    and label smoothing in [0, 1]."""

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__(weight, ignore_index, reduction)
        F._check_label_smoothing(label_smoothing, "CrossEntropyLoss")
        self.label_smoothing = label_smoothing

    def forward(self, logits: Any, target: Any) -> Tensor:
        return F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class BCEWithLogitsLoss(_Loss):
    """forward(logits, target): F.binary_cross_entropy_with_logits with an elementwise `weight`
    and a `pos_weight` (e.g. (C,)), both broadcast to the logits' shape."""

    def __init__(self, weight: Any = None, reduction: str = "mean",
                 pos_weight: Any = None) -> None:
        super().__init__(reduction)
        _weight_buffer(self, "weight", weight)
        _weight_buffer(self, "pos_weight", pos_weight)

    def forward(self, logits: Any, target: Any) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, weight=self.weight,
                                                  reduction=self.reduction,
                                                  pos_weight=self.pos_weight)
