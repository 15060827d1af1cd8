"""attrpatch on a Ray cluster: attribution, integrated gradients, exact patching and edge scores of a
prompt set too large for one machine, with the numbers one process gives.

    import attrpatch.ray
    r = attrpatch.ray.attribute("pairs.jsonl", "gpt2.onnx", actors=4, threads=4, out="results/")
    r.heads, r.positions, r.clean_metric, r.warnings      # an attrpatch.Result, as attrpatch.run's
    e = attrpatch.ray.edges("pairs.jsonl", "gpt2.onnx", actors=4, out="edges/")   # as attrpatch.edges

How it runs: the pairs become a Ray Dataset (one row a pair, `pair_id` the line of the JSONL
file), `map_batches` sends blocks of `block_size` pairs to a pool of `actors` actors
(`ray.data.ActorPoolStrategy(size=actors)`), each holding one `attrpatch.Attributor` made in its
`__init__` (the rewritten graph and the runtime session are built on its first block and kept)
with ONNX Runtime's intra-op threads set to the actor's `threads` CPUs. Each block returns one row
per pair with the pair's metric values and its grids *not normalised* (the attribution of the
pair's own metric change, as the command line's batch files hold them); the grids are normalised
once over the whole set, `sum / (N * (CLEAN - CORR))`, with CLEAN and CORR the means over every
pair, as `attrpatch merge` combines shards. Block boundaries therefore do not change the result.
Edge scores are sums over a block's pairs, not per pair: each block returns its unnormalised edge
sums once, on its first row, and they are added over the blocks and normalised over the whole set
the same way (`_edges.py`).

With `out=DIR` every block is written as `DIR/blocks/block-FIRST-LAST-HASH.parquet` (named by its
pair ids) beside `DIR/settings.json` (what decides the numbers: model and tokenizer content, pairs,
metric, hooks, method); a rerun in DIR skips the pairs already there and refuses a DIR written with
other settings. A crashed actor is restarted by Ray and its block rerun (`max_restarts`).

Errors in the data (an answer of two tokens on line N) raise the `attrpatch.Error` subclass and
message a single-process job gives, naming the file and line, not a Ray traceback.

Requires `pip install attrpatch[ray]` (ray[data]); `import attrpatch` works without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

import attrpatch
from attrpatch import _inputs
from attrpatch import _attrpatch as _native
from attrpatch._errors import Error, InputError, NumericError
from attrpatch._results import Result
from attrpatch.ray import _edges

try:
    import ray  # noqa: F401  (the top-level ray package, not this module)
    import ray.data
    from ray.util.annotations import RayDeprecationWarning
except ImportError as e:  # pragma: no cover - exercised where ray is missing
    raise ImportError(
        f"attrpatch.ray needs Ray Data ({e}); install it with: pip install 'attrpatch[ray]' "
        "(or pip install 'ray[data]')"
    ) from e

__all__ = ["attribute", "patch", "edges", "pair_rows", "combine", "read_rows", "DEFAULT_BLOCK_SIZE"]

#: Pairs per block (one actor call) when `block_size` is not given.
DEFAULT_BLOCK_SIZE = 32

_PAIR_TEXT = ("clean", "corrupted", "correct", "incorrect")
_OPTION_KEYS = ("metric", "hook", "tokenizer", "heads", "bos", "device", "runtime", "ort_lib",
                "max_memory", "batch_size")


# --- the per-pair rows ---------------------------------------------------------------------------

def _job(method: str, ig_steps: Optional[int], positions: bool, rows_per_call: Optional[int]) -> Dict[str, Any]:
    if method not in ("attribution", "patch", "edges"):
        raise InputError(f"method: expected 'attribution', 'patch' or 'edges', got {method!r}")
    if method == "edges":
        if positions or rows_per_call is not None:
            raise InputError("positions and rows_per_call: exact patching's (patch); edge scores take ig_steps only")
        # Edge jobs always have a step count (1: plain EAP), so the fingerprint names it.
        return {"method": method, "ig_steps": ig_steps or 1, "positions": False, "rows_per_call": None}
    if method == "attribution" and positions:
        raise InputError("positions: only exact patching (patch) takes positions=True; attribution always "
                         "computes the positions grid")
    return {"method": method, "ig_steps": ig_steps, "positions": bool(positions), "rows_per_call": rows_per_call}


class _PairBlocks:
    """The callable class `map_batches` runs on each actor: one `attrpatch.Attributor` per actor,
    made here (the session cannot be pickled, so it is built where it runs), and one call per
    block of pairs. Returns one row per pair, its grids not normalised."""

    def __init__(self, model: Any, options: Dict[str, Any], job: Dict[str, Any], threads: int,
                 out: Optional[str], fingerprint: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # The native Attributor must stay on the thread that made it, and Ray Data calls __call__
        # on another thread than __init__: both run on this actor's one thread of its own.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attrpatch")
        self._attributor = self._thread.submit(
            lambda: attrpatch.Attributor(model, threads=threads, per_pair=True, **options)).result()
        self._job = job
        self._metric = options.get("metric", "logit-diff")
        self._out = out
        self._fingerprint = fingerprint
        self._pid = os.getpid()

    def __call__(self, batch: Any) -> Any:
        return self._thread.submit(self._block, batch).result()

    def _block(self, batch: Any) -> Any:
        import pyarrow as pa

        started = time.time()
        rows = sorted(batch.to_pylist(), key=lambda r: r["pair_id"])
        if self._job["method"] == "edges":
            table = _edges.block_table(rows, self._run(rows), text_keys=_PAIR_TEXT, metric_option=self._metric,
                                       graphs_built=self._attributor.stats["graphs_built"], pid=self._pid,
                                       started=started)
            if self._out is not None:
                _write_block(Path(self._out), table, self._fingerprint)
            return table
        result = self._run(rows)
        k = _block_normaliser(result)
        meta = _block_meta(result, self._attributor.stats, self._pid)
        meta["started"], meta["seconds"] = started, time.time() - started
        n = len(rows)
        per_heads = _per_pair(result.per_pair_heads, n)
        per_positions = _per_pair(result.per_pair_positions, n)
        table = pa.table({
            "pair_id": pa.array([r["pair_id"] for r in rows], pa.int64()),
            "index": pa.array([r["index"] for r in rows], pa.int64()),
            "origin": pa.array([r["origin"] for r in rows], pa.string()),
            **{k: pa.array([r[k] for r in rows], pa.string()) for k in _PAIR_TEXT},
            "clean_metric": pa.array(result.pair_metrics[:, 0], pa.float64()),
            "corrupted_metric": pa.array(result.pair_metrics[:, 1], pa.float64()),
            # Each pair's grids in the units of its metric (not normalised): per_pair / k_b undoes
            # this block's normalisation, so blocks add up.
            "heads_raw": pa.array([(g / k).tolist() for g in per_heads], pa.list_(pa.list_(pa.float64()))),
            "positions_raw": pa.array([(g / k).tolist() for g in per_positions],
                                      pa.list_(pa.list_(pa.float64()))),
            "worker_pid": pa.array([self._pid] * n, pa.int64()),
            "block_meta": pa.array([json.dumps(meta)] + [""] * (n - 1), pa.string()),
        })
        if self._out is not None:
            _write_block(Path(self._out), table, self._fingerprint)
        return table

    def _run(self, rows: List[Dict[str, Any]]) -> Any:
        """The block's Result; for edges the native result's dict (its sums are what blocks add)."""
        texts = [tuple(r[k] or "" for k in _PAIR_TEXT) + (r["origin"],) for r in rows]
        try:
            if self._job["method"] == "edges":
                return json.loads(self._attributor._native.edges("texts_at", texts,
                                                                 {"ig_steps": self._job["ig_steps"]}))
            if self._job["method"] == "attribution":
                job = {"ig_steps": self._job["ig_steps"]}
                return Result._from_native(json.loads(self._attributor._native.run("texts_at", texts, job)))
            job = {"positions": self._job["positions"], "rows_per_call": self._job["rows_per_call"]}
            return Result._from_native(json.loads(self._attributor._native.patch("texts_at", texts, job)))
        except Error as e:
            err = type(e)(_global_message(str(e), rows))
            # Ray appends its retry notes to the message on the way; the driver reads this copy.
            err.attrpatch_message = str(err)  # type: ignore[attr-defined]
            raise err from None


def _global_message(msg: str, rows: List[Dict[str, Any]]) -> str:
    """A block's message as the whole set's job gives it: "FILE:LINE: pair I" numbers the pair in
    the block; it becomes its index in the set. Messages naming no pair get the block's ids."""
    for local, r in enumerate(rows):
        prefix = f"{r['origin']}: pair {local}"
        if msg.startswith(prefix + ":") or msg.startswith(prefix + " "):
            return f"{r['origin']}: pair {r['index']}" + msg[len(prefix):]
    return f"{msg} (in the block of pair ids {rows[0]['pair_id']}..{rows[-1]['pair_id']})"


