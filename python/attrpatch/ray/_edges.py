"""Edge scores on Ray: a block's rows, and the blocks combined into the `EdgeResult` one process gives.

Edge scores are sums over the pairs and positions (a block's runtime call scores all its pairs in
one [writers, readers] matrix), so a block cannot give one row of scores per pair. Each block
instead returns one row per pair (its id, texts and metric values, as the other jobs' rows) and,
on its first row beside `block_meta`, the block's *unnormalised* edge sums (`edges_raw`, the
attribution of its pairs' summed metric change) and head attributions (`head_attribution_raw`).
Sums over disjoint blocks add up; the combined sum is normalised once over every pair,
sum / (N (CLEAN - CORR)) with CLEAN and CORR the means over the whole set, as `attrpatch edges`
normalises its batches' sums. Block boundaries therefore do not change the scores.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import numpy as np

from attrpatch import _attrpatch as _native
from attrpatch._errors import InputError
from attrpatch._results import EdgeResult

#: What every block of one edge job must agree on.
SHAPE_KEYS = ("method", "ig_steps", "metric", "layers", "heads", "kv_heads", "parallel")


def block_table(rows: List[Dict[str, Any]], d: Dict[str, Any], *, text_keys: tuple, metric_option: str,
                graphs_built: int, pid: int, started: float) -> Any:
    """The block's rows: one per pair; the sums and `block_meta` on the first."""
    import pyarrow as pa

    n = len(rows)
    pm = np.asarray(d["pair_metrics"], dtype=np.float64).reshape(-1, 2)
    if len(pm) != n:
        raise InputError(f"the edge job of pair ids {rows[0]['pair_id']}..{rows[-1]['pair_id']} returned "
                         f"{len(pm)} pair metrics for {n} pairs")
    # The head attributions came back normalised by this block's k_b (job code, same float operations):
    # dividing by k_b undoes it, as the other jobs' rows undo their grids'.
    k_b = 1.0 / (n * (float(d["clean_metric"]) - float(d["corrupted_metric"])))
    heads_raw = (np.asarray(d["head_attribution"], dtype=np.float64) / k_b).tolist()
    meta = {key: d[key] for key in SHAPE_KEYS}
    meta.update({
        "metric_option": metric_option, "runtime": d["runtime"],
        "timings": {k: v for k, v in d["timings"].items() if isinstance(v, (int, float))},
        "runtime_calls": d["runtime_calls"], "graphs_built": graphs_built, "worker_pid": pid,
        "started": started, "seconds": time.time() - started,
    })
    first_only = lambda v, empty: [v] + [empty] * (n - 1)  # noqa: E731
    return pa.table({
        "pair_id": pa.array([r["pair_id"] for r in rows], pa.int64()),
        "index": pa.array([r["index"] for r in rows], pa.int64()),
        "origin": pa.array([r["origin"] for r in rows], pa.string()),
        **{k: pa.array([r[k] for r in rows], pa.string()) for k in text_keys},
        "clean_metric": pa.array(pm[:, 0], pa.float64()),
        "corrupted_metric": pa.array(pm[:, 1], pa.float64()),
        "edges_raw": pa.array(first_only([float(v) for v in d["unnormalised"]], []), pa.list_(pa.float64())),
        "head_attribution_raw": pa.array(first_only(heads_raw, []), pa.list_(pa.list_(pa.float64()))),
        "worker_pid": pa.array([pid] * n, pa.int64()),
        "block_meta": pa.array(first_only(json.dumps(meta), ""), pa.string()),
    })


def combine(table: Any, metas: List[Dict[str, Any]], clean: np.ndarray, corrupted: np.ndarray, c: float,
            k: float, norm: float) -> EdgeResult:
    """The job's `EdgeResult` from its rows sorted by pair id (each pair once), with the whole set's
    baselines c, k and normaliser `norm` = 1 / (N (c - k))."""
    first = metas[0]
    for m in metas:
        for key in SHAPE_KEYS:
            if m[key] != first[key]:
                raise InputError(f"rows: blocks of different edge jobs: their {key} differs ({first[key]!r} vs "
                                 f"{m[key]!r})")
    names = _native.edge_names(int(first["layers"]), int(first["heads"]), int(first["kv_heads"]),
                               bool(first["parallel"]))
    sums_rows = [s for s in table.column("edges_raw").to_pylist() if s]
    if len(sums_rows) != len(metas):
        raise InputError(f"rows: {len(metas)} blocks but {len(sums_rows)} with edge sums; these are not whole "
                         "attrpatch.ray edge blocks")
    bad = next((len(s) for s in sums_rows if len(s) != len(names)), None)
    if bad is not None:
        raise InputError(f"rows: a block holds {bad} edge sums, the model's {first['layers']} layers x "
                         f"{first['heads']} heads have {len(names)} edges")
    sums = np.asarray(sums_rows, dtype=np.float64).sum(axis=0)
    # As run_edges: k * sum, the nodes each writer's outgoing edges added in edge order.
    scores = [norm * float(v) for v in sums]
    nodes: Dict[str, float] = {}
    for (src, _), v in zip(names, scores):
        nodes[src] = nodes.get(src, 0.0) + v
    head_rows = [np.asarray(h, dtype=np.float64) for h in table.column("head_attribution_raw").to_pylist() if h]
    heads = (sum(head_rows[1:], head_rows[0]) * norm).tolist() if head_rows else []
    warnings, accuracy = _native.baseline_check(first["metric_option"], clean.tolist(), corrupted.tolist())
    timings: Dict[str, float] = {}
    for m in metas:
        for key, v in m["timings"].items():
            timings[key] = timings.get(key, 0.0) + float(v)
    d = {
        **{key: first[key] for key in SHAPE_KEYS},
        "edges": [{"from": a, "to": b, "score": v} for (a, b), v in zip(names, scores)],
        "nodes": [{"node": a, "score": v} for a, v in nodes.items()],
        "unnormalised": sums.tolist(), "head_attribution": heads,
        "clean_metric": c, "corrupted_metric": k,
        "pair_metrics": np.stack([clean, corrupted], axis=1).tolist(),
        "warnings": warnings, "clean_accuracy": accuracy, "timings": timings,
        "runtime_calls": sum(int(m["runtime_calls"]) for m in metas), "runtime": first["runtime"],
        "pair_ids": table.column("pair_id").to_pylist(),
        "actors": sorted({int(m["worker_pid"]) for m in metas}),
    }
    return EdgeResult._from_native(d)
