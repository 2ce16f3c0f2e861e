"""examples/sentiment.py's model pieces: padding never changes a sentence's logit, whatever the
pooling, and the optional bag-of-words term is a linear function of the word counts."""

from __future__ import annotations


import numpy as np
import pytest

import tinygrad_rnn as tg
from test_examples_data import load_example


@pytest.mark.parametrize("pool", ["last", "mean", "max"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_does_not_change_a_sentence_logit(pool: str, cell: str) -> None:
    sentiment = load_example("sentiment")
    tg.manual_seed(0)
    model = sentiment.RNNClassifier(20, 6, 5, 0.5, 0.5, cell, bidirectional=True, pool=pool,
                                    bow_term=True).eval()
    short, long = [4, 7, 2], [3, 9, 11, 5, 6, 8, 2]
    with tg.no_grad():
        alone = model(*sentiment.pad_batch([short])).data
        padded = model(*sentiment.pad_batch([short, long])).data
    np.testing.assert_allclose(padded[0], alone[0], rtol=1e-5, atol=1e-6)


def test_bow_term_is_a_linear_function_of_word_counts() -> None:
    sentiment = load_example("sentiment")
    tg.manual_seed(0)
    model = sentiment.RNNClassifier(12, 4, 3, 0.0, 0.0, bow_term=True).eval()
    assert not model.bow.weight.data.any()  # starts at zero: the recurrent part alone
    w = np.random.default_rng(0).normal(size=12).astype(np.float32)
    w[sentiment.PAD] = 0.0
    model.bow.weight.data[:] = w[:, None]
    model.head.weight.data[:] = 0.0  # silence the recurrent part
    model.head.bias.data[:] = 0.0
    seqs = [[2, 2, 5], [7, 1, 3, 3, 3, 11]]
    with tg.no_grad():
        logits = model(*sentiment.pad_batch(seqs)).data
    np.testing.assert_allclose(logits, sentiment.bag_of_words(seqs, 12) @ w, rtol=1e-5)