def _block_normaliser(r: Result) -> float:
    """k_b = 1 / (N_b * (CLEAN_b - CORR_b)), the factor the block's grids were multiplied by
    (job::finish's normaliser, computed with the same float operations from the same baselines)."""
    n = r.pair_metrics.shape[0]
    return 1.0 / (n * (r.clean_metric - r.corrupted_metric))


def _per_pair(a: Optional[np.ndarray], n: int) -> np.ndarray:
    if a is None:
        return np.zeros((n, 0, 0))
    return a.reshape(n, -1, a.shape[-1]) if a.size else np.zeros((n, 0, 0))


def _block_meta(r: Result, stats: Dict[str, int], pid: int) -> Dict[str, Any]:
    raw = r.raw
    return {
        "method": r.method, "metric": r.metric, "hook": raw.get("hook"), "model": raw.get("model"),
        "runtime": r.runtime, "hooks": r.hooks, "layer_labels": r.layer_labels,
        "head_labels": raw.get("head_labels", []), "token_labels": r.token_labels,
        "timings": {k: v for k, v in r.timings.items() if isinstance(v, (int, float))},
        "runtime_calls": r.runtime_calls, "graphs_built": stats["graphs_built"], "worker_pid": pid,
        "seq_len": len(r.position_labels),
    }


