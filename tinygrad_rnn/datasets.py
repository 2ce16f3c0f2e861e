"""Small real data sets bundled with the package (see `tinygrad_rnn/data/README.md`).

Each loader reads a gzip-compressed file shipped as package data, so nothing needs a network:

- `moby_dick()`: Herman Melville's *Moby Dick* as one string (~1.19 M characters).
- `movie_reviews()`: 10,605 movie-review sentences with a human sentiment rating in [-4, 4].
- `sunspots()`: 3,126 monthly mean sunspot numbers, January 1749 to June 2009.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
from importlib import resources

import numpy as np

__all__ = ["SUNSPOTS_FIRST_MONTH", "moby_dick", "movie_reviews", "sunspots"]

SUNSPOTS_FIRST_MONTH = (1749, 1)
"""(year, month) of `sunspots()[0]`; entry i is month i after it."""


def _read(name: str) -> str:
    """The UTF-8 text of the bundled file `data/<name>` (gzip-compressed)."""
    path = resources.files("tinygrad_rnn").joinpath("data", name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"tinygrad_rnn.datasets: the bundled file data/{name} is missing; "
                                f"reinstall the package (it ships as package data)") from None
    return gzip.decompress(raw).decode("utf-8")


@functools.lru_cache(maxsize=1)
def moby_dick() -> str:
    """The full text of *Moby Dick*, from "CHAPTER 1. Loomings." to the last line of chapter 135.

    Plain UTF-8 with its typographic quotes and dashes; chapters start with a line
    "CHAPTER n. Title."."""
    return _read("moby_dick.txt.gz")


@functools.lru_cache(maxsize=1)
def _movie_reviews() -> tuple[tuple[float, str], ...]:
    rows = []
    for lineno, line in enumerate(_read("movie_review_snippets.tsv.gz").splitlines(), 1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"movie_review_snippets.tsv.gz line {lineno}: expected 3 "
                             f"tab-separated fields (id, rating, text), got {len(fields)}")
        rows.append((float(fields[1]), fields[2]))
    return tuple(rows)


def movie_reviews() -> list[tuple[float, str]]:
    """Movie-review sentences (Pang & Lee) as `(rating, text)` pairs in file order.

    `rating` is the mean of 20 human ratings in [-4, 4] (Hutto & Gilbert, ICWSM 2014): 5,242
    are positive, 5,326 negative, 37 exactly zero. A new list on each call."""
    return list(_movie_reviews())


@functools.lru_cache(maxsize=1)
def _sunspots() -> np.ndarray:
    reader = csv.reader(io.StringIO(_read("sunspots_monthly.csv.gz")))
    header = next(reader)
    if header != ["year", "month", "sunspots"]:
        raise ValueError(f"sunspots_monthly.csv.gz: unexpected header {header}")
    rows = [(int(y), int(m), float(v)) for y, m, v in reader]
    months = np.array([12 * y + m - 1 for y, m, _ in rows])
    first = 12 * SUNSPOTS_FIRST_MONTH[0] + SUNSPOTS_FIRST_MONTH[1] - 1
    if months[0] != first or np.any(np.diff(months) != 1):
        raise ValueError("sunspots_monthly.csv.gz: months are not consecutive from "
                         f"{SUNSPOTS_FIRST_MONTH}")
    values = np.array([v for _, _, v in rows], dtype=np.float64)
    values.setflags(write=False)
    return values


def sunspots() -> np.ndarray:
    """Monthly mean sunspot numbers, shape (3126,) float64, from January 1749 (see
    `SUNSPOTS_FIRST_MONTH`) to June 2009. A fresh, writable copy on each call."""
    return _sunspots().copy()
