"""Configuration: one path from the shell flags to the model and a run's `config.json`.

The argparse flags shared by the drivers (original names and meanings) and every flag check
live here; they build the model's `ModelConfig` (rmt.model.config, which knows nothing of the
command line), whose field names are the flag names. Extra flags given later on the command
line win (argparse keeps the last value), which is how the run scripts take overrides.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import warnings

from rmt.atomic import atomic_write
from rmt.errors import UsageError
from rmt.model.ablation import ABLATIONS
from rmt.model.config import ATTN_IMPLS, MEMORY_KINDS, WRITE_INITS, ModelConfig
from rmt.training.checkpoint import run_config

# ---- command-line flags ----------------------------------------------------------------------

BOOL = argparse.BooleanOptionalAction


FULL_BPTT = -1  # --mem_backprop_depth all
MAX_SEED = 2**32 - 1


def backprop_depth(text: str) -> int:
    """--mem_backprop_depth: 'all' (or -1) for full BPTT, 0 for detached memory, D > 0 for D segments."""
    if text.strip().lower() == "all":
        return FULL_BPTT
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, -1, 0 or a positive number of segments, got {text!r}")
    if value < FULL_BPTT:
        raise argparse.ArgumentTypeError(f"expected all, -1, 0 or a positive number of segments, got {value}")
    return value


def reset_interval(text: str) -> int:
    """The argparse type of --reset_memory_every (every parser that takes it): 0 (never) or a number of segments."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (never) or a number of segments, got {n}")
    return n


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--n_layer", type=int, default=12, help="number of layers")
    g.add_argument("--n_head", type=int, default=10, help="number of heads")
    g.add_argument("--d_head", type=int, default=50, help="head dimension")
    g.add_argument("--d_embed", type=int, default=-1, help="embedding dimension (<0: d_model)")
    g.add_argument("--d_model", type=int, default=500, help="model dimension")
    g.add_argument("--d_inner", type=int, default=1000, help="inner dimension of the FF layers")
    g.add_argument("--dropout", type=float, default=0.0, help="global dropout rate")
    g.add_argument("--dropatt", type=float, default=0.0, help="attention-probability dropout rate")
    g.add_argument("--not_tied", action="store_true", help="do not tie input and output embeddings")
    g.add_argument("--div_val", type=int, default=1, help="adaptive input/softmax dimension divisor")
    g.add_argument("--pre_lnorm", action="store_true", help="apply LayerNorm to the input of each block")
    g.add_argument("--attn_type", type=int, default=0,
                   help="0: relative (Transformer-XL), 2: absolute, 4: rotary (RoPE)")
    g.add_argument("--clamp_len", type=int, default=-1, help="clamp relative distances (<=0: no clamp)")
    g.add_argument("--same_length", action="store_true", help="every token sees the same number of keys")
    g.add_argument("--tgt_len", type=int, default=70, help="segment length (tokens per segment)")
    g.add_argument("--eval_tgt_len", type=int, default=50, help="segment length for evaluation")
    g.add_argument("--ext_len", type=int, default=0, help="extended context length")
    g.add_argument("--mem_len", type=int, default=0, help="Transformer-XL cache length (0: no cache)")
    g.add_argument("--num_mem_tokens", type=int, default=0, help="RMT memory tokens M (0: no memory)")
    g.add_argument("--mem_at_end", action=BOOL, default=True,
                   help="write memory after the segment (default on; --no-mem_at_end: start-only ablation)")
    g.add_argument("--read_mem_from_cache", action=BOOL, default=False,
                   help="memory tokens may attend to the Transformer-XL cache")
    g.add_argument("--causal", action=BOOL, default=True,
                   help="causal attention (default); --no-causal: the bidirectional encoder, memory at the start "
                        "only (with --no-mem_at_end), for classification")
    g.add_argument("--memory", choices=MEMORY_KINDS, default="tokens",
                   help="what carries memory between segments: the memory tokens (RMT) or a per-layer associative "
                        "matrix written through them (ARMT, rmt.model.associative; needs --num_mem_tokens)")
    g.add_argument("--d_mem", type=int, default=32,
                   help="--memory associative: key width before the DPFP projection (keys of 6 x d_mem)")
    g.add_argument("--read_memory_emb", action=BOOL, default=False,
                   help="add a learned vector per read slot to the memory it reads (a slot position embedding)")
    g.add_argument("--write_mem_init", choices=WRITE_INITS, default="memory",
                   help="what the write slots start from: the memory read (the original), the learned memory, or "
                        "the learned memory plus the memory read (learned+detached: its gradient stopped there)")
    g.add_argument("--enhanced_xl_recurrence", action=BOOL, default=False,
                   help="each layer attends, on the cached positions, to its own output there instead of its input "
                        "(ERNIE-Doc's enhanced recurrence; needs --mem_len)")
    g.add_argument("--emb_gradient_frac", type=float, default=1.0,
                   help="the token embeddings get this fraction of their gradient, their value unchanged (0 < F <= 1)")
    g.add_argument("--token_shift", action=BOOL, default=False,
                   help="attention and the feed-forward network of every layer read half of each token's channels "
                        "from the token before (within the segment; the memory rows are not shifted)")
    g.add_argument("--mem_init", choices=["distinct", "identical"], default="distinct",
                   help="initial memory rows: distinct N(0,1) rows, or the original's identical rows")
    g.add_argument("--attn_impl", choices=ATTN_IMPLS, default="eager",
                   help="fused: scaled_dot_product_attention, relative positions and memory mask as one bias; "
                        "flex: FlexAttention (training needs CUDA; no --dropatt)")
    g.add_argument("--mem_backprop_depth", type=backprop_depth, default=0, metavar="{all,-1,0,D}",
                   help="how far back through memory the gradient flows, the same in every driver: 0 detached "
                        "(memory is read, never trained to write), D the last D segments (truncated BPTT), "
                        "all (or -1) every segment of a sample (tasks only); default: 0 for LM, all for tasks")
    g.add_argument("--recompute_segments", action="store_true",
                   help="activation checkpointing per segment: BPTT over many segments in one segment's memory")
    g.add_argument("--bptt_bp", action="store_true",
                   help="also back-propagate the losses of the re-computed past segments")


