#!/usr/bin/env bash
# Language modelling with RMT over a pretrained Hugging Face causal LM (rmt.lm.pretrained): the
# text of --data cut into windows of n_segments x tgt_len tokens of the backbone's tokenizer.
#   bash scripts/hf_lm.sh train                                  # RMT over GPT-2, 4 segments of 128
#   bash scripts/hf_lm.sh train --num_mem_tokens 0               # the same segments without memory
#   bash scripts/hf_lm.sh train --num_mem_tokens 0 --n_segments 1 --tgt_len 512 --last_tokens 128
#                                                 # full attention over the window, scored on the same tokens
#   bash scripts/hf_lm.sh train --backbone DIR --freeze_backbone # another causal LM; train the memory only
#   bash scripts/hf_lm.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt
# The backbone is gpt2 from the Hugging Face hub (downloaded on first use), or any transformers
# causal-LM directory; the text: bash getdata.sh wt2 (data/wikitext-2), or a directory of your
# own with train.txt, valid.txt and test.txt. Rows go to experiments/results/hf.csv.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PAPER=(--dataset hf_lm --backbone gpt2 --data data/wikitext-2 --num_mem_tokens 10 --n_segments 4 --tgt_len 128
       --lr 5e-5 --batch_size 8 --max_step 2000 --eval_interval 200 --log_interval 20 --max_eval_steps 50
       --scale custom)
CPU=(--scale cpu-preset --n_segments 2 --tgt_len 64 --max_step 300 --eval_interval 100 --max_eval_steps 10)

run_task_script hf_lm.sh "$@"
