#!/usr/bin/env bash
# Install what the project needs: bash scripts/install.sh [--dev]
# Torch is installed (2.13.0) only when none is present, so an existing CUDA build is kept.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check)
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "${PIP[@]}" torch==2.13.0
fi
if [ "${1:-}" = "--dev" ]; then
    "${PIP[@]}" -r "$REPO/requirements-dev.txt"
    "$PYTHON" -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
else
    "${PIP[@]}" -r "$REPO/requirements.txt"
fi
"$PYTHON" -c "import torch; print(f'torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
