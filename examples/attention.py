"""Reversing digit sequences with an encoder-decoder, with and without additive attention.

Input: 8-10 random digits; target: the same digits reversed. A GRU encoder reads the input; a
GRU decoder writes the output one digit at a time (teacher forcing in training, greedy decoding
in evaluation). At each step the decoder gets a context vector:

- with attention: `nn.AdditiveAttention` (Bahdanau) of the previous decoder state over all
  encoder outputs -- to write output digit t it can look straight at input position L-1-t;
- without attention (the baseline): the final encoder state, the same at every step -- the whole
  input has to be squeezed through one hidden vector.

Both models are otherwise identical (same sizes, initial decoder state, optimiser, data and
number of updates). Every batch has one length drawn from [min-len, max-len], so no padding
is needed.

    python examples/attention.py
    python examples/attention.py --quick
"""

from __future__ import annotations

import os

# Small matrices: BLAS threads cost more than they give here (set before numpy is imported).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import tinygrad_rnn as tg  # noqa: E402
import tinygrad_rnn.nn.functional as F  # noqa: E402
from tinygrad_rnn import nn, optim  # noqa: E402
from tinygrad_rnn.progress import Progress, print_result  # noqa: E402


DIGITS = 10
BOS = DIGITS  # the decoder's first input