# --- the pairs as a Ray Dataset ------------------------------------------------------------------

def _pair_id(origin: str, k: int) -> int:
    """The line of a JSONL file ("FILE:LINE"), or the element of a JSON array ("FILE: array element K")."""
    m = re.search(r":(\d+)$", origin) or re.search(r"array element (\d+)$", origin)
    return int(m.group(1)) if m else k


def _file_rows(path: str) -> List[Dict[str, Any]]:
    pairs = _native.read_pairs(path)
    return [{"pair_id": _pair_id(o, k), "index": k, "origin": o, "clean": a, "corrupted": b,
             "correct": c, "incorrect": d} for k, (a, b, c, d, o) in enumerate(pairs)]


def _dataset(pairs: Any) -> Tuple[Any, Optional[List[Dict[str, Any]]]]:
    """The pairs as a Dataset with pair_id, index, origin and the four texts; and the rows, when
    read here from a file."""
    if isinstance(pairs, (str, os.PathLike)):
        rows = _file_rows(os.fsdecode(os.fspath(pairs)))
        return ray.data.from_items(rows), rows
    if isinstance(pairs, ray.data.Dataset):
        cols = set(pairs.columns() or [])
        missing = [k for k in ("pair_id", "clean", "corrupted") if k not in cols]
        if missing:
            raise InputError(
                f"pairs: the Dataset has no {missing[0]!r} column; it needs pair_id (a stable id per pair, e.g. "
                f"its line), clean, corrupted and (but for --metric kl) correct, incorrect; it has "
                f"{', '.join(sorted(cols)) or 'none'}")

        def label(batch: Dict[str, Any]) -> Dict[str, Any]:
            ids = np.asarray(batch["pair_id"], dtype=np.int64)
            out = {"pair_id": ids, "index": ids, "origin": np.array([f"pair_id {i}" for i in ids], dtype=object)}
            for k in _PAIR_TEXT:
                out[k] = np.asarray(batch[k], dtype=object) if k in batch else np.array([""] * len(ids), dtype=object)
            return out

        return pairs.map_batches(label, batch_format="numpy"), None
    raise InputError(f"pairs: expected a JSONL path or a ray.data.Dataset of pairs, got {type(pairs).__name__}")


def _options(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = [k for k in options if k not in _OPTION_KEYS]
    if unknown:
        raise InputError(f"unknown option {unknown[0]!r}; the Attributor options are {', '.join(_OPTION_KEYS)} "
                         "(threads and per_pair are set by attrpatch.ray)")
    return dict(options)


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0))


