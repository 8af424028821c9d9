"""The language-modelling family of `rmt.train`: a corpus read as B contiguous streams.

The memory tokens and the XL cache are carried along the streams from step to step (detached)
and reset at the start of every epoch, as the original did (--reset_memory_every N: also every N
segments, in training and in evaluation, so the state never spans more than N segments). The loss
is the mean NLL per token.
--mem_backprop_depth 0 (the default) detaches memory at every step: reading is trained, writing
is not. D > 0 is real truncated BPTT: every step re-runs the last D segments from the memory D
segments back (the original LM script meant to; its line re-ran from the current memory), so the
loss reaches the memory of D segments ago; --bptt_bp adds the re-run segments' losses. 'all'
(full BPTT) has no meaning on an endless stream and is refused. --batch_chunk k accumulates
gradients over k chunks of the batch rows, each carrying its own rows' memory.
"""
from __future__ import annotations

import numpy as np
import torch

from rmt import REPO_ROOT
from rmt.config import FULL_BPTT, model_config, reset_interval
from rmt.errors import DataError, FlagError, UsageError
from rmt.families.base import Family, run_kind
from rmt.lm.evaluation import (
    adaptive_softmax,
    corpus_name,
    default_data_dir,
    eval_lengths,
    evaluate_split,
    load_corpus,
    metric_name,
)
from rmt.model.recurrence import REPLAYS, Recomputed, StreamState, stream_step
from rmt.results import TestResult


def add_args(p) -> None:
    g = p.add_argument_group("language modelling")
    g.add_argument("--adaptive", action="store_true", help="adaptive input and softmax (word-level corpora)")
    g.add_argument("--cutoffs", type=int, nargs="+", default=None,
                   help="adaptive cluster boundaries (default: the original's for the dataset, clipped to the vocab)")
    g.add_argument("--varlen", action="store_true", help="variable-length training segments (TXL rule)")
    g.add_argument("--eval_batch_size", type=int, default=10, help="evaluation rows (10 as in the original)")
    g.add_argument("--lm_replay", choices=REPLAYS, default="correct",
                   help="how --mem_backprop_depth D re-runs the last D segments: correct (from the memory D segments "
                        "back: truncated BPTT) or original (from the current memory, as the original train.py did, "
                        "which trained the paper's depth > 0 rows)")
    g.add_argument("--reset_memory_every", type=reset_interval, default=0, metavar="N",
                   help="start the memory (memory tokens, associative matrices, XL cache) afresh every N segments "
                        "of each stream, in training and evaluation, as if the corpus were samples of N segments; "
                        "0 (default): carried along the whole stream, reset only at an epoch's start")


def check_args(args) -> None:
    if args.cutoffs is not None and not args.adaptive:
        raise UsageError("--cutoffs needs --adaptive")
    if args.mem_backprop_depth == FULL_BPTT:
        raise UsageError("--mem_backprop_depth all: a language-model stream has no end to back-propagate from; "
                         "give a depth D (the paper's rows use 0 to 4)")
    if args.lm_replay == "original" and args.mem_backprop_depth <= 0:
        raise UsageError("--lm_replay original changes only how --mem_backprop_depth D > 0 re-runs past segments; "
                         f"with depth {args.mem_backprop_depth} nothing is re-run")
    if args.eval_only:
        raise UsageError("--eval_only is for the algorithmic tasks; evaluate a language model with "
                         "python3 -m rmt.evaluate --checkpoint runs/<run>/checkpoint_best.pt")


class TrainStream:
    """Endless training batches; `next()` also says whether a new epoch starts (memory resets).

    Holds the iterator position and the varlen generator, so a resumed run sees the same batches."""

    def __init__(self, it, varlen: bool, seed: int):
        self.it, self.varlen = it, varlen
        self.rng = torch.Generator().manual_seed(seed)  # varlen lengths: the same on every rank
        self.epoch = 0
        self.ordered = hasattr(it, "state_dict")  # lm1b's shard iterator has no position
        self._batches = None

    def _fresh(self):
        if self.varlen:
            return self.it.get_varlen_iter(rng=self.rng)
        return self.it.get_fixlen_iter() if self.ordered else iter(self.it)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if not self.ordered:
            starts = self._batches is None
            if starts:
                self._batches = self._fresh()
            try:
                return (*next(self._batches), starts)
            except StopIteration:
                self.epoch += 1
                self._batches = self._fresh()
                return (*next(self._batches), True)
        ended = self.it.pos >= self.it.n_step - 1
        starts = ended or self.it.pos == 0
        if starts or self._batches is None:  # at an epoch end, the iterator itself rewinds to 0
            self.epoch += int(ended)
            self._batches = self._fresh()
        return (*next(self._batches), starts)

    def state_dict(self) -> dict:
        return {"data": self.it.state_dict() if self.ordered else None, "epoch": self.epoch,
                "rng": self.rng.get_state()}

    def load_state_dict(self, d: dict) -> None:
        if self.ordered:
            self.it.load_state_dict(d["data"])
        self.epoch = d["epoch"]
        self.rng.set_state(d["rng"].cpu())
        self._batches = None


