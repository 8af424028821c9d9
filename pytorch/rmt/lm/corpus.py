"""Load an LM corpus prepared by getdata.sh, with an on-disk cache.

    corpus = get_lm_corpus("data/wikitext-103", "wt103")
    corpus.vocab, corpus.train, corpus.valid, corpus.test   # Vocab, (N,) int64 streams

The cache lives in `{data_dir}/cache/`: `data.pt` (a dict of plain tensors, read
with `weights_only=True`), `vocab.txt` and `meta.json`. `meta.json` is written last
and records the size and mtime of every source file, so a changed source or an
unreadable cache triggers a rebuild instead of silently using stale ids.
"""
from __future__ import annotations

import glob
import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from rmt.atomic import atomic_write
from rmt.lm.iterators import LMMultiFileIterator, LMOrderedIterator, LMShuffledIterator
from rmt.lm.vocab import Vocab

DATASETS = ("wt103", "wt2", "ptb", "enwik8", "text8", "lm1b")
CACHE_FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
LM1B_VOCAB = "1b_word_vocab.txt"
LMIterator = LMOrderedIterator | LMShuffledIterator | LMMultiFileIterator
LM1B_TRAIN_GLOB = os.path.join("1-billion-word-language-modeling-benchmark-r13output",
                               "training-monolingual.tokenized.shuffled", "news.en-*")


@dataclass(frozen=True)
class DatasetRules:
    """How one dataset is tokenised and which splits feed the vocabulary counts."""
    special: tuple[str, ...]
    lower_case: bool
    add_eos: bool
    count_splits: tuple[str, ...]


RULES = {
    "wt103": DatasetRules(("<eos>",), False, True, ("train",)),
    "wt2": DatasetRules(("<eos>",), False, True, SPLITS),
    "ptb": DatasetRules(("<eos>",), True, True, SPLITS),
    # Byte/char corpora: every line is a run of tokens; newlines are separators only.
    "enwik8": DatasetRules((), False, False, SPLITS),
    "text8": DatasetRules((), False, False, SPLITS),
    # lm1b: vocabulary from 1b_word_vocab.txt, sentences wrapped in <S> ... <S>.
    "lm1b": DatasetRules((), False, False, ()),
}