def _pool_size(actors: Optional[int], threads: int) -> int:
    """`actors`, or as many actors of `threads` CPUs as the cluster holds with one CPU left for Ray's
    read and bookkeeping tasks (an actor pool taking every CPU can hang the pipeline)."""
    if actors is not None:
        n = attrpatch._count(actors, "actors")
        return int(n)  # type: ignore[arg-type]
    return max(1, int((_cluster_cpus() - 1) // threads))


def _init(address: Optional[str]) -> None:
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)


def pair_rows(pairs: Any, model: Any, *, method: str = "attribution", ig_steps: Optional[int] = None,
              positions: bool = False, rows_per_call: Optional[int] = None, actors: Optional[int] = None,
              threads: int = 1, block_size: int = DEFAULT_BLOCK_SIZE, max_restarts: int = 3,
              address: Optional[str] = None, _out: Optional[str] = None, _fingerprint: str = "",
              **options: Any) -> Any:
    """The per-pair rows of a job, as a lazy `ray.data.Dataset` (nothing runs until it is read).

    One row per pair: `pair_id` (the line of the JSONL file, or the Dataset's own column), `index`
    (0-based place in the input), `origin`, the four texts, `clean_metric`, `corrupted_metric`,
    `heads_raw` [layers][heads] and `positions_raw` [layers][positions] (the pair's grids in units of
    its metric, not normalised: divide their sum by N * (CLEAN - CORR) for the normalised grids, as
    `combine` does), `worker_pid` and `block_meta` (JSON on a block's first row: labels, hooks,
    timings, and `started`/`seconds`: when the block began in the actor, as time.time(), and how long
    it took there). `method` is "attribution" (with `ig_steps`: integrated gradients), "patch" (exact
    patching, `positions` and `rows_per_call` as `attrpatch.patch`) or "edges" (EAP; EAP-IG with
    `ig_steps`: the rows have no grids but, on each block's first row, `edges_raw`, the block's
    unnormalised edge sums in `attrpatch.edges` order, and `head_attribution_raw`). `threads` is
    each actor's CPUs and ONNX Runtime's intra-op threads; `actors` defaults to the cluster's CPUs less one, divided by
    `threads`; `max_restarts` how often Ray restarts a crashed actor (and retries its block). Other
    options are `attrpatch.Attributor`'s (metric, hook, tokenizer, heads, bos, device, ...)."""
    job = _job(method, attrpatch._count(ig_steps, "ig_steps"), positions,
               attrpatch._count(rows_per_call, "rows_per_call"))
    options = _options(options)
    threads_n = attrpatch._count(threads, "threads")
    block = attrpatch._count(block_size, "block_size")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise InputError(f"max_restarts: expected a whole number >= 0, got {max_restarts!r}")
    _init(address)
    ds, _ = pairs if isinstance(pairs, tuple) else _dataset(pairs)
    model_arg = _inputs.model_source(model)
    with warnings.catch_warnings():
        # max_restarts and max_task_retries still go through **ray_remote_args in Ray 2.60, which
        # warns of its removal in 2.64 (the extra pins ray below that).
        warnings.simplefilter("ignore", category=RayDeprecationWarning)
        rows = ds.map_batches(
            _PairBlocks,
            fn_constructor_kwargs={"model": model_arg, "options": options, "job": job, "threads": threads_n,
                                   "out": _out, "fingerprint": _fingerprint},
            batch_size=block,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=_pool_size(actors, threads_n)),
            num_cpus=threads_n,
            max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )
    # A block's attrpatch.Error reaches the driver as itself (Ray Data would wrap it in a
    # UserCodeException that loses it), so the job fails with attrpatch's message.
    rows.context.raise_original_map_exception = True
    return rows


# --- combining the rows: the maths of job::finish ------------------------------------------------

def _indistinguishable(clean: float, corr: float) -> bool:
    return abs(clean - corr) <= 1e-5 * max(abs(clean), abs(corr))


def _stack(grids: List[Any], width: Optional[int] = None) -> np.ndarray:
    """[pairs, layers, cols] from each pair's nested lists, right-padded with zeros to `width`
    columns (a block's positions grid is as wide as its longest prompt; pads hold exactly 0)."""
    arrays = [np.asarray(g, dtype=np.float64).reshape(len(g), -1) if len(g) else np.zeros((0, 0)) for g in grids]
    layers = max((a.shape[0] for a in arrays), default=0)
    cols = max((a.shape[1] for a in arrays), default=0) if width is None else width
    out = np.zeros((len(arrays), layers, cols))
    for i, a in enumerate(arrays):
        if a.size:
            out[i, : a.shape[0], : a.shape[1]] = a
    return out


def _baselines(table: Any) -> Tuple[np.ndarray, np.ndarray, float, float, float]:
    """Every pair's clean and corrupted metric, their means CLEAN and CORR, and 1 / (N (CLEAN - CORR)):
    Totals::normaliser over the whole set, with its refusals."""
    clean = np.asarray(table.column("clean_metric").to_pylist(), dtype=np.float64)
    corrupted = np.asarray(table.column("corrupted_metric").to_pylist(), dtype=np.float64)
    n = len(clean)
    # As Totals: sums in pair order, then the means.
    c, k = math.fsum(clean) / n, math.fsum(corrupted) / n
    if not (math.isfinite(c) and math.isfinite(k)):
        raise NumericError(f"the baselines are not finite (clean logit diff {c}, corrupted {k})")
    if _indistinguishable(c, k):
        raise NumericError(
            f"the clean and corrupted logit differences are equal ({c} and {k}, within float32 precision); "
            "the normalised metric (ld - corrupted) / (clean - corrupted) divides by their difference. Check that "
            "the corrupted prompts differ from the clean ones and that the answers are right")
    return clean, corrupted, c, k, 1.0 / (n * (c - k))


