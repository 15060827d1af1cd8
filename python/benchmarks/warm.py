#!/usr/bin/env python3
"""Warm timing of attrpatch.Attributor: the set-up (load, rewrite, session) once, then repeated
attribution jobs on the same pairs, each timed as a whole Python call.

    python python/benchmarks/warm.py MODEL.onnx [--tokenizer tokenizer.json] [--pairs P.jsonl]
        [--repeats 5] [--threads 2] [--device cpu]

Prints one line: the first call (set-up + job) and the median of the warm calls, with all warm
times, the load average before and after (other processes on the machine skew the times)."""

import argparse
import os
import statistics
import time

import attrpatch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokenizer")
    ap.add_argument("--pairs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    attributor = attrpatch.Attributor(a.model, tokenizer=a.tokenizer, threads=a.threads, device=a.device)
    first = attributor.run(a.pairs)
    first_s = time.perf_counter() - t0
    warm = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        r = attributor.run(a.pairs)
        warm.append(time.perf_counter() - t)
    assert attributor.stats["graphs_built"] == 1, attributor.stats
    print(
        f"attrpatch {attrpatch.__version__} Attributor on {os.path.basename(a.model)}: "
        f"{len(r.prompts)} pairs x {r.positions.shape[1]} tokens; first call {first_s:.3f} s "
        f"(load {first.timings['load']:.2f} + rewrite {first.timings['rewrite']:.2f} + session "
        f"{first.timings['session']:.2f} + run {first.timings['run']:.2f}); warm median "
        f"{statistics.median(warm):.3f} s [{', '.join(f'{w:.3f}' for w in warm)}]; {r.runtime}; "
        f"{a.threads} threads; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
