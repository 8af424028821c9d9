"""Language modelling over a pretrained Hugging Face causal LM: the `hf_lm` family of `rmt.train`.

    python3 -m rmt.train --dataset hf_lm --backbone gpt2 --data data/wikitext-2 --n_segments 4 --tgt_len 128 \\
        --num_mem_tokens 10                    # RMT over GPT-2 on inputs of 4 x 128 tokens
    python3 -m rmt.train --dataset hf_lm --backbone gpt2 ... --num_mem_tokens 0   # the same segments, no memory

The text is --data/{train,valid,test}.txt (the WikiText layout, `bash getdata.sh wt2`, or any
text of your own), read with the backbone's tokenizer and cut into windows of n_segments *
tgt_len tokens. Each window is a sample: memory starts from the learned initial memory, runs
through its segments (rmt.hf.RMTForCausalLM), and every token after the window's first is
supervised. Training windows are drawn in a seeded random order (exact resume); validation
and test read every window of their split in order (--max_eval_steps caps validation).

The test reports the perplexity over the last --last_tokens targets of every window (default:
its last segment), where memory of the earlier segments can help, as the row's metric
(ppl_last_<N>), and over all its tokens (the loss and ppl columns); its log and test.json add
the loss of every N-token part of the window (loss_part<k>: with N = tgt_len, segment k's tokens;
segment 0 has no memory to read). Without memory
(--num_mem_tokens 0) every segment is read on its own; with --n_segments 1 and tgt_len the whole
window, the backbone sees all of it at once: the full-attention reference (within its position
limit), measured on the same last tokens. --eval_only without --eval_checkpoint tests the
backbone as loaded (the pretrained model before any training). Rows go to
experiments/results/hf.csv.
"""
from __future__ import annotations

import math
import pathlib

import torch
import torch.nn.functional as F

from rmt import REPO_ROOT
from rmt.config import BOOL, FULL_BPTT
from rmt.errors import DataError, UsageError
from rmt.families.base import (BackboneFamily, BatchSampler, SampledFamily, backward_in_chunks, parameter_counts,
                               run_kind, truncation)
from rmt.lm.iterators import windows
from rmt.results import TestResult
from rmt.training.backbones import load_backbone, load_tokenizer, load_weights, refuse_txl_flags

NAME = "hf_lm"
SPLITS = ("train", "valid", "test")
DEFAULTS = dict(lr=5e-5, scheduler="constant", warmup_step=0, log_interval=10, eval_interval=100, tgt_len=128,
                eval_tgt_len=128, batch_size=8, max_step=500, mem_backprop_depth=FULL_BPTT, num_mem_tokens=10,
                clip=1.0, optim="adam")


def add_args(p) -> None:
    g = p.add_argument_group("hf_lm (a pretrained Hugging Face causal LM)")
    g.add_argument("--backbone", default=None,
                   help="transformers causal-LM directory (or hub name) with its tokenizer, e.g. gpt2")
    g.add_argument("--n_segments", type=int, default=4, help="segments per window (a sample)")
    add_causal_rmt_args(g)
    g.add_argument("--last_tokens", type=int, default=0,
                   help="the test's metric: perplexity of the last N targets of every window (0: the last segment)")
    g.add_argument("--eval_batch_size", type=int, default=None, help="evaluation windows per batch (default: "
                                                                      "--batch_size)")
    p.set_defaults(**DEFAULTS, data=str(REPO_ROOT / "data" / "wikitext-2"))


def check_args(args) -> None:
    if not args.backbone:
        raise UsageError("--backbone is required: a transformers causal-LM directory (or hub name) with its tokenizer")
    if args.n_segments <= 0:
        raise UsageError(f"--n_segments must be positive, got {args.n_segments}")
    if not 0 <= args.last_tokens < args.n_segments * args.tgt_len:
        raise UsageError(f"--last_tokens must be 0 (the last segment) to {args.n_segments * args.tgt_len - 1} "
                         f"(a window holds {args.n_segments * args.tgt_len} tokens), got {args.last_tokens}")
    check_causal_rmt_args(args)


