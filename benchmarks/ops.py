"""Per-op benchmark: forward + backward through tinygrad_rnn against the same arithmetic in numpy.

Run from the repository root:

    python benchmarks/ops.py                 # full run (20-40 s)
    python benchmarks/ops.py --quick         # smoke run (about 5 s)
    python benchmarks/ops.py --json out.json # also write the results as JSON

For each op (add, mul, matmul, tanh, sigmoid, sum, getitem of a slice, split into 4, concat of 4)
and two float32 sizes, tiny (1, 32) and medium (64, 512), it times one iteration of

- ours:  every leaf's .grad = None; y = op(leaves); y.backward(g)
         (leaves built once with requires_grad=True; g a fixed random upstream gradient; the
         grads are reset first so the last iteration's can be checked), and
- numpy: the forward and the hand-written backward of the same op (mul: a*b, then g*b and g*a).

Rule that keeps the two sides doing the same work: both end with ONE OWNED gradient array per
input, since that is what a leaf's .grad has to be. Where the hand-written formula's gradient is g
itself or a view of it (add: g, g; concat: the slabs of g; sum: g broadcast), the numpy side
copies it; where the formula already makes a fresh array (mul: g*b), it does not. A copy the
engine makes beyond that shows up in the ratio, as it should. The numpy side's gradients also
live as long as the leaves' .grad do: until the next iteration starts.

Reported per op and size: the median time per iteration of each side and the ratio ours / numpy;
and, on the tiny size, the engine's own cost per recorded op, (ours - numpy) / ops recorded, as a
multiple of one tiny np.add measured in the same run: the fixed price of one tape record. A single
op row pays for a whole backward() call per record; the extra row "tanh x50" (50 tanh records,
one backward) shows the price of a record inside a long graph, as in an unrolled RNN.

Targets: medium ratio <= 1.15 for every op (at (64, 512) the arithmetic must dominate), engine
cost per recorded op <= 5 tiny np.add.

Method: one process; warm-up; every repeat times a block of many inner iterations of ours, then
of numpy (the order alternates between repeats so that drift hits both sides alike); the inner
count is calibrated so that a block lasts --block-ms; medians over >= 7 repeats (21 by default:
short blocks and many repeats let the median skip the blocks a busy machine preempted); the
garbage collector is off inside timed blocks (as timeit does); time.perf_counter (or
--clock process_time). Before timing, each case checks that both sides give the same gradients.
The machine is shared and noisy: the load average is printed; trust medians, and rerun before
concluding anything from a few percent. On an oversubscribed machine multi-threaded OpenBLAS can
be 100x slower on the medium matmul: compare with --blas-threads 1.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
import tinygrad_rnn as tg  # noqa: E402
from tinygrad_rnn import engine  # noqa: E402

DTYPE = np.float32
SIZES = {"tiny": (1, 32), "medium": (64, 512)}
MEDIUM_RATIO_TARGET = 1.15
ENGINE_COST_TARGET = 5.0  # tiny np.add per recorded op
CHAIN = 50  # ops in the chain case


# ----------------------------------------------------------------------------- the cases
@dataclass
class Bench:
    """One op at one size: two zero-argument callables doing one iteration each."""

    op: str
    size: str
    shape: str
    ours: Callable[[], None]
    numpy: Callable[[], Any]  # returns the input gradients, to check ours against them
    leaves: list[tg.Tensor]
    recorded_ops: int = 1

    def __post_init__(self) -> None:
        self._held: Any = None

    def numpy_iteration(self) -> None:
        """The numpy side as timed: its gradients live until the next iteration starts, exactly
        like the leaves' .grad on our side (dropped first, then made anew)."""
        self._held = None
        self._held = self.numpy()[1]

    def check(self) -> None:
        """One iteration of each side must give the same gradients (else we time a bug)."""
        self.ours()
        self.numpy_iteration()
        expected = self._held
        for i, (t, e) in enumerate(zip(self.leaves, expected)):
            e = np.broadcast_to(e, t.shape)
            if t.grad is None or not np.allclose(t.grad, e, rtol=1e-4, atol=1e-5):
                raise AssertionError(f"{self.op} {self.size}: gradient of input {i} differs "
                                     f"from the numpy side")