def combine(rows: Any, *, per_pair: bool = False) -> Any:
    """The job's `attrpatch.Result` from its per-pair rows (a `ray.data.Dataset` from `pair_rows`,
    a pyarrow Table, or the folder `out=` wrote): baselines CLEAN and CORR are the means over every
    pair, the grids the sum of the pairs' raw grids over N * (CLEAN - CORR), the warnings the
    single-process job's. Every pair must appear once. Rows of an edge job give its
    `attrpatch.EdgeResult` (the blocks' edge sums added, over N * (CLEAN - CORR))."""
    import pyarrow as pa

    if isinstance(rows, (str, os.PathLike)):
        table = read_rows(rows)
    elif isinstance(rows, pa.Table):
        table = rows
    elif isinstance(rows, ray.data.Dataset):
        table = pa.concat_tables([ray.get(r) for r in rows.to_arrow_refs()])
    else:
        raise InputError(f"rows: expected a ray.data.Dataset, a pyarrow Table or an out folder, got {type(rows).__name__}")
    if table.num_rows == 0:
        raise InputError("rows: no pairs to combine")
    order = np.argsort(np.asarray(table.column("pair_id").to_pylist(), dtype=np.int64), kind="stable")
    table = table.take(pa.array(order))
    ids = table.column("pair_id").to_pylist()
    dup = [a for a, b in zip(ids, ids[1:]) if a == b]
    if dup:
        raise InputError(f"rows: pair_id {dup[0]} appears more than once; each pair must be counted once "
                         "(two pairs share an id, or blocks of two runs were mixed)")
    metas = [json.loads(m) for m in table.column("block_meta").to_pylist() if m]
    if not metas:
        raise InputError("rows: no block_meta; these are not attrpatch.ray rows")
    if "edges_raw" in table.column_names:
        _first_block_meta(table)
        return _edges.combine(table, metas, *_baselines(table))
    first_meta = _first_block_meta(table)
    for m in metas:
        for key in ("method", "metric", "hook", "layer_labels", "head_labels"):
            if m[key] != first_meta[key]:
                raise InputError(f"rows: blocks of different jobs: their {key} differs "
                                 f"({first_meta[key]!r} vs {m[key]!r})")
    clean, corrupted, c, k, norm = _baselines(table)
    n = len(clean)
    heads_pp = _stack(table.column("heads_raw").to_pylist())
    # Positions as one process pads them: to the longest prompt of the whole set.
    width = max(int(m.get("seq_len", 0)) for m in metas)
    positions_pp = _stack(table.column("positions_raw").to_pylist(), width=width)
    heads = heads_pp.sum(axis=0) * norm if heads_pp.size else np.zeros((0, 0))
    positions = positions_pp.sum(axis=0) * norm if positions_pp.size else np.zeros((0, 0))
    warnings, accuracy = _native.baseline_check(first_meta["metric"], clean.tolist(), corrupted.tolist())
    tokens = first_meta["token_labels"]
    timings: Dict[str, float] = {}
    for m in metas:
        for key, v in m["timings"].items():
            timings[key] = timings.get(key, 0.0) + float(v)
    d = {
        "method": first_meta["method"], "metric": first_meta["metric"], "hook": first_meta["hook"],
        "model": first_meta["model"], "runtime": first_meta["runtime"],
        "heads": heads.tolist(), "head_labels": first_meta["head_labels"],
        "positions": positions.tolist(),
        "position_labels": [f"{i} {tokens[i]}" if i < len(tokens) else str(i) for i in range(width)],
        "layer_labels": first_meta["layer_labels"], "hooks": first_meta["hooks"], "token_labels": tokens,
        "clean_metric": c, "corrupted_metric": k,
        "pair_metrics": np.stack([clean, corrupted], axis=1).tolist(),
        "per_pair_heads": (heads_pp * norm).tolist() if per_pair else None,
        "per_pair_positions": (positions_pp * norm).tolist() if per_pair else None,
        "prompts": [{key: table.column(key)[i].as_py() for key in _PAIR_TEXT} for i in range(n)],
        "pair_ids": ids,
        "warnings": warnings, "clean_accuracy": accuracy, "timings": timings,
        "runtime_calls": sum(int(m["runtime_calls"]) for m in metas),
        "actors": sorted({int(m["worker_pid"]) for m in metas}),
    }
    return Result._from_native(d)


