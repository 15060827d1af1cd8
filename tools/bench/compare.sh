#!/usr/bin/env bash
# Issue 6's figures: attribution patching and integrated gradients against
# exact activation patching on the GPT-2-small-sized random model (heads and
# positions grids), with the time of each. Builds the model the first time
# (needs the PyTorch virtualenv, tools/train_ioi/setup-venv.sh).
# Usage: tools/bench/compare.sh [THREADS] [OUT_DIR] [IG_STEPS]
set -euo pipefail
steps="${3:-8}"
source "$(dirname "$0")/common.sh" "$@"
cargo build --quiet
for m in "$model" models/ioi-gpt2/model.onnx; do
  name="$(basename "$(dirname "$m")")-$(basename "$m" .onnx)"
  echo "== $m"
  /usr/bin/time -f "wall %e s, peak RSS %M KB" target/debug/attrpatch compare --model "$m" --tokenizer models/tokenizer.json \
    --device cpu --threads "$threads" --positions --ig-steps "$steps" -o "$out/compare-$name" | grep -v '^wrote '
done
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; files in $out/compare-*"
