"""Reliability: divergence (a non-finite step is never applied; one line, or skipped on request),
restarts that change nothing when they fail, run directories that stay put and are not shared,
results rows that are whole or absent, and no stale temporary files."""
import argparse
import fcntl
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from rmt.atomic import atomic_write
from rmt.errors import CheckpointError, RunError
from rmt.model.transformer import MemTransformerLM
from rmt.results import append_result, read_results
from rmt import train
from rmt.training.session import TESTED
from rmt.training.checkpoint import load_file
from rmt.training.runtime import RunLogger, Runtime
from rmt.training.trainer import LAST, Trainer


class NanAtStep:
    """A real loss on random tokens, made NaN at one step."""

    def __init__(self, bad_step: int):
        self.bad_step = bad_step

    def train_batch(self, model, step):
        x = torch.randint(0, 8, (2, 4))
        nll, _ = model(x, x)
        loss = nll.mean() * (math.nan if step == self.bad_step else 1.0)
        loss.backward()
        return {"loss": loss.item(), "tokens": x.numel()}

    def evaluate(self, model, split):
        with torch.no_grad():
            return {"loss": model(torch.arange(8).view(2, 4), torch.arange(8).view(2, 4))[0].mean().item()}

    def after_validation(self, metrics, step):
        return ""

    def state_dict(self):
        return {}


def trainer(tmp_path, **kw):
    torch.manual_seed(0)
    model = MemTransformerLM(n_token=8, n_layer=1, n_head=1, d_model=8, d_head=8, d_inner=8, tgt_len=4)
    args = argparse.Namespace(scheduler="constant", lr=1e-3, warmup_step=0, max_step=10, eta_min=0.0, lr_min=0.0,
                              decay_rate=0.5, patience=0, optim="adam", compile=False, clip=0.25, log_interval=2,
                              eval_interval=2, max_time=0, skip_nonfinite=False, **kw)
    return Trainer(model, args, Runtime("cpu"), RunLogger(tmp_path, enabled=False), tmp_path)


def test_a_nan_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    t = trainer(tmp_path)
    with pytest.raises(RunError, match="training diverged at step 6 .*loss nan"):
        t.fit(NanAtStep(5))
    saved = load_file(tmp_path / LAST)
    assert saved["step"] == 4
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())  # the bad step was not applied
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_skip_nonfinite_drops_the_step_and_trains_on(tmp_path):
    t = trainer(tmp_path)
    t.args.skip_nonfinite = True
    assert t.fit(NanAtStep(5)) is True
    assert t.step == 10 and t.skipped == 1
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())


