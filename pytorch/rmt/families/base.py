"""What a training family is, and the pieces every family shares.

A family is what differs between one kind of training and another: its data, how a batch is
trained, how it is validated and tested, and which model it trains. The one trainer
(rmt.training.trainer) and the drivers (rmt.train, rmt.evaluate, rmt.generate) see a family only
through `Family` below; the registry (rmt.families.registry) maps each --dataset to one.

A family module owns `NAME` (or the names it serves), `add_args(parser)` (its flags and
defaults), `check_args(args)` (its flag checks, raising UsageError) and its `Family` class.
"""
from __future__ import annotations

import abc
import pathlib
from typing import Callable

import torch

from rmt.config import FULL_BPTT
from rmt.errors import UsageError
from rmt.results import TestResult, model_kind


class Family(abc.ABC):
    """A training family, as the trainer and the drivers use it.

    Attributes: `name` (the results rows' task), `run_prefix` (a run directory's default name
    starts with it), `results_csv` (where its rows go by default), `select_by` ("loss", lower is
    better, or a metric name, higher is better), `tests_best` (whether the test takes the best
    validated model or the last) and `n_segments` (segments per sample; None for a stream).
    """

    name: str
    run_prefix: str
    results_csv: pathlib.Path
    select_by: str = "loss"
    tests_best: bool = True
    n_segments: int | None

    @abc.abstractmethod
    def load_data(self, log: Callable[[str], None]) -> None:
        """Read (or generate) the data; DataError when it is missing or does not fit the flags."""

    @abc.abstractmethod
    def describe(self, model) -> str:
        """One log line: the data and the model's size."""

    @abc.abstractmethod
    def config_extras(self) -> dict:
        """What config.json records about the data beside the flags."""

    @abc.abstractmethod
    def train_batch(self, model, step: int) -> dict:
        """Forward and backward of one optimiser step (the family owns the data, the carried
        memory and gradient accumulation); at least `loss` and `tokens`."""

    @abc.abstractmethod
    def evaluate(self, model, split: str) -> dict:
        """At least `loss`, and the metric named by `select_by`."""

    @abc.abstractmethod
    def test(self, model) -> TestResult:
        """The test of the finished model: metrics, the results row's fields, per-group rows."""

    def model_config(self):
        """The ModelConfig of a new MemTransformerLM for this family (families that train one)."""
        raise NotImplementedError(f"{type(self).__name__} builds its own model (a pretrained backbone)")

    def check_model(self, model, checkpoint) -> None:
        """Refuse an evaluated checkpoint's model that cannot serve this family (CheckpointError)."""

    def after_validation(self, metrics: dict, step: int) -> str:
        """A note when model selection must start over (a curriculum moved on), else ""."""
        return ""

    def state_dict(self) -> dict:
        """Data position and carried memory, saved in every checkpoint (exact resume)."""
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    def resumed(self) -> str:
        """What the resume log line adds about this family's state."""
        return ""


class BackboneFamily(Family):
    """A family over a pretrained Hugging Face backbone: it builds its own model."""

    @abc.abstractmethod
    def build_model(self, checkpoint_state: dict | None = None):
        """The model, with a checkpoint's weights when given (else the backbone as loaded)."""


class SampledFamily(Family):
    """A family that draws its training batches from `self.sampler` (a BatchSampler)."""

    sampler: BatchSampler

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.sampler.load_state_dict(d["sampler"])


class BatchSampler:
    """Seeded reshuffle every epoch; the position is saved for exact resume."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._perm = None

    def _permutation(self):
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g)
        return self._perm

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # drop the short tail, start a new epoch
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        idx = self._permutation()[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.pos, self._perm = d["epoch"], d["pos"], None

    def next_shard(self, rank: int, world: int) -> torch.Tensor:
        """This process's rows of the next global batch (every DDP rank draws the same batch)."""
        per_rank = self.batch_size // world
        return self.next()[rank * per_rank : (rank + 1) * per_rank]


def backward_in_chunks(runtime, n_chunks: int, loss_of, *batch: torch.Tensor) -> float:
    """One batch's forward and backward in n_chunks parts (--batch_chunk: gradient accumulation);
    loss_of(*part) is a part's mean loss. Returns the batch's mean loss."""
    total = 0.0
    for part in zip(*(t.chunk(n_chunks) for t in batch)):
        with runtime.autocast():
            loss = loss_of(*part) / n_chunks
        runtime.scaler.scale(loss).backward()
        total += loss.item()
    return total


# ---- what several families share: flags, checks, names ------------------------------------------

def add_sample_args(g, n_train: int, n_val: int, n_test: int) -> None:
    """The generated data's split sizes and seed, and the evaluation batch: every sampled family has them."""
    g.add_argument("--n_train", type=int, default=n_train, help="training samples when generating data")
    g.add_argument("--n_val", type=int, default=n_val, help="validation samples when generating data")
    g.add_argument("--n_test", type=int, default=n_test, help="test samples when generating data")
    g.add_argument("--data_seed", type=int, default=0, help="seed of the generated data set")
    g.add_argument("--eval_batch_size", type=int, default=None, help="evaluation batch (default: --batch_size)")


def check_sample_args(args) -> None:
    """Split sizes that train, validate and test something."""
    for name in ("n_train", "n_val", "n_test"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}: every split is used")
    if not args.eval_only and args.batch_size > args.n_train:
        raise UsageError(f"--batch_size {args.batch_size} is larger than the training split (--n_train {args.n_train})")


def check_evaluation(args) -> None:
    """--eval_only evaluates a checkpoint: one must be named (families without a bare backbone)."""
    if args.eval_only and not args.eval_checkpoint:
        raise UsageError("--eval_only needs --eval_checkpoint PATH (e.g. runs/<run>/checkpoint_best.pt)")


def refuse_bptt_bp(args, why: str = "") -> None:
    """--bptt_bp (the re-run past segments' losses) exists only for language-model streams."""
    if args.bptt_bp:
        raise UsageError("--bptt_bp applies to language modelling" + (f"; {why}" if why else ""))


def truncation(args) -> int | None:
    """--mem_backprop_depth as the segment loop takes it: None for full BPTT, else D segments."""
    return None if args.mem_backprop_depth == FULL_BPTT else args.mem_backprop_depth


def parameter_counts(model) -> str:
    """"N parameters (M trained)" for a describe line; the count trained only where some are frozen."""
    n = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{n:,} parameters" + (f" ({trained:,} trained)" if trained != n else "")


def run_kind(args) -> str:
    """The model kind of the flags, as the results rows name it (rmt, txl, rmt+txl, baseline, armt, ...);
    a run directory's default name is the family's data name, this kind and the time."""
    return model_kind(args.num_mem_tokens, args.mem_len, args.mem_at_end, args.causal, getattr(args, "memory", "tokens"))