class Seq2Seq(nn.Module):
    """GRU encoder, GRU-cell decoder; the decoder's context is attention over the encoder
    outputs (attention=True) or the final encoder state (attention=False)."""

    def __init__(self, embed: int, hidden: int, attention: bool) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(DIGITS, embed)
        self.tgt_embed = nn.Embedding(DIGITS + 1, embed)  # + BOS
        self.encoder = nn.GRU(embed, hidden)
        self.decoder = nn.GRUCell(embed + hidden, hidden)
        self.out = nn.Linear(2 * hidden, DIGITS)
        # created last, so that with the same seed both models start from the same other weights
        self.attention = nn.AdditiveAttention(hidden, hidden, hidden) if attention else None

    def encode(self, src: np.ndarray) -> tuple[tg.Tensor, tg.Tensor]:
        """src (L, B) ints -> encoder outputs as (B, L, H) and the final state (B, H)."""
        outputs, h_n = self.encoder(self.src_embed(src))
        return outputs.transpose(1, 0, 2), h_n[0]

    def step(self, token: Any, s: tg.Tensor, memory: tg.Tensor,
             final: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        """One decoder step: previous token (B,) and state s (B, H) -> (logits (B, 10), new s)."""
        if self.attention is not None:
            context, _ = self.attention(s, memory, memory)
        else:
            context = final
        s = self.decoder(tg.concat([self.tgt_embed(token), context], axis=-1), s)
        return self.out(tg.concat([s, context], axis=-1)), s

    def forward(self, src: np.ndarray, tgt: np.ndarray) -> tg.Tensor:
        """Teacher forcing: logits (L, B, 10) for target (L, B), each step fed the true previous
        digit."""
        memory, final = self.encode(src)
        s, logits = final, []
        prev = np.concatenate([np.full((1, tgt.shape[1]), BOS), tgt[:-1]])
        for t in range(tgt.shape[0]):
            out, s = self.step(prev[t], s, memory, final)
            logits.append(out)
        return tg.stack(logits)

    def generate(self, src: np.ndarray) -> np.ndarray:
        """Greedy decoding: (L, B) ints, each step fed the model's own previous digit."""
        with tg.no_grad():
            memory, final = self.encode(src)
            s, token, result = final, np.full(src.shape[1], BOS), []
            for _ in range(src.shape[0]):
                out, s = self.step(token, s, memory, final)
                token = out.numpy().argmax(axis=-1)
                result.append(token)
        return np.stack(result)


def batch(rng: np.random.Generator, size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    src = rng.integers(0, DIGITS, size=(length, size))
    return src, src[::-1].copy()


def train(model: Seq2Seq, args: argparse.Namespace, desc: str) -> list[float]:
    """Adam with gradient clipping; every model sees the same batches (same data seed)."""
    rng = np.random.default_rng(args.seed + 1)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    bar = Progress(total=args.updates, desc=desc, enabled=not args.no_progress)
    for _ in range(args.updates):
        src, tgt = batch(rng, args.batch, int(rng.integers(args.min_len, args.max_len + 1)))
        logits = model(src, tgt)
        loss = F.cross_entropy(logits.reshape(-1, DIGITS), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update(1, loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    return losses


def evaluate(model: Seq2Seq, args: argparse.Namespace) -> dict[str, float]:
    """Greedy-decoding accuracy on held-out sequences of every length in [min_len, max_len]."""
    rng = np.random.default_rng(args.seed + 2)
    right = total = seq_right = seqs = 0
    for length in range(args.min_len, args.max_len + 1):
        src, tgt = batch(rng, args.eval_size, length)
        ok = model.generate(src) == tgt
        right, total = right + ok.sum(), total + ok.size
        seq_right, seqs = seq_right + ok.all(axis=0).sum(), seqs + ok.shape[1]
    return {"token_accuracy": float(right / total), "sequence_accuracy": float(seq_right / seqs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--min-len", type=int, default=8, help="shortest input")
    p.add_argument("--max-len", type=int, default=10, help="longest input")
    p.add_argument("--embed", type=int, default=16, help="embedding size")
    p.add_argument("--hidden", type=int, default=64, help="GRU hidden size")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--updates", type=int, default=1500, help="training steps per model")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    p.add_argument("--eval-size", type=int, default=500, help="held-out sequences per length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small settings for tests (~10 s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.quick:
        args.min_len, args.max_len, args.hidden, args.updates = 6, 6, 32, 200
        args.eval_size, args.lr = 200, 1e-2
    if not 1 <= args.min_len <= args.max_len:
        p.error("need 1 <= --min-len <= --max-len")

    t_start, cpu_start = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {}
    for name, attention in (("attention", True), ("no_attention", False)):
        tg.manual_seed(args.seed)  # both models: the same initial weights (but attention's)
        model = Seq2Seq(args.embed, args.hidden, attention)
        t0 = time.perf_counter()
        losses = train(model, args, "with attention" if attention else "without attention")
        n = max(1, len(losses) // 20)
        results[name] = {**evaluate(model, args),
                         "loss_start": float(np.mean(losses[:n])),
                         "loss_end": float(np.mean(losses[-n:])),
                         "seconds": time.perf_counter() - t0}

    lengths = (f"{args.min_len}" if args.min_len == args.max_len
               else f"{args.min_len}-{args.max_len}")
    print(f"reversing {lengths} digits; GRU({args.hidden}) encoder-decoder, "
          f"{args.updates} updates of batch {args.batch}; greedy decoding on "
          f"{args.eval_size * (args.max_len - args.min_len + 1)} held-out sequences")
    print(f"  {'decoder context':<32} {'token acc':>9} {'sequence acc':>13} "
          f"{'train loss first->last 5%':>26} {'time':>7}")
    for name, label in (("attention", "additive attention"),
                        ("no_attention", "final encoder state (baseline)")):
        r = results[name]
        print(f"  {label:<32} {r['token_accuracy']:9.3f} {r['sequence_accuracy']:13.3f} "
              f"{r['loss_start']:12.3f} -> {r['loss_end']:<10.3f} {r['seconds']:6.1f}s")
    print(f"  {'chance':<32} {1 / DIGITS:9.3f} {DIGITS ** -float(args.min_len):13.1e}")

    seconds, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    print(f"wall time {seconds:.1f}s (CPU {cpu:.1f}s)")
    ours, base = results["attention"], results["no_attention"]
    result = {
        "example": "attention",
        "task": f"reverse {lengths} digits (encoder-decoder)",
        "metric": "sequence accuracy (greedy)", "higher_is_better": True,
        "ours": ours["sequence_accuracy"], "baseline": base["sequence_accuracy"],
        "baseline_name": "no attention (final encoder state)",
        "token_accuracy": ours["token_accuracy"],
        "baseline_token_accuracy": base["token_accuracy"],
        "loss_start": ours["loss_start"], "loss_end": ours["loss_end"],
        "runs": results, "seconds": seconds, "cpu_seconds": cpu,
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
