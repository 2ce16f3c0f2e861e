"""The README's code runs as written: every ```python block on its own, in a fresh namespace and a
fresh working directory, as a reader would paste it (a block needing torch is skipped without it).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import numpy as np
import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _blocks() -> list[str]:
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _tagger(scope: dict[str, Any]) -> None:
    assert scope["logits"].shape == (50, 4, 5)
    assert np.isfinite(float(scope["loss"]))


def _custom_cell(scope: dict[str, Any]) -> None:
    assert scope["ys"].shape == (50, 4, 32)
    assert scope["h_T"].shape == (4, 32)
    assert np.isfinite(float(scope["loss"]))  # the mean TBPTT loss
    assert {p.dtype for p in scope["cell"].parameters()} == {np.dtype(np.float64)}


def _torch_weights(scope: dict[str, Any]) -> None:
    ours, theirs = scope["lstm"].state_dict(), scope["sd"]
    assert sorted(ours) == sorted(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy())


def _lengths(scope: dict[str, Any]) -> None:
    assert scope["out"].shape == (7, 3, 32)
    np.testing.assert_allclose(scope["out2"].data, scope["out"].data, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(scope["lengths"], [7, 3, 5])


def _resume(scope: dict[str, Any]) -> None:
    assert np.isfinite(float(scope["loss"]))
    saved = {k[len("model."):]: v for k, v in scope["ck"].items() if k.startswith("model.")}
    for k, v in scope["model"].state_dict().items():
        np.testing.assert_array_equal(v, saved[k])


# a block containing the key is checked by the function after it has run
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "class Tagger": _tagger,
    "class MinimalGatedCell": _custom_cell,
    "import torch": _torch_weights,
    "pad_packed_sequence(": _lengths,
    "CosineAnnealingLR": _resume,
}


def _name(block: str) -> str:
    """A test id: the first line of the block that is not an import."""
    for line in block.splitlines():
        if line.strip() and not line.startswith(("import ", "from ")):
            return re.sub(r"\W+", "_", line.split("#")[0]).strip("_")[:40]
    return "empty"


@pytest.mark.parametrize("block", _blocks(), ids=[_name(b) for b in _blocks()])
def test_readme_block_runs_on_its_own(block: str, tmp_path: Any, monkeypatch: Any) -> None:
    if re.search(r"^import torch\b", block, re.M):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the README is our own text
    for key, check in CHECKS.items():
        if key in block:
            check(scope)


def test_readme_keeps_its_checked_examples() -> None:
    blocks = _blocks()
    assert len(blocks) >= 5, "the README tour lost its examples"
    for key in CHECKS:
        assert sum(key in b for b in blocks) == 1, f"no single README block contains {key!r}"
    # the gradcheck example checks the cell's parameters, not only its inputs
    assert any("gradcheck(" in b and "params=" in b for b in blocks)


def test_readme_quick_start_commands_are_the_ones_ci_runs() -> None:
    text = open(README, encoding="utf-8").read()
    commands = re.findall(r"^pip install .*$", text, re.M)
    assert 'pip install -e ".[examples]" && python -m tinygrad_rnn.demo' in commands
    assert 'pip install -e ".[dev]" && python -m pytest' in commands
