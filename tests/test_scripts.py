"""The project's shell scripts parse: a syntax error otherwise shows only when the script reaches it
(the GPU recipe once lost its held-out evaluation to a quote inside `${VAR:-...}`)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p
    for folder in ("scripts", "benchmarks", ".ci")
    for p in (ROOT / folder).glob("*")
    if p.suffix == ".sh" or p.name == "run"
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_scripts_are_found():
    assert ROOT / "scripts" / "gpu_embedded.sh" in SCRIPTS and len(SCRIPTS) >= 4
