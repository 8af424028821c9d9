"""Generate an algorithmic dataset (copy, reverse, retrieval, sqeq) into the original `.npy` layout.

Run from the repository root; the split sizes default to the paper's 100,000 / 10,000 / 20,000:

    python3 -m rmt.tools.generate_data copy --out data/copy
    python3 -m rmt.tools.generate_data reverse --out data/reverse --seed 1
    python3 -m rmt.tools.generate_data copy120 --out data/copy120        # 8 symbols, L=120
    python3 -m rmt.tools.generate_data copy --seq_len 48 --num_tokens 10 --task_name copy48 \
        --out data/copy48
    python3 -m rmt.tools.generate_data retrieval --num_pairs 4 --out data/retrieval
    python3 -m rmt.tools.generate_data sqeq --task_name sqeq_cd --out data/sqeq
    python3 -m rmt.tools.generate_data copy --train 1000 --val 100 --test 200 --out /tmp/copy_small

Writes {out}/{task_name}_{train,val,test}_{X,y}.npy and {out}/{task_name}_meta.json (vocabulary, lengths, seed).
"""
from __future__ import annotations

import argparse
import sys

from rmt.errors import exits_on_error
from rmt.tasks.registry import TASK_NAMES, TASKS, task_spec
from rmt.tasks.storage import write_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt.tools.generate_data", description=__doc__.splitlines()[0])
    p.add_argument("task", metavar="TASK", choices=TASK_NAMES, help=f"one of: {', '.join(TASK_NAMES)}")
    p.add_argument("--out", default=None, help="output directory (default: data/<task_name>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the numpy Generator; same seed -> same bytes")
    # split sizes
    p.add_argument("--train", type=int, default=100_000, help="training samples")
    p.add_argument("--val", type=int, default=10_000, help="validation samples")
    p.add_argument("--test", type=int, default=20_000, help="test samples")
    # task options; each applies only to the tasks whose generator takes it
    p.add_argument("--seq_len", type=int, default=None, help="copy/reverse: sequence length L; sqeq: slot length")
    p.add_argument("--num_tokens", type=int, default=None,
                   help="copy/reverse: vocabulary size; symbols are 2..num_tokens-1")
    p.add_argument("--num_pairs", type=int, default=None, help="retrieval: number K of key-value pairs")
    p.add_argument("--max_root", type=int, default=None, help="sqeq: roots within +-(max_root-1) (default 100)")
    p.add_argument("--shuffle_limit", type=int, default=None,
                   help="sqeq: the equation is the monic one times +-k, k up to this (default 10)")
    p.add_argument("--eos", action=argparse.BooleanOptionalAction, default=None,
                   help="sqeq: end each part with an eos token (id 24, vocabulary 25)")
    p.add_argument("--task_name", default=None, help="file name prefix (default: TASK), e.g. sqeq_cd")
    return p


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = dict(seq_len=args.seq_len, num_tokens=args.num_tokens, num_pairs=args.num_pairs, add_eos=args.eos,
                   max_root=args.max_root, shuffle_limit=args.shuffle_limit)
    kwargs = {k: v for k, v in options.items() if v is not None}
    flag = {"add_eos": "eos"}
    for key in kwargs:
        if key not in TASKS[args.task].default_kwargs:
            parser.error(f"--{flag.get(key, key)} does not apply to task {args.task}")
    sizes = dict(train=args.train, val=args.val, test=args.test)
    if args.train < 1 or args.val < 0 or args.test < 0:
        parser.error(f"split sizes must be --train >= 1, --val >= 0, --test >= 0; got {sizes}")
    if args.task_name is not None and (not args.task_name or "/" in args.task_name):
        parser.error(f"--task_name must be a plain file name prefix, got {args.task_name!r}")
    try:
        spec = task_spec(args.task, **kwargs)
        name = args.task_name or spec.name
        paths = write_dataset(spec, args.out or f"data/{name}", args.seed, sizes, name)
    except ValueError as e:  # bad option values or a sample space too small for the sizes
        parser.error(str(e))
    print(f"{spec.name}: vocab {spec.vocab_size}, sample_len {spec.sample_len}, answer_size {spec.answer_size}, "
          f"sizes {sizes}, seed {args.seed}")
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
