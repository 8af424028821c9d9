"""The grid runner (rmt.tools.sweep) and the generated results section written by
rmt.tools.compare --readme (experiments/RESULTS.md).

    python -m pytest tests/test_sweep.py -q

Runs use a fake task script that appends a results row with rmt.results.append_result at once,
so the sweep logic is tested without training anything.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from rmt.results import append_result, read_results
from rmt.tools import compare, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]

# bash FAKE train FLAGS...: records its flags and environment, then appends a test row for --run_name,
# or exits 3 when --seed equals $FAKE_FAIL_SEED, or writes nothing when it equals $FAKE_NO_ROW_SEED.
FAKE = """#!/usr/bin/env bash
[ "$1" = train ] || exit 2
shift
echo "$* | preset=${RMT_PRESET:-}" >> "$(dirname "$0")/calls.txt"
exec %(python)s - "$@" <<'PY'
import argparse, os, sys
from rmt.results import append_result
p = argparse.ArgumentParser()
for flag in ("--run_name", "--results_csv", "--seed", "--tgt_len", "--mem_len", "--num_mem_tokens"):
    p.add_argument(flag)
a, _ = p.parse_known_args()
if a.seed == os.environ.get("FAKE_FAIL_SEED"):
    print("fake crash: something went wrong"); sys.exit(3)
if a.seed != os.environ.get("FAKE_NO_ROW_SEED"):
    append_result(a.results_csv, {"run_id": a.run_name, "task": "copy", "seed": a.seed, "split": "test",
                                  "tgt_len": a.tgt_len, "acc_tf": 0.5, "acc_greedy": 0.25, "exact_match": 0.125,
                                  "metric_name": "acc_greedy", "metric_value": 0.25})
