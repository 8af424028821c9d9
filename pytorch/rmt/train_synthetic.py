"""Train and evaluate on the algorithmic tasks: copy, reverse, associative retrieval, quadratic equations.

    python3 -m rmt.train_synthetic --dataset copy --tgt_len 18 --num_mem_tokens 10 ...

Each sample is split into segments of exactly --tgt_len tokens; memory and the XL cache start
fresh for every sample; the loss covers the last --answer_size targets. --mem_backprop_depth all
(the default, also -1) back-propagates through every segment of the sample (the paper's runs),
D > 0 truncates to D segments, as in rmt.train. The original task scripts wrote 0 for full
BPTT; an explicit 0 is still read that way, with a deprecation warning (0 is to mean detached
memory here too, as in rmt.train). Missing data is generated on first use (seeded). The test split is
evaluated whole, with teacher-forced, greedy and exact-match accuracy, and one results row is
appended to experiments/results/synthetic.csv (or --results_csv).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
import warnings

import torch

from . import cli
from .checkpoint import CheckpointError, load_file, load_model, run_config
from .model import MemTransformerLM, init_weights
from .optim import LRSchedule, build_optimizer
from .results import GROUP_COLUMNS, append_result, groups_csv
from .runtime import REPO_ROOT, Runtime, RunLogger, compile_model, prepare_run_dir, seed_all
from .tasks.files import load_meta, load_split, write_dataset
from .tasks.generators import SampleSpaceTooSmall
from .tasks.registry import TASK_NAMES, task_spec
from .tasks.runner import answer_loss, evaluate_batches
from .trainer import BEST, Trainer, result_row


def build_parser() -> argparse.ArgumentParser:
    p = cli.base_parser("python -m rmt.train_synthetic", __doc__)
    g = p.add_argument_group("task")
    g.add_argument("--dataset", default="copy", choices=TASK_NAMES, help="task name")
    g.add_argument("--answer_size", type=int, default=None, help="scored final targets (default: the task's)")
    g.add_argument("--task_seq_len", type=int, default=None, help="copy/reverse sequence length L (sqeq: slot)")
    g.add_argument("--num_tokens", type=int, default=None, help="copy/reverse vocabulary (symbols 2..N-1)")
    g.add_argument("--num_pairs", type=int, default=None, help="retrieval: key-value pairs K")
    g.add_argument("--max_root", type=int, default=None, help="sqeq: roots within +-(max_root-1) (paper: 100)")
    g.add_argument("--shuffle_limit", type=int, default=None,
                   help="sqeq: the equation is the monic one times +-k, k up to this (paper: 10)")
    g.add_argument("--n_train", type=int, default=100_000, help="training samples when generating data")
    g.add_argument("--n_val", type=int, default=10_000, help="validation samples when generating data")
    g.add_argument("--n_test", type=int, default=20_000, help="test samples when generating data")
    g.add_argument("--data_seed", type=int, default=0, help="seed of the generated data set")
    g.add_argument("--eval_batch_size", type=int, default=None, help="evaluation batch (default: --batch_size)")
    g.add_argument("--select_by", choices=["loss", "acc"], default="loss",
                   help="model selection on validation loss (the original) or teacher-forced accuracy")
    g.add_argument("--no_greedy_valid", action="store_true", help="skip greedy decoding during validation")
    g.add_argument("--eval_only", action="store_true", help="evaluate --eval_checkpoint on the test split, no training")
    g.add_argument("--eval_checkpoint", default=None, help="checkpoint to evaluate (any of our checkpoint files)")
    g.add_argument("--curriculum", type=int, nargs="*", default=[],
                   help="segment lengths to train on before --tgt_len (e.g. 12: two segments first, then "
                        "--tgt_len); a stage ends when validation acc_tf reaches --curriculum_threshold, "
                        "and the earlier stages together take at most half of --max_step")
    g.add_argument("--curriculum_threshold", type=float, default=0.95, help="acc_tf that ends a curriculum stage")
    p.set_defaults(n_layer=4, n_head=4, d_head=64, d_model=128, d_inner=256, dropout=0.1, lr=1e-4,
                   scheduler="dev_perf", lr_min=1e-6, patience=8, log_interval=4000, eval_interval=12000,
                   tgt_len=72, eval_tgt_len=72, batch_size=32, max_step=250_000, mem_backprop_depth=cli.FULL_BPTT)
    return p


# Flags that belong to one invocation, never inherited by an evaluation from the run it evaluates.
INVOCATION_FLAGS = {"eval_only", "eval_checkpoint", "restart", "restart_dir", "run_name", "work_dir",
                    "no_results", "device", "cuda", "amp", "fp16", "compile", "log_interval"}


def parse_args(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, str]:
    """The flags; with --eval_only, the evaluated run's own flags (its config.json) stand in for
    the defaults, so the run is evaluated with its task, segments and memory. Flags given on the
    command line still win. Returns (args, where the defaults came from)."""
    args = parser.parse_args(argv)
    if not (args.eval_only and args.eval_checkpoint):
        return args, ""
    trained = run_config(args.eval_checkpoint).get("args")
    if not isinstance(trained, dict):
        return args, ""
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in trained.items() if k in known and k not in INVOCATION_FLAGS})
    args = parser.parse_args(argv)
    if args.run_name is None:
        args.run_name = f"{pathlib.Path(args.eval_checkpoint).parent.name}-eval"
    return args, str(pathlib.Path(args.eval_checkpoint).parent / "config.json")


def resolve_task(args):
    """The task spec and its data directory; the data is generated if it is not there yet."""
    options = dict(seq_len=args.task_seq_len, num_tokens=args.num_tokens, num_pairs=args.num_pairs,
                   max_root=args.max_root, shuffle_limit=args.shuffle_limit)
    kwargs = {k: v for k, v in options.items() if v is not None}
    spec = task_spec(args.dataset, **kwargs)
    tag = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    name = spec.name + (f"-{tag}" if tag else "")
    sizes = dict(train=args.n_train, val=args.n_val, test=args.n_test)
    data_dir = pathlib.Path(args.data) if args.data else REPO_ROOT / "data" / "synthetic" / \
        f"{name}-n{args.n_train}-{args.n_val}-{args.n_test}-s{args.data_seed}"
    return spec, name, data_dir, sizes


def ensure_data(spec, name, data_dir, sizes, seed, runtime, log) -> None:
    try:
        load_meta(data_dir, name)
    except FileNotFoundError:
        if runtime.is_main:
            log(f"generating {name} into {data_dir} (seed {seed}, sizes {sizes})")
            try:
                write_dataset(spec, data_dir, seed, sizes, name)
            except SampleSpaceTooSmall as e:
                raise SystemExit(f"error: {e}; ask for fewer with --n_train/--n_val/--n_test")
            except ValueError as e:  # e.g. a sqeq part longer than its slot
                raise SystemExit(f"error: {e}")
    runtime.barrier()


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


def main(argv=None) -> int:
    parser = build_parser()
    args, trained_flags = parse_args(parser, argv)
    cli.check_args(args, parser)
    if args.mem_backprop_depth == 0:
        if not args.eval_only:  # an evaluation of an older run inherits its 0 and trains nothing: no warning
            warnings.warn("--mem_backprop_depth 0 is read as full BPTT here, as the original task scripts meant it; "
                          "this reading is deprecated: 0 is to mean detached memory, as in rmt.train. "
                          "Write --mem_backprop_depth all for full BPTT", FutureWarning)
        args.mem_backprop_depth = cli.FULL_BPTT
    if args.bptt_bp:  # a language-modelling flag: here one backward pass already covers every segment's loss
        parser.error("--bptt_bp applies to language modelling (rmt.train); the task loss of every segment "
                     "is already back-propagated, to --mem_backprop_depth segments of memory")
    runtime = Runtime(args.device, args.amp, args.cuda)
    cli.check_device(args, runtime.device, parser, training=not args.eval_only)
    seed_all(args.seed)
    try:
        spec, name, data_dir, sizes = resolve_task(args)
    except ValueError as e:
        parser.error(str(e))
    answer_size = args.answer_size or spec.answer_size
    if not 0 < answer_size <= spec.sample_len:
        parser.error(f"--answer_size must be in 1..{spec.sample_len} for {name}, got {answer_size}")
    if args.batch_size % runtime.world:
        parser.error(f"--batch_size {args.batch_size} is not divisible by {runtime.world} processes")

    run_dir = prepare_run_dir(args, f"{name}-{'rmt' if args.num_mem_tokens else 'txl' if args.mem_len else 'base'}") \
        if runtime.is_main else None
    logger = RunLogger(run_dir, runtime.is_main, total=args.max_step)
    ensure_data(spec, name, data_dir, sizes, args.data_seed, runtime, logger.log)
    try:
        train, valid, test = (load_split(data_dir, name, s, spec.stacked) for s in ("train", "val", "test"))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")

    try:
        model_cfg = cli.model_config(args, n_token=spec.vocab_size)
    except ValueError as e:
        parser.error(str(e))
    if args.eval_only:
        if not args.eval_checkpoint:
            parser.error("--eval_only needs --eval_checkpoint PATH (e.g. runs/<run>/checkpoint_best.pt)")
        try:
            model, _ = load_model(args.eval_checkpoint, runtime.device)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
        model_cfg = model.config
        if model_cfg.n_token != spec.vocab_size:
            raise SystemExit(f"error: {args.eval_checkpoint} has vocabulary {model_cfg.n_token}, {name} needs "
                             f"{spec.vocab_size}; pass the task flags the model was trained with")
    else:
        model = MemTransformerLM.from_config(model_cfg)
        init_weights(model, args.init, args.init_std, args.init_range, args.proj_init_std)
    model.to(runtime.device)
    run_model = compile_model(model) if args.compile else model
    n_segments = math.ceil(spec.sample_len / args.tgt_len)
    if run_dir is not None:
        cli.write_config(run_dir, args, model_cfg, {"task": name, "data_dir": str(data_dir), "n_segments": n_segments,
                                                     "answer_size": answer_size, "device": runtime.describe()})
    if trained_flags:
        logger.log(f"evaluating as trained: flags from {trained_flags}, then the command line's")
    logger.log(f"{name}: {spec.sample_len} tokens = {n_segments} segments of {args.tgt_len}; answer {answer_size}; "
               f"vocab {spec.vocab_size}; {sum(p.numel() for p in model.parameters()):,} parameters; "
               f"device {runtime.describe()}; run dir {run_dir}")

    optimizer = build_optimizer(model.parameters(), args)
    schedule = LRSchedule(optimizer, args)
    trainer = Trainer(run_model, model, optimizer, schedule, runtime, logger, run_dir, args, model_cfg.to_dict(),
                      select_by="loss" if args.select_by == "loss" else "acc_tf")
    sampler = BatchSampler(len(train[0]), args.batch_size, args.seed)
    trainer_extra = {}
    if args.restart:
        trainer_extra = trainer.resume(pathlib.Path(args.restart_dir) / "checkpoint_last.pt")
        sampler.load_state_dict(trainer_extra["sampler"])
        logger.log(f"resumed at step {trainer.step}")
    stages = list(args.curriculum) + [args.tgt_len]  # segment lengths, longest (fewest segments) first
    stage = {"index": 0}
    if args.restart:
        stage["index"] = trainer_extra.get("stage", 0)

    def seg_len(evaluating: bool = False) -> int:
        last = stage["index"] == len(stages) - 1
        return (args.eval_tgt_len if last else stages[stage["index"]]) if evaluating else stages[stage["index"]]

    def on_eval(metrics: dict) -> None:
        i = stage["index"]
        # Earlier stages share at most half of max_step (and of max_time), so every model ends on
        # the real task.
        share = (i + 1) / (2 * max(len(stages) - 1, 1))
        late = trainer.step >= int(share * args.max_step) or 0 < args.max_time * 60 * share <= time.time() - t0
        if i < len(stages) - 1 and (metrics["acc_tf"] >= args.curriculum_threshold or late):
            stage["index"] += 1
            trainer.best = None  # selection restarts on the harder stage
            logger.log(f"curriculum: segments of {stages[stage['index']]} from step {trainer.step}")

    depth = None if args.mem_backprop_depth == cli.FULL_BPTT else args.mem_backprop_depth
    per_rank = args.batch_size // runtime.world
    ignore_pad = not spec.stacked
    answer_slot = spec.default_kwargs.get("seq_len", 0) if name.startswith("sqeq") else 0

    def train_batch(step: int) -> dict:
        idx = sampler.next()[runtime.rank * per_rank : (runtime.rank + 1) * per_rank]
        src, tgt = train[0][idx].to(runtime.device), train[1][idx].to(runtime.device)
        total = 0.0
        for s, t in zip(src.chunk(args.batch_chunk), tgt.chunk(args.batch_chunk)):
            with runtime.autocast():
                loss = answer_loss(run_model, s, t, answer_size, seg_len(), depth,
                                   args.recompute_segments) / args.batch_chunk
            runtime.scaler.scale(loss).backward()
            total += loss.item()
        return {"loss": total, "tokens": src.numel()}

    def batches(split, limit):
        src, tgt = split
        bsz = args.eval_batch_size or args.batch_size
        for i, start in enumerate(range(0, len(src), bsz)):
            if 0 <= limit <= i:
                break
            yield src[start : start + bsz].to(runtime.device), tgt[start : start + bsz].to(runtime.device)

    def measure(split_name: str, greedy: bool):
        split = valid if split_name == "valid" else test
        limit = args.max_eval_steps if split_name == "valid" else -1
        model.eval()
        with runtime.autocast():
            return evaluate_batches(model, batches(split, limit), answer_size, seg_len(evaluating=True), ignore_pad,
                                    with_greedy=greedy, answer_slot=answer_slot, group_of=spec.group_of)

    def reported(m, greedy: bool) -> dict:
        out = {"loss": m.loss, "acc_tf": m.acc_tf}
        if greedy:
            out.update(acc_greedy=m.acc_greedy, exact_match=m.exact_match)
            if answer_slot:
                out["answer_acc"] = m.answer_acc
        # per group (retrieval: acc_tf_pair1 ..): logged and drawn in TensorBoard with the rest
        out.update({f"acc_tf_{spec.group_name}{g}": v["acc_tf"] for g, v in m.by_group.items()})
        return out

    def evaluate(split_name: str, greedy: bool = not args.no_greedy_valid) -> dict:
        return reported(measure(split_name, greedy), greedy)

    if args.eval_only:
        trainer.step = args.max_step  # nothing to train
        stage["index"] = len(stages) - 1
    t0 = time.time()
    if not args.eval_only:
        trainer.fit(train_batch, evaluate, lambda: {"sampler": sampler.state_dict(), "stage": stage["index"]},
                    on_eval=on_eval)
    train_time = time.time() - t0
    if trainer.step < args.max_step:  # stopped by a signal: the checkpoint is saved, no test
        logger.close()
        return 0

    if stage["index"] < len(stages) - 1:
        logger.log(f"curriculum did not reach segments of {args.tgt_len}; testing the last model anyway")
        stage["index"] = len(stages) - 1
    elif not args.eval_only and runtime.is_main and (run_dir / BEST).is_file():
        model.load_state_dict(load_file(run_dir / BEST, runtime.device)["model"])
    test_m = measure("test", greedy=True)
    test_metrics = reported(test_m, greedy=True)
    logger.log("test | " + " | ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()) + f" | {len(test[0])} samples")
    if runtime.is_main and not args.no_results:
        csv = args.results_csv or REPO_ROOT / "experiments" / "results" / "synthetic.csv"
        metric_name = "answer_acc" if answer_slot else "acc_greedy"
        row = result_row(args, model_cfg, runtime, run_dir, name, "test", n_segments, train_time,
                         getattr(trainer, "last_tokens_per_s", 0.0), metric_name=metric_name,
                         metric_value=test_metrics[metric_name], **{k: test_metrics[k] for k in
                                                                    ("loss", "acc_tf", "acc_greedy", "exact_match")})
        append_result(csv, row)
        logger.log(f"results row appended to {csv}")
        for g, v in test_m.by_group.items():
            append_result(groups_csv(csv), {**{k: row[k] for k in GROUP_COLUMNS if k in row},
                                            "group_name": spec.group_name, "group": g, "n_samples": v["n"],
                                            "acc_tf": v["acc_tf"], "acc_greedy": v["acc_greedy"]}, GROUP_COLUMNS)
        if test_m.by_group:
            logger.log(f"accuracy by {spec.group_name} appended to {groups_csv(csv)}")
    logger.close()
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
