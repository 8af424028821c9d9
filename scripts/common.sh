# Sourced by the run scripts: repository root, PYTHONPATH, and a launcher that uses torchrun
# when more than one GPU is visible. Relative paths in flags are relative to the repository root.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO/pytorch${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
NGPU="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"

# launch MODULE ARGS...: one process, or one per GPU through torchrun.
launch() {
    local module="$1"; shift
    if [ "$NGPU" -gt 1 ]; then
        torchrun --standalone --nproc_per_node="$NGPU" -m "$module" "$@"
    else
        "$PYTHON" -m "$module" "$@"
    fi
}

usage_modes() {
    echo "usage: bash $1 {train|eval} [extra flags, which override the defaults]" >&2
    exit 2
}

# run_task_script SCRIPT MODE [flags...]: the algorithmic-task scripts share this. They set
# PAPER (the paper's flags) and CPU (the preset added on top when no GPU is present).
run_task_script() {
    local script="$1" mode="${2:-}"
    [ -n "$mode" ] || usage_modes "$script"
    shift 2
    export RMT_COMMAND="bash scripts/$script $mode $*"
    local preset="${RMT_PRESET:-$([ "$NGPU" -gt 0 ] && echo paper || echo cpu)}"
    local args=("${PAPER[@]}")
    [ "$preset" = cpu ] && args+=("${CPU[@]}")
    case "$mode" in
        train) launch rmt.train_synthetic "${args[@]}" "$@" ;;
        eval) launch rmt.train_synthetic "${args[@]}" "$@" --eval_only ;;
        *) usage_modes "$script" ;;
    esac
}

# run_lm_script SCRIPT MODE [flags...]: the language-model scripts share this. They set TRAIN
# (flags of rmt.train) and EVAL (flags of rmt.eval, which always runs as one process).
run_lm_script() {
    local script="$1" mode="${2:-}"
    [ -n "$mode" ] || usage_modes "$script"
    shift 2
    export RMT_COMMAND="bash scripts/$script $mode $*"
    case "$mode" in
        train) launch rmt.train "${TRAIN[@]}" "$@" ;;
        eval) "$PYTHON" -m rmt.eval "${EVAL[@]}" "$@" ;;
        *) usage_modes "$script" ;;
    esac
}
