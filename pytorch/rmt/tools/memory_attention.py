"""Where a long-context QA model looks when it answers: the attention that the question's last
token (the one before the answer) gives the read memory, layer by layer.

    python3 -m rmt.tools.memory_attention --checkpoint runs/<run>/checkpoint_best.pt [--samples 8]

A checkpoint of the babilong family (RMT over a Hugging Face decoder, memory tokens): test samples
0..N-1 are read up to the segment that holds their question, as evaluation reads them (its
--n_segments or --sample_length, --story_in_earlier_segments and the other sample flags may be
given again to change them); in that segment the backbone runs with its attention returned.
Per layer, averaged over heads and samples: the share on the read memory slots, the largest
share of one slot, and the share on the segment's tokens (the write slots come after the
question and are never seen, so the two sum to 1). A share near 0 means the memory is not read
there, whatever it holds. Printed as a table and written to <run dir>/memory_attention.csv
(--out to choose).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import pandas as pd
import torch

from rmt import config
from rmt.atomic import atomic_write
from rmt.errors import UsageError, exits_on_error
from rmt.tasks.babilong import question_segment
from rmt.training.checkpoint import load_file, run_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt.tools.memory_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a babilong run's checkpoint, its config.json beside it")
    p.add_argument("--samples", type=int, default=8, help="test samples 0..N-1")
    p.add_argument("--out", default=None, help="the CSV (default: <run dir>/memory_attention.csv)")
    return p


@torch.no_grad()
def memory_attention(model, family, n_samples: int) -> pd.DataFrame:
    """Per layer: the question's last token's attention on the read memory (all slots, the
    largest one) and on the tokens of its segment, mean over heads and samples."""
    m, t = model.config.num_mem_tokens, family.args.tgt_len
    model.backbone.set_attn_implementation("eager")  # the fused kernels return no attention
    totals = None
    for i in range(n_samples):
        sample = family.sample("test", i)
        ids, start = torch.from_numpy(sample.ids)[None], sample.start
        cut = question_segment(start, t)
        state = model.read(ids[:, :cut]) if cut else None
        mem = model.initial_memory(1) if state is None else state.mem
        seg = ids[:, cut : cut + t]
        out = model.call_backbone(*model.laid_out(model.embed(seg), torch.ones_like(seg), mem), output_attentions=True)
        query = m + start - 1 - cut  # the last token before the answer, after the read slots
        rows = torch.stack([a[0, :, query].mean(0) for a in out.attentions])  # (layers, keys)
        share = torch.stack([rows[:, :m].sum(1), rows[:, :m].max(1).values, rows[:, m : m + seg.size(1)].sum(1)], 1)
        totals = share if totals is None else totals + share
    mean = (totals / n_samples).tolist()
    return pd.DataFrame([{"layer": k, "read_memory": a, "largest_slot": b, "tokens": c} for k, (a, b, c) in
                         enumerate(mean)])


def load_qa_model(checkpoint: pathlib.Path, n_test: int, flags: list[str]):
    """The model of a babilong checkpoint (memory tokens), in eval mode, and its family with the
    samples loaded; flags (sample flags such as --n_segments) change the run's own."""
    if run_config(checkpoint).get("args", {}).get("dataset") != "babilong":
        raise UsageError(f"{checkpoint} is not a checkpoint of a babilong run (its config.json beside it names the "
                         "family): this tool reads long-context QA models")
    from rmt.families.babilong import BabiLong
    from rmt.families.hf_lm import causal_rmt

    run_args, _ = config.parse_training_args(["--dataset", "babilong", "--eval_only", "--eval_checkpoint",
                                              str(checkpoint), "--device", "cpu", "--n_test", str(n_test), *flags])
    if not run_args.num_mem_tokens or run_args.memory != "tokens":
        raise UsageError("the model reads no memory tokens (--num_mem_tokens 0 or --memory associative): nothing "
                         "to measure")
    family = BabiLong(run_args, runtime=None)
    family.load_data(lambda _: None)
    return causal_rmt(run_args, None, load_file(checkpoint)["model"]).eval(), family


@exits_on_error
def main(argv=None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    checkpoint = pathlib.Path(args.checkpoint)
    if args.samples <= 0:
        raise UsageError(f"--samples must be positive, got {args.samples}")
    model, family = load_qa_model(checkpoint, args.samples, extra)
    table = memory_attention(model, family, args.samples)
    out = pathlib.Path(args.out) if args.out else checkpoint.parent / "memory_attention.csv"
    text = table.to_csv(index=False, float_format="%.4f")
    atomic_write(out, lambda f: f.write(text), text=True, encoding="utf-8")
    print(f"{family.name}, {args.samples} test samples: the attention of the question's last token, by layer")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
