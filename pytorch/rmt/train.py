"""Train a Transformer-XL / RMT model on a corpus or an algorithmic task; one entry point for both.

    python3 -m rmt.train --dataset wt103 --adaptive --n_layer 16 --d_model 410 \\
        --n_head 10 --d_head 41 --d_inner 2100 --dropout 0.1 --tgt_len 150 --mem_len 150 --eval_tgt_len 150
    python3 -m rmt.train --dataset enwik8 --mem_len 0 --num_mem_tokens 10 \\
        --tgt_len 128 --eval_tgt_len 128 --mem_backprop_depth 2          # an RMT row of the paper
    python3 -m rmt.train --dataset copy --tgt_len 24 --num_mem_tokens 10  # an algorithmic task
    python3 -m rmt.train --dataset copy --eval_only --eval_checkpoint runs/<run>/checkpoint_best.pt
    torchrun --standalone --nproc_per_node 4 -m rmt.train ...            # DDP, one process per GPU

--dataset picks the family (rmt.families.registry): a corpus (wt103, enwik8, text8, wt2, ptb,
lm1b; rmt.families.lm), a task (copy, reverse, retrieval, sqeq...; rmt.families.tasks), the
classification task fact (rmt.families.fact), or one over a pretrained Hugging Face backbone:
memorize, hf_lm and babilong (rmt.families.memorize, .hf_lm, .babilong). Validation every --eval_interval steps
keeps checkpoint_best.pt (by valid loss, or --select_by acc for tasks); the best model is tested
at the end and one row goes to the family's CSV in experiments/results/ (or --results_csv).
--eval_only tests --eval_checkpoint instead (the families other than the corpora), through a
memory ablation with --memory_ablation (rmt.model.ablation). The run itself is
rmt.training.session.execute.
"""
from __future__ import annotations

import sys

from rmt import config
from rmt.errors import exits_on_error
from rmt.training import session


@exits_on_error
def main(argv=None) -> int:
    args, parser = config.parse_training_args(argv, __doc__.split("\n\n")[0])
    return config.with_usage_errors(parser, session.execute, args)


if __name__ == "__main__":
    sys.exit(main())
