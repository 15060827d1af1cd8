"""Shared fixtures: the repository's bundled model and the command-line binary built beside it.

Under CI (the CI variable set) a missing fixture fails the test; elsewhere it is skipped with the
reason, never passed silently."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "ioi-gpt2" / "model.onnx"
TINY = ROOT / "models" / "gpt2-tiny-random.onnx"
IN_CI = bool(os.environ.get("CI"))


def missing(what: str) -> None:
    """Fails under CI, skips elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} (CI must have it)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def model_path() -> Path:
    if not MODEL.is_file():
        missing(f"the bundled model {MODEL} is missing")
    return MODEL


@pytest.fixture(scope="session")
def cli() -> Path:
    """The attrpatch binary: ATTRPATCH_CLI, else target/debug/attrpatch (cargo build / cargo test)."""
    path = Path(os.environ.get("ATTRPATCH_CLI", ROOT / "target" / "debug" / "attrpatch"))
    if not path.is_file():
        missing(f"the attrpatch binary {path} is missing (cargo build, or set ATTRPATCH_CLI)")
    return path


def run_cli(cli: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs the binary from the repository root; fails the test with its output when it fails."""
    p = subprocess.run([str(cli), *args], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, f"attrpatch {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
    return p
