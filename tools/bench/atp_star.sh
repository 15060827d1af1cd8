#!/usr/bin/env bash
# AtP*'s cost against `run` (issue 23): whole process (wall, peak RSS) and the
# runtime call, on the GPT-2-small-sized random model and the bundled IOI
# prompts (8 pairs of 14 tokens), release build, the four commands alternated
# REPEATS times: run (as a user runs it: --dedup auto), run --dedup off (the
# same two-copy graph AtP* runs), AtP* with the QK-fix only, and AtP* with
# GradDrop's L - 1 sweeps.
# Usage: tools/bench/atp_star.sh [THREADS] [OUT_DIR] [REPEATS]
set -euo pipefail
repeats="${3:-3}"
source "$(dirname "$0")/common.sh" "$@"
cargo build --release --quiet
bin=target/release/attrpatch
for i in $(seq "$repeats"); do
  for v in "run:" "run-two-copy:--dedup off" "atp-star-qk-fix:--method atp-star --no-grad-drop" "atp-star:--method atp-star"; do
    name="${v%%:*}"
    # shellcheck disable=SC2086
    /usr/bin/time -f "$name: wall %e s, peak RSS %M KB" "$bin" run --model "$model" --tokenizer models/tokenizer.json \
      --device cpu --threads "$threads" ${v#*:} --out "$out/atp-star-bench-$name" 2>&1 >"$out/atp-star-bench-$name.log" | tail -1
    grep '^time:' "$out/atp-star-bench-$name.log" | sed "s/^/  /"
  done
done
