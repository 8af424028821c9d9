"""Results schema, paper tables and the paper-vs-ours comparison.

    python -m pytest tests/test_results_compare.py -q
"""
import csv
import json
import multiprocessing as mp
import os
import pathlib
import subprocess

import numpy as np
import pandas as pd
import pytest
from rmt.results import GROUP_COLUMNS, RESULT_COLUMNS, append_result, git_commit, groups_csv, model_kind, read_results
from rmt.tools import compare, lm_corpora, plots, report

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper"


def _paper(name: str) -> pd.DataFrame:
    return pd.read_csv(PAPER / f"{name}.csv")


def _one(df: pd.DataFrame, **keys) -> pd.Series:
    """The single row of `df` whose columns equal `keys`."""
    mask = pd.Series(True, index=df.index)
    for k, v in keys.items():
        mask &= df[k] == v
    assert mask.sum() == 1, f"{keys}: {mask.sum()} rows"
    return df[mask].iloc[0]


# --- schema ---------------------------------------------------------------------------------------

def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="bogus.*nope|nope.*bogus"):
        append_result(tmp_path / "r.csv", {"task": "copy", "bogus": 1, "nope": 2})
    assert not (tmp_path / "r.csv").exists()


def test_header_written_once_and_missing_columns_empty(tmp_path):
    path = tmp_path / "deep" / "dir" / "lm.csv"
    append_result(path, {"task": "wt103", "ppl": 30.5, "config_json": {"a": 1, "b": "x,y"}})
    append_result(path, {"task": "enwik8", "bpc": 1.25, "mem_at_end": False})
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(RESULT_COLUMNS)
    assert sum(line.startswith("run_id,") for line in lines) == 1
    df = read_results(path)
    assert list(df.columns) == RESULT_COLUMNS and len(df) == 2
    assert df.loc[0, "ppl"] == 30.5 and pd.isna(df.loc[0, "bpc"]) and df.loc[1, "bpc"] == 1.25
    assert df.loc[0, "config_json"] == '{"a": 1, "b": "x,y"}'


def test_foreign_header_is_refused(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("run,val\nx,1\n")
    with pytest.raises(ValueError, match="header"):
        append_result(path, {"task": "copy"})
    assert path.read_text() == "run,val\nx,1\n"


def test_read_results_directory_and_missing(tmp_path):
    append_result(tmp_path / "lm.csv", {"task": "wt103"})
    append_result(tmp_path / "synthetic.csv", {"task": "copy"})
    assert sorted(read_results(tmp_path)["task"]) == ["copy", "wt103"]
    assert read_results(tmp_path / "absent").empty


def _writer(path: str, tag: int, n: int) -> None:
    for i in range(n):
        append_result(path, {"run_id": f"p{tag}-{i}", "task": "copy", "command": "x" * 2000, "seed": i})


def test_concurrent_appends_are_well_formed(tmp_path):
    path = str(tmp_path / "synthetic.csv")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, t, 150)) for t in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == RESULT_COLUMNS
    assert len(rows) == 301 and all(len(r) == len(RESULT_COLUMNS) for r in rows)
    assert {r[0] for r in rows[1:]} == {f"p{t}-{i}" for t in range(2) for i in range(150)}


