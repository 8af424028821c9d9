"""Train a Transformer-XL / RMT language model on WikiText-103, enwik8, text8, WikiText-2, PTB or LM1B.

    python3 -m rmt.train --dataset wt103 --adaptive --n_layer 16 --d_model 410 \\
        --n_head 10 --d_head 41 --d_inner 2100 --dropout 0.1 --tgt_len 150 --mem_len 150 --eval_tgt_len 150
    python3 -m rmt.train --dataset enwik8 --mem_len 0 --num_mem_tokens 10 \\
        --tgt_len 128 --eval_tgt_len 128 --mem_backprop_depth 2          # an RMT row of the paper
    torchrun --standalone --nproc_per_node 4 -m rmt.train ...            # DDP, one process per GPU

The corpus is read as B contiguous streams (`LMOrderedIterator`); the memory tokens and the XL
cache are carried along them from step to step (detached) and reset at the start of every
epoch, as the original did. The loss is the mean NLL per token.
--mem_backprop_depth 0 (the default) detaches memory at every step: reading is trained, writing
is not. D > 0 is real truncated BPTT: every step re-runs the last D segments from the memory D
segments back (the original LM script meant to; its line re-ran from the current memory), so
the loss reaches the memory of D segments ago; --bptt_bp adds the re-run segments' losses.
'all' (full BPTT) has no meaning on an endless stream and is refused. --batch_chunk k accumulates gradients over k chunks of the batch rows, each
carrying its own rows' memory. Validation every --eval_interval steps keeps checkpoint_best.pt
by valid loss; the best model is tested at the end and one row goes to experiments/results/lm.csv.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time
from collections import deque

import numpy as np
import torch

from . import cli
from .checkpoint import CheckpointError, load_file
from .data.corpus import DATASETS
from .lm import adaptive_softmax, corpus_name, default_data_dir, eval_lengths, evaluate_split, load_corpus, metric_name
from .memory import MemoryState, Recomputed, Segment, forward_with_replay
from .model import MemTransformerLM, init_weights
from .optim import LRSchedule, build_optimizer
from .results import append_result, model_kind
from .runtime import REPO_ROOT, Runtime, RunLogger, compile_model, prepare_run_dir, seed_all
from .trainer import BEST, LAST, Trainer, result_row


def build_parser() -> argparse.ArgumentParser:
    p = cli.base_parser("python -m rmt.train", __doc__)
    g = p.add_argument_group("language modelling")
    g.add_argument("--dataset", default="wt103", choices=DATASETS, help="corpus (default data dir: data/<name>)")
    g.add_argument("--adaptive", action="store_true", help="adaptive input and softmax (word-level corpora)")
    g.add_argument("--cutoffs", type=int, nargs="+", default=None,
                   help="adaptive cluster boundaries (default: the original's for the dataset, clipped to the vocab)")
    g.add_argument("--varlen", action="store_true", help="variable-length training segments (TXL rule)")
    g.add_argument("--eval_batch_size", type=int, default=10, help="evaluation rows (10 as in the original)")
    return p


# ---- carried state ----------------------------------------------------------------------------

def cat_states(states: list[MemoryState]) -> MemoryState:
    """Join the row chunks of a batch back into one state (inverse of MemoryState.select)."""
    if len(states) == 1:
        return states[0]
    first = states[0]
    mem = None if first.mem is None else torch.cat([s.mem for s in states])
    xl = None if first.xl is None else tuple(torch.cat(parts) for parts in zip(*(s.xl for s in states)))
    return MemoryState(mem, xl)


def row_slices(n_rows: int, n_chunks: int) -> list[slice]:
    sizes = [len(c) for c in torch.arange(n_rows).chunk(n_chunks)]
    starts = np.cumsum([0] + sizes[:-1])
    return [slice(int(s), int(s) + n) for s, n in zip(starts, sizes)]


class Carry:
    """What travels along the local batch rows between steps: the memory state (memory tokens +
    XL cache, detached) and, for --mem_backprop_depth D, the last D segments with their input
    states, from which the next step recomputes."""

    def __init__(self, depth: int):
        self.depth = depth
        self.reset()

    def reset(self) -> None:
        """Epoch start: learned initial memory, empty cache and history (as the original)."""
        self.state = MemoryState()
        self.history: deque[Segment] = deque(maxlen=self.depth)

    def state_dict(self, gather=lambda t: t) -> dict:
        """Plain tensors (loadable with weights_only); `gather` joins the rows of all ranks."""
        def pack(s: MemoryState) -> dict:
            return {"mem": None if s.mem is None else gather(s.mem),
                    "xl": None if s.xl is None else [gather(t) for t in s.xl]}
        return {"state": pack(self.state),
                "history": [{"x": gather(h.x), "y": gather(h.y), "state": pack(h.state)} for h in self.history]}

    def load_state_dict(self, d: dict, rows: slice, device) -> None:
        def unpack(p: dict) -> MemoryState:
            return MemoryState(p["mem"], None if p["xl"] is None else tuple(p["xl"])).to(device).select(rows)
        self.state = unpack(d["state"])
        self.history = deque((Segment(h["x"][rows].to(device), h["y"][rows].to(device), unpack(h["state"]))
                              for h in d["history"]), maxlen=self.depth)


def train_step(model, carry: Carry, x: torch.Tensor, y: torch.Tensor, n_chunks: int = 1, bptt_bp: bool = False,
               backward=lambda loss: loss.backward(), autocast=contextlib.nullcontext) -> torch.Tensor:
    """Forward and backward of one batch x (B, E+T), y (B, T), continuing `carry`'s rows.

    The gradient is that of the mean NLL per token, accumulated over `n_chunks` row chunks
    (each with its own rows' memory). With history, each chunk first re-runs the stored
    segments from the oldest stored memory (`forward_with_replay`), so the loss reaches the
    memory of len(history) segments ago and nothing older. Returns the detached mean NLL of
    the current segments; `carry` then holds the new detached state and this segment.
    """
    state_in = carry.state.detach()
    b = x.size(0)
    new_states, mean_nll = [], torch.zeros((), device=x.device)
    for rows in row_slices(b, n_chunks):
        weight = (rows.stop - rows.start) / b  # chunk means, weighted by rows: the batch mean
        history = [Segment(h.x[rows], h.y[rows], h.state.select(rows)) for h in carry.history]
        with autocast():
            nll, state, replay_nll = forward_with_replay(model, x[rows], y[rows], state_in.select(rows), history)
            loss = nll.float().mean()
            if bptt_bp:  # the original's --bptt_bp: the re-run segments' losses count too
                loss = loss + sum(r.float().mean() for r in replay_nll)
        backward(loss * weight)
        mean_nll = mean_nll + nll.detach().float().mean() * weight
        new_states.append(state.detach())
    if carry.depth:
        carry.history.append(Segment(x, y, state_in))
    carry.state = cat_states(new_states)
    return mean_nll


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


# ---- the driver -------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.check_args(args, parser)
    if args.eval_batch_size <= 0:
        parser.error(f"--eval_batch_size must be positive, got {args.eval_batch_size}")
    if args.cutoffs is not None and not args.adaptive:
        parser.error("--cutoffs needs --adaptive")
    if args.mem_backprop_depth == cli.FULL_BPTT:
        parser.error("--mem_backprop_depth all: a language-model stream has no end to back-propagate from; "
                     "give a depth D (the paper's rows use 0 to 4)")
    runtime = Runtime(args.device, args.amp, args.cuda)
    cli.check_device(args, runtime.device, parser)
    seed_all(args.seed)
    if args.batch_size % runtime.world:
        parser.error(f"--batch_size {args.batch_size} is not divisible by {runtime.world} processes")
    args.data = str(args.data or default_data_dir(args.dataset))

    if not runtime.is_main:
        runtime.barrier()  # rank 0 builds the corpus cache first
    corpus = load_corpus(args.data, args.dataset)
    name = corpus_name(args.data, args.dataset)
    if runtime.is_main:
        runtime.barrier()
    n_token = len(corpus.vocab)
    try:
        cutoffs, tie_projs = adaptive_softmax(args.dataset, n_token, args.cutoffs) if args.adaptive else ([], [False])
        model_cfg = cli.model_config(args, n_token, cutoffs, tie_projs)
    except ValueError as e:
        parser.error(str(e))
    try:
        train_it = corpus.get_iterator("train", args.batch_size, args.tgt_len, args.ext_len,
                                       rng=np.random.default_rng(args.seed), rank=runtime.rank,
                                       world_size=runtime.world)
        for split in ("valid", "test"):  # too small for the evaluation batch: fail now, not after training
            corpus.get_iterator(split, args.eval_batch_size, args.eval_tgt_len, args.ext_len)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if args.varlen and not hasattr(train_it, "get_varlen_iter"):
        parser.error(f"--varlen needs an ordered corpus, not {args.dataset}")

    kind = model_kind(args.num_mem_tokens, args.mem_len, args.mem_at_end)
    run_dir = prepare_run_dir(args, f"{name}-{kind}") if runtime.is_main else None
    logger = RunLogger(run_dir, runtime.is_main, total=args.max_step)
    model = MemTransformerLM.from_config(model_cfg)
    init_weights(model, args.init, args.init_std, args.init_range, args.proj_init_std)
    model.to(runtime.device)
    run_model = compile_model(model) if args.compile else model
    if run_dir is not None:
        cli.write_config(run_dir, args, model_cfg, {"dataset": args.dataset, "corpus": name, "data_dir": args.data,
                                                     "vocab_size": n_token, "device": runtime.describe()})
    n_all = sum(p.numel() for p in model.parameters())
    n_nonemb = sum(p.numel() for p in model.layers.parameters())  # the original's n_nonemb_param
    n_train = corpus.train.numel() if isinstance(corpus.train, torch.Tensor) else 0
    logger.log(f"{name} ({args.dataset} format): vocab {n_token}, {n_train:,} train tokens; {kind}; {n_all:,} parameters "
               f"({n_nonemb:,} non-embedding); device {runtime.describe()}; run dir {run_dir}")

    optimizer = build_optimizer(model.parameters(), args)
    schedule = LRSchedule(optimizer, args)
    trainer = Trainer(run_model, model, optimizer, schedule, runtime, logger, run_dir, args, model_cfg.to_dict())
    stream = TrainStream(train_it, args.varlen, args.seed)
    carry = Carry(args.mem_backprop_depth)
    rows = slice(runtime.rank * (args.batch_size // runtime.world),
                 (runtime.rank + 1) * (args.batch_size // runtime.world))
    if args.restart:
        try:
            extra = trainer.resume(pathlib.Path(args.restart_dir) / LAST)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
        stream.load_state_dict(extra["stream"])
        carry.load_state_dict(extra["carry"], rows, runtime.device)
        logger.log(f"resumed at step {trainer.step} (epoch {stream.epoch})")
        if not stream.ordered:
            logger.log("note: lm1b's shard iterator has no saved position; this epoch's data starts over")

    def extra_state() -> dict:  # called on every rank: the carried rows of all ranks are gathered
        return {"stream": stream.state_dict(), "carry": carry.state_dict(runtime.all_gather_rows)}

    step_model = Recomputed(run_model) if args.recompute_segments else run_model

    def train_batch(step: int) -> dict:
        x, y, new_epoch = stream.next()
        if new_epoch:
            carry.reset()
        x, y = x.to(runtime.device), y.to(runtime.device)
        loss = train_step(step_model, carry, x, y, args.batch_chunk, args.bptt_bp,
                          backward=lambda l: runtime.scaler.scale(l).backward(), autocast=runtime.autocast)
        out = {"loss": loss.item(), "tokens": y.numel(), "epoch": stream.epoch}
        logged = (step + 1) % args.log_interval == 0 or step + 1 == args.max_step
        if logged and carry.state.mem is not None:  # only when logged: the norm costs a sync
            out["mem_norm"] = carry.state.mem.float().norm(dim=-1).mean().item()
        return out

    def evaluate(split: str, shard: bool = True) -> dict:
        limit = args.max_eval_steps if split == "valid" else -1
        try:
            with eval_lengths(model, args.tgt_len, args.eval_tgt_len):
                m = evaluate_split(model, corpus, split, args.eval_batch_size, args.eval_tgt_len, args.ext_len,
                                   limit, runtime, shard)
        except ValueError as e:  # e.g. an lm1b split with no full batch
            raise SystemExit(f"error: {e}")
        return {k: v for k, v in m.items() if k not in ("tokens", "segments", "by_position")}

    t0 = time.time()
    trainer.fit(train_batch, evaluate, extra_state)
    train_time = time.time() - t0
    if trainer.step < args.max_step:  # stopped by a signal: the checkpoint is saved, no test
        logger.close()
        runtime.close()
        return 0

    if runtime.is_main:
        if (run_dir / BEST).is_file():
            model.load_state_dict(load_file(run_dir / BEST, runtime.device)["model"])
        test = evaluate("test", shard=False)  # rank 0 alone, every row
        unit = metric_name(args.dataset)
        logger.log(f"test (best model) | loss {test['loss']:.4f} | {unit} {test[unit]:.4f}")
        if not args.no_results:
            csv = args.results_csv or REPO_ROOT / "experiments" / "results" / "lm.csv"
            row = result_row(args, model_cfg, runtime, run_dir, name, "test", None, train_time,
                             getattr(trainer, "last_tokens_per_s", 0.0), metric_name=unit,
                             metric_value=test[unit], **test)
            append_result(csv, row)
            logger.log(f"results row appended to {csv}")
    runtime.barrier()
    logger.close()
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
