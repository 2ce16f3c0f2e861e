"""Saving and loading state dicts as `.npz` archives: atomic writes, and loads that never unpickle.

`save` writes a temporary file next to the target, flushes and fsyncs it, then renames it over the
target with `os.replace`, so a crash or an error at any point leaves either the old file, intact,
or the complete new one. `load` reads with `allow_pickle=False` and turns every way a file can be
wrong (truncated, corrupt, not an npz, holding object arrays) into a `ValueError` naming the path.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from typing import IO, Any, Mapping

import numpy as np

from .tensor import Tensor

__all__ = ["load", "save"]

# numeric kinds only: bool, signed and unsigned integers, floats, complex
_NUMERIC = "biufc"


def _arrays(obj: Any) -> dict[str, np.ndarray]:
    """The state dict of a module (anything with `state_dict()`) or a mapping, validated."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        state = obj.state_dict()
    else:
        state = obj
    if not isinstance(state, Mapping):
        raise TypeError(f"save: expected a module with state_dict() or a dict of name -> array, "
                        f"got {type(obj).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"save: every key must be a str, got key {key!r} of type "
                            f"{type(key).__name__}")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"save: key {key!r} cannot be stored (not encodable as UTF-8)") \
                from None
        if "\x00" in key:  # zip member names end at the first NUL
            raise ValueError(f"save: key {key!r} contains a NUL character")
        if isinstance(value, Tensor):
            value = value.data
        if not isinstance(value, (np.ndarray, np.generic)):
            raise TypeError(f"save: the value for key {key!r} must be a numpy array, got "
                            f"{type(value).__name__}")
        value = np.asarray(value)
        if value.dtype.kind not in _NUMERIC or value.dtype.fields is not None:
            raise TypeError(f"save: the value for key {key!r} must be a numeric array, got dtype "
                            f"{value.dtype} (object, string and structured arrays are not saved)")
        arrays[key] = value
    return arrays


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

    The path is used exactly as given (no '.npz' is appended). Everything is validated before a
    byte is written, and the write is atomic: temporary file in the same folder, flush + fsync,
    then `os.replace`; on any failure the temporary file is removed and an existing file at
    `path` is left byte-identical."""
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
