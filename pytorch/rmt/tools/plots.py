"""The PNG plots of rmt.tools.compare: ours beside the paper's, per task and per LM corpus."""
from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from rmt.tools.lm_corpora import other_corpus_groups, other_corpus_rows
from rmt.tools.report import (KIND_COLOR, SCALE_LABEL, config_of, normalise, option_label, pool_data_seeds, recipe,
                              values_of)


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
    runs = runs.assign(recipe=[recipe(r) for r in runs.itertuples()]).sort_values("date", kind="stable")
    runs = runs.assign(reach=runs.groupby(["scale", "recipe"])["n_segments"].transform("nunique"))
    runs = runs.sort_values("reach", kind="stable")  # stable: the newest last among equal reach
    return runs[runs["recipe"] == runs.groupby(point)["recipe"].transform("last")].drop(columns="reach")


def make_plots(paper: pd.DataFrame, ours: pd.DataFrame, out_dir: str | pathlib.Path,
               every_row: pd.DataFrame | None = None) -> list[pathlib.Path]:
    """Accuracy vs segments for copy/reverse/retrieval, LM metric vs memory size and, from
    `every_row` (eval mode included), accuracy at other input lengths than trained; returns the PNGs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = normalise(ours)
    ours = ours[[option_label(c) == "" for c in ours["config_json"]]]  # the curves are of the paper's models
    figures = [(f"synthetic_{task}.png", _task_figure(plt, paper, ours, task))
               for task in ("copy", "reverse", "retrieval")]
    figures += [(f"lm_{dataset}.png", _lm_figure(plt, paper, ours, dataset, metric))
                for dataset, metric in (("wt103", "ppl"), ("enwik8", "bpc"))]
    groups = other_corpus_groups(paper, other_corpus_rows(paper, ours))
    for (task, tgt_len, scale), g in (groups.groupby(["task", "tgt_len", "scale"], sort=True) if len(groups) else []):
        figures.append((f"lm_{task}_t{int(tgt_len)}_{scale}.png",
                        _other_corpus_figure(plt, paper, g, task, tgt_len, scale)))
    capacity = capacity_points(ours)
    if len(capacity):
        figures.append(("retrieval_capacity.png", _capacity_figure(plt, capacity)))
    lengths = length_runs(every_row) if every_row is not None else pd.DataFrame()
    if len(lengths):
        figures.append(("length_generalization.png", _length_figure(plt, lengths)))
    qa = babilong_points(every_row) if every_row is not None else pd.DataFrame()
    for task, g in qa.groupby("qa", sort=True) if len(qa) else []:
        figures.append((f"babilong_{task}.png", _babilong_figure(plt, g, task)))
    paths = []
    for name, fig in figures:
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return paths


RETRIEVAL_CHANCE = 0.1  # ten values: a guess among all of them


def capacity_points(ours: pd.DataFrame) -> pd.DataFrame:
    """Retrieval test accuracy (teacher-forced) against the number of key-value pairs: mean, std and
    count over seeds per curve (scale, segment length, memory size, recipe), model kind and pairs.
    Only the paper's models (no memory options) and curves that cover two or more numbers of pairs;
    `ours` as rmt.tools.compare.load_ours gives."""
    o = ours[(ours["task_base"] == "retrieval") & ours["num_pairs"].notna()]
    o = o[[option_label(c) == "" for c in o["config_json"]]]
    if o.empty:
        return pd.DataFrame()
    o = o.assign(acc=values_of(o, "acc_tf", "acc_tf"), mem=o["mem_len"] + o["num_mem_tokens"],
                 recipe=[recipe(r) for r in o.itertuples()]).dropna(subset=["acc"])
    curve = ["scale", "tgt_len", "mem", "recipe"]
    o = o[o.groupby(curve)["num_pairs"].transform("nunique") > 1]
    if o.empty:
        return pd.DataFrame()
    points = o.groupby([*curve, "model_kind", "num_pairs"], as_index=False).agg(
        mean=("acc", "mean"), std=("acc", "std"), n=("acc", "size"), n_segments=("n_segments", "first"))
    return points.astype({"num_pairs": int, "n": int})


def _capacity_figure(plt, df: pd.DataFrame):
    curves = list(df.groupby(["scale", "tgt_len", "mem", "recipe"], sort=True))
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, ((scale, tgt_len, mem, how), c) in zip(axes[0], curves):
        for kind, g in c.groupby("model_kind", sort=True):
            _series(ax, g, "num_pairs", kind, KIND_COLOR.get(kind, "tab:green"), paper=False)
        ax.axhline(RETRIEVAL_CHANCE, ls=":", color="grey", lw=1)
        ax.set_xscale("log", base=2)
        pairs = sorted(c["num_pairs"].unique())
        ax.set_xticks(pairs, [str(v) for v in pairs])
        ax.set(xlabel="key-value pairs before the query", ylabel="test accuracy (teacher-forced)", ylim=(0, 1.05),
               title=f"retrieval capacity: segments of {int(tgt_len)}, memory {int(mem)}\n"
                     f"{how.removeprefix(', ')} ({SCALE_LABEL.get(scale, scale)})")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    return fig


def length_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of trained runs at other input lengths: each run's own test row and the eval-mode
    rows of its checkpoint_best.pt at other --n_segments, memory left as it is (no ablation).
    Columns run, task, trained (segments trained on), n_segments, acc, chance; only runs with an
    evaluation at another length."""
    rows = normalise(rows)
    rows = rows[(rows["split"] == "test") & (rows["metric_name"] == "accuracy")]
    points = []
    for r in rows.itertuples():
        cfg = config_of(r.config_json)
        if cfg.get("memory_ablation", "none") != "none":
            continue
        run = pathlib.PurePath(str(cfg.get("eval_checkpoint") or "")).parent.name if cfg.get("eval_only") else r.run_id
        points.append({"run": run, "evaluated": bool(cfg.get("eval_only")), "n_segments": r.n_segments,
                       "acc": float(r.metric_value), "chance": 1 / cfg["n_values"] if cfg.get("n_values") else np.nan,
                       "task": str(r.task)})
    if not points:
        return pd.DataFrame()
    df = pd.DataFrame(points)
    trained = df[~df["evaluated"]].drop_duplicates("run", keep="last").set_index("run")
    df = df[df["run"].isin(trained.index)].drop_duplicates(["run", "n_segments", "evaluated"], keep="last")
    df = df.assign(trained=df["run"].map(trained["n_segments"]), task=df["run"].map(trained["task"]))
    df = df[~(df["evaluated"] & (df["n_segments"] == df["trained"]))]  # the run's own row stands for its length
    shown = df.groupby("run")["n_segments"].transform("nunique") > 1
    return df[shown].drop(columns="evaluated").sort_values(["run", "n_segments"]).reset_index(drop=True)


