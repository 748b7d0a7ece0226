#!/usr/bin/env bash
# Create .venv and install semindex into it (idempotent).
#
# torch is installed first, pinned by $SEMINDEX_TORCH (default torch==2.13.0), so the
# project's own unpinned "torch>=2.1" is already satisfied and pip never pulls a
# different build. On a machine with a local CPU wheel (like our dev boxes) that is
# the CPU build; on a Linux GPU box the same pin from PyPI is the CUDA build.
# Extras: SEMINDEX_EXTRAS=dev (default for tests), e.g. SEMINDEX_EXTRAS=dev,postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SEMINDEX_VENV:-.venv}
EXTRAS=${SEMINDEX_EXTRAS:-}
TORCH=${SEMINDEX_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  $PIP install "$TORCH"
fi
stamp="$VENV/.semindex-installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if [ -n "$EXTRAS" ]; then
    $PIP install -e ".[$EXTRAS]"
  else
    $PIP install -e .
  fi
  touch "$stamp"
fi
