"""Compare our results rows (experiments/results/*.csv) with the paper's tables (experiments/paper/*.csv).

    python3 -m rmt.tools.compare [--results DIR] [--paper DIR] [--plots DIR] [--markdown FILE] [--no-plots]
                                             [--readme experiments/RESULTS.md]

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
import os
import pathlib
import sys

import numpy as np
import pandas as pd

from rmt import REPO_ROOT
from rmt.errors import exits_on_error
from rmt.results import read_results
from rmt.tools.lm_corpora import other_corpus_groups, other_corpus_rows, render_other_corpora
from rmt.tasks.babilong import length_label
from rmt.tools.plots import babilong_points, capacity_points, make_plots
from rmt.tools.report import (
    KIND_COLOR,
    SCALE_LABEL,
    config_of,
    memory_cell,
    normalise,
    num,
    option_label,
    ours_cell,
    pool_data_seeds,
    recipe,
    table,
    values_of,
)

PAPER_TABLES = ("lm", "synthetic", "long_synthetic", "sqeq")
# Our column for a paper metric (acc -> acc_<acc_kind>). The paper's sqeq answer_acc (final slot
# right) is our metric_value of the rows named answer_acc, not exact_match (the whole solution).
OUR_COLUMN = {"ppl": "ppl", "bpc": "bpc", "answer_acc": "answer_acc"}
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def load_paper(paper_dir: str | pathlib.Path) -> pd.DataFrame:
    """All paper tables in one frame with common keys (table, task, model_kind, tgt_len, mem_len,
    num_mem_tokens, mem_backprop_depth, n_segments) plus metric, our_col, value, n_runs, note."""
    frames = []
    for name in PAPER_TABLES:
        path = pathlib.Path(paper_dir) / f"{name}.csv"
        if not path.exists():
            continue
        try:
            d = pd.read_csv(path)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"{path}: not a readable paper table ({type(e).__name__}: {str(e).splitlines()[0]})") \
                from None
        need = {"dataset" if name == "lm" else "mem_size", "model_kind", "metric", "value"}
        if need - set(d.columns):
            raise ValueError(f"{path}: a paper table needs the columns {', '.join(sorted(need))}; missing "
                             f"{', '.join(sorted(need - set(d.columns)))}; a paper table is comma-separated")
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


# What a re-evaluation replaces in its training run's row; the run's recipe and provenance stay.
MEASURED = ["metric_name", "metric_value", "loss", "ppl", "bpc", "acc_tf", "acc_greedy", "exact_match"]


def _supersede(df: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Training rows take the measurements of the newest eval-mode row of their own best checkpoint (same task,
    split, eval_tgt_len and metric), e.g. after a metric fix; `reevaluated_by` names that row, else is empty."""
    df = df.assign(reevaluated_by="")
    for _, e in evals.iterrows():  # in file order, so the newest re-evaluation is applied last
        cfg = config_of(e["config_json"])
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
    df = normalise(read_results(results_dir))
    with_id = df["run_id"].notna()  # a re-appended run counts once (its last row)
    df = pd.concat([df[with_id].drop_duplicates(["run_id", "split", "metric_name"], keep="last"), df[~with_id]])
    reevaluated = pd.Series([config_of(c).get("eval_only") is True for c in df["config_json"]], index=df.index,
                            dtype=bool)
    df = _supersede(df[~reevaluated], df[reevaluated])
    if split == "any":
        return df, int(reevaluated.sum())
    keep = df["split"].isna() | (df["split"].astype(str) == split)
    return df[keep], int((~keep).sum() + reevaluated.sum())