def test_a_huge_learning_rate_ends_in_one_line_and_no_results_row(tmp_path):
    csv = tmp_path / "lm.csv"
    data = tmp_path / "wt"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.txt").write_text(" a b c d e f g h \n" * 200)
    run = subprocess.run([sys.executable, "-m", "rmt.train", "--dataset", "wt2", "--data", str(data), "--n_layer",
                          "1", "--d_model", "16", "--n_head", "2", "--d_head", "8", "--d_inner", "16", "--tgt_len",
                          "8", "--eval_tgt_len", "8", "--batch_size", "2", "--max_step", "20", "--eval_interval",
                          "10", "--lr", "1e30", "--clip", "0", "--device", "cpu", "--work_dir", str(tmp_path / "runs"),
                          "--run_name", "boom", "--results_csv", str(csv)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout[-1000:] + run.stderr[-1000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged") and "Traceback" not in run.stderr
    assert not csv.exists()


# ---- restarts, checkpoints, run directories, results files ---------------------------------------

TASK_RUN = ["--dataset", "copy", "--task_seq_len", "4", "--tgt_len", "3", "--eval_tgt_len", "3", "--num_mem_tokens",
            "2", "--n_layer", "1", "--d_model", "16", "--n_head", "2", "--d_head", "8", "--d_inner", "32",
            "--max_step", "4", "--eval_interval", "2", "--log_interval", "2", "--n_train", "50", "--n_val", "8",
            "--n_test", "8", "--batch_size", "4", "--device", "cpu"]


def task_run(tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "rmt.train", *TASK_RUN, "--work_dir", str(tmp_path / "runs"),
                           "--data", str(tmp_path / "data"), "--results_csv", str(tmp_path / "res.csv"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_line_error(run):
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    return run.stderr.strip().splitlines()[-1]


def protected(run_dir, csv) -> dict:
    """The bytes a failed command must leave alone: the run's checkpoints and config, the results CSV."""
    files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix in (".pt", ".json")}
    return {**files, "csv": csv.read_bytes() if csv.is_file() else None}


def test_bad_checkpoints_are_one_line_errors_for_both_drivers_and_change_nothing(tmp_path):
    """Restart and eval-only with checkpoints of another shape, optimiser or driver, cut, empty or
    random: one line each, and the run's files and results stay as they were."""
    assert task_run(tmp_path, "--run_name", "r").returncode == 0
    run_dir, csv = tmp_path / "runs" / "r", tmp_path / "res.csv"
    lm_data = tmp_path / "wt"
    write_word_corpus(lm_data)
    lm = [*KILL_RUNS["lm"], "--max_step", "2", "--data", str(lm_data), "--work_dir", str(tmp_path / "runs"),
          "--no_results"]

    def lm_run(*extra):
        return subprocess.run([sys.executable, "-m", "rmt.train", *lm, *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    assert lm_run("--run_name", "lm").returncode == 0
    lm_dir = tmp_path / "runs" / "lm"
    before = protected(run_dir, csv), protected(lm_dir, csv)
    good = (run_dir / LAST).read_bytes()
    restart = ("--restart", "--restart_dir", str(run_dir), "--max_step", "8")
    assert "does not fit this run" in one_line_error(task_run(tmp_path, *restart, "--d_model", "32"))
    assert "does not fit this run" in one_line_error(task_run(tmp_path, *restart, "--optim", "sgd"))
    for damage in (good[:500], good[: len(good) // 2], b"", os.urandom(4096), (lm_dir / LAST).read_bytes()):
        (run_dir / LAST).write_bytes(damage)
        message = one_line_error(task_run(tmp_path, *restart))
        assert str(run_dir / LAST) in message and ("not a readable checkpoint" in message or "does not fit" in message)
    (run_dir / LAST).write_bytes(good)
    for bad in (csv, lm_dir / LAST):
        assert str(bad) in one_line_error(task_run(tmp_path, "--eval_only", "--eval_checkpoint", str(bad)))
    lm_eval = subprocess.run([sys.executable, "-m", "rmt.evaluate", "--checkpoint", str(csv), "--data", str(lm_data)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "not a readable checkpoint" in one_line_error(lm_eval)
    lm_good = (lm_dir / LAST).read_bytes()
    for damage in (lm_good[:700], good):
        (lm_dir / LAST).write_bytes(damage)
        message = one_line_error(lm_run("--restart", "--restart_dir", str(lm_dir), "--max_step", "4"))
        assert str(lm_dir / LAST) in message and ("not a readable checkpoint" in message or "does not fit" in message)
    (lm_dir / LAST).write_bytes(lm_good)
    assert (protected(run_dir, csv), protected(lm_dir, csv)) == before


def test_a_failed_restart_keeps_the_record_and_a_finished_run_is_not_rerun(tmp_path):
    assert task_run(tmp_path, "--run_name", "r").returncode == 0
    run_dir, csv = tmp_path / "runs" / "r", tmp_path / "res.csv"
    before = protected(run_dir, csv)
    mismatched = task_run(tmp_path, "--restart", "--restart_dir", str(run_dir), "--max_step", "8", "--d_model", "32")
    assert protected(run_dir, csv) == before  # config.json is written only once the checkpoint is accepted
    assert "does not fit this run" in one_line_error(mismatched)
    assert "finished at step 4 already" in one_line_error(task_run(tmp_path, "--restart", "--restart_dir",
                                                                   str(run_dir)))
    assert protected(run_dir, csv) == before  # no second results row, nothing rewritten
    (run_dir / TESTED).unlink()  # a run from before test.json, or killed between its row and test.json
    before = protected(run_dir, csv)
    assert "finished at step 4 already" in one_line_error(task_run(tmp_path, "--restart", "--restart_dir",
                                                                   str(run_dir)))
    assert protected(run_dir, csv) == before  # its results row says it was tested


# ---- kill -9 -----------------------------------------------------------------------------------

def test_a_run_killed_after_training_and_before_its_test_is_tested_on_restart(tmp_path):
    assert task_run(tmp_path, "--run_name", "straight", "--results_csv", str(tmp_path / "straight.csv")).returncode == 0
    run_dir = tmp_path / "runs" / "killed"
    killed = subprocess.run([sys.executable, "-m", "rmt.train", *TASK_RUN, "--work_dir", str(tmp_path / "runs"),
                             "--data", str(tmp_path / "data"), "--results_csv", str(tmp_path / "res.csv"),
                             "--run_name", "killed"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RMT_KILL_AFTER_STEP": "4"})  # the last step: saved, not tested
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "res.csv").exists()
    assert task_run(tmp_path, "--restart", "--restart_dir", str(run_dir)).returncode == 0
    assert "training had ended but the test had not run" in (run_dir / "log.txt").read_text()
    assert metrics(tmp_path / "res.csv") == metrics(tmp_path / "straight.csv")
    assert json.loads((run_dir / TESTED).read_text())["test"] == \
        json.loads((tmp_path / "runs" / "straight" / TESTED).read_text())["test"]
    assert "finished at step 4 already" in one_line_error(task_run(tmp_path, "--restart", "--restart_dir",
                                                                   str(run_dir)))
    assert len(read_results(tmp_path / "res.csv")) == 1


def metrics(csv) -> list[dict]:
    """A results file's measured cells, without its provenance (times, names, flags)."""
    return read_results(csv)[["metric_name", "metric_value", "loss"]].to_dict("records")


# Runs that validate and save every 2 steps, with dropout: the task with a curriculum stage change
# at step 8; the LM with memory tokens, an XL cache, truncated BPTT and varlen segments.
KILL_RUNS = {
    "task": [*TASK_RUN, "--max_step", "16", "--eval_interval", "2", "--curriculum", "6", "--dropout", "0.1"],
    "lm": ["--dataset", "wt2", "--n_layer", "1", "--d_model", "16", "--n_head", "2", "--d_head", "8", "--d_inner",
           "32", "--tgt_len", "8", "--eval_tgt_len", "8", "--mem_len", "8", "--num_mem_tokens", "2",
           "--mem_backprop_depth", "1", "--varlen", "--dropout", "0.1", "--batch_size", "4", "--max_step", "16",
           "--eval_interval", "2", "--log_interval", "2", "--device", "cpu"],
}


def write_word_corpus(data) -> None:
    rng = random.Random(0)
    data.mkdir()
    for split, n in (("train", 300), ("valid", 60), ("test", 60)):
        lines = (" ".join(f"w{rng.randrange(rng.randint(5, 40))}" for _ in range(rng.randint(3, 12))) for _ in range(n))
        (data / f"{split}.txt").write_text("\n".join(f" {line} " for line in lines) + "\n")


def start_kill_run(tmp_path, driver: str, name: str) -> subprocess.Popen:
    run_dir = tmp_path / "runs" / name
    where = ["--restart", "--restart_dir", str(run_dir)] if (run_dir / LAST).is_file() else ["--run_name", name]
    return subprocess.Popen([sys.executable, "-m", "rmt.train", *KILL_RUNS[driver], "--work_dir", str(tmp_path / "runs"),
                             "--data", str(tmp_path / "data"), "--results_csv", str(tmp_path / f"{name}.csv"), *where],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_training(proc, log, starts: int) -> bool:
    """Wait until the run logs its start-up line (`starts` earlier ones in the log): training begins."""
    while proc.poll() is None:
        if log.is_file() and log.read_text().count("; run dir ") > starts:
            return True
        time.sleep(0.005)
    return False


def same(a, b) -> bool:
    """Checkpoint contents equal to the bit (tensors, in dicts and lists, and plain values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("driver", KILL_RUNS)
def test_kill_9_at_random_moments_then_restarts_give_the_uninterrupted_run(driver, tmp_path):
    """SIGKILL at random moments of training, validation, checkpoint writes, the test and the results
    append, then --restart, five times over: the run ends with the weights, the carried state, the
    test and the results row of a run that was never killed. The moments are in the failure message."""
    if driver == "lm":
        write_word_corpus(tmp_path / "data")
    seed = int.from_bytes(os.urandom(4), "little")
    straight = start_kill_run(tmp_path, driver, "straight")
    assert wait_for_training(straight, tmp_path / "runs" / "straight" / "log.txt", 0), straight.stderr.read()[-2000:]
    t0 = time.time()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-2000:]
    window = time.time() - t0  # training, test and results row
    rng, moments, log = random.Random(seed), [], tmp_path / "runs" / "killed" / "log.txt"
    for attempt in range(6):
        proc = start_kill_run(tmp_path, driver, "killed")
        if attempt == 5:  # the last one runs to its end
            rc, err = proc.wait(timeout=300), proc.stderr.read()
            break
        starts = log.read_text().count("; run dir ") if log.is_file() else 0
        delay = rng.uniform(0, window)
        if wait_for_training(proc, log, starts):
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        rc, err = proc.wait(timeout=300), proc.stderr.read()
        moments.append(f"{delay:.2f}s of {window:.2f}s: exit {rc}")
        if rc != -signal.SIGKILL:
            break
    context = f"seed {seed}, kills {moments}: {err[-1500:]}"
    assert rc == 0 or "finished at step 16 already" in err, context  # a kill after the test: nothing left to do
    a = load_file(tmp_path / "runs" / "straight" / LAST)
    b = load_file(tmp_path / "runs" / "killed" / LAST)
    assert a["step"] == b["step"] == 16, context
    for part in ("model", "optimizer", "rng", "extra"):
        assert same(a[part], b[part]), f"{part}; {context}"
    assert metrics(tmp_path / "killed.csv") == metrics(tmp_path / "straight.csv"), context
    tested = [json.loads((tmp_path / "runs" / name / TESTED).read_text())["test"] for name in ("straight", "killed")]
    assert tested[0] == tested[1], context


def test_run_names_stay_inside_the_work_dir_and_a_busy_run_dir_is_refused(tmp_path):
    assert "plain directory name" in one_line_error(task_run(tmp_path, "--run_name", "../escape"))
    assert not (tmp_path / "escape").exists()
    run_dir = tmp_path / "runs" / "busy"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert "another run is using" in one_line_error(task_run(tmp_path, "--run_name", "busy"))
    unwritable = tmp_path / "file"
    unwritable.write_text("not a directory")
    assert "cannot write under" in one_line_error(task_run(tmp_path, "--results_csv", str(unwritable / "r.csv")))


def test_a_cut_row_is_dropped_before_the_next_append(tmp_path):
    csv = tmp_path / "r.csv"
    append_result(csv, {"run_id": "a", "split": "test"})
    with open(csv, "a") as f:
        f.write("b,2026-12-03,half a ro")  # what a full disk or a kill mid-write leaves
    append_result(csv, {"run_id": "c", "split": "test"})
    assert list(read_results(csv)["run_id"]) == ["a", "c"]


def test_concurrent_appends_are_whole_rows(tmp_path):
    csv = tmp_path / "r.csv"
    code = ("import sys; from rmt.results import append_result\n"
            "for i in range(50): append_result(sys.argv[1], {'run_id': f'{sys.argv[2]}-{i}', 'split': 'test', "
            "'command': 'x' * 5000})")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(csv), f"p{k}"]) for k in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    ids = list(read_results(csv)["run_id"])
    assert len(ids) == 200 and len(set(ids)) == 200


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs")
def test_a_full_disk_leaves_no_partial_row(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        csv = disk / "r.csv"
        append_result(csv, {"run_id": "a", "split": "test"})
        with pytest.raises(OSError):
            for i in range(1000):
                append_result(csv, {"run_id": f"r{i}", "split": "test", "command": "y" * 4000})
        data = csv.read_bytes()
        assert data.endswith(b"\n") and read_results(csv)["run_id"].iloc[0] == "a"
    finally:
        subprocess.run(["umount", str(disk)])


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    target = tmp_path / "checkpoint_last.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".{target.name}.{dead.pid}.deadbeef.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".{target.name}.{os.getpid()}.cafecafe.tmp"  # a writer still running: kept
    live.write_bytes(b"y")
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and not stale.exists() and live.exists()


def test_in_process_runs_may_reuse_their_run_directory(tmp_path):
    """The lock keeps other processes out, not a later run of the same process (a notebook)."""
    from rmt import train

    common = [*TASK_RUN, "--work_dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data"), "--no_results",
              "--run_name", "same"]
    assert train.main(common) == 0
    assert train.main([*common, "--restart", "--restart_dir", str(tmp_path / "runs" / "same"), "--max_step", "6"]) == 0
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="junk.pt"):  # a run that fails after locking its directory
        train.main([*common, "--run_name", "failed", "--init_checkpoint", str(tmp_path / "junk.pt")])
    assert task_run(tmp_path, "--run_name", "failed", "--no_results").returncode == 0  # ... leaves it free


def test_parity_refuses_a_negative_tolerance_and_names_a_wrong_file(tmp_path):
    bad_tol = subprocess.run([sys.executable, "-m", "rmt.parity", str(ROOT / "tests" / "golden" / "rmt.pt"), "--tol",
                              "-1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad_tol.returncode == 2 and "--tol must be a finite number >= 0" in bad_tol.stderr
    model = MemTransformerLM(n_token=8, n_layer=1, n_head=1, d_model=8, d_head=8, d_inner=8)
    ours = tmp_path / "ours.pt"
    torch.save({"config": model.config.to_dict(), "model": model.state_dict()}, ours)
    wrong = subprocess.run([sys.executable, "-m", "rmt.parity", str(ours)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert wrong.returncode == 2 and "not a parity file" in wrong.stderr and "Traceback" not in wrong.stderr


def test_an_enwik8_file_with_words_is_refused(tmp_path):
    from rmt.lm.corpus import get_lm_corpus

    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("104 101 108 108 111\n" * 5)
    (tmp_path / "train.txt").write_text("104 101 hello 111\n")
    with pytest.raises(ValueError, match="'hello' is not a byte value 0-255"):
        get_lm_corpus(tmp_path, "enwik8")


def test_task_arrays_of_another_width_are_refused(tmp_path):
    import numpy as np

    assert task_run(tmp_path, "--run_name", "a", "--no_results").returncode == 0
    x_path = next((tmp_path / "data").glob("*train*X*.npy"), None) or next((tmp_path / "data").glob("*train*.npy"))
    x = np.load(x_path)
    np.save(x_path, np.concatenate([x, x[:, :1]], axis=1))  # one token wider, as another task's arrays
    assert "tokens long" in one_line_error(task_run(tmp_path, "--run_name", "b", "--no_results"))
    for bad in (99, -3):  # the right width, ids outside the vocabulary
        y = x.copy()
        y[0, 0] = bad
        np.save(x_path, y)
        assert "outside copy" in one_line_error(task_run(tmp_path, "--run_name", "c", "--no_results"))


def test_compare_and_sweep_refuse_a_malformed_results_csv_in_one_line(tmp_path):
    append_result(tmp_path / "lm.csv", {"run_id": "a", "split": "test", "metric_value": 0.5})
    with open(tmp_path / "lm.csv", "a") as f:
        f.write("x,y\n")
    for cmd in (["rmt.tools.compare", "--results", str(tmp_path), "--no-plots"],
                ["rmt.tools.sweep", str(ROOT / "experiments" / "grids" / "copy_cpu.json"), "--dry-run", "--results",
                 str(tmp_path / "lm.csv")]):
        run = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert "line 3 has 2 fields" in one_line_error(run), cmd


def test_a_model_too_large_for_memory_is_a_one_line_error(tmp_path):
    # 4 TB of feed-forward weights: no allocator grants that, and the run says what to change
    run = task_run(tmp_path, "--d_inner", "1000000000000")
    last = one_line_error(run)
    assert last.startswith("error: the model does not fit in memory") and "--d_inner" in last


def test_results_targets_and_model_flags_are_refused_before_anything_runs(tmp_path, capsys):
    """A results file the row could not be appended to, or a model that cannot be built, is
    refused at start-up in one line: no training, no run directory."""
    args = [*TASK_RUN, "--work_dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data")]
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "other.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "garbage.csv").write_bytes(b"\x00\xffnot,a,results\nfile")
    (tmp_path / "ro.csv").write_text("")
    (tmp_path / "ro.csv").chmod(0o444)
    (tmp_path / "file").write_text("x")
    cases = {"dir.csv": "is a directory", "other.csv": "not a results CSV", "garbage.csv": "not a results CSV",
             "file/res.csv": "is not a writable directory"}
    if os.geteuid() != 0:  # root writes to read-only files
        cases["ro.csv"] = "not writable"
    for target, message in cases.items():
        with pytest.raises(SystemExit):
            train.main([*args, "--results_csv", str(tmp_path / target)])
        assert message in capsys.readouterr().err, target
    assert not (tmp_path / "data").exists()  # refused before the task data is generated
    for bad in (["--n_layer", "0"], ["--eval_only", "--eval_checkpoint", str(tmp_path / "other.csv")]):
        with pytest.raises(SystemExit):
            train.main([*args, "--results_csv", str(tmp_path / "res.csv"), *bad])
        capsys.readouterr()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert (tmp_path / "other.csv").read_text() == "a,b,c\n1,2,3\n" and not (tmp_path / "res.csv").exists()


def test_a_checkpoint_with_nan_weights_is_refused_not_evaluated(tmp_path, capsys):
    from rmt.training.checkpoint import save_atomic
    model = MemTransformerLM(n_token=8, n_layer=1, n_head=1, d_model=8, d_head=8, d_inner=8, num_mem_tokens=2)
    state = model.state_dict()
    state["word_emb.emb_layers.0.weight"][0, 0] = math.nan
    save_atomic({"config": model.config.to_dict(), "model": state}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN or inf in word_emb.emb_layers.0.weight\)"):
        load_file(tmp_path / "nan.pt")


def test_task_data_paths_and_a_checkpoint_without_its_config_are_one_line_errors(tmp_path, capsys):
    from rmt import evaluate
    from rmt.tools import generate_data

    (tmp_path / "afile").write_text("x")
    args = [*TASK_RUN, "--work_dir", str(tmp_path / "runs"), "--no_results"]
    with pytest.raises(SystemExit, match="cannot write the task data into .*afile"):
        train.main([*args, "--data", str(tmp_path / "afile")])
    with pytest.raises(SystemExit):
        generate_data.main(["copy", "--out", str(tmp_path / "afile" / "sub")])
    assert "cannot write the task data" in capsys.readouterr().err
    assert train.main([*args, "--data", str(tmp_path / "d"), "--run_name", "ok"]) == 0
    (meta,) = (tmp_path / "d").glob("*meta.json")
    meta.write_text("{broken")
    with pytest.raises(SystemExit, match="corrupt JSON"):
        train.main([*args, "--data", str(tmp_path / "d")])
    (tmp_path / "runs" / "ok" / "config.json").unlink()
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(tmp_path / "runs" / "ok" / "checkpoint_best.pt")])
    assert "no readable config.json beside" in capsys.readouterr().err


@pytest.mark.parametrize("value, words", [("abc", "'abc', not a finite number"), (math.nan, "not a finite number"),
                                          (math.inf, "not a finite number")])
def test_a_results_row_without_a_measurement_is_refused_with_its_line(tmp_path, value, words):
    """Whatever dtype pandas gives the column (object before pandas 3, its string dtype after)."""
    csv = tmp_path / "r.csv"
    append_result(csv, {"run_id": "ok", "metric_name": "acc", "metric_value": 0.5, "split": "test"})
    append_result(csv, {"run_id": "bad", "metric_name": "acc", "metric_value": value, "split": "test"})
    with pytest.raises(ValueError, match=f"line 3: metric_value is .*{words}"):
        read_results(csv)


@pytest.mark.parametrize("flags, what", [(["--num_mem_tokens", "10000000"], "attention over a segment"),
                                         (["--n_layer", "2000000"], "weights"),
                                         (["--tgt_len", "1000000", "--eval_tgt_len", "1000000"], "attention")])
def test_sizes_no_machine_holds_are_refused_with_the_estimate(tmp_path, capsys, flags, what):
    with pytest.raises(SystemExit) as e:
        train.main([*TASK_RUN, "--work_dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
                    "--no_results", *flags])
    err = str(e.value.code)
    assert err.startswith("error: the model does not fit in memory: it needs at least") and what in err
    assert "GiB available on cpu" in err and not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs")
def test_a_full_or_read_only_disk_is_one_line_and_keeps_what_was_written(tmp_path):
    """A new run on a disk without room for its checkpoints is refused before it starts; a
    checkpoint write that fills the disk ends the run in one line with the previous file intact."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = task_run(tmp_path, "--work_dir", str(disk / "runs"), "--no_results")
        assert "MiB free; this run needs about" in one_line_error(run) and not (disk / "runs").exists()
        t = trainer(disk)  # a tiny model: its checkpoints fit, until the disk is filled
        t.save(LAST, NanAtStep(99))
        before = (disk / LAST).read_bytes()
        (disk / "filler").write_bytes(b"\0" * (256 * 1024 - len(before) - 8192))
        with pytest.raises(RunError, match="cannot write .*checkpoint_last.pt .*the previous checkpoint_last.pt"):
            t.save(LAST, NanAtStep(99))
        assert (disk / LAST).read_bytes() == before
    finally:
        subprocess.run(["umount", str(disk)])
