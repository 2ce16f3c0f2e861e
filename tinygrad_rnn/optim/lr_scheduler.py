"""Learning-rate schedulers with PyTorch's semantics and numbers.

Call `scheduler.step()` after `optimizer.step()`, once per epoch (or per update); it writes the new
learning rates into `optimizer.param_groups[i]["lr"]`. `last_epoch` counts the steps (0 after
construction), `get_last_lr()` returns the rates set last. The step-to-step forms are PyTorch's
recursive ones (CosineAnnealingLR included), so the numbers match PyTorch's, and a rate changed by
hand between steps is carried along as it is there.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .optimizer import Optimizer, _like, _non_negative, _number

__all__ = ["CosineAnnealingLR", "ExponentialLR", "LRScheduler", "LambdaLR", "ReduceLROnPlateau",
           "StepLR"]


def _positive_int(value: Any, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


class LRScheduler:
    """Base class: sets each group's "initial_lr" (kept if already there: the base_lrs), then
    takes the initial step; subclasses implement `get_lr()` from `last_epoch` and the groups.

    `state_dict()` holds the numeric state, PyTorch's names: last_epoch, base_lrs, _last_lr,
    _step_count and the numeric settings; `tg.save` writes it, `load_state_dict` accepts it
    nested or flat (as `tg.load` returns it). Callables (LambdaLR's lr_lambda) are not saved."""

    # what state_dict() saves: the progress, then the subclass's numeric settings
    _state_names: tuple[str, ...] = ("last_epoch", "base_lrs", "_last_lr", "_step_count")

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{name}: param_groups[{i}] has no 'initial_lr', needed to "
                                   f"resume with last_epoch={last_epoch}; load the optimizer's "
                                   f"state dict first, or pass last_epoch=-1")
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        """The learning rates for the new `last_epoch`, one per param group."""
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last step, one per param group."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance `last_epoch` by one and set every group's lr (call after optimizer.step())."""
        if self._step_count == 1 and not getattr(self.optimizer, "_opt_called", False):
            warnings.warn(f"{type(self).__name__}.step() was called before optimizer.step(); "
                          f"call it after (as in PyTorch >= 1.1), or the first value of the "
                          f"schedule is skipped", UserWarning, stacklevel=2)
        self._step_count += 1
        self.last_epoch += 1
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = float(lr)  # a numpy scalar in a group would upcast float32 updates
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """{name: number or list of numbers}: the progress and the numeric settings."""
        return {k: _copy(getattr(self, k)) for k in self._state_names}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict()`, also as read back by tg.load (numbers as 0-d arrays). A missing
        or unexpected key or a wrong number of rates raises one ValueError; nothing changes."""
        own = self.state_dict()
        problems = [f"missing key {k!r}" for k in own if k not in state_dict]
        problems += [f"unexpected key {k!r}" for k in state_dict if k not in own]
        values = {}
        for key, template in own.items():
            if key not in state_dict:
                continue
            value = _like(state_dict[key], template)
            if isinstance(template, list):
                value = list(value) if isinstance(value, (list, tuple)) else [value]
                if len(value) != len(template):
                    problems.append(f"{key!r}: {len(value)} values saved, the optimizer has "
                                    f"{len(template)} param groups")
            numbers = value if isinstance(value, list) else [value]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                problems.append(f"{key!r}: expected a number or a list of numbers, got "
                                f"{value!r}")
            values[key] = value
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems)
                             + ". Nothing was loaded.")
        self.__dict__.update(values)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


class LambdaLR(LRScheduler):
    """lr = initial_lr * lr_lambda(last_epoch); one function, or a list of one per group."""

    def __init__(self, optimizer: Optimizer,
                 lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
                 last_epoch: int = -1) -> None:
        groups = len(optimizer.param_groups) if isinstance(optimizer, Optimizer) else 1
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != groups:
                raise ValueError(f"LambdaLR: expected {groups} lr_lambdas (one per param "
                                 f"group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * groups
        for f in self.lr_lambdas:
            if not callable(f):
                raise TypeError(f"LambdaLR: lr_lambda must be callable, got {type(f).__name__}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base_lr * f(self.last_epoch) for f, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """lr = lr * gamma whenever last_epoch is a positive multiple of step_size."""

    _state_names = LRScheduler._state_names + ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _positive_int(step_size, "step_size", "StepLR")
        self.gamma = _number(gamma, "gamma", "StepLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class ExponentialLR(LRScheduler):
    """lr = lr * gamma at every step."""

    _state_names = LRScheduler._state_names + ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _number(gamma, "gamma", "ExponentialLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:  # resuming with last_epoch >= 0 must not decay once more
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing (SGDR without restarts) in PyTorch's recursive form, which follows
    eta_min + (initial_lr - eta_min) (1 + cos(pi t / T_max)) / 2 and keeps oscillating after T_max:
    lr_t = eta_min + (lr_{t-1} - eta_min) (1 + cos(pi t / T_max)) / (1 + cos(pi (t-1) / T_max))."""

    _state_names = LRScheduler._state_names + ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _positive_int(T_max, "T_max", "CosineAnnealingLR")
        self.eta_min = _number(eta_min, "eta_min", "CosineAnnealingLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if (t - 1 - T) % (2 * T) == 0:  # the recursion's denominator is 0 here: add the step
            return [lr + (base_lr - eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for base_lr, lr in zip(self.base_lrs, self._current_lrs())]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (lr - eta_min) + eta_min for lr in self._current_lrs()]


class ReduceLROnPlateau(LRScheduler):
    """Multiply every lr by `factor` (not below min_lr) once the metric passed to `step(metric)`
    has not improved for more than `patience` steps; then wait `cooldown` steps. Improvement
    means below best * (1 - threshold) ('min', 'rel'), below best - threshold ('min', 'abs'),
    or above best * (1 + threshold) / best + threshold in 'max' mode."""

    _state_names = ("last_epoch", "_last_lr", "best", "num_bad_epochs", "cooldown_counter",
                    "factor", "min_lrs", "patience", "cooldown", "threshold", "eps")

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] = 0,
                 eps: float = 1e-8) -> None:
        owner = "ReduceLROnPlateau"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{owner}: expected an Optimizer, got {type(optimizer).__name__}")
        self.factor = _number(factor, "factor", owner)
        if self.factor >= 1.0:
            raise ValueError(f"{owner}: factor must be < 1.0, got {self.factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        groups = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != groups:
                raise ValueError(f"{owner}: expected {groups} min_lrs (one per param group), "
                                 f"got {len(min_lr)}")
            self.min_lrs = [_non_negative(m, "min_lr", owner) for m in min_lr]
        else:
            self.min_lrs = [_non_negative(min_lr, "min_lr", owner)] * groups
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.threshold = _number(threshold, "threshold", owner)
        self.patience = int(_non_negative(patience, "patience", owner))
        self.cooldown = int(_non_negative(cooldown, "cooldown", owner))
        self.eps = _number(eps, "eps", owner)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = self._current_lrs()

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                    else best + self.threshold)

    def step(self, metrics: Any) -> None:  # type: ignore[override]
        """Record this epoch's metric (a number or a one-element array/Tensor); maybe reduce."""
        current = float(np.asarray(metrics))
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during the cooldown do not count
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs, strict=True):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:  # smaller changes are ignored, as PyTorch
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()
