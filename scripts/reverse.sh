#!/usr/bin/env bash
# Reverse task (RMT paper §4.2): 24 symbols, then the separator and the symbols reversed (48 tokens).
#   bash scripts/reverse.sh train                                   # single-segment baseline
#   bash scripts/reverse.sh train --num_mem_tokens 12 --tgt_len 12 --eval_tgt_len 12   # RMT, 4 segments
#   bash scripts/reverse.sh train --mem_len 12 --tgt_len 12 --eval_tgt_len 12          # Transformer-XL
# Without a GPU a CPU preset applies (L=8, 16 tokens, 10,000 steps with cosine decay, init std 0.1: with
# the original 0.02 two seeds of three stalled near 0.76 even after 20,000 steps); RMT_PRESET=paper|cpu
# overrides the choice. On CPU, 4 segments with memory 4
# (bash scripts/sweep.sh experiments/grids/reverse_cpu_m4_init.json):
#   bash scripts/reverse.sh train --num_mem_tokens 4 --tgt_len 4 --eval_tgt_len 4 --curriculum 16 8
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PAPER=(--dataset reverse --n_layer 4 --d_model 128 --n_head 4 --d_head 64 --d_inner 256 --dropout 0.1
       --lr 1e-4 --lr_min 1e-6 --scheduler dev_perf --decay_rate 0.5 --patience 10 --log_interval 4000
       --eval_interval 12000 --max_step 700000 --tgt_len 48 --eval_tgt_len 48 --batch_size 32
       --max_eval_steps 50 --mem_at_end --read_mem_from_cache --scale paper)
CPU=(--task_seq_len 8 --tgt_len 16 --eval_tgt_len 16 --n_layer 2 --d_model 64 --n_head 2 --d_head 32
     --d_inner 128 --dropout 0.0 --init_std 0.1 --lr 1e-3 --scheduler cosine --eta_min 1e-5 --warmup_step 100
     --max_step 10000
     --log_interval 500 --eval_interval 250 --max_eval_steps 8 --n_train 20000 --n_val 512 --n_test 1000
     --no_greedy_valid --scale cpu-preset)
run_task_script reverse.sh "$@"
