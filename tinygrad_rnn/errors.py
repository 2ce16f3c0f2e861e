"""Typed exceptions (and the scan's warning), all here. Each message names the operation, the
argument and the shapes involved."""

from __future__ import annotations


class ShapeError(ValueError):
    """Operands whose shapes do not fit the operation (e.g. matmul of (3, 4) and (5, 2))."""


class DTypeError(TypeError):
    """An operand of the wrong dtype (e.g. requires_grad on integer data, float targets)."""


class GraphError(RuntimeError):
    """The recorded graph cannot be replayed (already freed, or nothing requires grad)."""


class AnomalyError(RuntimeError):
    """Raised under `detect_anomaly()` at the first NaN/Inf in a forward value or a gradient."""


class TargetIndexError(IndexError, ValueError):
    """A class index outside [0, C) in `cross_entropy` or `nll_loss` (catchable as IndexError or
    ValueError)."""


class NonFiniteNormError(RuntimeError):
    """The total gradient norm is nan or inf, so clipping cannot give meaningful gradients."""


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree (or `fn` misbehaved while being checked).

    An AssertionError, so pytest shows it as a failed check. When it is about one gradient entry,
    `input_index` (or `param_index` and `param_name` for a parameter given with `params=`),
    `element_index`, `analytic` and `numeric` say which entry and both values.
    """

    def __init__(self, message: str, input_index: int | None = None,
                 element_index: tuple[int, ...] | None = None, analytic: float | None = None,
                 numeric: float | None = None, param_index: int | None = None,
                 param_name: str | None = None) -> None:
        super().__init__(message)
        self.input_index = input_index
        self.element_index = element_index
        self.analytic = analytic
        self.numeric = numeric
        self.param_index = param_index
        self.param_name = param_name


class CompileWarning(UserWarning):
    """A cell runs on the per-op tape instead of as a compiled scan (same results, slower)."""
