"""Hostile files for tg.load and hostile moments for tg.save, kept so they stay fixed: ambiguous
archives, sizes that lie (zip bombs), corrupt bytes anywhere, and saves killed at any moment.
Every load of a bad file must raise ValueError naming the path, without allocating much."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn.io import load, save

SMALL = 2**20  # no load of a small hostile file may allocate more than this
REPO = Path(tg.__file__).resolve().parents[1]


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Trace allocations (numpy's too); the callable gives the peak since its previous call."""
    tracemalloc.start()

    def peak() -> int:
        value = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        return value

    try:
        yield peak
    finally:
        tracemalloc.stop()


def refused(path: Path, match: str, **kwargs: Any) -> None:
    """load(path) raises a ValueError naming the path and matching `match`, and allocates little."""
    with traced() as peak:
        with pytest.raises(ValueError) as e:
            load(path, **kwargs)
        assert peak() < SMALL
    assert repr(str(path)) in str(e.value)
    assert re.search(match, str(e.value)), str(e.value)


def assert_same(expected: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
    assert list(out) == list(expected)
    for key, value in expected.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape, key
        np.testing.assert_array_equal(out[key], value, err_msg=key)


# ----------------------------------------------------------------------------- zips by hand
def npy(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, array)
    return f.getvalue()


def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False,
                                             "shape": shape})
    return f.getvalue()


def local(name: str, data: bytes, method: int = 0, stored: bytes | None = None) -> bytes:
    """A zip local header and the member's stored bytes (`data`, or `stored` if compressed)."""
    body = data if stored is None else stored
    return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0x21,
                       zlib.crc32(data), len(body), len(data), len(name), 0) + name.encode()


def central(name: str, offset: int, data: bytes, method: int = 0, stored: bytes | None = None,
            size: int | None = None, stored_size: int | None = None) -> bytes:
    """A zip directory entry; `size` / `stored_size` override the declared sizes."""
    body = data if stored is None else stored
    return struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0, 0x21,
                       zlib.crc32(data), len(body) if stored_size is None else stored_size,
                       len(data) if size is None else size, len(name), 0, 0, 0, 0, 0,
                       offset) + name.encode()


def finish(body: bytes, entries: list[bytes]) -> bytes:
    """The archive: members, the directory, the end record."""
    directory = b"".join(entries)
    return body + directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries),
                                          len(entries), len(directory), len(body), 0)


def archive(*members: tuple[str, bytes]) -> bytes:
    body, entries = b"", []
    for name, data in members:
        entries.append(central(name, len(body), data))
        body += local(name, data) + data
    return finish(body, entries)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_hand_made_zips_are_valid(tmp_path):
    a, b = np.arange(5.0), np.ones((2, 2), np.int32)
    path = write(tmp_path, "ok.npz", archive(("a.npy", npy(a)), ("b.npy", npy(b))))
    assert_same({"a": a, "b": b}, load(path))
    with np.load(path) as npz:
        assert_same({"a": a, "b": b}, dict(npz))


# ----------------------------------------------------------------------------- ambiguous archives
@pytest.mark.parametrize("names,match", [
    (("w.npy", "w.npy"), r"member 'w\.npy': ambiguous archive: two members have this name"),
    (("w", "w.npy"), r"member 'w\.npy': ambiguous archive: it and member 'w' both read as the "
                     r"key 'w'"),
    (("w.npy", "w"), r"member 'w': ambiguous archive: it and member 'w\.npy' both read as"),
])
def test_ambiguous_archives_are_refused(tmp_path, names, match):
    # before: duplicates loaded the last one, 'w' / 'w.npy' whichever numpy's lookup found
    path = write(tmp_path, "dup.npz", archive((names[0], npy(np.zeros(3))),
                                              (names[1], npy(np.ones(3)))))
    refused(path, match)


# ----------------------------------------------------------------------------- sizes that lie
def test_npy_header_declaring_more_than_the_member_holds(tmp_path):
    # 2 GiB declared in a 100-byte member: numpy used to allocate it all before reading
    data = npy_header("<f8", (2**28,)) + b"\x00" * 16
    path = write(tmp_path, "lie.npz", archive(("w.npy", data)))
    refused(path, r"member 'w\.npy'.*shape \(268435456,\) of float64 \(2,147,483,648 bytes.*"
                  r"holds 144 bytes")


