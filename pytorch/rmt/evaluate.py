"""Evaluate a checkpoint (Transformer-XL or RMT; a language model or an algorithmic task).

    python3 -m rmt.evaluate --checkpoint runs/<run>/checkpoint_best.pt      # as trained
    python3 -m rmt.evaluate --checkpoint runs/<run>/checkpoint_best.pt --protocol txl-long

A task run's checkpoint is evaluated by its task (`rmt.train --eval_only`: the test split
whole, with the run's own flags from its config.json; task flags given here win). The rest is
about language models.

Any of our checkpoints works (checkpoint_best.pt, checkpoint_last.pt). By default a run is
evaluated the way its own training run tested it (--protocol trained): the segment length is
the run's --eval_tgt_len, and a cache grows by tgt_len - eval_tgt_len so that it spans the
training context, as in the original; memory tokens, clamp_len and same_length are the
checkpoint's. --protocol txl-long is Transformer-XL's long-cache evaluation of its base recipes
(short segments, a long cache, same_length, clamp_len; the table TXL_LONG_CACHE below).
--tgt_len, --mem_len, --clamp_len and --same_length override either. Memory starts from the
learned initial memory once per split and is carried across it (the original eval.py left RMT
memory uninitialised). --dataset and --data default to the run's config.json next to the
checkpoint. Prints loss and ppl (bpc for the byte and character corpora) per split and appends
one row per split to experiments/results/lm.csv (or --results_csv), named <run>-eval.
--memory_ablation reset|shuffle reads, at every segment after the first, the initial memory or
another row's instead of the row's own (rmt.model.ablation); its rows' task is <corpus>-mem_<how>.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

from rmt import REPO_ROOT, config
from rmt.config import BOOL, reset_interval
from rmt.errors import exits_on_error
from rmt.families.registry import OWN_EVALUATION
from rmt.lm.corpus import DATASETS
from rmt.lm.evaluation import corpus_name, default_data_dir, evaluate_split, load_corpus, metric_name
from rmt.model.ablation import ABLATIONS, MemoryAblation, task_suffix
from rmt.model.config import ModelConfig
from rmt.results import append_result, check_target, result_row
from rmt.training import session
from rmt.training.checkpoint import CheckpointError, load_model, run_config
from rmt.training.runtime import Runtime

# Transformer-XL's evaluation of its base recipes: (tgt_len, mem_len, clamp_len), with same_length.
TXL_LONG_CACHE = {"wt103": (64, 640, 400), "wt2": (64, 640, 400), "ptb": (64, 640, 400),
                  "enwik8": (80, 2100, 820), "text8": (80, 2100, 820), "lm1b": (32, 128, -1)}
PROTOCOLS = ("trained", "txl-long")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", "--eval_checkpoint", dest="checkpoint", required=True,
                   help="a checkpoint file of ours (e.g. runs/<run>/checkpoint_best.pt)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="corpus (default: the run's, from its config.json)")
    p.add_argument("--data", default=None, help="data directory (default: the run's, else data/<name>)")
    p.add_argument("--split", default="all", choices=["all", "valid", "test"], help="which split(s)")
    p.add_argument("--batch_size", type=int, default=None, help="evaluation rows (default: the run's, else 10)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="trained",
                   help="trained: the run's own test settings (default); txl-long: Transformer-XL's long cache")
    p.add_argument("--tgt_len", type=int, default=None, help="segment length (default: the protocol's)")
    p.add_argument("--ext_len", type=int, default=None, help="extended context length (default: as trained)")
    p.add_argument("--mem_len", type=int, default=None, help="Transformer-XL cache length (default: the protocol's)")
    p.add_argument("--clamp_len", type=int, default=None, help="clamp relative distances (default: the protocol's)")
    p.add_argument("--same_length", action=BOOL, default=None,
                   help="TXL same-length attention (default: the protocol's)")
    p.add_argument("--max_eval_steps", type=int, default=-1, help="cap on batches per split (-1: all)")
    p.add_argument("--memory_ablation", choices=ABLATIONS, default="none",
                   help="replace the memory each segment reads by the initial memory (reset) or by another "
                        "row's (shuffle); see rmt.model.ablation")
    p.add_argument("--reset_memory_every", type=reset_interval, default=None, metavar="N",
                   help="start the memory afresh every N segments (default: as the run trained; 0: never)")
    p.add_argument("--by_position", action="store_true",
                   help="also print the loss by position in the segment (where memory or a cache helps)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--cuda", action="store_true", help="use a GPU (the default when one is present)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision")
    p.add_argument("--results_csv", default=None, help="CSV that gets the rows (default experiments/results/lm.csv)")
    p.add_argument("--scale", default=None, help="label for the results rows (default: the run's)")
    p.add_argument("--no_results", action="store_true", help="do not append results rows")
    return p


def protocol_lengths(protocol: str, model_cfg: ModelConfig, train_args: dict, dataset: str) -> dict:
    """tgt_len, mem_len, clamp_len, same_length under a protocol, before any explicit override.

    trained: what the training run's final test used (rmt.lm.evaluation.eval_lengths): segments of its
    eval_tgt_len, and a cache lengthened by tgt_len - eval_tgt_len so it spans the training context.
    txl-long: Transformer-XL's base-recipe evaluation for the dataset."""
    if protocol == "txl-long":
        tgt_len, mem_len, clamp_len = TXL_LONG_CACHE[dataset]
        return {"tgt_len": tgt_len, "mem_len": mem_len, "clamp_len": clamp_len, "same_length": True}
    train_len = model_cfg.tgt_len
    tgt_len = int(train_args.get("eval_tgt_len") or train_len)
    mem_len = max(1, model_cfg.mem_len + train_len - tgt_len) if model_cfg.mem_len > 0 else 0
    return {"tgt_len": tgt_len, "mem_len": mem_len, "clamp_len": model_cfg.clamp_len,
            "same_length": model_cfg.same_length}


