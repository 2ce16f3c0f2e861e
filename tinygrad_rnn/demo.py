"""The main demo: a character-level LSTM language model of *Moby Dick*, trained from scratch.

    python -m tinygrad_rnn.demo                # about 4.6 minutes on 2 cores
    python -m tinygrad_rnn.demo --minutes 1    # a shorter budget: the schedule follows it
    python -m tinygrad_rnn.demo --quick        # a few seconds, for tests

The book (bundled with the package) is split at a chapter boundary: the last ~7% (chapters 129-135)
is held out. Training uses truncated backpropagation through time over `--batch` parallel streams
of the training text: each update runs `--seq-len` characters from the detached state where the
previous update stopped. Training runs for `--minutes` of wall-clock time (or `--steps` updates),
the learning rate following the elapsed fraction of that budget, and part of the held-out text is
scored along the way to watch for overfitting. At the end the held-out chapters are scored in bits
per character against a unigram and a bigram model of the training text (add-one smoothing), the
curves go to a PNG (with matplotlib), and the model writes a sample, of which the share of words
that occur in the training text is printed. The last line printed is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from typing import Any, Iterable

import numpy as np

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import datasets, nn, optim
from tinygrad_rnn.progress import Progress, limit_blas_threads, print_result

DEFAULTS = {"minutes": 4.5, "steps": None, "hidden": 384, "layers": 1, "head_hidden": 768,
            "seq_len": 32, "batch": 16, "embed": 48, "lr": 4e-3, "clip": 5.0, "blas_threads": 2}
QUICK = {"minutes": None, "steps": 60, "hidden": 64, "layers": 1, "head_hidden": 64, "seq_len": 32,
         "batch": 16, "embed": 16, "lr": 1e-2, "clip": 5.0, "blas_threads": 1}
CHECKS = 5  # held-out scores during training (on a quarter of the held-out text)
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


def held_out_streams(ids: np.ndarray, count: int = EVAL_STREAMS) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each ((len(ids) - 1) // count, count), time-major: `ids` cut into
    `count` contiguous streams, each target the character after its input."""
    per = (len(ids) - 1) // count
    return (ids[:per * count].reshape(count, per).T,
            ids[1:per * count + 1].reshape(count, per).T)