def _leaves(arrays: list[np.ndarray]) -> list[tg.Tensor]:
    return [tg.Tensor(a, requires_grad=True) for a in arrays]


def _ours(fn: Callable[..., Any], leaves: list[tg.Tensor],
          g: np.ndarray) -> Callable[[], None]:
    def run() -> None:
        for t in leaves:  # zeroed first, so that the last iteration's grads can be checked
            t.grad = None
        y = fn(*leaves)
        y.backward(g)
    return run


def _multi_backward() -> tuple[Callable[[list[tg.Tensor], list[np.ndarray]], None], int]:
    """Backward from several roots at once (split's pieces) and the records that costs.

    The engine's multi-root replay records nothing extra; without it, the pieces are joined by a
    concat (one more record, and the numpy side does not pay for it)."""
    run_backward = getattr(engine, "run_backward", None)
    if run_backward is not None:
        return (lambda roots, grads: run_backward(list(roots), list(grads))), 1

    def joined(roots: list[tg.Tensor], grads: list[np.ndarray]) -> None:
        tg.concat(roots, axis=1).backward(np.concatenate(grads, axis=1))
    return joined, 2


def make_benches(rng: np.random.Generator) -> list[Bench]:
    benches: list[Bench] = []
    multi_backward, split_records = _multi_backward()
    for size, (n, d) in SIZES.items():
        shape = f"({n}, {d})"

        def rand(*s: int) -> np.ndarray:
            return rng.standard_normal(s).astype(DTYPE)

        def add(op: str, shape: str, fn: Callable[..., Any], arrays: list[np.ndarray],
                g: np.ndarray, numpy: Callable[[], Any]) -> None:
            leaves = _leaves(arrays)
            benches.append(Bench(op, size, shape, _ours(fn, leaves, g), numpy, leaves))

        a, b, g = rand(n, d), rand(n, d), rand(n, d)

        # add: d(a+b) = g, g (owned copies, as .grad must be)
        def np_add(a=a, b=b, g=g) -> Any:
            return a + b, (g.copy(), g.copy())
        add("add", shape, lambda x, y: x + y, [a, b], g, np_add)

        # mul: d(ab) = g b, g a
        def np_mul(a=a, b=b, g=g) -> Any:
            return a * b, (g * b, g * a)
        add("mul", shape, lambda x, y: x * y, [a, b], g, np_mul)

        # matmul (n, d) @ (d, d): dA = G W^T, dW = A^T G
        W = (rand(d, d) / np.sqrt(d)).astype(DTYPE)

        def np_matmul(a=a, W=W, g=g) -> Any:
            return a @ W, (g @ W.T, a.T @ g)
        add("matmul", f"{shape} @ ({d}, {d})", lambda x, w: x @ w, [a, W], g, np_matmul)

        # tanh: d tanh(x) = g (1 - y^2)
        def np_tanh(a=a, g=g) -> Any:
            y = np.tanh(a)
            return y, (g * (1 - y * y),)
        add("tanh", shape, lambda x: x.tanh(), [a], g, np_tanh)

        # sigmoid: y = 1 / (1 + exp(-x)); d = g y (1 - y)
        def np_sigmoid(a=a, g=g) -> Any:
            y = 1 / (1 + np.exp(-a))
            return y, (g * (y * (1 - y)),)
        add("sigmoid", shape, lambda x: x.sigmoid(), [a], g, np_sigmoid)

        # sum of all elements: every element gets g (one owned array of x's shape)
        g0 = np.asarray(rng.standard_normal(), dtype=DTYPE)

        def np_sum(a=a, g0=g0) -> Any:
            return a.sum(), (np.full(a.shape, g0, dtype=a.dtype),)
        add("sum", shape, lambda x: x.sum(), [a], g0, np_sum)

        # getitem of a slice: zeros of x's shape with g written into the slice
        cols = slice(d // 4, 3 * d // 4)
        g_slice = rand(n, d // 2)

        def np_getitem(a=a, g=g_slice, cols=cols) -> Any:
            y = a[:, cols]
            gx = np.zeros_like(a)
            gx[:, cols] = g
            return y, (gx,)
        add("getitem", f"{shape}[:, {cols.start}:{cols.stop}]", lambda x, c=cols: x[:, c], [a],
            g_slice, np_getitem)

        # split into 4 along axis 1: views forward; the pieces' gradients concatenated
        q = d // 4
        g_parts = [rand(n, q) for _ in range(4)]
        split_leaves = _leaves([a])

        def ours_split(x=split_leaves[0], g_parts=g_parts, q=q) -> None:
            x.grad = None
            multi_backward(list(tg.split(x, q, axis=1)), g_parts)

        def np_split(a=a, g_parts=g_parts) -> Any:
            return np.split(a, 4, axis=1), (np.concatenate(g_parts, axis=1),)
        benches.append(Bench("split", size, f"{shape} -> 4 x ({n}, {q})", ours_split, np_split,
                             split_leaves, split_records))

        # concat of 4 pieces along axis 1: each piece's gradient is its (copied) slab of g
        parts = [rand(n, q) for _ in range(4)]

        def np_concat(parts=parts, g=g) -> Any:
            return np.concatenate(parts, axis=1), tuple(p.copy() for p in np.split(g, 4, axis=1))
        add("concat", f"4 x ({n}, {q}) -> {shape}", lambda *ps: tg.concat(ps, axis=1), parts, g,
            np_concat)

        # a chain of CHAIN tanh ops and one backward: the cost of a record without the fixed
        # cost of a backward() call (which the single-op rows above include)
        if size == "tiny":
            def ours_chain(x: tg.Tensor) -> tg.Tensor:
                for _ in range(CHAIN):
                    x = x.tanh()
                return x

            def np_chain(a=a, g=g) -> Any:
                ys, y = [], a
                for _ in range(CHAIN):
                    y = np.tanh(y)
                    ys.append(y)
                gx = g
                for y in reversed(ys):
                    gx = gx * (1 - y * y)
                return ys[-1], (gx,)
            leaves = _leaves([a])
            benches.append(Bench(f"tanh x{CHAIN}", size, f"{shape}, one backward",
                                 _ours(ours_chain, leaves, g), np_chain, leaves, CHAIN))
    return benches


# ----------------------------------------------------------------------------- timing
CLOCKS = {"perf_counter": time.perf_counter, "process_time": time.process_time}
_clock = time.perf_counter


def _block(fn: Callable[[], None], inner: int) -> float:
    """Seconds per iteration over one block of `inner` iterations (GC off, as timeit does)."""
    clock = _clock
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        for _ in range(inner):
            fn()
        return (clock() - start) / inner
    finally:
        if gc_was_on:
            gc.enable()


def _calibrate(fn: Callable[[], None], block_s: float) -> int:
    """Inner iterations so that one block of `fn` lasts about `block_s` seconds."""
    inner = 1
    while True:
        t = _block(fn, inner) * inner
        if t >= block_s / 5 or inner >= 1 << 22:
            return max(1, int(inner * block_s / max(t, 1e-9)))
        inner *= 4


def measure(ours: Callable[[], None], ref: Callable[[], None], repeats: int,
            block_s: float, warmup_s: float) -> dict[str, Any]:
    """Interleaved medians: (ours, numpy) or (numpy, ours) alternately in each repeat."""
    for fn in (ours, ref):  # warm-up: caches, allocator, branch predictors, lazy imports
        end = time.perf_counter() + warmup_s
        while time.perf_counter() < end:
            fn()
    inner = _calibrate(ours, block_s)  # ours is the slower side: the same count for both
    t_ours, t_ref = [], []
    gc.collect()
    for r in range(repeats):
        if r % 2 == 0:
            t_ours.append(_block(ours, inner))
            t_ref.append(_block(ref, inner))
        else:
            t_ref.append(_block(ref, inner))
            t_ours.append(_block(ours, inner))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    ratios = [o / r for o, r in zip(t_ours, t_ref)]
    return {"ours_s": mo, "numpy_s": mr, "ratio": mo / mr, "inner": inner,
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def measure_np_add(repeats: int, block_s: float) -> float:
    """Median seconds of one np.add on tiny (1, 32) float32 operands: the unit of engine cost."""
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(SIZES["tiny"]).astype(DTYPE) for _ in range(2))
    add = np.add

    def one() -> None:
        add(a, b)
    inner = _calibrate(one, block_s)
    _block(one, inner)
    return statistics.median(_block(one, inner) for _ in range(repeats))


# ----------------------------------------------------------------------------- the machine
def blas_info() -> dict[str, Any]:
    """The BLAS numpy uses: threadpoolctl's runtime view if importable, else numpy's build info."""
    info: dict[str, Any] = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
        info["source"] = "threadpoolctl"
        info["libraries"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture",
                                                       "corecore_type", "num_threads",
                                                       "threading_layer") if k in lib}
                             for lib in libs]
        return info
    info["source"] = "numpy.show_config"
    try:
        config: Any = np.show_config(mode="dicts")  # numpy >= 1.25
        deps = config.get("Build Dependencies", {})
        blas = deps.get("blas", {})
        info["libraries"] = [{"name": blas.get("name"), "version": blas.get("version"),
                              "config": blas.get("openblas configuration")}]
    except Exception as e:  # older numpy: no dict mode
        info["libraries"] = [{"error": f"numpy.show_config(mode='dicts') failed: {e}"}]
    return info


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tinygrad_rnn": getattr(tg, "__version__", "?"),
        "blas": blas_info(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _format_blas(blas: dict[str, Any]) -> str:
    libs = "; ".join(", ".join(f"{k}={v}" for k, v in lib.items()) for lib in blas["libraries"])
    return f"{libs or 'none found'} (via {blas['source']})"


# ----------------------------------------------------------------------------- main
def _us(s: float) -> str:
    return f"{s * 1e6:9.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a fast smoke run (short blocks)")
    p.add_argument("--json", metavar="PATH", help="write the results to PATH as JSON")
    p.add_argument("--repeats", type=int, default=None, help="repeats per case (>= 7)")
    p.add_argument("--block-ms", type=float, default=None, help="duration of one timed block")
    p.add_argument("--only", nargs="*", default=None, help="run only these ops")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="perf_counter",
                   help="wall time (default) or process CPU time (immune to preemption on a "
                        "loaded machine, but counts spinning BLAS threads)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="limit BLAS threads (needs threadpoolctl; else set OPENBLAS_NUM_THREADS)")
    args = p.parse_args(argv)
    repeats = max(7, args.repeats or (7 if args.quick else 21))
    block_s = (args.block_ms or (2.0 if args.quick else 10.0)) / 1e3
    warmup_s = 0.02 if args.quick else 0.15
    global _clock
    _clock = CLOCKS[args.clock]
    if args.blas_threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            p.error("--blas-threads needs threadpoolctl; set OPENBLAS_NUM_THREADS instead")
        threadpool_limits(limits=args.blas_threads, user_api="blas")

    machine = machine_info()
    print(f"tinygrad_rnn ops benchmark  {machine['date']}")
    print(f"python {machine['python']}, numpy {machine['numpy']}, nproc {machine['nproc']} "
          f"(affinity {machine['affinity']}), cpu {machine['cpu']}")
    print(f"BLAS: {_format_blas(machine['blas'])}")
    print(f"OPENBLAS_CORETYPE={machine['blas']['OPENBLAS_CORETYPE']}")
    print(f"dtype float32; medians of {repeats} interleaved repeats, blocks of ~{block_s * 1e3:g}"
          f" ms, clock {args.clock}{' (quick)' if args.quick else ''}")
    load = machine["loadavg"]
    if load is not None and load[0] > (machine["affinity"] or machine["nproc"] or 1) * 0.75:
        print(f"WARNING: load average {load[0]:.1f} on {machine['affinity']} CPUs: other "
              f"processes compete for the cores; expect noise (multi-threaded BLAS suffers most)")

    np_add_s = measure_np_add(repeats, block_s)
    print(f"unit: one tiny np.add (1, 32) float32 = {np_add_s * 1e9:.0f} ns\n")

    header = (f"{'op':<8} {'size':<7} {'shape':<26} {'ours us':>9} {'numpy us':>9} "
              f"{'ratio':>6} {'[min-max]':>13}  {'engine/op':>9} {'x np.add':>8}")
    print(header)
    print("-" * len(header))
    results = []
    for bench in make_benches(np.random.default_rng(0)):
        if args.only and bench.op not in args.only:
            continue
        bench.check()
        m = measure(bench.ours, bench.numpy_iteration, repeats, block_s, warmup_s)
        row: dict[str, Any] = {"op": bench.op, "size": bench.size, "shape": bench.shape,
                               "recorded_ops": bench.recorded_ops}
        row.update(m)
        cost = ""
        if bench.size == "tiny":
            per_op = (m["ours_s"] - m["numpy_s"]) / bench.recorded_ops
            row["engine_cost_per_op_s"] = per_op
            row["engine_cost_np_add"] = per_op / np_add_s
            cost = f"{_us(per_op)} {per_op / np_add_s:8.1f}"
        results.append(row)
        print(f"{bench.op:<8} {bench.size:<7} {bench.shape:<26} {_us(m['ours_s'])} "
              f"{_us(m['numpy_s'])} {m['ratio']:6.2f} "
              f"[{m['ratio_min']:.2f}-{m['ratio_max']:.2f}]".ljust(88) + f"  {cost}",
              flush=True)

    medium = [r for r in results if r["size"] == "medium"]
    tiny = [r for r in results if r["size"] == "tiny"]
    print()
    if medium:
        over = [f"{r['op']} {r['ratio']:.2f}" for r in medium if r["ratio"] > MEDIUM_RATIO_TARGET]
        print(f"medium ratio target <= {MEDIUM_RATIO_TARGET}: "
              + ("all met" if not over else "missed by " + ", ".join(over)))
    single = [r for r in tiny if r["recorded_ops"] == 1]
    if single:
        costs = [r["engine_cost_np_add"] for r in single]
        over = [f"{r['op']} {r['engine_cost_np_add']:.1f}" for r in single
                if r["engine_cost_np_add"] > ENGINE_COST_TARGET]
        print(f"engine cost per recorded op (one op + one backward() per iteration): median "
              f"{statistics.median(costs):.1f} tiny np.add "
              f"({statistics.median(r['engine_cost_per_op_s'] for r in single) * 1e6:.2f} us); "
              f"target <= {ENGINE_COST_TARGET:g}: "
              + ("all met" if not over else "missed by " + ", ".join(over)))
    for r in tiny:
        if r["op"].startswith("tanh x"):
            print(f"engine cost per record inside a {r['recorded_ops']}-op chain (no per-call "
                  f"cost): {r['engine_cost_np_add']:.1f} tiny np.add "
                  f"({r['engine_cost_per_op_s'] * 1e6:.2f} us)")

    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = list(os.getloadavg())
        print(f"load average: start {machine['loadavg'][0]:.1f}, end "
              f"{machine['loadavg_end'][0]:.1f}")
    if args.json:
        out = {"machine": machine, "np_add_s": np_add_s, "repeats": repeats, "block_s": block_s,
               "clock": args.clock,
               "quick": args.quick, "targets": {"medium_ratio": MEDIUM_RATIO_TARGET,
                                                "engine_cost_np_add": ENGINE_COST_TARGET},
               "results": results}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
