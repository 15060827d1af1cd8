#!/usr/bin/env bash
# Exact patching as a user waits for it: `attrpatch patch --positions` on the GPT-2-small-sized
# model with the tutorial's 8 prompts of 14 tokens (2,504 rows), whole processes under
# /usr/bin/time, alternating two binaries (BASE: e.g. main's release build; NEW: this one, with
# the layer-groups flags given), REPEATS times; then the largest difference of their grids.
# Usage: tools/bench/patching.sh BASE_BIN NEW_BIN OUT_DIR [REPEATS] [THREADS] [-- NEW_FLAGS...]
set -euo pipefail
base="$1"; new="$2"; out="$3"; repeats="${4:-3}"; threads="${5:-2}"
shift $(( $# < 5 ? $# : 5 )); [ "${1:-}" = "--" ] && shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
model="${MODEL:-/work/bench-setup/gpt2-small-random.onnx}"
prompts="${PROMPTS:-/work/bench-setup/prompts-8x14.jsonl}"
mkdir -p "$out"
run() {
  local label="$1" bin="$2"; shift 2
  /usr/bin/time -f "%e s %M KB" -o "$out/time-$label.txt" "$bin" patch --positions --device cpu \
    --model "$model" --tokenizer "$root/models/tokenizer.json" --prompts "$prompts" --threads "$threads" \
    --out "$out/$label" "$@" > "$out/log-$label.txt" 2>&1
  printf '%-6s %s | %s\n' "$label" "$(cat "$out/time-$label.txt")" "$(grep -h '^time:\|layer groups' "$out/log-$label.txt" | tr '\n' ' ')"
}
for r in $(seq "$repeats"); do
  run base "$base"
  run new "$new" "$@"
done
python3 - "$out/base" "$out/new" <<'PY'
import csv, sys
def cells(d, f):
    return [row for row in csv.reader(open(f"{d}/{f}"))][1:]
worst = 0.0
for f in ("heads.csv", "positions.csv"):
    for a, b in zip(cells(sys.argv[1], f), cells(sys.argv[2], f)):
        assert len(a) == len(b)
        worst = max([worst] + [abs(float(x) - float(y)) for x, y in zip(a[1:], b[1:])])
print(f"largest grid difference (heads.csv, positions.csv): {worst:.3e}")
PY
