"""The one results-row schema shared by every train/eval run (LM and algorithmic tasks).

Runs append one row per (run, split, metric set) to `experiments/results/<family>.csv`
(family = lm or synthetic) with `append_result`; `rmt.tools.compare` reads them back with
`read_results` and matches them to the paper's tables in `experiments/paper/`.
Column meanings are listed in `experiments/results/README.md`.
"""
from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import math
import os
import pathlib
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pandas as pd

from rmt import REPO_ROOT

RESULT_COLUMNS: list[str] = [
    "run_id", "date", "git_commit", "command", "device", "torch_version", "scale",
    "task", "model_kind", "seed",
    "n_layer", "d_model", "n_head", "d_head", "d_inner",
    "tgt_len", "eval_tgt_len", "mem_len", "num_mem_tokens", "mem_backprop_depth",
    "mem_at_end", "read_mem_from_cache", "n_segments",
    "batch_size", "max_step", "lr",
    "split", "metric_name", "metric_value", "loss", "ppl", "bpc",
    "acc_tf", "acc_greedy", "exact_match",
    "tokens_per_s", "peak_mem_mb", "train_time_s", "run_dir", "config_json",
]

# Per-group accuracies of one run (retrieval: by queried pair), one row per group, joined to the run's row
# by run_id. They live in groups/ beside the results CSV, so readers of the results directory never see them.
GROUP_COLUMNS: list[str] = [
    "run_id", "date", "git_commit", "task", "model_kind", "seed", "n_segments", "split",
    "group_name", "group", "n_samples", "acc_tf", "acc_greedy",
]

SCALES = ("paper", "cpu-preset", "custom", "smoke")  # conventional values of the free-string `scale` column


def model_kind(num_mem_tokens: int, mem_len: int, mem_at_end: bool, causal: bool = True,
               memory: str = "tokens") -> str:
    """Name the architecture the way the paper's tables do.

    rmt+txl: memory tokens and a TXL cache; rmt: read+write memory (mem_at_end);
    mt: memory tokens at the start only; txl: cache only; baseline: neither. The bidirectional
    encoder (causal False): rmt-encoder with memory, encoder without. armt: associative memory
    (memory "associative", written through memory tokens).
    """
    m, l = int(num_mem_tokens or 0), int(mem_len or 0)
    if memory == "associative" and m > 0:
        return "armt"
    if not causal:
        return "rmt-encoder" if m > 0 else "encoder"
    if m > 0 and l > 0:
        return "rmt+txl"
    if m > 0:
        return "rmt" if mem_at_end else "mt"
    return "txl" if l > 0 else "baseline"


def git_commit(root: pathlib.Path) -> str:
    """HEAD of the checkout at `root`, with "+dirty" when tracked code (pytorch/, scripts/) differs from it.

    A row must name code that can rerun its command: a run started on uncommitted changes says so.
    "" outside a git checkout.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = commit and git("status", "--porcelain", "--untracked-files=no", "--", "pytorch", "scripts")
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit + ("+dirty" if dirty else "")


def run_metadata(device: str = "cpu", argv: list[str] | None = None) -> dict[str, str]:
    """The provenance columns of a row: date, git_commit, command, device, torch_version."""
    import torch  # local import: reading results must not need torch

    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "git_commit": git_commit(REPO_ROOT),
        # The run scripts export the command the user typed; otherwise the Python command line.
        "command": portable_command(os.environ.get("RMT_COMMAND") or (argv if argv is not None else sys.argv)),
        "device": device,
        "torch_version": torch.__version__,
    }


def portable_command(command: str | list[str]) -> str:
    """The command as it reruns from the repository root of any checkout: paths inside this one
    made relative, and a module's file (`python -m` puts it in argv[0]) given as `python3 -m`."""
    if isinstance(command, str):
        return command.replace(f"{REPO_ROOT}/", "")
    words = list(command)
    source = REPO_ROOT / "pytorch"
    if words and words[0].endswith(".py") and pathlib.Path(words[0]).resolve().is_relative_to(source):
        module = pathlib.Path(words[0]).resolve().relative_to(source).with_suffix("")
        words[:1] = ["python3", "-m", ".".join(module.parts)]
    return " ".join(words).replace(f"{REPO_ROOT}/", "")


