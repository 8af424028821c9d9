"""Sequence classification over several segments: the `fact` task, a family of `rmt.train`.

    python3 -m rmt.train --dataset fact --n_segments 4 --tgt_len 16 --num_mem_tokens 4
    python3 -m rmt.train --dataset fact --n_segments 4 --tgt_len 16 --last_segment_only   # the baseline

A sample (rmt.tasks.classification) hides a fact before its last segment and asks for it at the
end: a model that sees only the last segment is at chance, 1 / n_values.

The model is the bidirectional encoder (--no-causal, memory at the start only: --no-mem_at_end)
with a classification head on the final memory (rmt.model.recurrence.classify). The data are
generated in memory from --data_seed (nothing is written). Rows go to
experiments/results/classification.csv with the test accuracy.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rmt import REPO_ROOT
from rmt.config import BOOL, FULL_BPTT, model_config
from rmt.errors import CheckpointError, UsageError
from rmt.families.base import (BatchSampler, SampledFamily, add_sample_args, backward_in_chunks, check_evaluation,
                               check_sample_args, parameter_counts, refuse_bptt_bp, run_kind, truncation)
from rmt.model.recurrence import classify
from rmt.results import TestResult
from rmt.tasks.classification import FIRST_VALUE, fact_samples

NAME = "fact"
DEFAULTS = dict(n_layer=2, n_head=4, d_head=16, d_model=64, d_inner=128, dropout=0.0, lr=1e-3, scheduler="constant",
                warmup_step=0, log_interval=100, eval_interval=250, tgt_len=16, eval_tgt_len=16, batch_size=32,
                max_step=2000, mem_backprop_depth=FULL_BPTT, causal=False, mem_at_end=False, num_mem_tokens=4)


def add_args(p) -> None:
    g = p.add_argument_group("classification (fact)")
    g.add_argument("--n_segments", type=int, default=4, help="segments per sample (the fact is before the last)")
    g.add_argument("--n_values", type=int, default=8, help="classes: the values a fact can state")
    g.add_argument("--n_distractors", type=int, default=16, help="distinct distractor tokens")
    g.add_argument("--last_segment_only", action=BOOL, default=False,
                   help="the baseline: the model sees the last segment alone")
    add_sample_args(g, 20_000, 1_000, 2_000)
    p.set_defaults(**DEFAULTS)


def check_args(args) -> None:
    check_sample_args(args)
    for name in ("n_segments", "n_values", "n_distractors"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.n_segments < 2:
        raise UsageError("--n_segments must be at least 2: the fact stands before the last segment")
    if args.tgt_len < 2:
        raise UsageError("--tgt_len must be at least 2 (the fact is two tokens)")
    refuse_bptt_bp(args)
    check_evaluation(args)


class FactRecall(SampledFamily):
    """The fact task as a Family (rmt.families.base)."""

    results_csv = REPO_ROOT / "experiments" / "results" / "classification.csv"
    select_by = "acc"

    task = NAME  # the prefix of the results rows' task name

    def __init__(self, args, runtime):
        self.args, self.runtime = args, runtime
        self.n_segments = 1 if args.last_segment_only else args.n_segments
        self.name = f"{self.task}{args.n_segments}x{args.tgt_len}" + ("-last" if args.last_segment_only else "")
        self.run_prefix = f"{self.name}-{run_kind(args)}"
        self.depth = truncation(args)

    @property
    def vocab_size(self) -> int:
        return FIRST_VALUE + self.args.n_values + self.args.n_distractors

    def load_data(self, log) -> None:
        a = self.args
        rng = np.random.default_rng(a.data_seed)
        self.splits = {split: tuple(torch.from_numpy(t) for t in fact_samples(
            rng, n, a.n_segments, a.tgt_len, a.n_values, a.n_distractors))
            for split, n in (("train", a.n_train), ("valid", a.n_val), ("test", a.n_test))}
        self.sampler = BatchSampler(a.n_train, a.batch_size, a.seed)

    def model_config(self):
        return model_config(self.args, n_token=self.vocab_size, n_classes=self.args.n_values)

    def check_model(self, model, checkpoint) -> None:
        cfg = model.config
        if cfg.n_classes != self.args.n_values or cfg.n_token != self.vocab_size:
            raise CheckpointError(f"{checkpoint} has {cfg.n_classes} classes over {cfg.n_token} tokens; {self.name} "
                             f"needs {self.args.n_values} over {self.vocab_size}: pass the flags it was trained with")

    def config_extras(self) -> dict:
        return {"task": self.name, "n_segments": self.n_segments, "chance": 1 / self.args.n_values}

    def describe(self, model) -> str:
        a = self.args
        seen = "the last segment only" if a.last_segment_only else f"all {a.n_segments} segments"
        return (f"{self.name}: {a.n_segments} segments of {a.tgt_len}, the model sees {seen}; {a.n_values} classes "
                f"(chance {1 / a.n_values:.3f}); {parameter_counts(model)}")

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -self.args.tgt_len:] if self.args.last_segment_only else x

    def _logits(self, model, x: torch.Tensor) -> torch.Tensor:
        return classify(model, self._inputs(x), self.args.tgt_len, depth=self.depth,
                        recompute=self.args.recompute_segments)[0]

    # ---- the Family protocol (rmt.families.base) --------------------------------------------

    def train_batch(self, model, step: int) -> dict:
        args, runtime = self.args, self.runtime
        idx = self.sampler.next_shard(runtime.rank, runtime.world)
        x, y = (t[idx].to(runtime.device) for t in self.splits["train"])
        total = backward_in_chunks(runtime, args.batch_chunk,
                                   lambda xc, yc: F.cross_entropy(self._logits(model, xc).float(), yc), x, y)
        return {"loss": total, "tokens": self._inputs(x).numel()}

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict:
        model.eval()
        x_all, y_all = self.splits[split]
        bsz = self.args.eval_batch_size or self.args.batch_size
        loss, right = 0.0, 0
        for start in range(0, len(y_all), bsz):
            device = self.runtime.device
            x, y = x_all[start : start + bsz].to(device), y_all[start : start + bsz].to(device)
            with self.runtime.autocast():
                logits = self._logits(model, x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            right += (logits.argmax(-1) == y).sum().item()
        return {"loss": loss / len(y_all), "acc": right / len(y_all)}

    def test(self, model) -> TestResult:
        m = self.evaluate(model, "test")
        row = {"metric_name": "accuracy", "metric_value": m["acc"], "loss": m["loss"]}
        return TestResult({**m, "chance": 1 / self.args.n_values, "samples": len(self.splits["test"][1])}, row, [], "")
