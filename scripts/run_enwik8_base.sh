#!/usr/bin/env bash
# enwik8, Transformer-XL base recipe (SEMANTICS 7.1: 12 layers, d_model 512, 400k steps of
# batch 22, 512-byte segments and cache); reports bits per character. Extra flags win.
#   bash scripts/run_enwik8_base.sh train
#   bash scripts/run_enwik8_base.sh train --mem_len 0 --num_mem_tokens 10 --tgt_len 128 --eval_tgt_len 128 \
#       --batch_size 64 --mem_backprop_depth 2                     # the paper's enwik8 RMT row
#   bash scripts/run_enwik8_base.sh eval --checkpoint runs/<run>/checkpoint_best.pt
# Eval mode uses TXL's long-cache settings (mem_len 2100, same_length); for an RMT trained without
# a cache append --mem_len 0 --no-same_length --clamp_len -1 --tgt_len <its tgt_len>.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRAIN=(--dataset enwik8 --data data/enwik8 --n_layer 12 --d_model 512 --n_head 8 --d_head 64 --d_inner 2048
       --dropout 0.1 --dropatt 0.0 --optim adam --lr 0.00025 --warmup_step 0 --max_step 400000
       --tgt_len 512 --mem_len 512 --eval_tgt_len 128 --batch_size 22)
EVAL=(--dataset enwik8 --data data/enwik8 --tgt_len 80 --mem_len 2100 --clamp_len 820 --same_length
      --split test)

run_lm_script run_enwik8_base.sh "$@"
