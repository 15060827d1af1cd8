#!/usr/bin/env bash
# Rebuilds the PyTorch virtual environment used by tools/train_ioi/*.py (CPU only).
# The venv lives OUTSIDE the repository (default /work/venv-torch; override with VENV=...).
#
# The PyPI torch wheel is a CUDA build: `pip install --no-deps torch` alone fails to import
# (it loads the CUDA libraries at import time). What works here: torch --no-deps, its pure-Python
# deps and numpy, plus the nvidia-* wheels it needs, each --no-deps (about 4 GB, 2-3 minutes).
# torch 2.15.0 asks for cuda-toolkit[cublas,cudart,cufft,cufile,cupti,...]==13.2.2 (a meta
# package) plus nvidia-cudnn-cu13/cusparselt-cu13/nccl-cu13/nvshmem-cu13; the pins below are the
# ones those requirements resolve to (read from the torch and cuda-toolkit 13.2.2 metadata).
set -euo pipefail
VENV="${VENV:-/work/venv-torch}"
PY="${PYTHON:-python3}"

"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --upgrade pip
"$PIP" install --no-deps torch==2.15.0
"$PIP" install filelock typing-extensions sympy mpmath networkx jinja2 MarkupSafe fsspec numpy
"$PIP" install --no-deps \
  'nvidia-cuda-runtime==13.2.86.*' \
  'nvidia-cublas==13.4.1.3.*' \
  'nvidia-cuda-nvrtc==13.2.86.*' \
  'nvidia-cufft==12.2.0.57.*' \
  'nvidia-cufile==1.17.1.22.*' \
  'nvidia-cusparse==12.7.10.12.*' \
  'nvidia-nvjitlink>=13.2.86,<14' \
  'nvidia-cuda-cupti==13.2.86.*' \
  'nvidia-cudnn-cu13==9.26.0.51' \
  'nvidia-cusparselt-cu13==0.8.1' \
  'nvidia-nccl-cu13==2.30.7' \
  'nvidia-nvshmem-cu13==3.7.2'

# Hugging Face model code, tokenizer, ONNX export and checking.
# transformers 5.x: the scripts pass return_dict=False as a call argument.
"$PIP" install transformers==5.24.0 tokenizers==0.23.3 onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2
# The tutorial's own library, for the benchmark's (c) as the tutorial does it.
"$PIP" install nnsight==0.8.1

"$VENV/bin/python" - <<'PY'
import torch, transformers, tokenizers, onnx, onnxruntime, numpy
print("torch", torch.__version__, "transformers", transformers.__version__,
      "tokenizers", tokenizers.__version__, "onnx", onnx.__version__,
      "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)
x = torch.randn(3, 3, requires_grad=True); (x @ x).sum().backward()
print("torch CPU autograd ok")
PY
