"""The README's code runs as written (the PyTorch-loading block needs torch and is covered by the
parity fixtures instead)."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_readme_python_blocks_run(tmp_path, monkeypatch) -> None:
    text = open(README, encoding="utf-8").read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "import torch" not in b]
    assert len(blocks) >= 3, "the README tour lost its examples"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile("\n".join(blocks), "README.md", "exec"), scope)
    assert np.isfinite(float(scope["loss"]))  # the mean TBPTT loss of the custom-cell example
    assert scope["ys"].shape == (50, 4, 32)
    assert scope["h_T"].shape == (4, 32)


def test_readme_quick_start_commands_are_the_ones_ci_runs() -> None:
    text = open(README, encoding="utf-8").read()
    commands = re.findall(r"^pip install .*$", text, re.M)
    assert 'pip install -e ".[examples]" && python -m tinygrad_rnn.demo' in commands
    assert 'pip install -e ".[dev]" && python -m pytest' in commands
