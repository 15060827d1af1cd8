#!/usr/bin/env bash
# How set-up time and peak memory grow with the model: `attrpatch run` against a plain ONNX
# Runtime forward process (whole_process.py ort-forward), the tutorial's 8 pairs of 14 tokens,
# release build, alternated, median of REPEATS. For each process: wall time, CPU time
# (user + system: steadier than wall when other processes share the cores), peak RSS, and
# the session time (attrpatch's `time:` line; ort-forward's `session` line). A model with a
# genai_config.json beside it (the GenAI builder's files, tools/make_big_models.py) is compared with
# tools/bench/plain_forward.py instead (same prompts; it feeds the empty past_key_values).
# Usage: tools/bench/scaling.sh THREADS OUT_DIR REPEATS MODEL.onnx... 
# ORT_LIBS="lib1 lib2" runs attrpatch once per ONNX Runtime library (--ort-lib) instead of .ort/.
# Writes OUT_DIR/scaling.tsv (every run) and OUT_DIR/scaling.md (the medians).
set -euo pipefail
threads="$1"; out="$2"; repeats="$3"; shift 3
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${VENV_PY:-/work/venv-torch/bin/python}"
cd "$root"
mkdir -p "$out"
cargo build --release --quiet --bin attrpatch
bin="$root/target/release/attrpatch"
wp="$root/tools/bench/whole_process.py"
prompts="$out/prompts-8x14.jsonl"
"$py" "$wp" make-prompts --pairs 8 --tokens 14 --out "$prompts"
libs=(${ORT_LIBS:-default})
tsv="$out/scaling.tsv"
: > "$tsv"
# measure LABEL MODEL CMD...: one run; appends label, model, wall, cpu, peak KB, session s.
measure() {
  local label="$1" model="$2"; shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$out/time.txt" "$@" > "$out/last.log" 2>&1 || {
    echo "$label $model failed:"; cat "$out/last.log"; exit 1; }
  read -r wall user sys kb < "$out/time.txt"
  local session
  session=$(grep -oE '(session|^session) [0-9.]+ ?s' "$out/last.log" | head -1 | grep -oE '[0-9.]+' || echo nan)
  local cpu
  cpu=$(echo "$user + $sys" | bc)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$(basename "$model")" "$wall" "$cpu" "$kb" "$session" >> "$tsv"
  printf '%-22s %-28s wall %7.2f s  cpu %7.2f s  peak %6d MB  session %s s\n' \
    "$label" "$(basename "$model")" "$wall" "$cpu" "$((kb / 1024))" "$session"
}
for r in $(seq "$repeats"); do
  for m in "$@"; do
    for lib in "${libs[@]}"; do
      extra=(); label=attrpatch
      if [ "$lib" != default ]; then
        extra=(--ort-lib "$lib")
        label="attrpatch $(basename "$(readlink -f "$lib")" | sed 's/libonnxruntime.so.//')"
      fi
      measure "$label" "$m" "$bin" run --model "$m" --tokenizer models/tokenizer.json --prompts "$prompts" \
        --threads "$threads" --out "$out/attrpatch" "${extra[@]}"
    done
    if [ -f "$(dirname "$m")/genai_config.json" ]; then
      # a GenAI-built file (tools/make_big_models.py): the plain forward with an empty KV cache
      measure plain-forward "$m" "$py" "$root/tools/bench/plain_forward.py" "$m" --prompts "$prompts" \
        --tokenizer models/tokenizer.json --threads "$threads"
    else
      measure ort-forward "$m" "$py" "$wp" ort-forward --model "$m" --prompts "$prompts" --threads "$threads"
    fi
  done
done
"$py" - "$tsv" > "$out/scaling.md" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
med = {}
for label, model, wall, cpu, kb, session in rows:
    med.setdefault((model, label), []).append((float(wall), float(cpu), int(kb) / 1024, float(session)))
print("| model | process | runs | wall s | CPU s | peak RSS MB | session s |")
print("|---|---|---|---|---|---|---|")
for (model, label), v in med.items():
    m = [statistics.median(x[i] for x in v) for i in range(4)]
    print(f"| {model} | {label} | {len(v)} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.0f} | {m[3]:.2f} |")
PY
cat "$out/scaling.md"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
