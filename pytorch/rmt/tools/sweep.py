"""Run a grid of training runs (algorithmic tasks or language modelling) one after another, resumably.

    bash scripts/sweep.sh experiments/grids/copy_cpu.json [--dry-run] [--results CSV] [--shard I/N]

A grid file (JSON) names a run script and the axes to cross; every combination becomes one
`bash SCRIPT train ...` run with a deterministic name, passed as --run_name (the results row's
run_id), and --results_csv pointing at the grid's CSV. A run whose run_id already has a row in
that CSV is skipped, so an interrupted sweep continues where it stopped when started again.

    key           meaning
    name          part of every run name (default: the file name without .json)
    script        run script, relative to the repository root ("scripts/copy.sh")
    env           optional {"VAR": "value"} added to the environment of every run (RMT_PRESET)
    flags         optional list of fixed extra flags for every run (["--max_step", "3000"])
    results_csv   optional results CSV, relative to the repository root
                  (default experiments/results/synthetic.csv; --results overrides it)
    kinds         baseline (no memory), txl (--mem_len MEM), rmt (--num_mem_tokens MEM), rmt+txl
                  (--num_mem_tokens MEM and a cache of --mem_len CACHE) or armt (--num_mem_tokens MEM
                  --memory associative: associative memory); kinds without a cache get
                  --mem_len 0, so a script whose recipe has a cache (the LM base scripts) runs without it
    memory        optional default memory sizes, for tgt_len entries without their own
    tgt_len       list of segment lengths: an int, or {"tgt_len": 6, "memory": [6], "curriculum": [12],
                  "kinds": [...], "eval_tgt_len": 6, "depth": [0, 2], "cache": 10, "flags": [...]}
                  (all but tgt_len optional; eval_tgt_len defaults to tgt_len, curriculum to none,
                  kinds and memory to the grid's; depth is an axis of --mem_backprop_depth values for
                  the kinds with memory tokens; cache is rmt+txl's --mem_len)
    seeds         list of --seed values
    variants      optional {"label": [flags...]}: an axis of named flag sets, each run once per label
                  ("-<label>" in its name), e.g. {"read_emb": ["--read_memory_emb"]}

Run names are sweep-<name>-<kind>-t<tgt_len>-m<mem>[-c<cache>][-d<depth>][-<variant>]-s<seed> (baseline: m0, once
per tgt_len; -c for rmt+txl, -d where the entry has a depth axis).
Runs are ordered seed by seed, so a partly finished sweep already covers every configuration.
`--shard I/N` takes every N-th run from run I, counted from 0 (0/2 and 1/2 split a grid in two):
N sweeps started side by side (one per core, with OMP_NUM_THREADS=1) share a grid without
running anything twice. Do not edit a run script in place while a sweep runs: bash reads a
script as it executes it (replace the file instead).
The output of each run goes to runs/sweeps/<name>/<run name>.log (tail -f it to watch a run).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import pathlib
import shlex
import subprocess
import sys
import time
from typing import NamedTuple

import pandas as pd
from tqdm import tqdm

from rmt import REPO_ROOT
from rmt.errors import exits_on_error
from rmt.results import check_target, read_results

DEFAULT_CSV = "experiments/results/synthetic.csv"
MEMORY_FLAG = {"baseline": None, "txl": "--mem_len", "rmt": "--num_mem_tokens", "rmt+txl": "--num_mem_tokens",
               "armt": "--num_mem_tokens"}
TOKEN_KINDS = ("rmt", "rmt+txl", "armt")  # kinds with memory tokens: the ones a depth axis applies to
GRID_KEYS = {"name", "script", "env", "flags", "results_csv", "kinds", "memory", "tgt_len", "seeds", "variants"}
ENTRY_KEYS = {"tgt_len", "eval_tgt_len", "memory", "curriculum", "kinds", "flags", "depth", "cache"}
# Set by the sweep for every run; a grid's fixed flags may not set them too.
RESERVED = {"--tgt_len", "--eval_tgt_len", "--curriculum", "--mem_len", "--num_mem_tokens", "--seed",
            "--run_name", "--results_csv", "--no_results", "--eval_only"}
PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
METRICS = ("acc_tf", "acc_greedy", "exact_match")  # shown for every finished run, then metric_name if other


class GridError(ValueError):
    """A grid file that cannot be expanded; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    kind: str
    tgt_len: int
    memory: int  # 0 for baseline
    seed: int
    argv: tuple[str, ...]  # the whole command: bash SCRIPT train FLAGS...


@dataclasses.dataclass
class Sweep:
    name: str
    runs: list[Run]
    env: dict[str, str]  # added to os.environ for every run
    results_csv: pathlib.Path