def add_causal_rmt_args(g) -> None:
    """The flags of the families over a pretrained causal LM (hf_lm, babilong): how the backbone
    is trained and spread over processes (--memory and --d_mem are the shared model flags)."""
    g.add_argument("--freeze_backbone", action=BOOL, default=False, help="train the memory only")
    g.add_argument("--lora", type=int, default=0, metavar="R",
                   help="train LoRA adapters of rank R on every linear layer of the backbone (peft) and the memory, "
                        "the backbone's own weights frozen (0: train them all)")
    g.add_argument("--memory_norm", action=BOOL, default=False,
                   help="rescale the written memory to the token embeddings' norm (a pretrained decoder's last layer "
                        "is far larger than its inputs)")
    g.add_argument("--memory_residual", action=BOOL, default=False,
                   help="each segment reads the learned memory plus a learned projection of the written memory, zero "
                        "at the start (so a fresh model reads its learned memory every segment)")
    g.add_argument("--mem_lr", type=float, default=None,
                   help="a learning rate of its own for the memory parameters (and an associative memory's "
                        "projections), which start untrained beside a pretrained backbone (default: --lr)")
    g.add_argument("--fsdp", action=BOOL, default=False,
                   help="under torchrun: shard parameters, gradients and optimizer state over the processes (FSDP2, "
                        "one group per decoder layer), for a backbone too large for one device; without it the "
                        "processes keep whole copies (DDP)")


def check_causal_rmt_args(args) -> None:
    refuse_txl_flags(args)
    if args.lora < 0:
        raise UsageError(f"--lora is a LoRA rank: positive, or 0 for none; got {args.lora}")
    if args.memory == "associative" and (args.memory_norm or args.memory_residual):
        raise UsageError("--memory associative over a backbone does not take --memory_norm or --memory_residual (it "
                         "writes no memory tokens)")
    if args.memory_residual and not args.num_mem_tokens:
        raise UsageError("--memory_residual maps the written memory tokens: give --num_mem_tokens > 0")
    if args.mem_lr is not None and (args.mem_lr <= 0 or not (args.num_mem_tokens or args.memory == "associative")):
        raise UsageError(f"--mem_lr is the memory's learning rate: positive, with memory tokens; got {args.mem_lr} "
                         f"with --num_mem_tokens {args.num_mem_tokens}")
    if args.lora and args.freeze_backbone:
        raise UsageError("--lora already freezes the backbone's own weights (it trains adapters and the memory); "
                         "--freeze_backbone trains the memory alone: give one")


def causal_rmt(args, depth: int | None, checkpoint_state: dict | None = None):
    """RMTForCausalLM over --backbone as the flags describe it (segments of --tgt_len); a checkpoint's
    weights when given. The families over a pretrained causal LM (hf_lm, babilong) build it here."""
    from rmt.hf import ARMTForCausalLM, RMTForCausalLM

    base = load_backbone("AutoModelForCausalLM", args.backbone)
    if args.lora:
        from peft import LoraConfig, get_peft_model
        base = get_peft_model(base, LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0,
                                               target_modules="all-linear"))
    if args.memory == "associative":
        model = ARMTForCausalLM(base, args.num_mem_tokens, args.tgt_len, depth, args.recompute_segments,
                                args.freeze_backbone, d_mem=args.d_mem)
    else:
        model = RMTForCausalLM(base, args.num_mem_tokens, args.tgt_len, depth, args.recompute_segments,
                               args.freeze_backbone, memory_norm=args.memory_norm,
                               memory_residual=args.memory_residual)
    return load_weights(model, checkpoint_state, args.backbone)


