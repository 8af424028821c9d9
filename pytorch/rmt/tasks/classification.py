"""The data of the `fact` task (sequence classification over several segments; its family is
rmt.families.fact).

A sample is n_segments * tgt_len tokens of random distractors. Somewhere before the last segment
(uniformly) stands a fact, the marker FACT followed by a value token; the sample ends with the
marker QUERY, and its label is the value (one of --n_values classes). The answer is never in the
last segment, so a model that sees only that segment is at chance, 1 / n_values; a model must
carry the fact through memory from the segment that holds it to the end.

The data are generated in memory from a seed (nothing is written).
"""
from __future__ import annotations

import numpy as np

FACT, QUERY = 1, 2  # marker tokens; 0 is never emitted (the padding id elsewhere)
FIRST_VALUE = 3


def fact_samples(rng: np.random.Generator, n: int, n_segments: int, segment_len: int, n_values: int,
                 n_distractors: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, n_segments * segment_len) int64, labels (n,) in 0..n_values-1)."""
    length = n_segments * segment_len
    first_distractor = FIRST_VALUE + n_values
    x = rng.integers(first_distractor, first_distractor + n_distractors, size=(n, length))
    labels = rng.integers(0, n_values, size=n)
    where = rng.integers(0, (n_segments - 1) * segment_len - 1, size=n)  # FACT and its value before the last segment
    rows = np.arange(n)
    x[rows, where], x[rows, where + 1] = FACT, FIRST_VALUE + labels
    x[:, -1] = QUERY
    return x.astype(np.int64), labels.astype(np.int64)