def add_optim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--init", default="normal", choices=["normal", "uniform"], help="parameter initialiser")
    g.add_argument("--init_range", type=float, default=0.1, help="uniform init range")
    g.add_argument("--init_std", type=float, default=0.02, help="normal init std")
    g.add_argument("--proj_init_std", type=float, default=0.01, help="std of adaptive projections")
    g.add_argument("--optim", default="adam", choices=["adam", "sgd", "adagrad"], help="optimiser")
    g.add_argument("--lr", type=float, default=0.00025, help="learning rate")
    g.add_argument("--mom", type=float, default=0.0, help="SGD momentum")
    g.add_argument("--scheduler", default="cosine", choices=["cosine", "inv_sqrt", "dev_perf", "constant"])
    g.add_argument("--warmup_step", type=int, default=0, help="linear warm-up steps")
    g.add_argument("--decay_rate", type=float, default=0.5, help="dev_perf decay factor")
    g.add_argument("--lr_min", type=float, default=0.0, help="dev_perf minimum learning rate")
    g.add_argument("--eta_min", type=float, default=0.0, help="cosine minimum learning rate")
    g.add_argument("--patience", type=int, default=0, help="dev_perf patience (evaluations)")
    g.add_argument("--clip", type=float, default=0.25, help="gradient-norm clipping")
    g.add_argument("--skip_nonfinite", action="store_true",
                   help="skip a step whose loss or gradient is not finite instead of stopping the run")
    g.add_argument("--max_step", type=int, default=100000, help="optimiser steps")
    g.add_argument("--max_time", type=float, default=0,
                   help="stop after this many minutes of training (0: no limit); validates and tests as usual")
    g.add_argument("--batch_size", type=int, default=60, help="global batch size")
    g.add_argument("--batch_chunk", type=int, default=1, help="split each batch into this many accumulation chunks")


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--data", default=None, help="data directory")
    g.add_argument("--seed", type=int, default=1111, help="random seed")
    g.add_argument("--cuda", action="store_true", help="use a GPU (the default when one is present)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--log-interval", "--log_interval", dest="log_interval", type=int, default=200)
    g.add_argument("--eval-interval", "--eval_interval", dest="eval_interval", type=int, default=4000)
    g.add_argument("--max_eval_steps", type=int, default=-1, help="cap on evaluation batches (-1: all)")
    g.add_argument("--work_dir", default="runs",
                   help="runs go to WORK_DIR/<name> (an evaluation: beside the evaluated run by default)")
    g.add_argument("--run_name", default=None, help="run directory name (default: dataset-kind-time)")
    g.add_argument("--restart", action="store_true", help="resume from --restart_dir")
    g.add_argument("--restart_dir", default="", help="run directory to resume (its last checkpoint)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision")
    g.add_argument("--fp16", action="store_true", help="same as --amp fp16 (kept from the original)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--results_csv", default=None, help="CSV that gets one results row (default experiments/results/)")
    g.add_argument("--scale", default="custom",
                   help="label for the results row: paper, cpu-preset, smoke, ... (the run scripts set paper or "
                        "cpu-preset, and custom when their recipe is resized; default custom)")
    g.add_argument("--no_results", action="store_true", help="do not append a results row")
    # Accepted so that original command lines still run; they have no effect here.
    for flag in ("--multi_gpu", "--debug"):
        g.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--gpu0_bsz", type=int, default=-1, help=argparse.SUPPRESS)
    g.add_argument("--device_ids", type=int, nargs="*", default=None, help=argparse.SUPPRESS)


