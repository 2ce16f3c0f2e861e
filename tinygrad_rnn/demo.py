"""The main demo: a character-level LSTM language model of *Moby Dick*, trained from scratch.

    python -m tinygrad_rnn.demo            # ~2-3 minutes on 2 cores
    python -m tinygrad_rnn.demo --quick    # a few seconds, for tests

The book (bundled with the package) is split at a chapter boundary: the last ~7% (chapters 129-135)
is held out. Training uses truncated backpropagation through time over `--batch` parallel streams
of the training text: each update runs `--seq-len` characters from the detached state where the
previous update stopped. The held-out chapters are scored in bits per character against a unigram
and a bigram model of the training text (add-one smoothing), then the model writes a sample.
The last line printed is `RESULT {json}` for scripts and tests.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Iterable

import numpy as np

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import datasets, nn, optim
from tinygrad_rnn.progress import Progress, limit_blas_threads, print_result

DEFAULTS = {"steps": 800, "hidden": 256, "seq_len": 64, "batch": 32, "embed": 48, "lr": 3e-3}
QUICK = {"steps": 60, "hidden": 64, "seq_len": 32, "batch": 16, "embed": 16, "lr": 1e-2}
VALID_FRACTION = 0.08  # hold out from the first chapter that starts in the last 8% of the book
EVAL_STREAMS = 64  # the held-out text is scored as this many parallel streams


# ----------------------------------------------------------------------------- data
def split_at_chapter(text: str, fraction: float) -> tuple[str, str]:
    """(train, valid): valid starts at the first "CHAPTER" heading in the last `fraction`."""
    start = text.find("\nCHAPTER ", int(len(text) * (1 - fraction)))
    if start < 0:
        raise ValueError("split_at_chapter: no chapter heading in the held-out part")
    return text[:start + 1], text[start + 1:]


class CharVocab:
    """Characters <-> integer ids (the sorted characters of the book)."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def streams(ids: np.ndarray, batch: int) -> np.ndarray:
    """Cut a token sequence into `batch` contiguous streams: (len // batch, batch), time-major."""
    n = len(ids) // batch
    return ids[:n * batch].reshape(batch, n).T


