#!/usr/bin/env bash
# Creates the virtual environment VENV (first argument) with PyTorch 2.15.0 in it, for the
# scripts under tools/ (called by tools/train_ioi/setup-venv.sh and
# tools/fixtures/setup-venv-optimum.sh, which add their own packages).
#
# The PyPI torch wheel is a CUDA build: `pip install --no-deps torch` alone fails to import
# (it loads the CUDA libraries at import time). What works here: torch --no-deps, its pure-Python
# deps and numpy, plus the nvidia-* wheels it needs, each --no-deps (about 4 GB, 2-3 minutes).
# torch 2.15.0 asks for cuda-toolkit[cublas,cudart,cufft,cufile,cupti,...]==13.2.2 (a meta
# package) plus nvidia-cudnn-cu13/cusparselt-cu13/nccl-cu13/nvshmem-cu13; the pins below are the
# ones those requirements resolve to (read from the torch and cuda-toolkit 13.2.2 metadata).
set -euo pipefail
VENV="${1:?usage: tools/install-torch.sh VENV}"
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
