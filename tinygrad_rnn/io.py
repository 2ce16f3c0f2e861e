"""Saving and loading state dicts as `.npz` or `.safetensors` files: atomic writes, and loads that
never run code and check every declared size before allocating.

The format is chosen by the path's suffix: `.safetensors` (case-insensitive) reads and writes the
safetensors format (a PyTorch or Hugging Face checkpoint loads with numpy alone), anything else an
uncompressed `.npz` archive. A nested state (an optimizer's or scheduler's state dict, or a
checkpoint such as `{"model": model, "optimizer": opt}`) is saved flat: keys joined with '.',
numbers as 0-d arrays, lists of numbers as 1-D arrays. `load` returns that flat dict; `subdict`
picks one part back out.

`save` writes `.{name}.tgsave-<random>.tmp` next to the target, fsyncs it, then renames it over
the target, so the target is always either the old file, intact, or the complete new one. A save
interrupted by SIGTERM / SIGHUP (main thread) removes its temporary file before the signal takes
effect; one left by a hard kill is removed by the next save to the same target.

`load` turns every way a file can be wrong (truncated, corrupt, foreign, ambiguous, declaring more
data than it holds) into a `ValueError` naming the path, and refuses files holding more than
`max_bytes` of array data (4 GiB by default).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import signal
import stat
import struct
import threading
import zipfile
import zlib
from types import FrameType, TracebackType
from typing import IO, Any, Callable, Mapping, cast

import numpy as np

from .tensor import Tensor

try:  # POSIX: a live save holds a lock on its temporary file; leftovers of killed ones do not
    import fcntl
except ImportError:  # Windows: an open file cannot be removed, which tells the same
    fcntl = None  # type: ignore[assignment]

__all__ = ["MAX_BYTES", "load", "save", "subdict"]

MAX_BYTES = 4 * 2**30
"""`load`'s default limit on the array bytes of one file; pass `max_bytes=` to raise it."""

# numeric kinds only: bool, signed and unsigned integers, floats, complex
_NUMERIC = "biufc"
_NPY = ".npy"
# a zip member name is at most 65,535 bytes, and the member of key k is named k + '.npy'
_MAX_KEY_BYTES = 0xFFFF - len(_NPY)
_MAX_DIMS = 64  # numpy's limit on ndim
_NPY_HEADER_MAX = 10_000  # numpy's own bound on a .npy header (it is parsed by literal_eval)
_ZIP_LOCAL = struct.Struct("<4s2B4HL2L2H")  # a zip local file header, before name and extra
# the safetensors library's own bound on the JSON header: a file with more is refused by it too
_ST_HEADER_MAX = 100_000_000
# safetensors dtype name -> numpy dtype (little-endian, as the format stores it)
_ST_DTYPES = {name: np.dtype(code) for name, code in [
    ("BOOL", "|b1"), ("U8", "|u1"), ("I8", "|i1"), ("U16", "<u2"), ("I16", "<i2"),
    ("F16", "<f2"), ("U32", "<u4"), ("I32", "<i4"), ("F32", "<f4"), ("U64", "<u8"),
    ("I64", "<i8"), ("F64", "<f8")]}
_ST_NAMES = {(d.kind, d.itemsize): name for name, d in _ST_DTYPES.items()}
_BF16 = "BF16"  # no numpy dtype: read as uint16 and widened exactly to float32
_ST_INFO_KEYS = {"data_offsets", "dtype", "shape"}
_CHUNK = 16 * 2**20  # write in pieces so a pending SIGTERM is acted on within one piece
_TERMINATING = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


# ----------------------------------------------------------------------------- flattening
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


def _is_safetensors(path: str) -> bool:
    return path.lower().endswith(".safetensors")


def _short(key: str) -> str:
    """A key for an error message: the start of a very long one."""
    return repr(key) if len(key) <= 60 else repr(key[:40]) + f"... ({len(key):,} characters)"


