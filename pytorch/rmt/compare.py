"""Compare our results rows (experiments/results/*.csv) with the paper's tables (experiments/paper/*.csv).

    python3 -m rmt.compare [--results DIR] [--paper DIR] [--plots DIR] [--markdown FILE] [--no-plots]
                                             [--readme README.md]

Matching: same task (dataset for LM), model_kind, memory (mem_len and num_mem_tokens; an empty paper
cell is a wildcard), mem_backprop_depth where the paper gives it, and tgt_len (synthetic rows without
tgt_len fall back to the paper's nominal n_segments). A resized task (e.g. copy-seq_len8, a CPU preset)
stands for the paper row with the same number of segments and the paper's largest memory there.
Ours are grouped by (scale, device), and resized runs also by their own task, tgt_len, memory and steps,
then reported as mean ± std over runs; runs at another scale than "paper" are flagged, they are
not a reproduction, and the scale cell names a resized run's own configuration.
--readme FILE puts the tables and links to the plots between the markers README_BEGIN and README_END.
Runs that recorded accuracy per group (results/groups/: retrieval by queried pair) get one more table,
one row per run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

import numpy as np
import pandas as pd

from rmt.results import RESULT_COLUMNS, model_kind, read_results

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAPER_TABLES = ("lm", "synthetic", "long_synthetic", "sqeq")
# Our column for a paper metric (acc -> acc_<acc_kind>). The paper's sqeq answer_acc (final slot
# right) is our metric_value of the rows named answer_acc, not exact_match (the whole solution).
OUR_COLUMN = {"ppl": "ppl", "bpc": "bpc", "answer_acc": "answer_acc"}
TASK_ALIASES = {"sqeq_cd": "sqeq"}  # our data set name -> the paper table's task
SCALE_LABEL = {"paper": "paper scale", "cpu-preset": "CPU preset [!]", "smoke": "smoke [!]"}
NUMERIC = ["tgt_len", "mem_len", "num_mem_tokens", "mem_backprop_depth", "n_segments", "metric_value",
           "ppl", "bpc", "acc_tf", "acc_greedy", "exact_match", "seed"]
KIND_COLOR = {"baseline": "tab:gray", "txl": "tab:blue", "rmt": "tab:red"}
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def load_paper(paper_dir: str | pathlib.Path) -> pd.DataFrame:
    """All paper tables in one frame with common keys (table, task, model_kind, tgt_len, mem_len,
    num_mem_tokens, mem_backprop_depth, n_segments) plus metric, our_col, value, n_runs, note."""
    frames = []
    for name in PAPER_TABLES:
        path = pathlib.Path(paper_dir) / f"{name}.csv"
        if not path.exists():
            continue
        d = pd.read_csv(path)
        d.insert(0, "table", name)
        if name == "lm":
            d = d.rename(columns={"dataset": "task"})
            d["n_segments"] = np.nan
        else:  # mem_size means mem_len for txl and num_mem_tokens for rmt/mt (empty = wildcard)
            size = d["mem_size"].astype(float)
            d["mem_len"] = np.where(d["model_kind"] == "txl", size, 0.0)
            d["num_mem_tokens"] = np.where(d["model_kind"].isin(["rmt", "mt"]), size, 0.0)
            d["mem_backprop_depth"] = np.nan
        kinds = d["acc_kind"] if "acc_kind" in d else pd.Series([""] * len(d))
        d["our_col"] = [OUR_COLUMN.get(m, f"acc_{k}") for m, k in zip(d["metric"], kinds)]
        frames.append(d)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _as_bool(value: object) -> bool:
    """Parse a CSV boolean; empty means True (the paper's RMT default)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return True
    return str(value).strip().lower() not in {"false", "0", "0.0", "no", ""}


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Give result rows every schema column, numeric types, 0 for absent memory and a model_kind."""
    df = df.reindex(columns=list(dict.fromkeys(RESULT_COLUMNS + list(df.columns))))
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df[["mem_len", "num_mem_tokens", "mem_backprop_depth"]] = \
        df[["mem_len", "num_mem_tokens", "mem_backprop_depth"]].fillna(0)
    kinds = [model_kind(m, l, _as_bool(e)) for m, l, e in zip(df["num_mem_tokens"], df["mem_len"], df["mem_at_end"])]
    df["model_kind"] = df["model_kind"].where(df["model_kind"].notna() & (df["model_kind"] != ""), kinds)
    df["scale"] = df["scale"].astype(object).fillna("unknown").astype(str)  # all-empty columns read as float
    df["device"] = df["device"].astype(object).fillna("").astype(str)
    df["task"] = df["task"].astype(str)
    # "copy-seq_len8" is the copy task at another size (a CPU preset): matched by segments only.
    df["task_base"] = df["task"].str.split("-").str[0].replace(TASK_ALIASES)
    df["resized"] = df["task"].str.contains("-")
    return df


# What a re-evaluation replaces in its training run's row; the run's recipe and provenance stay.
MEASURED = ["metric_name", "metric_value", "loss", "ppl", "bpc", "acc_tf", "acc_greedy", "exact_match"]


def _supersede(df: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Training rows take the measurements of the newest eval-mode row of their own best checkpoint (same task,
    split, eval_tgt_len and metric), e.g. after a metric fix; `reevaluated_by` names that row, else is empty."""
    df = df.assign(reevaluated_by="")
    for _, e in evals.iterrows():  # in file order, so the newest re-evaluation is applied last
        cfg = _config(e["config_json"])
        ckpt = pathlib.PurePath(str(cfg.get("eval_checkpoint") or ""))
        if ckpt.name != "checkpoint_best.pt" or cfg.get("protocol", "trained") != "trained":
            continue  # another checkpoint, or another protocol (TXL's long cache): not the run's own number
        same = ((df["run_id"] == ckpt.parent.name) & (df["task"] == e["task"]) & (df["split"] == e["split"])
                & (df["eval_tgt_len"] == e["eval_tgt_len"]) & (df["metric_name"] == e["metric_name"]))
        for col in MEASURED:
            df.loc[same, col] = e[col]
        df.loc[same, "reevaluated_by"] = e["run_id"]
    return df


def load_ours(results_dir: str | pathlib.Path, split: str = "test") -> tuple[pd.DataFrame, int]:
    """Our rows on `split` ("any" keeps all; rows with no split are kept), normalised for matching.

    Rows of eval mode (`--eval_only`) re-measure a checkpoint whose training run has a row of its own, so they
    are left out: counted, they would add a seed that was never trained. A re-evaluation of a run's best
    checkpoint under the run's own evaluation settings replaces that run's measurements instead.
    Returns (rows, number of rows left out: on another split, or from eval mode).
    """
    df = _normalise(read_results(results_dir))
    with_id = df["run_id"].notna()  # a re-appended run counts once (its last row)
    df = pd.concat([df[with_id].drop_duplicates(["run_id", "split", "metric_name"], keep="last"), df[~with_id]])
    reevaluated = pd.Series([_config(c).get("eval_only") is True for c in df["config_json"]], index=df.index,
                            dtype=bool)
    df = _supersede(df[~reevaluated], df[reevaluated])
    if split == "any":
        return df, int(reevaluated.sum())
    keep = df["split"].isna() | (df["split"].astype(str) == split)
    return df[keep], int((~keep).sum() + reevaluated.sum())


def _config(cell: object) -> dict:
    """A row's config_json cell as a dict ({} when empty or not JSON)."""
    return json.loads(cell) if isinstance(cell, str) and cell.startswith("{") else {}


def _values(rows: pd.DataFrame, col: str, metric: str) -> pd.Series:
    """Our metric for a paper metric: the dedicated column, else metric_value if metric_name agrees."""
    named = rows["metric_name"].astype(str).isin([metric, col])
    fallback = rows["metric_value"].where(named)
    return rows[col].fillna(fallback) if col in rows else fallback


def match(paper: pd.DataFrame, ours: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair every paper row with our matching runs, one record per (scale, device) group.

    Returns (pairs: paper columns + scale, device, mean, std, n; ours_only: unmatched rows).
    """
    records, used = [], set()
    if len(ours):  # each run's recipe, parsed once rather than once per paper row
        ours = ours.assign(recipe=[_recipe(r) for r in ours.itertuples()])
    for i, p in paper.iterrows():
        m = ours[(ours["task_base"] == p["task"]) & (ours["model_kind"] == p["model_kind"])] if len(ours) else ours
        exact, resized = (m[~m["resized"]], m[m["resized"]]) if len(m) else (m, m)
        for col in ("mem_len", "num_mem_tokens", "mem_backprop_depth"):
            if len(exact) and pd.notna(p[col]):
                exact = exact[exact[col] == p[col]]
        if len(exact):
            same_len = (exact["tgt_len"] == p["tgt_len"]) | \
                (exact["tgt_len"].isna() & (exact["n_segments"] == p["n_segments"]))
            exact = exact[same_len]
        # A resized task (CPU preset) stands for the paper row with the same number of segments and
        # the largest memory the paper used there.
        largest = paper[(paper["task"] == p["task"]) & (paper["model_kind"] == p["model_kind"])
                        & (paper["n_segments"] == p["n_segments"])]
        mem_col = "mem_len" if p["model_kind"] == "txl" else "num_mem_tokens"
        is_largest = pd.isna(p[mem_col]) or p[mem_col] == largest[mem_col].max()
        resized = resized[resized["n_segments"] == p["n_segments"]] if len(resized) and is_largest else resized.iloc[:0]
        # Resized runs are averaged per configuration of their own (task size, segment, memory, steps).
        resized = resized.assign(_cfg=[f"{r.task}, tgt_len {int(r.tgt_len)}, "
                                       f"{_memory(r.model_kind, r.mem_len, r.num_mem_tokens)}"
                                       + r.recipe for r in resized.itertuples()])
        # Runs of the paper's own task size but another recipe (a CPU preset, a time limit) are
        # kept apart by their step count: a 3,000-step preset is not averaged with a 15,000-step one.
        exact = exact.assign(_cfg=["" if r.scale == "paper" else r.recipe.removeprefix(", ")
                                   for r in exact.itertuples()])
        m = pd.concat([exact, resized])
        if len(m):
            vals = _values(m, p["our_col"], p["metric"])
            m = m.assign(_v=vals)[vals.notna()]
        groups = list(m.groupby(["scale", "device", "_cfg"], sort=True)) if len(m) else []
        for (scale, device, cfg), g in groups:
            used.update(g.index)
            v = g["_v"].astype(float)
            records.append({**p.to_dict(), "paper_row": i, "scale": scale, "device": device, "ours_config": cfg,
                            "mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else np.nan, "n": len(v)})
        if not groups:
            records.append({**p.to_dict(), "paper_row": i, "scale": "", "device": "", "ours_config": "",
                            "mean": np.nan, "std": np.nan, "n": 0})
    only = ours[~ours.index.isin(used)] if len(ours) else ours
    return pd.DataFrame(records), only


DEFAULT_INIT_STD = 0.02  # the drivers' --init_std default (the original's)


def _recipe(r) -> str:
    """How a run trained, for labels and grouping: ', N steps', then ', init std S' when its saved
    configuration used another init than the default, and ', curriculum 16→8' when it had one."""
    out = "" if pd.isna(r.max_step) else f", {int(r.max_step)} steps"
    cfg = _config(getattr(r, "config_json", None))
    std = cfg.get("init_std", DEFAULT_INIT_STD)
    out += "" if std == DEFAULT_INIT_STD else f", init std {std:g}"
    return out + (f", curriculum {'→'.join(map(str, cfg['curriculum']))}" if cfg.get("curriculum") else "")


def _num(x: object) -> str:
    """Short number: up to 4 decimals, at least 2; '—' for missing."""
    if x is None or pd.isna(x):
        return "—"
    s = f"{float(x):.4f}".rstrip("0")
    return s + "0" * max(0, 2 - len(s.split(".")[1]))


def _ours(mean: float, std: float, n: int) -> str:
    """'mean ± std (n=k)', or '—' with no runs."""
    if not n:
        return "—"
    return f"{_num(mean)} ± {_num(std) if n > 1 else '—'} (n={n})"


def _memory(kind: str, mem_len: float, m: float) -> str:
    """Memory label: L = TXL cache length (mem_len), M = memory tokens."""
    fmt = lambda v: "?" if pd.isna(v) else str(int(v))  # noqa: E731
    return {"baseline": "–", "txl": f"L={fmt(mem_len)}", "rmt+txl": f"M={fmt(m)}+L={fmt(mem_len)}"}.get(
        kind, f"M={fmt(m)}")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render(pairs: pd.DataFrame, only: pd.DataFrame, results_dir: str, n_ours: int, dropped: int,
           matched_only: bool = False, reevaluated: int = 0) -> str:
    """The whole report as Markdown: one table per paper table, then our unmatched rows.
    matched_only keeps just the paper rows we have runs for (the README's short form)."""
    out = ["# Paper vs ours", ""]
    if n_ours == 0:
        out += [f"No runs found in `{results_dir}`; showing the paper's tables only.", ""]
    if dropped:
        out += [f"{dropped} rows were left out: rows on other splits (see --split) and eval-mode re-evaluations.", ""]
    if reevaluated:
        out += [f"{reevaluated} runs show a later re-evaluation of their best checkpoint (eval mode, the run's own "
                "settings; its row is named in `reevaluated_by`).", ""]
    out += ["`[!]` = not paper scale (reduced hyper-parameters): a sanity check, not a reproduction.", ""]
    for name in PAPER_TABLES:
        t = pairs[pairs["table"] == name] if len(pairs) else pairs
        n_all = t["paper_row"].nunique() if len(t) else 0
        if matched_only and len(t):
            t = t[t["n"] > 0]
        if not len(t):
            continue
        lm = name == "lm"
        head = ["dataset" if lm else "task", "tgt_len", "bpd" if lm else "segments (actual)", "model", "memory",
                "metric", "paper", "paper n", "ours (mean ± std, n)", "ours − paper", "device", "scale"]
        rows = []
        for _, r in t.iterrows():
            seg = _num(r["mem_backprop_depth"]).split(".")[0] if lm else str(int(r["n_segments"]))
            if not lm and pd.notna(r.get("actual_segments")) and r["actual_segments"] != r["n_segments"]:
                seg += f" ({int(r['actual_segments'])})"
            metric = r["metric"] + (f" ({r['acc_kind']})" if r["metric"] == "acc" else "")
            diff = r["mean"] - r["value"] if r["n"] else np.nan
            rows.append([r["task"], str(int(r["tgt_len"])), seg, r["model_kind"],
                         _memory(r["model_kind"], r["mem_len"], r["num_mem_tokens"]), metric, _num(r["value"]),
                         "—" if pd.isna(r["n_runs"]) else str(int(r["n_runs"])), _ours(r["mean"], r["std"], r["n"]),
                         "—" if pd.isna(diff) else f"{diff:+.4f}", r["device"] or "—",
                         (SCALE_LABEL.get(r["scale"], f"{r['scale']} [!]") if r["scale"] else "—")
                         + (f": {r['ours_config']}" if r["ours_config"] else "")])
        n_hit = t.loc[t["n"] > 0, "paper_row"].nunique()
        out += [f"## {name} (experiments/paper/{name}.csv): {n_hit} of {n_all} paper rows matched",
                "", _table(head, rows), ""]
    if len(only):
        keys = ["task", "tgt_len", "n_segments", "model_kind", "mem_len", "num_mem_tokens", "mem_backprop_depth",
                "metric_name", "device", "scale"]
        rows = []
        for key, g in only.groupby(keys, dropna=False, sort=True):
            k = dict(zip(keys, key))
            v = pd.to_numeric(g["metric_value"], errors="coerce").dropna()
            rows.append([k["task"], _num(k["tgt_len"]).split(".")[0], _num(k["n_segments"]).split(".")[0],
                         k["model_kind"], _memory(k["model_kind"], k["mem_len"], k["num_mem_tokens"]),
                         _num(k["mem_backprop_depth"]).split(".")[0], str(k["metric_name"]),
                         _ours(v.mean(), v.std(ddof=1), len(v)), k["device"] or "—",
                         SCALE_LABEL.get(k["scale"], f"{k['scale']} [!]")])
        head = ["task", "tgt_len", "segments", "model", "memory", "bpd", "metric", "ours (mean ± std, n)",
                "device", "scale"]
        out += ["## Ours only (no paper counterpart)", "", _table(head, rows), ""]
    return "\n".join(out)


# ---- language modelling on other corpora -----------------------------------------------------------
# A corpus of our own (a `prepare text` corpus, WikiText-2, ...) is never the paper's data: its rows are
# shown beside the paper's rows of the same level (bytes: enwik8, words: WikiText-103) and recipe, at the
# paper's segment length nearest ours, as "reduced scale, other corpus", and compared by their gains over
# the baseline rather than by value.
PAPER_ANALOGUE = {"bpc": "enwik8", "ppl": "wt103"}
LM_KEYS = ["task", "tgt_len", "model_kind", "mem_len", "num_mem_tokens", "mem_backprop_depth", "scale", "device"]
KIND_ORDER = ["baseline", "txl", "rmt", "rmt+txl", "mt"]


def other_corpus_rows(paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Our LM rows of corpora the paper did not use (every LM row whose task has no paper table)."""
    if not len(ours):
        return ours
    lm_tasks = set(paper.loc[paper["table"] == "lm", "task"]) if len(paper) else set()
    lm = ours["metric_name"].astype(str).isin(PAPER_ANALOGUE)
    return ours[lm & ~ours["task"].isin(lm_tasks)]


def analogue_tgt_len(paper: pd.DataFrame, dataset: str, tgt_len: float) -> float:
    """The paper's segment length for `dataset` closest to ours (the same where the paper has it)."""
    lens = paper.loc[(paper["table"] == "lm") & (paper["task"] == dataset), "tgt_len"].dropna().unique()
    return min(lens, key=lambda t: (abs(t - tgt_len), t)) if len(lens) else np.nan


def _paper_analogue(paper: pd.DataFrame, metric: str, r) -> pd.Series | None:
    """The paper's row of the same level, kind, memory and depth, at its segment length nearest ours
    (None when it has none)."""
    dataset = PAPER_ANALOGUE[metric]
    p = paper[(paper["table"] == "lm") & (paper["task"] == dataset)
              & (paper["tgt_len"] == analogue_tgt_len(paper, dataset, r.tgt_len)) & (paper["model_kind"] == r.model_kind)]
    for col in ("mem_len", "num_mem_tokens", "mem_backprop_depth"):  # an empty paper cell is a wildcard
        p = p[p[col].isna() | (p[col] == r[col])]
    return p.iloc[0] if len(p) else None


def other_corpus_groups(paper: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """One record per configuration of ours (mean, std, n over seeds) with its paper analogue and
    both gains over the baseline of the same corpus, tgt_len and scale."""
    if not len(rows):
        return pd.DataFrame()
    rows = rows.assign(_v=pd.to_numeric(rows["metric_value"], errors="coerce"), metric=rows["metric_name"].astype(str))
    rows = rows.assign(mem_backprop_depth=rows["mem_backprop_depth"].where(rows["num_mem_tokens"] > 0, 0))
    records = []
    for key, g in rows.dropna(subset=["_v"]).groupby(LM_KEYS + ["metric"], sort=False):
        r = pd.Series(dict(zip(LM_KEYS + ["metric"], key)))
        p = _paper_analogue(paper, r.metric, r)
        records.append({**r.to_dict(), "mean": g["_v"].mean(), "std": g["_v"].std(ddof=1) if len(g) > 1 else np.nan,
                        "n": len(g), "seeds": sorted(g["seed"].dropna().astype(int)),
                        "paper_task": PAPER_ANALOGUE[r.metric], "paper": np.nan if p is None else p["value"],
                        "paper_tgt_len": analogue_tgt_len(paper, PAPER_ANALOGUE[r.metric], r.tgt_len)})
    out = pd.DataFrame(records)
    base = out[out["model_kind"] == "baseline"].set_index(["task", "tgt_len", "scale", "device"])
    gains = []
    for r in out.itertuples():
        k = (r.task, r.tgt_len, r.scale, r.device)
        ours_base = base["mean"].get(k, np.nan)
        paper_base = paper[(paper["table"] == "lm") & (paper["task"] == r.paper_task)
                           & (paper["tgt_len"] == r.paper_tgt_len) & (paper["model_kind"] == "baseline")]["value"]
        gains.append((r.mean - ours_base, r.paper - (paper_base.iloc[0] if len(paper_base) else np.nan)))
    out["gain"], out["paper_gain"] = zip(*gains)
    out["_order"] = [KIND_ORDER.index(k) if k in KIND_ORDER else 9 for k in out["model_kind"]]
    return out.sort_values(["task", "tgt_len", "scale", "_order", "mem_len", "num_mem_tokens", "mem_backprop_depth"])


def _gap(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """a.mean - b.mean and its standard error from the two spreads over seeds (nan with one seed)."""
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) if a["n"] > 1 and b["n"] > 1 else math.nan
    return a["mean"] - b["mean"], se


def _verdict(gap: float, se: float, ties_hold: bool = False) -> str:
    """'holds' when gap < 0 (lower is better; or <= 0 with ties_hold), and whether |gap| exceeds
    two standard errors of the seed means."""
    if pd.isna(gap):
        return "not run"
    word = "holds" if gap < 0 or (ties_hold and gap == 0) else "does not hold"
    if pd.isna(se):
        return word + " (one seed)"
    return word + (" (gap within 2 s.e.)" if abs(gap) < 2 * se else "")


def lm_orderings(groups: pd.DataFrame) -> list[list[str]]:
    """The paper's LM orderings, checked on one corpus/tgt_len/scale group of ours: rows of
    [claim, comparison, ours, paper, verdict at this scale]. Lower is better (bpc, ppl)."""
    by = {(r.model_kind, int(r.mem_len), int(r.num_mem_tokens), int(r.mem_backprop_depth)): r
          for _, r in groups.iterrows()}
    pairs = []  # (claim, a, b, ties hold): the claim is "a below b"
    base = [r for k, r in by.items() if k[0] == "baseline"]
    for kind in ("txl", "rmt") if base else ():
        mem = [r for k, r in by.items() if k[0] == kind]
        if mem:
            pairs.append((f"baseline worse than every {kind}", max(mem, key=lambda r: r["mean"]), base[0], False))
    for (kind, _, m, d), r in by.items():
        txl = by.get(("txl", m, 0, 0))
        if kind == "rmt" and txl is not None and d == max(k[3] for k in by if k[:3] == ("rmt", 0, m)):
            pairs.append((f"RMT (its deepest BPTT) at or below Transformer-XL at memory {m}", r, txl, True))
    for (kind, l, m, d), r in by.items():
        shallow = by.get((kind, l, m, 0))
        if kind in ("rmt", "rmt+txl") and d > 0 and shallow is not None:
            pairs.append((f"deeper BPTT better ({_memory(kind, l, m)})", r, shallow, False))
    both = [r for k, r in by.items() if k[0] == "rmt+txl"]
    rest = [r for k, r in by.items() if k[0] != "rmt+txl"]
    if both and rest:
        pairs.append(("RMT + Transformer-XL best", min(both, key=lambda r: r["mean"]),
                      min(rest, key=lambda r: r["mean"]), False))
    out = []
    for claim, a, b, ties in pairs:
        gap, se = _gap(a, b)
        paper_gap = a["paper"] - b["paper"]
        out.append([claim, f"{_label(a)} vs {_label(b)}", f"{_num(a['mean'])} vs {_num(b['mean'])} ({gap:+.4f})",
                    "—" if pd.isna(paper_gap) else f"{_num(a['paper'])} vs {_num(b['paper'])} ({paper_gap:+.4f})",
                    _verdict(gap, se, ties_hold=ties)])
    return out


def _label(r) -> str:
    """'rmt M=10, bpd 2', 'txl L=10', 'baseline'."""
    if r["model_kind"] == "baseline":
        return "baseline"
    depth = f", bpd {int(r['mem_backprop_depth'])}" if r["num_mem_tokens"] > 0 else ""
    return f"{r['model_kind']} {_memory(r['model_kind'], r['mem_len'], r['num_mem_tokens'])}{depth}"


def render_other_corpora(groups: pd.DataFrame) -> str:
    """Markdown: our LM rows on corpora of our own beside the paper's rows of the same level and recipe,
    then the paper's orderings checked on ours."""
    if not len(groups):
        return ""
    out = ["## lm: reduced scale, other corpus (beside the paper's rows, not matched to them)", "",
           "Our corpora are not the paper's data, so the value is not compared with the paper's. The comparable "
           "quantity is the gain over the baseline of the same corpus and recipe (negative is better).", ""]
    head = ["corpus", "tgt_len", "model", "memory", "bpd", "metric", "ours (mean ± std, n)", "ours − our baseline",
            "paper analogue", "paper", "paper − paper baseline", "device", "scale"]
    rows = []
    for _, r in groups.iterrows():
        bpd = str(int(r["mem_backprop_depth"])) if r["num_mem_tokens"] > 0 else "–"
        rows.append([r["task"], str(int(r["tgt_len"])), r["model_kind"],
                     _memory(r["model_kind"], r["mem_len"], r["num_mem_tokens"]), bpd, r["metric"],
                     _ours(r["mean"], r["std"], r["n"]), "—" if pd.isna(r["gain"]) else f"{r['gain']:+.4f}",
                     f"{r['paper_task']} tgt_len {int(r['paper_tgt_len'])}", _num(r["paper"]),
                     "—" if pd.isna(r["paper_gain"]) else f"{r['paper_gain']:+.4f}", r["device"] or "—",
                     SCALE_LABEL.get(r["scale"], f"{r['scale']} [!]") + ", other corpus"])
    out += [_table(head, rows), ""]
    for (task, tgt_len, scale), g in groups.groupby(["task", "tgt_len", "scale"], sort=False):
        checks = lm_orderings(g)
        if checks:
            out += [f"### The paper's orderings on {task}, tgt_len {int(tgt_len)} ({SCALE_LABEL.get(scale, scale)})",
                    "", _table(["ordering (from the paper)", "compared", "ours (difference)",
                                "paper analogue (difference)", "at this scale"], checks), ""]
    return "\n".join(out)


def _series(ax, df: pd.DataFrame, x: str, label: str, color: str, paper: bool) -> None:
    """One line: paper dashed, ours solid with std error bars (df has x, mean, std)."""
    df = df.sort_values(x)
    if df.empty:
        return
    if paper:
        ax.plot(df[x], df["mean"], "o--", color=color, label=label, alpha=0.8)
    else:
        ax.errorbar(df[x], df["mean"], yerr=df["std"].fillna(0), fmt="s-", color=color, label=label, capsize=3)


def _agg(values: pd.Series, keys: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of `values` grouped by the columns of `keys`."""
    d = keys.assign(v=values.astype(float)).dropna(subset=["v"])
    return d.groupby(list(keys.columns), as_index=False)["v"].agg(mean="mean", std="std")


def plotted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs one model's curve shows, per (scale, number of segments): the smallest memory we ran
    there (the tightest equal-memory comparison), and of those one recipe (steps, init, curriculum):
    the one that covers the most points of the curve, so that a line is one recipe where it can be
    (a recipe tried at one point only does not break it), then the newest, i.e. the current preset
    rather than an earlier one. The table lists them all."""
    runs = runs.assign(mem=runs["mem_len"] + runs["num_mem_tokens"])
    point = ["scale", "n_segments"]
    runs = runs[runs["mem"] == runs.groupby(point)["mem"].transform("min")]
    runs = runs.assign(recipe=[_recipe(r) for r in runs.itertuples()]).sort_values("date", kind="stable")
    runs = runs.assign(reach=runs.groupby(["scale", "recipe"])["n_segments"].transform("nunique"))
    runs = runs.sort_values("reach", kind="stable")  # stable: the newest last among equal reach
    return runs[runs["recipe"] == runs.groupby(point)["recipe"].transform("last")].drop(columns="reach")


def make_plots(paper: pd.DataFrame, ours: pd.DataFrame, out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Accuracy vs segments for copy/reverse/retrieval and LM metric vs memory size; returns the PNGs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = _normalise(ours)
    paths = []
    for task in ("copy", "reverse", "retrieval"):
        p = paper[(paper["table"] == "synthetic") & (paper["task"] == task)].copy()
        answer = p["answer_size"].iloc[0]
        o = ours[ours["task_base"] == task].copy()  # resized (CPU-preset) variants included
        o["n_segments"] = o["n_segments"].fillna(np.ceil(p["sample_len"].iloc[0] / o["tgt_len"]))
        greedy = _values(o, "acc_greedy", "acc_greedy").where(o["tgt_len"] <= answer)
        o["acc"] = greedy.fillna(_values(o, "acc_tf", "acc_tf")).fillna(_values(o, "acc", "acc"))
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, color in KIND_COLOR.items():
            pk = p[p["model_kind"] == kind].assign(mem=p["mem_len"] + p["num_mem_tokens"], mean=p["value"])
            pk = pk.dropna(subset=["mean"]).sort_values("mem").drop_duplicates("n_segments", keep="last")
            _series(ax, pk, "n_segments", f"{kind} paper", color, paper=True)
            ok = plotted_runs(o[o["model_kind"] == kind])
            for scale, g in _agg(ok["acc"], ok[["scale", "n_segments"]]).groupby("scale"):
                _series(ax, g, "n_segments", f"{kind} ours ({SCALE_LABEL.get(scale, scale)})", color, paper=False)
        ax.set(xlabel="number of segments", ylabel="accuracy", title=f"{task}: accuracy vs segments", ylim=(0, 1.05))
        ax.legend(fontsize=7)
        paths.append(out_dir / f"synthetic_{task}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    for dataset, metric in (("wt103", "ppl"), ("enwik8", "bpc")):
        p = paper[(paper["table"] == "lm") & (paper["task"] == dataset)]
        o = ours[ours["task"] == dataset].copy()
        o["v"] = _values(o, metric, metric)
        lens = sorted(set(p["tgt_len"].dropna()) | set(o.dropna(subset=["v"])["tgt_len"].dropna()))
        fig, axes = plt.subplots(1, len(lens), figsize=(5 * len(lens), 4), squeeze=False)
        for ax, tgt in zip(axes[0], lens):
            for kind, color in KIND_COLOR.items():  # x = mem_len for txl, M for rmt, 0 for baseline
                pk = p[(p["tgt_len"] == tgt) & (p["model_kind"] == kind)]
                pk = pk.assign(mem=pk["mem_len"] + pk["num_mem_tokens"].fillna(0), mean=pk["value"])
                _series(ax, pk.groupby("mem", as_index=False)["mean"].min(), "mem", f"{kind} paper", color, True)
                if kind == "baseline" and len(pk):  # no memory: a level to compare the curves with
                    ax.axhline(pk["mean"].iloc[0], ls=":", color=color, lw=1)
                ok = o[(o["tgt_len"] == tgt) & (o["model_kind"] == kind)]
                ok = _agg(ok["v"], ok[["scale", "mem_backprop_depth"]].assign(mem=ok["mem_len"] + ok["num_mem_tokens"]))
                ok = ok.sort_values("mean").drop_duplicates(["scale", "mem"])  # best over mem_backprop_depth
                for scale, g in ok.groupby("scale"):
                    _series(ax, g, "mem", f"{kind} ours ({SCALE_LABEL.get(scale, scale)})", color, False)
            ax.set(xlabel="memory size (mem_len or num_mem_tokens)", ylabel=metric, title=f"{dataset} tgt_len {int(tgt)} (rmt: best bpd)")
            ax.legend(fontsize=7)
        paths.append(out_dir / f"lm_{dataset}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    groups = other_corpus_groups(paper, other_corpus_rows(paper, ours))
    for (task, tgt_len, scale), g in (groups.groupby(["task", "tgt_len", "scale"], sort=True) if len(groups) else []):
        metric, analogue, paper_len = g["metric"].iloc[0], g["paper_task"].iloc[0], g["paper_tgt_len"].iloc[0]
        p = paper[(paper["table"] == "lm") & (paper["task"] == analogue) & (paper["tgt_len"] == paper_len)]
        p = p.assign(mean=p["value"], std=np.nan, num_mem_tokens=p["num_mem_tokens"].fillna(0),
                     mem_backprop_depth=p["mem_backprop_depth"].fillna(0))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        _lm_panel(axes[0], g, f"ours: {task}, tgt_len {int(tgt_len)} ({SCALE_LABEL.get(scale, scale)})", metric)
        reach = max(g["mem_len"].max(), g["num_mem_tokens"].max())  # the paper's curve over the sizes we ran
        shown = p["model_kind"].isin(g["model_kind"]) & (p["mem_len"] <= reach) & (p["num_mem_tokens"] <= reach)
        _lm_panel(axes[1], p[shown],
                  f"paper: {analogue}, tgt_len {int(paper_len)} (another corpus and scale)", metric)
        paths.append(out_dir / f"lm_{task}_t{int(tgt_len)}_{scale}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return paths


def _lm_panel(ax, df: pd.DataFrame, title: str, metric: str) -> None:
    """Metric against memory size: a line per kind and BPTT depth, the baseline as a level."""
    styles = {0: "s-", 1: "^-", 2: "o-", 3: "v-", 4: "D-"}
    for (kind, depth), g in df.groupby(["model_kind", "mem_backprop_depth"], sort=True):
        color = KIND_COLOR.get(kind, "tab:purple")
        if kind == "baseline":
            ax.axhline(g["mean"].iloc[0], ls=":", color=color, label="baseline")
            continue
        mem = g["mem_len"] if kind == "txl" else g["num_mem_tokens"]
        label = kind if kind == "txl" else f"{kind} bpd {int(depth)}"
        if kind == "rmt+txl":
            label += f" (cache {', '.join(str(int(v)) for v in sorted(set(g['mem_len'])))})"
        g = g.assign(mem=mem).sort_values("mem")
        ax.errorbar(g["mem"], g["mean"], yerr=g["std"].fillna(0), fmt=styles.get(int(depth), "x-"), color=color,
                    label=label, capsize=3, alpha=0.9 if kind != "rmt+txl" else 0.6)
    ax.set(xlabel="memory size (mem_len for txl, memory tokens otherwise)", ylabel=metric, title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)


def group_section(results_dir: str | pathlib.Path) -> str:
    """Markdown: per-group test accuracy (retrieval: by queried pair) of every run in results_dir/groups/,
    one row per run, with the run's memory from its results row; "" when there are none."""
    files = sorted((pathlib.Path(results_dir) / "groups").glob("*.csv"))
    frames = [pd.read_csv(f) for f in files if f.stat().st_size > 0]
    if not frames:
        return ""
    g = pd.concat(frames, ignore_index=True).drop_duplicates(["run_id", "split", "group"], keep="last")
    runs = _normalise(read_results(results_dir)).drop_duplicates("run_id", keep="last").set_index("run_id")
    out = []
    for (task, name), t in g.groupby(["task", "group_name"], sort=True):
        groups = sorted(t["group"].unique())
        rows = []
        for run_id, r in t.groupby("run_id", sort=False):
            first = r.iloc[0]
            mem = runs.loc[run_id] if run_id in runs.index else None
            acc = r.set_index("group")["acc_tf"]
            rows.append((int(first["n_segments"]), first["model_kind"], int(first["seed"]), [
                str(int(first["n_segments"])), first["model_kind"],
                "?" if mem is None else _memory(first["model_kind"], mem["mem_len"], mem["num_mem_tokens"]),
                str(int(first["seed"])), f"`{run_id}`", *[f"{acc[k]:.3f}" if k in acc else "—" for k in groups],
                str(int(r["n_samples"].sum()))]))
        rows = [cells for *_, cells in sorted(rows, key=lambda x: (x[0], list(KIND_COLOR).index(x[1])
                                                                   if x[1] in KIND_COLOR else 9, x[2]))]
        head = ["segments", "model", "memory", "seed", "run", *[f"{name} {k}" for k in groups], "samples"]
        out += [f"## {task}: test accuracy (tf) by {name} ({_shown(results_dir)}/groups/)", "", _table(head, rows), ""]
    return "\n".join(out)


def readme_markdown(report: str, plots: list[pathlib.Path], readme_dir: str | pathlib.Path) -> str:
    """The report as a README section: its title dropped (the README has its own), headings one
    level down, then the plots as images linked relative to the README's directory."""
    lines = report.splitlines()
    lines = lines[1:] if lines and lines[0].startswith("# ") else lines
    body = "\n".join("#" + line if line.startswith("#") else line for line in lines).strip()
    rel = [pathlib.Path(os.path.relpath(os.path.abspath(p), os.path.abspath(readme_dir))).as_posix() for p in plots]
    links = [f"![{pathlib.Path(r).stem}]({r})" for r in rel]
    return body + ("\n\n### Plots\n\n" + "\n\n".join(links) if links else "")


def replace_section(text: str, body: str) -> str:
    """`text` with everything between README_BEGIN and README_END replaced by `body`, markers kept.

    Raises ValueError unless each marker occurs exactly once, README_BEGIN first.
    """
    once = text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    if not once or text.index(README_BEGIN) > text.index(README_END):
        raise ValueError(f"needs exactly one {README_BEGIN} and, after it, one {README_END}")
    head, rest = text.split(README_BEGIN)
    tail = rest.split(README_END)[1]
    return f"{head}{README_BEGIN}\n\n{body}\n\n{README_END}{tail}"


def _shown(path: str | pathlib.Path) -> str:
    """A path as printed in the report: relative to the repository root when inside it."""
    path = pathlib.Path(os.path.abspath(path))
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print the Markdown comparison, optionally write it and the plots."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "experiments/results"), help="directory (or CSV) of our rows")
    ap.add_argument("--paper", default=str(ROOT / "experiments/paper"), help="directory of the paper's CSVs")
    ap.add_argument("--plots", default=str(ROOT / "experiments/plots"), help="where to write the PNG plots")
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    ap.add_argument("--no-plots", action="store_true", help="skip the plots")
    ap.add_argument("--split", default="test", help="which split of ours to compare ('any' for all)")
    ap.add_argument("--readme", default=None, help=f"also put the tables and plot links in this file, between "
                    f"the lines {README_BEGIN} and {README_END} (e.g. README.md)")
    args = ap.parse_args(argv)
    readme = pathlib.Path(args.readme) if args.readme else None
    if readme:  # check the markers before any work
        try:
            readme_text = readme.read_text(encoding="utf-8")
            replace_section(readme_text, "")
        except (OSError, ValueError) as e:
            print(f"error: {readme}: {e}", file=sys.stderr)
            return 1
    paper = load_paper(args.paper)
    if paper.empty:
        print(f"no paper tables found in {args.paper}", file=sys.stderr)
        return 1
    ours, dropped = load_ours(args.results, args.split)
    pairs, only = match(paper, ours)
    other = other_corpus_rows(paper, only)
    only = only.drop(index=other.index)
    reevaluated = int((ours["reevaluated_by"] != "").sum()) if len(ours) else 0
    extra = "".join("\n" + part for part in (render_other_corpora(other_corpus_groups(paper, other)),
                                              group_section(args.results)) if part)
    text = render(pairs, only, _shown(args.results), len(ours), dropped, reevaluated=reevaluated) + extra
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    plots = [] if args.no_plots else make_plots(paper, ours, args.plots)
    for path in plots:
        print(f"wrote {path}", file=sys.stderr)
    if readme:  # with --no-plots, link the plots already there
        plots = plots or sorted(pathlib.Path(args.plots).glob("*.png"))
        short = render(pairs, only, _shown(args.results), len(ours), dropped, matched_only=True,
                       reevaluated=reevaluated) + extra
        readme.write_text(replace_section(readme_text, readme_markdown(short, plots, readme.parent)), encoding="utf-8")
        print(f"updated {readme} between {README_BEGIN} and {README_END}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