PY
"""


@pytest.fixture
def fake_script(tmp_path):
    path = tmp_path / "fake.sh"
    path.write_text(FAKE % {"python": sys.executable})
    return path


def _grid(tmp_path, fake, **over) -> pathlib.Path:
    """A grid file of 4 runs (baseline and rmt M=6 at tgt_len 6, seeds 1 and 2) with `over` on top."""
    grid = {"name": "g", "script": str(fake), "env": {"RMT_PRESET": "cpu"}, "flags": ["--max_step", "5"],
            "results_csv": str(tmp_path / "results.csv"), "kinds": ["baseline", "rmt"],
            "tgt_len": [{"tgt_len": 6, "memory": [6]}], "seeds": [1, 2]}
    grid.update(over)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(grid))
    return path


def _calls(tmp_path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


# --- grid expansion ------------------------------------------------------------------------------

def test_expand_names_flags_and_per_tgt_len_axes():
    s = sweep.expand({
        "name": "copy_cpu", "script": "scripts/copy.sh", "env": {"RMT_PRESET": "cpu"}, "flags": ["--max_step", "9"],
        "kinds": ["baseline", "txl", "rmt"], "memory": [3],
        "tgt_len": [{"tgt_len": 12, "kinds": ["baseline"]}, {"tgt_len": 6, "memory": [6, 2], "curriculum": [12]},
                    {"tgt_len": 4, "curriculum": [12, 6], "eval_tgt_len": 8}],
        "seeds": [7, 8]})
    assert s.env == {"RMT_PRESET": "cpu"} and s.results_csv == ROOT / sweep.DEFAULT_CSV
    per_seed = ["baseline-t12-m0", "baseline-t6-m0", "txl-t6-m6", "txl-t6-m2", "rmt-t6-m6", "rmt-t6-m2",
                "baseline-t4-m0", "txl-t4-m3", "rmt-t4-m3"]
    assert [r.name for r in s.runs] == [f"sweep-copy_cpu-{n}-s{seed}" for seed in (7, 8) for n in per_seed]
    by_name = {r.name: list(r.argv) for r in s.runs}
    assert by_name["sweep-copy_cpu-rmt-t6-m2-s8"] == [
        "bash", "scripts/copy.sh", "train", "--max_step", "9", "--tgt_len", "6", "--eval_tgt_len", "6",
        "--curriculum", "12", "--num_mem_tokens", "2", "--mem_len", "0", "--seed", "8",
        "--run_name", "sweep-copy_cpu-rmt-t6-m2-s8",
        "--results_csv", "experiments/results/synthetic.csv"]
    txl = by_name["sweep-copy_cpu-txl-t4-m3-s7"]
    assert txl[txl.index("--curriculum") + 1:txl.index("--curriculum") + 3] == ["12", "6"]
    assert "--mem_len" in txl and "--num_mem_tokens" not in txl and txl[txl.index("--eval_tgt_len") + 1] == "8"
    base = by_name["sweep-copy_cpu-baseline-t12-m0-s7"]
    assert "--curriculum" not in base and "--num_mem_tokens" not in base
    assert base[base.index("--mem_len") + 1] == "0"  # no cache, even where the script's recipe has one


def test_depth_axis_and_rmt_txl_kind():
    s = sweep.expand({
        "name": "lm", "script": "scripts/run_enwik8_base.sh", "kinds": ["baseline"],
        "tgt_len": [{"tgt_len": 128, "kinds": ["baseline", "txl", "rmt"], "memory": [10], "depth": [0, 2]},
                    {"tgt_len": 128, "kinds": ["rmt+txl"], "memory": [20], "cache": 10, "depth": [0]}],
        "seeds": [1]})
    assert [r.name for r in s.runs] == [f"sweep-lm-{n}-s1" for n in (
        "baseline-t128-m0", "txl-t128-m10", "rmt-t128-m10-d0", "rmt-t128-m10-d2", "rmt+txl-t128-m20-c10-d0")]
    flags = {r.name.split("-", 2)[2]: r.argv for r in s.runs}

    def value(argv, flag):
        return argv[argv.index(flag) + 1] if flag in argv else None

    assert value(flags["txl-t128-m10-s1"], "--mem_len") == "10"
    assert value(flags["txl-t128-m10-s1"], "--mem_backprop_depth") is None  # depth is for memory tokens
    assert value(flags["rmt-t128-m10-d2-s1"], "--mem_backprop_depth") == "2"
    assert value(flags["rmt-t128-m10-d2-s1"], "--mem_len") == "0"
    both = flags["rmt+txl-t128-m20-c10-d0-s1"]
    assert (value(both, "--num_mem_tokens"), value(both, "--mem_len"), value(both, "--mem_backprop_depth")) == \
        ("20", "10", "0")


def test_variants_are_an_axis_of_named_flag_sets():
    s = sweep.expand({"name": "o", "script": "scripts/copy.sh", "kinds": ["rmt"], "tgt_len": [6], "memory": [6],
                      "seeds": [1], "variants": {"emb": ["--read_memory_emb"], "frac": ["--emb_gradient_frac", "0.1"]}})
    assert [r.name for r in s.runs] == ["sweep-o-rmt-t6-m6-emb-s1", "sweep-o-rmt-t6-m6-frac-s1"]
    assert "--read_memory_emb" in s.runs[0].argv and "--read_memory_emb" not in s.runs[1].argv
    assert s.runs[1].argv[s.runs[1].argv.index("--emb_gradient_frac") + 1] == "0.1"
    for bad, message in (({"a/b": []}, "variant label"), ({"x": ["--seed", "3"]}, "which the sweep sets itself"),
                         ([], "non-empty object")):
        with pytest.raises(sweep.GridError, match=message):
            sweep.expand({"script": "scripts/copy.sh", "kinds": ["rmt"], "tgt_len": [6], "memory": [6], "seeds": [1],
                          "variants": bad})


def test_the_armt_kind_is_rmt_with_associative_memory():
    s = sweep.expand({"name": "c", "script": "scripts/copy.sh", "kinds": ["rmt", "armt"], "tgt_len": [6],
                      "memory": [6], "seeds": [1]})
    rmt, armt = (r.argv for r in s.runs)
    assert [r.name for r in s.runs] == ["sweep-c-rmt-t6-m6-s1", "sweep-c-armt-t6-m6-s1"]
    assert armt[armt.index("--num_mem_tokens") + 1] == "6" and armt[armt.index("--memory") + 1] == "associative"
    assert "--memory" not in rmt


@pytest.mark.parametrize("entry, message", [
    ({"tgt_len": 8, "kinds": ["rmt+txl"], "memory": [4]}, "needs a positive integer 'cache'"),
    ({"tgt_len": 8, "kinds": ["rmt"], "memory": [4], "cache": 3}, "needs a positive integer 'cache'"),
    ({"tgt_len": 8, "kinds": ["rmt"], "memory": [4], "depth": [1], "flags": ["--mem_backprop_depth", "2"]},
     "also sets --mem_backprop_depth"),
    ({"tgt_len": 8, "kinds": ["rmt"], "memory": [4], "depth": "2"}, "depth must be a non-empty list"),
])
def test_bad_depth_or_cache_entries(entry, message):
    with pytest.raises(sweep.GridError, match=message):
        sweep.expand({"script": "scripts/copy.sh", "kinds": ["rmt"], "tgt_len": [entry], "seeds": [1]})


@pytest.mark.parametrize("name, n_runs, memory_is_segment",
                         [("copy_cpu", 27, True), ("reverse_cpu", 18, False), ("reverse_cpu_m4", 27, False),
                          ("retrieval_cpu", 21, True), ("copy_cpu_enhanced", 3, True)])
def test_committed_grids(name, n_runs, memory_is_segment):
    s = sweep.load_grid(ROOT / "experiments" / "grids" / f"{name}.json")
    assert s.name == name and len(s.runs) == n_runs and s.env == {"RMT_PRESET": "cpu"}
    assert len({r.name for r in s.runs}) == n_runs and {r.seed for r in s.runs} == {1111, 1112, 1113}
    assert all((ROOT / r.argv[1]).is_file() for r in s.runs)
    if memory_is_segment:  # reverse_cpu keeps 8 memory slots at every segment length
        assert all(r.memory == r.tgt_len for r in s.runs if r.kind != "baseline")


@pytest.mark.parametrize("over, message", [
    ({"kind": ["rmt"]}, "unknown grid keys: kind"),
    ({"kinds": ["rmt", "lstm"]}, "kinds must be"),
    ({"flags": ["--seed", "3"]}, "sets --seed"),
    ({"tgt_len": [{"tgt_len": 6, "curicculum": [12]}]}, "unknown keys curicculum"),
    ({"tgt_len": [6]}, "need memory sizes"),
    ({"tgt_len": [{"tgt_len": 6, "memory": [6]}, {"tgt_len": 6, "memory": [6]}]}, "names some runs twice"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"script": "scripts/nope.sh"}, "not found"),
    ({"tgt_len": [-4]}, "must be a positive integer"),
    ({"memory": [-2]}, "memory must be a non-empty list of integers >= 1"),
    ({"seeds": [-1]}, "seeds must be a non-empty list of integers >= 0"),
    ({"name": "a/b"}, "it names run directories"),
])
def test_bad_grids_are_refused(tmp_path, fake_script, over, message):
    with pytest.raises(sweep.GridError, match=message):
        sweep.load_grid(_grid(tmp_path, fake_script, **over))


def test_the_dry_run_refuses_what_the_real_run_would(tmp_path, fake_script, capsys):
    """A grid nested past the parser's depth, and a results file no run could append to, are one
    line, with --dry-run as without."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert sweep.main([str(deep), "--dry-run"]) == 2
    assert "nests too deeply" in capsys.readouterr().err
    (tmp_path / "csvdir").mkdir()
    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2\n")
    for target, message in ((tmp_path / "csvdir", "is a directory"), (other, "not a results CSV")):
        for dry in (["--dry-run"], []):
            assert sweep.main([str(_grid(tmp_path, fake_script)), "--results", str(target), *dry,
                               "--log-dir", str(tmp_path / "logs")]) == 2
            assert message in capsys.readouterr().err
    assert not _calls(tmp_path)  # no run started