class LanguageModelling(Family):
    """One corpus: its streams, the carried memory, validation and the test; a Family (rmt.families.base)."""

    results_csv = REPO_ROOT / "experiments" / "results" / "lm.csv"

    def __init__(self, args, runtime):
        self.args, self.runtime = args, runtime
        args.data = str(args.data or default_data_dir(args.dataset))
        self.name = corpus_name(args.data, args.dataset)
        self.kind = run_kind(args)
        self.run_prefix = f"{self.name}-{self.kind}"
        self.unit = metric_name(args.dataset)
        self.n_segments = None  # a stream has no sample length

    def load_data(self, log) -> None:
        args, runtime = self.args, self.runtime
        if not runtime.is_main:
            runtime.barrier()  # rank 0 builds the corpus cache first
        self.corpus = load_corpus(args.data, args.dataset)
        if runtime.is_main:
            runtime.barrier()
        try:
            train_it = self.corpus.get_iterator("train", args.batch_size, args.tgt_len, args.ext_len,
                                                rng=np.random.default_rng(args.seed), rank=runtime.rank,
                                                world_size=runtime.world)
            for split in ("valid", "test"):  # too small for the evaluation batch: fail now, not after training
                self.corpus.get_iterator(split, args.eval_batch_size, args.eval_tgt_len, args.ext_len)
        except ValueError as e:
            raise DataError(f"{e}")
        if args.varlen and not hasattr(train_it, "get_varlen_iter"):
            raise FlagError(f"--varlen needs an ordered corpus, not {args.dataset}")
        self.stream = TrainStream(train_it, args.varlen, args.seed)
        self.carried = StreamState(args.mem_backprop_depth)
        self.segments_carried = 0  # segments the carried memory has seen since it was last started afresh
        per_rank = args.batch_size // runtime.world
        self.rows = slice(runtime.rank * per_rank, (runtime.rank + 1) * per_rank)

    def model_config(self):
        """The model the flags describe, for this corpus's vocabulary (ValueError on a bad value)."""
        n_token = len(self.corpus.vocab)
        cutoffs, tie_projs = adaptive_softmax(self.args.dataset, n_token, self.args.cutoffs) \
            if self.args.adaptive else ([], [False])
        return model_config(self.args, n_token, cutoffs, tie_projs)

    def config_extras(self) -> dict:
        """What config.json records about the data beside the flags."""
        return {"dataset": self.args.dataset, "corpus": self.name, "data_dir": self.args.data,
                "vocab_size": len(self.corpus.vocab)}

    def describe(self, model) -> str:
        corpus = self.corpus
        n_all = sum(p.numel() for p in model.parameters())
        n_nonemb = sum(p.numel() for p in model.layers.parameters())  # the original's n_nonemb_param
        n_train = corpus.train.numel() if isinstance(corpus.train, torch.Tensor) else 0
        return (f"{self.name} ({self.args.dataset} format): vocab {len(corpus.vocab)}, {n_train:,} train tokens; "
                f"{self.kind}; {n_all:,} parameters ({n_nonemb:,} non-embedding)")

    # ---- the Family protocol (rmt.families.base) --------------------------------------------

    def train_batch(self, model, step: int) -> dict:
        args, runtime = self.args, self.runtime
        x, y, new_epoch = self.stream.next()
        if new_epoch or (args.reset_memory_every and self.segments_carried == args.reset_memory_every):
            self.carried.reset()
            self.segments_carried = 0
        self.segments_carried += 1
        x, y = x.to(runtime.device), y.to(runtime.device)
        step_model = Recomputed(model) if args.recompute_segments else model
        loss = stream_step(step_model, self.carried, x, y, args.batch_chunk, args.bptt_bp,
                           backward=lambda l: runtime.scaler.scale(l).backward(), autocast=runtime.autocast,
                           replay=args.lm_replay)
        out = {"loss": loss.item(), "tokens": y.numel(), "epoch": self.stream.epoch}
        logged = (step + 1) % args.log_interval == 0 or step + 1 == args.max_step
        if logged and self.carried.state.mem is not None:  # only when logged: the norm costs a sync
            out["mem_norm"] = self.carried.state.mem.float().norm(dim=-1).mean().item()
        return out

    def evaluate(self, model, split: str, shard: bool = True) -> dict:
        args = self.args
        limit = args.max_eval_steps if split == "valid" else -1
        try:
            with eval_lengths(model, args.tgt_len, args.eval_tgt_len):
                m = evaluate_split(model, self.corpus, split, args.eval_batch_size, args.eval_tgt_len, args.ext_len,
                                   limit, self.runtime, shard, args.reset_memory_every)
        except ValueError as e:  # e.g. an lm1b split with no full batch
            raise DataError(f"{e}")
        return {k: v for k, v in m.items() if k not in ("tokens", "segments", "by_position")}

    def after_validation(self, metrics: dict, step: int) -> str:
        return ""  # model selection never restarts

    def state_dict(self) -> dict:
        """Called on every rank: the carried rows of all ranks are gathered."""
        return {"stream": self.stream.state_dict(),
                "carry": self.carried.state_dict(self.runtime.all_gather_rows),
                "segments_carried": self.segments_carried}

    def load_state_dict(self, d: dict) -> None:
        self.stream.load_state_dict(d["stream"])
        self.carried.load_state_dict(d["carry"], self.rows, self.runtime.device)
        self.segments_carried = d.get("segments_carried", 0)  # checkpoints from before --reset_memory_every

    def resumed(self) -> str:
        note = f" (epoch {self.stream.epoch})"
        if not self.stream.ordered:
            note += "; note: lm1b's shard iterator has no saved position, this epoch's data starts over"
        return note

    # ---- the test ----------------------------------------------------------------------------

    def test(self, model) -> TestResult:
        m = self.evaluate(model, "test", shard=False)  # rank 0 alone, every row
        return TestResult(m, {"metric_name": self.unit, "metric_value": m[self.unit], **m}, [])