# ----------------------------------------------------------------------------- baselines
def unigram_bits(train: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Bits per character of add-one-smoothed character frequencies (of `train`) on `targets`."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[targets].mean())


def bigram_bits(train: np.ndarray, contexts: np.ndarray, targets: np.ndarray,
                vocab_size: int) -> float:
    """Bits per character of p(c | previous c), add-one smoothed, estimated on `train`."""
    counts = np.ones((vocab_size, vocab_size))
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    logp = np.log2(counts / counts.sum(axis=1, keepdims=True))
    return float(-logp[contexts, targets].mean())


# ----------------------------------------------------------------------------- model
class CharLSTM(nn.Module):
    """Embedding -> LSTM -> Linear: next-character logits for (T, B) character ids."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, compile: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, compile=compile)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: np.ndarray, state: Any = None) -> tuple[tg.Tensor, Any]:
        h, state = self.lstm(self.embed(ids), state)  # (T, B, H)
        return self.head(h), state  # (T, B, V)


def evaluate_bits(model: CharLSTM, inputs: np.ndarray, targets: np.ndarray, chunk: int = 256
                  ) -> float:
    """Mean bits per character of `targets` (T, B) given `inputs` (T, B), from a zero state."""
    total, state = 0.0, None
    with tg.no_grad():
        for lo in range(0, len(inputs), chunk):
            logits, state = model(inputs[lo:lo + chunk], state)
            y = targets[lo:lo + chunk]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                   reduction="sum")
            total += loss.item()
    return total / targets.size / math.log(2)


def sample(model: CharLSTM, vocab: CharVocab, prime: str, n: int, temperature: float,
           rng: np.random.Generator) -> str:
    """Continue `prime` by n characters drawn from softmax(logits / temperature)."""
    out = []
    with tg.no_grad():
        logits, state = model(vocab.encode(prime)[:, None])
        for _ in range(n):
            z = logits.data[-1, 0].astype(np.float64) / temperature
            p = np.exp(z - z.max())
            c = int(rng.choice(len(p), p=p / p.sum()))
            out.append(c)
            logits, state = model(np.array([[c]]), state)
    return prime + vocab.decode(out)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tinygrad_rnn.demo",
        description="Train a character-level LSTM on Moby Dick (bundled) with truncated BPTT, "
                    "score held-out chapters in bits per character against unigram and bigram "
                    "baselines, and print a sample.")
    d = DEFAULTS
    p.add_argument("--steps", type=int, help=f"parameter updates (default {d['steps']})")
    p.add_argument("--hidden", type=int, help=f"LSTM hidden size (default {d['hidden']})")
    p.add_argument("--seq-len", type=int,
                   help=f"characters per truncated-BPTT window (default {d['seq_len']})")
    p.add_argument("--batch", type=int, help=f"parallel streams (default {d['batch']})")
    p.add_argument("--embed", type=int, help=f"embedding size (default {d['embed']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--sample-chars", type=int, default=400, help="length of the sample")
    p.add_argument("--no-compile", action="store_true",
                   help="run the LSTM on the per-op tape instead of as a compiled scan (slower; "
                        "for comparison)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads, applied if threadpoolctl is installed; 0 leaves numpy's "
                        "default (default 1: fastest for these small matrices)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (a few seconds) for tests: " +
                        ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "hidden", "seq_len", "batch", "embed"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit_blas_threads(args.blas_threads)
    t_start = time.perf_counter()
    tg.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    text = datasets.moby_dick()
    train_text, valid_text = split_at_chapter(text, VALID_FRACTION)
    vocab = CharVocab(text)
    train_ids, valid_ids = vocab.encode(train_text), vocab.encode(valid_text)
    print(f"Moby Dick: {len(text):,} characters, {len(vocab)} distinct; training on "
          f"{len(train_ids):,}, validating on {len(valid_ids):,} "
          f"(from {valid_text[:valid_text.index(chr(10))]!r} to the end)")

    # validation: EVAL_STREAMS contiguous pieces; every program scores the same positions
    per = (len(valid_ids) - 1) // EVAL_STREAMS
    v_in = valid_ids[:per * EVAL_STREAMS].reshape(EVAL_STREAMS, per).T
    v_out = valid_ids[1:per * EVAL_STREAMS + 1].reshape(EVAL_STREAMS, per).T
    uni = unigram_bits(train_ids, v_out.ravel(), len(vocab))
    bi = bigram_bits(train_ids, v_in.ravel(), v_out.ravel(), len(vocab))

    model = CharLSTM(len(vocab), args.embed, args.hidden, compile=not args.no_compile)
    n_params = sum(p.size for p in model.parameters())
    opt = optim.Adam(model.parameters(), lr=args.lr)
    data = streams(train_ids, args.batch)  # (L, B)
    windows = (len(data) - 1) // args.seq_len
    if windows < 1:
        raise SystemExit(f"demo: --batch {args.batch} streams of the training text are shorter "
                         f"than --seq-len {args.seq_len}; use fewer streams or a shorter window")
    print(f"model: Embedding({len(vocab)}, {args.embed}) -> LSTM({args.embed}, {args.hidden}) "
          f"-> Linear({args.hidden}, {len(vocab)}), {n_params:,} parameters; {args.steps} "
          f"updates of {args.batch} streams x {args.seq_len} characters "
          f"({args.steps * args.batch * args.seq_len / len(train_ids):.2f} epochs)")

    losses: list[float] = []
    state, smooth = None, None
    bar = Progress(range(args.steps), desc="train", unit="step")
    for step in bar:  # closes the bar at the end
        w = step % windows
        if w == 0:
            state = None  # a new pass over the text starts from a zero state
        lo = w * args.seq_len
        x, y = data[lo:lo + args.seq_len], data[lo + 1:lo + args.seq_len + 1]
        # learning rate: constant, then linear decay to 10% over the last 40% of the updates
        frac = step / args.steps
        opt.lr = args.lr * (1.0 if frac < 0.6 else 1.0 - 0.9 * (frac - 0.6) / 0.4)
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state = tg.detach(state)  # truncated BPTT: keep the state, cut its history
        losses.append(loss.item())
        smooth = losses[-1] if smooth is None else 0.95 * smooth + 0.05 * losses[-1]
        bar.set_postfix(loss=f"{smooth:.3f}", bits_per_char=f"{smooth / math.log(2):.2f}")
    train_seconds = time.perf_counter() - t_start

    ours = evaluate_bits(model, v_in, v_out)
    k = max(1, min(20, args.steps // 5))
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    print(f"\ntraining loss {first:.3f} -> {last:.3f} nats/char (mean of the first / last "
          f"{k} updates)")
    print(f"held-out chapters, {v_out.size:,} characters, bits per character (lower is better):")
    print(f"  unigram (add-one)   {uni:6.3f}")
    print(f"  bigram  (add-one)   {bi:6.3f}")
    print(f"  LSTM (this run)     {ours:6.3f}   "
          f"{'beats' if ours < bi else 'does not beat'} the bigram baseline")

    prime = "CHAPTER 136. "
    text_out = sample(model, vocab, prime, args.sample_chars, args.temperature, rng)
    print(f"\nsample (temperature {args.temperature}, seed {args.seed}):\n{text_out}\n")

    seconds = time.perf_counter() - t_start
    chars_per_s = args.steps * args.batch * args.seq_len / train_seconds
    print(f"done in {seconds:.1f} s ({train_seconds:.1f} s training, {chars_per_s:,.0f} "
          f"characters per second)")
    result = {
        "program": "demo", "task": "character-level language model, Moby Dick",
        "metric": "valid_bits_per_char", "higher_is_better": False, "ours": round(ours, 4),
        "baselines": {"unigram": round(uni, 4), "bigram": round(bi, 4)},
        "loss_first": round(first, 4), "loss_last": round(last, 4),
        "seconds": round(seconds, 1), "chars_per_second": round(chars_per_s),
        "quick": args.quick,
        "config": {k: getattr(args, k) for k in ("steps", "hidden", "seq_len", "batch", "embed",
                                                 "lr", "seed")},
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    # the book's curly quotes and dashes must not crash a terminal that cannot show them
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    sys.exit(main())
