"""The programs' shared plumbing: progress reporting with and without tqdm, the BLAS thread limit
and the `RESULT {json}` line that scripts and tests parse."""

from __future__ import annotations

import json
import re
import sys

import pytest

from tinygrad_rnn.progress import Progress, limit_blas_threads, print_result


@pytest.fixture
def no_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError


def plain_counts(err: str, desc: str) -> list[int]:
    """The counts n of the fallback's `desc: n/total (..s) ...` lines, in order."""
    return [int(m) for m in re.findall(rf"^{re.escape(desc)}: (\d+)/\d+ \(\d+s\)", err, re.M)]


def test_fallback_prints_a_line_every_tenth(no_tqdm: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(total=95, desc="fit")
    for i in range(95):
        bar.update(1, loss=f"{i / 10:.1f}")
    bar.close()
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays clean for the results
    # the first step at or past each multiple of 10% of 95 (9.5, 19, 28.5, ...), and the end
    assert plain_counts(err, "fit") == [10, 19, 29, 38, 48, 57, 67, 76, 86, 95]
    assert err.splitlines()[-1].endswith(" loss=9.4")


def test_fallback_uneven_steps_and_postfix(no_tqdm: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # TBPTT reports k1 steps at a time: one line per 10% crossed, not one per update
    bar = Progress(total=1000, desc="tbptt")
    for _ in range(40):
        bar.update(25, loss="0.5", epoch=1)
    bar.update(0, loss="0.4")  # a postfix alone prints nothing
    err = capsys.readouterr().err
    assert plain_counts(err, "tbptt") == list(range(100, 1001, 100))
    assert err.splitlines()[-1].endswith(" loss=0.5 epoch=1")


def test_fallback_wraps_an_iterable(no_tqdm: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert list(Progress(range(20), desc="train")) == list(range(20))
    bar = Progress(range(20), desc="demo")
    for step in bar:
        bar.set_postfix(loss=f"{step}")
    err = capsys.readouterr().err
    assert plain_counts(err, "train") == list(range(2, 21, 2))
    # the step is counted after the body, so each line shows the postfix of its own step
    assert "demo: 20/20" in err and err.splitlines()[-1].endswith(" loss=19")
    with pytest.raises(TypeError, match="total="):
        Progress(x for x in range(3))
    assert list(Progress((x for x in range(3)), total=3, desc="gen")) == [0, 1, 2]
    assert plain_counts(capsys.readouterr().err, "gen") == [1, 2, 3]


def test_fallback_disabled_and_context_manager(no_tqdm: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(total=5, desc="quiet", enabled=False) as bar:
        bar.update(5, loss="1")
    assert bar.n == 5 and capsys.readouterr() == ("", "")
    with pytest.raises(KeyError):
        with Progress(total=4, desc="boom") as bar:
            bar.update(4)
            raise KeyError("closed on the way out")
    assert "boom: 4/4" in capsys.readouterr().err


def test_tqdm_bar_when_installed(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    bar = Progress(total=4, desc="fit", unit="epoch")
    for _ in range(4):
        bar.update(1, loss="0.25")
    bar.close()
    assert list(Progress(range(3), desc="iter")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert out == ""
    assert re.search(r"fit: 100%.*4/4 .*epoch.*loss=0\.25", err)  # tqdm's format, postfix kept
    assert re.search(r"iter: 100%.*3/3", err)
    assert plain_counts(err, "fit") == []  # no plain lines besides the bar


def test_print_result_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = {"program": "demo", "ours": 2.44, "higher_is_better": False, "plot": None,
              "baselines": {"bigram": 3.55}, "config": {"steps": [1, 2]}}
    print("some earlier output")
    print_result(result)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("RESULT ") and json.loads(last[len("RESULT "):]) == result


def test_limit_blas_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limit_blas_threads(0) is False  # 0: leave numpy's default
    threadpoolctl = pytest.importorskip("threadpoolctl")
    # limits=None changes nothing, and restores the original limits on exit
    with threadpoolctl.threadpool_limits(limits=None, user_api="blas"):
        assert limit_blas_threads(1) is True
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert all(i["num_threads"] == 1 for i in blas)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    assert limit_blas_threads(1) is False  # an optional extra: no limit, no crash
