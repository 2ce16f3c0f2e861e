"""Plumbing shared by the demo and the example programs: a progress reporter, a BLAS thread
limit and the final `RESULT {json}` line. None of it is needed to build or train a model."""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import Any, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress(Generic[T]):
    """A tqdm bar when tqdm is installed, else a plain line on stderr about every 10%.

    Wrap an iterable (`for x in Progress(xs, desc="train")`) or call `update(n, **postfix)`;
    the postfix (e.g. `loss="0.312"`) is shown after the count. Also a context manager."""

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", enabled: bool = True) -> None:
        if total is None:
            if not hasattr(iterable, "__len__"):
                raise TypeError("Progress: pass total= (the iterable has no len(), or there is "
                                "no iterable)")
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.enabled = iterable, total, desc, enabled
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start, self._decile = time.perf_counter(), 0
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is an optional extra: fall back to plain lines
            self._bar: Any = None
        else:
            self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled,
                             file=sys.stderr, dynamic_ncols=True)

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress: nothing to iterate; pass an iterable or call update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)  # after the loop body, so a postfix it set is shown
        finally:
            self.close()

    def set_postfix(self, **postfix: Any) -> None:
        """Replace the values shown after the count (shown at the next update)."""
        self.postfix = postfix
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by n steps; a postfix given here replaces the previous one."""
        if postfix:
            self.set_postfix(**postfix)
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        # one line each time the count crosses a multiple of 10% (uneven n included), and at
        # the end; int arithmetic, so 10 lines for any total >= 10
        decile = self.n * 10 // max(1, self.total)
        if self.enabled and n > 0 and decile > self._decile:
            self._decile = decile
            extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
            head = f"{self.desc}: " if self.desc else ""
            print(f"{head}{self.n}/{self.total} ({time.perf_counter() - self._start:.0f}s)"
                  f"{extra}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Finish the bar (the plain fallback has nothing to finish); safe to call twice."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def limit_blas_threads(n: int) -> bool:
    """Run numpy's BLAS on n threads; n <= 0 leaves its default. Needs threadpoolctl (an
    optional extra); returns whether the limit was applied.

    The matrices of a small RNN are too small to gain from a second thread, and on a busy machine
    a spinning multi-threaded OpenBLAS can be ten times slower. (Setting OPENBLAS_NUM_THREADS
    works without threadpoolctl, but only before numpy is imported, so not from here.)"""
    if n <= 0:
        return False
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(limits=n, user_api="blas")  # stays in force: never restored
    return True


def print_result(result: dict[str, Any]) -> None:
    """Print `RESULT {json}` on stdout: every program's last line, parsed by scripts and tests."""
    print("RESULT " + json.dumps(result), flush=True)
