"""Batch iterators over token streams, as the original trainer and evaluator used them.

Legend: B = batch rows (parallel streams), T = target length of a batch,
E = ext_len (extra context columns in front of x).

All iterators yield BATCH-FIRST pairs `(x (B, E' + T), y (B, T))` with
`y[:, t]` the token after `x[:, E' + t]`, where E' <= E is the context actually
available. In `LMOrderedIterator` row b of consecutive batches continues the
same contiguous slice of the corpus, so RMT memory and the Transformer-XL cache
can be carried along a row from one batch to the next.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from rmt.lm.vocab import Vocab

Batch = tuple[torch.Tensor, torch.Tensor]
Rng = np.random.Generator | torch.Generator


class LMOrderedIterator:
    """Contiguous segments of a 1-D stream, laid out as B parallel rows.

    The stream is trimmed to n_step * B tokens and row b is its b-th contiguous
    1/B. With `world_size > 1`, `batch_size` is the GLOBAL batch and rank r gets
    rows [r*B/W, (r+1)*B/W) of that same layout, so W ranks together see exactly
    the rows of a 1-process run. `start` is the position of the first batch.
    Iteration is stateful: it continues from `pos`, and a loop that stops early
    resumes there next time (use `get_fixlen_iter(start=0)` for a fresh pass).
    """

    def __init__(self, data: torch.Tensor, batch_size: int, tgt_len: int, ext_len: int = 0,
                 start: int = 0, *, rank: int = 0, world_size: int = 1) -> None:
        if data.dim() != 1:
            raise ValueError(f"expected a 1-D token stream, got shape {tuple(data.shape)}")
        _check_sizes(batch_size, tgt_len, ext_len)
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        self.batch_size, self.tgt_len, self.ext_len = batch_size, tgt_len, ext_len
        self.rank, self.world_size = rank, world_size
        self.n_step = data.numel() // batch_size
        if self.n_step < 2:
            raise ValueError(f"{data.numel()} tokens are too few for batch_size {batch_size}")
        rows = batch_size // world_size
        layout = data[: self.n_step * batch_size].reshape(batch_size, self.n_step)  # (B, n_step)
        self.data = layout[rank * rows:(rank + 1) * rows]  # (B/W, n_step), a view: no copy
        self.pos = start  # first target-1 position of the next batch

    def __len__(self) -> int:
        """Number of fixed-length batches in one epoch."""
        return -(-(self.n_step - 1) // self.tgt_len)

    def get_batch(self, i: int, seq_len: int | None = None) -> Batch:
        """The batch whose first target is at position i+1: x (B, <=E + T), y (B, T)."""
        seq_len = min(self.tgt_len if seq_len is None else seq_len, self.n_step - 1 - i)
        if seq_len <= 0:
            raise IndexError(f"position {i} is past the end of the epoch ({self.n_step - 1})")
        begin = max(0, i - self.ext_len)
        # clone: the caller may modify the batch in place without touching the corpus
        x = self.data[:, begin:i + seq_len].clone(memory_format=torch.contiguous_format)
        y = self.data[:, i + 1:i + 1 + seq_len].clone(memory_format=torch.contiguous_format)
        return x, y

    def _epoch_start(self, start: int | None) -> None:
        if start is not None:
            self.pos = start
        if self.pos >= self.n_step - 1:  # the previous epoch ran to its end: begin a new one
            self.pos = 0

    def __iter__(self) -> Iterator[Batch]:
        return self.get_fixlen_iter()

    def get_fixlen_iter(self, start: int | None = None) -> Iterator[Batch]:
        """Fixed-length batches from `start` (default: the current position) to the epoch end."""
        self._epoch_start(start)
        while self.pos < self.n_step - 1:
            x, y = self.get_batch(self.pos)
            self.pos += y.size(1)  # advance before yielding, so state_dict() names the next batch
            yield x, y

    def get_varlen_iter(self, start: int | None = None, std: float = 5.0, min_len: int = 5,
                        max_deviation: int = 3, *, rng: Rng) -> Iterator[Batch]:
        """Batches of random length (TXL rule), drawn from the explicit generator `rng`.

        Base length is tgt_len w.p. 0.95, else tgt_len / 2; the length is
        int(N(base, std)) clipped to [min_len, tgt_len + max_deviation * std].
        """
        if min_len < 1:
            raise ValueError("min_len must be >= 1")
        max_len = int(self.tgt_len + max_deviation * std)
        self._epoch_start(start)
        while self.pos < self.n_step - 1:
            u, z = _uniform_and_normal(rng)
            base = self.tgt_len if u < 0.95 else self.tgt_len / 2.0
            seq_len = min(max_len, max(min_len, int(base + std * z)))
            x, y = self.get_batch(self.pos, seq_len)
            self.pos += y.size(1)
            yield x, y

    def state_dict(self) -> dict[str, int]:
        """Position within the epoch (plus the layout it refers to) for exact resume."""
        return {"pos": self.pos, "n_step": self.n_step, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position; the global layout must be the same."""
        if state["n_step"] != self.n_step or state["batch_size"] != self.batch_size:
            raise ValueError(f"iterator state is for batch_size {state['batch_size']} and "
                             f"n_step {state['n_step']}, not {self.batch_size} and {self.n_step}")
        self.pos = int(state["pos"])


