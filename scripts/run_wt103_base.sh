#!/usr/bin/env bash
# WikiText-103, Transformer-XL base recipe (SEMANTICS 7.1: the upstream TXL hyper-parameters;
# 200k steps of batch 60, adaptive softmax). Extra flags are appended and win.
#   bash scripts/run_wt103_base.sh train                       # Transformer-XL, 150-token cache
#   bash scripts/run_wt103_base.sh train --num_mem_tokens 10   # RMT (read+write memory) + the 150-token cache
#   bash scripts/run_wt103_base.sh train --mem_len 0 --num_mem_tokens 10 --mem_backprop_depth 2   # paper's RMT rows
#   bash scripts/run_wt103_base.sh eval --checkpoint runs/<run>/checkpoint_best.pt
# The original recipe kept --mem_len 150 and had no write memory; the paper's RMT rows add
# --mem_len 0 (and --tgt_len 50 --eval_tgt_len 50 --batch_size 128 for the short-segment rows).
# Eval mode uses TXL's long-cache settings (mem_len 640, same_length); for an RMT trained without
# a cache append --mem_len 0 --no-same_length --clamp_len -1 --tgt_len <its tgt_len>.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRAIN=(--dataset wt103 --data data/wikitext-103 --adaptive --n_layer 16 --d_model 410 --n_head 10 --d_head 41
       --d_inner 2100 --dropout 0.1 --dropatt 0.0 --optim adam --lr 0.00025 --warmup_step 0 --max_step 200000
       --tgt_len 150 --mem_len 150 --eval_tgt_len 150 --batch_size 60)
EVAL=(--dataset wt103 --data data/wikitext-103 --tgt_len 64 --mem_len 640 --clamp_len 400 --same_length
      --split test)

run_lm_script run_wt103_base.sh "$@"