def match(paper: pd.DataFrame, ours: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair every paper row with our matching runs, one record per (scale, device) group.

    Returns (pairs: paper columns + scale, device, mean, std, n; ours_only: unmatched rows).
    """
    records, used = [], set()
    if len(ours):  # each run's recipe, parsed once rather than once per paper row
        ours = ours.assign(recipe=[recipe(r) for r in ours.itertuples()])
        # a run with a memory option of ours is another model than the paper's: "Ours only"
        ours = ours.assign(_options=[option_label(c) for c in ours["config_json"]])
    for i, p in paper.iterrows():
        m = ours[(ours["task_base"] == p["task"]) & (ours["model_kind"] == p["model_kind"])
                 & (ours["_options"] == "") & ~ours["another_task"]] if len(ours) else ours
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
                                       f"{memory_cell(r.model_kind, r.mem_len, r.num_mem_tokens)}"
                                       + r.recipe for r in resized.itertuples()])
        # Runs of the paper's own task size but another recipe (a CPU preset, a time limit) are
        # kept apart by their step count: a 3,000-step preset is not averaged with a 15,000-step one.
        exact = exact.assign(_cfg=["" if r.scale == "paper" else r.recipe.removeprefix(", ")
                                   for r in exact.itertuples()])
        m = pd.concat([exact, resized])
        if len(m):
            vals = values_of(m, p["our_col"], p["metric"])
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
            seg = num(r["mem_backprop_depth"]).split(".")[0] if lm else str(int(r["n_segments"]))
            if not lm and pd.notna(r.get("actual_segments")) and r["actual_segments"] != r["n_segments"]:
                seg += f" ({int(r['actual_segments'])})"
            metric = r["metric"] + (f" ({r['acc_kind']})" if r["metric"] == "acc" else "")
            diff = r["mean"] - r["value"] if r["n"] else np.nan
            rows.append([r["task"], str(int(r["tgt_len"])), seg, r["model_kind"],
                         memory_cell(r["model_kind"], r["mem_len"], r["num_mem_tokens"]), metric, num(r["value"]),
                         "—" if pd.isna(r["n_runs"]) else str(int(r["n_runs"])), ours_cell(r["mean"], r["std"], r["n"]),
                         "—" if pd.isna(diff) else f"{diff:+.4f}", r["device"] or "—",
                         (SCALE_LABEL.get(r["scale"], f"{r['scale']} [!]") if r["scale"] else "—")
                         + (f": {r['ours_config']}" if r["ours_config"] else "")])
        n_hit = t.loc[t["n"] > 0, "paper_row"].nunique()
        out += [f"## {name} (experiments/paper/{name}.csv): {n_hit} of {n_all} paper rows matched",
                "", table(head, rows), ""]
    if len(only):
        # A run started from another run's weights (--init_checkpoint), or with a recipe flag, is its own row.
        only = only.assign(start=[init_label(c) for c in only["config_json"]])
        keys = ["task", "start", "tgt_len", "n_segments", "model_kind", "mem_len", "num_mem_tokens",
                "mem_backprop_depth", "metric_name", "device", "scale"]
        rows = []
        for key, g in only.groupby(keys, dropna=False, sort=True):
            k = dict(zip(keys, key))
            v = pd.to_numeric(g["metric_value"], errors="coerce").dropna()
            rows.append([k["task"] + k["start"], num(k["tgt_len"]).split(".")[0], num(k["n_segments"]).split(".")[0],
                         k["model_kind"], memory_cell(k["model_kind"], k["mem_len"], k["num_mem_tokens"]),
                         num(k["mem_backprop_depth"]).split(".")[0], str(k["metric_name"]),
                         ours_cell(v.mean(), v.std(ddof=1), len(v)), k["device"] or "—",
                         SCALE_LABEL.get(k["scale"], f"{k['scale']} [!]")])
        head = ["task", "tgt_len", "segments", "model", "memory", "bpd", "metric", "ours (mean ± std, n)",
                "device", "scale"]
        out += ["## Ours only (no paper counterpart)", "", table(head, rows), ""]
    return "\n".join(out)


# Flags that make a run another recipe without changing the row's key columns: labelled in its task cell.
RECIPE_FLAGS = {"freeze_backbone": "frozen backbone", "memory_norm": "memory_norm",
                "memory_residual": "memory_residual"}


def init_label(config_json: object) -> str:
    """', from <run>' for a run started from another run's weights, ', <flag>' for each recipe
    flag it set (RECIPE_FLAGS) and the memory options it set; '' for a run of the default recipe."""
    config = config_of(config_json)
    init = config.get("init_checkpoint")
    label = f", from {pathlib.PurePath(init).parent.name}" if init else ""
    lora, mem_lr, questions = config.get("lora"), config.get("mem_lr"), config.get("train_questions")
    options = option_label(config_json)
    return (label + "".join(f", {name}" for flag, name in RECIPE_FLAGS.items() if config.get(flag) is True)
            + (f", LoRA r={lora}" if isinstance(lora, int) and lora > 0 else "")
            + (f", mem_lr {mem_lr:g}" if isinstance(mem_lr, float) else "")
            + (f", {questions} questions" if isinstance(questions, int) and questions > 1 else "")
            + (f", {options}" if options else ""))


def group_section(results_dir: str | pathlib.Path) -> str:
    """Markdown: per-group test accuracy (retrieval: by queried pair) of every run in results_dir/groups/,
    one row per run, with the run's memory from its results row; "" when there are none."""
    files = sorted((pathlib.Path(results_dir) / "groups").glob("*.csv"))
    frames = [pd.read_csv(f) for f in files if f.stat().st_size > 0]
    if not frames:
        return ""
    results = normalise(read_results(results_dir))
    # a group row's data seed is its results row's (same run, task, split and time): an evaluation
    # directory (<run>-eval) holds rows of several tasks and data seeds. A re-measurement replaces
    # the row it repeats; the samples of other data seeds are pooled with it.
    seed_of = {(r.run_id, r.task, r.split, r.date): config_of(r.config_json).get("data_seed", 0)
               for r in results.itertuples()}
    g = pd.concat(frames, ignore_index=True)
    g["data_seed"] = [seed_of.get(k, 0) for k in zip(g["run_id"], g["task"], g["split"], g["date"])]
    g = pool_data_seeds(g, ["run_id", "task", "split", "group"], "n_samples", ["acc_tf", "acc_greedy"])
    runs = results.drop_duplicates("run_id", keep="last").set_index("run_id")
    out = []
    for (task, name), t in g.groupby(["task", "group_name"], sort=True):
        groups = sorted(t["group"].unique())
        metric = "acc_tf" if t["acc_tf"].notna().any() else "acc_greedy"  # long-context QA: exact match (greedy)
        rows = []
        for run_id, r in t.groupby("run_id", sort=False):
            first = r.iloc[0]
            mem = runs.loc[run_id] if run_id in runs.index else None
            acc = r.set_index("group")[metric]
            rows.append((int(first["n_segments"]), first["model_kind"], int(first["seed"]), [
                str(int(first["n_segments"])), first["model_kind"],
                "?" if mem is None else memory_cell(first["model_kind"], mem["mem_len"], mem["num_mem_tokens"]),
                str(int(first["seed"])), f"`{run_id}`", *[f"{acc[k]:.3f}" if k in acc else "—" for k in groups],
                str(int(r["n_samples"].sum()))]))
        rows = [cells for *_, cells in sorted(rows, key=lambda x: (x[0], list(KIND_COLOR).index(x[1])
                                                                   if x[1] in KIND_COLOR else 9, x[2]))]
        head = ["segments", "model", "memory", "seed", "run", *[f"{name} {k}" for k in groups], "samples"]
        what = "(tf)" if metric == "acc_tf" else "(greedy)"
        out += [f"## {task}: test accuracy {what} by {name} ({_shown(results_dir)}/groups/)", "", table(head, rows), ""]
    return "\n".join(out)


def capacity_section(ours: pd.DataFrame) -> str:
    """Markdown: retrieval accuracy against the number of key-value pairs, a column per model kind
    (rmt.tools.plots.capacity_points); "" when no curve has two sizes."""
    df = capacity_points(ours) if len(ours) else pd.DataFrame()
    if df.empty:
        return ""
    kinds = sorted(df["model_kind"].unique(), key=lambda k: list(KIND_COLOR).index(k) if k in KIND_COLOR else 9)
    rows = []
    for (scale, tgt_len, mem, how, pairs), g in df.groupby(["scale", "tgt_len", "mem", "recipe", "num_pairs"]):
        cell = g.set_index("model_kind")
        rows.append([SCALE_LABEL.get(scale, f"{scale} [!]") + how, str(int(tgt_len)), str(int(mem)), str(pairs),
                     str(int(g["n_segments"].iloc[0])),
                     *[ours_cell(cell.loc[k, "mean"], cell.loc[k, "std"], cell.loc[k, "n"]) if k in cell.index
                       else "—" for k in kinds]])
    head = ["scale, recipe", "tgt_len", "memory", "pairs", "segments", *kinds]
    return "\n".join(["## retrieval: test accuracy (tf) against the number of key-value pairs (chance 0.1)", "",
                      table(head, rows), ""])


def babilong_section(rows: pd.DataFrame) -> str:
    """Markdown: exact match of every long-context QA run (and evaluation of its checkpoint) by
    sample length, one table per bAbI task; "" when there are none."""
    df = babilong_points(rows)
    out = []
    for task, t in df.groupby("qa", sort=True) if len(df) else []:
        lengths = sorted(t["tokens"].unique())
        grid = t.pivot_table(index="series", columns="tokens", values="acc", aggfunc="last")
        size = t.pivot_table(index="series", columns="tokens", values="samples", aggfunc="last")
        head = ["run (model)", "trained", *[length_label(int(n)) if n else "story" for n in lengths]]
        rows = [[f"`{series}`", length_label(int(t.loc[t["series"] == series, "trained"].iloc[0]))
                 if t.loc[t["series"] == series, "trained"].notna().any() else "—",
                 *[f"{grid.loc[series, n]:.2f} ({int(size.loc[series, n])})" if pd.notna(grid.loc[series, n]) else ""
                   for n in lengths]]
                for series in grid.index]
        out += [f"## {task}, long-context QA: exact match by sample length in tokens (test samples; chance 1/6)",
                "", table(head, rows), ""]
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
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print the Markdown comparison, optionally write it and the plots."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO_ROOT / "experiments/results"), help="directory (or CSV) of our rows")
    ap.add_argument("--paper", default=str(REPO_ROOT / "experiments/paper"), help="directory of the paper's CSVs")
    ap.add_argument("--plots", default=str(REPO_ROOT / "experiments/plots"), help="where to write the PNG plots")
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    ap.add_argument("--no-plots", action="store_true", help="skip the plots")
    ap.add_argument("--split", default="test", help="which split of ours to compare ('any' for all)")
    ap.add_argument("--readme", default=None, help=f"also put the tables and plot links in this file, between "
                    f"the lines {README_BEGIN} and {README_END} (e.g. experiments/RESULTS.md)")
    args = ap.parse_args(argv)
    readme = pathlib.Path(args.readme) if args.readme else None
    if readme:  # check the markers before any work
        try:
            readme_text = readme.read_text(encoding="utf-8")
            replace_section(readme_text, "")
        except (OSError, ValueError) as e:
            print(f"error: {readme}: {e}", file=sys.stderr)
            return 1
    try:
        paper = load_paper(args.paper)
        if not args.no_plots:  # where the plots go, before any work
            pathlib.Path(args.plots).mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as e:
        print(f"error: {e}" if isinstance(e, ValueError) else f"error: --plots {args.plots}: {e.strerror}",
              file=sys.stderr)
        return 1
    if paper.empty:
        print(f"no paper tables found in {args.paper}", file=sys.stderr)
        return 1
    try:
        ours, dropped = load_ours(args.results, args.split)
    except ValueError as e:  # a malformed results CSV (rmt.results.read_results says where)
        print(f"error: {e}", file=sys.stderr)
        return 1
    pairs, only = match(paper, ours)
    other = other_corpus_rows(paper, only)
    only = only.drop(index=other.index)
    reevaluated = int((ours["reevaluated_by"] != "").sum()) if len(ours) else 0
    extra = "".join("\n" + part for part in (render_other_corpora(other_corpus_groups(paper, other)),
                                              capacity_section(ours), group_section(args.results),
                                              babilong_section(read_results(args.results))) if part)
    text = render(pairs, only, _shown(args.results), len(ours), dropped, reevaluated=reevaluated) + extra
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    plots = [] if args.no_plots else make_plots(paper, ours, args.plots, read_results(args.results))
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
