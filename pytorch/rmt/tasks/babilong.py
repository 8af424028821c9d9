"""The samples of long-context question answering in the style of BABILong (Kuratov et al., 2024):
the facts of a bAbI story (rmt.tasks.babi) scattered through long natural text, the question at the
end. The family that trains and evaluates on them is rmt.families.babilong.

A sample is haystack sentences (a split's text, read cyclically from a seeded start), the story's
sentences inserted in order at seeded sentence boundaries, then " Question: <q> Answer:" and the
answer (the family adds the end token), exactly the asked number of tokens (0: the story alone).
"""
from __future__ import annotations

import re

import numpy as np

QUESTION, ANSWER = " Question: {} Answer:", " {}"
_SIZE = re.compile(r"^(\d+)([kKmM]?)$")


def parse_length(text: str) -> int:
    """'0', '512', '4k', '64k', '1M' -> tokens (k = 1024, M = 1024**2)."""
    m = _SIZE.match(str(text).strip())
    if not m:
        raise ValueError(f"a sample length is a number of tokens with an optional k or M (4k, 1M), got {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[m.group(2).lower()]


def length_label(tokens: int) -> str:
    for unit, size in (("M", 1024 ** 2), ("k", 1024)):
        if tokens >= size and tokens % size == 0:
            return f"{tokens // size}{unit}"
    return str(tokens)


def haystack_sentences(text: str) -> list[str]:
    """The sentences of a text in the WikiText layout (headings ' = ... = ' and empty lines left out)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        out += [s for s in re.split(r"(?<=[.!?])\s+", line) if s]
    return out


class Haystack:
    """One split's sentences as token ids, read cyclically from a seeded start."""

    def __init__(self, sentences: list[np.ndarray]):
        if not sentences:
            raise ValueError("the haystack text holds no sentence")
        self.sentences = sentences
        self.total = sum(len(s) for s in sentences)

    def take(self, n_tokens: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Whole sentences from a random start, the last one cut, exactly n_tokens in all."""
        out, have = [], 0
        i = int(rng.integers(len(self.sentences)))
        while have < n_tokens:
            s = self.sentences[i % len(self.sentences)]
            out.append(s[: n_tokens - have])
            have += len(out[-1])
            i += 1
        return out


def assemble(facts: list[np.ndarray], question: np.ndarray, answer: np.ndarray, haystack: Haystack, length: int,
             rng: np.random.Generator, end_before: int | None = None) -> tuple[np.ndarray, int]:
    """Haystack with the facts inserted in order at sentence boundaries, the question, the answer:
    exactly `length` tokens (0: the story alone); and where the first fact starts. With end_before,
    the last fact ends at or before that token (the boundaries drawn from those that leave room)."""
    story = sum(len(f) for f in facts) + len(question) + len(answer)
    if length and length < story:
        raise ValueError(f"a sample of {length} tokens cannot hold its story ({story} tokens with the question and "
                         "answer): give a longer --sample_length or more segments")
    pieces = haystack.take(length - story, rng) if length else []
    boundaries = len(pieces) + 1
    if end_before is not None:
        told = sum(len(f) for f in facts)
        boundaries = int(np.searchsorted(np.cumsum([0] + [len(p) for p in pieces]), end_before - told, side="right"))
        if not boundaries:
            raise ValueError(f"the story ({told} tokens) cannot end before token {end_before}: give longer samples")
    where = np.sort(rng.integers(0, boundaries, size=len(facts)))  # a fact goes before pieces[where]
    out, j = [], 0
    first = sum(len(p) for p in pieces[: where[0]]) if len(facts) else 0
    for i in range(len(pieces) + 1):
        while j < len(facts) and where[j] == i:
            out.append(facts[j])
            j += 1
        if i < len(pieces):
            out.append(pieces[i])
    return np.concatenate([*out, question, answer]).astype(np.int64), first


def question_segment(answer_start: int, tgt_len: int) -> int:
    """Where the segment starts that holds the question's last token (the one before the answer)."""
    return (answer_start - 1) // tgt_len * tgt_len
