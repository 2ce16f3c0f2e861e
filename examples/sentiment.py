"""Sentiment of movie-review sentences: embedding + BiLSTM against bag-of-words logistic regression.

    python examples/sentiment.py            # about 3 minutes on one core
    python examples/sentiment.py --quick    # a few seconds, for tests

Data: 10,605 sentences from movie reviews (Pang & Lee), each with the mean rating of 20 people
in [-4, 4] (Hutto & Gilbert 2014), bundled with the package. Sentences rated exactly 0 are
dropped; rating > 0 is positive. A seeded split gives train / validation / test (70 / 10 / 20).
Words are lowercased, the most frequent training words form the vocabulary (others map to
<unk>), and a batch is padded to its longest sentence with `padding_idx`; the recurrent layer
runs over each sentence's own length (`lengths=`), so padding never reaches the prediction, also
bidirectionally, where the backward direction starts at each sentence's last word.

The default recipe, chosen on the validation split: a bidirectional LSTM whose outputs are
averaged over the sentence, dropout 0.5 on the embeddings and on that mean, Adam, the best of 8
epochs on validation (early stopping); five such models from different initialisations, their
logits averaged. That ensemble alone is printed, and then OUR RESULT, which is a hybrid: the mean
of the ensemble's logit and the fitted bag-of-words baseline's logit (`--with-bow`; turn it off
with `--no-with-bow` to score the recurrent ensemble alone). The baseline itself is unchanged.

All models are trained on the same sentences, pick their epoch by validation accuracy, and are
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
            "max_len": 48, "dropout": 0.5, "embed_dropout": 0.5, "weight_decay": 0.0,
            "cell": "lstm", "bidirectional": True, "pool": "mean", "ensemble": 5,
            "bow_term": False, "with_bow": True, "bow_epochs": 15, "train_limit": None}
QUICK = {"epochs": 3, "vocab": 2000, "embed": 32, "hidden": 32, "batch": 32, "lr": 1e-2,
         "max_len": 32, "dropout": 0.1, "embed_dropout": 0.1, "ensemble": 1, "bow_epochs": 5,
         "train_limit": 3000}  # the rest as DEFAULTS
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
class RNNClassifier(nn.Module):
    """Embedding (padding_idx) -> dropout -> LSTM or GRU over each sentence's own length ->
    sentence features -> dropout -> logit, plus (optionally) a learned bag-of-words linear term.

    Features (`pool`): "last" the final state(s) (bidirectional: the forward state after the last
    word and the backward state after the first, side by side), "mean" or "max" of the outputs
    over the sentence's own length."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, dropout: float,
                 embed_dropout: float, cell: str = "lstm", bidirectional: bool = False,
                 pool: str = "last", bow_term: bool = False) -> None:
        super().__init__()
        self.cell, self.pool, self.bow_term = cell, pool, bow_term
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.embed_drop = nn.Dropout(embed_dropout)
        self.drop = nn.Dropout(dropout)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(embed, hidden,
                                                          bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 1)
        if bow_term:
            # one weight per word, summed over the sentence: w . counts, a logistic regression
            # on word counts inside the model; zero at first, as Embedding's N(0, 1) start
            # would add noise of order sqrt(length) to every logit
            self.bow = nn.Embedding(vocab_size, 1, padding_idx=PAD)
            nn.init.zeros_(self.bow.weight)

    def forward(self, ids: np.ndarray, lengths: np.ndarray) -> tg.Tensor:
        # lengths=: each sentence's final state is the one after its own last word, and the
        # backward direction starts there, so padding never reaches the prediction
        out, h_n = self.rnn(self.embed_drop(self.embed(ids)), lengths=lengths)  # (T, B, D*H)
        if self.cell == "lstm":
            h_n = h_n[0]
        if self.pool == "mean":  # outputs past a sentence's end are zeros: sum / length
            feats = out.sum(axis=0) / tg.Tensor(lengths[:, None].astype(np.float32))
        elif self.pool == "max":  # steps past a sentence's end get -1e4, below any output
            past_end = np.arange(out.shape[0])[:, None, None] >= lengths[None, :, None]
            feats = (out + tg.Tensor(np.where(past_end, -1e4, 0.0).astype(np.float32))).max(0)
        else:
            feats = tg.concat(list(tg.unbind(h_n, 0)), axis=-1)  # (B, D*H)
        logits = self.head(self.drop(feats)).reshape(-1)  # (B,)
        if self.bow_term:
            logits = logits + self.bow(ids).sum(axis=0).reshape(-1)  # <pad> weighs 0
        return logits


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