def position_bands(by_position: list[float], unit: str) -> str:
    """'positions 0 | 1 | 2-3 | 4-7 | ...' with the mean loss of each band, in bpc or nats."""
    scale = 1 / math.log(2) if unit == "bpc" else 1.0
    cells, start = [], 0
    while start < len(by_position):
        stop = min(len(by_position), max(1, 2 * start))  # bands 0, 1, 2-3, 4-7, ...
        band = by_position[start:stop]
        name = str(start) if stop - start == 1 else f"{start}-{stop - 1}"
        cells.append(f"{name}: {sum(band) / len(band) * scale:.3f}")
        start = stop
    return f"loss by position ({'bpc' if unit == 'bpc' else 'nats'}) | " + " | ".join(cells)


def task_run(argv) -> tuple[str, list[str]] | None:
    """(checkpoint, the other flags) when `argv` names the checkpoint of a task run, else None."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--checkpoint", "--eval_checkpoint", dest="checkpoint")
    known, rest = peek.parse_known_args(argv)
    if not known.checkpoint:
        return None
    given = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    given.add_argument("--dataset")  # kept in `rest`: the task evaluation reads it too
    dataset = given.parse_known_args(rest)[0].dataset or run_config(known.checkpoint).get("args", {}).get("dataset")
    return (known.checkpoint, rest) if dataset in OWN_EVALUATION else None


def load_for_eval(args, parser, runtime):
    """The checkpoint's model set to the protocol's lengths; returns (model, cfg, train_args, overridden)."""
    checkpoint = pathlib.Path(args.checkpoint)
    try:
        model, _ = load_model(checkpoint, runtime.device)
    except CheckpointError as e:  # unreadable, or a dict of ours that is not a model
        raise SystemExit(f"error: {e}")
    train_args = run_config(checkpoint).get("args", {})
    if not (args.dataset or train_args.get("dataset")):  # a guess would read the wrong data, or none
        parser.error(f"no readable config.json beside {checkpoint} says what it was trained on: pass --dataset and "
                     "--data (a language model), or evaluate a task checkpoint with python3 -m rmt.train --eval_only "
                     "--eval_checkpoint PATH and its task flags")
    args.dataset = args.dataset or train_args["dataset"]
    explicit = dict(tgt_len=args.tgt_len, ext_len=args.ext_len, mem_len=args.mem_len, clamp_len=args.clamp_len,
                    same_length=args.same_length)
    explicit = {k: v for k, v in explicit.items() if v is not None}
    overrides = {**protocol_lengths(args.protocol, model.config, train_args, args.dataset), **explicit}
    try:
        cfg = ModelConfig.from_dict({**model.config.to_dict(), **overrides})
    except ValueError as e:
        parser.error(str(e))
    model.reset_length(cfg.tgt_len, cfg.ext_len, cfg.mem_len)
    model.config.clamp_len, model.config.same_length = cfg.clamp_len, cfg.same_length
    return model.to(runtime.device), cfg, train_args, bool(explicit)


@exits_on_error
def main(argv=None) -> int:
    task = task_run(sys.argv[1:] if argv is None else argv)
    if task:  # a task run: its own evaluation, with the task flags (as rmt.train --eval_only)
        checkpoint, rest = task
        args, parser = config.parse_training_args(["--eval_only", "--eval_checkpoint", checkpoint, *rest])
        return config.with_usage_errors(parser, session.execute, args)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size <= 0:
        parser.error(f"--batch_size must be positive, got {args.batch_size}")
    runtime = Runtime(args.device, args.amp, args.cuda)
    model, cfg, train_args, overridden = load_for_eval(args, parser, runtime)
    checkpoint, dataset = pathlib.Path(args.checkpoint), args.dataset
    data = args.data or (train_args.get("data") if train_args.get("dataset") == dataset else None) \
        or default_data_dir(dataset)
    batch_size = args.batch_size or int(train_args.get("eval_batch_size") or 10)
    trained_reset = int(train_args.get("reset_memory_every") or 0)
    if args.reset_memory_every is None:
        args.reset_memory_every = trained_reset
    overridden = overridden or args.reset_memory_every != trained_reset
    csv = args.results_csv or REPO_ROOT / "experiments" / "results" / "lm.csv"
    if not args.no_results:
        try:
            check_target(csv)  # before the evaluation, which may take hours
        except ValueError as e:
            parser.error(str(e))
    corpus = load_corpus(data, dataset)
    name = corpus_name(data, dataset) + task_suffix(args.memory_ablation)
    if len(corpus.vocab) != cfg.n_token:
        raise SystemExit(f"error: {checkpoint} has a vocabulary of {cfg.n_token}, {dataset} in {data} has "
                         f"{len(corpus.vocab)}; pass the --dataset/--data it was trained on")
    print(f"{checkpoint}: {name} ({data}) | protocol {args.protocol} | tgt_len {cfg.tgt_len} | mem_len {cfg.mem_len} "
          f"| num_mem_tokens {cfg.num_mem_tokens} | clamp_len {cfg.clamp_len} | same_length {cfg.same_length} | "
          f"batch {batch_size} | memory reset every {args.reset_memory_every or 'never'} | "
          f"memory ablation {args.memory_ablation} | {runtime.describe()}", flush=True)
    if args.memory_ablation != "none":
        model = MemoryAblation(model, args.memory_ablation)
    # The row describes the trained run plus how it was evaluated; compare lets a re-evaluation under
    # the run's own protocol stand for the run, and keeps any other protocol apart.
    flags = {"scale": "custom", **train_args, "eval_only": True, "eval_checkpoint": str(checkpoint),
             "protocol": args.protocol + ("+flags" if overridden else ""), "eval": vars(args),
             "tgt_len": train_args.get("tgt_len", model.config.tgt_len), "eval_tgt_len": cfg.tgt_len}
    if args.scale:
        flags["scale"] = args.scale
    for split in ["valid", "test"] if args.split == "all" else [args.split]:
        row = evaluate_one(args, model, cfg, corpus, split, batch_size, runtime, flags, name)
        if not args.no_results:
            append_result(csv, row)
    if not args.no_results:
        print(f"results rows appended to {csv}")
    runtime.close()
    return 0


def evaluate_one(args, model, cfg, corpus, split: str, batch_size: int, runtime, flags: dict, name: str) -> dict:
    """Evaluate one split, print it; returns its results row."""
    unit = metric_name(args.dataset)
    t0 = time.time()
    try:
        m = evaluate_split(model, corpus, split, batch_size, cfg.tgt_len, cfg.ext_len, args.max_eval_steps, runtime,
                           reset_every=args.reset_memory_every)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    elapsed = time.time() - t0
    print(f"{split:5s} | loss {m['loss']:.4f} | {unit} {m[unit]:.4f} | {m['tokens']:,} tokens | "
          f"{elapsed / max(m['segments'], 1) * 1000:.1f} ms/segment", flush=True)
    if args.by_position:
        print(f"{split:5s} | {position_bands(m['by_position'], unit)}", flush=True)
    run_dir = pathlib.Path(args.checkpoint).parent
    row = result_row(flags, cfg, runtime.describe(), run_dir, name, split,
                     tokens_per_s=m["tokens"] / max(elapsed, 1e-9), peak_mem_mb=runtime.peak_mem_mb(),
                     metric_name=unit, metric_value=m[unit], loss=m["loss"], **{unit: m[unit]})
    return {**row, "run_id": f"{run_dir.name}-eval"}


if __name__ == "__main__":
    sys.exit(main())
