"""The benchmark compares like with like: the hand-written numpy BPTT (benchmarks/numpy_bptt.py),
our built-in layers and the benchmark's custom cells (benchmarks/run.py) compute the same
gradients. float64, tiny sizes, random upstream gradient, tolerance 1e-10."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_BENCH))  # run.py imports numpy_bptt from there


def _load_run():
    name = "tinygrad_rnn_benchmarks_run"  # not "run": too likely to clash with something else
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


bench = _load_run()

KINDS = ("rnn", "lstm", "gru")
TINY = bench.Config("test", 3, 5, 4, 6)  # B, I, H, T
TOL = 1e-10


def _grads(kind, contender, seed=0):
    p = bench.make_problem(kind, TINY, np.float64, seed=seed)
    return bench.BUILDERS[contender](p)()


def _assert_same(got, want, who):
    for name in bench.PARAM_NAMES + ("x",):
        assert got[name].dtype == np.float64, (who, name)
        assert got[name].shape == want[name].shape, (who, name)
        np.testing.assert_allclose(got[name], want[name], rtol=TOL, atol=TOL,
                                   err_msg=f"{who}: {name}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("contender", ["ours-layer", "ours-custom"])
def test_numpy_bptt_gradients_equal_ours(kind, contender):
    for seed in (0, 1):
        want = _grads(kind, "numpy", seed)
        got = _grads(kind, contender, seed)
        _assert_same(got, want, contender)


@pytest.mark.parametrize("kind", KINDS)
def test_custom_cell_outputs_equal_layer(kind):
    import tinygrad_rnn as tg
    from tinygrad_rnn import nn

    p = bench.make_problem(kind, TINY, np.float64, seed=2)
    layer = bench.LAYERS[kind](TINY.I, TINY.H, dtype=np.float64)
    layer.load_state_dict(p.params)
    cell = bench.CUSTOM_CELLS[kind](TINY.I, TINY.H, dtype=np.float64)
    cell.load_state_dict({n[:-3]: v for n, v in p.params.items()})
    x = tg.Tensor(p.x)
    out_layer, _ = layer(x)
    out_custom, _ = nn.Recurrent(cell)(x)
    hs, _ = bench.numpy_bptt.forward(kind, p.params, p.x)
    np.testing.assert_allclose(out_custom.data, out_layer.data, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(out_layer.data, hs, rtol=TOL, atol=TOL)


def test_steps_reset_gradients_between_calls():
    """A timed step must not accumulate into the previous step's .grad."""
    p = bench.make_problem("lstm", TINY, np.float64)
    for contender in ("ours-layer", "ours-custom"):
        step = bench.BUILDERS[contender](p)
        first = {k: v.copy() for k, v in step().items()}
        _assert_same(step(), first, contender)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_contenders_equal_numpy(kind):
    if bench.load_torch() is None:
        pytest.skip("torch is not installed")
    want = _grads(kind, "numpy")
    for contender in ("torch-fused", "torch-custom"):
        _assert_same(_grads(kind, contender), want, contender)


def test_suite_machinery_on_a_tiny_case():
    """run_case / run_overhead / the report work end to end (1 repeat, no minimum time)."""
    res = bench.run_case("gru", TINY, "float64", ["ours-layer", "ours-custom", "numpy"],
                         repeats=1, min_time=0.0, memory=True)
    assert set(res["contenders"]) == {"ours-layer", "ours-custom", "numpy"}
    assert res["ratios"]["ours-layer/numpy"] > 0
    assert all(v > 0 for v in res["peak_bytes"].values())
    ov = bench.run_overhead("rnn", repeats=1, min_time=0.0)
    assert 1 <= ov["ops"]["ours-layer"] < TINY.T  # compiled: the unroll is one scan record
    res["config"] = "S"
    targets = bench.collect_targets([res], [ov])
    text = bench.report({"machine": bench.machine_info(), "blas": bench.blas_info(),
                         "repeats": 1, "min_time": 0.0}, [res], [ov], targets,
                        ["ours-layer", "ours-custom", "numpy"])
    assert "ours-layer/numpy" in text and "np.adds/op" in text


def test_check_grads_catches_a_mismatch():
    p = bench.make_problem("rnn", TINY, np.float64)
    good = bench.build_numpy(p)()
    bad = dict(good, weight_hh_l0=good["weight_hh_l0"] * (1 + 1e-6))
    with pytest.raises(AssertionError, match="weight_hh_l0"):
        bench.check_grads("rnn", {"numpy": good, "ours-layer": bad}, np.float64)


def _load_ab():
    name = "tinygrad_rnn_benchmarks_ab"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _BENCH / "ab.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_ab_paired_ratio_is_the_median_with_an_interval_around_it():
    ab = _load_ab()
    ratios = [0.9, 0.95, 1.0, 1.05, 1.1] * 20
    med, lo, hi = ab.paired_ratio(ratios)
    assert med == 1.0 and lo <= 1.0 <= hi and lo >= 0.9 and hi <= 1.1
    med, lo, hi = ab.paired_ratio([0.8 + 0.001 * i for i in range(101)])
    assert med == pytest.approx(0.85) and 0.8 < lo < med < hi < 0.9


def test_ab_exports_a_revision_as_a_separate_package(tmp_path):
    """The base is a git revision's tinygrad_rnn under another name, next to the working
    tree's; its gradients for the same step are those of this tree up to rounding."""
    import subprocess

    import tinygrad_rnn
    repo = _BENCH.parent
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                      capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    ab = _load_ab()
    base = ab.export_revision("HEAD", tmp_path)
    try:
        assert base is not tinygrad_rnn and Path(base.__file__).is_relative_to(tmp_path)
        p = bench.make_problem("gru", TINY, np.float64)
        grads = []
        for lib in (tinygrad_rnn, base):
            layer = lib.nn.GRU(TINY.I, TINY.H, dtype=np.float64)
            layer.load_state_dict(p.params)
            out, _ = layer(lib.Tensor(p.x))
            out.backward(p.G)
            grads.append([q.grad for q in layer.parameters()])
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == ab.BASE_NAME]:
            del sys.modules[name]
