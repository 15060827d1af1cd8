#!/usr/bin/env bash
# What a user waits for: whole processes, release build, same machine, same threads, alternated,
# median of REPEATS, wall time and peak RSS (/usr/bin/time), on the GPT-2-small-sized model:
#   attrpatch run | a plain ONNX Runtime forward process (Python) | the tutorial's nnsight code
#   as a script | hand-written PyTorch hooks as a script,
# at 8 pairs x 14 tokens (the tutorial's prompts), and attrpatch vs the plain forward at 8 x 256
# and 64 x 16. Then each peer's job warm in a loop (same process, median of 5). Writes
# OUT/whole.tsv (every run), OUT/whole.json and OUT/whole.md (the table).
# Usage: tools/bench/whole.sh [THREADS] [OUT_DIR] [REPEATS] [MODEL.onnx]
set -euo pipefail
source "$(dirname "$0")/common.sh" "$@"
repeats="${3:-3}"
model="${4:-$model}"
weights="${model%.onnx}.pt"
cargo build --release --quiet --features internals --bin attrpatch --example bench
bin="$root/target/release/attrpatch"
wp="$root/tools/bench/whole_process.py"
have_nnsight=$("$py" -c "import nnsight" 2>/dev/null && echo 1 || echo 0)
# The PyTorch peers load the small model's state dict (12 heads): only for the default model.
torch_peers=$([ -z "${4:-}" ] && echo 1 || echo 0)
sizes=(8x14 8x256 64x16)
for s in "${sizes[@]}"; do
  "$py" "$wp" make-prompts --pairs "${s%x*}" --tokens "${s#*x}" --out "$out/prompts-$s.jsonl"
done
tsv="$out/whole.tsv"
: > "$tsv"
# measure LABEL SIZE CMD...: one run under /usr/bin/time, appended to the TSV.
measure() {
  local label="$1" size="$2"; shift 2
  /usr/bin/time -f "%e %M" -o "$out/time.txt" "$@" > "$out/last-$label.log" 2>&1 || {
    echo "$label $size failed:"; cat "$out/last-$label.log"; exit 1; }
  read -r wall kb < "$out/time.txt"
  printf '%s\t%s\t%s\t%s\n' "$label" "$size" "$wall" "$kb" >> "$tsv"
  printf '%-12s %-6s %6.2f s %7.0f MB\n' "$label" "$size" "$wall" "$((kb / 1024))"
}
for r in $(seq "$repeats"); do
  for s in "${sizes[@]}"; do
    p="$out/prompts-$s.jsonl"
    measure attrpatch "$s" "$bin" run --model "$model" --tokenizer models/tokenizer.json --prompts "$p" \
      --threads "$threads" --out "$out/attrpatch-$s"
    measure ort-forward "$s" "$py" "$wp" ort-forward --model "$model" --prompts "$p" --threads "$threads"
    if [ "$s" = 8x14 ] && [ "$torch_peers" = 1 ]; then
      measure hooks "$s" "$py" "$wp" hooks --weights "$weights" --prompts "$p" --threads "$threads"
      [ "$have_nnsight" = 1 ] && measure nnsight "$s" "$py" "$wp" nnsight --weights "$weights" --prompts "$p" \
        --threads "$threads"
    fi
  done
done
# Warm: the same job repeated in one process (the session or model kept).
p="$out/prompts-8x14.jsonl"
"$root/target/release/examples/bench" --model "$model" --threads "$threads" --repeats 5 --json "$out/warm-bench.json" \
  > "$out/warm-bench.log"
for peer in hooks nnsight; do
  [ "$torch_peers" = 0 ] && continue
  [ "$peer" = nnsight ] && [ "$have_nnsight" = 0 ] && continue
  "$py" "$wp" "$peer" --weights "$weights" --prompts "$p" --threads "$threads" --loop 5 | tail -1 > "$out/warm-$peer.txt"
done
"$py" - "$out" <<'PY'
import json, statistics, sys, re, os
out = sys.argv[1]
rows = [l.split("\t") for l in open(os.path.join(out, "whole.tsv")).read().splitlines()]
med = {}
for label, size, wall, kb in rows:
    med.setdefault((label, size), []).append((float(wall), int(kb) / 1024))
res = {f"{l} {s}": {"wall_s": statistics.median(w for w, _ in v), "peak_rss_mb": statistics.median(m for _, m in v),
                    "runs": len(v)} for (l, s), v in med.items()}
bench = json.load(open(os.path.join(out, "warm-bench.json")))
# attrpatch's warm job: the graph `run` picks for these neighbour-swapped prompts (shared rows).
warm = {"attrpatch": bench.get("dedup", {}).get("shared_rows_s", bench.get("attribution_run_s")),
        "ort-forward": bench.get("plain_forward_s")}
for peer in ("hooks", "nnsight"):
    f = os.path.join(out, f"warm-{peer}.txt")
    if os.path.exists(f):
        m = re.search(r"median ([0-9.]+)", open(f).read())
        warm[peer] = float(m.group(1)) if m else None
names = {"attrpatch": "`attrpatch run`", "ort-forward": "plain ONNX Runtime forward (Python)",
         "nnsight": "the tutorial's nnsight code", "hooks": "hand-written PyTorch hooks"}
lines = ["| 8 pairs x 14 tokens | whole process: wall s | peak RSS MB | warm job s |", "|---|---|---|---|"]
for l in ("attrpatch", "ort-forward", "nnsight", "hooks"):
    r = res.get(f"{l} 8x14")
    if r:
        w = warm.get(l)
        lines.append(f"| {names[l]} | {r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} | {w:.3f} |" if w else
                     f"| {names[l]} | {r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} | |")
lines += ["", "| prompts | attrpatch wall s / RSS MB | plain forward wall s / RSS MB | ratio wall / RSS |", "|---|---|---|---|"]
for s in ("8x14", "8x256", "64x16"):
    a, b = res.get(f"attrpatch {s}"), res.get(f"ort-forward {s}")
    if a and b:
        lines.append(f"| {s.replace('x', ' x ')} | {a['wall_s']:.2f} / {a['peak_rss_mb']:.0f} | {b['wall_s']:.2f} / "
                     f"{b['peak_rss_mb']:.0f} | {a['wall_s'] / b['wall_s']:.2f} / {a['peak_rss_mb'] / b['peak_rss_mb']:.2f} |")
json.dump({"whole_process": res, "warm_s": warm}, open(os.path.join(out, "whole.json"), "w"), indent=1)
open(os.path.join(out, "whole.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $out/whole.md"