def check_rows(inputs: np.ndarray) -> int:
    """How many characters of every held-out stream a check during training scores: the first
    quarter (the full text is scored at the end)."""
    return max(1, len(inputs) // 4)


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
    """Embedding -> LSTM -> [Linear -> ReLU] -> Linear: next-character logits for (T, B)
    character ids. The ReLU layer (width `head_hidden`; 0 for none) reads every time step at
    once, one large product per update, so it adds capacity for a fraction of the cost of a wider
    LSTM, whose products run once per step."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int = 1,
                 head_hidden: int = 0, compile: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, compile=compile)
        self.proj = nn.Linear(hidden, head_hidden) if head_hidden else None
        self.head = nn.Linear(head_hidden or hidden, vocab_size)

    def forward(self, ids: np.ndarray, state: Any = None) -> tuple[tg.Tensor, Any]:
        h, state = self.lstm(self.embed(ids), state)  # (T, B, H)
        if self.proj is not None:
            h = self.proj(h).relu()  # (T, B, head_hidden)
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


def words(text: str) -> list[str]:
    """The words of `text`: runs of letters, lower-cased."""
    return re.findall(r"[a-z]+", text.lower())


def known_fraction(sample_text: str, vocabulary: set[str]) -> tuple[int, int]:
    """(how many of the sample's words are in `vocabulary`, how many words it has)."""
    ws = words(sample_text)
    return sum(w in vocabulary for w in ws), len(ws)


def learning_rate(base: float, frac: float) -> float:
    """The schedule at `frac` (0..1) of the budget: a short warm-up, constant, then a linear
    decay to 5% over the last 40%."""
    if frac < 0.02:
        return base * (0.1 + 0.9 * frac / 0.02)
    return base * (1.0 if frac < 0.6 else max(0.05, 1.0 - 0.95 * (frac - 0.6) / 0.4))


def plot_curves(path: str, train: list[tuple[float, float]], valid: list[tuple[float, float]],
                baseline: float) -> str | None:
    """Training and held-out bits/char over elapsed seconds, as a PNG at `path` (None, with a
    note, if matplotlib is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path} "
              f'(pip install "tinygrad_rnn[plot]")')
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="training (smoothed)", lw=1)
    ax.plot(*zip(*valid), "o-", label="held-out chapters")
    ax.axhline(baseline, color="grey", ls="--", lw=1, label="bigram baseline")
    ax.set(xlabel="seconds", ylabel="bits per character", ylim=(1.5, 4.8),
           title="Character LSTM on Moby Dick")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tinygrad_rnn.demo",
        description="Train a character-level LSTM on Moby Dick (bundled) with truncated BPTT, "
                    "score held-out chapters in bits per character against unigram and bigram "
                    "baselines, and print a sample.")
    d = DEFAULTS
    p.add_argument("--minutes", type=float,
                   help=f"training time budget in minutes; the learning-rate schedule follows the "
                        f"elapsed fraction of it (default {d['minutes']})")
    p.add_argument("--steps", type=int,
                   help="train for this many updates instead (the schedule follows them)")
    p.add_argument("--hidden", type=int, help=f"LSTM hidden size (default {d['hidden']})")
    p.add_argument("--layers", type=int, help=f"stacked LSTM layers (default {d['layers']})")
    p.add_argument("--head-hidden", type=int,
                   help=f"width of the ReLU layer between the LSTM and the output layer; 0 for "
                        f"none (default {d['head_hidden']})")
    p.add_argument("--seq-len", type=int,
                   help=f"characters per truncated-BPTT window (default {d['seq_len']})")
    p.add_argument("--batch", type=int, help=f"parallel streams (default {d['batch']})")
    p.add_argument("--embed", type=int, help=f"embedding size (default {d['embed']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--clip", type=float,
                   help=f"scale gradients down to this total norm when above it; 0 for no "
                        f"clipping (default {d['clip']})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--sample-chars", type=int, default=400, help="length of the sample")
    p.add_argument("--no-compile", action="store_true",
                   help="run the LSTM on the per-op tape instead of as a compiled scan (slower; "
                        "for comparison)")
    p.add_argument("--blas-threads", type=int,
                   help=f"BLAS threads, applied if threadpoolctl is installed; 0 leaves numpy's "
                        f"default (default {d['blas_threads']})")
    p.add_argument("--plot", default="demo_training.png",
                   help="where to write the PNG of the curves ('' for none)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (a few seconds) for tests: " +
                        ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.steps is not None and args.minutes is not None:
        p.error("give --minutes or --steps, not both")
    budget_given = args.steps is not None or args.minutes is not None
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None and not (budget_given and key in ("steps", "minutes")):
            setattr(args, key, value)
    for key in ("hidden", "layers", "seq_len", "batch", "embed"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer")
    if args.head_hidden < 0:
        p.error("--head-hidden must be >= 0")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be a positive integer")
    if args.minutes is not None and not args.minutes > 0:
        p.error("--minutes must be positive")
    if not args.clip >= 0:
        p.error("--clip must be >= 0")
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
    v_in, v_out = held_out_streams(valid_ids)
    uni = unigram_bits(train_ids, v_out.ravel(), len(vocab))
    bi = bigram_bits(train_ids, v_in.ravel(), v_out.ravel(), len(vocab))

    model = CharLSTM(len(vocab), args.embed, args.hidden, args.layers, args.head_hidden,
                     compile=not args.no_compile)
    n_params = sum(p.size for p in model.parameters())
    opt = optim.Adam(model.parameters(), lr=args.lr)
    data = streams(train_ids, args.batch)  # (L, B)
    windows = (len(data) - 1) // args.seq_len
    if windows < 1:
        raise SystemExit(f"demo: --batch {args.batch} streams of the training text are shorter "
                         f"than --seq-len {args.seq_len}; use fewer streams or a shorter window")
    budget = (f"{args.minutes:g} minutes" if args.minutes is not None else
              f"{args.steps} updates")
    relu = f"Linear({args.hidden}, {args.head_hidden}) -> ReLU -> " if args.head_hidden else ""
    print(f"model: Embedding({len(vocab)}, {args.embed}) -> LSTM({args.embed}, {args.hidden}"
          f"{f', {args.layers} layers' if args.layers > 1 else ''}) -> {relu}"
          f"Linear({args.head_hidden or args.hidden}, {len(vocab)}), {n_params:,} parameters; "
          f"training for {budget} on {args.batch} streams x {args.seq_len} characters per update")

    part = check_rows(v_in)  # batches of 64 streams are cheap
    checks_at = [(k + 1) / (CHECKS + 1) for k in range(CHECKS)]
    train_curve: list[tuple[float, float]] = []
    valid_curve: list[tuple[float, float]] = []
    losses: list[float] = []
    state, smooth, step, check_seconds = None, None, 0, 0.0
    seconds = 60.0 * args.minutes if args.minutes is not None else None
    bar: Progress[Any] = Progress(total=int(seconds) if seconds else args.steps, desc="train",
                                  unit="s" if seconds else "step")
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        frac = elapsed / seconds if seconds else step / args.steps
        if frac >= 1.0:
            break
        if checks_at and frac >= checks_at[0]:
            checks_at.pop(0)
            valid_curve.append((elapsed, evaluate_bits(model, v_in[:part], v_out[:part])))
            check_seconds += time.perf_counter() - t0 - elapsed
        w = step % windows
        if w == 0:
            state = None  # a new pass over the text starts from a zero state
        lo = w * args.seq_len
        x, y = data[lo:lo + args.seq_len], data[lo + 1:lo + args.seq_len + 1]
        opt.lr = learning_rate(args.lr, frac)
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if args.clip:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        state = tg.detach(state)  # truncated BPTT: keep the state, cut its history
        losses.append(loss.item())
        smooth = losses[-1] if smooth is None else 0.95 * smooth + 0.05 * losses[-1]
        step += 1
        if step % 10 == 0:
            train_curve.append((time.perf_counter() - t0, smooth / math.log(2)))
        bar.update((int(time.perf_counter() - t0) - bar.n) if seconds else 1,
                   loss=f"{smooth:.3f}", bits_per_char=f"{smooth / math.log(2):.2f}")
    bar.close()
    train_seconds = time.perf_counter() - t0

    ours = evaluate_bits(model, v_in, v_out)
    valid_curve.append((train_seconds, ours))
    k = max(1, min(20, step // 5))
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    print(f"\n{step} updates ({step * args.batch * args.seq_len / len(train_ids):.2f} epochs); "
          f"training loss {first:.3f} -> {last:.3f} nats/char (mean of the first / last "
          f"{k} updates)")
    print("held-out bits/char during training (a quarter of the chapters): " +
          ", ".join(f"{b:.3f} at {t:.0f} s" for t, b in valid_curve[:-1]))
    print(f"held-out chapters, {v_out.size:,} characters, bits per character (lower is better):")
    print(f"  unigram (add-one)   {uni:6.3f}")
    print(f"  bigram  (add-one)   {bi:6.3f}")
    print(f"  LSTM (this run)     {ours:6.3f}   "
          f"{'beats' if ours < bi else 'does not beat'} the bigram baseline")
    plot = plot_curves(args.plot, train_curve or [(train_seconds, last / math.log(2))],
                       valid_curve, bi) if args.plot else None
    if plot:
        print(f"curves: {plot}")

    prime = "CHAPTER 136. "
    text_out = sample(model, vocab, prime, args.sample_chars, args.temperature, rng)
    known, n_words = known_fraction(text_out[len(prime):], set(words(train_text)))
    print(f"\nsample (temperature {args.temperature}, seed {args.seed}):\n{text_out}\n")
    print(f"{known} of its {n_words} words ({known / max(n_words, 1):.0%}) occur in the training "
          f"text")

    total_seconds = time.perf_counter() - t_start
    chars_per_s = step * args.batch * args.seq_len / (train_seconds - check_seconds)
    print(f"done in {total_seconds:.1f} s ({train_seconds:.1f} s training, of which "
          f"{check_seconds:.1f} s scoring held-out text; {chars_per_s:,.0f} characters per "
          f"second of training)")
    result = {
        "program": "demo", "task": "character-level language model, Moby Dick",
        "metric": "valid_bits_per_char", "higher_is_better": False, "ours": round(ours, 4),
        "baselines": {"unigram": round(uni, 4), "bigram": round(bi, 4)},
        "loss_first": round(first, 4), "loss_last": round(last, 4),
        "valid_during_training": [[round(t, 1), round(b, 4)] for t, b in valid_curve],
        "sample_known_words": round(known / max(n_words, 1), 4), "plot": plot,
        "updates": step, "seconds": round(total_seconds, 1), "chars_per_second": round(chars_per_s),
        "quick": args.quick,
        "config": {k: getattr(args, k) for k in ("minutes", "steps", "hidden", "layers",
                                                 "head_hidden", "seq_len", "batch", "embed", "lr",
                                                 "clip", "seed", "blas_threads")},
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    # the book's curly quotes and dashes must not crash a terminal that cannot show them
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    sys.exit(main())