# --- running -------------------------------------------------------------------------------------

def test_shards_split_a_grid_between_side_by_side_sweeps(tmp_path, fake_script):
    grid = _grid(tmp_path, fake_script)
    assert sweep.main([str(grid), "--shard", "1/2", "--log-dir", str(tmp_path / "logs")]) == 0
    assert [c.split("--seed ")[1].split()[0] for c in _calls(tmp_path)] == ["1", "2"]  # runs 1 and 3 of 4
    assert sweep.main([str(grid), "--shard", "0/2", "--log-dir", str(tmp_path / "logs")]) == 0
    assert len(read_results(tmp_path / "results.csv")) == 4 and len(_calls(tmp_path)) == 4
    with pytest.raises(SystemExit):
        sweep.main([str(grid), "--shard", "2/2"])


def test_sweep_skips_finished_runs_reports_failures_and_resumes(tmp_path, fake_script, capsys, monkeypatch):
    grid = _grid(tmp_path, fake_script)
    csv = tmp_path / "results.csv"
    append_result(csv, {"run_id": "sweep-g-baseline-t6-m0-s1", "task": "copy", "split": "test", "acc_tf": 1.0})
    monkeypatch.setenv("FAKE_FAIL_SEED", "2")
    assert sweep.main([str(grid), "--log-dir", str(tmp_path / "logs")]) == 1
    out = capsys.readouterr().out
    assert "4 runs, 1 already in" in out and "3 to run" in out
    calls = _calls(tmp_path)
    assert len(calls) == 3 and not any("--run_name sweep-g-baseline-t6-m0-s1 " in c for c in calls)
    assert all(c.endswith("| preset=cpu") and "--max_step 5" in c for c in calls)  # env and fixed flags
    assert "sweep-g-rmt-t6-m6-s1" in out and "ok | acc_tf 0.500 | acc_greedy 0.250 | exact_match 0.125" in out
    assert "sweep-g-baseline-t6-m0-s2" in out and "FAILED: exit status 3" in out and "fake crash" in out
    assert "2 failed (sweep-g-baseline-t6-m0-s2, sweep-g-rmt-t6-m6-s2)" in out
    assert (tmp_path / "logs" / "sweep-g-baseline-t6-m0-s2.log").read_text().startswith("RMT_PRESET=cpu bash ")

    monkeypatch.delenv("FAKE_FAIL_SEED")  # the second start runs only what failed
    assert sweep.main([str(grid), "--log-dir", str(tmp_path / "logs")]) == 0
    assert len(_calls(tmp_path)) == 5 and all("--seed 2" in c for c in _calls(tmp_path)[3:])
    assert set(read_results(csv)["run_id"]) == {f"sweep-g-{k}-s{s}" for k in ("baseline-t6-m0", "rmt-t6-m6")
                                                for s in (1, 2)}
    assert "0 failed" in capsys.readouterr().out