def _check_sizes(batch_size: int, tgt_len: int, ext_len: int, shuffle: bool = False,
                 rng: np.random.Generator | None = None) -> None:
    if batch_size <= 0 or tgt_len <= 0 or ext_len < 0:
        raise ValueError(f"need batch_size > 0, tgt_len > 0 and ext_len >= 0, got "
                         f"{batch_size}, {tgt_len}, {ext_len}")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise ValueError("shuffle=True needs an explicit numpy Generator (rng=...)")


def _uniform_and_normal(rng: Rng) -> tuple[float, float]:
    """One U(0, 1) and one N(0, 1) draw from a numpy or torch generator."""
    if isinstance(rng, torch.Generator):
        return torch.rand((), generator=rng).item(), torch.randn((), generator=rng).item()
    if isinstance(rng, np.random.Generator):
        return float(rng.random()), float(rng.standard_normal())
    raise TypeError(f"rng must be a numpy or torch Generator, got {type(rng).__name__}")


def _permutation(n: int, rng: np.random.Generator | None, shuffle: bool) -> np.ndarray:
    return rng.permutation(n) if shuffle and rng is not None else np.arange(n)


def pack_sentences(sentences: Iterator[torch.Tensor], batch_size: int, tgt_len: int,
                   ext_len: int = 0) -> Iterator[Batch]:
    """Pack a stream of sentences into B rows; each row reads sentences back to back.

    A sentence s contributes x = s[:-1], y = s[1:], so no target crosses a sentence
    boundary. Like the original, the final, partly filled batch is dropped.
    """
    rest: list[torch.Tensor | None] = [None] * batch_size  # unread part of each row's sentence
    prefix = None  # (B, <=E) last input columns, carried as extra context
    while True:
        x = torch.empty(batch_size, tgt_len, dtype=torch.long)
        y = torch.empty_like(x)
        for b in range(batch_size):
            filled = 0
            while filled < tgt_len:
                cur = rest[b]
                if cur is None or cur.numel() <= 1:  # a single token has no target left
                    rest[b] = next(sentences, None)
                    if rest[b] is None:
                        return
                    continue
                n = min(cur.numel() - 1, tgt_len - filled)
                x[b, filled:filled + n] = cur[:n]
                y[b, filled:filled + n] = cur[1:n + 1]
                rest[b] = cur[n:]  # keep the last input token: it predicts the next target
                filled += n
        full_x = x if prefix is None else torch.cat([prefix, x], dim=1)  # (B, E' + T)
        yield full_x, y
        if ext_len > 0:
            prefix = full_x[:, -ext_len:]


class LMShuffledIterator:
    """lm1b valid/test: a list of sentences streamed into B rows (optionally shuffled)."""

    def __init__(self, sentences: Sequence[torch.Tensor], batch_size: int, tgt_len: int,
                 ext_len: int = 0, *, rng: np.random.Generator | None = None,
                 shuffle: bool = False) -> None:
        _check_sizes(batch_size, tgt_len, ext_len, shuffle, rng)
        self.sentences = sentences
        self.batch_size, self.tgt_len, self.ext_len = batch_size, tgt_len, ext_len
        self.rng, self.shuffle = rng, shuffle

    def __iter__(self) -> Iterator[Batch]:
        order = _permutation(len(self.sentences), self.rng, self.shuffle)
        stream = (self.sentences[i] for i in order)
        return pack_sentences(stream, self.batch_size, self.tgt_len, self.ext_len)


class LMMultiFileIterator:
    """lm1b train: shards read one at a time (shard and sentence order shuffled) into B rows.

    Sentences of consecutive shards flow through the same rows, so only the very
    last partial batch of the epoch is dropped.
    """

    def __init__(self, paths: Sequence[str], vocab: Vocab, batch_size: int, tgt_len: int,
                 ext_len: int = 0, *, rng: np.random.Generator | None = None,
                 shuffle: bool = True) -> None:
        _check_sizes(batch_size, tgt_len, ext_len, shuffle, rng)
        self.paths, self.vocab = list(paths), vocab
        self.batch_size, self.tgt_len, self.ext_len = batch_size, tgt_len, ext_len
        self.rng, self.shuffle = rng, shuffle

    def _sentences(self) -> Iterator[torch.Tensor]:
        for p in _permutation(len(self.paths), self.rng, self.shuffle):
            stream, lengths = self.vocab.encode_sentences(self.paths[p], add_double_eos=True)
            sentences = torch.split(stream, lengths.tolist())
            for i in _permutation(len(sentences), self.rng, self.shuffle):
                yield sentences[i]

    def __iter__(self) -> Iterator[Batch]:
        return pack_sentences(self._sentences(), self.batch_size, self.tgt_len, self.ext_len)


def windows(ids: torch.Tensor, length: int) -> torch.Tensor:
    """(n, length): the token stream cut into whole windows (a last partial one is dropped)."""
    n = ids.numel() // length
    return ids[: n * length].view(n, length)
