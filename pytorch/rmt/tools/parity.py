"""Check this model against outputs of the original LM-RMT code.

    python -m rmt.tools.parity FILE... [--tol 1e-4]

Each FILE is in the golden format (config, original state_dict, time-major segments and the
original's per-segment outputs: `nll`, `mem_write`, `mems`). The weights are converted, every
segment is run carrying memory and cache, and the max abs error of each output is printed per
segment. Exits 1 when any error exceeds --tol, 2 when a file cannot be read.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from rmt.errors import exits_on_error
from rmt.model.config import ATTN_IMPLS
from rmt.model.recurrence import MemoryState
from rmt.tools.convert import load_original_model
from rmt.training.checkpoint import CheckpointError, first_line, load_file


def _batch_first(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1)


def check_golden(golden: dict, attn_impl: str = "eager") -> list[dict[str, float]]:
    """Run a golden file's segments through our model; per segment, max abs error per output."""
    model = load_original_model(golden["state_dict"], {**golden["config"], "attn_impl": attn_impl}).eval()
    state = MemoryState()
    errors = []
    with torch.no_grad():
        for seg, ref in zip(golden["segments"], golden["outputs"]):
            x, y = _batch_first(seg["data"]), _batch_first(seg["target"])
            nll, state = model(x, y, state)
            err = {"nll": (nll - _batch_first(ref["nll"])).abs().max().item()}
            if "mem_write" in ref:
                err["mem_write"] = (state.mem - _batch_first(ref["mem_write"])).abs().max().item()
            if "mems" in ref:
                err["mems"] = max((ours - _batch_first(theirs)).abs().max().item()
                                  for ours, theirs in zip(state.xl, ref["mems"]))
            errors.append(err)
    return errors


@exits_on_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmt.tools.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--tol", type=float, default=1e-4, help="largest acceptable max abs error (default 1e-4)")
    parser.add_argument("--attn_impl", choices=ATTN_IMPLS, default="eager", help="attention implementation")
    args = parser.parse_args(argv)
    if not math.isfinite(args.tol) or args.tol < 0:
        parser.error(f"--tol must be a finite number >= 0, got {args.tol}")
    worst_overall, status = 0.0, 0
    for path in args.files:
        try:
            golden = load_file(path)
            errors = check_golden(golden, args.attn_impl)
        except CheckpointError as e:
            print(f"{path}: cannot check: {e}", file=sys.stderr)
            status = 2
            continue
        except KeyError as e:
            print(f"{path}: cannot check: not a parity file (it has no {e} entry; tests/golden/ holds the format)",
                  file=sys.stderr)
            status = 2
            continue
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            print(f"{path}: cannot check: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
            status = 2
            continue
        print(f"{path}: {golden.get('note', '')}")
        for i, err in enumerate(errors):
            cells = "  ".join(f"{k} {v:.2e}" for k, v in err.items())
            print(f"  segment {i}: {cells}")
        worst = max(max(e.values()) for e in errors)
        worst_overall = max(worst_overall, worst)
        verdict = "ok" if worst <= args.tol else f"FAIL (> {args.tol:g})"
        print(f"  max abs error {worst:.2e}: {verdict}")
        if worst > args.tol and status == 0:
            status = 1
    print(f"overall max abs error {worst_overall:.2e}, tolerance {args.tol:g}")
    return status


if __name__ == "__main__":
    sys.exit(main())
