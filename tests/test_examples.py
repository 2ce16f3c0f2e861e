"""The example programs, run end to end: each one's `--quick` mode as a subprocess, in a fresh
working directory, checked through its final machine-readable `RESULT {json}` line.

Every example names the baseline it must beat; these tests hold it to that (and to its training
loss falling). All quick runs together take well under a minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MINE = ["gradient_flow.py", "custom_cell.py", "tbptt_long_sequence.py", "attention.py"]


def run(script: str, cwd: Path, *args: str, hide: tuple[str, ...] = (),
        progress: bool = True) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run examples/<script> --quick in `cwd`; return (the RESULT json, the process).

    `hide` names optional packages (tqdm, matplotlib) to make unimportable for this run."""
    env = dict(os.environ)
    paths = [str(ROOT)]
    if hide:
        fake = cwd / "_hidden_modules"
        fake.mkdir(exist_ok=True)
        for name in hide:
            (fake / f"{name}.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
        paths.insert(0, str(fake))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(EXAMPLES / script), "--quick", *args]
    if not progress:
        cmd.append("--no-progress")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1 and proc.stdout.rstrip().endswith(lines[0]), \
        f"{script}: expected one final RESULT line, got:\n{proc.stdout[-2000:]}"
    return json.loads(lines[0][len("RESULT "):]), proc


def beats_baseline(r: dict[str, Any]) -> bool:
    return r["ours"] > r["baseline"] if r["higher_is_better"] else r["ours"] < r["baseline"]


@pytest.mark.parametrize("script", MINE)
def test_help(script: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0
    assert "--quick" in proc.stdout and "usage" in proc.stdout


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="the PNG needs matplotlib (the 'plot' extra)")
def test_gradient_flow(tmp_path: Path) -> None:
    # no training here: the "baseline" is the small-weight tanh RNN whose gradient vanishes
    r, _ = run("gradient_flow.py", tmp_path, "--plot", "flow.png")
    assert r["vanishes"] and r["ratios"][r["baseline_name"]] < 1e-6
    assert r["lstm_keeps_more"] and beats_baseline(r)
    assert r["explodes"]
    png = tmp_path / "flow.png"
    assert r["plot"] == "flow.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gradient_flow_without_optional_extras(tmp_path: Path) -> None:
    # without tqdm (plain progress lines) and matplotlib (no plot, a clear message): still exit 0
    r, proc = run("gradient_flow.py", tmp_path, hide=("tqdm", "matplotlib"))
    assert r["plot"] is None and "no plot" in proc.stdout and "matplotlib" in proc.stdout
    assert "gradient_flow: 5/5" in proc.stderr  # the plain progress line
    assert beats_baseline(r) and not (tmp_path / "gradient_flow.png").exists()


def test_custom_cell(tmp_path: Path) -> None:
    r, _ = run("custom_cell.py", tmp_path, progress=False)
    assert r["loss_end"] < r["loss_start"]
    assert beats_baseline(r)  # the last seen value
    assert r["ours"] < r["baseline_mean"]
    if importlib.util.find_spec("hypothesis") is not None:
        assert r["gradcheck_examples"] >= 1


def test_tbptt_long_sequence(tmp_path: Path) -> None:
    r, _ = run("tbptt_long_sequence.py", tmp_path, progress=False)
    assert r["loss_end"] < r["loss_start"]
    assert beats_baseline(r)  # a predictor from symbol frequencies alone
    # checkpointing: the same gradients, so the same losses bit for bit, in less memory
    assert r["checkpoint_losses_identical"]
    plain, ckpt = r["runs"]["tbptt"], r["runs"]["tbptt_checkpoint"]
    assert ckpt["test_loss"] == plain["test_loss"]
    assert ckpt["peak_bytes"] < plain["peak_bytes"]
    assert r["full_bptt_bytes_estimate"] > 10 * plain["peak_bytes"]


def test_attention(tmp_path: Path) -> None:
    r, _ = run("attention.py", tmp_path, progress=False)
    assert r["loss_end"] < r["loss_start"]
    assert beats_baseline(r)  # the same decoder fed only the final encoder state
    assert r["token_accuracy"] > r["baseline_token_accuracy"]