def _first_block_meta(table: Any) -> Dict[str, Any]:
    """The meta of the block holding the lowest pair id: its first row (rows are sorted within a
    block), whose token labels are the first prompt's, as a single-process job labels positions."""
    first = table.column("block_meta")[0].as_py()
    if not first:
        raise InputError(f"rows: pair_id {table.column('pair_id')[0].as_py()} is not the first of its block; "
                         "these rows are not whole attrpatch.ray blocks")
    return json.loads(first)


# --- the out folder: one file per block, the settings beside them -------------------------------

def _sha256_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)


def _model_digest(model: Any) -> str:
    """SHA-256 of the model: a file's bytes and those of the files beside it named after it (its
    external data: model.onnx.data, model.onnx_data, model.data), or the bytes given."""
    h = hashlib.sha256()
    source = _inputs.model_source(model)
    if isinstance(source, bytes):
        h.update(source)
        return h.hexdigest()
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    _sha256_file(path, h)
    for other in sorted(path.parent.iterdir()):
        if other != path and other.is_file() and other.name.startswith(path.stem + ".") and \
                other.suffix not in (".json", ".jsonl", ".txt", ".md"):
            h.update(other.name.encode())
            _sha256_file(other, h)
    return h.hexdigest()


def _tokenizer_digest(model: Any, tokenizer: Any) -> Optional[str]:
    source = _inputs.tokenizer_source(tokenizer)
    if source is None:
        model_source = _inputs.model_source(model)
        if isinstance(model_source, bytes):
            return None
        beside = Path(model_source).parent / "tokenizer.json"
        source = str(beside) if beside.is_file() else None
    if source is None:
        return None
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    h = hashlib.sha256()
    _sha256_file(Path(source), h)
    return h.hexdigest()


def _pairs_digest(rows: Iterable[Dict[str, Any]]) -> Tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for r in sorted(rows, key=lambda r: r["pair_id"]):
        h.update(json.dumps([r["pair_id"]] + [r.get(k) or "" for k in _PAIR_TEXT]).encode())
        n += 1
    return h.hexdigest(), n


def _settings(model: Any, options: Dict[str, Any], job: Dict[str, Any], rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Everything that decides the numbers (block sizes, actors and threads do not)."""
    pairs_sha, n = _pairs_digest(rows)
    return {
        "attrpatch": attrpatch.__version__,
        "method": job["method"], "ig_steps": job["ig_steps"], "positions": job["positions"],
        "metric": options.get("metric", "logit-diff"), "hook": options.get("hook", "attn"),
        "heads": options.get("heads"), "bos": bool(options.get("bos", False)),
        "runtime": options.get("runtime", "ort"),
        "model_sha256": _model_digest(model),
        "tokenizer_sha256": _tokenizer_digest(model, options.get("tokenizer")),
        "pairs_sha256": pairs_sha, "pairs": n,
    }


def _fingerprint(settings: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _check_settings(out: Path, settings: Dict[str, Any]) -> None:
    """Writes out/settings.json, or refuses a folder holding another job's results."""
    f = out / "settings.json"
    if f.is_file():
        old = json.loads(f.read_text())
        for key in sorted(set(old) | set(settings)):
            if old.get(key) != settings.get(key):
                raise InputError(
                    f"{out}: holds results of a different job: its {key} is {old.get(key)!r}, this job's "
                    f"{settings.get(key)!r}; rerun with the same settings to resume, or use another out folder")
        return
    (out / "blocks").mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f"settings.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, f)


_FINGERPRINT_KEY = b"attrpatch.fingerprint"


def _block_name(ids: List[int]) -> str:
    """Deterministic: the block's first and last pair ids and a hash of all of them."""
    h = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:12]
    return f"block-{ids[0]:09d}-{ids[-1]:09d}-{h}.parquet"


def _write_block(out: Path, table: Any, fingerprint: str) -> None:
    """The block's rows as out/blocks/NAME.parquet, written whole or not at all (a temporary file
    renamed), with the job's fingerprint in the file's metadata."""
    import pyarrow.parquet as pq

    ids = table.column("pair_id").to_pylist()
    d = out / "blocks"
    d.mkdir(parents=True, exist_ok=True)
    final = d / _block_name(ids)
    tmp = d / f".{final.name}.tmp-{os.getpid()}"
    meta = dict(table.schema.metadata or {})
    meta[_FINGERPRINT_KEY] = fingerprint.encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, final)


