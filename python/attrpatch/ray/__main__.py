"""`python -m attrpatch.ray run|patch|edges --model M --prompts P --out DIR`: a job on a Ray cluster.

Connects to RAY_ADDRESS (what `ray job submit` sets) or `--address`, else starts a local cluster;
writes DIR/blocks/*.parquet (one file per block, so a rerun skips finished blocks), DIR/settings.json,
and, once every pair is in, DIR/results.json, DIR/heads.csv and DIR/positions.csv (the command
line's layout); `edges` writes DIR/edges.json and DIR/edges.csv as `attrpatch edges` does, and
DIR/results.json (baselines, warnings, pair ids). A data error prints the command line's message
(`error: FILE:LINE: ...`) and exits with status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attrpatch.ray", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "attribution patching (integrated gradients with --ig-steps)"),
                        ("patch", "exact activation patching"),
                        ("edges", "every edge's score: EAP (EAP-IG with --ig-steps)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--model", required=True, help="the .onnx model (a path every node can read)")
        s.add_argument("--prompts", required=True, help="JSONL prompt pairs (pair ids are its lines)")
        s.add_argument("--out", required=True, help="output folder (shared by the nodes)")
        s.add_argument("--tokenizer", help="tokenizer.json [default: beside the model]")
        s.add_argument("--metric", default="logit-diff", help="logit-diff, logprob-diff, prob or kl")
        if name != "edges":  # edges are defined by the heads, MLPs and residual stream
            s.add_argument("--hook", default="attn", help="attn, resid, mlp or a regex over tensor names")
        s.add_argument("--heads", type=int, help="attention heads per layer, when the graph does not say")
        s.add_argument("--bos", action="store_true", help="prepend the tokenizer's BOS token")
        s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto [default: cpu]")
        s.add_argument("--runtime", default="ort", help="ort or tract")
        s.add_argument("--actors", type=int, help="actors [default: the cluster's CPUs less one, over --threads]")
        s.add_argument("--threads", type=int, default=1, help="CPUs (and ONNX Runtime threads) per actor")
        s.add_argument("--block-size", type=int, default=None, help="pairs per actor call")
        s.add_argument("--batch-size", type=int, help="pairs per runtime call inside a block")
        s.add_argument("--max-restarts", type=int, default=3, help="Ray restarts of a crashed actor")
        s.add_argument("--address", help="the Ray cluster [default: RAY_ADDRESS, else a local one]")
        if name != "edges":  # edge scores are sums over the pairs
            s.add_argument("--per-prompt", action="store_true", help="also write per_pair.json (each pair's grids)")
        if name == "edges":
            s.add_argument("--ig-steps", type=int, default=1, help="EAP-IG with N steps; 1 is plain EAP")
            s.add_argument("--top-k", type=int, default=20, help="the K edges of largest |score| printed")
        elif name == "run":
            s.add_argument("--ig-steps", type=int, help="integrated gradients with N steps")
        else:
            s.add_argument("--positions", action="store_true", help="also patch every position")
            s.add_argument("--rows-per-call", type=int, help="patched rows per runtime call")
    return p


def _csv(path: Path, row_label: str, cols: List[str], rows: List[str], values) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([row_label, *cols])
        for name, row in zip(rows, values):
            w.writerow([name, *(repr(float(v)) for v in row)])


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status."""
    args = _parser().parse_args(argv)
    import attrpatch
    try:
        import attrpatch.ray as apr
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    options = {"metric": args.metric, "tokenizer": args.tokenizer, "heads": args.heads,
               "bos": args.bos, "device": args.device, "runtime": args.runtime, "batch_size": args.batch_size}
    common = dict(out=args.out, actors=args.actors, threads=args.threads,
                  block_size=args.block_size or apr.DEFAULT_BLOCK_SIZE,
                  max_restarts=args.max_restarts, address=args.address, **options)
    # Ray Data logs a failed block's traceback itself; the message below says what failed.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    t0 = time.perf_counter()
    if args.command == "edges":
        return _edges(apr, args, common, t0)
    common.update(hook=args.hook, per_pair=args.per_prompt)
    try:
        if args.command == "run":
            r = apr.attribute(args.prompts, args.model, ig_steps=args.ig_steps, **common)
        else:
            r = apr.patch(args.prompts, args.model, positions=args.positions, rows_per_call=args.rows_per_call,
                          **common)
    except attrpatch.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    raw = dict(r.raw)
    per_pair = {k: raw.pop(k) for k in ("per_pair_heads", "per_pair_positions")}
    results = {**raw, "clean_logit_diff": r.clean_metric, "corrupted_logit_diff": r.corrupted_metric,
               "wall_seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.per_prompt:
        (out / "per_pair.json").write_text(json.dumps({"pair_ids": raw["pair_ids"], **per_pair}) + "\n")
    if r.heads.size:
        _csv(out / "heads.csv", "Layer", raw["head_labels"], r.layer_labels, r.heads)
    if r.positions.size:
        _csv(out / "positions.csv", "Layer", r.position_labels, r.layer_labels, r.positions)
    print(f"{r.method}: {len(r.pair_metrics)} pairs; clean {r.clean_metric:.4f}, corrupted "
          f"{r.corrupted_metric:.4f} ({r.metric}); results in {out}")
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _edges(apr, args: argparse.Namespace, common: dict, t0: float) -> int:
    """`edges`: edges.json and edges.csv as `attrpatch edges` writes them, results.json beside them."""
    import attrpatch
    from attrpatch import _attrpatch as native

    if args.top_k < 1:
        print(f"error: --top-k: expected a whole number >= 1, got {args.top_k}", file=sys.stderr)
        return 1
    try:
        r = apr.edges(args.prompts, args.model, ig_steps=args.ig_steps, **common)
        raw = r.raw
        scores = {k: raw[k] for k in ("method", "ig_steps", "metric", "layers", "heads", "kv_heads", "parallel",
                                      "edges", "nodes")}
        native.write_edges(args.out, json.dumps(scores))
    except attrpatch.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    results = {k: v for k, v in raw.items() if k not in ("edges", "nodes", "unnormalised")}
    results["wall_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{r.method}: {len(r.pair_metrics)} pairs, {len(r.edges)} edges; clean {r.clean_metric:.4f}, corrupted "
          f"{r.corrupted_metric:.4f} ({r.metric}); results in {out}")
    k = min(args.top_k, len(r.edges))
    print(f"top {k} edges by |score|:")
    for a, b, v in r.top(k):
        print(f"  {a:>10} -> {b:<10} {v:+.4f}")
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
