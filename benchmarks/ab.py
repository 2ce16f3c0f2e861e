"""Paired A/B of one training step: the working tree's tinygrad_rnn against a git revision's.

    python benchmarks/ab.py HEAD                       # the default cases, 120 pairs each
    python benchmarks/ab.py HEAD~3 --cases lstm:M,rnn:S --pairs 200 --clock process_time

On a shared machine the speed drifts by 2x within minutes, so two separate runs of run.py
cannot tell a 3% change from noise. Here both versions run in one process on the same
problem, alternating: each pair is one timed block of the new version and one of the base
(the order flips from pair to pair), and the ratio is taken within the pair, where the
machine's speed is about the same. The result is the median of the per-pair ratios
new/base with a bootstrap 95% interval; an interval that excludes 1.0 is a real difference
at this machine's noise. The base is exported with `git archive` into a temporary folder and
imported under another name (the package uses only relative imports).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import run  # noqa: E402  (benchmarks/run.py: problems and configs)

import tinygrad_rnn  # noqa: E402

BASE_NAME = "tinygrad_rnn_ab_base"
LAYERS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def export_revision(rev: str, into: Path, repo: Path = _HERE.parent, name: str = BASE_NAME
                    ) -> Any:
    """Import `rev`'s tinygrad_rnn package (from `git archive`) as module `name`."""
    tar = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev, "tinygrad_rnn"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as f:
        try:
            f.extractall(into, filter="data")
        except TypeError:  # Python without extraction filters (< 3.11.4): our own archive
            f.extractall(into)
    (into / "tinygrad_rnn").rename(into / name)
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def paired_ratio(ratios: list[float], n_boot: int = 1000, seed: int = 0
                 ) -> tuple[float, float, float]:
    """Median of the per-pair ratios and its bootstrap 95% interval."""
    rs = random.Random(seed)
    boots = sorted(statistics.median(rs.choices(ratios, k=len(ratios))) for _ in range(n_boot))
    return statistics.median(ratios), boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]


def make_step(tg: Any, p: run.Problem) -> Callable[[], None]:
    """One training step of the built-in layer of library `tg` on problem p (x requires grad)."""
    layer = getattr(tg.nn, LAYERS[p.kind])(p.cfg.I, p.cfg.H, dtype=p.dtype)
    layer.load_state_dict(p.params)
    x = tg.Tensor(p.x, requires_grad=True)
    params = list(layer.parameters())

    def step() -> None:
        for q in params:
            q.grad = None
        x.grad = None
        out, _ = layer(x)
        out.backward(p.G)

    return step


def compare(new: Callable[[], None], base: Callable[[], None], pairs: int,
            clock: Callable[[], float], min_time: float = 0.01) -> list[float]:
    """Per-pair ratios new/base of alternating timed blocks (each >= min_time)."""
    for _ in range(3):
        new()
        base()
    t0 = time.perf_counter()
    new()
    inner = max(1, int(min_time / max(time.perf_counter() - t0, 1e-9)))
    ratios = []
    for i in range(pairs):
        times = {}
        for name, fn in (("new", new), ("base", base)) if i % 2 else (("base", base),
                                                                      ("new", new)):
            gc.collect()
            t0 = clock()
            for _ in range(inner):
                fn()
            times[name] = clock() - t0
        ratios.append(times["new"] / times["base"])
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the base: a git revision (HEAD, a commit, a branch)")
    ap.add_argument("--new", metavar="REV", help="compare this revision instead of the working "
                    "tree")
    ap.add_argument("--cases", default="rnn:S,lstm:S,gru:S,rnn:M,lstm:M,gru:M",
                    help="comma-separated kind:config (configs S, M, L of run.py)")
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--clock", choices=tuple(run.CLOCKS), default="process_time")
    ap.add_argument("--dtype", choices=tuple(run.DTYPES), default="float32")
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)  # one BLAS thread: the other core's load matters less
    except ImportError:
        print("threadpoolctl not installed: BLAS keeps its default threads", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        base = export_revision(args.rev, Path(tmp))
        new = tinygrad_rnn
        if args.new:
            (Path(tmp) / "new").mkdir()
            new = export_revision(args.new, Path(tmp) / "new", name=BASE_NAME + "_new")
        print(f"new: {args.new or 'working tree'} ({Path(new.__file__).parent}); base: "
              f"{args.rev}; {args.pairs} pairs, clock {args.clock}")
        for case in args.cases.split(","):
            kind, cfg = case.split(":")
            p = run.make_problem(kind, run.CONFIGS[cfg], run.DTYPES[args.dtype])
            ratios = compare(make_step(new, p), make_step(base, p), args.pairs,
                             run.CLOCKS[args.clock])
            med, lo, hi = paired_ratio(ratios)
            verdict = "faster" if hi < 1 else "slower" if lo > 1 else "no difference"
            print(f"{case:8s} new/base {med:.3f} (95% CI {lo:.3f}-{hi:.3f}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
