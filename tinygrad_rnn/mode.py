"""Recording modes: whether operations are recorded (`no_grad`, `enable_grad`), whether each is
checked for NaN/Inf (`detect_anomaly`), and the user's source line that errors point to."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from contextvars import ContextVar
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from .errors import AnomalyError

F = TypeVar("F", bound=Callable[..., Any])

# Recording mode, per thread and per asyncio task (as PyTorch's grad mode is per thread): a
# ContextVar read costs ~50 ns, a third of a threading.local attribute, and it is read per op.
GRAD, ANOMALY, TRACE = 1, 2, 4  # TRACE: primitives go to scan.py's tracer, not to the tape
_MODE: ContextVar[int] = ContextVar("tinygrad_rnn_mode", default=GRAD)
get_mode = _MODE.get


# ----------------------------------------------------------------------------- grad mode
class _ModeSwitch:
    """Sets mode bits on enter and restores the previous mode on exit (nests, reentrant, and
    one object may be entered by several threads at once: each keeps its own stack)."""

    def __init__(self) -> None:
        self._tokens = threading.local()

    def _new_mode(self, m: int) -> int:
        raise NotImplementedError

    def __enter__(self) -> Any:
        stack = self._tokens.__dict__.setdefault("stack", [])
        stack.append(_MODE.set(self._new_mode(_MODE.get())))
        return self

    def __exit__(self, *exc: object) -> None:
        _MODE.reset(self._tokens.stack.pop())


class no_grad(_ModeSwitch):
    """Context manager and decorator: operations inside record nothing (results need no grad).

    Nests, restores the previous mode on exceptions, and works as `@no_grad()` or `@no_grad`.
    """

    def __new__(cls, func: F | None = None) -> Any:
        self = super().__new__(cls)
        _ModeSwitch.__init__(self)
        return self(func) if func is not None else self

    def __init__(self, func: Callable[..., Any] | None = None) -> None:
        pass

    def _new_mode(self, m: int) -> int:
        return m & ~GRAD

    def __call__(self, func: F) -> F:
        if inspect.isgeneratorfunction(func):  # the mode must hold while the body runs, which
            @functools.wraps(func)             # is at each next()/send(), not at the call
            def generator(*args: Any, **kwargs: Any) -> Any:
                gen = func(*args, **kwargs)
                try:
                    with type(self)():
                        request = next(gen)
                    while True:
                        try:
                            response = yield request
                        except GeneratorExit:
                            with type(self)():
                                gen.close()
                            raise
                        except BaseException as e:  # noqa: BLE001 - thrown in: pass it on
                            with type(self)():
                                request = gen.throw(e)
                        else:
                            with type(self)():
                                request = gen.send(response)
                except StopIteration as stop:
                    return stop.value

            return generator  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with type(self)():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class enable_grad(no_grad):
    """Switches recording back on inside a `no_grad` block."""

    def _new_mode(self, m: int) -> int:
        return m | GRAD


def is_grad_enabled() -> bool:
    return bool(_MODE.get() & GRAD)


class detect_anomaly(_ModeSwitch):
    """Context manager: raise `AnomalyError` at the first NaN/Inf in a forward value or gradient,
    naming the operation, the shapes and the user source line that recorded it. Slow; debug only."""

    def _new_mode(self, m: int) -> int:
        return m | ANOMALY


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


_IN_PKG: dict[str, bool] = {}  # file name -> whether it is this package's (a str's hash is
# cached; a code object's is computed from its contents at every lookup)


class SourceLine:
    """Where the user's code made a record: prints as 'file:line in function' (formatted only
    when printed, so that taking it costs little)."""

    __slots__ = ("code", "line")

    def __init__(self, code: Any, line: int) -> None:
        self.code, self.line = code, line

    def __str__(self) -> str:
        return f"{self.code.co_filename}:{self.line} in {self.code.co_name}"

    __repr__ = __str__


def user_line() -> SourceLine | None:
    """The innermost caller outside this package (None if there is none)."""
    frame: Any = sys._getframe(1)
    in_pkg = _IN_PKG
    while frame is not None:
        code = frame.f_code
        name = code.co_filename
        inside = in_pkg.get(name)
        if inside is None:
            inside = in_pkg[name] = os.path.abspath(name).startswith(_PKG_DIR)
        if not inside:
            return SourceLine(code, frame.f_lineno)
        frame = frame.f_back
    return None


def user_source_line() -> str:
    """'file:line in function' of the innermost caller outside this package."""
    where = user_line()
    return "<unknown>" if where is None else str(where)


def check_finite(op_name: str, what: str, arrays: Iterator[np.ndarray] | list[np.ndarray],
                 where: Any) -> None:
    for a in arrays:
        if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = "NaN" if np.isnan(a).any() else "Inf"
            raise AnomalyError(f"{op_name}: {what} of shape {a.shape} contains {bad}"
                               f" (operation recorded at {where})")
