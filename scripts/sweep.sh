#!/usr/bin/env bash
# Run a grid of task runs in sequence, skipping those already in the results CSV (see pytorch/rmt/sweep.py).
# Works from any directory; all arguments go to `python -m rmt.tools.sweep`, e.g.
#   bash scripts/sweep.sh experiments/grids/copy_cpu.json --dry-run
#   bash scripts/sweep.sh experiments/grids/copy_cpu.json          # 27 CPU runs; run again to resume
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" -m rmt.tools.sweep "$@"
