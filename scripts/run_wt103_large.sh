#!/usr/bin/env bash
# WikiText-103, Transformer-XL large recipe (18 layers, d_model 1024, div_val 4,
# 4M steps of batch 128 with 16k warm-up steps). Extra flags are appended and win.
#   bash scripts/run_wt103_large.sh train
#   bash scripts/run_wt103_large.sh train --mem_len 0 --num_mem_tokens 10 --mem_backprop_depth 2   # RMT
#   bash scripts/run_wt103_large.sh eval --checkpoint runs/<run>/checkpoint_best.pt
# Eval mode evaluates a run as it was trained and tested (its segments, cache and memory);
# --protocol txl-long gives Transformer-XL's long-cache evaluation instead.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRAIN=(--dataset wt103 --data data/wikitext-103 --adaptive --div_val 4 --n_layer 18 --d_model 1024 --n_head 16
       --d_head 64 --d_inner 4096 --dropout 0.2 --dropatt 0.2 --optim adam --lr 0.00025 --warmup_step 16000
       --max_step 4000000 --tgt_len 384 --mem_len 384 --eval_tgt_len 128 --batch_size 128 --scale paper)
# CPU preset (no GPU, or RMT_PRESET=cpu): the recipe's segments and cache at 3 layers, d_model 128
# and 1,500 steps of 1,536 tokens; rows say scale cpu-preset. At tgt_len 50 a run took
# 6-22 minutes (train_time_s in experiments/results/lm.csv, two runs sharing 2 cores); the
# recipe's own segment length has not been timed here.
CPU=(--n_layer 3 --d_model 128 --n_head 4 --d_head 32 --d_inner 512 --dropout 0.1 --lr 0.002 --warmup_step 100
     --max_step 1500 --batch_size 4 --eval_interval 250 --log_interval 50 --scale cpu-preset)

run_lm_script run_wt103_large.sh "$@"