BABILONG_CHANCE = 1 / 6  # six places answer every question


def babilong_points(rows: pd.DataFrame) -> pd.DataFrame:
    """Exact match by sample length of every long-context QA test row (rmt.tasks.babilong), each
    evaluated checkpoint under its training run's name. Columns qa, series, tokens, acc, trained
    (the run's training length; NaN for the bare model), samples."""
    rows = normalise(rows)
    rows = rows[(rows["split"] == "test") & rows["task"].astype(str).str.startswith("babilong-")]
    points = []
    for r in rows.itertuples():
        cfg = config_of(r.config_json)
        if "sample_tokens" not in cfg:
            continue
        ablation = cfg.get("memory_ablation", "none")
        if cfg.get("zero_shot"):
            series = "bare model, zero-shot"
        else:
            run = pathlib.PurePath(str(cfg.get("eval_checkpoint") or "")).parent.name if cfg.get("eval_only") \
                else r.run_id
            memory = "ARMT" if cfg.get("memory") == "associative" else "RMT"
            kind = "last segment only" if cfg.get("last_segment_only") else \
                f"{memory}, {cfg.get('num_mem_tokens')} memory" if cfg.get("num_mem_tokens") else "no memory"
            where = ", story in earlier segments" if cfg.get("story_in_earlier_segments") else ""
            series = f"{run} ({kind}{where})" + (f", memory {ablation}" if ablation != "none" else "")
        points.append({"qa": cfg.get("task"), "series": series, "tokens": int(cfg["sample_tokens"]),
                       "acc": float(r.metric_value), "samples": cfg.get("n_test"),
                       "data_seed": cfg.get("data_seed", 0),
                       "trained": np.nan if cfg.get("eval_only") else int(cfg["sample_tokens"])})
    if not points:
        return pd.DataFrame()
    df = pool_data_seeds(pd.DataFrame(points), ["qa", "series", "tokens"], "samples", ["acc"])
    base = df["series"].str.replace(r", memory \w+$", "", regex=True)
    trained = df.dropna(subset=["trained"]).set_index("series")["trained"]
    return df.assign(trained=base.map(trained)).sort_values(["qa", "series", "tokens"]).reset_index(drop=True)


def _babilong_figure(plt, df: pd.DataFrame, task: str):
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (series, g) in enumerate(df.groupby("series", sort=True)):
        ablated = "memory " in series.split(")")[-1]
        color, x = f"C{i % 10}", g["tokens"].clip(lower=64)  # the story alone (0) drawn at the axis' left end
        ax.plot(x, g["acc"], "s--" if ablated else "o-", color=color, label=series)
        few = g["samples"].fillna(0) < 10  # a point of a few samples: hollow, with its count
        ax.plot(x[few], g["acc"][few], "o", color=color, markerfacecolor="white", markersize=9)
        for xi, yi, n in zip(x[few], g["acc"][few], g["samples"][few].fillna(0)):
            ax.annotate(f"n={int(n)}", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=6)
        if not ablated:
            at = g[g["tokens"] == g["trained"]]
            ax.plot(at["tokens"], at["acc"], "*", color=color, markersize=14)
    ax.axhline(BABILONG_CHANCE, ls=":", color="grey", lw=1)
    ax.text(df["tokens"].clip(lower=64).max(), BABILONG_CHANCE, " chance 1/6", va="bottom", ha="right", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="sample length, tokens (star: as trained; hollow: under 10 test samples; 64: the story alone)",
           ylabel="exact match",
           ylim=(0, 1.05), title=f"{task}: facts hidden in text, answered at the end")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside: one line a run
    return fig


