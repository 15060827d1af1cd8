#!/usr/bin/env bash
# The whole benchmark in one go, same machine, same threads:
#   (a) attrpatch's attribution run vs (b) ONNX Runtime's plain forward,
#   (c) PyTorch eager forward+backward as the tutorial does it (hand-written hooks,
#   and the tutorial's nnsight code when the venv has nnsight), (d) rewrite time
#   and peak memory, and how (a) and (b) scale with tokens and pairs.
# Needs the PyTorch virtualenv (tools/train_ioi/setup-venv.sh) to build the model
# the first time and for (c). Usage: tools/bench/run.sh [THREADS] [OUT_DIR]
set -euo pipefail
source "$(dirname "$0")/common.sh" "$@"
cargo build --release --quiet --features internals --example bench
peers=()
"$py" tools/bench/pytorch_bench.py --weights "${model%.onnx}.pt" --pairs 8 --seq 14 --threads "$threads" \
  --repeats 5 --json "$out/pytorch-8x14.json" >/dev/null
peers+=(--pytorch "$out/pytorch-8x14.json")
# The tutorial's own code through nnsight, when the virtualenv has it (pip install nnsight).
if "$py" -c "import nnsight" 2>/dev/null; then
  "$py" tools/bench/pytorch_bench.py --weights "${model%.onnx}.pt" --pairs 8 --seq 14 --threads "$threads" \
    --repeats 5 --mode nnsight --json "$out/nnsight-8x14.json" >/dev/null 2>&1
  peers+=(--pytorch "$out/nnsight-8x14.json")
fi
# Peak memory of the rewrite alone, in a fresh process.
target/release/examples/bench --model "$model" --rewrite-only
target/release/examples/bench --model "$model" --threads "$threads" --repeats 5 \
  "${peers[@]}" --scaling --json "$out/bench.json"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; figures in $out/bench.json"
