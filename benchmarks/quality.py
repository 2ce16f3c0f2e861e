"""The demo's model trained by us and by PyTorch with the same recipe and wall-clock budget.

    python benchmarks/quality.py                     # the demo's defaults, both frameworks
    python benchmarks/quality.py --minutes 1 --hidden 128 --order torch,ours

Same data split, character streams, model (Embedding -> LSTM -> Linear -> ReLU -> Linear,
PyTorch's initialisation), Adam, learning-rate schedule over the elapsed fraction of the budget,
clipping of the gradient norm and truncated BPTT windows; the held-out chapters are scored the same
way. The only difference is the framework doing the arithmetic, so what each reaches in the
budget says how much of the time went into useful updates. Needs torch
(`pip install torch==2.13.0`). Both runs use `--threads` BLAS/intra-op threads. Prints a table
and a `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinygrad_rnn import datasets, demo  # noqa: E402
from tinygrad_rnn.progress import limit_blas_threads  # noqa: E402


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """The demo itself, with the same settings, in a process of its own (torch's thread pool is
    not loaded there); its RESULT line as a dict."""
    argv = ["--minutes", str(args.minutes), "--hidden", str(args.hidden), "--layers",
            str(args.layers), "--head-hidden", str(args.head_hidden), "--seq-len",
            str(args.seq_len), "--batch", str(args.batch),
            "--embed", str(args.embed), "--lr", str(args.lr), "--clip", str(args.clip),
            "--seed", str(args.seed),
            "--blas-threads", str(args.threads), "--plot", "", "--sample-chars", "50"]
    out = subprocess.run([sys.executable, "-m", "tinygrad_rnn.demo", *argv], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    last = out.strip().splitlines()[-1]
    r = json.loads(last[len("RESULT "):])
    return {"bits": r["ours"], "updates": r["updates"], "chars_per_second": r["chars_per_second"],
            "valid_during_training": r["valid_during_training"]}


def run_torch(args: argparse.Namespace) -> dict[str, Any]:
    """The same training in PyTorch (CPU, float32)."""
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    text = datasets.moby_dick()
    train_text, valid_text = demo.split_at_chapter(text, demo.VALID_FRACTION)
    vocab = demo.CharVocab(text)
    train_ids, valid_ids = vocab.encode(train_text), vocab.encode(valid_text)
    v_in, v_out = demo.held_out_streams(valid_ids)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(len(vocab), args.embed)
            self.lstm = torch.nn.LSTM(args.embed, args.hidden, num_layers=args.layers)
            self.proj = (torch.nn.Linear(args.hidden, args.head_hidden) if args.head_hidden
                         else None)
            self.head = torch.nn.Linear(args.head_hidden or args.hidden, len(vocab))

        def forward(self, ids: Any, state: Any = None) -> Any:
            h, state = self.lstm(self.embed(ids), state)
            if self.proj is not None:
                h = torch.relu(self.proj(h))
            return self.head(h), state

    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def evaluate(rows: int) -> float:
        """Bits/char of the first `rows` characters of every held-out stream, as the demo."""
        total, state = 0.0, None
        with torch.no_grad():
            for lo in range(0, rows, 256):
                x = torch.from_numpy(v_in[lo:min(lo + 256, rows)])
                y = torch.from_numpy(v_out[lo:min(lo + 256, rows)])
                logits, state = model(x, state)
                total += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, len(vocab)), y.reshape(-1), reduction="sum").item()
        return total / v_out[:rows].size / math.log(2)

    data = torch.from_numpy(demo.streams(train_ids, args.batch))
    windows = (len(data) - 1) // args.seq_len
    checks = [(k + 1) / (demo.CHECKS + 1) for k in range(demo.CHECKS)]
    curve = []
    seconds = 60.0 * args.minutes
    state, step = None, 0
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        frac = elapsed / seconds
        if frac >= 1.0:
            break
        if checks and frac >= checks[0]:
            checks.pop(0)
            curve.append([round(elapsed, 1), round(evaluate(demo.check_rows(v_in)), 4)])
        w = step % windows
        if w == 0:
            state = None
        lo = w * args.seq_len
        x, y = data[lo:lo + args.seq_len], data[lo + 1:lo + args.seq_len + 1]
        for group in opt.param_groups:
            group["lr"] = demo.learning_rate(args.lr, frac)
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        state = tuple(s.detach() for s in state)
        step += 1
    train_seconds = time.perf_counter() - t0
    bits = evaluate(len(v_in))
    curve.append([round(train_seconds, 1), round(bits, 4)])
    return {"bits": round(bits, 4), "updates": step,
            "chars_per_second": round(step * args.batch * args.seq_len / train_seconds),
            "valid_during_training": curve}


def main(argv: list[str] | None = None) -> int:
    d = demo.DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=d["minutes"])
    p.add_argument("--hidden", type=int, default=d["hidden"])
    p.add_argument("--layers", type=int, default=d["layers"])
    p.add_argument("--head-hidden", type=int, default=d["head_hidden"])
    p.add_argument("--seq-len", type=int, default=d["seq_len"])
    p.add_argument("--batch", type=int, default=d["batch"])
    p.add_argument("--embed", type=int, default=d["embed"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--clip", type=float, default=d["clip"])
    p.add_argument("--threads", type=int, default=d["blas_threads"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", default="ours,torch", help="which runs first (the machine drifts)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        print("quality.py needs torch: pip install torch==2.13.0")
        return 0
    limit_blas_threads(args.threads)
    runs = {"ours": run_ours, "torch": run_torch}
    results: dict[str, Any] = {}
    for name in args.order.split(","):
        print(f"training {name} for {args.minutes:g} minutes ...", flush=True)
        results[name] = runs[name](args)
    ours, ref = results["ours"], results["torch"]
    print(f"\n{'':8s} {'held-out bits/char':>18s} {'updates':>8s} {'chars/s':>9s}")
    for name, r in results.items():
        print(f"{name:8s} {r['bits']:18.3f} {r['updates']:8d} {r['chars_per_second']:9,d}")
    print(f"ours / torch: bits {ours['bits'] / ref['bits']:.3f}, "
          f"updates {ours['updates'] / ref['updates']:.2f}")
    config = {k: getattr(args, k) for k in ("minutes", "hidden", "layers", "head_hidden",
                                            "seq_len", "batch", "embed", "lr", "clip", "threads",
                                            "seed")}
    print("RESULT " + json.dumps({"config": config, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
