"""tinygrad_rnn.io: round trips (.npz and .safetensors), atomic saves (a failure mid-write leaves
the old file byte-identical and no temporary file behind), keys and dtypes a format cannot hold,
and clear errors for bad files. Hostile files and killed saves: test_io_hostile.py."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import tinygrad_rnn as tg
import tinygrad_rnn.io as tio
from tinygrad_rnn import nn
from tinygrad_rnn.io import load, save

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

SUFFIXES = [".npz", ".safetensors"]

def _state() -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    return {
        "layer.weight": r.normal(size=(4, 3)).astype(np.float32),
        "layer.bias": r.normal(size=4),  # float64
        "steps": np.array(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 5), np.float32),
        "file": np.arange(3, dtype=np.uint8),  # np.savez's own parameter name
    }


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        x, y = np.asarray(a[k]), b[k]
        assert type(y) is np.ndarray, k
        assert y.dtype == x.dtype and y.shape == x.shape, k
        np.testing.assert_array_equal(y, x, err_msg=k)


class _Module:
    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return {k: v.copy() for k, v in self._state.items()}


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_keeps_dtypes_shapes_and_order(tmp_path, suffix):
    state = _state()
    path = tmp_path / f"model{suffix}"
    save(state, path)
    out = load(path)
    assert type(out) is dict
    _assert_same(state, out)


def test_round_trip_module_and_tensor_values(tmp_path):
    state = _state()
    save(_Module(state), str(tmp_path / "m.npz"))
    _assert_same(state, load(str(tmp_path / "m.npz")))
    t = tg.Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    save({"t": t}, tmp_path / "t.npz")
    _assert_same({"t": t.data}, load(tmp_path / "t.npz"))


def test_files_of_np_savez_load(tmp_path):
    state = {"a": np.arange(4.0), "b": np.ones((2, 3), np.int16)}
    np.savez(tmp_path / "np.npz", **state)
    _assert_same(state, load(tmp_path / "np.npz"))


def test_path_is_used_exactly_as_given(tmp_path):
    path = tmp_path / "checkpoint"  # no .npz suffix: np.savez would write checkpoint.npz
    save({"a": np.ones(2)}, path)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    _assert_same({"a": np.ones(2)}, load(path))


def test_overwrite_replaces_contents(tmp_path):
    path = tmp_path / "x.npz"
    save({"a": np.ones(3)}, path)
    save({"b": np.zeros(2, np.float32)}, path)
    _assert_same({"b": np.zeros(2, np.float32)}, load(path))
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]


def test_empty_state_dict_round_trips(tmp_path):
    save({}, tmp_path / "e.npz")
    assert load(tmp_path / "e.npz") == {}


@given(st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/\\"),
            min_size=1, max_size=8),
    st.tuples(st.sampled_from([np.float16, np.float32, np.float64, np.int64, np.int32, np.int8,
                               np.uint16, np.bool_, np.complex64]),
              st.lists(st.integers(0, 3), max_size=3), st.integers(0, 2**16)),
    max_size=4), st.sampled_from(SUFFIXES))
def test_round_trip_property(tmp_path_factory, spec, suffix):
    # safetensors has no complex dtype (save refuses it: test_safetensors_refuses_...)
    assume(suffix == ".npz" or all(d is not np.complex64 for d, _, _ in spec.values()))
    state = {}
    for key, (dtype, shape, seed) in spec.items():
        values = np.random.default_rng(seed).normal(size=shape) * 10
        state[key] = (np.abs(values) if np.dtype(dtype).kind == "u" else values).astype(dtype)
    path = tmp_path_factory.mktemp("prop") / f"s{suffix}"
    save(state, path)
    _assert_same(state, load(path))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nested_state_is_saved_flat_with_dotted_keys(tmp_path, suffix):
    r = np.random.default_rng(3)
    w, m = r.normal(size=(2, 3)).astype(np.float32), r.normal(size=(2, 3)).astype(np.float32)
    checkpoint = {
        "model": _Module({"fc.weight": w}),  # anything with state_dict() is asked for it
        "optimizer": {"state": {0: {"step": 3, "exp_avg": m}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "amsgrad": True,
                                        "params": [0, 1]}]},
        "losses": [np.ones(2), tg.Tensor(np.zeros(1))],  # not all numbers: one key per item
    }
    save(checkpoint, tmp_path / f"ck{suffix}")
    flat = load(tmp_path / f"ck{suffix}")
    expected = {
        "model.fc.weight": w,
        "optimizer.state.0.step": np.array(3),
        "optimizer.state.0.exp_avg": m,
        "optimizer.param_groups.0.lr": np.array(0.1),
        "optimizer.param_groups.0.betas": np.array([0.9, 0.99]),
        "optimizer.param_groups.0.amsgrad": np.array(True),
        "optimizer.param_groups.0.params": np.array([0, 1]),
        "losses.0": np.ones(2),
        "losses.1": np.zeros(1),
    }
    _assert_same(expected, flat)
    assert flat["optimizer.state.0.step"].dtype.kind == "i"
    assert tio.subdict(flat, "model") == {"fc.weight": flat["model.fc.weight"]}
    assert sorted(tio.subdict(flat, "optimizer.param_groups.0")) == \
        ["amsgrad", "betas", "lr", "params"]
    with pytest.raises(KeyError, match=r"'modle\.'.*\['losses', 'model', 'optimizer'\]"):
        tio.subdict(flat, "modle")


# ----------------------------------------------------------------------------- atomicity
def _old_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "ckpt.npz"
    save({"old": np.arange(10.0)}, path)
    return path, path.read_bytes()


def _assert_untouched(tmp_path: Path, path: Path, old: bytes) -> None:
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name], "a temporary file was left behind"


def test_failure_mid_write_leaves_old_file(tmp_path, monkeypatch):
    path, old = _old_file(tmp_path)
    real = np.lib.format.write_array
    calls = []

    def failing_write_array(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first array is fully written, the second half-way
            fp.write(b"\x93NUMPY partial header")
            raise OSError("disk full")
        return real(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    with pytest.raises(OSError, match="disk full"):
        save({"a": np.ones(1000), "b": np.ones(1000), "c": np.ones(3)}, path)
    assert len(calls) == 2
    _assert_untouched(tmp_path, path, old)


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failure_after_write_leaves_old_file(tmp_path, monkeypatch, step):
    path, old = _old_file(tmp_path)

    def boom(*args, **kwargs):
        raise OSError(f"{step} failed")

    monkeypatch.setattr(tio.os, step, boom)
    with pytest.raises(OSError, match=f"{step} failed"):
        save({"new": np.ones(5)}, path)
    monkeypatch.undo()
    _assert_untouched(tmp_path, path, old)


def test_keyboard_interrupt_mid_write_leaves_old_file(tmp_path, monkeypatch):
    path, old = _old_file(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save({"new": np.ones(5)}, path)
    _assert_untouched(tmp_path, path, old)


@pytest.mark.parametrize("bad,match", [
    ({"w": np.ones(2), "obj": np.array([1, None], dtype=object)}, "'obj'.*numeric"),
    ({"w": np.ones(2), "s": np.array(["a", "b"])}, "'s'.*numeric"),
    ({"w": np.ones(2), 2.5: np.ones(2)}, "key 2.5"),
    ({"w": np.ones(2), "n": {(1, 2): np.ones(2)}}, r"key \(1, 2\)"),
    ({"w": np.ones(2), "a\x00b": np.ones(2)}, "NUL"),
    ({"w": np.ones(2), "lst": ["a", "b"]}, "'lst.0'.*numpy array"),
    ({"w": np.ones(2), "opt": {"lr": None}}, "'opt.lr'.*numpy array"),
    ({"w": np.ones(2), "big": 2**70}, "'big'.*numeric"),
    ({"a.b": np.ones(2), "a": {"b": np.ones(2)}}, "'a.b' occurs twice"),
    ({"w": np.ones(2), "rec": np.zeros(2, dtype=[("a", "f8")])}, "'rec'"),
])
def test_invalid_values_rejected_before_writing(tmp_path, bad, match):
    path, old = _old_file(tmp_path)
    with pytest.raises((TypeError, ValueError), match=match):
        save(bad, path)
    _assert_untouched(tmp_path, path, old)
    with pytest.raises((TypeError, ValueError), match=match):
        save(bad, tmp_path / "new.npz")
    assert not (tmp_path / "new.npz").exists()


def test_save_rejects_non_mapping(tmp_path):
    with pytest.raises(TypeError, match="save: expected"):
        save([np.ones(2)], tmp_path / "x.npz")


def test_save_keeps_permissions_of_existing_file(tmp_path):
    path, _ = _old_file(tmp_path)
    os.chmod(path, 0o640)
    save({"a": np.ones(1)}, path)
    assert (path.stat().st_mode & 0o777) == 0o640


def test_save_into_missing_folder_names_the_target_and_creates_nothing(tmp_path):
    target = tmp_path / "nope" / "x.npz"
    with pytest.raises(FileNotFoundError) as e:
        save({"a": np.ones(1)}, target)
    # the target and the reason, not the temporary file's name (what the error used to say)
    assert repr(str(target)) in str(e.value) and "does not exist" in str(e.value)
    assert ".tmp" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_save_onto_a_folder_names_it(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        save({"a": np.ones(1)}, tmp_path)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- bad files
def _good_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.npz"
    save({"a": np.arange(100.0), "b": np.ones((3, 3), np.float32)}, path)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize("cut", [0.0, 0.1, 0.5, 0.9, -1, -22])
def test_truncated_file_raises_value_error(tmp_path, cut):
    data = _good_bytes(tmp_path)
    n = int(len(data) * cut) if cut >= 0 else len(data) + cut
    path = tmp_path / "trunc.npz"
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match="trunc.npz"):
        load(path)


def test_corrupted_array_bytes_raise_value_error(tmp_path):
    data = bytearray(_good_bytes(tmp_path))
    i = data.index(b"\x93NUMPY") + 200  # inside the first array's values
    data[i] ^= 0xFF
    path = tmp_path / "flip.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="flip.npz.*corrupt"):
        load(path)


@pytest.mark.parametrize("kind", ["random", "text", "pickle", "empty", "npy", "zip"])
def test_foreign_files_raise_value_error(tmp_path, kind):
    path = tmp_path / f"{kind}.npz"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(300))
    elif kind == "text":
        path.write_text("weight,bias\n1.0,2.0\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"a": np.ones(3)}))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    else:  # a zip that is not an npz
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match=f"{kind}.npz"):
        load(path)


def test_pickle_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="pickle"):
        load(path)
    assert not (tmp_path / "pwned").exists()


def test_npz_with_object_array_raises_value_error(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, w=np.ones(2), o=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match=r"obj.npz.*'o.npy'.*non-numeric"):
        load(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- keys and limits
def test_keys_np_load_would_confuse_are_refused(tmp_path):
    path, old = _old_file(tmp_path)
    # np.load reads the members 'a.npy' and 'a.npy.npy' both back for the key 'a.npy'
    with pytest.raises(ValueError, match=r"keys 'a' and 'a\.npy'.*rename"):
        save({"a": np.ones(2), "a.npy": np.zeros(3)}, path)
    _assert_untouched(tmp_path, path, old)


def test_a_key_ending_in_npy_alone_round_trips_also_through_np_load(tmp_path):
    state = {"a.npy": np.arange(3.0), "b": np.ones(2, np.float32)}
    save(state, tmp_path / "k.npz")
    _assert_same(state, load(tmp_path / "k.npz"))
    with np.load(tmp_path / "k.npz") as npz:
        _assert_same(state, {k: npz[k] for k in npz.files})


def test_key_length_limit_is_a_clear_error(tmp_path):
    longest = "k" * 65531  # a zip member name holds 65,535 bytes, with '.npy'
    save({longest: np.ones(2)}, tmp_path / "ok.npz")
    assert list(load(tmp_path / "ok.npz")) == [longest]
    for key in ["k" * 65532, "é" * 32766]:  # the limit counts UTF-8 bytes
        with pytest.raises(ValueError, match=r"65,532 bytes long.*at most 65,531"):
            save({key: np.ones(2)}, tmp_path / "bad.npz")
    assert os.listdir(tmp_path) == ["ok.npz"]
    save({"k" * 70000: np.ones(2)}, tmp_path / "long.safetensors")  # no such limit there
    assert list(load(tmp_path / "long.safetensors")) == ["k" * 70000]


def test_max_bytes_limits_what_load_reads(tmp_path):
    assert tio.MAX_BYTES == 4 * 2**30
    state = {"a": np.ones(1000), "b": np.ones(1000)}
    save(state, tmp_path / "m.npz")  # two members of 128 + 8,000 bytes
    with pytest.raises(ValueError, match=r"m\.npz', member 'b\.npy'.*16,256.*max_bytes=10,000"):
        load(tmp_path / "m.npz", max_bytes=10_000)
    _assert_same(state, load(tmp_path / "m.npz", max_bytes=16_256))
    save(state, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"m\.safetensors', tensor 'b'.*16,000.*max_bytes=10,000"):
        load(tmp_path / "m.safetensors", max_bytes=10_000)
    _assert_same(state, load(tmp_path / "m.safetensors", max_bytes=16_000))


def test_compressed_archives_are_refused_with_the_way_out(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, w=np.zeros(1000))
    with pytest.raises(ValueError, match=r"c\.npz', member 'w\.npy'.*compressed.*"
                                         r"tg\.save\(dict\(np\.load\(p\)\)"):
        load(path)
    tg.save(dict(np.load(path)), tmp_path / "plain.npz")  # the way out the message gives
    _assert_same({"w": np.zeros(1000)}, load(tmp_path / "plain.npz"))


# ----------------------------------------------------------------------------- temporary files
_TEMP = re.compile(r"\.x\.npz\.tgsave-[0-9a-f]{16}\.tmp\Z")


def test_temporary_file_is_named_after_the_target(tmp_path, monkeypatch):
    seen = []
    real = np.lib.format.write_array

    def spy(fp, array, *args, **kwargs):
        seen.extend(os.listdir(tmp_path))
        return real(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", spy)
    save({"a": np.ones(3)}, tmp_path / "x.npz")
    assert len(seen) == 1 and _TEMP.match(seen[0]), seen
    assert os.listdir(tmp_path) == ["x.npz"]


def test_leftovers_of_killed_saves_of_the_same_target_are_removed(tmp_path):
    stale = tmp_path / ".x.npz.tgsave-0123456789abcdef.tmp"
    stale.write_bytes(b"half a file")
    kept = [tmp_path / ".y.npz.tgsave-0123456789abcdef.tmp",  # another target's
            tmp_path / ".x.npz.tgsave-mine.tmp",  # not a name save makes
            tmp_path / "x.npz.tgsave-0123456789abcdef.tmp"]
    for p in kept:
        p.write_bytes(b"user data")
    save({"a": np.ones(3)}, tmp_path / "x.npz")
    assert not stale.exists()
    assert all(p.read_bytes() == b"user data" for p in kept)


@pytest.mark.skipif(fcntl is None, reason="POSIX file locks")
def test_the_temporary_file_of_a_save_in_progress_is_left_alone(tmp_path):
    live = tmp_path / ".x.npz.tgsave-fedcba9876543210.tmp"
    with open(live, "wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # what a save in another process holds
        save({"a": np.ones(3)}, tmp_path / "x.npz")
        assert live.exists()
    save({"a": np.ones(3)}, tmp_path / "x.npz")  # its owner is gone: now it is a leftover
    assert os.listdir(tmp_path) == ["x.npz"]


def test_a_very_long_target_name_gets_a_short_temporary_name(tmp_path):
    path = tmp_path / ("m" * 250 + ".npz")  # 254 bytes: the temporary name must still fit
    save({"a": np.ones(3)}, path)
    save({"a": np.zeros(3)}, path)
    _assert_same({"a": np.zeros(3)}, load(path))
    assert os.listdir(tmp_path) == [path.name]


def test_save_from_another_thread(tmp_path):
    errors = []

    def run():
        try:
            save({"a": np.ones(3)}, tmp_path / "t.npz")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert errors == []
    _assert_same({"a": np.ones(3)}, load(tmp_path / "t.npz"))


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_signal_mid_save_cleans_up_then_runs_the_previous_handler(tmp_path, monkeypatch, signame):
    """(The default action, ending the process, is test_io_hostile's.)"""
    sig = getattr(signal, signame, None)
    if sig is None:
        pytest.skip(f"no {signame} here")
    path, old = _old_file(tmp_path)
    calls = []

    def handler(signum, frame):
        calls.append((signum, sorted(os.listdir(tmp_path))))

    real = np.lib.format.write_array

    def write_then_signal(fp, array, *args, **kwargs):
        real(fp, array, *args, **kwargs)
        os.kill(os.getpid(), sig)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_signal)
    previous = signal.signal(sig, handler)
    try:
        with pytest.raises(InterruptedError, match=rf"ckpt\.npz' was not written: {signame}"):
            save({"a": np.ones(100), "b": np.ones(100)}, path)
        assert signal.getsignal(sig) is handler
    finally:
        signal.signal(sig, previous)
    assert calls == [(sig, [path.name])]  # once, after the temporary file was removed
    _assert_untouched(tmp_path, path, old)


