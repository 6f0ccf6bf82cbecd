#!/usr/bin/env bash
# The test suite on both library sets scripts/setup.sh builds: .venv (the pinned set) and .venv-latest
# (the newest releases of requirements/latest.txt over the same torch). Each run gets the other's Python
# in PDIFF_OTHER_PYTHON, for the test that loads what one set saved under the other. Arguments go to
# pytest in both runs; the exit status is nonzero if either run fails.
set -uo pipefail
cd "$(dirname "$0")/.."
versions='from importlib.metadata import version
print(", ".join(f"{n} {version(n)}" for n in ("torch", "diffusers", "transformers", "tokenizers", "huggingface_hub", "safetensors", "accelerate")))'
status=0
for env in .venv .venv-latest; do
    other=.venv-latest
    [ "$env" = .venv ] || other=.venv
    echo "== $env: $("$env/bin/python" -c "$versions")"
    PDIFF_OTHER_PYTHON="$PWD/$other/bin/python" "$env/bin/python" -m pytest -q "$@" || status=1
done
exit "$status"
