"""Typed exceptions. Each message names the operation, the argument and the shapes involved."""


class ShapeError(ValueError):
    """Operands whose shapes do not fit the operation (e.g. matmul of (3, 4) and (5, 2))."""


class DTypeError(TypeError):
    """An operand of the wrong dtype (e.g. requires_grad on integer data, float targets)."""


class GraphError(RuntimeError):
    """The recorded graph cannot be replayed (already freed, or nothing requires grad)."""


class AnomalyError(RuntimeError):
    """Raised under `detect_anomaly()` at the first NaN/Inf in a forward value or a gradient."""
