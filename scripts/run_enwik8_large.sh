#!/usr/bin/env bash
# enwik8, Transformer-XL large recipe (24 layers, d_model 1024, 400k steps of
# batch 64 with 4k warm-up steps, 768-byte segments and cache). Extra flags win.
#   bash scripts/run_enwik8_large.sh train
#   bash scripts/run_enwik8_large.sh train --mem_len 0 --num_mem_tokens 10 --mem_backprop_depth 2   # RMT
#   bash scripts/run_enwik8_large.sh eval --checkpoint runs/<run>/checkpoint_best.pt
# Eval mode evaluates a run as it was trained and tested (its segments, cache and memory);
# --protocol txl-long gives Transformer-XL's long-cache evaluation instead.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRAIN=(--dataset enwik8 --data data/enwik8 --n_layer 24 --d_model 1024 --n_head 8 --d_head 128 --d_inner 3072
       --dropout 0.15 --dropatt 0.15 --optim adam --lr 0.00025 --warmup_step 4000 --max_step 400000
       --tgt_len 768 --mem_len 768 --eval_tgt_len 128 --batch_size 64 --scale paper)
# CPU preset (no GPU, or RMT_PRESET=cpu): the recipe's segments and cache at 3 layers, d_model 128
# and 2,000 steps of 2,048 bytes; rows say scale cpu-preset. At tgt_len 32 a run took 5-24 minutes
# (train_time_s in experiments/results/lm.csv, two runs sharing 2 cores); the recipe's own
# segment length has not been timed here.
CPU=(--n_layer 3 --d_model 128 --n_head 4 --d_head 32 --d_inner 512 --dropout 0.0 --lr 0.002 --warmup_step 100
     --max_step 2000 --batch_size 3 --eval_interval 250 --log_interval 50 --scale cpu-preset)

run_lm_script run_enwik8_large.sh "$@"
