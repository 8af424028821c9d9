#!/usr/bin/env bash
# Paper vs ours: Markdown tables on stdout, PNG plots in experiments/plots/ (see pytorch/rmt/tools/compare.py).
# Works from any directory; all arguments go to `python -m rmt.tools.compare`, e.g.
#   bash scripts/compare.sh --markdown experiments/compare.md --no-plots
#   bash scripts/compare.sh --readme experiments/RESULTS.md   # from the repository root: the generated tables
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" -m rmt.tools.compare "$@"
