#!/usr/bin/env bash
# The fact task (classification over several segments; rmt.tasks.classification): a fact early in
# a long distractor sequence, asked about at the end. Bidirectional encoder RMT, memory at the start.
#   bash scripts/fact.sh train                                   # RMT over 4 segments of 16
#   bash scripts/fact.sh train --last_segment_only               # the baseline: the last segment only
#   bash scripts/fact.sh train --n_segments 8                    # a longer sample
#   bash scripts/fact.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt
#   bash scripts/fact.sh eval --eval_checkpoint ... --memory_ablation shuffle   # without its own memory
#   bash scripts/fact.sh eval --eval_checkpoint ... --n_segments 16             # longer inputs than trained
# The recipe is small (2 layers, d_model 64; minutes on 2 CPU cores); it is not a paper experiment.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PAPER=(--dataset fact --no-causal --no-mem_at_end --num_mem_tokens 4 --n_segments 4 --tgt_len 16 --eval_tgt_len 16
       --n_layer 2 --d_model 64 --n_head 4 --d_head 16 --d_inner 128 --lr 1e-3 --scheduler constant
       --max_step 2000 --eval_interval 250 --log_interval 100 --batch_size 32 --scale custom)
CPU=(--scale cpu-preset)

run_task_script fact.sh "$@"