class TestResult(NamedTuple):
    """A family's test: the metrics to log, the columns they add to the results row, per-group
    rows (GROUP_COLUMNS; retrieval's accuracy by queried pair; empty for most) and a note to log."""
    metrics: dict
    row: dict
    groups: list
    note: str = ""


def result_row(flags: dict, model_cfg, device: str, run_dir, task: str, split: str, *, n_segments=None,
               max_step=None, train_time_s: float = math.nan, tokens_per_s: float = 0.0, peak_mem_mb: float = 0.0,
               **metrics) -> dict:
    """THE results row: provenance, the run's flags (`flags`, as in its config.json) and model,
    and the measured `metrics` (metric_name, metric_value, loss, ppl | bpc | acc_*...).

    `max_step` is the number of steps actually run (a time limit may stop a run early); it
    defaults to the flag."""
    get = flags.get
    return {
        **run_metadata(device), "run_id": run_dir.name if run_dir else "", "scale": get("scale"),
        "task": task, "model_kind": model_kind(model_cfg.num_mem_tokens, model_cfg.mem_len, model_cfg.mem_at_end,
                                                 model_cfg.causal, getattr(model_cfg, "memory", "tokens")),
        "seed": get("seed"), "n_layer": model_cfg.n_layer, "d_model": model_cfg.d_model, "n_head": model_cfg.n_head,
        "d_head": model_cfg.d_head, "d_inner": model_cfg.d_inner, "tgt_len": get("tgt_len"),
        "eval_tgt_len": get("eval_tgt_len"), "mem_len": model_cfg.mem_len, "num_mem_tokens": model_cfg.num_mem_tokens,
        "mem_backprop_depth": get("mem_backprop_depth"), "mem_at_end": model_cfg.mem_at_end,
        "read_mem_from_cache": model_cfg.read_mem_from_cache, "n_segments": n_segments,
        "batch_size": get("batch_size"), "max_step": get("max_step") if max_step is None else max_step,
        "lr": get("lr"), "split": split, "tokens_per_s": round(tokens_per_s, 1), "peak_mem_mb": round(peak_mem_mb, 1),
        "train_time_s": round(train_time_s, 1), "run_dir": str(run_dir or ""), "config_json": dict(flags), **metrics,
    }


