"""Sentiment of movie-review sentences: embedding + LSTM against bag-of-words logistic regression.

    python examples/sentiment.py            # about a minute on 2 cores
    python examples/sentiment.py --quick    # a few seconds, for tests

Data: 10,605 sentences from movie reviews (Pang & Lee), each with the mean rating of 20 people
in [-4, 4] (Hutto & Gilbert 2014), bundled with the package. Sentences rated exactly 0 are
dropped; rating > 0 is positive. A seeded split gives train / validation / test (70 / 10 / 20).
Words are lowercased, the most frequent training words form the vocabulary (others map to
<unk>), and a batch is padded to its longest sentence with `padding_idx`; the LSTM runs over each
sentence's own length (`lengths=`), so padding never reaches the prediction, also with
`--bidirectional`, whose backward direction starts at each sentence's last word.

Both models are trained on the same sentences, pick their epoch by validation accuracy, and are
scored once on the test set. The last line printed is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from typing import Iterable, Sequence

import numpy as np

import tinygrad_rnn as tg
import tinygrad_rnn.nn.functional as F
from tinygrad_rnn import datasets, nn, optim
from tinygrad_rnn.progress import Progress, limit_blas_threads, print_result

PAD, UNK = 0, 1
DEFAULTS = {"epochs": 8, "vocab": 6000, "embed": 48, "hidden": 64, "batch": 32, "lr": 2e-3,
            "max_len": 48, "dropout": 0.5, "bow_epochs": 15, "train_limit": None}
QUICK = {"epochs": 3, "vocab": 2000, "embed": 32, "hidden": 32, "batch": 32, "lr": 1e-2,
         "max_len": 32, "dropout": 0.1, "bow_epochs": 5, "train_limit": 3000}
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


# ----------------------------------------------------------------------------- data
def tokenize(text: str) -> list[str]:
    """Lowercase words, keeping contractions ("it's", "don't") whole."""
    return WORD.findall(text.lower())


def build_vocab(sentences: Iterable[list[str]], size: int) -> dict[str, int]:
    """The `size` - 2 most frequent words -> ids 2.., after <pad> = 0 and <unk> = 1."""
    counts = collections.Counter(w for s in sentences for w in s)
    words = [w for w, _ in counts.most_common(max(0, size - 2))]
    return {w: i for i, w in enumerate(words, start=2)}


def encode(tokens: list[str], vocab: dict[str, int], max_len: int) -> list[int]:
    ids = [vocab.get(w, UNK) for w in tokens[:max_len]]
    return ids or [UNK]  # an empty sentence still has one step


def pad_batch(seqs: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Time-major ids (T, B) padded with PAD, and the lengths (B,)."""
    lengths = np.array([len(s) for s in seqs])
    ids = np.full((lengths.max(), len(seqs)), PAD, dtype=np.int64)
    for b, s in enumerate(seqs):
        ids[:len(s), b] = s
    return ids, lengths


def length_batches(lengths: np.ndarray, batch: int, rng: np.random.Generator | None
                   ) -> list[np.ndarray]:
    """Index batches of similar lengths (little padding). With `rng`: shuffled, then sorted by
    length within pools of 50 batches, and the batch order shuffled; without: sorted."""
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch] for i in range(0, len(order), batch)]
    order = rng.permutation(len(lengths))
    pool = 50 * batch
    out = []
    for i in range(0, len(order), pool):
        part = order[i:i + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[j:j + batch] for j in range(0, len(part), batch)]
    rng.shuffle(out)
    return out


def bag_of_words(seqs: Sequence[list[int]], vocab_size: int) -> np.ndarray:
    """(N, V) float32 word counts (<pad> and <unk> columns stay, the model can learn them)."""
    x = np.zeros((len(seqs), vocab_size), dtype=np.float32)
    for i, s in enumerate(seqs):
        np.add.at(x[i], s, 1.0)
    return x


# ----------------------------------------------------------------------------- models
class LSTMClassifier(nn.Module):
    """Embedding (padding_idx) -> dropout -> LSTM over each sentence's own length -> final
    state(s) -> logit. Bidirectional: the forward state after the last word and the backward
    state after the first, side by side."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, dropout: float,
                 bidirectional: bool = False, pool: str = "last") -> None:
        super().__init__()
        self.pool = pool
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed, hidden, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 1)

    def forward(self, ids: np.ndarray, lengths: np.ndarray) -> tg.Tensor:
        # lengths=: each sentence's final state is the one after its own last word, and the
        # backward direction starts there, so padding never reaches the prediction
        out, (h_n, _) = self.lstm(self.drop(self.embed(ids)), lengths=lengths)  # (T, B, D*H)
        if self.pool == "mean":  # outputs past a sentence's end are zeros: sum / length
            feats = out.sum(axis=0) / tg.Tensor(lengths[:, None].astype(np.float32))
        else:
            feats = tg.concat(list(tg.unbind(h_n, 0)), axis=-1)  # (B, D*H)
        return self.head(self.drop(feats)).reshape(-1)  # (B,) logits


class BagOfWordsLogistic(nn.Module):
    """Logistic regression on word counts: logit = w . counts + b."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vocab_size, 1)

    def forward(self, counts: np.ndarray) -> tg.Tensor:
        return self.linear(counts).reshape(-1)