class PretrainedLM(BackboneFamily, SampledFamily):
    """Windows of a text corpus read by RMT over a pretrained causal LM (see the module docstring)."""

    results_csv = REPO_ROOT / "experiments" / "results" / "hf.csv"

    def __init__(self, args, runtime):
        self.args, self.runtime = args, runtime
        self.n_segments = args.n_segments
        self.corpus = pathlib.Path(args.data).name
        self.name = f"{self.corpus}-{args.n_segments}x{args.tgt_len}"
        self.run_prefix = f"{self.name}-{run_kind(args)}"
        self.depth = truncation(args)
        self.last_tokens = args.last_tokens or min(args.tgt_len, args.n_segments * args.tgt_len - 1)

    def load_data(self, log) -> None:
        a = self.args
        self.tokenizer = load_tokenizer(a.backbone)
        length = a.n_segments * a.tgt_len
        self.splits = {}
        for split in SPLITS:
            path = pathlib.Path(a.data) / f"{split}.txt"
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"cannot read {path} ({type(e).__name__}); the corpus needs train.txt, "
                                 "valid.txt and test.txt (bash getdata.sh wt2, or your own text)") from None
            ids = torch.tensor(self.tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
            self.splits[split] = windows(ids, length)
            if not len(self.splits[split]):
                raise DataError(f"{path} holds {ids.numel()} tokens, fewer than one window of "
                                 f"{a.n_segments} x {a.tgt_len}")
        if len(self.splits["train"]) < a.batch_size:
            raise DataError(f"the training text gives {len(self.splits['train'])} windows of {length} "
                             f"tokens, fewer than --batch_size {a.batch_size}")
        self.sampler = BatchSampler(len(self.splits["train"]), a.batch_size, a.seed)
        counts = ", ".join(f"{s} {len(w):,}" for s, w in self.splits.items())
        log(f"{NAME}: {a.data} read with the tokenizer of {a.backbone}; windows of {length} tokens: {counts}")

    def build_model(self, checkpoint_state: dict | None = None):
        return causal_rmt(self.args, self.depth, checkpoint_state)

    def config_extras(self) -> dict:
        return {"task": self.name, "n_segments": self.n_segments, "backbone": self.args.backbone,
                "windows": {s: len(w) for s, w in self.splits.items()}}

    def describe(self, model) -> str:
        a = self.args
        return (f"{self.name}: windows of {a.n_segments} segments of {a.tgt_len} tokens, {a.num_mem_tokens} memory "
                f"tokens; {parameter_counts(model)}; backbone {a.backbone}")

    # ---- the Family protocol (rmt.families.base) --------------------------------------------

    def train_batch(self, model, step: int) -> dict:
        args, runtime = self.args, self.runtime
        idx = self.sampler.next_shard(runtime.rank, runtime.world)
        x = self.splits["train"][idx].to(runtime.device)
        total = backward_in_chunks(runtime, args.batch_chunk, lambda xc: model(xc, labels=xc).loss, x)
        return {"loss": total, "tokens": x.numel()}

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict:
        """Mean NLL per supervised token, over the whole window and over its last `self.last_tokens` targets."""
        model.eval()
        data = self.splits[split]
        bsz = self.args.eval_batch_size or self.args.batch_size
        limit = self.args.max_eval_steps if split == "valid" else -1
        total = total_last = 0.0
        n = n_last = 0
        width = data.size(1)
        n_parts = width // self.last_tokens if width % self.last_tokens == 0 else 0
        part_sums = torch.zeros(n_parts, dtype=torch.float64)
        for i, start in enumerate(range(0, len(data), bsz)):
            if 0 <= limit <= i:
                break
            x = data[start : start + bsz].to(self.runtime.device)
            with self.runtime.autocast():
                logits = model(x).logits
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten(), reduction="none")
            nll = nll.view(x.size(0), -1)
            tail = nll[:, -self.last_tokens:]
            total, n = total + nll.sum().item(), n + nll.numel()
            total_last, n_last = total_last + tail.sum().item(), n_last + tail.numel()
            if n_parts:  # target j predicts token j + 1: part k holds tokens k*N .. (k+1)*N - 1
                part_sums += F.pad(nll, (1, 0)).view(x.size(0), n_parts, -1).sum((0, 2)).double().cpu()
        loss, loss_last = total / n, total_last / n_last
        rows = n // (width - 1)  # the windows read (part 0 has one target fewer: the first token has none)
        parts = {f"loss_part{k}": (v / (rows * (self.last_tokens - (k == 0)))).item() for k, v in enumerate(part_sums)}
        return {"loss": loss, "ppl": math.exp(loss), f"loss_last_{self.last_tokens}": loss_last,
                f"ppl_last_{self.last_tokens}": math.exp(loss_last), **parts}

    def test(self, model) -> TestResult:
        m = self.evaluate(model, "test")
        metric = f"ppl_last_{self.last_tokens}"
        row = {"metric_name": metric, "metric_value": m[metric], "loss": m["loss"], "ppl": m["ppl"]}
        return TestResult({**m, "windows": len(self.splits["test"])}, row, [])
