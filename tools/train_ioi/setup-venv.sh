#!/usr/bin/env bash
# Rebuilds the PyTorch virtual environment used by tools/train_ioi/*.py (CPU only).
# The venv lives OUTSIDE the repository (default /work/venv-torch; override with VENV=...).
# torch itself comes from tools/install-torch.sh (why it is installed that way is written there).
set -euo pipefail
VENV="${VENV:-/work/venv-torch}"
"$(dirname "$0")/../install-torch.sh" "$VENV"
PIP="$VENV/bin/pip"

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