def test_deflate_bomb_is_refused_before_inflating(tmp_path):
    data = npy(np.zeros(2**21))  # 16 MiB of zeros deflate to 16 KiB
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packer.compress(data) + packer.flush()
    assert len(packed) < len(data) // 500
    path = write(tmp_path, "bomb.npz", finish(local("w.npy", data, 8, packed) + packed,
                                              [central("w.npy", 0, data, 8, packed)]))
    del data
    refused(path, r"member 'w\.npy': compressed")


@pytest.mark.parametrize("size,stored_size,match", [
    (2**31, None, r"declares 144 stored and 2,147,483,648 unpacked bytes, which differ"),
    (2**31, 2**31, r"2,147,483,648 bytes declared from offset 35, past the end of the \d+-byte"),
])
def test_zip_directory_declaring_more_than_the_file_holds(tmp_path, size, stored_size, match):
    data = npy(np.arange(2.0))
    path = write(tmp_path, "big.npz", finish(
        local("w.npy", data) + data, [central("w.npy", 0, data, size=size,
                                              stored_size=stored_size)]))
    refused(path, match)


def test_nested_members_are_refused(tmp_path):
    # a member whose bytes hold another member: n levels would make the data count n times
    inner = npy(np.arange(4.0))
    inner_record = local("b.npy", inner) + inner
    outer = npy(np.frombuffer(inner_record, np.uint8))
    body = local("a.npy", outer) + outer
    at = len(local("a.npy", outer)) + len(outer) - len(inner_record)
    path = write(tmp_path, "nest.npz", finish(body, [central("a.npy", 0, outer),
                                                     central("b.npy", at, inner)]))
    refused(path, r"member 'b\.npy': corrupt: it starts at byte 163, but the member before it "
                  r"ends at byte 358")


def test_a_directory_entry_hiding_the_ones_after_it_is_refused(tmp_path):
    # its comment length swallows the next entry: zipfile then lists one member, not two
    data = bytearray(archive(("a.npy", npy(np.zeros(2))), ("b.npy", npy(np.ones(2)))))
    first = data.index(b"PK\x01\x02")
    second = data.index(b"PK\x01\x02", first + 1)
    struct.pack_into("<H", data, first + 32, len(data) - 22 - second)
    refused(write(tmp_path, "hide.npz", bytes(data)),
            r"the zip directory does not start where the last member ends")


def test_an_archive_written_to_a_stream_loads(tmp_path):
    class Stream:  # not seekable: zipfile follows each member with a data descriptor
        def __init__(self) -> None:
            self.buf = io.BytesIO()

        def write(self, data: bytes) -> int:
            return self.buf.write(data)

        def flush(self) -> None:
            pass

    stream, state = Stream(), {"a": np.arange(3.0), "b": np.ones((2, 2), np.int8)}
    with zipfile.ZipFile(stream, "w") as zf:
        for key, value in state.items():
            with zf.open(key + ".npy", "w") as member:
                np.lib.format.write_array(member, value)
            assert zf.getinfo(key + ".npy").flag_bits & 0x8
    assert_same(state, load(write(tmp_path, "stream.npz", stream.buf.getvalue())))


@pytest.mark.parametrize("case,match", [
    ("local name", r"member 'w\.npy': corrupt: its local header does not match"),
    ("offset", r"member 'w\.npy': corrupt: its header offset 4,000 is outside the file"),
    ("object", r"member 'w\.npy': holds the non-numeric dtype object"),
    ("bool byte", r"member 'w\.npy': corrupt: its bool array holds bytes other than 0 and 1"),
    ("npy v3", r"member 'w\.npy': not a \.npy array.*version \(3, 0\)"),
    ("not npy", r"member 'w\.npy': not a \.npy array"),
    ("huge empty", r"member 'w\.npy': its shape .* is too big for numpy"),
])
def test_bad_members(tmp_path, case, match):
    good = npy(np.arange(3.0))
    if case == "local name":
        data = finish(local("v.npy", good) + good, [central("w.npy", 0, good)])
    elif case == "offset":
        data = finish(local("w.npy", good) + good, [central("w.npy", 4000, good)])
    elif case == "object":
        data = archive(("w.npy", npy_header("|O", (2,)) + b"\x00" * 16))
    elif case == "bool byte":
        data = archive(("w.npy", npy_header("|b1", (3,)) + b"\x01\x02\x00"))
    elif case == "npy v3":
        data = archive(("w.npy", b"\x93NUMPY\x03\x00" + good[8:]))
    elif case == "not npy":
        data = archive(("w.npy", b"a text member"))
    else:
        data = archive(("w.npy", npy_header("<f8", (0, 2**62, 4))))
    refused(write(tmp_path, "bad.npz", data), match)


