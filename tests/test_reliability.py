"""Divergence: a non-finite step is never applied, the run stops with one line (or skips the step
on request), the checkpoints keep the last validated state and no results row is written."""
import argparse
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from rmt.model.transformer import MemTransformerLM
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
    with pytest.raises(SystemExit, match="training diverged at step 6 .*loss nan"):
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