# ----------------------------------------------------------------------------- safetensors
def _st_bytes(header: dict, data: bytes = b"") -> bytes:
    """A safetensors file by hand: 8-byte little-endian length, JSON header, raw data."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


_ST_NAMES = [("F64", np.float64), ("F32", np.float32), ("F16", np.float16), ("I64", np.int64),
             ("I32", np.int32), ("I16", np.int16), ("I8", np.int8), ("U64", np.uint64),
             ("U32", np.uint32), ("U16", np.uint16), ("U8", np.uint8), ("BOOL", np.bool_)]


def test_safetensors_output_is_byte_identical_to_the_reference_library(tmp_path):
    # what the safetensors library's own tests expect it to write (tensor.rs: test_empty,
    # test_serialization): compact JSON padded with spaces to 8 bytes, little-endian data
    save({}, tmp_path / "e.safetensors")
    assert (tmp_path / "e.safetensors").read_bytes() == b"\x08" + b"\x00" * 7 + b"{}" + b" " * 6
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    save({"attn.0": x}, tmp_path / "a.safetensors")
    header = b'{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}'
    assert (tmp_path / "a.safetensors").read_bytes() == b"\x40" + b"\x00" * 7 + header + \
        b"\x00\x00\x00\x00\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40" \
        b"\x00\x00\x80\x40\x00\x00\xa0\x40"
    _assert_same({"attn.0": x}, load(tmp_path / "a.safetensors"))


def test_safetensors_reads_hand_made_bytes_of_every_dtype(tmp_path):
    r = np.random.default_rng(4)
    arrays = {name.lower(): np.abs(r.normal(size=(2, 3)) * 20).astype(dtype) for name, dtype in
              _ST_NAMES}
    arrays.update(scalar=np.array(3.25, np.float32), empty=np.zeros((0, 3), np.float32))
    names = {name.lower(): name for name, _ in _ST_NAMES} | {"scalar": "F32", "empty": "F32"}
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for key, a in arrays.items():
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[key] = {"dtype": names[key], "shape": list(a.shape),
                       "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    path = tmp_path / "hand.safetensors"
    path.write_bytes(_st_bytes(header, data))
    _assert_same(arrays, load(path))


def test_bf16_loads_as_float32_exactly(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x7FC0, 0x4049], np.uint16)
    expected = np.array([1.0, -2.0, np.inf, -np.inf, 2.0**-133, -0.0, np.nan, 3.140625],
                        np.float32)
    path = tmp_path / "bf.safetensors"
    path.write_bytes(_st_bytes({"w": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]}},
                               bits.tobytes()))
    w = load(path)["w"]
    assert w.dtype == np.float32 and w.shape == (2, 4)
    np.testing.assert_array_equal(w.ravel(), expected)
    assert (w.ravel().view(np.uint32) == bits.astype(np.uint32) << 16).all()  # sign of -0, NaN


def test_bf16_widening_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.tensor(np.random.default_rng(5).normal(size=(3, 5)) * 100, dtype=torch.bfloat16)
    bits = t.view(torch.int16).numpy().view(np.uint16)
    path = tmp_path / "bf.safetensors"
    path.write_bytes(_st_bytes({"w": {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]}},
                               bits.tobytes()))
    np.testing.assert_array_equal(load(path)["w"], t.float().numpy())


def _st_state() -> dict[str, np.ndarray]:
    r = np.random.default_rng(6)
    return {name: np.abs(r.normal(size=(3, 2)) * 20).astype(dtype) for name, dtype in _ST_NAMES}


def test_the_safetensors_package_reads_ours_and_we_read_its(tmp_path):
    stn = pytest.importorskip("safetensors.numpy")
    state = _st_state()
    stn.save_file(state, str(tmp_path / "theirs.safetensors"), metadata={"format": "np"})
    theirs = load(tmp_path / "theirs.safetensors")
    _assert_same(state, {k: theirs[k] for k in state})
    save(state, tmp_path / "ours.safetensors")
    ours = stn.load_file(str(tmp_path / "ours.safetensors"))
    _assert_same(state, {k: ours[k] for k in state})


def test_a_bf16_checkpoint_of_the_safetensors_package_loads(tmp_path):
    torch = pytest.importorskip("torch")
    stt = pytest.importorskip("safetensors.torch")
    t = torch.tensor(np.random.default_rng(7).normal(size=(4, 3)), dtype=torch.bfloat16)
    stt.save_file({"w": t, "b": torch.arange(3)}, str(tmp_path / "pt.safetensors"))
    out = load(tmp_path / "pt.safetensors")
    np.testing.assert_array_equal(out["w"], t.float().numpy())
    _assert_same({"b": np.arange(3)}, {"b": out["b"]})


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_lstm_state_dict_round_trips(tmp_path, suffix):
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    path = tmp_path / f"lstm{suffix}"
    tg.save(lstm, path)
    other = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    other.load_state_dict(tg.load(path))
    _assert_same(lstm.state_dict(), other.state_dict())
    x = tg.Tensor(np.random.default_rng(8).normal(size=(5, 2, 3)).astype(np.float32))
    np.testing.assert_array_equal(lstm(x)[0].data, other(x)[0].data)


def test_safetensors_keeps_the_order_and_aligns_each_tensor(tmp_path):
    state = {"mask": np.array([True, False, True]), "h": np.ones(3, np.float16),
             "w": np.ones((2, 3)), "b": np.ones(5, np.float32)}
    path = tmp_path / "o.safetensors"
    save(state, path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert (8 + n) % 8 == 0
    for key, value in state.items():  # zero-copy readers need each tensor at its item size
        assert header[key]["data_offsets"][0] % value.dtype.itemsize == 0, key
    _assert_same(state, load(path))


def test_safetensors_stores_little_endian_c_order(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4).T  # big-endian and a transposed view
    path = tmp_path / "be.safetensors"
    save({"a": a}, path)
    assert path.read_bytes().endswith(np.ascontiguousarray(a, "<f4").tobytes())
    out = load(path)["a"]
    assert out.dtype == np.dtype("<f4") and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)


def test_the_format_is_chosen_by_suffix(tmp_path):
    save({"a": np.ones(2)}, tmp_path / "UPPER.SAFETENSORS")
    assert (tmp_path / "UPPER.SAFETENSORS").read_bytes()[8:9] == b"{"
    os.rename(tmp_path / "UPPER.SAFETENSORS", tmp_path / "st.npz")
    with pytest.raises(ValueError, match=r"st\.npz.*looks like a safetensors file.*\.safetensors"):
        load(tmp_path / "st.npz")
    save({"a": np.ones(2)}, tmp_path / "zip.npz")
    os.rename(tmp_path / "zip.npz", tmp_path / "zip.safetensors")
    with pytest.raises(ValueError, match=r"zip\.safetensors.*looks like an \.npz archive"):
        load(tmp_path / "zip.safetensors")


@pytest.mark.parametrize("bad,match", [
    ({"w": np.ones(2), "c": np.ones(2, np.complex64)}, r"'c'.*complex64.*safetensors cannot hold"),
    ({"w": np.ones(2), "__metadata__": np.ones(2)}, "'__metadata__' is reserved"),
    ({"w": np.ones(2), "n": {"__metadata__": np.ones(2)}}, None),  # nested: not the reserved key
])
def test_safetensors_refuses_what_it_cannot_hold(tmp_path, bad, match):
    path = tmp_path / "x.safetensors"
    if match is None:
        save(bad, path)
        assert list(load(path)) == ["w", "n.__metadata__"]
        return
    with pytest.raises((TypeError, ValueError), match=match):
        save(bad, path)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="longdouble is float64 here")
def test_safetensors_refuses_long_double(tmp_path):
    with pytest.raises(TypeError, match=r"'q'.*safetensors cannot hold.*\.npz"):
        save({"q": np.ones(2, np.longdouble)}, tmp_path / "q.safetensors")