# ----------------------------------------------------------------------------- training
def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(((logits > 0) == (labels > 0.5)).mean())


def train_lstm(args: argparse.Namespace, seqs: dict[str, list[list[int]]],
               labels: dict[str, np.ndarray], rng: np.random.Generator
               ) -> tuple[LSTMClassifier, list[float], float]:
    """Adam on BCE-with-logits; returns the model at its best validation epoch, the per-batch
    losses and that validation accuracy."""
    model = LSTMClassifier(args.vocab, args.embed, args.hidden, args.dropout, args.bidirectional,
                           args.pool)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    lengths = np.array([len(s) for s in seqs["train"]])
    n_batches = -(-len(lengths) // args.batch)
    bar = Progress(total=args.epochs * n_batches, desc="LSTM", unit="batch")
    losses: list[float] = []
    best, best_acc, smooth = None, -1.0, None
    for epoch in range(args.epochs):
        model.train()
        for idx in length_batches(lengths, args.batch, rng):
            ids, lens = pad_batch([seqs["train"][i] for i in idx])
            loss = F.binary_cross_entropy_with_logits(model(ids, lens), labels["train"][idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss.item())
            smooth = losses[-1] if smooth is None else 0.95 * smooth + 0.05 * losses[-1]
            bar.update(1, epoch=epoch + 1, loss=f"{smooth:.3f}")
        acc = accuracy(predict_lstm(model, seqs["valid"], args.batch), labels["valid"])
        if acc > best_acc:
            best, best_acc = model.state_dict(), acc
        bar.set_postfix(epoch=epoch + 1, loss=f"{smooth:.3f}", valid_acc=f"{acc:.3f}")
    bar.close()
    model.load_state_dict(best)
    return model, losses, best_acc


def predict_lstm(model: LSTMClassifier, seqs: list[list[int]], batch: int) -> np.ndarray:
    """Logits (N,) in the order of `seqs`."""
    model.eval()
    out = np.empty(len(seqs), dtype=np.float64)
    lengths = np.array([len(s) for s in seqs])
    with tg.no_grad():
        for idx in length_batches(lengths, 4 * batch, None):
            ids, lens = pad_batch([seqs[i] for i in idx])
            out[idx] = model(ids, lens).data
    return out


def train_bag_of_words(args: argparse.Namespace, counts: dict[str, np.ndarray],
                       labels: dict[str, np.ndarray], rng: np.random.Generator
                       ) -> tuple[BagOfWordsLogistic, list[float], float]:
    """Logistic regression with the same library: Adam, L2 penalty, best validation epoch."""
    model = BagOfWordsLogistic(args.vocab)
    opt = optim.Adam(model.parameters(), lr=args.bow_lr, weight_decay=args.bow_l2)
    n = len(labels["train"])
    losses: list[float] = []
    best, best_acc = None, -1.0
    bar = Progress(total=args.bow_epochs, desc="bag of words", unit="epoch")
    for epoch in range(args.bow_epochs):
        for idx in np.array_split(rng.permutation(n), -(-n // 64)):
            loss = F.binary_cross_entropy_with_logits(model(counts["train"][idx]),
                                                      labels["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with tg.no_grad():
            acc = accuracy(model(counts["valid"]).data, labels["valid"])
        if acc > best_acc:
            best, best_acc = model.state_dict(), acc
        bar.update(1, loss=f"{np.mean(losses[-50:]):.3f}", valid_acc=f"{acc:.3f}")
    bar.close()
    model.load_state_dict(best)
    return model, losses, best_acc


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Movie-review sentiment: embedding + LSTM classifier against a bag-of-words "
                    "logistic regression, both written with tinygrad_rnn.")
    d = DEFAULTS
    p.add_argument("--epochs", type=int, help=f"LSTM epochs (default {d['epochs']})")
    p.add_argument("--vocab", type=int, help=f"vocabulary size incl. <pad>, <unk> "
                                             f"(default {d['vocab']})")
    p.add_argument("--embed", type=int, help=f"embedding size (default {d['embed']})")
    p.add_argument("--hidden", type=int, help=f"LSTM hidden size (default {d['hidden']})")
    p.add_argument("--batch", type=int, help=f"sentences per batch (default {d['batch']})")
    p.add_argument("--lr", type=float, help=f"LSTM Adam learning rate (default {d['lr']})")
    p.add_argument("--max-len", type=int, help=f"words kept per sentence (default {d['max_len']})")
    p.add_argument("--dropout", type=float, help=f"dropout on embeddings and the last output "
                                                 f"(default {d['dropout']})")
    p.add_argument("--bidirectional", action="store_true",
                   help="a bidirectional LSTM (default: one direction)")
    p.add_argument("--pool", choices=("last", "mean"), default="last",
                   help="sentence features: the final state(s) (default), or the mean of the "
                        "outputs over the sentence's own length")
    p.add_argument("--bow-epochs", type=int,
                   help=f"bag-of-words epochs (default {d['bow_epochs']})")
    p.add_argument("--bow-lr", type=float, default=3e-3, help="bag-of-words Adam learning rate")
    p.add_argument("--bow-l2", type=float, default=1e-4, help="bag-of-words L2 (Adam "
                                                              "weight_decay)")
    p.add_argument("--train-limit", type=int,
                   help="use only this many training sentences (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads, applied if threadpoolctl is installed; 0 leaves numpy's "
                        "default (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run for tests: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "vocab", "embed", "hidden", "batch", "max_len", "bow_epochs"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer")
    if args.vocab < 3:
        p.error("--vocab must be at least 3 (<pad>, <unk> and one word)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit_blas_threads(args.blas_threads)
    t_start = time.perf_counter()
    tg.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    reviews = [(r, t) for r, t in datasets.movie_reviews() if r != 0]
    order = np.random.default_rng(1234).permutation(len(reviews))  # one fixed split for all runs
    n_test, n_valid = len(reviews) // 5, len(reviews) // 10
    parts = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid],
             "train": order[n_test + n_valid:]}
    if args.train_limit is not None:
        parts["train"] = parts["train"][:args.train_limit]
    tokens = {k: [tokenize(reviews[i][1]) for i in v] for k, v in parts.items()}
    labels = {k: np.array([float(reviews[i][0] > 0) for i in v], dtype=np.float32)
              for k, v in parts.items()}
    vocab = build_vocab(tokens["train"], args.vocab)
    args.vocab = len(vocab) + 2
    seqs = {k: [encode(s, vocab, args.max_len) for s in v] for k, v in tokens.items()}
    unk = np.mean([i == UNK for s in seqs["test"] for i in s])
    print(f"movie reviews: {len(reviews):,} rated sentences (zeros dropped); train "
          f"{len(seqs['train']):,} / valid {len(seqs['valid']):,} / test {len(seqs['test']):,}; "
          f"vocabulary {args.vocab:,} words ({unk:.1%} of test words are <unk>)")

    majority = float(labels["train"].mean() > 0.5)
    majority_acc = float((labels["test"] == majority).mean())

    counts = {k: bag_of_words(v, args.vocab) for k, v in seqs.items()}
    bow, _, bow_valid = train_bag_of_words(args, counts, labels, rng)
    with tg.no_grad():
        bow_acc = accuracy(bow(counts["test"]).data, labels["test"])

    model, losses, lstm_valid = train_lstm(args, seqs, labels, rng)
    lstm_acc = accuracy(predict_lstm(model, seqs["test"], args.batch), labels["test"])

    k = max(1, min(50, len(losses) // 5))
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    seconds = time.perf_counter() - t_start
    print(f"\nLSTM training loss {first:.3f} -> {last:.3f} (mean of the first / last {k} batches)")
    print(f"test accuracy on {len(labels['test']):,} sentences (higher is better):")
    print(f"  majority class                 {majority_acc:.3f}")
    print(f"  bag-of-words logistic regr.    {bow_acc:.3f}   (valid {bow_valid:.3f})")
    kind = "BiLSTM" if args.bidirectional else "LSTM"
    print(f"  embedding + {kind:<6} (this run)  {lstm_acc:.3f}   (valid {lstm_valid:.3f})")
    print(f"done in {seconds:.1f} s")
    result = {
        "program": "sentiment", "task": "movie-review sentence sentiment (binary)",
        "metric": "test_accuracy", "higher_is_better": True, "ours": round(lstm_acc, 4),
        "baselines": {"majority": round(majority_acc, 4), "bag_of_words": round(bow_acc, 4)},
        "loss_first": round(first, 4), "loss_last": round(last, 4),
        "seconds": round(seconds, 1), "quick": args.quick,
        "config": {k: getattr(args, k) for k in ("epochs", "vocab", "embed", "hidden", "batch",
                                                 "lr", "max_len", "dropout", "bidirectional",
                                                 "pool", "seed")},
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