@dataclass
class Corpus:
    """A tokenised corpus. `train` is a list of shard paths for lm1b, else a (N,) stream.

    For lm1b, `sentence_lengths[split]` splits valid/test back into sentences.
    """
    dataset: str
    vocab: Vocab
    train: torch.Tensor | list[str]
    valid: torch.Tensor
    test: torch.Tensor
    sentence_lengths: dict[str, torch.Tensor] = field(default_factory=dict)

    def sentences(self, split: str) -> list[torch.Tensor]:
        """The lm1b valid/test stream as a list of per-sentence (L,) tensors."""
        stream = getattr(self, split)
        return list(torch.split(stream, self.sentence_lengths[split].tolist()))

    def get_iterator(self, split: str, batch_size: int, tgt_len: int, ext_len: int = 0,
                     *, rng: np.random.Generator | None = None, rank: int = 0,
                     world_size: int = 1) -> LMIterator:
        """The iterator the original trainer used for `split` (ordered; lm1b: shuffled)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if self.dataset != "lm1b":
            return LMOrderedIterator(getattr(self, split), batch_size, tgt_len, ext_len,
                                     rank=rank, world_size=world_size)
        if world_size != 1:
            raise ValueError("lm1b iterators do not support sharding across ranks")
        if split == "train":
            return LMMultiFileIterator(self.train, self.vocab, batch_size, tgt_len, ext_len,
                                       rng=rng, shuffle=True)
        return LMShuffledIterator(self.sentences(split), batch_size, tgt_len, ext_len,
                                  rng=rng, shuffle=False)


def get_lm_corpus(data_dir: str | os.PathLike, dataset: str) -> Corpus:
    """Load `dataset` from `data_dir` (the getdata.sh layout), using or refreshing the cache."""
    if dataset not in RULES:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")
    data_dir = os.fspath(data_dir)
    sources = _source_files(data_dir, dataset)
    stats = {name: _stat(path) for name, path in sources.items()}
    cache_dir = os.path.join(data_dir, "cache")
    corpus = _load_cache(cache_dir, dataset, stats)
    if corpus is None:
        corpus = _build(data_dir, dataset, sources)
        try:
            _save_cache(cache_dir, corpus, stats)
        except (OSError, RuntimeError) as e:  # a read-only or full data dir should not stop training
            # (torch.save reports a full disk as a RuntimeError from its zip writer)
            warnings.warn(f"could not write the corpus cache in {cache_dir}: {e}")
    if dataset == "lm1b":
        corpus.train = _lm1b_shards(data_dir)
    return corpus


# ---- sources ----

def load_vocab(data_dir: str | os.PathLike, dataset: str) -> Vocab:
    """The corpus's vocabulary: read from its cache when one was built, else by building the corpus."""
    cache_dir = os.path.join(data_dir, "cache")
    rules = RULES[dataset]
    try:
        with open(os.path.join(cache_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("dataset") == dataset and meta.get("format_version") == CACHE_FORMAT_VERSION:
            vocab = Vocab.from_file(os.path.join(cache_dir, "vocab.txt"), rules.special, rules.lower_case)
            if len(vocab) == meta.get("vocab_size"):
                return vocab
    except (OSError, ValueError, AttributeError):  # no cache, or not ours: build the corpus
        pass
    return get_lm_corpus(str(data_dir), dataset).vocab


def _missing(what: str, data_dir: str) -> FileNotFoundError:
    return FileNotFoundError(f"no {what} in {data_dir}; run getdata.sh (see README)")


def _source_files(data_dir: str, dataset: str) -> dict[str, str]:
    """Files whose content determines the cache, keyed by a name relative to data_dir."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory {data_dir} does not exist; "
                                f"run getdata.sh (see README)")
    names = ["valid.txt", "test.txt"]
    if dataset == "lm1b":
        names.append(LM1B_VOCAB)
        _lm1b_shards(data_dir)  # fail early, before any encoding work
    else:
        names.insert(0, "train.txt")
    sources = {}
    for name in names:
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise _missing(name, data_dir)
        sources[name] = path
    return sources


def _lm1b_shards(data_dir: str) -> list[str]:
    shards = sorted(glob.glob(os.path.join(data_dir, LM1B_TRAIN_GLOB)))
    if not shards:
        raise _missing("lm1b training shards (" + LM1B_TRAIN_GLOB + ")", data_dir)
    return shards


def _stat(path: str) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---- building ----

def _build(data_dir: str, dataset: str, sources: dict[str, str]) -> Corpus:
    rules = RULES[dataset]
    vocab = Vocab(special=rules.special, lower_case=rules.lower_case,
                  vocab_file=sources.get(LM1B_VOCAB))
    for split in rules.count_splits:
        vocab.count_file(sources[f"{split}.txt"])
        if dataset == "enwik8":
            _check_bytes(vocab, sources[f"{split}.txt"])
    vocab.build_vocab()
    if dataset == "lm1b":
        valid, valid_lengths = vocab.encode_sentences(sources["valid.txt"], add_double_eos=True)
        test, test_lengths = vocab.encode_sentences(sources["test.txt"], add_double_eos=True)
        return Corpus(dataset, vocab, [], valid, test,
                      sentence_lengths={"valid": valid_lengths, "test": test_lengths})
    splits = {s: vocab.encode_file(sources[f"{s}.txt"], add_eos=rules.add_eos) for s in SPLITS}
    return Corpus(dataset, vocab, **splits)


def _check_bytes(vocab: Vocab, path: str) -> None:
    """An enwik8-format file holds decimal byte values only; anything else would join the vocabulary."""
    bad = next((sym for sym in vocab.counter if not (sym.isdigit() and int(sym) < 256)), None)
    if bad is not None:
        raise ValueError(f"{path}: token {bad[:20]!r} is not a byte value 0-255, as the enwik8 format needs; "
                         "make the corpus with python -m rmt.lm.prepare text FILES --level char")


# ---- cache ----

def _save_cache(cache_dir: str, corpus: Corpus, stats: dict[str, dict[str, int]]) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    meta_path = os.path.join(cache_dir, "meta.json")
    if os.path.exists(meta_path):  # invalidate first: a crash mid-write must not look valid
        os.remove(meta_path)
    tensors = {"valid": corpus.valid, "test": corpus.test}
    if isinstance(corpus.train, torch.Tensor):
        tensors["train"] = corpus.train
    tensors.update({f"{k}_lengths": v for k, v in corpus.sentence_lengths.items()})
    atomic_write(os.path.join(cache_dir, "data.pt"), lambda f: torch.save(tensors, f))
    vocab_text = "".join(sym + "\n" for sym in corpus.vocab.idx2sym).encode("utf-8")
    atomic_write(os.path.join(cache_dir, "vocab.txt"), lambda f: f.write(vocab_text))
    meta = {"dataset": corpus.dataset, "format_version": CACHE_FORMAT_VERSION,
            "vocab_size": len(corpus.vocab), "sources": stats}
    meta_bytes = json.dumps(meta, indent=1, sort_keys=True).encode("utf-8")
    atomic_write(meta_path, lambda f: f.write(meta_bytes))


def _load_cache(cache_dir: str, dataset: str,
                stats: dict[str, dict[str, int]]) -> Corpus | None:
    """The cached corpus, or None when it is absent, stale or unreadable (then it is rebuilt)."""
    try:
        with open(os.path.join(cache_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        if (meta.get("dataset") != dataset or meta.get("format_version") != CACHE_FORMAT_VERSION
                or meta.get("sources") != stats):
            return None
        rules = RULES[dataset]
        vocab = Vocab.from_file(os.path.join(cache_dir, "vocab.txt"),
                                special=rules.special, lower_case=rules.lower_case)
        tensors = torch.load(os.path.join(cache_dir, "data.pt"), weights_only=True)
        names = ["valid", "test"] + (["valid_lengths", "test_lengths"] if dataset == "lm1b"
                                     else ["train"])
        for name in names:
            t = tensors[name]
            if not (isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 1):
                return None
        for name in ("train", "valid", "test"):
            t = tensors.get(name)
            if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= len(vocab)):
                return None
        if len(vocab) != meta.get("vocab_size"):
            return None
    except Exception:  # any unreadable piece (truncated, garbage, missing) means rebuild
        return None
    lengths = {s: tensors[f"{s}_lengths"] for s in ("valid", "test") if f"{s}_lengths" in tensors}
    for split, lens in lengths.items():
        if int(lens.sum()) != tensors[split].numel():
            return None
    return Corpus(dataset, vocab, tensors.get("train", []), tensors["valid"], tensors["test"],
                  sentence_lengths=lengths)
