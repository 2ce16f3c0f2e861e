"""The package type-checks: mypy (in the dev extra) reports nothing on tinygrad_rnn/, and every
function there is annotated (so mypy checks every body)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_mypy_finds_nothing_in_the_package(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")  # installed by `pip install -e ".[dev]"`
    package = Path(__file__).resolve().parent.parent / "tinygrad_rnn"
    out, err, status = api.run([str(package), "--ignore-missing-imports", "--disallow-untyped-defs",
                                "--cache-dir", str(tmp_path / "mypy_cache")])
    assert status == 0, out + err
