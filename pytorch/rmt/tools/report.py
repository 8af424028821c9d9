"""Cells, tables and row normalisation shared by the sections of rmt.tools.compare's report."""
from __future__ import annotations

import json
import math

import pandas as pd

from rmt.results import RESULT_COLUMNS, model_kind
from rmt.tasks.registry import task_spec

TASK_ALIASES = {"sqeq_cd": "sqeq"}  # our data set name -> the paper table's task
SCALE_LABEL = {"paper": "paper scale", "cpu-preset": "CPU preset [!]", "smoke": "smoke [!]"}
NUMERIC = ["tgt_len", "mem_len", "num_mem_tokens", "mem_backprop_depth", "n_segments", "metric_value",
           "ppl", "bpc", "acc_tf", "acc_greedy", "exact_match", "seed"]
KIND_COLOR = {"baseline": "tab:gray", "txl": "tab:blue", "rmt": "tab:red", "armt": "tab:purple"}
PAPER_PAIRS = task_spec("retrieval").default_kwargs["num_pairs"]  # key-value pairs of the paper's retrieval
DEFAULT_INIT_STD = 0.02  # the drivers' --init_std default (the original's)


def as_bool(value: object) -> bool:
    """Parse a CSV boolean; empty means True (the paper's RMT default)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return True
    return str(value).strip().lower() not in {"false", "0", "0.0", "no", ""}


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Give result rows every schema column, numeric types, 0 for absent memory and a model_kind."""
    df = df.reindex(columns=list(dict.fromkeys(RESULT_COLUMNS + list(df.columns))))
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df[["mem_len", "num_mem_tokens", "mem_backprop_depth"]] = \
        df[["mem_len", "num_mem_tokens", "mem_backprop_depth"]].fillna(0)
    kinds = [model_kind(m, l, as_bool(e)) for m, l, e in zip(df["num_mem_tokens"], df["mem_len"], df["mem_at_end"])]
    df["model_kind"] = df["model_kind"].where(df["model_kind"].notna() & (df["model_kind"] != ""), kinds)
    df["scale"] = df["scale"].astype(object).fillna("unknown").astype(str)  # all-empty columns read as float
    df["device"] = df["device"].astype(object).fillna("").astype(str)
    df["task"] = df["task"].astype(str)
    # "copy-seq_len8" is the copy task at another size (a CPU preset): matched by segments only.
    df["task_base"] = df["task"].str.split("-").str[0].replace(TASK_ALIASES)
    df["resized"] = df["task"].str.contains("-")
    # Retrieval with another number of pairs asks another question, not the paper's at another size:
    # its runs are never matched to the paper's rows, and they draw the capacity curve instead.
    pairs = pd.to_numeric(df["task"].str.extract(r"^retrieval-.*num_pairs(\d+)")[0], errors="coerce")
    df["num_pairs"] = pairs.where(pairs.notna() | (df["task_base"] != "retrieval"), PAPER_PAIRS)
    df["another_task"] = df["num_pairs"].notna() & (df["num_pairs"] != PAPER_PAIRS)
    return df


def config_of(cell: object) -> dict:
    """A row's config_json cell as a dict ({} when empty or not JSON)."""
    return json.loads(cell) if isinstance(cell, str) and cell.startswith("{") else {}


def values_of(rows: pd.DataFrame, col: str, metric: str) -> pd.Series:
    """Our metric for a paper metric: the dedicated column, else metric_value if metric_name agrees."""
    named = rows["metric_name"].astype(str).isin([metric, col])
    fallback = rows["metric_value"].where(named)
    return rows[col].fillna(fallback) if col in rows else fallback


# Model options beside the original's (rmt.model.config), and the LM stream's memory resets, with
# their defaults: a run that sets one is another model or procedure than the paper's, never matched
# to its rows nor averaged with the default's.
OPTION_DEFAULTS = {"read_memory_emb": False, "write_mem_init": "memory", "enhanced_xl_recurrence": False,
                   "emb_gradient_frac": 1.0, "token_shift": False, "reset_memory_every": 0}


def pool_data_seeds(df: pd.DataFrame, keys: list[str], n: str, rates: list[str]) -> pd.DataFrame:
    """One row per `keys` from rows measured on several data seeds (column data_seed): a repeat of
    a seed replaces the row it repeats, the samples (`n`) of the other seeds add up, and each rate
    is weighted by them. The other columns keep their first value."""
    df = df.drop_duplicates([*keys, "data_seed"], keep="last").drop(columns="data_seed")
    grouped = df.assign(**{r: df[r] * df[n] for r in rates}).groupby(keys, sort=False)
    sums = grouped[[n, *rates]].sum(min_count=1)
    out = grouped.first().assign(**{n: sums[n], **{r: sums[r] / sums[n] for r in rates}})
    return out.reset_index()

def option_label(cell: object) -> str:
    """The memory options a row's config_json sets, 'read_memory_emb, write_mem_init learned'; '' for none."""
    cfg = config_of(cell)
    set_ = [(k, cfg[k]) for k, default in OPTION_DEFAULTS.items() if k in cfg and cfg[k] != default]
    return ", ".join(k if v is True else f"{k} {v}" for k, v in set_)


def recipe(r) -> str:
    """How a run trained, for labels and grouping: ', N steps', then ', init std S' when its saved
    configuration used another init than the default, and ', curriculum 16→8' when it had one."""
    out = "" if pd.isna(r.max_step) else f", {int(r.max_step)} steps"
    cfg = config_of(getattr(r, "config_json", None))
    std = cfg.get("init_std", DEFAULT_INIT_STD)
    out += "" if std == DEFAULT_INIT_STD else f", init std {std:g}"
    out += ", original replay" if cfg.get("lm_replay") == "original" else ""
    return out + (f", curriculum {'→'.join(map(str, cfg['curriculum']))}" if cfg.get("curriculum") else "")


def num(x: object) -> str:
    """Short number: up to 4 decimals, at least 2; '—' for missing."""
    if x is None or pd.isna(x):
        return "—"
    s = f"{float(x):.4f}".rstrip("0")
    return s + "0" * max(0, 2 - len(s.split(".")[1]))


def ours_cell(mean: float, std: float, n: int) -> str:
    """'mean ± std (n=k)', or '—' with no runs."""
    if not n:
        return "—"
    return f"{num(mean)} ± {num(std) if n > 1 else '—'} (n={n})"


def memory_cell(kind: str, mem_len: float, m: float) -> str:
    """Memory label: L = TXL cache length (mem_len), M = memory tokens."""
    fmt = lambda v: "?" if pd.isna(v) else str(int(v))  # noqa: E731
    return {"baseline": "–", "txl": f"L={fmt(mem_len)}", "rmt+txl": f"M={fmt(m)}+L={fmt(mem_len)}"}.get(
        kind, f"M={fmt(m)}")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
