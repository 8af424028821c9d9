"""Configuration: one path from the shell flags to the model and a run's `config.json`.

`ModelConfig` holds the original `MemTransformerLM` constructor arguments, validated; its field
names are the original flag names, so a run's `config.json` maps one to one onto the shell flags
and onto the original code's constructor. The argparse flags shared by the drivers (original
names and meanings) and every flag check live here too. Extra flags given later on the command
line win (argparse keeps the last value), which is how the run scripts take overrides.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import os
import pathlib
import re
import warnings
from dataclasses import dataclass, field

from rmt.atomic import atomic_write

ATTN_TYPES = {0: "relative (Transformer-XL)", 2: "absolute (Vaswani)", 4: "rotary (RoPE)"}
MEM_INITS = ("distinct", "identical")
# eager: explicit scores; fused: scaled_dot_product_attention with one additive bias;
# flex: FlexAttention, the position term as a score modification and the mask as a block mask.
ATTN_IMPLS = ("eager", "fused", "flex")


@dataclass
class ModelConfig:
    n_token: int
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 32
    d_head: int = 8
    d_inner: int = 64
    dropout: float = 0.0
    dropatt: float = 0.0
    tie_weight: bool = True
    d_embed: int | None = None  # None or <= 0: same as d_model
    div_val: int = 1
    tie_projs: list[bool] = field(default_factory=lambda: [False])
    pre_lnorm: bool = False
    tgt_len: int = 8
    ext_len: int = 0
    mem_len: int = 0  # Transformer-XL cache length (positions, memory tokens included)
    num_mem_tokens: int = 0  # RMT memory size M
    read_mem_from_cache: bool = False  # may memory tokens attend to the XL cache?
    mem_at_end: bool = True  # write memory after the segment; False = start-only ("MT") ablation
    cutoffs: list[int] = field(default_factory=list)
    same_length: bool = False
    attn_type: int = 0
    clamp_len: int = -1
    sample_softmax: int = -1  # kept for config compatibility; sampled softmax is not supported
    mem_init: str = "distinct"  # "identical" reproduces the original's M equal rows
    attn_impl: str = "eager"  # one of ATTN_IMPLS; fused and flex apply to attn_type 0 and 4
    causal: bool = True  # False: the bidirectional encoder (memory at the start only, mem_at_end False)
    n_classes: int = 0  # > 0: a sequence-classification head over the final memory (or tokens)

    def __post_init__(self) -> None:
        if self.d_embed is None or self.d_embed <= 0:
            self.d_embed = self.d_model
        self.cutoffs = [int(c) for c in self.cutoffs]
        self.tie_projs = [bool(t) for t in self.tie_projs]
        self._validate()

    def _validate(self) -> None:
        def positive(*names: str) -> None:
            for name in names:
                value = getattr(self, name)
                if not isinstance(value, numbers.Integral) or value <= 0:
                    raise ValueError(f"{name} must be positive, got {value!r}")

        def non_negative(*names: str) -> None:
            for name in names:
                value = getattr(self, name)  # None (a config written by hand) would fail later as a TypeError
                if not isinstance(value, numbers.Integral) or value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value!r}")

        positive("n_token", "n_layer", "n_head", "d_model", "d_head", "d_inner", "tgt_len", "div_val")
        non_negative("ext_len", "mem_len", "num_mem_tokens", "n_classes")
        for name in ("dropout", "dropatt"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.attn_type not in ATTN_TYPES:
            # Types 1 (Shaw) and 3 (Al-Rfou) were never used in the paper; type 3 would also need
            # n_head * d_head == d_model.
            raise ValueError(
                f"attn_type {self.attn_type} is not supported; use one of "
                + ", ".join(f"{k} ({v})" for k, v in ATTN_TYPES.items())
            )
        if self.attn_type == 4 and self.d_head % 2:
            raise ValueError(f"d_head must be even for rotary positions (attn_type 4), got {self.d_head}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for the sinusoidal positions, got {self.d_model}")
        cuts = self.cutoffs
        if any(b <= a for a, b in zip(cuts, cuts[1:])) or (cuts and (cuts[0] <= 0 or cuts[-1] >= self.n_token)):
            raise ValueError(
                f"cutoffs must be strictly increasing and inside (0, n_token={self.n_token}), got {cuts}"
            )
        if self.d_embed // self.div_val ** len(cuts) < 1:
            raise ValueError(
                f"d_embed {self.d_embed} is too small for div_val {self.div_val} over {len(cuts)} cutoffs"
            )
        if len(self.tie_projs) > len(cuts) + 1:
            raise ValueError(f"tie_projs has {len(self.tie_projs)} entries for {len(cuts) + 1} clusters")
        if self.same_length and self.mem_len <= 0:
            raise ValueError("same_length needs mem_len > 0 (it sizes the attention window)")
        if self.ext_len and self.mem_len and self.num_mem_tokens and self.mem_at_end:
            # The cache stops ext_len positions before the end, which would drop the write memory and
            # keep the ext_len tokens that come back as the next prefix. The paper never sets ext_len.
            raise ValueError("ext_len > 0 does not combine with memory tokens and a cache (mem_len > 0); "
                             "set ext_len 0")
        if self.sample_softmax > 0:
            raise ValueError("sample_softmax is not supported (it was broken in the original code)")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.attn_impl == "flex" and self.dropatt > 0:
            raise ValueError("attn_impl 'flex' has no attention dropout; set --dropatt 0 or use eager/fused")
        if not self.causal:
            self._validate_encoder()
        if self.mem_init not in MEM_INITS:
            raise ValueError(f"mem_init must be one of {MEM_INITS}, got {self.mem_init!r}")

    def _validate_encoder(self) -> None:
        if self.mem_at_end and self.num_mem_tokens:
            raise ValueError("the bidirectional encoder keeps memory at the start only (its slots see the whole "
                             "segment, so they read and write): set mem_at_end False (--no-mem_at_end)")
        if self.same_length:
            raise ValueError("same_length is a causal window; it does not apply to the bidirectional encoder")
        if self.attn_impl == "flex" and self.attn_type == 0:
            raise ValueError("attn_impl 'flex' supports causal relative attention only; use eager or fused")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict, ignoring keys that are not model fields (e.g. a run's other flags)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- command-line flags ----------------------------------------------------------------------

BOOL = argparse.BooleanOptionalAction


FULL_BPTT = -1  # --mem_backprop_depth all


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
    g.add_argument("--work_dir", default="runs", help="runs go to WORK_DIR/<name>")
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


def check_device(args: argparse.Namespace, device, parser: argparse.ArgumentParser, training: bool = True) -> None:
    """Reject flag combinations the chosen device cannot run, before anything is built."""
    if training and args.attn_impl == "flex" and device.type != "cuda":
        parser.error("--attn_impl flex trains only on CUDA (FlexAttention has no backward on CPU); "
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
        attn_impl=args.attn_impl, causal=args.causal, n_classes=n_classes,
    )


def write_config(run_dir: pathlib.Path, args: argparse.Namespace, model_cfg: ModelConfig, extra: dict) -> dict:
    """Write run_dir/config.json: every flag, the resolved model config and run facts."""
    cfg = {"args": vars(args), "model": model_cfg.to_dict(), **extra}
    text = json.dumps(cfg, indent=2, default=str) + "\n"
    atomic_write(run_dir / "config.json", lambda f: f.write(text), text=True, encoding="utf-8")
    return cfg
