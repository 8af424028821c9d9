#!/usr/bin/env bash
# enwik8, Transformer-XL large recipe (SEMANTICS 7.1: 24 layers, d_model 1024, 400k steps of
# batch 64 with 4k warm-up steps, 768-byte segments and cache). Extra flags win.
#   bash scripts/run_enwik8_large.sh train
#   bash scripts/run_enwik8_large.sh train --mem_len 0 --num_mem_tokens 10 --mem_backprop_depth 2   # RMT
#   bash scripts/run_enwik8_large.sh eval --checkpoint runs/<run>/checkpoint_best.pt
# Eval mode uses TXL's long-cache settings (mem_len 3800, same_length); for an RMT trained without
# a cache append --mem_len 0 --no-same_length --clamp_len -1 --tgt_len <its tgt_len>.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRAIN=(--dataset enwik8 --data data/enwik8 --n_layer 24 --d_model 1024 --n_head 8 --d_head 128 --d_inner 3072
       --dropout 0.15 --dropatt 0.15 --optim adam --lr 0.00025 --warmup_step 4000 --max_step 400000
       --tgt_len 768 --mem_len 768 --eval_tgt_len 128 --batch_size 64)
EVAL=(--dataset enwik8 --data data/enwik8 --tgt_len 128 --mem_len 3800 --clamp_len 1000 --same_length
      --split test)

run_lm_script run_enwik8_large.sh "$@"
