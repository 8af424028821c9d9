"""The algorithmic-task family of `rmt.train`: copy, reverse, associative retrieval, quadratic equations.

Each sample is split into segments of exactly --tgt_len tokens; memory and the XL cache start
fresh for every sample; the loss covers the last --answer_size targets. --mem_backprop_depth all
(the default, also -1) back-propagates through every segment of the sample (the paper's runs),
D > 0 truncates to D segments, as for language modelling. The original task scripts wrote 0 for
full BPTT; an explicit 0 is still read that way, with a deprecation warning (0 is to mean
detached memory here too). Missing data is generated on first use (seeded). The test split is
evaluated whole, with teacher-forced, greedy and exact-match accuracy.
"""
from __future__ import annotations

import math
import pathlib
import time
import warnings


from rmt import REPO_ROOT
from rmt.config import FULL_BPTT, model_config
from rmt.errors import CheckpointError, DataError, UsageError
from rmt.families.base import (BatchSampler, SampledFamily, add_sample_args, backward_in_chunks, check_evaluation,
                               check_sample_args, parameter_counts, refuse_bptt_bp, run_kind, truncation)
from rmt.results import TestResult
from rmt.tasks.generators import SampleSpaceTooSmall
from rmt.tasks.registry import task_spec
from rmt.tasks.scoring import answer_loss, evaluate_batches
from rmt.tasks.storage import load_meta, load_split, write_dataset

# The paper's copy recipe, the task family's defaults (the other scripts change some of them).
DEFAULTS = dict(n_layer=4, n_head=4, d_head=64, d_model=128, d_inner=256, dropout=0.1, lr=1e-4, scheduler="dev_perf",
                lr_min=1e-6, patience=8, log_interval=4000, eval_interval=12000, tgt_len=72, eval_tgt_len=72,
                batch_size=32, max_step=250_000, mem_backprop_depth=FULL_BPTT)


