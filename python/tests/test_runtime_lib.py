"""Where the package finds ONNX Runtime: ORT_DYLIB_PATH first, then the onnxruntime package of
the running interpreter. Each case runs in a fresh process (the library is loaded once per
process)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, missing


def runtime_of_a_fresh_process(model_path, env: dict) -> str:
    code = f"import attrpatch; print(attrpatch.run({str(model_path)!r}, device='cpu').runtime)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


def test_the_interpreters_onnxruntime_package_is_used(model_path):
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None:
        missing("Python's onnxruntime is not installed")
    capi = Path(spec.origin).parent / "capi"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    runtime = runtime_of_a_fresh_process(model_path, env)
    assert f"from {capi}" in runtime, runtime


def test_ort_dylib_path_comes_first(model_path):
    ort_dir = ROOT / ".ort"
    if not any(ort_dir.glob("libonnxruntime.so*")):
        missing(f"{ort_dir} holds no ONNX Runtime library (tools/fetch-ort.sh)")
    runtime = runtime_of_a_fresh_process(model_path, {**os.environ, "ORT_DYLIB_PATH": str(ort_dir)})
    assert f"from {ort_dir}" in runtime, runtime
