"""The samples of the memorize task (its family, over a pretrained encoder: rmt.families.memorize).

A sample (after "Scaling Transformer to 1M tokens and beyond with RMT", at small scale) is a fact
sentence, "the key is in the <place> .", then real English text as distractor, then the question
"where is the key ?"; n_segments * tgt_len tokens of the backbone's tokenizer in all. The label is
the place (one of --n_values). The fact stands in the first segment and the question in the
last, so a model that sees the last segment only is at chance, 1 / n_values.

The distractor text is real English text (spans of WikiText-2 in the family).
"""
from __future__ import annotations

import numpy as np

PLACES = ("kitchen", "garden", "garage", "attic", "cellar", "office", "library", "bedroom")
FACT, QUESTION = "the key is in the {} .", "where is the key ?"


def memorize_samples(rng: np.random.Generator, n: int, length: int, text: np.ndarray, fact_ids: list[list[int]],
                     question: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, length) token ids, labels (n,)): fact, a span of `text`, question."""
    labels = rng.integers(0, len(fact_ids), size=n)
    x = np.empty((n, length), dtype=np.int64)
    for i, label in enumerate(labels):
        fact = fact_ids[label]
        fill = length - len(fact) - len(question)
        start = rng.integers(0, len(text) - fill)
        x[i] = np.concatenate([fact, text[start : start + fill], question])
    return x, labels.astype(np.int64)