def _length_figure(plt, df: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (run, g) in enumerate(df.groupby("run", sort=True)):
        color = f"C{i % 10}"
        trained = g["trained"].iloc[0]
        ax.plot(g["n_segments"], g["acc"], "o-", color=color, label=f"{g['task'].iloc[0]} ({run})")
        ax.plot([trained], g.loc[g["n_segments"] == trained, "acc"], "*", color=color, markersize=14)
    for chance in sorted(set(df["chance"].dropna())):
        ax.axhline(chance, ls=":", color="grey", lw=1)
        ax.text(df["n_segments"].max(), chance, f" chance {chance:g}", va="bottom", ha="right", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="segments at evaluation (star: as trained)", ylabel="test accuracy", ylim=(0, 1.05),
           title="accuracy on longer inputs than trained")
    ax.legend(fontsize=6)
    return fig


def _task_figure(plt, paper: pd.DataFrame, ours: pd.DataFrame, task: str):
    p = paper[(paper["table"] == "synthetic") & (paper["task"] == task)].copy()
    answer = p["answer_size"].iloc[0]
    o = ours[(ours["task_base"] == task) & ~ours["another_task"]].copy()  # resized (CPU-preset) variants included
    o["n_segments"] = o["n_segments"].fillna(np.ceil(p["sample_len"].iloc[0] / o["tgt_len"]))
    greedy = values_of(o, "acc_greedy", "acc_greedy").where(o["tgt_len"] <= answer)
    o["acc"] = greedy.fillna(values_of(o, "acc_tf", "acc_tf")).fillna(values_of(o, "acc", "acc"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, color in KIND_COLOR.items():
        pk = p[p["model_kind"] == kind]  # its own columns: assigning p's to an empty frame would take p's rows
        pk = pk.assign(mem=pk["mem_len"] + pk["num_mem_tokens"], mean=pk["value"])
        pk = pk.dropna(subset=["mean"]).sort_values("mem").drop_duplicates("n_segments", keep="last")
        _series(ax, pk, "n_segments", f"{kind} paper", color, paper=True)
        ok = plotted_runs(o[o["model_kind"] == kind])
        for scale, g in _agg(ok["acc"], ok[["scale", "n_segments"]]).groupby("scale"):
            _series(ax, g, "n_segments", f"{kind} ours ({SCALE_LABEL.get(scale, scale)})", color, paper=False)
    ax.set(xlabel="number of segments", ylabel="accuracy", title=f"{task}: accuracy vs segments", ylim=(0, 1.05))
    ax.legend(fontsize=7)
    return fig


def _lm_figure(plt, paper: pd.DataFrame, ours: pd.DataFrame, dataset: str, metric: str):
    p = paper[(paper["table"] == "lm") & (paper["task"] == dataset)]
    o = ours[ours["task"] == dataset].copy()
    o["v"] = values_of(o, metric, metric)
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
        ax.set(xlabel="memory size (mem_len or num_mem_tokens)", ylabel=metric,
               title=f"{dataset} tgt_len {int(tgt)} (rmt: best bpd)")
        ax.legend(fontsize=7)
    return fig


def _other_corpus_figure(plt, paper: pd.DataFrame, g: pd.DataFrame, task: str, tgt_len: float, scale: str):
    """Ours on a corpus of our own beside the paper's same-level corpus, in two panels."""
    metric, analogue, paper_len = g["metric"].iloc[0], g["paper_task"].iloc[0], g["paper_tgt_len"].iloc[0]
    p = paper[(paper["table"] == "lm") & (paper["task"] == analogue) & (paper["tgt_len"] == paper_len)]
    p = p.assign(mean=p["value"], std=np.nan, num_mem_tokens=p["num_mem_tokens"].fillna(0),
                 mem_backprop_depth=p["mem_backprop_depth"].fillna(0))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _lm_panel(axes[0], g, f"ours: {task}, tgt_len {int(tgt_len)} ({SCALE_LABEL.get(scale, scale)})", metric)
    reach = max(g["mem_len"].max(), g["num_mem_tokens"].max())  # the paper's curve over the sizes we ran
    shown = p["model_kind"].isin(g["model_kind"]) & (p["mem_len"] <= reach) & (p["num_mem_tokens"] <= reach)
    _lm_panel(axes[1], p[shown], f"paper: {analogue}, tgt_len {int(paper_len)} (another corpus and scale)", metric)
    return fig


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