def base_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A driver's parser with the shared model, optimisation and run flags."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add_model_args(p)
    add_optim_args(p)
    add_run_args(p)
    return p


# ---- the training entry point's flags: shared, then the family's (rmt.families.registry) ---------

TRAIN_PROG = "python3 -m rmt.train"
TRAIN_DESCRIPTION = "Train a Transformer-XL / RMT model on a corpus or an algorithmic task; one entry point for both."
# Flags that belong to one invocation, never inherited by an evaluation from the run it evaluates:
# how a run was started, not what it is (a curriculum stage's --init_checkpoint is in the weights
# it saved already).
INVOCATION_FLAGS = {"eval_only", "eval_checkpoint", "restart", "restart_dir", "run_name", "work_dir",
                    "no_results", "device", "cuda", "amp", "fp16", "compile", "log_interval", "init_checkpoint"}


def training_parser(dataset: str, description: str = TRAIN_DESCRIPTION) -> argparse.ArgumentParser:
    """rmt.train's parser: the shared flags, then the family's own (a family also brings its defaults)."""
    from rmt.families.registry import FAMILIES, family_module  # the families' modules import this one

    p = base_parser(TRAIN_PROG, description)
    p.add_argument("--dataset", default=dataset, choices=list(FAMILIES),
                   help="a corpus (default data dir: data/<name>), an algorithmic task, fact (classification), "
                        "memorize (classification with a pretrained Hugging Face encoder), hf_lm (language "
                        "modelling with a pretrained Hugging Face causal LM) or babilong (long-context question "
                        "answering over one)")
    p.add_argument("--eval_only", action="store_true", help="tasks: evaluate --eval_checkpoint on the test split")
    p.add_argument("--eval_checkpoint", default=None, help="tasks: the checkpoint --eval_only evaluates")
    p.add_argument("--memory_ablation", choices=ABLATIONS, default="none",
                   help="with --eval_only: replace the memory each segment reads by the initial memory (reset) or "
                        "by another sample's (shuffle), to measure what the model owes to its memory")
    p.add_argument("--init_checkpoint", default=None,
                   help="start from this checkpoint's weights (a new optimiser, schedule and step count), e.g. a "
                        "run on fewer segments: a curriculum over segments, as RMT is trained on long inputs")
    family_module(dataset).add_args(p)
    return p