def add_args(p) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--answer_size", type=int, default=None, help="scored final targets (default: the task's)")
    g.add_argument("--task_seq_len", type=int, default=None, help="copy/reverse sequence length L (sqeq: slot)")
    g.add_argument("--num_tokens", type=int, default=None, help="copy/reverse vocabulary (symbols 2..N-1)")
    g.add_argument("--num_pairs", type=int, default=None, help="retrieval: key-value pairs K")
    g.add_argument("--max_root", type=int, default=None, help="sqeq: roots within +-(max_root-1) (paper: 100)")
    g.add_argument("--shuffle_limit", type=int, default=None,
                   help="sqeq: the equation is the monic one times +-k, k up to this (paper: 10)")
    add_sample_args(g, 100_000, 10_000, 20_000)
    g.add_argument("--select_by", choices=["loss", "acc"], default="loss",
                   help="model selection on validation loss (the original) or teacher-forced accuracy")
    g.add_argument("--no_greedy_valid", action="store_true", help="skip greedy decoding during validation")
    g.add_argument("--curriculum", type=int, nargs="*", default=[],
                   help="segment lengths to train on before --tgt_len (e.g. 12: two segments first, then "
                        "--tgt_len); a stage ends when validation acc_tf reaches --curriculum_threshold, "
                        "and the earlier stages together take at most half of --max_step")
    g.add_argument("--curriculum_threshold", type=float, default=0.95, help="acc_tf that ends a curriculum stage")
    p.set_defaults(**DEFAULTS)


def check_args(args) -> None:
    if args.mem_backprop_depth == 0:
        if not args.eval_only:  # an evaluation of an older run inherits its 0 and trains nothing: no warning
            warnings.warn("--mem_backprop_depth 0 is read as full BPTT here, as the original task scripts meant it; "
                          "this reading is deprecated: 0 is to mean detached memory, as in language modelling. "
                          "Write --mem_backprop_depth all for full BPTT", FutureWarning)
        args.mem_backprop_depth = FULL_BPTT
    # here one backward pass already covers every segment's loss
    refuse_bptt_bp(args, "the task loss of every segment is already back-propagated, to --mem_backprop_depth "
                         "segments of memory")
    check_evaluation(args)
    check_sample_args(args)
    if any(c <= 0 for c in args.curriculum):
        raise UsageError(f"--curriculum segment lengths must be positive, got {args.curriculum}")
    if not 0 < args.curriculum_threshold <= 1:
        raise UsageError(f"--curriculum_threshold must be in (0, 1], got {args.curriculum_threshold}")


def resolve_task(args):
    """The task spec, its name (with the options that change it) and its data directory."""
    options = dict(seq_len=args.task_seq_len, num_tokens=args.num_tokens, num_pairs=args.num_pairs,
                   max_root=args.max_root, shuffle_limit=args.shuffle_limit)
    kwargs = {k: v for k, v in options.items() if v is not None}
    spec = task_spec(args.dataset, **kwargs)
    tag = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    name = spec.name + (f"-{tag}" if tag else "")
    data_dir = pathlib.Path(args.data) if args.data else REPO_ROOT / "data" / "synthetic" / \
        f"{name}-n{args.n_train}-{args.n_val}-{args.n_test}-s{args.data_seed}"
    return spec, name, data_dir


class Curriculum:
    """Segment lengths to train on, longest (fewest segments) first, ending at --tgt_len.

    A stage ends when validation acc_tf reaches the threshold, or when its share of --max_step
    (or --max_time) is used up: the earlier stages together take at most half, so every model
    ends on the real task."""

    def __init__(self, args):
        self.lengths = list(args.curriculum) + [args.tgt_len]
        self.eval_len, self.threshold = args.eval_tgt_len, args.curriculum_threshold
        self.max_step, self.max_time_s = args.max_step, args.max_time * 60
        self.stage, self.t0 = 0, time.time()

    @property
    def at_last_stage(self) -> bool:
        return self.stage == len(self.lengths) - 1

    def seg_len(self, evaluating: bool = False) -> int:
        return self.eval_len if evaluating and self.at_last_stage else self.lengths[self.stage]

    def advance(self, acc_tf: float, step: int) -> bool:
        """After a validation: True when the next stage starts."""
        share = (self.stage + 1) / (2 * max(len(self.lengths) - 1, 1))
        late = step >= int(share * self.max_step) or 0 < self.max_time_s * share <= time.time() - self.t0
        if self.at_last_stage or not (acc_tf >= self.threshold or late):
            return False
        self.stage += 1
        return True


class AlgorithmicTask(SampledFamily):
    """One task: its data, sampler, curriculum, validation and test (a Family, rmt.families.base)."""

    results_csv = REPO_ROOT / "experiments" / "results" / "synthetic.csv"

    def __init__(self, args, runtime):
        self.args, self.runtime = args, runtime
        self.spec, self.name, self.data_dir = resolve_task(args)  # ValueError on a bad task option
        spec = self.spec
        self.answer_size = spec.answer_size if args.answer_size is None else args.answer_size
        if not 0 < self.answer_size <= spec.sample_len:
            raise ValueError(f"--answer_size must be in 1..{spec.sample_len} for {self.name}, got {self.answer_size}")
        self.run_prefix = f"{self.name}-{run_kind(args)}"
        self.select_by = "loss" if args.select_by == "loss" else "acc_tf"
        self.n_segments = math.ceil(spec.sample_len / args.tgt_len)
        self.depth = truncation(args)
        self.answer_slot = spec.default_kwargs.get("seq_len", 0) if self.name.startswith("sqeq") else 0
        self.curriculum = Curriculum(args)
        if args.eval_only:
            self.curriculum.stage = len(self.curriculum.lengths) - 1

    def load_data(self, log) -> None:
        """Generate the data when it is not there yet (saying so through `log`), then load it."""
        args, runtime = self.args, self.runtime
        sizes = dict(train=args.n_train, val=args.n_val, test=args.n_test)
        try:
            load_meta(self.data_dir, self.name)
        except ValueError as e:  # a corrupt meta.json
            raise DataError(str(e)) from None
        except (FileNotFoundError, NotADirectoryError):
            if runtime.is_main:
                log(f"generating {self.name} into {self.data_dir} (seed {args.data_seed}, sizes {sizes})")
                try:
                    write_dataset(self.spec, self.data_dir, args.data_seed, sizes, self.name)
                except SampleSpaceTooSmall as e:
                    raise DataError(f"{e}; ask for fewer with --n_train/--n_val/--n_test")
                except ValueError as e:  # e.g. a sqeq part longer than its slot
                    raise DataError(f"{e}")
        runtime.barrier()
        try:
            self.train, self.valid, self.test_split = (load_split(self.data_dir, self.name, s, self.spec.stacked)
                                                       for s in ("train", "val", "test"))
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"{e}")
        for split, (src, tgt) in zip(("train", "val", "test"), (self.train, self.valid, self.test_split)):
            if src.size(1) != self.spec.sample_len:  # another task's arrays, or other task flags
                raise DataError(f"the {split} samples in {self.data_dir} are {src.size(1)} tokens long; "
                                 f"{self.name} needs {self.spec.sample_len}: regenerate them (delete the directory) "
                                 "or pass the task flags they were made with")
            for name, arr in (("inputs", src), ("targets", tgt)):
                low, high = int(arr.min()), int(arr.max())
                if low < 0 or high >= self.spec.vocab_size:  # would index past the embedding or the softmax
                    raise DataError(f"the {split} {name} in {self.data_dir} hold token ids {low}..{high}, outside "
                                    f"{self.name}'s vocabulary 0..{self.spec.vocab_size - 1}: regenerate them "
                                    "(delete the directory) or pass the task flags they were made with")
        self.sampler = BatchSampler(len(self.train[0]), args.batch_size, args.seed)

    def model_config(self):
        return model_config(self.args, n_token=self.spec.vocab_size)

    def check_model(self, model, checkpoint) -> None:
        """An evaluated checkpoint must have this task's vocabulary."""
        if model.config.n_token != self.spec.vocab_size:
            raise CheckpointError(f"{checkpoint} has vocabulary {model.config.n_token}, {self.name} needs "
                             f"{self.spec.vocab_size}; pass the task flags the model was trained with")

    def config_extras(self) -> dict:
        return {"task": self.name, "data_dir": str(self.data_dir), "n_segments": self.n_segments,
                "answer_size": self.answer_size}

    def describe(self, model) -> str:
        return (f"{self.name}: {self.spec.sample_len} tokens = {self.n_segments} segments of {self.args.tgt_len}; "
                f"answer {self.answer_size}; vocab {self.spec.vocab_size}; "
                f"{parameter_counts(model)}")

    # ---- the Family protocol (rmt.families.base) --------------------------------------------

    def train_batch(self, model, step: int) -> dict:
        args, runtime = self.args, self.runtime
        idx = self.sampler.next_shard(runtime.rank, runtime.world)
        src, tgt = self.train[0][idx].to(runtime.device), self.train[1][idx].to(runtime.device)
        total = backward_in_chunks(runtime, args.batch_chunk, lambda s, t: answer_loss(
            model, s, t, self.answer_size, self.curriculum.seg_len(), self.depth, args.recompute_segments), src, tgt)
        return {"loss": total, "tokens": src.numel()}

    def evaluate(self, model, split: str) -> dict:
        greedy = not self.args.no_greedy_valid
        return self.reported(self.measure(model, split, greedy), greedy)

    def after_validation(self, metrics: dict, step: int) -> str:
        if not self.curriculum.advance(metrics["acc_tf"], step):
            return ""
        return f"curriculum: segments of {self.curriculum.seg_len()} from step {step}"

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "stage": self.curriculum.stage}

    def load_state_dict(self, d: dict) -> None:
        self.sampler.load_state_dict(d["sampler"])
        self.curriculum.stage = d.get("stage", 0)

    @property
    def tests_best(self) -> bool:
        """The best validated model is tested, unless the curriculum never reached the real
        task: then its best is of an easier stage, and the last model is tested instead."""
        return self.curriculum.at_last_stage

    # ---- metrics -----------------------------------------------------------------------------

    def batches(self, split, limit: int):
        src, tgt = split
        bsz = self.args.eval_batch_size or self.args.batch_size
        device = self.runtime.device
        for i, start in enumerate(range(0, len(src), bsz)):
            if 0 <= limit <= i:
                break
            yield src[start : start + bsz].to(device), tgt[start : start + bsz].to(device)

    def measure(self, model, split_name: str, greedy: bool):
        split = self.valid if split_name == "valid" else self.test_split
        limit = self.args.max_eval_steps if split_name == "valid" else -1
        model.eval()
        with self.runtime.autocast():
            return evaluate_batches(model, self.batches(split, limit), self.answer_size,
                                    self.curriculum.seg_len(evaluating=True), not self.spec.stacked,
                                    with_greedy=greedy, answer_slot=self.answer_slot, group_of=self.spec.group_of)

    def reported(self, m, greedy: bool) -> dict:
        out = {"loss": m.loss, "acc_tf": m.acc_tf}
        if greedy:
            out.update(acc_greedy=m.acc_greedy, exact_match=m.exact_match)
            if self.answer_slot:
                out["answer_acc"] = m.answer_acc
        # per group (retrieval: acc_tf_pair1 ..): logged and drawn in TensorBoard with the rest
        out.update({f"acc_tf_{self.spec.group_name}{g}": v["acc_tf"] for g, v in m.by_group.items()})
        return out

    def test(self, model) -> TestResult:
        """The whole test split, greedy included, at the final segment length."""
        note = ""
        if not self.curriculum.at_last_stage:
            note = f"curriculum did not reach segments of {self.args.tgt_len}; testing the last model"
            self.curriculum.stage = len(self.curriculum.lengths) - 1
        m = self.measure(model, "test", greedy=True)
        metrics = self.reported(m, greedy=True)
        name = "answer_acc" if self.answer_slot else "acc_greedy"
        row = {"metric_name": name, "metric_value": metrics[name],
               **{k: metrics[k] for k in ("loss", "acc_tf", "acc_greedy", "exact_match")}}
        groups = [{"group_name": self.spec.group_name, "group": g, "n_samples": v["n"], "acc_tf": v["acc_tf"],
                   "acc_greedy": v["acc_greedy"]} for g, v in m.by_group.items()]
        return TestResult({**metrics, "samples": len(self.test_split[0])}, row, groups, note)
