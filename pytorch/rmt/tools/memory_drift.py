"""How a language model's carried memory evolves along a stream: the loss block by block and the
size of the state it carries, from a fresh state or from the one its training run carried.

    python3 -m rmt.tools.memory_drift --checkpoint runs/<run>/checkpoint_last.pt [--split train]
        [--segments 600] [--block 50] [--start fresh|training] [--reset_memory_every N]

A checkpoint of the language-modelling family: the split is read as evaluation reads it, in the
run's segments, from position 0, with --batch_size rows (default: the run's training batch). Per
block of segments: the mean loss (bpc or nats per token) and the mean over rows of the state's
norms: the memory tokens (RMT) and, per layer, the associative matrix A and normaliser z (ARMT).
`--start training` begins with the state the run carried when it saved (its rows are the
training batch's rows, so the batch is the run's), which tells whether the weights fit the state
training built better than the one a fresh pass builds. Printed as a table and written to
<run dir>/memory_drift.csv (--out to choose).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

import pandas as pd
import torch

from rmt.atomic import atomic_write
from rmt.config import reset_interval
from rmt.errors import UsageError, exits_on_error
from rmt.lm.corpus import DATASETS
from rmt.lm.evaluation import load_corpus, metric_name
from rmt.model.recurrence import MemoryState
from rmt.training.checkpoint import load_model, run_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt.tools.memory_drift", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a language model's checkpoint, its config.json beside it")
    p.add_argument("--split", choices=["train", "valid", "test"], default="train", help="which text to read")
    p.add_argument("--segments", type=int, default=600, help="segments to read (fewer if the split ends)")
    p.add_argument("--block", type=int, default=50, help="segments per reported block")
    p.add_argument("--start", choices=["fresh", "training"], default="fresh",
                   help="fresh: the initial memory; training: the state the run carried when it saved")
    p.add_argument("--batch_size", type=int, default=None, help="rows (default and with --start training: the run's)")
    p.add_argument("--reset_memory_every", type=reset_interval, default=0, metavar="N",
                   help="start the memory afresh every N segments (0: never)")
    p.add_argument("--out", default=None, help="the CSV (default: <run dir>/memory_drift.csv)")
    return p


def state_norms(state: MemoryState) -> dict:
    """Mean over rows of the norm of each carried field: memory tokens, then per layer A and z."""
    out = {}
    if state.mem is not None:
        out["memory"] = state.mem.float().flatten(1).norm(dim=1).mean().item()
    for i, t in enumerate(state.assoc or ()):
        out[f"{'Az'[i % 2]}{i // 2}"] = t.float().flatten(1).norm(dim=1).mean().item()
    return out


@torch.no_grad()
def drift(model, batches, state: MemoryState, block: int, reset_every: int = 0) -> list[dict]:
    """Per block of `block` segments of `batches`: mean NLL (nats) and the state's norms after it."""
    model.eval()
    rows, total, count = [], 0.0, 0
    for i, (x, y) in enumerate(batches):
        if reset_every and i % reset_every == 0 and i:
            state = MemoryState()
        nll, state = model(x, y, state)
        total, count = total + nll.double().sum().item(), count + nll.numel()
        if (i + 1) % block == 0:
            rows.append({"segments": i + 1, "loss": total / count, **state_norms(state)})
            total, count = 0.0, 0
    return rows


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("segments", "block"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    checkpoint = pathlib.Path(args.checkpoint)
    run = run_config(checkpoint).get("args", {})
    if "data" not in run or run.get("dataset") not in DATASETS:
        raise UsageError(f"{checkpoint} is not a checkpoint of a language-model run (no config.json beside it names "
                         "its corpus)")
    model, saved = load_model(checkpoint)
    state = MemoryState()
    batch_size = args.batch_size or int(run["batch_size"])
    if args.start == "training":
        carried = saved.get("extra", {}).get("carry", {}).get("state")
        if carried is None:
            raise UsageError(f"{checkpoint} holds no carried state (not saved by a language-model training run)")
        state = MemoryState.from_dict(carried)
        tensors = [t for t in (state.mem, *(state.xl or ()), *(state.assoc or ())) if t is not None]
        rows = tensors[0].size(0) if tensors else batch_size  # a model without memory carries nothing
        if args.batch_size not in (None, rows):
            raise UsageError(f"--start training continues the run's {rows} rows: leave out --batch_size")
        batch_size = rows
    corpus = load_corpus(run["data"], run["dataset"])
    it = corpus.get_iterator(args.split, batch_size, model.config.tgt_len, model.config.ext_len)
    batches = (b for _, b in zip(range(args.segments), it))
    table = pd.DataFrame(drift(model, batches, state, args.block, args.reset_memory_every))
    unit = metric_name(run["dataset"])
    if len(table) and unit == "bpc":
        table["loss"] = table["loss"] / math.log(2)
    table = table.rename(columns={"loss": unit})
    out = pathlib.Path(args.out) if args.out else checkpoint.parent / "memory_drift.csv"
    text = table.to_csv(index=False, float_format="%.4f")
    atomic_write(out, lambda f: f.write(text), text=True, encoding="utf-8")
    print(f"{checkpoint}: {args.split}, {batch_size} rows, from a {args.start} state"
          + (f", reset every {args.reset_memory_every} segments" if args.reset_memory_every else ""))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
