"""Variable-length batches, as `torch.nn.utils.rnn`: padding, packing and unpacking.

A `PackedSequence` holds the steps of a batch of sequences sorted by length (longest first), time
step by time step: `data` is (sum(lengths), *), `batch_sizes[t]` how many sequences have a step t.
The built-in layers take one and return one. The index arrays are numpy int64 arrays; `data` is a
Tensor, and packing and unpacking are differentiable (gathers on the tape).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ... import ops
from ...errors import ShapeError
from ...tensor import Tensor

__all__ = ["PackedSequence", "pack_padded_sequence", "pack_sequence", "pad_packed_sequence",
           "pad_sequence", "check_lengths"]


class PackedSequence(NamedTuple):
    """data (sum(lengths), *) Tensor; batch_sizes (T,) int64; sorted_indices (B,) int64 or None
    (the batch was sorted already); unsorted_indices its inverse permutation or None."""

    data: Tensor
    batch_sizes: np.ndarray
    sorted_indices: np.ndarray | None = None
    unsorted_indices: np.ndarray | None = None


def check_lengths(lengths: Any, steps: int, batch: int, who: str) -> np.ndarray:
    """`lengths` as an int64 array (B,) with 1 <= lengths[b] <= T; else a clear error."""
    arr = np.asarray(lengths.data if isinstance(lengths, Tensor) else lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{who}: lengths must be integers (a list, numpy array or Tensor), got "
                        f"dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ShapeError(f"{who}: expected one length per sequence, shape ({batch},), got "
                         f"{arr.shape}")
    bad = np.flatnonzero((arr < 1) | (arr > steps))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{who}: lengths[{i}] = {int(arr[i])} is outside 1..{steps} (every "
                         f"sequence needs at least one step, and at most the {steps} there are)")
    return arr.astype(np.int64)


def pad_sequence(sequences: Sequence[Any], batch_first: bool = False,
                 padding_value: float = 0.0) -> Tensor:
    """Sequences (L_b, *) of the same trailing shape as one (T, B, *) Tensor (batch_first: (B, T,
    *)), T = max L_b, padded with `padding_value`."""
    seqs = [s if isinstance(s, Tensor) else Tensor(np.asarray(s)) for s in sequences]
    if not seqs:
        raise ValueError("pad_sequence: expected at least one sequence")
    tail = seqs[0].shape[1:]
    for b, s in enumerate(seqs):
        if s.ndim == 0 or s.shape[1:] != tail:
            raise ShapeError(f"pad_sequence: sequence {b} has shape {s.shape}; every sequence "
                             f"must be (L, *{tail}) like sequence 0")
    steps = max(s.shape[0] for s in seqs)
    padded = []
    for s in seqs:
        if s.shape[0] < steps:
            fill = np.full((steps - s.shape[0],) + tail, padding_value, dtype=s.dtype)
            s = ops.concat([s, Tensor(fill)], axis=0)
        padded.append(s)
    return ops.stack(padded, axis=0 if batch_first else 1)


def pack_padded_sequence(input: Any, lengths: Any, batch_first: bool = False,  # noqa: A002
                         enforce_sorted: bool = True) -> PackedSequence:
    """Pack a padded (T, B, *) batch (batch_first: (B, T, *)) of sequences with these lengths.
    With enforce_sorted the lengths must be in decreasing order; otherwise the batch is sorted
    (stably) and the permutation kept in the result."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    if x.ndim < 2:
        raise ShapeError(f"pack_padded_sequence: expected a (T, B, *) input, got {x.shape}")
    if batch_first:
        x = ops.swapaxes(x, 0, 1)
    steps, batch = x.shape[0], x.shape[1]
    lens = check_lengths(lengths, steps, batch, "pack_padded_sequence")
    if enforce_sorted:
        if np.any(np.diff(lens) > 0):
            raise ValueError("pack_padded_sequence: lengths must be sorted in decreasing order "
                             f"when enforce_sorted=True, got {lens.tolist()}; pass "
                             "enforce_sorted=False to pack an unsorted batch")
        order, inverse = np.arange(batch), None
    else:
        order = np.argsort(-lens, kind="stable")
        inverse = np.argsort(order)
    sizes = (lens[order][None, :] > np.arange(int(lens.max()))[:, None]).sum(axis=1)
    t_idx = np.repeat(np.arange(sizes.size), sizes)
    b_idx = np.concatenate([order[:n] for n in sizes])
    return PackedSequence(x[t_idx, b_idx], sizes.astype(np.int64),
                          None if inverse is None else order.astype(np.int64),
                          None if inverse is None else inverse.astype(np.int64))