def test_run_that_writes_no_row_is_a_failure(tmp_path, fake_script, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_NO_ROW_SEED", "1")
    grid = _grid(tmp_path, fake_script, kinds=["rmt"], seeds=[1])
    assert sweep.main([str(grid), "--log-dir", str(tmp_path / "logs")]) == 1
    assert "exit status 0 but no results row" in capsys.readouterr().out


def test_results_flag_overrides_the_grid_csv(tmp_path, fake_script, capsys):
    grid = _grid(tmp_path, fake_script, kinds=["baseline"], seeds=[1])
    other = tmp_path / "other.csv"
    assert sweep.main([str(grid), "--results", str(other), "--log-dir", str(tmp_path / "logs")]) == 0
    assert list(read_results(other)["run_id"]) == ["sweep-g-baseline-t6-m0-s1"]
    assert not (tmp_path / "results.csv").exists()


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, fake_script, capsys):
    grid = _grid(tmp_path, fake_script)
    append_result(tmp_path / "results.csv", {"run_id": "sweep-g-rmt-t6-m6-s2", "task": "copy", "split": "test"})
    assert sweep.main([str(grid), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"RMT_PRESET=cpu bash {fake_script} train --max_step 5 --tgt_len 6 --eval_tgt_len 6 --mem_len 0 "
                        f"--seed 1 --run_name sweep-g-baseline-t6-m0-s1 --results_csv {tmp_path / 'results.csv'}")
    assert "--num_mem_tokens 6 --mem_len 0 --seed 1 --run_name sweep-g-rmt-t6-m6-s1" in lines[1]
    assert lines[3] == "# done: sweep-g-rmt-t6-m6-s2" and lines[4].startswith("# 4 runs, 1 already in")
    assert _calls(tmp_path) == []


def test_sweep_sh_from_other_cwd(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "sweep.sh"), str(ROOT / "experiments/grids/copy_cpu.json"),
                          "--dry-run", "--results", "r.csv"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 28 and lines[-1].startswith("# 27 runs, 0 already in")
    assert lines[0].startswith("RMT_PRESET=cpu bash scripts/copy.sh train --tgt_len 12 --eval_tgt_len 12 ")
    assert lines[0].endswith(f"--run_name sweep-copy_cpu-baseline-t12-m0-s1111 --results_csv {tmp_path / 'r.csv'}")
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "sweep.sh"), "missing.json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot read grid" in bad.stderr