def _block_files(out: Path) -> List[Path]:
    return sorted((out / "blocks").glob("block-*.parquet"))


def read_rows(out: Any) -> Any:
    """Every block an `out=` folder holds, as one pyarrow Table of per-pair rows (`pair_rows`'
    columns); refuses a block written by another job (its fingerprint is not settings.json's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(os.fspath(out))
    settings = out / "settings.json"
    if not settings.is_file():
        raise InputError(f"{out}: no settings.json; not an attrpatch.ray out folder")
    want = _fingerprint(json.loads(settings.read_text()))
    tables = []
    for f in _block_files(out):
        got = (pq.read_schema(f).metadata or {}).get(_FINGERPRINT_KEY, b"").decode()
        if got != want:
            raise InputError(f"{f}: written by a different job (fingerprint {got or 'none'}, {settings} says "
                             f"{want}); delete it or use another out folder")
        tables.append(pq.read_table(f))
    if not tables:
        raise InputError(f"{out}: no finished blocks in {out / 'blocks'}")
    return pa.concat_tables(tables)


def _done_ids(out: Path, fingerprint: str) -> set:
    import pyarrow.parquet as pq

    done: set = set()
    for f in _block_files(out):
        got = (pq.read_schema(f).metadata or {}).get(_FINGERPRINT_KEY, b"").decode()
        if got != fingerprint:
            raise InputError(f"{f}: written by a different job (fingerprint {got or 'none'}, this job's "
                             f"{fingerprint}); delete it or use another out folder")
        done.update(pq.read_table(f, columns=["pair_id"]).column("pair_id").to_pylist())
    return done


# --- the entry points ----------------------------------------------------------------------------

def _attrpatch_error(e: BaseException) -> Optional[Error]:
    """The attrpatch.Error a Ray failure carries (a block's data error), if any."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ray.exceptions.RayTaskError):
            todo.append(getattr(x, "cause", None))
        elif isinstance(x, Error):
            return x
        todo.extend([x.__cause__, x.__context__])
    return None


def _execute(ds: Any, keep: bool) -> Any:
    """Runs the pipeline; the rows as a pyarrow Table when `keep`. A data error in a block is raised
    as attrpatch raises it, with its message, not as a Ray traceback; the failed pipeline's actors
    are released first (a traceback kept by the caller would otherwise keep them, and their CPUs)."""
    import gc

    import pyarrow as pa

    failure = None
    try:
        if keep:
            tables = [ray.get(r) for r in ds.to_arrow_refs()]
            return pa.concat_tables(tables) if tables else None
        for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass
        return None
    except Exception as e:  # noqa: BLE001  (re-raised as is unless it carries an attrpatch.Error)
        err = _attrpatch_error(e)
        if err is None:
            raise
        failure = (type(err), getattr(err, "attrpatch_message", str(err)))
    del ds
    gc.collect()
    raise failure[0](failure[1])


def _job_run(pairs: Any, model: Any, job: Dict[str, Any], *, out: Any, per_pair: bool, return_rows: bool,
             actors: Optional[int], threads: int, block_size: int, max_restarts: int, address: Optional[str],
             options: Dict[str, Any]) -> Any:
    options = _options(options)
    _init(address)
    ds, rows = _dataset(pairs)
    kwargs = dict(method=job["method"], ig_steps=job["ig_steps"], positions=job["positions"],
                  rows_per_call=job["rows_per_call"], actors=actors, threads=threads, block_size=block_size,
                  max_restarts=max_restarts, **options)
    if out is None:
        table = _execute(pair_rows((ds, None), model, **kwargs), keep=True)
        expected = None
    else:
        out = Path(os.fspath(out))
        out.mkdir(parents=True, exist_ok=True)
        if rows is None:  # a Dataset: its pairs decide the fingerprint too
            rows = ds.select_columns(["pair_id", *_PAIR_TEXT]).take_all()
        settings = _settings(model, options, job, rows)
        _check_settings(out, settings)
        fp = _fingerprint(settings)
        done = _done_ids(out, fp)
        todo = [r for r in rows if r["pair_id"] not in done] if "index" in rows[0] else None
        if todo is None:  # rows of a Dataset: filter the Dataset itself
            done_arr = np.asarray(sorted(done), dtype=np.int64)
            ds = ds.map_batches(lambda b: {k: v[~np.isin(b["pair_id"], done_arr)] for k, v in b.items()},
                                batch_format="numpy")
            remaining = len(rows) - len(done)
        else:
            ds, remaining = ray.data.from_items(todo) if todo else None, len(todo)
        if remaining > 0:
            _execute(pair_rows((ds, None), model, _out=str(out), _fingerprint=fp, **kwargs), keep=False)
        table = read_rows(out)
        expected = {r["pair_id"] for r in rows}
    if table is None:
        raise InputError("pairs: no prompt pairs to run")
    if expected is not None:
        got = set(table.column("pair_id").to_pylist())
        if got != expected:
            missing = sorted(expected - got)
            raise InputError(f"{out}: {len(missing)} pairs have no result (pair_id {missing[0]} first)" if missing
                             else f"{out}: holds pairs this job does not have (pair_id {sorted(got - expected)[0]})")
    result = combine(table, per_pair=per_pair)
    return (result, ray.data.from_arrow(table)) if return_rows else result


def attribute(pairs: Any, model: Any, *, ig_steps: Optional[int] = None, out: Any = None,
              actors: Optional[int] = None, threads: int = 1, block_size: int = DEFAULT_BLOCK_SIZE,
              per_pair: bool = False, return_rows: bool = False, max_restarts: int = 3,
              address: Optional[str] = None, **options: Any) -> Any:
    """Attribution patching (integrated gradients with `ig_steps`) of `pairs` (a JSONL path, or a
    `ray.data.Dataset` with pair_id, clean, corrupted, correct, incorrect columns) on a Ray cluster.

    Returns the `attrpatch.Result` `attrpatch.run` gives on the same pairs (grids normalised over the
    whole set, its baselines and warnings; `per_pair=True` keeps each pair's grids), with
    `raw["pair_ids"]` the pairs' ids in row order; with `return_rows=True`, `(result, rows)`, rows a
    `ray.data.Dataset` of `pair_rows`' columns. `out`: a folder (shared by the cluster's nodes) for
    the per-block Parquet files and settings.json; a rerun skips the blocks already there. `actors`
    (default: the cluster's CPUs less one, over `threads`), `threads` (each actor's CPUs and ONNX
    Runtime threads), `block_size` (pairs per actor call), `max_restarts` (Ray restarts of a crashed
    actor), `address` (ray.init's; default: RAY_ADDRESS or a local cluster). Other options are
    `attrpatch.Attributor`'s."""
    job = _job("attribution", attrpatch._count(ig_steps, "ig_steps"), False, None)
    return _job_run(pairs, model, job, out=out, per_pair=per_pair, return_rows=return_rows, actors=actors,
                    threads=threads, block_size=block_size, max_restarts=max_restarts, address=address,
                    options=options)


def patch(pairs: Any, model: Any, *, positions: bool = False, rows_per_call: Optional[int] = None,
          out: Any = None, actors: Optional[int] = None, threads: int = 1, block_size: int = DEFAULT_BLOCK_SIZE,
          per_pair: bool = False, return_rows: bool = False, max_restarts: int = 3,
          address: Optional[str] = None, **options: Any) -> Any:
    """Exact activation patching of `pairs` on a Ray cluster (as `attrpatch.patch`; `positions=True`
    for the positions grid). Arguments and result as `attribute`."""
    job = _job("patch", None, positions, attrpatch._count(rows_per_call, "rows_per_call"))
    return _job_run(pairs, model, job, out=out, per_pair=per_pair, return_rows=return_rows, actors=actors,
                    threads=threads, block_size=block_size, max_restarts=max_restarts, address=address,
                    options=options)


_EDGE_HOOK = ("hook: edge scores are defined by the attention heads, MLPs and residual stream, not by hooks; "
              "drop hook=")


def edges(pairs: Any, model: Any, *, ig_steps: int = 1, out: Any = None, actors: Optional[int] = None,
          threads: int = 1, block_size: int = DEFAULT_BLOCK_SIZE, return_rows: bool = False, max_restarts: int = 3,
          address: Optional[str] = None, **options: Any) -> Any:
    """Every edge's score (EAP; EAP-IG-inputs with `ig_steps` > 1) of `pairs` on a Ray cluster: the
    `attrpatch.EdgeResult` `attrpatch.edges` gives on the same pairs (names, order and scores of
    `attrpatch edges`), with `raw["pair_ids"]`. Each block's edge sums are added and normalised once
    over every pair, so block sizes and actors do not change the scores. Arguments as `attribute`."""
    if options.get("hook", "attn") != "attn":
        raise InputError(_EDGE_HOOK)
    job = _job("edges", attrpatch._count(ig_steps, "ig_steps"), False, None)
    return _job_run(pairs, model, job, out=out, per_pair=False, return_rows=return_rows, actors=actors,
                    threads=threads, block_size=block_size, max_restarts=max_restarts, address=address,
                    options=options)
