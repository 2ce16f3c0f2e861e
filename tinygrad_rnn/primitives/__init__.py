"""The table of built-in primitives, by concern: each forward next to its derivative.

Conventions: see `primitive.Primitive`. Importing this package registers them all in
`primitive.REGISTRY` (the gradient tests walk it).
"""

from . import elementwise, fused, reductions, shape

__all__ = ["elementwise", "fused", "reductions", "shape"]
