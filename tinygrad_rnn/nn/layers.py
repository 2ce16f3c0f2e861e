"""Feed-forward layers: Linear, Embedding, LayerNorm, Dropout, and the attention layers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..errors import DTypeError, ShapeError
from ..random import rng
from ..tensor import Tensor
from . import functional as F
from .module import Module, Parameter


def _float_input(x: Any, who: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = Tensor(np.asarray(x))
    if x.dtype.kind != "f":
        raise DTypeError(f"{who}: expected a float input, got dtype {x.dtype}")
    return x


class Linear(Module):
    """y = x W^T + b with weight (out, in), bias (out,); PyTorch's U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        k = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(rng().uniform(-k, k, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng().uniform(-k, k, (out_features,)).astype(dtype)) \
            if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}"

    def forward(self, x: Any) -> Tensor:
        x = _float_input(x, "Linear")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Linear: expected input of shape (..., {self.in_features}), "
                             f"got {x.shape}")
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """Rows of `weight` (num_embeddings, embedding_dim) picked by integer indices; N(0, 1) init.
    The `padding_idx` row starts at zero and never receives a gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} is out of range for "
                                 f"{num_embeddings} embeddings")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        w = rng().standard_normal((num_embeddings, embedding_dim)).astype(dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"

    def forward(self, indices: Any) -> Tensor:
        idx = np.asarray(indices.data if isinstance(indices, Tensor) else indices)
        if idx.dtype.kind not in "iu":
            raise DTypeError(f"Embedding: indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            bad = idx[(idx < 0) | (idx >= self.num_embeddings)].ravel()[0]
            raise IndexError(f"Embedding: index {bad} is out of range for "
                             f"{self.num_embeddings} embeddings "
                             f"(valid: 0..{self.num_embeddings - 1})")
        out = self.weight[idx]
        if self.padding_idx is not None:
            # same values, but the padding rows reach the weight only through a detached copy
            keep = (idx != self.padding_idx)[..., None]
            out = ops.where(keep, out, out.detach())
        return out


class LayerNorm(Module):
    """Normalise over the trailing `normalized_shape` axes; weight ones, bias zeros."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) \
            else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.elementwise_affine = elementwise_affine
        self.weight = Parameter(np.ones(shape, dtype=dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, dtype=dtype)) if elementwise_affine else None

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"

    def forward(self, x: Any) -> Tensor:
        x = _float_input(x, "LayerNorm")
        n = len(self.normalized_shape)
        if x.shape[x.ndim - n:] != self.normalized_shape or x.ndim < n:
            raise ShapeError(f"LayerNorm: expected input of shape (..., "
                             f"{', '.join(map(str, self.normalized_shape))}), got {x.shape}")
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Inverted dropout while training (kept values scaled by 1/(1-p)); identity in eval()."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Any) -> Tensor:
        return F.dropout(x, self.p, self.training)


# ----------------------------------------------------------------------------- attention
def _attend(who: str, scores: Tensor, values: Tensor, mask: Any) -> tuple[Tensor, Tensor]:
    """softmax over T of scores (B, T) with masked-out positions at weight exactly 0."""
    if mask is not None:
        m = np.asarray(mask.data if isinstance(mask, Tensor) else mask)
        if m.dtype != np.bool_:
            raise DTypeError(f"{who}: mask must be a bool array, got dtype {m.dtype}")
        if m.shape != scores.shape:
            raise ShapeError(f"{who}: mask of shape {m.shape} does not match (B, T) = "
                             f"{scores.shape}")
        if not m.any(axis=1).all():
            raise ValueError(f"{who}: a row of the mask has no True entry; its attention "
                             f"weights would be undefined")
        scores = ops.where(m, scores, -np.inf)
    weights = F.softmax(scores, axis=-1)
    context = (weights.unsqueeze(1) @ values).squeeze(1)
    return context, weights


def _check_qkv(who: str, query: Tensor, keys: Tensor, values: Tensor,
               dq: int | None, dk: int | None) -> None:
    ok = (query.ndim == 2 and keys.ndim == 3 and values.ndim == 3
          and keys.shape[:2] == values.shape[:2] and query.shape[0] == keys.shape[0]
          and (dq is None or query.shape[1] == dq) and (dk is None or keys.shape[2] == dk))
    if not ok:
        want = f"query (B, {dq or 'Dq'}), keys (B, T, {dk or 'Dk'}), values (B, T, Dv)"
        raise ShapeError(f"{who}: expected {want}, got {query.shape}, {keys.shape}, "
                         f"{values.shape}")


class AdditiveAttention(Module):
    """Bahdanau attention: score_t = v^T tanh(W_q q + W_k k_t).

    forward(query (B, Dq), keys (B, T, Dk), values (B, T, Dv), mask=None)
    -> (context (B, Dv), weights (B, T)). Parameters `W_q.weight`, `W_k.weight`, `v.weight`."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int,
                 dtype: Any = np.float32) -> None:
        super().__init__()
        self.query_dim, self.key_dim = query_dim, key_dim
        self.W_q = Linear(query_dim, hidden_dim, bias=False, dtype=dtype)
        self.W_k = Linear(key_dim, hidden_dim, bias=False, dtype=dtype)
        self.v = Linear(hidden_dim, 1, bias=False, dtype=dtype)

    def forward(self, query: Any, keys: Any, values: Any,
                mask: Any = None) -> tuple[Tensor, Tensor]:
        q, k, v = (_float_input(a, "AdditiveAttention") for a in (query, keys, values))
        _check_qkv("AdditiveAttention", q, k, v, self.query_dim, self.key_dim)
        hidden = (self.W_q(q).unsqueeze(1) + self.W_k(k)).tanh()  # (B, T, hidden)
        scores = self.v(hidden).squeeze(-1)  # (B, T)
        return _attend("AdditiveAttention", scores, v, mask)


class DotProductAttention(Module):
    """score_t = q . k_t (divided by sqrt(Dq) when scaled); needs Dq == Dk."""

    def __init__(self, scaled: bool = True) -> None:
        super().__init__()
        self.scaled = scaled

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}"

    def forward(self, query: Any, keys: Any, values: Any,
                mask: Any = None) -> tuple[Tensor, Tensor]:
        q, k, v = (_float_input(a, "DotProductAttention") for a in (query, keys, values))
        _check_qkv("DotProductAttention", q, k, v, None, q.shape[-1] if q.ndim == 2 else None)
        scores = (k @ q.unsqueeze(-1)).squeeze(-1)  # (B, T)
        if self.scaled:
            scores = scores * (1.0 / math.sqrt(q.shape[-1]))
        return _attend("DotProductAttention", scores, v, mask)