# ----------------------------------------------------------------------------- safetensors
def st_file(header: Any, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def entry(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("data,match", [
    (b"", r"0 bytes is too short"),
    (struct.pack("<Q", 1000) + b"{}", r"declares a 1,000-byte header, but 2 bytes follow"),
    (struct.pack("<Q", 2**63) + b"{}", r"declares a 9,223,372,036,854,775,808-byte header"),
    (st_file(b'{"\xff": 1}'), r"corrupt header: UnicodeDecodeError"),
    (st_file(b"{not json"), r"corrupt header: JSONDecodeError"),
    (st_file(b"[1, 2]"), r"corrupt header: a JSON list, not an object"),
    (st_file(b"[" * 100_000 + b"]" * 100_000), r"corrupt header: RecursionError"),
    (st_file(b'{"w": %s, "w": %s}' % ((json.dumps(entry()).encode(),) * 2), b"\0" * 16),
     r"corrupt header: .*ambiguous: the name 'w' occurs twice"),
    (st_file({"w": entry("F8_E4M3", (2,), (0, 2))}, b"\0" * 2),
     r"tensor 'w': its dtype 'F8_E4M3' is not one numpy can hold \(BOOL, U8"),
    (st_file({"w": {**entry(), "extra": 1}}, b"\0" * 8), r"tensor 'w': corrupt header: the entry"),
    (st_file({"w": entry(shape=(-2,))}, b"\0" * 8), r"tensor 'w': its shape \[-2\] is not"),
    (st_file({"w": entry(shape=(2.0,))}, b"\0" * 8), r"tensor 'w': its shape \[2\.0\] is not"),
    (st_file({"w": entry(shape=(True, 2))}, b"\0" * 8), r"tensor 'w': its shape \[True, 2\]"),
    (st_file({"w": entry(shape=[1] * 65, offsets=(0, 4))}, b"\0" * 4), r"at most 64"),
    (st_file({"w": entry(shape=(0, 2**62, 4), offsets=(0, 0))}), r"too big for numpy"),
    (st_file({"w": entry(offsets=(0, 8))}, b"\0" * 4), r"tensor 'w': truncated or corrupt: its "
                                                      r"data ends at byte 8 of a 4-byte"),
    (st_file({"w": entry(offsets=(8, 16))}, b"\0" * 16), r"leave a gap before it"),
    (st_file({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, b"\0" * 12),
     r"tensor 'b': corrupt: its data_offsets \[4, 12\] leave an overlap"),
    (st_file({"w": entry(offsets=(8, 0))}, b"\0" * 8), r"are not \[begin, end\]"),
    (st_file({"w": entry(shape=(3,))}, b"\0" * 8), r"hold 8 bytes, but shape \[3\] of F32 needs "
                                                   r"12"),
    (st_file({"w": entry()}, b"\0" * 9), r"its tensors cover 8 bytes but the data section "
                                         r"holds 9"),
    (st_file({"w": entry(), "__metadata__": {"a": 1}}, b"\0" * 8), r"__metadata__ is not a map"),
    (st_file({"w": entry("BOOL", (2,), (0, 2))}, b"\x01\x07"), r"bool array holds bytes other"),
    (st_file({"w": entry(shape=(2**40,), offsets=(0, 2**42))}, b"\0" * 8),
     r"data ends at byte 4,398,046,511,104 of a 8-byte"),
], ids=lambda v: f"{len(v)}B" if isinstance(v, bytes) else None)
def test_hostile_safetensors_files(tmp_path, data, match):
    refused(write(tmp_path, "bad.safetensors", data), match)


# ----------------------------------------------------------------------------- corrupt-file sweeps
def _saved(tmp_path: Path, suffix: str) -> tuple[dict[str, np.ndarray], bytes]:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array(7),
             "mask": np.array([True, False]), "bias": np.linspace(-1, 1, 4)}
    path = tmp_path / f"good{suffix}"
    save(state, path)
    return state, path.read_bytes()


def _loads(tmp_path: Path, suffix: str,
           variants: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, dict | None]]:
    """(label, load's result, or None if it refused) per spoilt file: a ValueError naming the
    path is the only error allowed, and no load may allocate much."""
    with traced() as peak:
        for i, (label, data) in enumerate(variants):
            # a file of its own each time: on ext4, truncating a file to rewrite it flushes it
            path = tmp_path / f"spoilt{i}{suffix}"
            path.write_bytes(data)
            try:
                out = load(path)
            except ValueError as e:
                assert repr(str(path)) in str(e), (label, str(e))
                out = None
            except Exception as e:  # noqa: BLE001 - the point of the sweep
                pytest.fail(f"{label}: {type(e).__name__}: {e}")
            assert peak() < SMALL, label
            path.unlink()
            yield label, out


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_truncated_at_every_offset(tmp_path, suffix):
    _, data = _saved(tmp_path, suffix)
    for label, out in _loads(tmp_path, suffix, ((f"{n} bytes", data[:n])
                                                for n in range(len(data)))):
        assert out is None, label


def _flipped(data: bytes, at: Any, r: np.random.Generator) -> tuple[str, bytes]:
    spoilt = bytearray(data)
    for i in at:
        spoilt[i] ^= int(r.integers(1, 256))
    return f"bytes {sorted(int(i) for i in at)}", bytes(spoilt)


def test_npz_with_random_bytes_flipped(tmp_path):
    """Each trial flips 1-3 random bytes anywhere: the CRC covers the data, the directory and
    the local headers must agree, so a load gives exactly the saved arrays or refuses."""
    state, data = _saved(tmp_path, ".npz")
    r = np.random.default_rng(0)
    trials = (_flipped(data, r.choice(len(data), r.integers(1, 4), replace=False), r)
              for _ in range(400))
    refusals = 0
    for _, out in _loads(tmp_path, ".npz", trials):
        if out is None:
            refusals += 1
        else:
            assert_same(state, out)
    assert refusals > 200  # most flips land where they matter


def test_safetensors_with_each_header_byte_flipped(tmp_path):
    """safetensors has no checksum: a flipped data byte cannot be seen, nor a flipped letter of
    a name or a dtype of the same width ('F32' -> 'I32'). Every other header flip is refused, and
    none returns other bytes or shapes than were saved."""
    state, data = _saved(tmp_path, ".safetensors")
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    r = np.random.default_rng(1)
    refusals = 0
    for label, out in _loads(tmp_path, ".safetensors",
                             (_flipped(data, [i], r) for i in range(header_end))):
        if out is None:
            refusals += 1
        else:
            assert [(v.shape, v.tobytes()) for v in out.values()] == \
                [(v.shape, v.tobytes()) for v in state.values()], label
    assert refusals > header_end // 3


# ----------------------------------------------------------------------------- killed saves
def _child(code: str, *args: str, **kwargs: Any) -> subprocess.Popen:
    """A Python process running `code` against this working tree's tinygrad_rnn."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                 "")]))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_saves_killed_at_random_moments_leave_old_or_new_and_no_temporary_files(tmp_path):
    path = tmp_path / "ck.npz"
    save({"w": np.full(10, 1.0)}, path)
    r = np.random.default_rng(2)
    leftovers = []
    for _ in range(5):
        child = _child("""
            import sys, numpy as np, tinygrad_rnn as tg
            new = {"w": np.full(2_000_000, 2.0)}
            print("ready", flush=True)
            while True:
                tg.save(new, sys.argv[1])
            """, str(path))
        assert child.stdout.readline() == b"ready\n", child.stderr.read()
        time.sleep(r.uniform(0.0, 0.2))
        child.kill()
        child.communicate()
        # the kill may land anywhere; the next save (the next child's) removes the leftover
        leftovers.append(len(os.listdir(tmp_path)) - 1)
        w = load(path)["w"]
        assert (w.shape, w[0]) in [((10,), 1.0), ((2_000_000,), 2.0)] and (w == w[0]).all()
    assert max(leftovers) == 1 and sum(leftovers) > 0, leftovers  # the kills did land mid-save
    save({"w": np.full(10, 3.0)}, path)
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert_same({"w": np.full(10, 3.0)}, load(path))


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_termination_mid_save_removes_the_temporary_file_then_ends_the_process(tmp_path,
                                                                               signame):
    sig = getattr(signal, signame, None)
    if sig is None:
        pytest.skip(f"no {signame} here")
    path = tmp_path / "ck.npz"
    save({"old": np.arange(3.0)}, path)
    old = path.read_bytes()
    child = _child(f"""
        import os, signal, sys, numpy as np, tinygrad_rnn as tg
        real = np.lib.format.write_array
        def write_then_signal(fp, array, *args, **kwargs):
            real(fp, array, *args, **kwargs)
            os.kill(os.getpid(), signal.{signame})
        np.lib.format.write_array = write_then_signal
        tg.save({{"a": np.ones(100), "b": np.ones(100)}}, sys.argv[1])
        print("survived")
        """, str(path))
    out, err = child.communicate(timeout=30)
    assert child.returncode == -sig, err.decode()  # the signal's default action, after cleanup
    assert out == b""
    assert os.listdir(tmp_path) == ["ck.npz"] and path.read_bytes() == old