def train_rnn(args: argparse.Namespace, seqs: dict[str, list[list[int]]],
              labels: dict[str, np.ndarray], rng: np.random.Generator, bar: Progress
              ) -> tuple[RNNClassifier, list[float], float, int]:
    """AdamW on BCE-with-logits; returns the model at its best validation epoch (early
    stopping), the per-batch losses, that validation accuracy and that epoch."""
    model = RNNClassifier(args.vocab, args.embed, args.hidden, args.dropout, args.embed_dropout,
                          args.cell, args.bidirectional, args.pool, args.bow_term)
    opt = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    lengths = np.array([len(s) for s in seqs["train"]])
    losses: list[float] = []
    best, best_acc, best_epoch, smooth = model.state_dict(), -1.0, 0, None
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
        acc = accuracy(predict_rnn(model, seqs["valid"], args.batch), labels["valid"])
        if acc > best_acc:
            best, best_acc, best_epoch = model.state_dict(), acc, epoch + 1
        bar.set_postfix(epoch=epoch + 1, loss=f"{smooth:.3f}", valid_acc=f"{acc:.3f}")
    model.load_state_dict(best)
    return model, losses, best_acc, best_epoch


def train_ensemble(args: argparse.Namespace, seqs: dict[str, list[list[int]]],
                   labels: dict[str, np.ndarray], rng: np.random.Generator
                   ) -> tuple[list[RNNClassifier], list[float], list[tuple[float, int]]]:
    """`args.ensemble` models from different initialisations and batch orders; returns them,
    the first one's per-batch losses and each one's best validation accuracy and epoch."""
    n_batches = -(-len(seqs["train"]) // args.batch)
    bar: Progress[None] = Progress(total=args.ensemble * args.epochs * n_batches, desc=args.kind,
                                   unit="batch")
    models: list[RNNClassifier] = []
    best: list[tuple[float, int]] = []
    losses: list[float] = []
    for _ in range(args.ensemble):
        model, member_losses, acc, epoch = train_rnn(args, seqs, labels, rng, bar)
        models.append(model)
        best.append((acc, epoch))
        losses = losses or member_losses
    bar.close()
    return models, losses, best


def predict_ensemble(models: list[RNNClassifier], seqs: list[list[int]], batch: int
                     ) -> np.ndarray:
    """The members' mean logit (N,)."""
    return np.mean([predict_rnn(m, seqs, batch) for m in models], axis=0)


def predict_rnn(model: RNNClassifier, seqs: list[list[int]], batch: int) -> np.ndarray:
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
    best, best_acc = model.state_dict(), -1.0
    bar: Progress[None] = Progress(total=args.bow_epochs, desc="bag of words", unit="epoch")
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
        description="Movie-review sentiment: an ensemble of embedding + BiLSTM classifiers, "
                    "alone and averaged with a bag-of-words logistic regression (a hybrid, the "
                    "default result), against that logistic regression; all written with "
                    "tinygrad_rnn.")
    d = DEFAULTS
    p.add_argument("--epochs", type=int, help=f"epochs per model; the best on validation is "
                                              f"kept (default {d['epochs']})")
    p.add_argument("--vocab", type=int, help=f"vocabulary size incl. <pad>, <unk> "
                                             f"(default {d['vocab']})")
    p.add_argument("--embed", type=int, help=f"embedding size (default {d['embed']})")
    p.add_argument("--hidden", type=int, help=f"recurrent hidden size (default {d['hidden']})")
    p.add_argument("--batch", type=int, help=f"sentences per batch (default {d['batch']})")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {d['lr']})")
    p.add_argument("--max-len", type=int, help=f"words kept per sentence (default {d['max_len']})")
    p.add_argument("--dropout", type=float, help=f"dropout on the sentence features "
                                                 f"(default {d['dropout']})")
    p.add_argument("--embed-dropout", type=float, help=f"dropout on the word embeddings "
                                                       f"(default {d['embed_dropout']})")
    p.add_argument("--weight-decay", type=float,
                   help=f"AdamW decoupled weight decay (default {d['weight_decay']})")
    p.add_argument("--cell", choices=("lstm", "gru"), help=f"recurrent layer (default "
                                                           f"{d['cell']})")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction,
                   help=f"a bidirectional recurrent layer (default {d['bidirectional']})")
    p.add_argument("--pool", choices=("last", "mean", "max"),
                   help=f"sentence features: the final state(s), or the mean or max of the "
                        f"outputs over the sentence's own length (default {d['pool']})")
    p.add_argument("--ensemble", type=int, help=f"train this many models (different "
                                                f"initialisations) and average their logits "
                                                f"(default {d['ensemble']})")
    p.add_argument("--bow-term", action=argparse.BooleanOptionalAction,
                   help=f"add a learned bag-of-words linear term to the recurrent model's "
                        f"logit (default {d['bow_term']})")
    p.add_argument("--with-bow", action=argparse.BooleanOptionalAction,
                   help=f"our result is a hybrid: the mean of the recurrent logit and the "
                        f"fitted bag-of-words baseline's logit (default {d['with_bow']})")
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
    for key, value in ({**DEFAULTS, **QUICK} if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "vocab", "embed", "hidden", "batch", "max_len", "bow_epochs",
                "ensemble"):
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

    args.kind = ("Bi" if args.bidirectional else "") + args.cell.upper()
    models, losses, member_valid = train_ensemble(args, seqs, labels, rng)
    rnn = {k: predict_ensemble(models, seqs[k], args.batch) for k in ("valid", "test")}
    rnn_valid, rnn_acc = (accuracy(rnn[k], labels[k]) for k in ("valid", "test"))
    ours_valid, ours_acc = rnn_valid, rnn_acc
    if args.with_bow:  # the recurrent model(s) and the fitted baseline, one vote each
        with tg.no_grad():
            both = {k: (rnn[k] + bow(counts[k]).data) / 2 for k in ("valid", "test")}
        ours_valid, ours_acc = (accuracy(both[k], labels[k]) for k in ("valid", "test"))

    k = max(1, min(50, len(losses) // 5))
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    seconds = time.perf_counter() - t_start
    print(f"\n{args.kind} training loss {first:.3f} -> {last:.3f} (mean of the first / last {k} "
          f"batches of the first model)")
    print("best validation accuracy (epoch) of each model: "
          + ", ".join(f"{a:.3f} ({e})" for a, e in member_valid))
    ours = f"embedding + {args.kind} {args.pool}-pool"
    if args.ensemble > 1:
        ours += f" x{args.ensemble}"
    if args.bow_term:
        ours += " + BoW term"  # a hybrid: say so next to the baseline it contains
    print(f"test accuracy on {len(labels['test']):,} sentences (higher is better):")
    print(f"  majority class                    {majority_acc:.3f}")
    print(f"  bag-of-words logistic regression  {bow_acc:.3f}   (valid {bow_valid:.3f})")
    print(f"  {ours:<32}  {rnn_acc:.3f}   (valid {rnn_valid:.3f})")
    if args.with_bow:
        print(f"  mean logit of the above two       {ours_acc:.3f}   (valid {ours_valid:.3f})   "
              f"<- ours: recurrent + bag-of-words")
    print(f"done in {seconds:.1f} s")
    result = {
        "program": "sentiment", "task": "movie-review sentence sentiment (binary)",
        "metric": "test_accuracy", "higher_is_better": True, "ours": round(ours_acc, 4),
        "baselines": {"majority": round(majority_acc, 4), "bag_of_words": round(bow_acc, 4)},
        "loss_first": round(first, 4), "loss_last": round(last, 4),
        "seconds": round(seconds, 1), "quick": args.quick,
        "valid": {"bag_of_words": round(bow_valid, 4), "ours": round(ours_valid, 4),
                  "recurrent_alone": round(rnn_valid, 4)},
        "recurrent_alone": round(rnn_acc, 4),
        "config": {k: getattr(args, k) for k in (*DEFAULTS, "seed") if k != "train_limit"},
    }
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
