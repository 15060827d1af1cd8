#!/usr/bin/env python3
"""One process against attrpatch.ray with 1 and 2 actors on the same prompt pairs.

    python tools/bench/ray_bench.py [--job run|edges] [--model models/ioi-gpt2/model.onnx] [--pairs 256]
                                    [--block-size 32] [--repeats 3] [--json out.json]

Measures, on a local Ray cluster of 2 CPUs (`ray.init(num_cpus=2)`):
- one process: `attrpatch.run` (`--job edges`: `attrpatch.edges`, EAP) in a fresh interpreter (threads 1 and 2), wall time with set-up and
  the peak RSS of that process;
- Ray start-up: `ray.init` until the cluster answers;
- `attrpatch.ray.attribute` (`attrpatch.ray.edges`) with 1 and 2 actors of 1 CPU (a fresh actor pool each call, so each
  call pays the actors' start and session), wall time, and every actor's peak RSS (VmHWM of the
  ray::MapWorker processes, sampled while they live);
- the parts of each Ray call, from when each block began and ended in its actor: start-up (call to
  first block), graph and session set-up (in the first block), the gap between blocks on one actor
  (Ray's per-block overhead), the tail (last block to the result); also with blocks of 8 pairs.
Every Ray grid (edge scores) is checked against one process's (1e-6 of its largest cell) before timing counts.
Needs attrpatch with the [ray] extra installed in this interpreter. Linux (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The pairs generator the Ray tests use.
sys.path.insert(0, str(ROOT / "python" / "tests"))
from ioi_pairs import ioi_pairs  # noqa: E402


ONE_PROCESS = """
import json, resource, sys, time
t0 = time.perf_counter()
import attrpatch
if sys.argv[4] == "edges":
    r = attrpatch.edges(sys.argv[1], sys.argv[2], device="cpu", threads=int(sys.argv[3]))
    grids = {"scores": r.scores.tolist()}
else:
    r = attrpatch.run(sys.argv[1], sys.argv[2], device="cpu", threads=int(sys.argv[3]))
    grids = {"heads": r.heads.tolist(), "positions": r.positions.tolist()}
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "timings": {k: v for k, v in r.timings.items() if isinstance(v, float)}, **grids,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# What each job compares against one process.
GRIDS = {"run": ("heads", "positions"), "edges": ("scores",)}


def one_process(model: str, pairs: str, threads: int, job: str) -> dict:
    p = subprocess.run([sys.executable, "-c", ONE_PROCESS, model, pairs, str(threads), job], capture_output=True,
                       text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


class ActorMemory:
    """Samples the peak RSS (VmHWM) of every ray::MapWorker process while it lives."""

    def __init__(self) -> None:
        self.peak_mb: dict = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ActorMemory":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    if not (d / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                        continue
                    for line in (d / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            kb = int(line.split()[1])
                            self.peak_mb[int(d.name)] = max(self.peak_mb.get(int(d.name), 0), kb / 1024)
                except OSError:
                    continue
            time.sleep(0.05)


def max_rel_err(got, want) -> float:
    import numpy as np

    want = np.asarray(want)
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", choices=sorted(GRIDS), default="run", help="run (attribution) or edges (EAP)")
    ap.add_argument("--model", default=str(ROOT / "models" / "ioi-gpt2" / "model.onnx"))
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in ioi_pairs(args.pairs)))
    out: dict = {"job": args.job, "pairs": args.pairs, "block_size": args.block_size, "model": args.model}

    for threads in (1, 2):
        runs = [one_process(args.model, str(pairs), threads, args.job) for _ in range(args.repeats)]
        out[f"one_process_threads{threads}"] = {
            "wall_s": statistics.median(r["wall"] for r in runs),
            "run_s": statistics.median(r["timings"]["run"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
    ref = runs[-1]

    t0 = time.perf_counter()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out["ray_init_s"] = time.perf_counter() - t0
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    import attrpatch.ray as apr

    def ray_run(actors: int, block: int) -> dict:
        """Median over repeats of the wall time and its parts, from each block's start and duration
        in its actor (block_meta): start-up (the call to the first block: actors spawned, attrpatch
        imported, Attributor made), the first block's set-up (graph and session), the gap between
        consecutive blocks on one actor (Ray's per-block overhead), and the tail (last block to the
        combined result)."""
        figures, peaks = [], {}
        for _ in range(args.repeats):
            with ActorMemory() as mem:
                t = time.time()
                entry = apr.edges if args.job == "edges" else apr.attribute
                r, rows = entry(str(pairs), args.model, actors=actors, threads=1, block_size=block,
                                device="cpu", return_rows=True)
                wall = time.time() - t
            peaks.update(mem.peak_mb)
            err = max(max_rel_err(getattr(r, g), ref[g]) for g in GRIDS[args.job])
            assert err <= 1e-6, f"actors {actors}, block {block}: grids differ from one process by {err:.2e}"
            metas = [json.loads(m["block_meta"]) for m in rows.select_columns(["block_meta"]).take_all()
                     if m["block_meta"]]
            gaps = []
            for pid in {m["worker_pid"] for m in metas}:
                mine = sorted((m for m in metas if m["worker_pid"] == pid), key=lambda m: m["started"])
                gaps += [b["started"] - (a["started"] + a["seconds"]) for a, b in zip(mine, mine[1:])]
            first = min(m["started"] for m in metas)
            last = max(m["started"] + m["seconds"] for m in metas)
            setup = [m["timings"].get("load", 0) + m["timings"].get("rewrite", 0) + m["timings"].get("session", 0)
                     for m in metas]
            figures.append({"wall_s": wall, "startup_s": first - t, "tail_s": t + wall - last,
                            "block_gap_s": statistics.median(gaps) if gaps else None,
                            "blocks": len(metas), "session_setup_s": max(setup),
                            "runtime_calls_s": r.timings["run"], "max_rel_err": err})
        med = {k: statistics.median(f[k] for f in figures if f[k] is not None)
               for k in figures[0] if any(f[k] is not None for f in figures)}
        med["pairs_per_s"] = args.pairs / med["wall_s"]
        med["peak_rss_mb_per_actor"] = max(peaks.values()) if peaks else None
        return med

    for actors in (1, 2):
        out[f"ray_actors{actors}"] = ray_run(actors, args.block_size)
    out["ray_actors1_block8"] = ray_run(1, 8)
    ray.shutdown()

    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