def _cell(value: object) -> str:
    """Render one value as a CSV cell: None/NaN empty, dict/list as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def append_result(csv_path: str | os.PathLike, row: dict, columns: list[str] = RESULT_COLUMNS) -> None:
    """Append one row to `csv_path`, creating parent dirs and the header if needed.

    Missing columns are left empty; unknown keys raise ValueError. The write happens
    under an exclusive fcntl lock, as one write call, so concurrent runs never interleave.
    `columns` is the file's schema (RESULT_COLUMNS, or GROUP_COLUMNS for a per-group file).
    """
    unknown = sorted(set(row) - set(columns))
    if unknown:
        raise ValueError(f"unknown result columns: {', '.join(unknown)}")
    path = pathlib.Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([_cell(row.get(c)) for c in columns])
    line = buf.getvalue()
    with open(path, "a+b") as f:
        fd = f.fileno()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                header = io.StringIO()
                csv.writer(header, lineterminator="\n").writerow(columns)
                line = header.getvalue() + line
            else:
                f.seek(0)
                existing = next(csv.reader([f.readline().decode("utf-8", errors="replace")]), [])
                if existing != columns:
                    raise ValueError(f"{path} has a different header; schema mismatch: {existing}")
                size = _whole_rows(f, size)
            _write_all(fd, line.encode("utf-8"), size)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def check_target(csv_path: str | os.PathLike, columns: list[str] = RESULT_COLUMNS) -> None:
    """Refuse, before a run starts, a results file its row could not be appended to at the end:
    a directory, a file under a file, an unwritable place, or a file with another header (a
    ValueError with one line). Writes nothing."""
    path = pathlib.Path(csv_path)
    flag = f"the results file {path}"
    if path.is_dir():
        raise ValueError(f"{flag} is a directory: give a .csv file (--results_csv)")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag} cannot be created: {ancestor} is a file, not a directory")
    if not path.exists():
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} cannot be created: {ancestor} is not writable (give another --results_csv)")
        return
    if not os.access(path, os.R_OK | os.W_OK):
        raise ValueError(f"{flag} is not writable (read-only?): make it writable or give another --results_csv")
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace")
    existing = next(csv.reader([first]), []) if first else []
    if first and existing != columns:
        shown = ",".join(existing)[:80]
        raise ValueError(f"{flag} is not a results CSV of this version (its header starts {shown!r}): "
                         "move it away or give another --results_csv")


def _whole_rows(f, size: int) -> int:
    """The size of the file up to its last complete row: a row cut short by a crash or a full disk
    (no final newline) is dropped, so the next row is never glued to it."""
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return size
    f.seek(0)
    data = f.read()
    keep = data.rfind(b"\n") + 1
    os.ftruncate(f.fileno(), keep)
    print(f"warning: {f.name}: dropped an incomplete last row ({size - keep} bytes)", file=sys.stderr)
    return keep


def _write_all(fd: int, data: bytes, size: int) -> None:
    """Append data at `size` in full, or leave the file as it was (a full disk, say)."""
    try:
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], size + written)
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, size)
        raise


def groups_csv(results_csv: str | os.PathLike) -> pathlib.Path:
    """Where the per-group rows of the runs recorded in `results_csv` go: groups/<same name>."""
    path = pathlib.Path(results_csv)
    return path.parent / "groups" / path.name


def read_results(path_or_dir: str | os.PathLike) -> pd.DataFrame:
    """Read one results CSV, or every *.csv in a directory, into one DataFrame.

    Always has every RESULT_COLUMNS column (extra columns are kept); empty if nothing exists.
    """
    path = pathlib.Path(path_or_dir)
    files = sorted(path.glob("*.csv")) if path.is_dir() else ([path] if path.exists() else [])
    frames = [_read_checked(f) for f in files if f.stat().st_size > 0]
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)
    for c in RESULT_COLUMNS:
        if c not in df.columns:
            df[c] = pd.NA
    extra = [c for c in df.columns if c not in RESULT_COLUMNS]
    return df[RESULT_COLUMNS + extra]


def _read_checked(path: pathlib.Path) -> pd.DataFrame:
    """One results CSV; ValueError (one line) when a row's width differs from the header's or a
    metric is not a number, instead of silently shifted or coerced cells."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable results CSV ({e})") from None
    header = rows[0] if rows else []
    for number, row in enumerate(rows[1:], start=2):
        if row and len(row) != len(header):  # a blank line is harmless
            raise ValueError(f"{path}: line {number} has {len(row)} fields, the header {len(header)}; "
                             "repair or remove that line")
    df = pd.read_csv(path)  # the widths are right now, so no cell can shift
    for column in ("metric_value", "loss", "ppl", "bpc", "acc_tf", "acc_greedy", "exact_match"):
        if column not in df:
            continue
        # text in a number column (read as object, or as pandas 3's string dtype), and a row that
        # names its metric without a measurement of it (empty, NaN or infinite)
        values = pd.to_numeric(df[column], errors="coerce")
        bad = df[column].notna() & values.isna()
        if column == "metric_value" and "metric_name" in df:
            bad |= df["metric_name"].notna() & ~np.isfinite(values.astype(float))
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2
            cell = df[column][bad].iloc[0]
            shown = repr(cell) if isinstance(cell, str) else str(float(cell))  # numpy 2 reprs np.float64(nan)
            raise ValueError(f"{path}: line {line}: {column} is {shown}, not a "
                             f"{'finite ' if column == 'metric_value' else ''}number")
    return df


def show(csv_path: str | os.PathLike, run_ids: list[str]) -> str:
    """A Markdown table of the test metrics of the given runs, in the given order."""
    df = read_results(csv_path)
    df = df[df["run_id"].isin(run_ids)].drop_duplicates("run_id", keep="last").set_index("run_id")
    cols = ["task", "model_kind", "n_segments", "num_mem_tokens", "mem_len", "acc_tf", "acc_greedy", "exact_match",
            "train_time_s"]
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for run in run_ids:
        if run not in df.index:
            lines.append(f"| {run} | (no results row) |")
            continue
        r = df.loc[run]
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) and c.startswith(("acc", "exact")) else str(r[c])
                 for c in cols]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rmt.results", description="Show results rows.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("show", help="print the test metrics of some runs side by side")
    p.add_argument("csv")
    p.add_argument("run_ids", nargs="+")
    args = parser.parse_args()
    print(show(args.csv, args.run_ids))
