"""Word/byte/character vocabulary for the LM corpora.

A `Vocab` maps whitespace-separated tokens to ids. Ids are ordered: special
symbols first, then the counted tokens by descending count, ties broken by first
occurrence. The adaptive softmax cutoffs (wt103: 20k/40k/200k) rely on this
order. For lm1b the order comes from a vocabulary file instead.
"""
from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator

import torch

from rmt.atomic import atomic_write

EOS = "<eos>"
DOUBLE_EOS = "<S>"  # lm1b marks both ends of a sentence with the same symbol
UNK_SYMBOLS = ("<unk>", "<UNK>")


class Vocab:
    """Token <-> id mapping built from counted files or read from a vocabulary file.

    special: symbols placed first, in the given order (e.g. ["<eos>"]).
    lower_case: lower-case every line before splitting it.
    vocab_file: one symbol per line (first column); replaces counting (lm1b).
    """

    def __init__(self, special: Iterable[str] = (), lower_case: bool = False,
                 vocab_file: str | os.PathLike | None = None) -> None:
        self.special = list(special)
        self.lower_case = lower_case
        self.vocab_file = vocab_file
        self.counter: Counter[str] = Counter()
        self.idx2sym: list[str] = []
        self.sym2idx: dict[str, int] = {}

    # ---- tokenising and counting ----

    def tokenize(self, line: str, add_eos: bool = False, add_double_eos: bool = False) -> list[str]:
        """Split one line on whitespace; optionally append `<eos>` or wrap in `<S> ... <S>`."""
        line = line.strip()
        if self.lower_case:
            line = line.lower()
        symbols = line.split()
        if add_double_eos:
            return [DOUBLE_EOS] + symbols + [DOUBLE_EOS]
        if add_eos:
            symbols.append(EOS)
        return symbols

    def count_file(self, path: str | os.PathLike, add_eos: bool = False) -> None:
        """Add the token counts of every line of `path` to `self.counter`."""
        # Counter keeps insertion order, so equal counts stay in first-occurrence order.
        with open(path, encoding="utf-8") as f:
            for line in f:
                self.counter.update(self.tokenize(line, add_eos=add_eos))

    def build_vocab(self) -> None:
        """Fix the id order: from the vocabulary file if given, else specials + counts."""
        self.idx2sym, self.sym2idx = [], {}
        if self.vocab_file is not None:
            with open(self.vocab_file, encoding="utf-8") as f:
                for line in f:
                    fields = line.split()
                    if fields:  # a count column after the symbol is ignored
                        self.add_symbol(fields[0])
            return
        for sym in self.special:
            self.add_symbol(sym)
        # sorted() is stable: ties keep the counter's first-occurrence order.
        for sym, _ in sorted(self.counter.items(), key=lambda kv: -kv[1]):
            self.add_symbol(sym)

    def add_symbol(self, sym: str) -> None:
        """Append `sym` if it is new."""
        if sym not in self.sym2idx:
            self.sym2idx[sym] = len(self.idx2sym)
            self.idx2sym.append(sym)

    # ---- lookup ----

    def __len__(self) -> int:
        return len(self.idx2sym)

    def __contains__(self, sym: str) -> bool:
        return sym in self.sym2idx

    @property
    def unk_idx(self) -> int | None:
        """Id of `<unk>` or `<UNK>` if the vocabulary has one, else None."""
        for sym in UNK_SYMBOLS:
            if sym in self.sym2idx:
                return self.sym2idx[sym]
        return None

    def get_idx(self, sym: str, source: str | os.PathLike = "<input>") -> int:
        """Id of `sym`; unknown tokens map to `<unk>`/`<UNK>` or raise ValueError."""
        idx = self.sym2idx.get(sym)
        if idx is not None:
            return idx
        unk = self.unk_idx
        if unk is None:
            raise ValueError(f"token {sym!r} in {source} is not in the vocabulary, "
                             f"which has no <unk>/<UNK> symbol")
        return unk

    def get_indices(self, symbols: Iterable[str]) -> list[int]:
        """Ids of `symbols` (unknown tokens as in `get_idx`)."""
        return [self.get_idx(s) for s in symbols]

    def get_symbols(self, indices: Iterable[int]) -> list[str]:
        """Symbols of `indices` (ints or a 1-D tensor)."""
        return [self.idx2sym[int(i)] for i in indices]

    # ---- encoding ----

    def _encode_lines(self, path: str | os.PathLike, add_eos: bool,
                      add_double_eos: bool) -> Iterator[list[int]]:
        s2i = self.sym2idx
        with open(path, encoding="utf-8") as f:
            for line in f:
                symbols = self.tokenize(line, add_eos, add_double_eos)
                try:  # fast path: every token known
                    yield [s2i[s] for s in symbols]
                except KeyError:
                    yield [self.get_idx(s, path) for s in symbols]

    def encode_file(self, path: str | os.PathLike, add_eos: bool = True,
                    add_double_eos: bool = False) -> torch.Tensor:
        """Encode a whole file into one 1-D int64 stream (lines concatenated)."""
        return self.encode_sentences(path, add_eos, add_double_eos)[0]

    def encode_sentences(self, path: str | os.PathLike, add_eos: bool = True,
                         add_double_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a file; returns (stream (N,), per-line lengths (n_lines,)), both int64."""
        # array('q') keeps 8 bytes per token; a Python list of ints would need ~4x more for wt103.
        ids, lengths = array("q"), array("q")
        for line_ids in self._encode_lines(path, add_eos, add_double_eos):
            ids.extend(line_ids)
            lengths.append(len(line_ids))
        return _to_tensor(ids), _to_tensor(lengths)

    # ---- plain-text persistence (the corpus cache) ----

    def to_file(self, path: str | os.PathLike) -> None:
        """Write the symbols in id order, one per line (tokens never contain whitespace)."""
        atomic_write(path, lambda f: f.writelines(sym + "\n" for sym in self.idx2sym), text=True,
                     encoding="utf-8", newline="\n")

    @classmethod
    def from_file(cls, path: str | os.PathLike, special: Iterable[str] = (),
                  lower_case: bool = False) -> Vocab:
        """Read a vocabulary written by `to_file`; ids are the line numbers."""
        vocab = cls(special=special, lower_case=lower_case)
        with open(path, encoding="utf-8", newline="\n") as f:
            symbols = f.read().split("\n")
        if symbols and symbols[-1] == "":
            symbols.pop()
        for sym in symbols:
            if not sym or sym in vocab.sym2idx:
                raise ValueError(f"malformed vocabulary file {path}: empty or repeated symbol")
            vocab.add_symbol(sym)
        return vocab


def _to_tensor(values: array) -> torch.Tensor:
    if len(values) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(values, dtype=torch.int64).clone()  # clone: own the memory
