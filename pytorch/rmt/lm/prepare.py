"""Turn raw text into train/valid/test.txt corpora: the enwik8/text8 dumps (called by
getdata.sh), or any plain UTF-8 files of yours.

    python3 -m rmt.lm.prepare enwik8 data/enwik8/enwik8.zip data/enwik8
    python3 -m rmt.lm.prepare text8 data/text8/text8.zip data/text8
    python3 -m rmt.lm.prepare text book1.txt book2.txt --level char \\
        --split 0.9 0.05 0.05 --out data/books-char      # then train with --dataset enwik8
    python3 -m rmt.lm.prepare text book1.txt --level word --out data/books-word
                                                     # then train with --dataset wt2

enwik8 and text8: the last `test_size` units are test, the `valid_size` before them valid,
the rest train (90M/5M/5M for both corpora). Output formats, as in the TXL preparation:
- enwik8: every byte as its decimal value, space-separated; a newline byte
  (10) is written as a real line break, so the corpus later drops it.
- text8: every character space-separated, with a space written as `_`;
  whitespace at the two ends of each split is stripped first.

text: the files are read in the given order and joined (each ending in a newline), then cut
into consecutive train / valid / test parts by the --split fractions. The output directory
is built beside --out and renamed into place only when complete, with a meta.json that
names the corpus, the sources and their SHA-256, and the --dataset to train it with.
- --level char: the UTF-8 bytes in the enwik8 format, cut at exact byte positions. Unlike
  enwik8's preparation a newline stays a token (`10`, then a line break for readability),
  so text generated from the corpus keeps its line breaks. Train with --dataset enwik8.
- --level word: WikiText format, one line per source line, tokens split on whitespace, cut
  at line boundaries (the loader ends every line with <eos>). Tokens that train does not
  contain at least --min_count times become <unk> in every split, as in WikiText, so the
  vocabulary is the training split's (plus <unk>). Train with --dataset wt2, whose loader
  counts all three splits: <unk> then has an id even when only valid or test needed it.
The same files and flags always give the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator

from rmt.atomic import atomic_write
from rmt.errors import exits_on_error

DEFAULT_SPLIT_SIZE = 5_000_000
CHUNK = 1 << 20  # join this many units at a time to keep memory flat on 100 MB inputs
_BYTE_TOKENS = [str(b) if b != ord("\n") else "\n" for b in range(256)]
SPLITS = ("train", "valid", "test")
LEVELS = {"char": "enwik8", "word": "wt2"}  # level -> the --dataset whose loader reads it
UNK = "<unk>"
META = "meta.json"


class PrepareError(ValueError):
    """Input that cannot become a corpus; the message names the problem and what to do."""


def read_raw(path: str, member: str) -> bytes:
    """The raw bytes of `path`, or of `member` (else its only entry) when it is a zip archive."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            return f.read()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if member not in names:
            if len(names) != 1:
                raise ValueError(f"{path} has no entry {member!r} (entries: {names})")
            member = names[0]
        return zf.read(member)


def split_sizes(n: int, valid_size: int, test_size: int) -> tuple[slice, slice, slice]:
    """Slices for (train, valid, test): test is the tail, valid just before it."""
    if valid_size < 0 or test_size < 0 or valid_size + test_size >= n:
        raise ValueError(f"cannot take {valid_size} + {test_size} units for valid/test "
                         f"from {n}: nothing would be left for train")
    n_train = n - valid_size - test_size
    return slice(0, n_train), slice(n_train, n_train + valid_size), slice(n_train + valid_size, n)


def enwik8_chunks(data: bytes) -> Iterator[str]:
    """Space-separated decimal byte values, produced chunk by chunk."""
    for k in range(0, len(data), CHUNK):
        text = " ".join(map(_BYTE_TOKENS.__getitem__, data[k:k + CHUNK]))
        yield text if k == 0 else " " + text


def text8_chunks(text: str) -> Iterator[str]:
    """Space-separated characters with spaces shown as `_`, produced chunk by chunk."""
    text = text.strip()
    for k in range(0, len(text), CHUNK):
        out = " ".join(text[k:k + CHUNK].replace(" ", "_"))
        yield out if k == 0 else " " + out


