#!/usr/bin/env bash
# Rebuilds the PyTorch virtual environment used by tools/train_ioi/*.py.
# The venv lives OUTSIDE the repository (default /work/venv-torch; override with VENV=...).
#
# The PyPI torch wheel is a CUDA build: `pip install --no-deps torch` alone fails to import
# (it dlopens the CUDA libraries at import time). What works here (CPU only, no GPU needed):
#   torch --no-deps, its pure-Python deps and numpy, plus the nvidia-* wheels it pins, --no-deps
#   (cuda-runtime, cublas, cudnn-cu13, cuda-nvrtc, cufft, cufile, cusparse, nvjitlink,
#    cusparselt-cu13, nccl-cu13, nvshmem-cu13, cuda-cupti; about 4 GB, a few minutes).
# The exact nvidia versions are read from torch's own metadata (Requires-Dist), so they match.
set -euo pipefail
VENV="${VENV:-/work/venv-torch}"
PY="${PYTHON:-python3}"

"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --upgrade pip
"$PIP" install --no-deps torch
"$PIP" install filelock typing-extensions sympy mpmath networkx jinja2 MarkupSafe fsspec numpy

# nvidia-* requirements of the installed torch wheel, with their pins, installed --no-deps.
NV_REQS=$("$VENV/bin/python" - <<'PY'
import importlib.metadata as md, re
wanted = ["cuda-runtime", "cublas", "cudnn", "cuda-nvrtc", "cufft", "cufile", "cusparse",
          "nvjitlink", "cusparselt", "nccl", "nvshmem", "cuda-cupti"]
out = []
for r in md.requires("torch") or []:
    spec = r.split(";")[0].strip().replace(" ", "")
    name = re.split(r"[<>=!~\[]", spec)[0].lower()
    if not name.startswith("nvidia-"):
        continue
    base = re.sub(r"-cu\d+$", "", name[len("nvidia-"):])
    if base in wanted:
        out.append(spec)
print(" ".join(out))
PY
)
echo "nvidia wheels: $NV_REQS"
# shellcheck disable=SC2086
"$PIP" install --no-deps $NV_REQS

# Hugging Face model code, tokenizer, ONNX export and checking.
"$PIP" install transformers tokenizers onnx onnxruntime

"$VENV/bin/python" - <<'PY'
import torch, transformers, tokenizers, onnx, onnxruntime, numpy
print("torch", torch.__version__, "transformers", transformers.__version__,
      "tokenizers", tokenizers.__version__, "onnx", onnx.__version__,
      "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)
PY
