# Sourced by the benchmark scripts with their arguments [THREADS] [OUT_DIR]:
# sets root, threads, out, py and model, fetches ONNX Runtime, and builds the
# GPT-2-small-sized model the first time (needs the PyTorch virtualenv,
# tools/train_ioi/setup-venv.sh).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
threads="${1:-2}"
out="${2:-$root/target/bench}"
py="${VENV_PY:-/work/venv-torch/bin/python}"
model="$out/gpt2-small-random.onnx"
mkdir -p "$out"
cd "$root"
tools/fetch-ort.sh >/dev/null
[ -f "$model" ] || "$py" tools/bench/make_gpt2_small.py "$model"
