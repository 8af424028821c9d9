#!/usr/bin/env bash
# Associative retrieval (RMT paper §4.2): 4 key-value pairs, a query key, answer its value (10 tokens).
#   bash scripts/retrieval.sh train                                 # single-segment baseline
#   bash scripts/retrieval.sh train --num_mem_tokens 5 --tgt_len 5 --eval_tgt_len 5   # RMT, 2 segments
#   bash scripts/retrieval.sh train --mem_len 5 --tgt_len 5 --eval_tgt_len 5          # Transformer-XL
# Without a GPU a CPU preset applies (smaller model and run); RMT_PRESET=paper|cpu overrides it.
# The original script used lr 2.5e-4; the paper's runs used 1e-4, which is what we use.
# The CPU preset initialises with std 0.1 instead of the original 0.02: at d_model 64 the 0.02 init
# keeps every model, even one segment, on the 0.25 plateau (one of the 4 values) for 30k+ steps; with
# 0.1 one segment solves the task in about 4k steps (batch 256). The paper preset keeps 0.02.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PAPER=(--dataset retrieval --n_layer 6 --d_model 64 --n_head 4 --d_head 32 --d_inner 128 --dropout 0.1
       --lr 1e-4 --lr_min 1e-6 --scheduler dev_perf --decay_rate 0.5 --patience 10 --log_interval 4000
       --eval_interval 12000 --max_step 250000 --tgt_len 10 --eval_tgt_len 10 --batch_size 32
       --max_eval_steps 50 --mem_at_end --read_mem_from_cache --scale paper)
CPU=(--n_layer 2 --d_model 64 --n_head 2 --d_head 32 --d_inner 128 --dropout 0.0 --init_std 0.1 --lr 1e-3
     --scheduler constant --warmup_step 100 --max_step 15000 --batch_size 256 --log_interval 500
     --eval_interval 500 --max_eval_steps 8 --n_train 200000 --n_val 512 --n_test 1000 --no_greedy_valid
     --scale cpu-preset)
run_task_script retrieval.sh "$@"