def _shown(path: pathlib.Path) -> str:
    """A path as passed to the scripts and printed: relative to the repository root when inside it."""
    path = pathlib.Path(os.path.abspath(path))
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _names(keys) -> str:
    """Keys for a one-line message: a key with a newline or other control character is quoted."""
    return ", ".join(k if k.isprintable() else repr(k) for k in keys)


def _int_list(value, where: str, allow_empty: bool = False, minimum: int = 1) -> list[int]:
    """A list of integers >= minimum (lengths, memory sizes, depths: 1; seeds: 0)."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
            or (not value and not allow_empty) or any(v < minimum for v in value):
        raise GridError(f"{where} must be a {'' if allow_empty else 'non-empty '}list of integers >= {minimum}, "
                        f"got {value!r}")
    return value


def _flags(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GridError(f"{where} must be a list of strings (argv words), got {value!r}")
    clash = sorted({v.split("=")[0] for v in value} & RESERVED)
    if clash:
        raise GridError(f"{where} sets {', '.join(clash)}, which the sweep sets itself; use the grid's axes")
    return value


def _kinds(value, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v in MEMORY_FLAG for v in value):
        raise GridError(f"{where} must be a non-empty list of {', '.join(MEMORY_FLAG)}, got {value!r}")
    return value


def expand(grid: dict, default_name: str = "grid", results_csv: str | os.PathLike | None = None) -> Sweep:
    """All runs of a grid (see the module docstring), in execution order; GridError on a bad grid."""
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise GridError(f"unknown grid keys: {_names(unknown)} (known: {', '.join(sorted(GRID_KEYS))})")
    for key in ("script", "kinds", "tgt_len", "seeds"):
        if key not in grid:
            raise GridError(f"the grid has no {key!r}")
    for key in ("script", "name", "results_csv"):
        if key in grid and not (isinstance(grid[key], str) and grid[key].strip() and grid[key].isprintable()):
            raise GridError(f"{key} must be a non-empty string, got {grid[key]!r}")
    name = str(grid.get("name") or default_name)
    if not PLAIN_NAME.match(name):  # it goes into every run's directory name
        raise GridError(f"name must be letters, digits, '.', '_' or '-' (it names run directories), got {name!r}")
    script = pathlib.Path(grid["script"])
    script = script if script.is_absolute() else REPO_ROOT / script
    if not script.is_file():
        raise GridError(f"script {grid['script']!r} not found (relative paths are from {REPO_ROOT})")
    env = grid.get("env", {})
    if not isinstance(env, dict):
        raise GridError(f"env must be an object of VAR: value, got {env!r}")
    csv = pathlib.Path(results_csv) if results_csv else REPO_ROOT / grid.get("results_csv", DEFAULT_CSV)
    fixed = _flags(grid.get("flags", []), "flags")
    kinds = _kinds(grid["kinds"], "kinds")
    memory = _int_list(grid["memory"], "memory") if "memory" in grid else None
    seeds = _int_list(grid["seeds"], "seeds", minimum=0)
    if not isinstance(grid["tgt_len"], list) or not grid["tgt_len"]:
        raise GridError(f"tgt_len must be a non-empty list, got {grid['tgt_len']!r}")

    entries = [_entry(e, f"tgt_len[{i}]", kinds, memory, fixed) for i, e in enumerate(grid["tgt_len"])]
    variants = _variants(grid.get("variants"))
    runs = [_run(name, entry, kind, mem, depth, seed, fixed, script, csv, variant)
            for seed in seeds for entry in entries for kind in entry.kinds
            for mem in ([0] if kind == "baseline" else entry.memory)  # baseline has no memory axis
            for depth in (entry.depths if entry.depths is not None and kind in TOKEN_KINDS else [None])
            for variant in variants]
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GridError(f"the grid names some runs twice (repeated tgt_len or memory?): {', '.join(dup[:3])}")
    return Sweep(name, runs, {k: str(v) for k, v in env.items()}, csv)


class Entry(NamedTuple):
    """One tgt_len entry of a grid, checked, with the top-level axes it inherits filled in."""
    spec: dict
    kinds: list[str]
    memory: list[int] | None
    curriculum: list[int]
    flags: list[str]
    depths: list[int] | None
    cache: int | None


def _entry(e, where: str, kinds: list[str], memory: list[int] | None, fixed: list[str]) -> Entry:
    e = {"tgt_len": e} if isinstance(e, int) and not isinstance(e, bool) else e
    if not isinstance(e, dict) or not isinstance(e.get("tgt_len"), int) or e["tgt_len"] <= 0:
        raise GridError(f"{where} must be a positive integer or an object with a positive integer 'tgt_len', "
                        f"got {e!r}")
    if set(e) - ENTRY_KEYS:
        raise GridError(f"{where}: unknown keys {_names(sorted(set(e) - ENTRY_KEYS))}")
    e_kinds = _kinds(e["kinds"], f"{where}.kinds") if "kinds" in e else kinds
    e_memory = _int_list(e["memory"], f"{where}.memory") if "memory" in e else memory
    if e_memory is None and set(e_kinds) - {"baseline"}:
        raise GridError(f"{where}: kinds {e_kinds} need memory sizes (here or at the top level)")
    curriculum = _int_list(e.get("curriculum", []), f"{where}.curriculum", allow_empty=True)
    extra = _flags(e.get("flags", []), f"{where}.flags")
    depths = _int_list(e["depth"], f"{where}.depth", minimum=-1) if "depth" in e else None  # -1 full, 0 none
    if depths is not None and "--mem_backprop_depth" in [*fixed, *extra]:
        raise GridError(f"{where} has a depth axis and also sets --mem_backprop_depth in flags")
    cache = e.get("cache")
    if ("rmt+txl" in e_kinds) != (cache is not None) or not (cache is None or isinstance(cache, int) and cache > 0):
        raise GridError(f"{where}: kind rmt+txl needs a positive integer 'cache' (its --mem_len), "
                        f"and 'cache' needs kind rmt+txl; got kinds {e_kinds}, cache {cache!r}")
    return Entry(e, e_kinds, e_memory, curriculum, extra, depths, cache)


def _variants(value) -> list[tuple[str, list[str]]]:
    """The variants axis: [(label, flags)], or one unnamed variant without flags."""
    if value is None:
        return [("", [])]
    if not isinstance(value, dict) or not value:
        raise GridError(f"variants must be a non-empty object of label: [flags], got {value!r}")
    for label in value:
        if not PLAIN_NAME.match(label):
            raise GridError(f"a variant label goes into run names: letters, digits, '.', '_' or '-', got {label!r}")
    return [(label, _flags(flags, f"variants[{label!r}]")) for label, flags in value.items()]


def _run(name: str, entry: Entry, kind: str, mem: int, depth: int | None, seed: int, fixed: list[str],
         script: pathlib.Path, csv: pathlib.Path, variant: tuple[str, list[str]] = ("", [])) -> Run:
    """One run of the grid: its name and the script command line."""
    t, cache = entry.spec["tgt_len"], entry.cache
    label, variant_flags = variant
    run_name = (f"sweep-{name}-{kind}-t{t}-m{mem}" + (f"-c{cache}" if kind == "rmt+txl" else "")
                + ("" if depth is None else f"-d{depth}") + (f"-{label}" if label else "") + f"-s{seed}")
    flags = [*fixed, *entry.flags, *variant_flags, "--tgt_len", str(t),
             "--eval_tgt_len", str(entry.spec.get("eval_tgt_len", t))]
    if entry.curriculum:
        flags += ["--curriculum", *map(str, entry.curriculum)]
    if MEMORY_FLAG[kind]:
        flags += [MEMORY_FLAG[kind], str(mem)]
    if kind == "armt":  # written through its memory tokens into a matrix per layer
        flags += ["--memory", "associative"]
    flags += ["--mem_len", str(cache)] if kind == "rmt+txl" else [] if kind == "txl" else ["--mem_len", "0"]
    if depth is not None:
        flags += ["--mem_backprop_depth", str(depth)]
    flags += ["--seed", str(seed), "--run_name", run_name, "--results_csv", _shown(csv)]
    return Run(run_name, kind, t, mem, seed, ("bash", _shown(script), "train", *flags))


def load_grid(path: str | os.PathLike, results_csv: str | os.PathLike | None = None) -> Sweep:
    """Read and expand a grid file; GridError if it is not valid JSON or not a valid grid."""
    path = pathlib.Path(path)
    try:
        grid = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GridError(f"cannot read grid {path}: {e}") from None
    except RecursionError:
        raise GridError(f"cannot read grid {path}: it nests too deeply to be a grid") from None
    if not isinstance(grid, dict):
        raise GridError(f"{path}: a grid is a JSON object")
    return expand(grid, path.stem, results_csv)


def _results(csv: pathlib.Path) -> pd.DataFrame:
    """Rows of the results CSV, last row per run_id (empty if there is none)."""
    try:
        df = read_results(csv)
    except ValueError as e:  # a malformed results CSV: say where, never guess which runs are done
        raise SystemExit(f"error: {e}")
    df = df[df["run_id"].notna()]
    test = df["split"].astype(str) == "test"  # prefer a test row over other splits of the same run
    return pd.concat([df[~test], df[test]]).drop_duplicates("run_id", keep="last").set_index("run_id")


def _metrics(row: pd.Series) -> str:
    """'acc_tf 0.998 | acc_greedy 0.990 | ...' for the metrics a results row has."""
    parts = [f"{k} {float(row[k]):.3f}" for k in METRICS if pd.notna(row.get(k))]
    name = row.get("metric_name")
    if pd.notna(name) and name not in METRICS and pd.notna(row.get("metric_value")):
        parts.append(f"{name} {float(row['metric_value']):.3f}")
    return " | ".join(parts) or "no metrics in the row"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _command(run: Run, env: dict[str, str]) -> str:
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(run.argv)])


def _tail(path: pathlib.Path, n: int = 5) -> str:
    lines = path.read_text(errors="replace").splitlines()[-n:] if path.exists() else []
    return "\n".join("    " + line for line in lines)


def run_sweep(sweep: Sweep, log_dir: pathlib.Path, out=print) -> list[str]:
    """Run the runs that have no results row yet, in order; returns the names of the failed ones.

    A run fails when its command exits non-zero or leaves no row in the results CSV (e.g. stopped by
    a signal after saving its checkpoint). Failures are reported and the sweep goes on.
    """
    done = set(_results(sweep.results_csv).index)
    todo = [r for r in sweep.runs if r.name not in done]
    out(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} already in "
        f"{_shown(sweep.results_csv)}, {len(todo)} to run; logs in {_shown(log_dir)}/")
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **sweep.env}
    failed, durations = [], []
    # smoothing=0: tqdm's ETA is then the mean duration of the finished runs times the runs left.
    bar = tqdm(total=len(todo), unit="run", smoothing=0, dynamic_ncols=True, disable=None)
    write = bar.write if not bar.disable else out
    for i, run in enumerate(todo, 1):
        bar.set_description(run.name)
        log = log_dir / f"{run.name}.log"
        t0 = time.time()
        with open(log, "w") as f:
            f.write(_command(run, sweep.env) + "\n")
            f.flush()
            code = subprocess.run(list(run.argv), cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        durations.append(time.time() - t0)
        eta = _duration(sum(durations) / len(durations) * (len(todo) - i))
        head = f"[{i}/{len(todo)}] {run.name} {_duration(durations[-1])}"
        rows = _results(sweep.results_csv)
        if code == 0 and run.name in rows.index:
            write(f"{head} ok | {_metrics(rows.loc[run.name])} | eta {eta}")
        else:
            why = f"exit status {code}" if code else "exit status 0 but no results row (stopped early?)"
            write(f"{head} FAILED: {why}; log {_shown(log)} | eta {eta}\n{_tail(log)}")
            failed.append(run.name)
        bar.update(1)
    bar.close()
    return failed


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmt.tools.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="grid JSON file, from here or the repository root (experiments/grids/copy_cpu.json)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands (and which runs are done), run nothing")
    ap.add_argument("--results", default=None, help="results CSV to write and to skip by (default: the grid's)")
    ap.add_argument("--log-dir", default=None, help="where the runs' output goes (default runs/sweeps/<name>)")
    ap.add_argument("--shard", default=None, metavar="I/N",
                    help="run only every N-th run, starting at I (0-based): N sweeps side by side split a grid")
    args = ap.parse_args(argv)
    shard = None
    if args.shard:
        try:
            shard = tuple(int(v) for v in args.shard.split("/"))
            assert len(shard) == 2 and 0 <= shard[0] < shard[1]
        except (ValueError, AssertionError):
            ap.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    grid = pathlib.Path(args.grid)
    grid = grid if grid.exists() or grid.is_absolute() else REPO_ROOT / grid  # also from the repository root
    try:
        sweep = load_grid(grid, args.results and os.path.abspath(args.results))
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # dry or not: a file every run would fail to append to is refused now
        check_target(sweep.results_csv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if shard:
        sweep = dataclasses.replace(sweep, runs=sweep.runs[shard[0]::shard[1]])
    if args.dry_run:
        done = set(_results(sweep.results_csv).index)
        for run in sweep.runs:
            print(f"# done: {run.name}" if run.name in done else _command(run, sweep.env))
        print(f"# {len(sweep.runs)} runs, {len(done & {r.name for r in sweep.runs})} already in "
              f"{_shown(sweep.results_csv)}")
        return 0
    log_dir = pathlib.Path(args.log_dir or REPO_ROOT / "runs" / "sweeps" / sweep.name)
    t0 = time.time()
    try:
        failed = run_sweep(sweep, log_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue (finished runs are skipped)", file=sys.stderr)
        return 130
    print(f"sweep {sweep.name} finished in {_duration(time.time() - t0)}: {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