# --- README section ------------------------------------------------------------------------------

README = f"""# Project

Intro text.

## Results against the paper

Generated, do not edit.

{compare.README_BEGIN}
stale table
{compare.README_END}

## After

Tail text.
"""


def test_readme_section_is_replaced_between_the_markers(tmp_path, capsys):
    readme = tmp_path / "docs" / "README.md"
    readme.parent.mkdir()
    readme.write_text(README)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "synthetic_copy.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    args = ["--results", str(tmp_path / "none"), "--paper", str(ROOT / "experiments/paper"), "--plots", str(plots),
            "--no-plots", "--readme", str(readme)]
    assert compare.main(args) == 0
    text = readme.read_text()
    head, rest = text.split(compare.README_BEGIN)
    body, tail = rest.split(compare.README_END)
    assert head == README.split(compare.README_BEGIN)[0] and tail == README.split(compare.README_END)[1]
    assert "stale table" not in body and "# Paper vs ours" not in body
    # The README keeps only the paper rows we have runs for: none here.
    assert "No runs found" in body and "| wt103 | 150 |" not in body
    assert "![synthetic_copy](../plots/synthetic_copy.png)" in body
    assert compare.main(args) == 0 and readme.read_text() == text  # idempotent
    capsys.readouterr()


@pytest.mark.parametrize("content", ["no markers\n", f"{compare.README_END}\nx\n{compare.README_BEGIN}\n",
                                     f"{compare.README_BEGIN}\n{compare.README_BEGIN}\n{compare.README_END}\n"])
def test_readme_without_proper_markers_is_left_alone(tmp_path, capsys, content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    assert compare.main(["--results", str(tmp_path), "--no-plots", "--readme", str(readme)]) == 1
    assert readme.read_text() == content and "results:begin" in capsys.readouterr().err


def test_project_results_file_has_the_markers_once():
    """The generated tables live in experiments/RESULTS.md (bash scripts/compare.sh --readme
    experiments/RESULTS.md), and nowhere else: the README front page holds no generated block."""
    text = (ROOT / "experiments" / "RESULTS.md").read_text()
    compare.replace_section(text, "")  # raises unless each marker occurs once, in order
    assert text.startswith("# ") and "![synthetic_copy](plots/synthetic_copy.png)" in text
    readme = (ROOT / "README.md").read_text()
    assert compare.README_BEGIN not in readme and compare.README_END not in readme
