"""Language modelling on corpora other than the paper's, for rmt.tools.compare.

A corpus of our own (a `prepare text` corpus, WikiText-2, ...) is never the paper's data: its rows are
shown beside the paper's rows of the same level (bytes: enwik8, words: WikiText-103) and recipe, at the
paper's segment length nearest ours, as "reduced scale, other corpus", and compared by their gains over
the baseline rather than by value.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rmt.tools.report import SCALE_LABEL, config_of, memory_cell, num, option_label, ours_cell, table

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
    # which truncated-BPTT procedure trained a run (--lm_replay): runs of the two are never averaged
    rows = rows.assign(procedure=[config_of(c).get("lm_replay") or "correct" for c in rows["config_json"]])
    rows = rows.assign(options=[option_label(c) for c in rows["config_json"]])  # memory options: never averaged
    records = []
    for key, g in rows.dropna(subset=["_v"]).groupby(LM_KEYS + ["procedure", "options", "metric"], sort=False):
        r = pd.Series(dict(zip(LM_KEYS + ["procedure", "options", "metric"], key)))
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
    # The paper's claims are about its own models: ARMT and runs with memory options stay out.
    paper_models = groups["model_kind"].isin(["baseline", "txl", "rmt", "rmt+txl"])
    if "options" in groups:
        paper_models &= groups["options"].fillna("") == ""
    by = {(r.model_kind, int(r.mem_len), int(r.num_mem_tokens), int(r.mem_backprop_depth),
           r.get("procedure", "correct")): r for _, r in groups[paper_models].iterrows()}
    pairs = []  # (claim, a, b, ties hold): the claim is "a below b"
    base = [r for k, r in by.items() if k[0] == "baseline"]
    for kind in ("txl", "rmt") if base else ():
        mem = [r for k, r in by.items() if k[0] == kind]
        if mem:
            pairs.append((f"baseline worse than every {kind}", max(mem, key=lambda r: r["mean"]), base[0], False))
    for (kind, _, m, d, proc), r in by.items():  # for each procedure of BPTT, its deepest run
        txl = by.get(("txl", m, 0, 0, "correct"))
        deepest = max(k[3] for k in by if k[:3] == ("rmt", 0, m) and k[4] == proc) if kind == "rmt" else None
        if kind == "rmt" and txl is not None and d == deepest:
            pairs.append((f"RMT (its deepest BPTT) at or below Transformer-XL at memory {m}", r, txl, True))
    for (kind, l, m, d, _), r in by.items():
        shallow = by.get((kind, l, m, 0, "correct"))  # depth 0 re-runs nothing: one procedure
        if kind in ("rmt", "rmt+txl") and d > 0 and shallow is not None:
            pairs.append((f"deeper BPTT better ({memory_cell(kind, l, m)})", r, shallow, False))
    both = [r for k, r in by.items() if k[0] == "rmt+txl"]
    rest = [r for k, r in by.items() if k[0] != "rmt+txl"]
    if both and rest:
        pairs.append(("RMT + Transformer-XL best", min(both, key=lambda r: r["mean"]),
                      min(rest, key=lambda r: r["mean"]), False))
    out = []
    for claim, a, b, ties in pairs:
        gap, se = _gap(a, b)
        paper_gap = a["paper"] - b["paper"]
        out.append([claim, f"{_label(a)} vs {_label(b)}", f"{num(a['mean'])} vs {num(b['mean'])} ({gap:+.4f})",
                    "—" if pd.isna(paper_gap) else f"{num(a['paper'])} vs {num(b['paper'])} ({paper_gap:+.4f})",
                    _verdict(gap, se, ties_hold=ties)])
    return out


def _label(r) -> str:
    """'rmt M=10, bpd 2', 'txl L=10', 'baseline'."""
    if r["model_kind"] == "baseline":
        return "baseline"
    depth = f", bpd {int(r['mem_backprop_depth'])}" if r["num_mem_tokens"] > 0 else ""
    depth += ", original replay" if r.get("procedure") == "original" else ""
    return f"{r['model_kind']} {memory_cell(r['model_kind'], r['mem_len'], r['num_mem_tokens'])}{depth}"


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
        bpd += " (original replay)" if r.get("procedure") == "original" else ""
        options = r.get("options") or ""
        rows.append([r["task"], str(int(r["tgt_len"])), r["model_kind"] + (f" ({options})" if options else ""),
                     memory_cell(r["model_kind"], r["mem_len"], r["num_mem_tokens"]), bpd, r["metric"],
                     ours_cell(r["mean"], r["std"], r["n"]), "—" if pd.isna(r["gain"]) else f"{r['gain']:+.4f}",
                     f"{r['paper_task']} tgt_len {int(r['paper_tgt_len'])}", num(r["paper"]),
                     "—" if pd.isna(r["paper_gain"]) else f"{r['paper_gain']:+.4f}", r["device"] or "—",
                     SCALE_LABEL.get(r["scale"], f"{r['scale']} [!]") + ", other corpus"])
    out += [table(head, rows), ""]
    for (task, tgt_len, scale), g in groups.groupby(["task", "tgt_len", "scale"], sort=False):
        checks = lm_orderings(g)
        if checks:
            out += [f"### The paper's orderings on {task}, tgt_len {int(tgt_len)} ({SCALE_LABEL.get(scale, scale)})",
                    "", table(["ordering (from the paper)", "compared", "ours (difference)",
                                "paper analogue (difference)", "at this scale"], checks), ""]
    return "\n".join(out)


