#!/usr/bin/env bash
# WikiText-103, Transformer-XL large recipe (SEMANTICS 7.1: 18 layers, d_model 1024, div_val 4,
# 4M steps of batch 128 with 16k warm-up steps). Extra flags are appended and win.
#   bash scripts/run_wt103_large.sh train
#   bash scripts/run_wt103_large.sh train --mem_len 0 --num_mem_tokens 10 --mem_backprop_depth 2   # RMT
#   bash scripts/run_wt103_large.sh eval --checkpoint runs/<run>/checkpoint_best.pt
# Eval mode uses TXL's long-cache settings (mem_len 1600, same_length); for an RMT trained without
# a cache append --mem_len 0 --no-same_length --clamp_len -1 --tgt_len <its tgt_len>.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TRAIN=(--dataset wt103 --data data/wikitext-103 --adaptive --div_val 4 --n_layer 18 --d_model 1024 --n_head 16
       --d_head 64 --d_inner 4096 --dropout 0.2 --dropatt 0.2 --optim adam --lr 0.00025 --warmup_step 16000
       --max_step 4000000 --tgt_len 384 --mem_len 384 --eval_tgt_len 128 --batch_size 128)
EVAL=(--dataset wt103 --data data/wikitext-103 --tgt_len 128 --mem_len 1600 --clamp_len 1000 --same_length
      --split test)

run_lm_script run_wt103_large.sh "$@"
