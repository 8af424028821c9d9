#!/usr/bin/env bash
# WikiText-103, Transformer-XL base recipe (the upstream Transformer-XL hyper-parameters;
# 200k steps of batch 60, adaptive softmax). Extra flags are appended and win.
#   bash scripts/run_wt103_base.sh train                       # Transformer-XL, 150-token cache
#   bash scripts/run_wt103_base.sh train --num_mem_tokens 10   # RMT (read+write memory) + the 150-token cache
#   bash scripts/run_wt103_base.sh train --mem_len 0 --num_mem_tokens 10 --mem_backprop_depth 2   # paper's RMT rows
#   bash scripts/run_wt103_base.sh eval --checkpoint runs/<run>/checkpoint_best.pt
# The original recipe kept --mem_len 150 and had no write memory; the paper's RMT rows add
# --mem_len 0 (and --tgt_len 50 --eval_tgt_len 50 --batch_size 128 for the short-segment rows).
# Eval mode evaluates a run as it was trained and tested (its segments, cache and memory);
# --protocol txl-long gives Transformer-XL's long-cache evaluation instead.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRAIN=(--dataset wt103 --data data/wikitext-103 --adaptive --n_layer 16 --d_model 410 --n_head 10 --d_head 41
       --d_inner 2100 --dropout 0.1 --dropatt 0.0 --optim adam --lr 0.00025 --warmup_step 0 --max_step 200000
       --tgt_len 150 --mem_len 150 --eval_tgt_len 150 --batch_size 60 --scale paper)
# CPU preset (no GPU, or RMT_PRESET=cpu): the recipe's segments and cache at 3 layers, d_model 128
# and 1,500 steps of 1,500 tokens; rows say scale cpu-preset. At tgt_len 50 a run took
# 6-22 minutes (train_time_s in experiments/results/lm.csv, two runs sharing 2 cores); the
# recipe's own segment length has not been timed here.
CPU=(--n_layer 3 --d_model 128 --n_head 4 --d_head 32 --d_inner 512 --dropout 0.1 --lr 0.002 --warmup_step 100
     --max_step 1500 --batch_size 10 --eval_interval 250 --log_interval 50 --scale cpu-preset)

run_lm_script run_wt103_base.sh "$@"
