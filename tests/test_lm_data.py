"""LM data pipeline: vocabularies, corpus cache, iterators, prepare.py, getdata.sh.

    python -m pytest tests/test_lm_data.py -q

Every corpus is a tiny one written on the fly into a tmp dir.
"""
import hashlib
import io
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from rmt.errors import DataError
from rmt.lm import corpus as corpus_mod
from rmt.lm.corpus import get_lm_corpus
from rmt.lm.iterators import LMMultiFileIterator, LMOrderedIterator, LMShuffledIterator
from rmt.lm.prepare import prepare, prepare_text
from rmt.lm.vocab import Vocab

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ)


def write_splits(d, train, valid, test):
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (d / f"{name}.txt").write_text(text, encoding="utf-8")
    return d


WT_TRAIN = " = Title = \n\n b a b c b a <unk> \n c b \n"  # b:4, then =, a, c (2 each), Title, <unk>
WT_VALID = " a b zz \n"  # zz is not in train -> <unk>
WT_TEST = " c \n"


# ---- vocabulary ----

def test_vocab_order_specials_then_count_then_first_occurrence(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("x y z y\nz w y\n")  # y:3, then x/z/w ... z:2 before x:1, w:1
    v = Vocab(special=["<eos>"])
    v.count_file(f)
    v.build_vocab()
    assert v.idx2sym == ["<eos>", "y", "z", "x", "w"]
    assert v.encode_file(f, add_eos=True).tolist() == [3, 1, 2, 1, 0, 2, 4, 1, 0]
    v.to_file(tmp_path / "v.txt")
    assert Vocab.from_file(tmp_path / "v.txt").idx2sym == v.idx2sym


def test_unknown_token_without_unk_raises_naming_token_and_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a b\n")
    v = Vocab()
    v.count_file(f)
    v.build_vocab()
    other = tmp_path / "other.txt"
    other.write_text("a qq\n")
    with pytest.raises(ValueError, match=r"'qq'.*other\.txt"):
        v.encode_file(other)


# ---- word-level corpora ----

def test_wt103_eos_per_line_train_only_vocab_and_unk(tmp_path):
    d = write_splits(tmp_path / "wt103", WT_TRAIN, WT_VALID, WT_TEST)
    c = get_lm_corpus(d, "wt103")
    v = c.vocab
    # specials, then by count; equal counts keep their first-occurrence order
    assert v.idx2sym == ["<eos>", "b", "=", "a", "c", "Title", "<unk>"]
    assert "zz" not in v  # wt103 counts train only
    eos = v.sym2idx["<eos>"]
    assert int((c.train == eos).sum()) == 4  # one per line, empty lines included
    assert v.get_symbols(c.valid) == ["a", "b", "<unk>", "<eos>"]
    assert c.train.dtype == torch.long and c.train.dim() == 1


def test_wt2_counts_all_splits_and_keeps_case(tmp_path):
    d = write_splits(tmp_path / "wt2", "The the the\n", "Zeta\n", "zeta\n")
    v = get_lm_corpus(d, "wt2").vocab
    assert v.idx2sym == ["<eos>", "the", "The", "Zeta", "zeta"]


def test_ptb_lower_cases(tmp_path):
    d = write_splits(tmp_path / "penn", "The the THE cat\n", "Cat\n", "the\n")
    c = get_lm_corpus(d, "ptb")
    assert c.vocab.idx2sym == ["<eos>", "the", "cat"]
    assert c.vocab.get_symbols(c.valid) == ["cat", "<eos>"]


# ---- enwik8 / text8 via prepare.py ----

def test_prepare_enwik8_split_and_newline_loss(tmp_path):
    rng = random.Random(0)
    raw = bytes(rng.choice([10, 32, 65, 66, 200, 255]) for _ in range(300))
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as zf:
        zf.writestr("enwik8", raw)
    d = tmp_path / "enwik8"
    sizes = prepare("enwik8", str(tmp_path / "enwik8.zip"), str(d), valid_size=40, test_size=30)
    assert sizes == {"train": 230, "valid": 40, "test": 30}
    test_txt = (d / "test.txt").read_text()
    assert test_txt.count("\n") == raw[-30:].count(10)  # a newline byte is a real line break
    c = get_lm_corpus(d, "enwik8")
    assert len(c.vocab) == 5  # the byte values except newline
    for split, part in (("train", raw[:230]), ("valid", raw[230:270]), ("test", raw[270:])):
        decoded = [int(s) for s in c.vocab.get_symbols(getattr(c, split))]
        assert decoded == [b for b in part if b != 10]  # newline bytes are dropped, no eos


def test_prepare_text8_cli(tmp_path):
    text = " anarchism originated as a term of abuse first used against early working class"
    (tmp_path / "text8").write_text(text)
    d = tmp_path / "text8_out"
    subprocess.run([sys.executable, "-m", "rmt.lm.prepare", "text8", str(tmp_path / "text8"),
                    str(d), "--valid_size", "10", "--test_size", "5"],
                   check=True, env=ENV, capture_output=True)
    assert (d / "test.txt").read_text() == " ".join("class")  # split ends are stripped
    assert (d / "valid.txt").read_text() == " ".join(text[-15:-5].strip().replace(" ", "_"))
    c = get_lm_corpus(d, "text8")
    assert "_" in c.vocab and " " not in c.vocab and "<eos>" not in c.vocab
    assert c.vocab.idx2sym[0] == "_"  # the most frequent character
    assert "".join(c.vocab.get_symbols(c.train)) == text[:-15].strip().replace(" ", "_")


def test_prepare_rejects_too_large_splits(tmp_path):
    (tmp_path / "raw").write_bytes(b"abc")
    with pytest.raises(ValueError, match="nothing would be left"):
        prepare("enwik8", str(tmp_path / "raw"), str(tmp_path / "o"), valid_size=2, test_size=1)


# ---- any text via `prepare text` ----

def prepare_cli(*args):
    return subprocess.run([sys.executable, "-m", "rmt.lm.prepare", "text", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=60)


def test_prepare_text_char_level_keeps_every_byte_newlines_included(tmp_path):
    (tmp_path / "a.txt").write_text("h\u00e9\n", encoding="utf-8")  # 4 bytes: h, 0xc3 0xa9, newline
    (tmp_path / "b.txt").write_bytes(b"xy")  # no final newline: one is added when joining
    meta = prepare_text([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "c", "char", (0.5, 0.25, 0.25))
    joined = "h\u00e9\nxy\n".encode()  # 7 bytes; cuts at round(3.5) = 4 and round(5.25) = 5
    assert meta["units"] == {"train": 4, "valid": 1, "test": 2} and meta["dataset"] == "enwik8"
    assert (tmp_path / "c" / "train.txt").read_text() == "104 195 169 10\n"
    assert (tmp_path / "c" / "valid.txt").read_text() == "120\n" and (tmp_path / "c" / "test.txt").read_text() == "121 10\n"
    assert [src["path"] for src in meta["sources"]] == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert meta["sources"][1] == {"path": str(tmp_path / "b.txt"), "bytes": 2,
                                  "sha256": hashlib.sha256(b"xy").hexdigest()}
    assert json.loads((tmp_path / "c" / "meta.json").read_text()) == meta
    c = get_lm_corpus(tmp_path / "c", "enwik8")
    decoded = [int(sym) for split in ("train", "valid", "test") for sym in c.vocab.get_symbols(getattr(c, split))]
    assert bytes(decoded) == joined  # the enwik8 loader reads every byte back, the newline (10) too


def test_prepare_text_word_level_cuts_at_lines_and_maps_unseen_words_to_unk(tmp_path):
    lines = ["a b a", "b c", "a a b", "d a", "e b"]  # units per line (tokens + <eos>): 4 3 4 3 3 = 17
    (tmp_path / "w.txt").write_text("\n".join(lines) + "\n")
    meta = prepare_text([str(tmp_path / "w.txt")], tmp_path / "w", "word", (0.6, 0.2, 0.2), name="tiny", min_count=2)
    # cuts at round(10.2) = 10 and round(13.6) = 14 units: lines 0-2 train, line 3 valid, line 4 test
    assert (tmp_path / "w" / "train.txt").read_text() == "a b a\nb <unk>\na a b\n"  # c is seen once: < min_count
    assert (tmp_path / "w" / "valid.txt").read_text() == "<unk> a\n"  # d is not in train
    assert (tmp_path / "w" / "test.txt").read_text() == "<unk> b\n"
    assert meta["name"] == "tiny" and meta["dataset"] == "wt2" and meta["units"] == {"train": 11, "valid": 3, "test": 3}
    assert meta["replaced_by_unk"] == {"train": 1, "valid": 1, "test": 1}
    c = get_lm_corpus(tmp_path / "w", "wt2")
    assert set(c.vocab.idx2sym) == {"<eos>", "a", "b", "<unk>"} and meta["vocab_size"] == 4
    assert c.vocab.get_symbols(c.valid) == ["<unk>", "a", "<eos>"]


def test_prepare_text_is_deterministic_and_replaces_its_own_corpus(tmp_path):
    rng = random.Random(3)
    text = "\n".join(" ".join(rng.choice(["the", "cat", "sat", "\u00e9t\u00e9"]) for _ in range(9)) for _ in range(50))
    (tmp_path / "t.txt").write_text(text)
    for level in ("char", "word"):
        outs = [tmp_path / f"{level}1", tmp_path / f"{level}2"]
        for out in outs + outs[:1]:  # the second write to the first directory replaces it
            assert prepare_cli(tmp_path / "t.txt", "--level", level, "--out", out, "--name", "n").returncode == 0
        for name in ("train.txt", "valid.txt", "test.txt", "meta.json"):
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
        assert sorted(p.name for p in outs[0].iterdir()) == ["meta.json", "test.txt", "train.txt", "valid.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


@pytest.mark.parametrize("make, flags, message", [
    (None, [], "no such file"),
    (b"", [], "is empty"),
    (b"  \n\n", [], "is empty"),
    (b"text\x00with a NUL", [], "binary file"),
    (b"caf\xe9 latin-1", [], "is not UTF-8 text"),
    (b"some text\n", ["--split", "0.9", "0.05", "0.1"], "must sum to 1"),
    (b"some text\n", ["--split", "1.2", "-0.1", "-0.1"], "must lie in [0, 1]"),
    (b"some text\n", ["--split", "1", "0", "0"], "the valid split would hold no bytes"),
    (b"one line only\n", ["--level", "word"], "the valid split would hold no tokens"),
])
def test_prepare_text_bad_input_is_one_line_and_writes_nothing(tmp_path, make, flags, message):
    src = tmp_path / "in.txt"
    if make is not None:
        src.write_bytes(make)
    out = tmp_path / "corpus"
    run = prepare_cli(src, *(["--level", "char"] if "--level" not in flags else []), *flags, "--out", out)
    assert run.returncode != 0 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == (["in.txt"] if make is not None else [])


def test_prepare_text_failure_keeps_an_earlier_corpus_and_refuses_foreign_dirs(tmp_path):
    (tmp_path / "good.txt").write_text("enough text for three splits\n" * 5)
    (tmp_path / "empty.txt").write_text("")
    assert prepare_cli(tmp_path / "good.txt", "--level", "char", "--out", tmp_path / "c").returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    assert prepare_cli(tmp_path / "empty.txt", "--level", "char", "--out", tmp_path / "c").returncode == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    run = prepare_cli(tmp_path / "good.txt", "--level", "char", "--out", tmp_path / "mine")
    assert run.returncode == 1 and "is not a corpus made by this command" in run.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_prepared_corpus_trains_under_its_own_name_and_only_at_its_level(tmp_path):
    from rmt.lm.evaluation import corpus_name, load_corpus
    (tmp_path / "t.txt").write_text("some words here\n" * 30)
    prepare_text([str(tmp_path / "t.txt")], tmp_path / "mybooks", "char")
    assert corpus_name(tmp_path / "mybooks", "enwik8") == "mybooks"
    assert corpus_name(tmp_path, "enwik8") == "enwik8"  # a corpus without meta.json: the dataset's name
    with pytest.raises(DataError, match="char-level corpus; train or evaluate it with --dataset enwik8"):
        load_corpus(tmp_path / "mybooks", "wt103")


# ---- lm1b ----

def make_lm1b(root):
    d = root / "one-billion-words"
    shard_dir = d / corpus_mod.LM1B_TRAIN_GLOB.rsplit(os.sep, 1)[0]
    shard_dir.mkdir(parents=True)
    (d / "1b_word_vocab.txt").write_text("<S> 0\n</S> 0\n<UNK> 0\nthe 9\ncat 5\nsat 4\ndog 2\n")
    (shard_dir / "news.en-00001-of-00100").write_text("the cat sat\nthe dog\n")
    (shard_dir / "news.en-00002-of-00100").write_text("cat\nthe the cat sat dog\n")
    (d / "valid.txt").write_text("the cat\nthe bird sat\n")
    (d / "test.txt").write_text("dog\n")
    return d


def test_lm1b_vocab_file_double_eos_and_shards(tmp_path):
    d = make_lm1b(tmp_path)
    c = get_lm_corpus(d, "lm1b")
    assert c.vocab.idx2sym == ["<S>", "</S>", "<UNK>", "the", "cat", "sat", "dog"]
    assert isinstance(c.train, list) and len(c.train) == 2
    assert [c.vocab.get_symbols(s) for s in c.sentences("valid")] == [
        ["<S>", "the", "cat", "<S>"], ["<S>", "the", "<UNK>", "sat", "<S>"]]
    again = get_lm_corpus(d, "lm1b")  # from the cache
    assert torch.equal(again.valid, c.valid) and again.train == c.train
    assert torch.equal(again.sentence_lengths["valid"], torch.tensor([4, 5]))


def test_lm1b_iterators_pack_sentences_deterministically(tmp_path):
    c = get_lm_corpus(make_lm1b(tmp_path), "lm1b")
    sents = c.sentences("valid")
    batches = list(LMShuffledIterator(sents * 3, batch_size=2, tgt_len=3))
    assert len(batches) == 3 and all(x.shape == y.shape == (2, 3) for x, y in batches)
    # one row reads the sentences back to back; no target crosses into the next sentence
    xs, ys = zip(*LMShuffledIterator(sents * 3, batch_size=1, tgt_len=3))
    row_x, row_y = torch.cat(xs, 1)[0].tolist(), torch.cat(ys, 1)[0].tolist()
    assert row_x[:7] == sents[0][:-1].tolist() + sents[1][:-1].tolist()
    assert row_y[:7] == sents[0][1:].tolist() + sents[1][1:].tolist()

    def run(seed):
        it = LMMultiFileIterator(c.train, c.vocab, 2, 2, rng=np.random.default_rng(seed))
        return [torch.cat(b, 1) for b in it]

    a, b = run(0), run(0)
    assert len(a) > 0 and all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="Generator"):
        LMMultiFileIterator(c.train, c.vocab, 2, 2)  # shuffling without an explicit rng


# ---- cache ----

def test_cache_created_reused_and_rebuilt_on_change(tmp_path, monkeypatch):
    d = write_splits(tmp_path / "wt2", WT_TRAIN, WT_VALID, WT_TEST)
    first = get_lm_corpus(d, "wt2")
    cache = d / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["data.pt", "meta.json", "vocab.txt"]
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["dataset"] == "wt2"
    assert set(meta["sources"]) == {"train.txt", "valid.txt", "test.txt"}

    def no_build(*a, **k):
        raise AssertionError("rebuilt although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(corpus_mod, "_build", no_build)
        again = get_lm_corpus(d, "wt2")
    assert again.vocab.idx2sym == first.vocab.idx2sym and torch.equal(again.train, first.train)

    (d / "valid.txt").write_text(" new words here \n")
    changed = get_lm_corpus(d, "wt2")
    assert "new" in changed.vocab and changed.valid.numel() == 4
    assert json.loads((cache / "meta.json").read_text())["sources"] != meta["sources"]


def test_a_cache_that_cannot_be_written_leaves_the_corpus_loaded_and_no_temp_file(tmp_path, monkeypatch):
    """A full disk mid-cache: torch's zip writer raises RuntimeError, not OSError. The corpus is used
    uncached, nothing half-written is left behind, and the next load writes the cache."""
    d = write_splits(tmp_path / "wt2", WT_TRAIN, WT_VALID, WT_TEST)

    def disk_full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")

    with monkeypatch.context() as m:
        m.setattr(corpus_mod.torch, "save", disk_full)
        with pytest.warns(UserWarning, match="could not write the corpus cache"):
            uncached = get_lm_corpus(d, "wt2")
    assert sorted(p.name for p in (d / "cache").iterdir()) == []  # no meta.json: nothing looks valid
    cached = get_lm_corpus(d, "wt2")
    assert torch.equal(cached.train, uncached.train) and (d / "cache" / "meta.json").is_file()


@pytest.mark.parametrize("damage", ["data.pt", "vocab.txt", "meta.json", "delete_data"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    d = write_splits(tmp_path / "wt103", WT_TRAIN, WT_VALID, WT_TEST)
    good = get_lm_corpus(d, "wt103")
    target = d / "cache" / damage
    if damage == "delete_data":
        (d / "cache" / "data.pt").unlink()
    elif damage == "vocab.txt":
        target.write_text("<eos>\nb\n")  # truncated: ids in data.pt now exceed the vocabulary
    else:
        target.write_bytes(b"\x00garbage{")
    rebuilt = get_lm_corpus(d, "wt103")
    assert rebuilt.vocab.idx2sym == good.vocab.idx2sym and torch.equal(rebuilt.test, good.test)
    assert get_lm_corpus(d, "wt103").vocab.idx2sym == good.vocab.idx2sym  # cache healthy again
    assert not [p for p in (d / "cache").iterdir() if p.name.startswith(".tmp")]


def test_missing_directory_and_files_have_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_lm_corpus(tmp_path / "nowhere", "wt103")
    assert "getdata.sh" in str(e.value) and "\n" not in str(e.value)
    d = write_splits(tmp_path / "wt", "a\n", "a\n", "a\n")
    (d / "valid.txt").unlink()
    with pytest.raises(FileNotFoundError) as e:
        get_lm_corpus(d, "wt103")
    msg = str(e.value)
    assert "valid.txt" in msg and "getdata.sh" in msg and str(d) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="wt103, wt2, ptb, enwik8, text8, lm1b"):
        get_lm_corpus(d, "wikitext")


# ---- LMOrderedIterator ----

def stream(n=103):
    return torch.arange(n, dtype=torch.long)


def test_ordered_rows_are_contiguous_and_shifted():
    data = stream()
    B, T = 4, 7
    it = LMOrderedIterator(data, B, T)
    n_step = 103 // B
    batches = list(it)
    assert len(batches) == len(it) == -(-(n_step - 1) // T)
    assert batches[-1][1].size(1) == ((n_step - 1) % T or T)  # the last batch may be shorter
    for b in range(B):
        ys = torch.cat([y[b] for _, y in batches])
        xs = torch.cat([x[b] for x, _ in batches])
        chunk = data[b * n_step:(b + 1) * n_step]
        assert torch.equal(ys, chunk[1:]) and torch.equal(xs, chunk[:-1])
    for x, y in batches:
        assert x.shape == y.shape and torch.equal(x[:, 1:], y[:, :-1])


def test_ordered_ext_len_prefix():
    data = stream()
    it = LMOrderedIterator(data, 2, 5, ext_len=3)
    batches = list(it)
    assert batches[0][0].size(1) == 5  # nothing before the start
    for (x, y), i in zip(batches[1:], range(5, 10**6, 5)):
        assert x.size(1) == 3 + y.size(1)
        assert torch.equal(x[:, 3:], it.data[:, i:i + y.size(1)])
        assert torch.equal(x[:, :3], it.data[:, i - 3:i])


def test_ordered_state_dict_resume():
    data = stream(400)
    it = LMOrderedIterator(data, 3, 6)
    gen = iter(it)
    for _ in range(4):
        next(gen)
    state = it.state_dict()
    rest = list(gen)
    resumed = LMOrderedIterator(data, 3, 6)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest) > 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, again))
    assert len(list(it)) == len(it)  # after a finished epoch the next one starts from 0
    assert torch.equal(next(iter(LMOrderedIterator(data, 3, 6, start=state["pos"])))[1], rest[0][1])
    with pytest.raises(ValueError):
        LMOrderedIterator(data, 4, 6).load_state_dict(state)
    # an evaluation that stops early leaves the position; start=0 gives a fresh pass
    first = next(iter(it))
    assert torch.equal(next(iter(it))[1], list(LMOrderedIterator(data, 3, 6))[1][1])
    assert torch.equal(next(it.get_fixlen_iter(start=0))[1], first[1])


def test_sharding_reproduces_single_process_rows():
    data = stream(500)
    full = list(LMOrderedIterator(data, 6, 8, ext_len=2))
    shards = [list(LMOrderedIterator(data, 6, 8, ext_len=2, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(full)
    for k, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([shards[0][k][0], shards[1][k][0]]), x)
        assert torch.equal(torch.cat([shards[0][k][1], shards[1][k][1]]), y)
    with pytest.raises(ValueError, match="divisible"):
        LMOrderedIterator(data, 5, 8, world_size=2)


@pytest.mark.parametrize("make_rng", [lambda: np.random.default_rng(7),
                                      lambda: torch.Generator().manual_seed(7)])
def test_varlen_bounds_and_determinism(make_rng):
    data = stream(20000)
    T, std, min_len, dev = 20, 5, 5, 3

    def lengths():
        it = LMOrderedIterator(data, 2, T)
        return [y.size(1) for _, y in it.get_varlen_iter(std=std, min_len=min_len,
                                                          max_deviation=dev, rng=make_rng())]

    a = lengths()
    assert a == lengths()
    assert sum(a) == 20000 // 2 - 1  # the batches tile every row
    assert all(min_len <= n <= T + dev * std for n in a[:-1]) and 1 <= a[-1] <= T + dev * std
    assert len(set(a)) > 3 and min(a[:-1]) < T / 2 + std  # lengths vary; half-length draws occur


def test_batches_do_not_alias_the_corpus():
    data = stream()
    x, y = next(iter(LMOrderedIterator(data, 1, 5)))
    x.zero_()
    assert data[1] == 1


# ---- getdata.sh ----

def test_getdata_syntax():
    subprocess.run(["bash", "-n", str(ROOT / "getdata.sh")], check=True)


def _zip_bytes(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _tgz(path, files):
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "unzip", "tar")),
                    reason="needs bash, unzip and tar")
def test_getdata_with_fake_downloads(tmp_path):
    """Run getdata.sh from another directory with a fake wget serving local files."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "getdata.sh", repo / "getdata.sh")
    (repo / "pytorch").symlink_to(ROOT / "pytorch")
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "wikitext-2-v1.zip").write_bytes(_zip_bytes(
        {f"wikitext-2/wiki.{s}.tokens": f" {s} words \n" for s in ("train", "valid", "test")}))
    ptb = "./simple-examples/data/ptb"
    _tgz(srv / "simple-examples.tgz", {
        **{f"{ptb}.{s}.txt": f" {s} w \n" for s in ("train", "valid", "test")},
        **{f"{ptb}.char.{s}.txt": f"{s[0]} _ c\n" for s in ("train", "valid", "test")}})
    lm = "1-billion-word-language-modeling-benchmark-r13output"
    _tgz(srv / f"{lm}.tar.gz", {
        f"{lm}/training-monolingual.tokenized.shuffled/news.en-00001-of-00100": "the cat\n",
        f"{lm}/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050": "the\n"})
    (srv / "1b_word_vocab.txt").write_text("<S>\n<UNK>\nthe\ncat\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "downloads.log"
    # fake wget: `wget ... -O DEST URL` copies srv/<basename of URL> to DEST
    (bin_dir / "wget").write_text(
        "#!/usr/bin/env bash\nwhile [[ $# -gt 0 ]]; do case $1 in -O) dest=$2; shift 2;; "
        "-*) shift;; *) url=$1; shift;; esac; done\n"
        f"echo \"$url\" >> {log}\ncp \"{srv}/$(basename \"$url\")\" \"$dest\"\n")
    (bin_dir / "wget").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable}
    for _ in range(2):  # the second run must find everything ready
        subprocess.run(["bash", str(repo / "getdata.sh"), "wt2", "ptb", "lm1b"], check=True,
                       cwd=tmp_path, env=env, capture_output=True)
    urls = log.read_text().split()
    assert len(urls) == 4 and any("s3.amazonaws.com" in u for u in urls)  # no re-downloads
    data = repo / "data"
    assert (data / "wikitext-2" / "valid.txt").read_text() == " valid words \n"
    assert get_lm_corpus(data / "penn", "ptb").vocab.idx2sym[:2] == ["<eos>", "w"]
    assert get_lm_corpus(data / "pennchar", "ptb").valid.numel() == 4
    lm1b = get_lm_corpus(data / "one-billion-words", "lm1b")
    assert len(lm1b.train) == 1 and lm1b.vocab.get_symbols(lm1b.test) == ["<S>", "the", "<S>"]
    bad = subprocess.run(["bash", str(repo / "getdata.sh"), "nope"], env=env, capture_output=True)
    assert bad.returncode != 0 and b"unknown corpus" in bad.stderr
