#!/usr/bin/env bash
# Copy task (RMT paper §4.2): 24 symbols to be repeated twice after a separator (72 tokens).
#   bash scripts/copy.sh train                                    # single-segment baseline (paper default)
#   bash scripts/copy.sh train --num_mem_tokens 8 --tgt_len 8 --eval_tgt_len 8   # RMT, 9 segments
#   bash scripts/copy.sh train --mem_len 8 --tgt_len 8 --eval_tgt_len 8          # Transformer-XL
#   bash scripts/copy.sh eval --eval_checkpoint runs/<run>/checkpoint_best.pt
# Without a GPU a CPU preset applies (L=8, 24 tokens, 2 layers, d_model 64; minutes on 2 cores);
# RMT_PRESET=paper forces the paper's settings, RMT_PRESET=cpu the preset.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PAPER=(--dataset copy --n_layer 4 --d_model 128 --n_head 4 --d_head 64 --d_inner 256 --dropout 0.1
       --dropatt 0.0 --optim adam --lr 1e-4 --lr_min 1e-6 --scheduler dev_perf --decay_rate 0.5 --patience 8
       --log_interval 4000 --eval_interval 12000 --warmup_step 0 --max_step 250000 --tgt_len 72 --eval_tgt_len 72
       --batch_size 32 --max_eval_steps 50 --mem_at_end --read_mem_from_cache --scale paper)
CPU=(--task_seq_len 8 --tgt_len 24 --eval_tgt_len 24 --n_layer 2 --d_model 64 --n_head 2 --d_head 32
     --d_inner 128 --dropout 0.0 --lr 1e-3 --scheduler constant --warmup_step 100 --max_step 3000
     --log_interval 500 --eval_interval 250 --max_eval_steps 8 --n_train 20000 --n_val 512 --n_test 1000
     --no_greedy_valid --scale cpu-preset)

run_task_script copy.sh "$@"