def test_git_commit_says_when_the_code_differs_from_it(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert git_commit(tmp_path) == ""  # not a checkout
    git("init", "-q")
    (tmp_path / "pytorch").mkdir()
    (tmp_path / "pytorch" / "m.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("a\n")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    head = git_commit(tmp_path)
    assert len(head) == 12 and "+" not in head
    (tmp_path / "notes.md").write_text("b\n")  # outside the code: still clean
    (tmp_path / "pytorch" / "new.py").write_text("")  # untracked files are left out
    assert git_commit(tmp_path) == head
    (tmp_path / "pytorch" / "m.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "+dirty"


def test_model_kind():
    assert model_kind(10, 150, True) == "rmt+txl"
    assert model_kind(10, 0, True) == "rmt"
    assert model_kind(10, 0, False) == "mt"
    assert model_kind(0, 150, True) == "txl"
    assert model_kind(0, 0, False) == "baseline"


# --- paper tables ----------------------------------------------------------------------------------

def test_paper_known_values():
    lm = _paper("lm")
    assert _one(lm, dataset="enwik8", model_kind="rmt", num_mem_tokens=10, mem_backprop_depth=2)["value"] == 1.228
    assert _one(lm, dataset="wt103", tgt_len=150, model_kind="baseline")["value"] == 29.95
    assert _one(lm, dataset="wt103", tgt_len=150, model_kind="txl", mem_len=150)["value"] == 24.12
    assert "UNBACKED" in _one(lm, dataset="wt103", model_kind="rmt+txl")["note"]
    syn = _paper("synthetic")
    assert _one(syn, task="copy", n_segments=9, model_kind="rmt")["value"] == 1.00
    assert _one(syn, task="copy", n_segments=9, model_kind="txl")["value"] == 0.261
    assert _one(syn, task="retrieval", tgt_len=3, model_kind="rmt")["actual_segments"] == 3
    assert _one(syn, task="retrieval", tgt_len=4, model_kind="rmt")["n_segments"] == 3
    assert set(syn["acc_kind"]) == {"tf", "greedy"}
    assert _one(_paper("long_synthetic"), task="copy360", model_kind="rmt")["value"] == 0.579
    assert _one(_paper("sqeq"), model_kind="txl")["value"] == 0.934
    assert len(compare.load_paper(PAPER)) == sum(len(_paper(n)) for n in compare.PAPER_TABLES)


# --- comparison ------------------------------------------------------------------------------------

def _write_runs(results: pathlib.Path) -> None:
    """3 seeds of copy RMT M=8 at 9 segments, 1 TXL run, 1 val row, 1 eval-mode row, 1 ours-only LM row."""
    for seed, acc in zip((1, 2, 3), (0.90, 0.95, 1.00)):
        append_result(results / "synthetic.csv", {
            "run_id": f"copy-rmt-{seed}", "scale": "cpu-preset", "device": "cpu", "task": "copy", "seed": seed,
            "tgt_len": 8, "n_segments": 9, "num_mem_tokens": 8, "mem_len": 0, "mem_at_end": True,
            "split": "test", "metric_name": "acc_greedy", "metric_value": acc, "acc_greedy": acc, "acc_tf": 1.0})
    append_result(results / "synthetic.csv", {
        "run_id": "copy-txl", "scale": "paper", "device": "cuda", "task": "copy", "tgt_len": 8, "mem_len": 8,
        "split": "test", "metric_name": "acc_greedy", "metric_value": 0.5, "acc_greedy": 0.5})
    append_result(results / "synthetic.csv", {
        "run_id": "copy-txl", "scale": "paper", "task": "copy", "tgt_len": 8, "mem_len": 8,
        "split": "val", "metric_name": "acc_greedy", "metric_value": 0.1, "acc_greedy": 0.1})
    append_result(results / "synthetic.csv", {  # eval mode re-measuring a checkpoint: not another seed
        "run_id": "copy-rmt-1-eval", "scale": "cpu-preset", "device": "cpu", "task": "copy", "seed": 1,
        "tgt_len": 8, "n_segments": 9, "num_mem_tokens": 8, "mem_len": 0, "mem_at_end": True, "split": "test",
        "metric_name": "acc_greedy", "metric_value": 0.2, "acc_greedy": 0.2, "config_json": {"eval_only": True}})
    append_result(results / "lm.csv", {
        "run_id": "tiny-lm", "scale": "smoke", "device": "cpu", "task": "wt103", "tgt_len": 16, "mem_len": 0,
        "num_mem_tokens": 2, "mem_at_end": True, "split": "test", "metric_name": "ppl", "metric_value": 900.0})


def test_compare_aggregates_and_matches(tmp_path):
    _write_runs(tmp_path)
    paper = compare.load_paper(PAPER)
    ours, dropped = compare.load_ours(tmp_path, "test")
    assert dropped == 2 and "copy-rmt-1-eval" not in set(ours["run_id"])
    pairs, only = compare.match(paper, ours)
    rmt = _one(pairs[pairs["n"] > 0], task="copy", model_kind="rmt")
    assert (rmt["tgt_len"], rmt["num_mem_tokens"], rmt["value"], rmt["n"]) == (8, 8, 1.0, 3)
    assert rmt["mean"] == pytest.approx(0.95) and rmt["std"] == pytest.approx(0.05)
    assert rmt["mean"] - rmt["value"] < 0 and rmt["scale"] == "cpu-preset"
    txl = _one(pairs[pairs["n"] > 0], task="copy", model_kind="txl")
    assert txl["value"] == 0.261 and txl["mean"] == pytest.approx(0.5) and txl["mean"] - txl["value"] > 0
    assert list(only["run_id"]) == ["tiny-lm"]
    text = compare.render(pairs, only, str(tmp_path), len(ours), dropped)
    assert "0.95 ± 0.05 (n=3)" in text and "-0.0500" in text and "+0.2390" in text
    assert "CPU preset [!]" in text and "paper scale" in text
    assert "Ours only" in text and "900.00" in text


def test_runs_started_from_other_weights_are_a_row_of_their_own(tmp_path):
    for run_id, acc, init in (("m4-a", 0.25, None), ("m4-b", 1.0, "runs/m2-rmt/checkpoint_best.pt")):
        append_result(tmp_path / "hf.csv", {
            "run_id": run_id, "scale": "cpu-preset", "device": "cpu", "task": "memorize4x32", "tgt_len": 32,
            "n_segments": 4, "num_mem_tokens": 10, "model_kind": "rmt-encoder", "split": "test",
            "metric_name": "accuracy", "metric_value": acc, "config_json": {"init_checkpoint": init}})
    ours, _ = compare.load_ours(tmp_path, "test")
    pairs, only = compare.match(compare.load_paper(PAPER), ours)
    text = compare.render(pairs, only, str(tmp_path), len(ours), 0)
    assert "| memorize4x32 | 32 | 4 |" in text and "0.25 ± — (n=1)" in text
    assert "| memorize4x32, from m2-rmt | 32 | 4 |" in text and "1.00 ± — (n=1)" in text


def test_runs_of_another_recipe_flag_are_a_row_of_their_own(tmp_path):
    for run_id, ppl, cfg in (("a", 27.0, {}), ("b", 25.0, {"memory_norm": False}), ("c", 21.0, {"memory_norm": True}),
                             ("d", 60.0, {"freeze_backbone": True})):
        append_result(tmp_path / "hf.csv", {
            "run_id": run_id, "scale": "cpu-preset", "device": "cpu", "task": "text-4x64", "tgt_len": 64,
            "n_segments": 4, "num_mem_tokens": 8, "model_kind": "rmt", "split": "test",
            "metric_name": "ppl_last_64", "metric_value": ppl, "config_json": cfg})
    ours, _ = compare.load_ours(tmp_path, "test")
    pairs, only = compare.match(compare.load_paper(PAPER), ours)
    text = compare.render(pairs, only, str(tmp_path), len(ours), 0)
    assert "| text-4x64 | 64 | 4 | rmt | M=8 | 0 | ppl_last_64 | 26.00 ± 1.4142 (n=2) |" in text  # a and b
    assert "| text-4x64, memory_norm | 64 | 4 |" in text and "| text-4x64, frozen backbone | 64 | 4 |" in text


def test_the_length_plot_shows_each_run_at_the_lengths_its_checkpoint_was_evaluated_on(tmp_path):
    def row(run_id, n, acc, **cfg):
        append_result(tmp_path / "cls.csv", {"run_id": run_id, "task": f"fact{n}x16", "n_segments": n,
                                             "split": "test", "metric_name": "accuracy", "metric_value": acc,
                                             "config_json": {"n_values": 8, **cfg}})

    best = "runs/f4/checkpoint_best.pt"
    row("f4", 4, 1.0)
    row("f4-eval", 8, 0.9, eval_only=True, eval_checkpoint=best)
    row("f4-eval", 16, 0.3, eval_only=True, eval_checkpoint=best)
    row("f4-eval", 4, 0.12, eval_only=True, eval_checkpoint=best, memory_ablation="shuffle")  # not a length
    row("f4-eval", 4, 0.99, eval_only=True, eval_checkpoint=best)  # its own length: the run's row stands
    row("g4", 4, 1.0)  # never evaluated at another length: not drawn
    lengths = plots.length_runs(read_results(tmp_path))
    assert lengths[["run", "n_segments", "acc", "trained"]].values.tolist() == [
        ["f4", 4, 1.0, 4], ["f4", 8, 0.9, 4], ["f4", 16, 0.3, 4]]
    assert (lengths["chance"] == 0.125).all()
    written = plots.make_plots(compare.load_paper(PAPER), compare.load_ours(tmp_path)[0], tmp_path / "plots",
                               read_results(tmp_path))
    assert tmp_path / "plots" / "length_generalization.png" in written


def test_a_reevaluated_best_checkpoint_replaces_its_runs_measurements(tmp_path):
    # e.g. after a metric fix: eval mode on a run's best checkpoint, with the run's own settings
    base = {"scale": "cpu-preset", "device": "cpu", "task": "sqeq_cd-max_root15", "seed": 1, "tgt_len": 30,
            "eval_tgt_len": 30, "n_segments": 6, "num_mem_tokens": 30, "mem_len": 0, "mem_at_end": True,
            "split": "test", "metric_name": "answer_acc", "max_step": 5000}
    append_result(tmp_path / "synthetic.csv", {**base, "run_id": "sq-1", "metric_value": 0.5, "acc_tf": 0.9,
                                               "config_json": {"init_std": 0.1}})
    append_result(tmp_path / "synthetic.csv", {**base, "run_id": "sq-2", "metric_value": 0.7, "acc_tf": 0.9,
                                               "config_json": {"init_std": 0.1}})
    evals = [("sq-1-eval", "runs/sq-1/checkpoint_best.pt", 30, 0.4),  # applied
             ("sq-1-last", "runs/sq-1/checkpoint_last.pt", 30, 0.1),  # another checkpoint than the row's
             ("sq-1-long", "runs/sq-1/checkpoint_best.pt", 60, 0.2),  # another segment length: a new measurement
             ("sq-3-eval", "runs/sq-3/checkpoint_best.pt", 30, 0.3)]  # a run with no row here
    for run_id, ckpt, eval_tgt_len, value in evals:
        append_result(tmp_path / "synthetic.csv", {
            **base, "run_id": run_id, "eval_tgt_len": eval_tgt_len, "metric_value": value, "acc_tf": 0.8,
            "config_json": {"eval_only": True, "eval_checkpoint": ckpt}})
    ours, dropped = compare.load_ours(tmp_path, "test")
    assert dropped == 4 and sorted(ours["run_id"]) == ["sq-1", "sq-2"]
    one, two = (ours.set_index("run_id").loc[r] for r in ("sq-1", "sq-2"))
    assert (one["metric_value"], one["acc_tf"], one["reevaluated_by"]) == (0.4, 0.8, "sq-1-eval")
    assert report.recipe(one) == ", 5000 steps, init std 0.1"  # the run's own recipe and config stay
    assert (two["metric_value"], two["reevaluated_by"]) == (0.7, "")
    text = compare.render(*compare.match(compare.load_paper(PAPER), ours), str(tmp_path), len(ours), dropped,
                          reevaluated=1)
    assert "0.55 ± 0.2121 (n=2)" in text and "1 runs show a later re-evaluation" in text


def test_plots_written(tmp_path):
    _write_runs(tmp_path / "results")
    paper = compare.load_paper(PAPER)
    ours, _ = compare.load_ours(tmp_path / "results")
    paths = plots.make_plots(paper, ours, tmp_path / "plots")
    names = {p.name for p in paths}
    assert {"synthetic_copy.png", "synthetic_reverse.png", "synthetic_retrieval.png",
            "lm_wt103.png", "lm_enwik8.png"} == names
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_sh_from_other_cwd(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "compare.sh"), "--results", str(tmp_path / "none"),
                          "--no-plots", "--markdown", "report.md"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "No runs found" in out.stdout and "| wt103 | 150 |" in out.stdout
    assert (tmp_path / "report.md").read_text().startswith("# Paper vs ours")


def test_resized_task_matches_by_segments_and_largest_paper_memory(tmp_path):
    # A CPU-preset copy (L=8, 24 tokens) at 6 segments stands for the paper's 6-segment row with
    # the largest memory (M=12), not for the M=6 row, and never for another segment count.
    append_result(tmp_path / "synthetic.csv", {
        "run_id": "small", "scale": "cpu-preset", "device": "cpu", "task": "copy-seq_len8", "tgt_len": 4,
        "n_segments": 6, "num_mem_tokens": 4, "mem_len": 0, "mem_at_end": True, "split": "test",
        "metric_name": "acc_greedy", "metric_value": 0.9, "acc_greedy": 0.9})
    pairs, only = compare.match(compare.load_paper(PAPER), compare.load_ours(tmp_path, "test")[0])
    hit = pairs[pairs["n"] > 0]
    assert len(hit) == 1 and len(only) == 0
    row = hit.iloc[0]
    assert (row["task"], row["model_kind"], row["n_segments"], row["num_mem_tokens"]) == ("copy", "rmt", 6, 12)


def test_resized_runs_are_averaged_per_configuration_of_their_own(tmp_path):
    # Two CPU-preset grids at 6 segments with different memory sizes stand for the same paper row,
    # but are never averaged together: one record each, labelled with our configuration.
    for run_id, mem, acc in (("m4", 4, 0.9), ("m2", 2, 0.3)):
        append_result(tmp_path / "synthetic.csv", {
            "run_id": run_id, "scale": "cpu-preset", "device": "cpu", "task": "copy-seq_len8", "tgt_len": 4,
            "n_segments": 6, "num_mem_tokens": mem, "mem_len": 0, "mem_at_end": True, "split": "test",
            "max_step": 3000, "metric_name": "acc_greedy", "metric_value": acc, "acc_greedy": acc})
    pairs, _ = compare.match(compare.load_paper(PAPER), compare.load_ours(tmp_path, "test")[0])
    hit = pairs[pairs["n"] > 0].set_index("ours_config")
    assert sorted(hit.index) == ["copy-seq_len8, tgt_len 4, M=2, 3000 steps", "copy-seq_len8, tgt_len 4, M=4, 3000 steps"]
    assert hit.loc["copy-seq_len8, tgt_len 4, M=4, 3000 steps", "mean"] == 0.9 and (hit["n"] == 1).all()


def test_paper_size_runs_of_different_recipes_are_not_averaged(tmp_path):
    # Retrieval's CPU preset keeps the paper's task size, so its rows match the paper row exactly;
    # a 3,000-step and a 15,000-step recipe, and one with a curriculum, must still be three
    # records, not one mean.
    for run_id, steps, curriculum, acc in (("short", 3000, [], 0.25), ("long", 15000, [], 0.99),
                                           ("staged", 15000, [10], 0.5)):
        append_result(tmp_path / "synthetic.csv", {
            "run_id": run_id, "scale": "cpu-preset", "device": "cpu", "task": "retrieval", "tgt_len": 5,
            "n_segments": 2, "num_mem_tokens": 5, "mem_len": 0, "mem_at_end": True, "split": "test",
            "max_step": steps, "config_json": json.dumps({"curriculum": curriculum}), "metric_name": "acc_tf",
            "metric_value": acc, "acc_tf": acc})
    pairs, _ = compare.match(compare.load_paper(PAPER), compare.load_ours(tmp_path, "test")[0])
    hit = pairs[pairs["n"] > 0].set_index("ours_config")
    assert sorted(hit.index) == ["15000 steps", "15000 steps, curriculum 10", "3000 steps"]
    assert hit.loc["15000 steps", "mean"] == 0.99 and (hit["n"] == 1).all()


def test_plots_show_the_newest_recipe_at_each_point(tmp_path):
    # An older, longer recipe and a newer one at the same point and memory: the curve shows the
    # newer (the current preset); a larger memory at the same point is never shown.
    rows = (("old", 20000, 0.02, 4, 0.75, "2026-01-01T00:00:00"), ("new", 10000, 0.1, 4, 1.0, "2026-02-01T00:00:00"),
            ("big", 10000, 0.1, 8, 0.5, "2026-03-01T00:00:00"))
    for run_id, steps, std, mem, acc, date in rows:
        append_result(tmp_path / "synthetic.csv", {
            "run_id": run_id, "date": date, "scale": "cpu-preset", "device": "cpu", "task": "reverse-seq_len8",
            "tgt_len": 4, "n_segments": 4, "num_mem_tokens": mem, "mem_len": 0, "mem_at_end": True, "split": "test",
            "max_step": steps, "config_json": json.dumps({"init_std": std}), "metric_name": "acc_greedy",
            "metric_value": acc, "acc_greedy": acc})
    ours = report.normalise(compare.load_ours(tmp_path, "test")[0])
    assert list(plots.plotted_runs(ours[ours["model_kind"] == "rmt"])["run_id"]) == ["new"]


def test_plots_keep_a_line_on_one_recipe_where_it_can(tmp_path):
    # A newer recipe tried at one point only (a curriculum) does not replace, there, the recipe the
    # rest of the line uses; once it covers as many points, the newest wins again.
    def run(run_id, seg, date, cfg):
        append_result(tmp_path / "synthetic.csv", {
            "run_id": run_id, "date": date, "scale": "cpu-preset", "device": "cpu", "task": "retrieval",
            "tgt_len": 10 // seg, "n_segments": seg, "num_mem_tokens": 5, "mem_len": 0, "mem_at_end": True,
            "split": "test", "max_step": 15000, "config_json": json.dumps(cfg), "metric_name": "acc_tf",
            "metric_value": 0.5, "acc_tf": 0.5})

    def plotted():
        return sorted(plots.plotted_runs(report.normalise(compare.load_ours(tmp_path, "test")[0]))["run_id"])

    run("grid2", 2, "2026-01-01T00:00:00", {})
    run("grid4", 4, "2026-01-01T00:00:01", {})
    run("cur2", 2, "2026-02-01T00:00:00", {"curriculum": [10]})
    assert plotted() == ["grid2", "grid4"]
    run("cur5", 5, "2026-02-01T00:00:01", {"curriculum": [10]})
    assert plotted() == ["cur2", "cur5", "grid4"]


def test_the_segments_plot_draws_armt_beside_the_papers_models_and_no_paper_line_for_it(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for seed, acc in ((1111, 0.6), (1112, 0.7)):
        append_result(tmp_path / "synthetic.csv", {
            "run_id": f"armt-{seed}", "scale": "cpu-preset", "device": "cpu", "task": "copy-seq_len6",
            "model_kind": "armt", "seed": seed, "tgt_len": 6, "n_segments": 4, "num_mem_tokens": 6, "mem_len": 0,
            "mem_at_end": True, "split": "test", "max_step": 3000, "metric_name": "acc_greedy", "metric_value": acc,
            "acc_greedy": acc, "config_json": json.dumps({"memory": "associative"})})
    ours = compare.load_ours(tmp_path, "test")[0]
    fig = plots._task_figure(plt, compare.load_paper(PAPER), ours, "copy")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert "armt ours (CPU preset [!])" in labels and not any(label.startswith("armt paper") for label in labels)
    assert not any(label.startswith("rmt ours") for label in labels)


def test_retrieval_with_other_numbers_of_pairs_draws_a_capacity_curve_and_is_never_matched(tmp_path):
    # 2 and 8 pairs ask another question than the paper's 4: never matched to its rows, nor drawn
    # on its segments plot; they form the capacity table and plot, mean ± std over seeds per kind.
    def run(run_id, kind, pairs, seed, acc, steps=6000):
        mem = {"mem_len": 4, "num_mem_tokens": 0} if kind == "txl" else {"mem_len": 0, "num_mem_tokens": 4}
        append_result(tmp_path / "synthetic.csv", {
            "run_id": run_id, "scale": "cpu-preset", "device": "cpu", "task": f"retrieval-num_pairs{pairs}",
            "model_kind": kind, "seed": seed, "tgt_len": 4, "n_segments": (2 * pairs + 5) // 4, **mem,
            "mem_at_end": True, "split": "test", "max_step": steps, "metric_name": "acc_greedy",
            "metric_value": acc, "acc_greedy": acc, "acc_tf": acc,
            "config_json": json.dumps({"memory": "associative"} if kind == "armt" else {})})

    for kind, accs in (("txl", (1.0, 0.5)), ("rmt", (1.0, 0.3)), ("armt", (0.9, 0.7))):
        for pairs, acc in zip((2, 8), accs):
            for seed, delta in ((1111, 0.0), (1112, 0.1)):
                run(f"{kind}-p{pairs}-s{seed}", kind, pairs, seed, acc - delta)
    run("lone", "rmt", 4, 1111, 0.99, steps=15000)  # the paper's 4 pairs, another recipe: matched, not a curve
    paper = compare.load_paper(PAPER)
    ours, _ = compare.load_ours(tmp_path, "test")
    pairs, only = compare.match(paper, ours)
    assert set(pairs.loc[pairs["n"] > 0, "task"]) == {"retrieval"} and pairs["n"].sum() == 1
    assert len(only) == 12
    points = plots.capacity_points(ours)
    assert len(points) == 6 and set(points["n"]) == {2}
    armt8 = _one(points, model_kind="armt", num_pairs=8)
    assert armt8["mean"] == pytest.approx(0.65) and armt8["std"] == pytest.approx(0.0707, abs=1e-4)
    assert armt8["n_segments"] == 5
    section = compare.capacity_section(ours)
    assert "| txl | rmt | armt |" in section
    assert "| 8 | 5 | 0.45 ± 0.0707 (n=2) | 0.25 ± 0.0707 (n=2) | 0.65 ± 0.0707 (n=2) |" in section
    names = {p.name for p in plots.make_plots(paper, ours, tmp_path / "plots")}
    assert "retrieval_capacity.png" in names
    assert plots.capacity_points(ours[ours["num_pairs"] != 8]).empty  # one size is not a curve


def test_group_section_shows_each_runs_accuracy_by_queried_pair(tmp_path):
    assert compare.group_section(tmp_path) == ""  # no groups/ at all
    for run, kind, mem, accs in (("r-rmt", "rmt", {"num_mem_tokens": 3}, (0.5, 0.25, 1.0, 1.0)),
                                 ("r-base", "baseline", {}, (0.0, 0.0, 1.0, 1.0))):
        append_result(tmp_path / "synthetic.csv", {"run_id": run, "task": "retrieval", "model_kind": kind,
                                                   "n_segments": 4, "split": "test", **mem})
        for k, a in enumerate(accs, 1):
            append_result(groups_csv(tmp_path / "synthetic.csv"), {
                "run_id": run, "task": "retrieval", "model_kind": kind, "seed": 7, "n_segments": 4, "split": "test",
                "group_name": "pair", "group": k, "n_samples": 10 * k, "acc_tf": a, "acc_greedy": a}, GROUP_COLUMNS)
    text = compare.group_section(tmp_path)
    assert "## retrieval: test accuracy (tf) by pair" in text and "| pair 1 | pair 2 | pair 3 | pair 4 |" in text
    base, rmt = [line for line in text.splitlines() if "`r-" in line]  # baseline first, as in the tables
    assert base == "| 4 | baseline | – | 7 | `r-base` | 0.000 | 0.000 | 1.000 | 1.000 | 100 |"
    assert rmt == "| 4 | rmt | M=3 | 7 | `r-rmt` | 0.500 | 0.250 | 1.000 | 1.000 | 100 |"
    assert len(compare.load_ours(tmp_path)[0]) == 2  # group rows never count as results rows


def test_group_rows_of_other_data_seeds_pool_and_a_remeasurement_replaces(tmp_path):
    """One evaluation directory scores 1M-token samples in separate commands (--data_seed 0, 1): the
    table shows their samples together; the same data seed measured again replaces the first."""
    for date, data_seed, right in (("2026-01-01T00:00:00", 0, 0.0), ("2026-01-02T00:00:00", 1, 1.0),
                                   ("2026-01-03T00:00:00", 1, 1.0), ("2026-01-04T00:00:00", 0, 1.0)):
        row = {"run_id": "s2-eval", "date": date, "task": "babilong-qa1-8192x128", "model_kind": "rmt", "seed": 7,
               "n_segments": 8192, "split": "test"}
        append_result(tmp_path / "babilong.csv", {**row, "num_mem_tokens": 8,
                                                  "config_json": json.dumps({"data_seed": data_seed})})
        append_result(groups_csv(tmp_path / "babilong.csv"), {
            **row, "group_name": "story", "group": "starts before", "n_samples": 1, "acc_greedy": right}, GROUP_COLUMNS)
    line = next(x for x in compare.group_section(tmp_path).splitlines() if "`s2-eval`" in x)
    assert line == "| 8192 | rmt | M=8 | 7 | `s2-eval` | 1.000 | 2 |"  # seed 0 re-measured right, seed 1 once
    (tmp_path / "babilong.csv").write_text("\n".join((tmp_path / "babilong.csv").read_text().splitlines()[:3]) + "\n")
    (groups_csv(tmp_path / "babilong.csv")).write_text(
        "\n".join(groups_csv(tmp_path / "babilong.csv").read_text().splitlines()[:3]) + "\n")
    line = next(x for x in compare.group_section(tmp_path).splitlines() if "`s2-eval`" in x)
    assert line == "| 8192 | rmt | M=8 | 7 | `s2-eval` | 0.500 | 2 |"  # one wrong, one right


def _lm_rows(path, task="books-char", metric="bpc", scale="cpu-preset"):
    """Three seeds of five configurations on a corpus of our own (lower is better)."""
    means = {("baseline", 0, 0, 0): 2.10, ("txl", 10, 0, 0): 2.07, ("rmt", 0, 10, 0): 2.09,
             ("rmt", 0, 10, 2): 2.05, ("rmt+txl", 10, 20, 0): 2.06}
    for seed, noise in ((1, -0.001), (2, 0.0), (3, 0.001)):
        for (kind, mem_len, m, depth), v in means.items():
            append_result(path / "lm.csv", {
                "run_id": f"{task}-{kind}-{m}-{depth}-{seed}", "task": task, "model_kind": kind, "seed": seed,
                "tgt_len": 128, "eval_tgt_len": 128, "mem_len": mem_len, "num_mem_tokens": m,
                "mem_backprop_depth": depth, "split": "test", "metric_name": metric, "metric_value": v + noise,
                metric: v + noise, "scale": scale, "device": "cpu", "max_step": 2000})


def test_other_corpus_lm_rows_are_shown_beside_the_paper_never_matched(tmp_path):
    _lm_rows(tmp_path)
    paper = compare.load_paper(PAPER)
    ours, _ = compare.load_ours(tmp_path)
    pairs, only = compare.match(paper, ours)
    assert pairs.loc[pairs["table"] == "lm", "n"].sum() == 0  # the paper's enwik8 rows get none of ours
    other = lm_corpora.other_corpus_rows(paper, only)
    assert len(other) == len(only) == 15
    groups = lm_corpora.other_corpus_groups(paper, other)
    rmt = _one(groups, model_kind="rmt", mem_backprop_depth=2)
    assert rmt["paper_task"] == "enwik8" and rmt["paper"] == 1.228  # enwik8, tgt_len 128, M=10, bpd 2
    assert rmt["gain"] == pytest.approx(2.05 - 2.10) and rmt["paper_gain"] == pytest.approx(1.228 - 1.402)
    assert pd.isna(_one(groups, model_kind="rmt", mem_backprop_depth=0)["paper"])  # the paper has no M=10 bpd 0
    text = lm_corpora.render_other_corpora(groups)
    assert "reduced scale, other corpus" in text and "CPU preset [!], other corpus" in text
    checks = {row[0]: row for row in lm_corpora.lm_orderings(groups)}
    assert checks["baseline worse than every rmt"][-1] == "holds"
    assert checks["RMT (its deepest BPTT) at or below Transformer-XL at memory 10"][-1] == "holds"
    assert checks["deeper BPTT better (M=10)"][2] == "2.05 vs 2.09 (-0.0400)"
    assert checks["RMT + Transformer-XL best"][-1] == "does not hold"  # 2.06 against RMT's 2.05
    assert "1.303 vs 1.228 (+0.0750)" in checks["RMT + Transformer-XL best"][3]


def test_runs_of_the_original_replay_are_never_averaged_with_the_correct_one(tmp_path):
    """--lm_replay original rows (config_json) form their own group, label and orderings."""
    _lm_rows(tmp_path)
    for seed, v in ((1, 2.03), (2, 2.04), (3, 2.05)):
        append_result(tmp_path / "lm.csv", {
            "run_id": f"orig-{seed}", "task": "books-char", "model_kind": "rmt", "seed": seed, "tgt_len": 128,
            "eval_tgt_len": 128, "mem_len": 0, "num_mem_tokens": 10, "mem_backprop_depth": 2, "split": "test",
            "metric_name": "bpc", "metric_value": v, "bpc": v, "scale": "cpu-preset", "device": "cpu",
            "max_step": 2000, "config_json": {"lm_replay": "original"}})
    paper = compare.load_paper(PAPER)
    ours, _ = compare.load_ours(tmp_path)
    groups = lm_corpora.other_corpus_groups(paper, lm_corpora.other_corpus_rows(paper, compare.match(paper, ours)[1]))
    deep = groups[(groups["model_kind"] == "rmt") & (groups["mem_backprop_depth"] == 2)]
    assert sorted(deep["procedure"]) == ["correct", "original"]
    assert deep.set_index("procedure")["mean"].to_dict() == pytest.approx({"correct": 2.05, "original": 2.04})
    assert "| 2 (original replay) |" in lm_corpora.render_other_corpora(groups)
    claims = [(row[0], row[1]) for row in lm_corpora.lm_orderings(groups)]
    assert ("RMT (its deepest BPTT) at or below Transformer-XL at memory 10",
            "rmt M=10, bpd 2, original replay vs txl L=10") in claims
    assert ("deeper BPTT better (M=10)", "rmt M=10, bpd 2, original replay vs rmt M=10, bpd 0") in claims


def test_runs_with_memory_options_or_armt_are_never_matched_or_averaged_with_the_papers_models(tmp_path, monkeypatch):
    _write_runs(tmp_path)  # 3 seeds of copy RMT M=8 at 9 segments, the paper's row
    for seed, cfg in ((1, {"read_memory_emb": True}), (2, {"read_memory_emb": True}),
                      (3, {"write_mem_init": "learned", "read_memory_emb": False})):
        append_result(tmp_path / "synthetic.csv", {
            "run_id": f"copy-opt-{seed}", "scale": "cpu-preset", "device": "cpu", "task": "copy", "seed": seed,
            "tgt_len": 8, "n_segments": 9, "num_mem_tokens": 8, "mem_len": 0, "mem_at_end": True, "split": "test",
            "metric_name": "acc_greedy", "metric_value": 0.1, "acc_greedy": 0.1, "config_json": cfg})
    ours, _ = compare.load_ours(tmp_path, "test")
    pairs, only = compare.match(compare.load_paper(PAPER), ours)
    rmt = _one(pairs[pairs["n"] > 0], task="copy", model_kind="rmt")
    assert rmt["n"] == 3 and rmt["mean"] == pytest.approx(0.95)  # the default runs alone
    text = compare.render(pairs, only, str(tmp_path), len(ours), 0)
    assert "| copy, read_memory_emb | 8 | 9 | rmt |" in text and "0.10 ± 0.00 (n=2)" in text
    assert "| copy, write_mem_init learned | 8 | 9 | rmt |" in text
    seen = []  # the plots' curves are the paper's models: the option runs stay out of them

    def record(plt, paper, ours, task):
        seen.extend(ours["run_id"])
        return plt.figure()
    monkeypatch.setattr(plots, "_task_figure", record)
    plots.make_plots(compare.load_paper(PAPER), ours, tmp_path / "plots")
    assert "copy-rmt-1" in seen and not any(r.startswith("copy-opt") for r in seen)
    _lm_rows(tmp_path)  # and on an LM corpus: their own group, outside the paper's orderings
    for seed, kind, cfg in ((1, "rmt", {"enhanced_xl_recurrence": True}), (2, "armt", {"memory": "associative"}),
                            (3, "rmt", {"reset_memory_every": 32})):
        append_result(tmp_path / "lm.csv", {
            "run_id": f"lm-opt-{seed}", "task": "books-char", "model_kind": kind, "seed": seed, "tgt_len": 128,
            "eval_tgt_len": 128, "mem_len": 0, "num_mem_tokens": 10, "mem_backprop_depth": 2, "split": "test",
            "metric_name": "bpc", "metric_value": 1.5, "bpc": 1.5, "scale": "cpu-preset", "device": "cpu",
            "max_step": 2000, "config_json": cfg})
    paper = compare.load_paper(PAPER)
    ours, _ = compare.load_ours(tmp_path)
    groups = lm_corpora.other_corpus_groups(paper, lm_corpora.other_corpus_rows(paper, compare.match(paper, ours)[1]))
    deep = groups[(groups["model_kind"] == "rmt") & (groups["mem_backprop_depth"] == 2)]
    assert deep.set_index("options")["mean"].to_dict() == pytest.approx(
        {"": 2.05, "enhanced_xl_recurrence": 1.5, "reset_memory_every 32": 1.5})
    assert "| rmt (enhanced_xl_recurrence) |" in lm_corpora.render_other_corpora(groups)
    assert "| rmt (reset_memory_every 32) |" in lm_corpora.render_other_corpora(groups)
    claims = {row[0]: row for row in lm_corpora.lm_orderings(groups)}  # 1.5 would win every claim it entered
    assert "1.50" not in " ".join(" ".join(row) for row in claims.values())


def test_orderings_say_when_a_gap_is_within_the_seed_spread():
    row = dict(task="c", tgt_len=128, scale="cpu-preset", device="cpu", metric="bpc", mem_len=0,
               mem_backprop_depth=0, paper=np.nan, n=3)
    groups = pd.DataFrame([{**row, "model_kind": "baseline", "num_mem_tokens": 0, "mean": 2.0, "std": 0.05},
                           {**row, "model_kind": "rmt", "num_mem_tokens": 10, "mean": 1.99, "std": 0.05}])
    (claim, *_, verdict), = lm_corpora.lm_orderings(groups)
    assert claim == "baseline worse than every rmt" and verdict == "holds (gap within 2 s.e.)"


def test_compare_command_prints_the_lm_section_and_draws_its_plot(tmp_path):
    _lm_rows(tmp_path / "results")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "compare.sh"), "--results", str(tmp_path / "results"),
                          "--plots", str(tmp_path / "plots")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "The paper's orderings on books-char, tgt_len 128" in out.stdout
    assert "Ours only" not in out.stdout  # the LM rows have their own section
    assert (tmp_path / "plots" / "lm_books-char_t128_cpu-preset.png").stat().st_size > 10_000


def test_recorded_commands_rerun_from_any_checkout():
    from rmt import REPO_ROOT
    from rmt.results import portable_command

    argv = [str(REPO_ROOT / "pytorch" / "rmt" / "train.py"), "--results_csv",
            str(REPO_ROOT / "experiments" / "results" / "x.csv"), "--data", "/elsewhere/corpus"]
    assert portable_command(argv) == "python3 -m rmt.train --results_csv experiments/results/x.csv --data /elsewhere/corpus"
    assert portable_command([str(REPO_ROOT / "pytorch" / "rmt" / "tools" / "benchmark.py"), "throughput"]) == \
        "python3 -m rmt.tools.benchmark throughput"
    assert portable_command(f"bash scripts/copy.sh train --init_checkpoint {REPO_ROOT}/runs/a/b.pt") == \
        "bash scripts/copy.sh train --init_checkpoint runs/a/b.pt"


def test_malformed_paper_tables_and_a_plots_path_under_a_file_are_one_line_errors(tmp_path, capsys):
    paper = tmp_path / "paper"
    paper.mkdir()
    table = pd.read_csv(PAPER / "synthetic.csv")
    cases = [(lambda p: table.drop(columns=["mem_size"]).to_csv(p, index=False), "missing mem_size"),
             (lambda p: p.write_bytes(b"\xff\xfe\x00 not text"), "not a readable paper table"),
             (lambda p: table.to_csv(p, sep=";", index=False), "a paper table is comma-separated")]
    for write, message in cases:
        write(paper / "synthetic.csv")
        assert compare.main(["--paper", str(paper), "--results", str(tmp_path), "--no-plots"]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    (tmp_path / "afile").write_text("x")
    assert compare.main(["--results", str(tmp_path), "--plots", str(tmp_path / "afile" / "plots")]) == 1
    assert "--plots" in capsys.readouterr().err


def test_a_runs_recipe_flags_label_its_task_cell():
    """What makes a run another recipe, from its saved configuration: the run it started from,
    recipe flags, LoRA, the memory's own learning rate and several questions a training sample;
    nothing for the default recipe."""
    cfg = {"init_checkpoint": "runs/stage1/checkpoint_best.pt", "memory_norm": True, "lora": 8, "mem_lr": 0.001,
           "freeze_backbone": False, "memory_residual": True, "train_questions": 4}  # a row's config_json
    assert compare.init_label(json.dumps(cfg)) == (", from stage1, memory_norm, memory_residual, LoRA r=8, "
                                                   "mem_lr 0.001, 4 questions")
    assert compare.init_label(json.dumps({"mem_lr": None, "lora": 0, "train_questions": 1})) == ""