def prepare(dataset: str, raw_path: str, out_dir: str, valid_size: int = DEFAULT_SPLIT_SIZE,
            test_size: int = DEFAULT_SPLIT_SIZE) -> dict[str, int]:
    """Write {train,valid,test}.txt for enwik8 or text8; returns the units in each split."""
    if dataset not in ("enwik8", "text8"):
        raise ValueError(f"unknown dataset {dataset!r}; expected enwik8 or text8")
    raw = read_raw(raw_path, member=dataset)
    data: bytes | str = raw if dataset == "enwik8" else raw.decode("utf-8")
    to_chunks = enwik8_chunks if dataset == "enwik8" else text8_chunks
    os.makedirs(out_dir, exist_ok=True)
    sizes = {}
    parts = split_sizes(len(data), valid_size, test_size)
    for name, part in zip(("train", "valid", "test"), parts):
        chunks = to_chunks(data[part])  # a half-written split would make getdata.sh think it ready
        atomic_write(os.path.join(out_dir, f"{name}.txt"), lambda f: f.writelines(chunks), text=True,
                     encoding="utf-8", newline="\n")
        sizes[name] = part.stop - part.start
    return sizes


# ---- any text -> a corpus ----------------------------------------------------------------------

def read_text_sources(paths: list[str]) -> tuple[bytes, list[dict]]:
    """The files joined in order (each ending in a newline) and a record of each source."""
    if not paths:
        raise PrepareError("no input files given")
    joined, sources = [], []
    for path in paths:
        p = pathlib.Path(path)
        if not p.exists():
            raise PrepareError(f"{path}: no such file")
        if not p.is_file():
            raise PrepareError(f"{path} is not a regular file")
        raw = p.read_bytes()
        if not raw.strip():
            raise PrepareError(f"{path} is empty (no text to learn from)")
        if b"\x00" in raw:
            raise PrepareError(f"{path} holds NUL bytes: a binary file, not text; give plain UTF-8 text")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrepareError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}); "
                               "convert it first, e.g. iconv -t UTF-8") from None
        sources.append({"path": path, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
        joined.append(raw if raw.endswith(b"\n") else raw + b"\n")
    return b"".join(joined), sources


def check_split(split: list[float]) -> tuple[float, float, float]:
    if len(split) != 3:
        raise PrepareError(f"--split takes three fractions (train valid test), got {len(split)}")
    if any(not 0 <= f <= 1 for f in split):
        raise PrepareError(f"--split fractions must lie in [0, 1], got {' '.join(map(str, split))}")
    if abs(sum(split) - 1) > 1e-6:
        raise PrepareError(f"--split fractions must sum to 1, got {' + '.join(map(str, split))} = {sum(split):g}")
    return tuple(split)


def _cut_points(total: int, split: tuple[float, float, float]) -> tuple[int, int]:
    """Where valid and test start, in units: rounded fractions of the total."""
    return round(total * split[0]), round(total * (split[0] + split[1]))


def _check_nonempty(sizes: dict[str, int], unit: str, total: int) -> None:
    for name, n in sizes.items():
        if n == 0:
            raise PrepareError(f"the {name} split would hold no {unit} ({total:,} {unit} in all); "
                               f"give more text or a larger {name} fraction in --split")


def char_splits(data: bytes, split) -> dict[str, bytes]:
    a, b = _cut_points(len(data), split)
    parts = {"train": data[:a], "valid": data[a:b], "test": data[b:]}
    _check_nonempty({k: len(v) for k, v in parts.items()}, "bytes", len(data))
    return parts


def char_lines(data: bytes) -> Iterator[str]:
    """The enwik8 format, keeping newlines: decimal bytes, and a newline byte as `10` closing its line."""
    line = []
    for byte in data:
        line.append(str(byte))
        if byte == 10:
            yield " ".join(line) + "\n"
            line = []
    if line:
        yield " ".join(line) + "\n"


def word_splits(data: bytes, split, min_count: int) -> tuple[dict[str, list[list[str]]], dict]:
    """Lines of tokens per split, cut at line boundaries, with out-of-vocabulary tokens as <unk>."""
    lines = [line.split() for line in data.decode("utf-8").split("\n")[:-1]]  # the text ends in "\n"
    units = [len(t) + 1 for t in lines]  # + the <eos> the loader adds to every line
    total = sum(units)
    a, b = _cut_points(total, split)
    bounds, seen = [], 0  # line index where valid and test start: the first line starting at or after a cut
    for i, n in enumerate(units):
        while len(bounds) < 2 and seen >= (a, b)[len(bounds)]:
            bounds.append(i)
        seen += n
    bounds += [len(lines)] * (2 - len(bounds))
    parts = {"train": lines[:bounds[0]], "valid": lines[bounds[0]:bounds[1]], "test": lines[bounds[1]:]}
    _check_nonempty({k: sum(len(t) + 1 for t in v) for k, v in parts.items()}, "tokens (lines)", total)
    counts = Counter(tok for line in parts["train"] for tok in line)
    keep = {tok for tok, n in counts.items() if n >= min_count}
    unk = {}
    for name, part in parts.items():
        n_unk = 0
        for line in part:
            for i, tok in enumerate(line):
                if tok not in keep and tok != UNK:
                    line[i] = UNK
                    n_unk += 1
        unk[name] = n_unk
    vocab = {tok for part in parts.values() for line in part for tok in line}
    return parts, {"replaced_by_unk": unk, "vocab_size": len(vocab) + 1}  # + <eos>


def _install_dir(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Put the finished directory `tmp` at `out`; an earlier corpus there is replaced only now."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def prepare_text(paths: list[str], out_dir: str | os.PathLike, level: str, split=(0.9, 0.05, 0.05),
                 name: str | None = None, min_count: int = 1) -> dict:
    """Write out_dir/{train,valid,test}.txt and meta.json from plain UTF-8 files; returns the meta.

    Raises PrepareError on bad input, before anything is written."""
    if level not in LEVELS:
        raise PrepareError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if min_count < 1:
        raise PrepareError(f"--min_count must be at least 1, got {min_count}")
    split = check_split(list(split))
    out = pathlib.Path(out_dir)
    if out.exists() and not (out.is_dir() and ((out / META).is_file() or not any(out.iterdir()))):
        raise PrepareError(f"{out} exists and is not a corpus made by this command; choose another --out")
    data, sources = read_text_sources(list(paths))
    if level == "char":
        parts = char_splits(data, split)
        files = {k: char_lines(v) for k, v in parts.items()}
        units, extra = {k: len(v) for k, v in parts.items()}, {"vocab_size": len(set(data))}
    else:
        parts, extra = word_splits(data, split, min_count)
        files = {k: (" ".join(line) + "\n" for line in v) for k, v in parts.items()}
        units = {k: sum(len(t) + 1 for t in v) for k, v in parts.items()}
        extra["min_count"] = min_count
    meta = {"name": name or out.resolve().name, "level": level, "dataset": LEVELS[level],
            "unit": "bytes" if level == "char" else "tokens (one <eos> per line included)",
            "split": list(split), "units": units, **extra, "sources": sources}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for split_name, lines in files.items():
            with open(tmp / f"{split_name}.txt", "w", encoding="utf-8", newline="\n") as f:
                f.writelines(lines)
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        _install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(data_dir: str | os.PathLike) -> dict:
    """The meta.json that `prepare text` left in a corpus directory, or {} for other corpora."""
    try:
        meta = json.loads((pathlib.Path(data_dir) / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmt.lm.prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    for dataset, unit in (("enwik8", "bytes"), ("text8", "characters")):
        p = sub.add_parser(dataset, help=f"the {dataset} dump (getdata.sh calls this)")
        p.add_argument("raw_file", help="the downloaded .zip or the extracted file")
        p.add_argument("out_dir", help="directory for train.txt, valid.txt, test.txt")
        p.add_argument("--valid_size", type=int, default=DEFAULT_SPLIT_SIZE, help=f"{unit} in valid")
        p.add_argument("--test_size", type=int, default=DEFAULT_SPLIT_SIZE, help=f"{unit} in test (from the end)")
    p = sub.add_parser("text", help="any plain UTF-8 files, at the byte (char) or word level")
    p.add_argument("files", nargs="+", help="UTF-8 text files, joined in this order")
    p.add_argument("--level", choices=list(LEVELS), required=True,
                   help="char: bytes in the enwik8 format (--dataset enwik8); word: WikiText format (--dataset wt2)")
    p.add_argument("--split", type=float, nargs=3, default=[0.9, 0.05, 0.05], metavar=("TRAIN", "VALID", "TEST"),
                   help="fractions of the text for train, valid and test, in that order (default 0.9 0.05 0.05)")
    p.add_argument("--out", required=True, help="the corpus directory (pass it to training as --data)")
    p.add_argument("--name", default=None, help="corpus name in results rows (default: the --out directory's name)")
    p.add_argument("--min_count", type=int, default=1,
                   help="word level: tokens seen fewer times in train become <unk> (default 1)")
    args = parser.parse_args(argv)
    if args.source != "text":
        sizes = prepare(args.source, args.raw_file, args.out_dir, args.valid_size, args.test_size)
        print(" ".join(f"{name}={n}" for name, n in sizes.items()))
        return 0
    try:
        meta = prepare_text(args.files, args.out, args.level, args.split, args.name, args.min_count)
    except (PrepareError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    units = " ".join(f"{k}={v:,}" for k, v in meta["units"].items())
    print(f"{args.out}: corpus {meta['name']!r}, {args.level} level, {units} {meta['unit']}, "
          f"vocabulary {meta['vocab_size']:,}; train with --dataset {meta['dataset']} --data {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