def parse_training_args(argv, description: str = TRAIN_DESCRIPTION) -> tuple[argparse.Namespace,
                                                                               argparse.ArgumentParser]:
    """Every flag of rmt.train, checked (a refused one ends in argparse's usage error); a
    family's evaluation inherits the evaluated run's flags."""
    from rmt.families.registry import DEFAULT_DATASET, OWN_EVALUATION, family_module

    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--dataset")
    peek.add_argument("--eval_checkpoint")
    known = peek.parse_known_args(argv)[0]
    run_flags = run_config(known.eval_checkpoint).get("args", {}) if known.eval_checkpoint else {}
    parser = training_parser(known.dataset or run_flags.get("dataset") or DEFAULT_DATASET, description)
    args = parser.parse_args(argv)
    if args.dataset in OWN_EVALUATION:
        args = inherit_trained_flags(parser, argv, args)
    check_args(args, parser)
    with_usage_errors(parser, family_module(args.dataset).check_args, args)
    return args, parser


def with_usage_errors(parser: argparse.ArgumentParser, run, *args):
    """run(*args), a UsageError it raises shown as argparse shows a refused flag (usage, exit 2)."""
    try:
        return run(*args)
    except UsageError as e:
        parser.error(str(e))


def inherit_trained_flags(parser: argparse.ArgumentParser, argv, args: argparse.Namespace) -> argparse.Namespace:
    """With --eval_only, the evaluated run's own flags (its config.json) stand in for the
    defaults, so the run is evaluated with its task, segments and memory; flags given on the
    command line still win. `args.trained_flags` says where the defaults came from."""
    args.trained_flags = ""
    if not (args.eval_only and args.eval_checkpoint):
        return args
    run_flags = run_config(args.eval_checkpoint).get("args")
    if not isinstance(run_flags, dict):
        return args
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in run_flags.items() if k in known and k not in INVOCATION_FLAGS},
                        work_dir=None)
    args = parser.parse_args(argv)
    run_dir = pathlib.Path(args.eval_checkpoint).parent
    run_dir = run_dir if run_dir.name else run_dir.resolve()  # started inside the run directory
    if args.work_dir is None:  # beside the evaluated run, wherever the command was started
        args.work_dir = str(run_dir.parent)
    if args.run_name is None:
        args.run_name = f"{run_dir.name}-eval"
    args.trained_flags = str(pathlib.Path(args.eval_checkpoint).parent / "config.json")
    return args


def check_device(args: argparse.Namespace, device, training: bool = True) -> None:
    """Reject flag combinations the chosen device cannot run, before anything is built (UsageError)."""
    if training and args.attn_impl == "flex" and device.type != "cuda":
        raise UsageError("--attn_impl flex trains only on CUDA (FlexAttention has no backward on CPU); "
                         "use --attn_impl fused here, flex works for evaluation")


DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Reject impossible values with one line, before anything is built or written; warn about
    flags that do nothing here."""
    for name in ("max_step", "batch_size", "tgt_len", "eval_tgt_len", "log_interval", "eval_interval", "batch_chunk"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if not math.isfinite(args.lr) or args.lr <= 0:
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    for name in ("warmup_step", "seed", "max_time", "clip", "mom", "eta_min", "lr_min", "patience"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            parser.error(f"--{name} must be a finite number >= 0, got {value}")
    if args.seed > MAX_SEED:  # numpy's legacy seeding takes 32 bits
        parser.error(f"--seed must be at most {MAX_SEED} (2**32 - 1), got {args.seed}")
    eval_batch = getattr(args, "eval_batch_size", None)
    if eval_batch is not None and eval_batch <= 0:
        parser.error(f"--eval_batch_size must be positive, got {eval_batch}")
    init = getattr(args, "init_checkpoint", None)
    if init and (args.restart or getattr(args, "eval_only", False)):
        parser.error("--init_checkpoint starts a new run from other weights: not with --restart or --eval_only")
    if init and not pathlib.Path(init).is_file():
        parser.error(f"--init_checkpoint {init}: no such file")
    if getattr(args, "memory_ablation", "none") != "none" and not getattr(args, "eval_only", False):
        parser.error("--memory_ablation is an evaluation: give it with --eval_only --eval_checkpoint PATH")
    if not DEVICE.match(args.device):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    check_paths(args, parser)
    if args.max_eval_steps == 0:  # the original looped forever here; a silent empty validation is no better
        parser.error("--max_eval_steps 0 would evaluate nothing: give a positive cap, or -1 for the whole split")
    if args.memory == "associative":
        if args.num_mem_tokens <= 0 or args.d_mem <= 0:
            parser.error("--memory associative writes through memory tokens into keys of width --d_mem: give "
                         f"positive --num_mem_tokens and --d_mem (got {args.num_mem_tokens} and {args.d_mem})")
    if args.batch_size % args.batch_chunk:
        parser.error(f"--batch_size {args.batch_size} is not divisible by --batch_chunk {args.batch_chunk}")
    if args.fp16:
        args.amp = "fp16"
    if args.multi_gpu or args.gpu0_bsz >= 0 or args.device_ids:
        warnings.warn("--multi_gpu/--gpu0_bsz/--device_ids are ignored: launch with torchrun for several GPUs")
    if args.debug:
        warnings.warn("--debug is ignored: runs always write their directory (use --no_results to skip the CSV row)")
    if args.num_mem_tokens and not args.mem_at_end and args.causal:  # the encoder's start slots do write
        warnings.warn("--no-mem_at_end: memory is read only and never written (the paper's 'MT' ablation)")


def check_paths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A run directory stays inside --work_dir, and what the run will write can be written."""
    name = args.run_name
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".")):
        parser.error(f"--run_name must be a plain directory name (no '/', not starting with '.'), got {name!r}")
    targets = [] if args.restart else [pathlib.Path(args.work_dir)]
    if args.results_csv and not args.no_results:
        targets.append(pathlib.Path(args.results_csv).parent)
    for target in targets:
        existing = next((p for p in (target, *target.parents) if p.exists()), None)
        if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
            parser.error(f"cannot write under {target} ({existing} is not a writable directory); "
                         "choose another --work_dir or --results_csv")


def model_config(args: argparse.Namespace, n_token: int, cutoffs=(), tie_projs=(False,),
                 n_classes: int = 0) -> ModelConfig:
    """The model part of the flags, validated; a bad value becomes a ValueError naming it."""
    return ModelConfig(
        n_token=n_token, n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model, d_head=args.d_head,
        d_inner=args.d_inner, dropout=args.dropout, dropatt=args.dropatt, tie_weight=not args.not_tied,
        d_embed=args.d_embed, div_val=args.div_val, tie_projs=list(tie_projs), pre_lnorm=args.pre_lnorm,
        tgt_len=args.tgt_len, ext_len=args.ext_len, mem_len=args.mem_len, num_mem_tokens=args.num_mem_tokens,
        read_mem_from_cache=args.read_mem_from_cache, mem_at_end=args.mem_at_end, cutoffs=list(cutoffs),
        same_length=args.same_length, attn_type=args.attn_type, clamp_len=args.clamp_len, mem_init=args.mem_init,
        attn_impl=args.attn_impl, causal=args.causal, n_classes=n_classes, memory=args.memory, d_mem=args.d_mem,
        read_memory_emb=args.read_memory_emb, write_mem_init=args.write_mem_init,
        enhanced_xl_recurrence=args.enhanced_xl_recurrence, emb_gradient_frac=args.emb_gradient_frac,
        token_shift=args.token_shift,
    )


def write_config(run_dir: pathlib.Path, args: argparse.Namespace, model_cfg: ModelConfig, extra: dict) -> dict:
    """Write run_dir/config.json: every flag, the resolved model config and run facts."""
    cfg = {"args": vars(args), "model": model_cfg.to_dict(), **extra}
    text = json.dumps(cfg, indent=2, default=str) + "\n"
    atomic_write(run_dir / "config.json", lambda f: f.write(text), text=True, encoding="utf-8")
    return cfg
