"""Turn the raw enwik8/text8 dumps into train/valid/test.txt (called by getdata.sh).

    PYTHONPATH=pytorch python -m rmt.data.prepare enwik8 data/enwik8/enwik8.zip data/enwik8
    PYTHONPATH=pytorch python -m rmt.data.prepare text8 data/text8/text8.zip data/text8

The last `test_size` units are test, the `valid_size` before them valid, the rest
train (90M/5M/5M for both corpora). Output formats, as in the TXL preparation:
- enwik8: every byte as its decimal value, space-separated; a newline byte
  (10) is written as a real line break, so the corpus later drops it.
- text8: every character space-separated, with a space written as `_`;
  whitespace at the two ends of each split is stripped first.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import zipfile
from collections.abc import Iterator

DEFAULT_SPLIT_SIZE = 5_000_000
CHUNK = 1 << 20  # join this many units at a time to keep memory flat on 100 MB inputs
_BYTE_TOKENS = [str(b) if b != ord("\n") else "\n" for b in range(256)]


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


def _write_atomic(path: str, chunks: Iterator[str]) -> None:
    # A half-written file would make getdata.sh think the split is ready.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for chunk in chunks:
                f.write(chunk)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


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
        _write_atomic(os.path.join(out_dir, f"{name}.txt"), to_chunks(data[part]))
        sizes[name] = part.stop - part.start
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["enwik8", "text8"])
    parser.add_argument("raw_file", help="the downloaded .zip or the extracted file")
    parser.add_argument("out_dir", help="directory for train.txt, valid.txt, test.txt")
    parser.add_argument("--valid_size", type=int, default=DEFAULT_SPLIT_SIZE,
                        help="units (bytes for enwik8, characters for text8) in valid")
    parser.add_argument("--test_size", type=int, default=DEFAULT_SPLIT_SIZE,
                        help="units in test (taken from the very end)")
    args = parser.parse_args(argv)
    sizes = prepare(args.dataset, args.raw_file, args.out_dir, args.valid_size, args.test_size)
    print(" ".join(f"{name}={n}" for name, n in sizes.items()))


if __name__ == "__main__":
    main()