def pack_sequence(sequences: Sequence[Any], enforce_sorted: bool = True) -> PackedSequence:
    """Pack sequences (L_b, *) directly: pad_sequence, then pack_padded_sequence."""
    lens = [int(np.shape(s.data if isinstance(s, Tensor) else s)[0]) for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lens, enforce_sorted=enforce_sorted)


def _layout(seq: PackedSequence, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(lengths (B,) in the original batch order, row (T, B): the data row of each step, -1
    past a sequence's end), checked against data's length."""
    if not isinstance(seq, PackedSequence):
        raise TypeError(f"{who}: expected a PackedSequence, got {type(seq).__name__}")
    sizes = np.asarray(seq.batch_sizes)
    if sizes.ndim != 1 or sizes.size == 0 or sizes.dtype.kind not in "iu" or sizes[0] < 1 or \
            np.any(np.diff(sizes) > 0):
        raise ValueError(f"{who}: batch_sizes must be a non-empty, non-increasing int array, got "
                         f"{sizes.tolist()}")
    if int(sizes.sum()) != seq.data.shape[0]:
        raise ShapeError(f"{who}: batch_sizes sum to {int(sizes.sum())} steps but data has "
                         f"{seq.data.shape[0]} rows")
    batch = int(sizes[0])
    order = (np.arange(batch) if seq.sorted_indices is None
             else np.asarray(seq.sorted_indices, dtype=np.int64))
    if sorted(order.tolist()) != list(range(batch)):
        raise ValueError(f"{who}: sorted_indices is not a permutation of 0..{batch - 1}")
    valid = np.arange(batch)[None, :] < sizes[:, None]  # (T, sorted position)
    row = np.full(valid.shape, -1, dtype=np.int64)
    row[valid] = np.arange(int(sizes.sum()))
    lens = np.empty(batch, dtype=np.int64)
    lens[order] = valid.sum(axis=0)
    by_batch = np.empty_like(row)
    by_batch[:, order] = row
    return lens, by_batch


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False,
                        padding_value: float = 0.0, total_length: int | None = None
                        ) -> tuple[Tensor, np.ndarray]:
    """Undo packing: (padded (T, B, *) Tensor in the original batch order (batch_first: (B, T,
    *)), lengths (B,) int64). T is the longest length, or total_length if given."""
    lens, row = _layout(sequence, "pad_packed_sequence")
    if total_length is not None:
        if total_length < row.shape[0]:
            raise ValueError(f"pad_packed_sequence: total_length={total_length} is shorter than "
                             f"the longest sequence ({row.shape[0]} steps)")
        extra = np.full((total_length - row.shape[0], row.shape[1]), -1, dtype=np.int64)
        row = np.concatenate([row, extra])
    data = sequence.data
    fill = Tensor(np.full((1,) + data.shape[1:], padding_value, dtype=data.dtype))
    padded = ops.concat([data, fill], axis=0)[np.where(row < 0, data.shape[0], row)]
    return (ops.swapaxes(padded, 0, 1) if batch_first else padded), lens


def repack(padded: Tensor, like: PackedSequence) -> PackedSequence:
    """A (T, B, *) result of a packed input packed the same way (same batch_sizes and order)."""
    _, row = _layout(like, "pack")
    t_idx, b_idx = np.nonzero(row >= 0)
    keep = np.argsort(row[t_idx, b_idx])
    return PackedSequence(padded[t_idx[keep], b_idx[keep]], like.batch_sizes,
                          like.sorted_indices, like.unsorted_indices)
