"""Saving and loading state dicts as `.npz` archives: atomic writes, and loads that never unpickle.

`save` writes a temporary file next to the target, flushes and fsyncs it, then renames it over the
target with `os.replace`, so a crash or an error at any point leaves either the old file, intact,
or the complete new one. `load` reads with `allow_pickle=False` and turns every way a file can be
wrong (truncated, corrupt, not an npz, holding object arrays) into a `ValueError` naming the path.

A nested state (an optimizer's or scheduler's state dict, or a checkpoint such as
`{"model": model, "optimizer": opt}`) is saved flat: keys joined with '.', numbers as 0-d arrays,
lists of numbers as 1-D arrays. `load` returns that flat dict; `subdict` picks one part back out.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from typing import IO, Any, Mapping

import numpy as np

from .tensor import Tensor

__all__ = ["load", "save", "subdict"]

# numeric kinds only: bool, signed and unsigned integers, floats, complex
_NUMERIC = "biufc"


def _arrays(obj: Any) -> dict[str, np.ndarray]:
    """The state dict of `obj` (anything with `state_dict()`, or a mapping), flattened and
    validated: nested dicts and lists become dotted keys, numbers become 0-d arrays."""
    state = _state_of(obj)
    if not isinstance(state, Mapping):
        raise TypeError(f"save: expected a module with state_dict() or a dict of name -> array, "
                        f"got {type(obj).__name__}")
    arrays: dict[str, np.ndarray] = {}
    _flatten(state, "", arrays)
    return arrays


def _state_of(obj: Any) -> Any:
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    return obj


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.generic))


def _flatten(state: Mapping[Any, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
    """Add state's entries to out under `prefix + key`, recursing into nested state."""
    for key, value in state.items():
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)  # e.g. an optimizer state's parameter indices
        if not isinstance(key, str):
            raise TypeError(f"save: every key must be a str (or an int), got key {key!r} of type "
                            f"{type(key).__name__}")
        name = prefix + key
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"save: key {name!r} cannot be stored (not encodable as UTF-8)") \
                from None
        if "\x00" in name:  # zip member names end at the first NUL
            raise ValueError(f"save: key {name!r} contains a NUL character")
        value = _state_of(value)  # an optimizer, a scheduler or a module inside a checkpoint
        if isinstance(value, Mapping):
            _flatten(value, name + ".", out)
            continue
        if isinstance(value, (list, tuple)):
            if all(_is_number(v) for v in value):
                value = np.asarray(value)  # lr lists, betas, parameter indices
            else:
                _flatten(dict(enumerate(value)), name + ".", out)
                continue
        elif _is_number(value):
            value = np.asarray(value)
        if isinstance(value, Tensor):
            value = value.data
        if not isinstance(value, np.ndarray):
            raise TypeError(f"save: the value for key {name!r} must be a numpy array, a number "
                            f"or a dict / list of them, got {type(value).__name__}")
        if value.dtype.kind not in _NUMERIC or value.dtype.fields is not None:
            raise TypeError(f"save: the value for key {name!r} must be a numeric array, got "
                            f"dtype {value.dtype} (object, string and structured arrays are not "
                            f"saved)")
        if name in out:
            raise ValueError(f"save: key {name!r} occurs twice once nested keys are joined with "
                             f"'.'")
        out[name] = value


def subdict(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of a flat state dict under `prefix.`, with the prefix removed: after
    `tg.save({"model": model, "optimizer": opt}, path)` and `ck = tg.load(path)`,
    `model.load_state_dict(subdict(ck, "model"))` and `opt.load_state_dict(subdict(ck,
    "optimizer"))`. A prefix with no entries raises KeyError naming the prefixes there are."""
    head = prefix + "."
    out = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
    if not out:
        there = sorted({k.split(".", 1)[0] for k in state})
        raise KeyError(f"subdict: no keys start with {head!r}; the top-level names are {there}")
    return out


def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed zip holding one `<key>.npy` member per array (what np.load reads).

    Written by hand rather than with np.savez: savez appends '.npz' to plain paths and its own
    parameter names ('file', 'args') would collide with state-dict keys."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


def _new_file_mode(path: str) -> int:
    """Permissions for the result: the old file's, else what open() would give (0o666 & ~umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux reports it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # elsewhere reading the umask means setting it: restore it at once
    os.umask(umask)
    return umask


def save(module_or_state_dict: Any, path: str | os.PathLike[str]) -> None:
    """Write a module's `state_dict()` (or a dict of name -> numeric array) to `path` as `.npz`.

    Anything with `state_dict()` (module, optimizer, scheduler) and nested dicts / lists are
    flattened to dotted keys ("optimizer.state.0.exp_avg"); numbers become 0-d arrays. The path
    is used exactly as given (no '.npz' is appended). Everything is validated before a byte is
    written, and the write is atomic: temporary file in the same folder, flush + fsync, then
    `os.replace`; on any failure the temporary file is removed and an existing file at `path` is
    left byte-identical."""
    arrays = _arrays(module_or_state_dict)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:64] + ".", suffix=".tmp",
                               dir=folder)
    owned = False  # True once the file object owns (and will close) fd
    try:
        with os.fdopen(fd, "wb") as f:
            owned = True
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if not owned:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _sniff(head: bytes) -> str:
    """A short guess at what a file that is not an npz archive is, for the error message."""
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array, not an .npz archive of named arrays"
    if head[:1] == b"\x80":
        return "it looks like a pickle (load never unpickles)"
    if head.startswith(b"\x89HDF"):
        return "it looks like an HDF5 file"
    try:
        head.decode("utf-8")
        return "it looks like a text file"
    except UnicodeDecodeError:
        return "it is not an .npz archive (unknown binary format)"


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a file written by `save` into a plain dict of name -> numpy array.

    Never unpickles (`np.load(..., allow_pickle=False)`). A missing file raises
    FileNotFoundError; a truncated, corrupt or foreign file (not an npz, or holding object or
    other non-numeric arrays) raises ValueError naming the path and what was wrong."""
    path = os.fspath(path)
    # FileNotFoundError / IsADirectoryError propagate as they are. We own the file object:
    # np.load(path) leaks its handle when the zip turns out to be broken.
    with open(path, "rb") as f:
        return _load_npz(f, path)


def _load_npz(f: IO[bytes], path: str) -> dict[str, np.ndarray]:
    head = f.read(16)
    f.seek(0)
    # a zip starts with a local file header, or with the end record when it has no members
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06")):
        raise ValueError(f"load: {path!r} is not an .npz archive: {_sniff(head)}")
    out: dict[str, np.ndarray] = {}
    key = None
    try:
        with np.load(f, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("it is not an .npz archive")
            for key in npz.files:
                value = npz[key]  # reads the member fully, so a bad CRC shows up here
                if not isinstance(value, np.ndarray):
                    raise ValueError(f"member {key!r} is not a .npy array (a zip that is not an "
                                     f"npz archive?)")
                if value.dtype.kind not in _NUMERIC or value.dtype.fields is not None:
                    raise ValueError(f"array {key!r} has the non-numeric dtype {value.dtype}")
                out[key] = value
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile,
            zipfile.LargeZipFile, NotImplementedError, RuntimeError, MemoryError) as e:
        where = f" (while reading {key!r})" if key is not None else ""
        raise ValueError(f"load: {path!r} is corrupt or not a file written by save{where}: "
                         f"{type(e).__name__}: {e}") from e
    return out
