#!/usr/bin/env bash
# Quick-start demo (CPU, a few minutes): copy split into 4 segments; a no-memory baseline,
# Transformer-XL with a 6-position cache and RMT with 6 memory tokens, trained alike (same steps,
# same two-segment curriculum), then their test accuracies side by side. Flags given here go to
# all three runs (e.g. --seed 1112). The rows go to runs/copy-demo/results.csv, so the checkout
# stays clean; RMT_DEMO_CSV=experiments/results/synthetic.csv records them with the project's.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CSV="${RMT_DEMO_CSV:-runs/copy-demo/results.csv}"
STAMP="$(date +%Y%m%d-%H%M%S)"
COMMON=(--tgt_len 6 --eval_tgt_len 6 --curriculum 12 --results_csv "$CSV" "$@")
RUNS=()
for kind in baseline txl rmt; do
    case "$kind" in
        baseline) extra=() ;;
        txl) extra=(--mem_len 6) ;;
        rmt) extra=(--num_mem_tokens 6) ;;
    esac
    name="copy-demo-$kind-$STAMP"
    RUNS+=("$name")
    echo "== training $kind ($name)"
    RMT_PRESET=cpu bash scripts/copy.sh train "${COMMON[@]}" "${extra[@]}" --run_name "$name"
done
echo
"$PYTHON" -m rmt.results show "$CSV" "${RUNS[@]}"
echo
echo "logs and checkpoints: runs/<name>/ (log.txt, config.json, tb/); results rows: $CSV"