# ----------------------------------------------------------------------------- writing
def _check_npz_keys(arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse keys an .npz archive cannot give back as they were."""
    for key in arrays:
        n = len(key.encode("utf-8"))
        if n > _MAX_KEY_BYTES:
            raise ValueError(f"save: key {_short(key)} is {n:,} bytes long in UTF-8; an .npz "
                             f"archive holds keys of at most {_MAX_KEY_BYTES:,} bytes (a zip "
                             f"member name of 65,535 with '.npy'): use a shorter key")
        if key.endswith(_NPY) and key[:-len(_NPY)] in arrays:
            # np.load reads both members 'k.npy' and 'k.npy.npy' back for the key 'k.npy'
            raise ValueError(f"save: keys {key[:-len(_NPY)]!r} and {key!r} cannot both be in "
                             f"an .npz archive (np.load confuses their members); rename one")


def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed zip holding one `<key>.npy` member per array (what np.load reads).

    Written by hand rather than with np.savez: savez appends '.npz' to plain paths and its own
    parameter names ('file', 'args') would collide with state-dict keys."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(key + _NPY, mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


def _safetensors_dtype(key: str, value: np.ndarray) -> str:
    name = _ST_NAMES.get((value.dtype.kind, value.dtype.itemsize))
    if name is None:
        raise TypeError(f"save: the value for key {key!r} has dtype {value.dtype}, which "
                        f"safetensors cannot hold (it has bool, int8-64, uint8-64 and "
                        f"float16/32/64): convert it with .astype, or save to an .npz path")
    return name


def _write_safetensors(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """8-byte little-endian header length, the JSON header (compact, padded with spaces to a
    multiple of 8), then the little-endian data: the layout the safetensors library writes."""
    # data by decreasing item size, so each tensor starts at a multiple of its item size (what
    # zero-copy readers need); the header keeps the dict's order, which load gives back
    layout = sorted(arrays, key=lambda k: -arrays[k].dtype.itemsize)
    offsets, end = {}, 0
    for key in layout:
        offsets[key] = (end, end + arrays[key].nbytes)
        end += arrays[key].nbytes
    header = {key: {"dtype": _safetensors_dtype(key, value), "shape": list(value.shape),
                    "data_offsets": list(offsets[key])} for key, value in arrays.items()}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)
    for key in layout:
        value = arrays[key]
        data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        view = memoryview(data.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        for start in range(0, len(view), _CHUNK):
            f.write(view[start:start + _CHUNK])


def _check_safetensors_keys(arrays: Mapping[str, np.ndarray]) -> None:
    if "__metadata__" in arrays:
        raise ValueError("save: the key '__metadata__' is reserved by the safetensors format; "
                         "rename it")
    for key, value in arrays.items():
        _safetensors_dtype(key, value)


def save(module_or_state_dict: Any, path: str | os.PathLike[str]) -> None:
    """Write a module's `state_dict()` (or a dict of name -> numeric array) to `path`: safetensors
    if the path ends in `.safetensors`, else an uncompressed `.npz` (no suffix is appended).

    Anything with `state_dict()` (module, optimizer, scheduler) and nested dicts / lists are
    flattened to dotted keys ("optimizer.state.0.exp_avg"); numbers become 0-d arrays. Everything
    is validated before a byte is written, and the write is atomic (see the module docstring): on
    any failure the temporary file is removed and an existing file at `path` is left
    byte-identical."""
    arrays = _arrays(module_or_state_dict)
    path = os.fspath(path)
    if _is_safetensors(path):
        _check_safetensors_keys(arrays)
        _atomic_write(path, lambda f: _write_safetensors(f, arrays))
    else:
        _check_npz_keys(arrays)
        _atomic_write(path, lambda f: _write_npz(f, arrays))


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Run `write` on a new temporary file next to `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save: cannot write {path!r}: the folder {folder!r} does not "
                                f"exist (create it first, e.g. os.makedirs(folder))")
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: cannot write {path!r}: it is a folder; give a file name")
    prefix = _temp_prefix(path)
    _remove_abandoned(folder, prefix)
    mode = _new_file_mode(path)
    with _Termination(path) as term:
        try:
            fd, tmp = _create_temp(folder, prefix)
        except OSError as e:  # e.g. no permission, read-only: name the target, not the temp file
            raise OSError(e.errno, f"save: cannot write {path!r}: creating a file in {folder!r} "
                                   f"failed: {e.strerror}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                fd = -1  # the file object owns it now
                write(cast(IO[bytes], _CheckedFile(f, term)))
                f.flush()
                os.fsync(f.fileno())
                term.check()
                os.chmod(tmp, mode)
                if fcntl is None:  # Windows cannot rename an open file
                    f.close()
                # on POSIX the file stays open, so locked, until it has its final name
                os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    _fsync_dir(folder)


def _temp_prefix(path: str) -> str:
    """'.<name>.tgsave-': how every temporary file of a save to `path` is named, up to the
    random part (a very long name is shortened with a hash, to stay within 255 bytes)."""
    name = os.path.basename(path)
    raw = os.fsencode(name)
    if len(raw) > 200:
        name = os.fsdecode(raw[:64]) + "~" + hashlib.sha256(raw).hexdigest()[:16]
    return f".{name}.tgsave-"


def _create_temp(folder: str, prefix: str) -> tuple[int, str]:
    """A new temporary file, locked (POSIX) so no other save takes it for a leftover."""
    while True:
        tmp = os.path.join(folder, prefix + secrets.token_hex(8) + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o600)
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # another save may have taken the unlocked new file for a leftover and removed it
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd, tmp
        except FileNotFoundError:
            pass
        except OSError:  # no locks on this file system: leftovers are then never removed
            return fd, tmp
        os.close(fd)


def _remove_abandoned(folder: str, prefix: str) -> None:
    """Remove temporary files of earlier saves to the same target that died without cleaning
    up (SIGKILL, power loss). A live save holds a lock on its file (POSIX) or keeps it open,
    which Windows refuses to remove, so it is left alone."""
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{16}\.tmp\Z")
    try:
        names = [n for n in os.listdir(folder) if pattern.match(n)]
    except OSError:
        return
    for name in names:
        tmp = os.path.join(folder, name)
        if fcntl is None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            continue
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(tmp)
        except OSError:  # locked: a save in progress (or no locks here: cannot tell)
            pass
        finally:
            os.close(fd)


class _Terminated(BaseException):
    """A SIGTERM / SIGHUP that arrived during a save, raised at its next write."""


class _Termination:
    """While saving in the main thread, SIGTERM and SIGHUP are only recorded; the next write
    raises, the temporary file is removed, the previous handlers come back, and the signal is
    sent again, so its usual effect (by default, the end of the process) happens after cleanup.
    Ignored signals stay ignored."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise _Terminated(self.signum)

    def __enter__(self) -> _Termination:
        if threading.current_thread() is threading.main_thread():
            for sig in _TERMINATING:
                old = signal.getsignal(sig)
                if old is not signal.SIG_IGN and old is not None:  # None: set outside Python
                    self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        if self.signum is not None:
            signal.raise_signal(self.signum)  # runs the previous handler now
            if kind is _Terminated:  # it did not end the process, and nothing was saved
                name = signal.Signals(self.signum).name
                raise InterruptedError(f"save: {self.path!r} was not written: {name} arrived "
                                       f"during the save") from None


class _CheckedFile:
    """The temporary file, raising at a write once SIGTERM / SIGHUP has arrived."""

    def __init__(self, f: IO[bytes], term: _Termination) -> None:
        self._f = f
        self._term = term

    def write(self, data: Any) -> int:
        self._term.check()
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:  # tell, seek, flush: what zipfile also uses
        return getattr(self._f, name)


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


# ----------------------------------------------------------------------------- reading
def load(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """Read a file written by `save` (or by np.savez, or a safetensors file when the path ends in
    `.safetensors`) into a plain dict of name -> numpy array, in the file's order.

    Nothing in the file is executed (no pickle). Every declared size is checked against the
    others and against the file before anything is allocated; more than `max_bytes` of array
    data is refused. safetensors BF16 arrays come back as float32 (exact: bfloat16 is the top
    half of a float32). A missing file raises FileNotFoundError; a truncated, corrupt, foreign
    or ambiguous file (two arrays of one name) raises ValueError naming the path."""
    path = os.fspath(path)
    # FileNotFoundError / IsADirectoryError propagate as they are
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if _is_safetensors(path):
            return _load_safetensors(f, path, size, max_bytes)
        return _load_npz(f, path, size, max_bytes)


def _bad(path: str, what: str, where: str | None = None) -> ValueError:
    """The ValueError for a file that cannot be loaded, naming the path and the part (`where`)."""
    return ValueError(f"load: {path!r}{', ' + where if where else ''}: {what}")


def _member(name: str) -> str:
    return f"member {_short(name)}"


def _tensor(name: str) -> str:
    return f"tensor {_short(name)}"


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
    if len(head) > 8 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < _ST_HEADER_MAX:
        return "it looks like a safetensors file: load picks the format by suffix, so name it " \
               "'.safetensors'"
    try:
        head.decode("utf-8")
        return "it looks like a text file"
    except UnicodeDecodeError:
        return "it is not an .npz archive (unknown binary format)"


# ----------------------------------------------------------------------------- reading .npz
def _load_npz(f: IO[bytes], path: str, size: int, max_bytes: int) -> dict[str, np.ndarray]:
    head = f.read(16)
    # a zip starts with a local file header, or with the end record when it has no members
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06")):
        raise _bad(path, f"not an .npz archive: {_sniff(head)}")
    try:
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except Exception as e:  # zipfile parsing hostile bytes: any failure means a bad archive
        raise _bad(path, f"corrupt, or not an .npz archive: {type(e).__name__}: {e}") from e
    members = _npz_members(f, path, size, max_bytes, infos)
    return {key: _read_npy_member(f, path, info, start) for key, info, start in members}


def _npz_members(f: IO[bytes], path: str, size: int, max_bytes: int,
                 infos: list[zipfile.ZipInfo]) -> list[tuple[str, zipfile.ZipInfo, int]]:
    """(key, zip entry, offset of its data) per member, once names, methods, sizes and places
    are checked: nothing is read into memory that the file does not hold, nor twice."""
    members: list[Any] = []
    keys: dict[str, Any] = {}
    spans: list[Any] = []
    total = 0
    for info in infos:
        name = info.orig_filename
        where = _member(name)
        key = name[:-len(_NPY)] if name.endswith(_NPY) else name
        if key in keys:
            what = "two members have this name" if keys[key] == name else \
                f"it and member {keys[key]!r} both read as the key {key!r}"
            raise _bad(path, f"ambiguous archive: {what}; load will not guess which is meant",
                       where)
        keys[key] = name
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise _bad(path, "compressed or encrypted; load reads only plain archives (as save "
                             "and np.savez write them), whose sizes it can check before "
                             "reading: re-save it, e.g. tg.save(dict(np.load(p)), new_path)", where)
        if info.compress_size != info.file_size:
            raise _bad(path, f"corrupt: the zip directory declares {info.compress_size:,} stored "
                             f"and {info.file_size:,} unpacked bytes, which differ", where)
        start = _local_header_end(f, path, info, size)
        end = start + info.compress_size
        if end > size:
            raise _bad(path, f"truncated or corrupt: {info.compress_size:,} bytes declared from "
                             f"offset {start:,}, past the end of the {size:,}-byte file", where)
        spans.append((info.header_offset, end, name, bool(info.flag_bits & 0x8)))
        total += info.file_size
        if total > max_bytes:
            raise _bad(path, f"declares {info.file_size:,} bytes, which brings the file's "
                             f"total to {total:,}, over max_bytes={max_bytes:,}; pass a larger "
                             f"max_bytes= to load if you trust the file", where)
        members.append((key, info, start))
    _check_tiling(f, path, spans)
    return members


def _check_tiling(f: IO[bytes], path: str, spans: list[tuple[int, int, str, bool]]) -> None:
    """Members must tile the file from byte 0 to the zip directory: no member inside another
    (its data would count twice), none the directory leaves out (a corrupt directory entry can
    hide the entries after it)."""
    at, slack = 0, (0,)
    for begin, end, name, descriptor in sorted(spans):
        if begin - at not in slack:
            raise _bad(path, f"corrupt: it starts at byte {begin:,}, but the member before it "
                             f"ends at byte {at:,}", _member(name))
        # a member written to a stream is followed by a data descriptor of 12 to 24 bytes
        at, slack = end, ((12, 16, 20, 24) if descriptor else (0,))  # type: ignore[assignment]
    for gap in slack if spans else ():
        f.seek(at + gap)
        if f.read(4) == b"PK\x01\x02":
            return
    if spans:
        raise _bad(path, f"corrupt: the zip directory does not start where the last member "
                         f"ends (byte {at:,}): it does not list every member")


def _local_header_end(f: IO[bytes], path: str, info: zipfile.ZipInfo, size: int) -> int:
    """Where the member's data starts, after its local header (which must agree on the name)."""
    name = info.orig_filename
    if not 0 <= info.header_offset <= size - _ZIP_LOCAL.size:
        raise _bad(path, f"corrupt: its header offset {info.header_offset:,} is outside the "
                         f"file", _member(name))
    f.seek(info.header_offset)
    fields = _ZIP_LOCAL.unpack(f.read(_ZIP_LOCAL.size))
    signature, flags, method, name_len, extra_len = (fields[i] for i in (0, 3, 4, 10, 11))
    raw = f.read(name_len)
    try:
        local = raw.decode("utf-8" if flags & 0x800 else "cp437")
    except UnicodeDecodeError:
        local = None
    if signature != b"PK\x03\x04" or local != name or method != zipfile.ZIP_STORED:
        raise _bad(path, "corrupt: its local header does not match the zip directory",
                   _member(name))
    return info.header_offset + _ZIP_LOCAL.size + name_len + extra_len


def _npy_header(raw: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """dtype, shape, Fortran order and header length of the .npy bytes `raw` starts with."""
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, _NPY_HEADER_MAX)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, _NPY_HEADER_MAX)
    else:  # 3.0 only differs for structured dtypes with non-latin-1 field names: never numeric
        raise ValueError(f".npy format version {version} is not read (only 1.0 and 2.0)")
    return dtype, shape, fortran, fp.tell()


def _read_npy_member(f: IO[bytes], path: str, info: zipfile.ZipInfo,
                     start: int) -> np.ndarray:
    """The member's array, once its .npy header agrees with the zip's size; CRC checked."""
    where = _member(info.orig_filename)
    f.seek(start)
    raw = f.read(min(info.file_size, 12 + _NPY_HEADER_MAX))  # magic, version, length, header
    try:
        dtype, shape, fortran, header_len = _npy_header(raw)
    except Exception as e:  # numpy parsing hostile bytes (literal_eval): any failure is bad
        raise _bad(path, f"not a .npy array: {type(e).__name__}: {e}", where) from e
    if dtype.kind not in _NUMERIC or dtype.fields is not None:
        raise _bad(path, f"holds the non-numeric dtype {dtype}", where)
    nbytes = _nbytes(path, where, shape, dtype.itemsize)
    if header_len + nbytes != info.file_size:
        raise _bad(path, f"corrupt: its .npy header declares shape {shape} of {dtype} "
                         f"({nbytes:,} bytes after a {header_len}-byte header) but the member "
                         f"holds {info.file_size:,} bytes", where)
    flat = _read_flat(f, path, where, start + header_len, dtype, math.prod(shape))
    crc = zlib.crc32(flat.view(np.uint8), zlib.crc32(raw[:header_len]))  # type: ignore[arg-type]
    if crc != info.CRC:
        raise _bad(path, f"corrupt: its bytes do not match the checksum (CRC-32 {crc:#010x}, "
                         f"the zip directory says {info.CRC:#010x})", where)
    _check_bools(path, where, flat)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


# ----------------------------------------------------------------------------- shared by both
def _nbytes(path: str, where: str, shape: Any, itemsize: int) -> int:
    """The bytes a declared shape needs (Python ints: a hostile shape cannot overflow)."""
    if not isinstance(shape, (tuple, list)) or len(shape) > _MAX_DIMS or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _bad(path, f"its shape {str(shape)[:80]} is not a list of at most {_MAX_DIMS} "
                         f"non-negative integers", where)
    if math.prod(n for n in shape if n) * itemsize >= 2**63:  # numpy refuses even empty ones
        raise _bad(path, f"its shape {str(shape)[:80]} is too big for numpy", where)
    return math.prod(shape) * itemsize


def _read_flat(f: IO[bytes], path: str, where: str, offset: int, dtype: np.dtype,
               count: int) -> np.ndarray:
    """`count` items of `dtype` from `offset`; the caller has checked that the file holds them."""
    flat = np.empty(count, dtype)
    buf = memoryview(flat.view(np.uint8))  # type: ignore[arg-type]
    f.seek(offset)
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            raise _bad(path, f"truncated: the data ends after {got:,} of {len(buf):,} bytes "
                             f"(did the file change while it was read?)", where)
        got += n
    return flat


def _check_bools(path: str, where: str, flat: np.ndarray) -> None:
    # numpy would hold other bytes as bools that are neither True nor False
    if flat.dtype.kind == "b" and flat.view(np.uint8).max(initial=0) > 1:
        raise _bad(path, "corrupt: its bool array holds bytes other than 0 and 1", where)


# ----------------------------------------------------------------------------- reading safetensors
def _load_safetensors(f: IO[bytes], path: str, size: int,
                      max_bytes: int) -> dict[str, np.ndarray]:
    head = f.read(8)
    if len(head) < 8:
        raise _bad(path, f"truncated, or not a safetensors file: {size} bytes is too short for "
                         f"the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > min(_ST_HEADER_MAX, size - 8):
        hint = " (it looks like an .npz archive: name it '.npz')" if head[:2] == b"PK" else ""
        raise _bad(path, f"truncated, or not a safetensors file: it declares a {n:,}-byte "
                         f"header, but {size - 8:,} bytes follow the length and the limit is "
                         f"{_ST_HEADER_MAX:,}{hint}")
    header = _st_header(path, f.read(n))
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise _bad(path, "corrupt: its __metadata__ is not a map of strings to strings")
    entries = [(name, *_st_entry(path, name, info)) for name, info in header.items()]
    _st_check_layout(path, entries, size - 8 - n, max_bytes)
    return {name: _st_array(f, path, name, dtype_name, shape, 8 + n + begin)
            for name, dtype_name, shape, begin, _ in entries}


def _st_header(path: str, raw: bytes) -> dict[str, Any]:
    """The JSON header as a dict, refusing duplicate names (json would keep the last)."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"ambiguous: the name {_short(key)} occurs twice")
            out[key] = value
        return out

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, or nested too deep
        raise _bad(path, f"corrupt header: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise _bad(path, f"corrupt header: a JSON {type(header).__name__}, not an object")
    return header


def _st_entry(path: str, name: str, info: Any) -> tuple[str, Any, int, int]:
    """(dtype name, shape, begin, end) of one header entry, checked for form only."""
    where = _tensor(name)
    if not isinstance(info, dict) or set(info) != _ST_INFO_KEYS:
        raise _bad(path, f"corrupt header: the entry is not {{'dtype', 'shape', "
                         f"'data_offsets'}}: {str(info)[:80]}", where)
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype_name not in _ST_DTYPES and dtype_name != _BF16:
        raise _bad(path, f"its dtype {str(dtype_name)[:20]!r} is not one numpy can hold "
                         f"({', '.join([*_ST_DTYPES, _BF16])})", where)
    if not isinstance(shape, list):
        raise _bad(path, f"corrupt header: the shape {str(shape)[:40]} is not a list", where)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _bad(path, f"corrupt header: the data_offsets {str(offsets)[:40]} are not "
                         f"[begin, end] with 0 <= begin <= end", where)
    return dtype_name, shape, offsets[0], offsets[1]


def _st_check_layout(path: str, entries: list[tuple[str, str, Any, int, int]], data_size: int,
                     max_bytes: int) -> None:
    """The offsets must tile the data section exactly (contiguous, no overlap, nothing after
    the end) and agree with shape x item size; the arrays must fit in max_bytes."""
    at, total = 0, 0
    for name, dtype_name, shape, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        where = _tensor(name)
        itemsize = 2 if dtype_name == _BF16 else _ST_DTYPES[dtype_name].itemsize
        nbytes = _nbytes(path, where, shape, itemsize)
        if begin != at:
            gap = "a gap before" if begin > at else "an overlap with the tensor before"
            raise _bad(path, f"corrupt: its data_offsets [{begin}, {end}] leave {gap} it "
                             f"(expected it to start at {at})", where)
        if end - begin != nbytes:
            raise _bad(path, f"corrupt: its data_offsets [{begin}, {end}] hold {end - begin:,} "
                             f"bytes, but shape {shape} of {dtype_name} needs {nbytes:,}", where)
        at = end
        if at > data_size:
            raise _bad(path, f"truncated or corrupt: its data ends at byte {at:,} of a "
                             f"{data_size:,}-byte data section", where)
        total += nbytes * (2 if dtype_name == _BF16 else 1)  # BF16 doubles when widened
        if total > max_bytes:
            raise _bad(path, f"it brings the file's arrays to {total:,} bytes, over "
                             f"max_bytes={max_bytes:,}; pass a larger max_bytes= to load if "
                             f"you trust the file", where)
    if at != data_size:
        raise _bad(path, f"corrupt: its tensors cover {at:,} bytes but the data section holds "
                         f"{data_size:,}")


def _st_array(f: IO[bytes], path: str, name: str, dtype_name: str, shape: list[int],
              offset: int) -> np.ndarray:
    where = _tensor(name)
    if dtype_name == _BF16:
        bits = _read_flat(f, path, where, offset, np.dtype("<u2"), math.prod(shape))
        # bfloat16 is the top half of a float32: shifting it up is exact, NaN and inf included
        flat = (bits.astype(np.uint32) << 16).view(np.float32)
    else:
        flat = _read_flat(f, path, where, offset, _ST_DTYPES[dtype_name], math.prod(shape))
        _check_bools(path, where, flat)
    return flat.reshape(shape)
