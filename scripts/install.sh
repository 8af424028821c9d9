#!/usr/bin/env bash
# Install the package (editable) and what it needs: bash scripts/install.sh [--dev]
# Uses ${PYTHON:-python3}. Where the system Python is externally managed (Debian's), make a venv
# first:  python3 -m venv .venv && PYTHON=.venv/bin/python bash scripts/install.sh --dev
# Torch is installed (2.13.0) only when none is present, so an existing CUDA build is kept.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check)
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "${PIP[@]}" torch==2.13.0
fi
if [ "${1:-}" = "--dev" ]; then
    "${PIP[@]}" -e "$REPO[dev]"
    "$PYTHON" -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
else
    "${PIP[@]}" -e "$REPO"
fi
"$PYTHON" -c "import rmt, torch; print(f'rmt installed from {rmt.__path__[0]}; torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
