"""tinygrad_rnn.io: round trips, atomic saves (a failure mid-write leaves the old file
byte-identical and no temporary file behind) and clear errors for bad files."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_rnn as tg
import tinygrad_rnn.io as tio
from tinygrad_rnn.io import load, save


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
def test_round_trip_keeps_dtypes_shapes_and_order(tmp_path):
    state = _state()
    path = tmp_path / "model.npz"
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
    st.tuples(st.sampled_from([np.float32, np.float64, np.int32, np.int8, np.bool_, np.complex64]),
              st.lists(st.integers(0, 3), max_size=3), st.integers(0, 2**16)),
    max_size=4))
def test_round_trip_property(tmp_path_factory, spec):
    state = {}
    for key, (dtype, shape, seed) in spec.items():
        values = np.random.default_rng(seed).normal(size=shape) * 10
        state[key] = values.astype(dtype)
    path = tmp_path_factory.mktemp("prop") / "s.npz"
    save(state, path)
    _assert_same(state, load(path))


def test_nested_state_is_saved_flat_with_dotted_keys(tmp_path):
    r = np.random.default_rng(3)
    w, m = r.normal(size=(2, 3)).astype(np.float32), r.normal(size=(2, 3)).astype(np.float32)
    checkpoint = {
        "model": _Module({"fc.weight": w}),  # anything with state_dict() is asked for it
        "optimizer": {"state": {0: {"step": 3, "exp_avg": m}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "amsgrad": True,
                                        "params": [0, 1]}]},
        "losses": [np.ones(2), tg.Tensor(np.zeros(1))],  # not all numbers: one key per item
    }
    save(checkpoint, tmp_path / "ck.npz")
    flat = load(tmp_path / "ck.npz")
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


def test_save_into_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        save({"a": np.ones(1)}, tmp_path / "nope" / "x.npz")
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
    with pytest.raises(ValueError, match=r"obj.npz.*'o'"):
        load(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")
