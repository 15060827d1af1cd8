"""The results handed to Python: numpy grids with their labels, baselines and per-pair values,
built from the plain dicts the native module returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._errors import InputError
from . import _attrpatch as _native  # after _errors, which the native module imports


def _grid(rows: Any) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class Result:
    """One method's grids on one set of prompt pairs.

    `heads[l, h]` and `positions[l, p]` are in units of the normalised metric (clean = 1,
    corrupted = 0), as the command line's heads.csv and positions.csv."""

    #: "attribution", "integrated gradients (N steps)" or "exact patching".
    method: str
    #: [layers, heads] at each pair's last position (empty when the hooks have no heads).
    heads: np.ndarray
    #: [layers, positions], summed over heads and features (empty when the job computed none:
    #: exact patching without `positions=True`).
    positions: np.ndarray
    #: The metric's name: logit-diff, logprob-diff, prob or kl.
    metric: str
    #: Mean metric over the clean prompts, not normalised (the CLI's "Clean logit diff").
    clean_metric: float
    #: Mean metric over the corrupted prompts.
    corrupted_metric: float
    #: [pairs, 2]: each pair's (clean, corrupted) metric.
    pair_metrics: np.ndarray
    #: The first clean prompt's tokens, one per position (empty for token ids).
    token_labels: List[str]
    #: One label per positions column: "index token", as the CLI's positions.csv header.
    position_labels: List[str]
    #: One label per row: the layer numbers.
    layer_labels: List[str]
    #: One dict per layer: the hook tensor, its node, and how it was found.
    hooks: List[Dict[str, Any]]
    #: The prompt pairs as run (texts are empty for token-id pairs).
    prompts: List[Dict[str, str]]
    #: [pairs, layers, heads] and [pairs, layers, positions]: each pair's share of the grids
    #: (they sum over the pairs to `heads` and `positions`), with `per_pair=True`; else None.
    per_pair_heads: Optional[np.ndarray]
    per_pair_positions: Optional[np.ndarray]
    #: The baseline warnings the CLI prints (a small or reversed clean-corrupted gap, ...).
    warnings: List[str]
    #: What ran the graph, e.g. "onnxruntime 1.31.1 (CPU)".
    runtime: str
    #: Seconds spent in load, rewrite, session and run for this call (0 for what was reused).
    timings: Dict[str, float]
    #: Runtime calls this job made.
    runtime_calls: int
    #: Everything the native result holds, as a dict (the CLI's results.json fields).
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def _from_native(cls, d: Dict[str, Any]) -> "Result":
        def opt(k: str) -> Optional[np.ndarray]:
            return None if d.get(k) is None else _grid(d[k])

        return cls(
            method=d["method"],
            heads=_grid(d["heads"]),
            positions=_grid(d["positions"]),
            metric=d["metric"],
            clean_metric=float(d["clean_metric"]),
            corrupted_metric=float(d["corrupted_metric"]),
            pair_metrics=_grid(d["pair_metrics"]).reshape(-1, 2),
            token_labels=list(d["token_labels"]),
            position_labels=list(d["position_labels"]),
            layer_labels=list(d["layer_labels"]),
            hooks=list(d["hooks"]),
            prompts=list(d["prompts"]),
            per_pair_heads=opt("per_pair_heads"),
            per_pair_positions=opt("per_pair_positions"),
            warnings=list(d["warnings"]),
            runtime=d["runtime"],
            timings=dict(d["timings"]),
            runtime_calls=int(d["runtime_calls"]),
            raw=d,
        )


@dataclass(frozen=True)
class EdgeResult:
    """Every edge's score (EAP, or EAP-IG with `ig_steps` > 1), as `attrpatch edges` writes them
    in edges.json: the same names, order and numbers.

    `scores[i]` is edge `edges[i]`'s score, in units of the normalised metric (summed over the
    pairs, divided by N (CLEAN - CORR), as the grids are). Writers are `input`, `a{l}.h{h}` and
    `m{l}`; readers `a{l}.h{h}.q|k|v` (under grouped-query attention `a{l}.h{h}.q` and the
    key/value heads' `a{l}.kv{g}.k|v`), `m{l}` and `logits` (docs/src/edges.md)."""

    #: "EAP", "EAP-IG-inputs", "EAP-IG-activations" or "clean-corrupted".
    method: str
    #: Integration steps (1 = plain EAP).
    ig_steps: int
    #: The metric's name as edges.json gives it, e.g. "logit diff".
    metric: str
    layers: int
    #: Query heads per layer.
    heads: int
    #: Key/value heads per layer (= heads without grouped-query attention).
    kv_heads: int
    #: Whether attention and MLP read the same residual (GPT-J, GPT-NeoX, Falcon).
    parallel: bool
    #: (from, to) of every edge: writers in residual order, then readers in residual order.
    edges: List[Tuple[str, str]]
    #: [edges]: each edge's score.
    scores: np.ndarray
    #: Every writer, in residual order.
    nodes: List[str]
    #: [nodes]: the sum of each writer's outgoing edge scores.
    node_scores: np.ndarray
    #: [layers, heads] (plain EAP only; empty with EAP-IG): each head's node attribution summed over
    #: positions, which equals the sum of its outgoing edge scores.
    head_attribution: np.ndarray
    #: Mean metric over the clean prompts, not normalised.
    clean_metric: float
    #: Mean metric over the corrupted prompts.
    corrupted_metric: float
    #: [pairs, 2]: each pair's (clean, corrupted) metric.
    pair_metrics: np.ndarray
    #: The baseline warnings `run` gives for these pairs.
    warnings: List[str]
    #: What ran the graph, e.g. "onnxruntime 1.31.1 (CPU)".
    runtime: str
    #: Seconds spent in load, rewrite, session and run for this call (0 for what was reused).
    timings: Dict[str, Any]
    #: Runtime calls this job made.
    runtime_calls: int
    #: Everything the native result holds (edges.json's fields, and `unnormalised`: each edge's
    #: sum before the division by N (CLEAN - CORR)).
    raw: Dict[str, Any] = field(repr=False)

    def top(self, k: int = 20) -> List[Tuple[str, str, float]]:
        """The `k` edges of largest |score| as (from, to, score), largest first (ties in edge
        order, as `attrpatch edges` prints them)."""
        order = sorted(range(len(self.edges)), key=lambda i: -abs(self.scores[i]))
        return [(*self.edges[i], float(self.scores[i])) for i in order[:k]]

    def score(self, source: str, target: str) -> float:
        """The score of edge `source -> target` (e.g. "a0.h2", "a1.h0.v"; under grouped-query
        attention "a1.kv0.v", which earlier versions named "a1.h0.v": that name is read too)."""
        target = self._reader_name(target)
        for (a, b), v in zip(self.edges, self.scores):
            if a == source and b == target:
                return float(v)
        readers = "a{l}.h{h}.q, a{l}.kv{g}.k|v" if self.kv_heads < self.heads else "a{l}.h{h}.q|k|v"
        raise InputError(f"no edge {source} -> {target} in this model's {len(self.edges)} edges; writers are "
                         f"input, a{{l}}.h{{h}} and m{{l}}, readers {readers}, m{{l}} and logits")

    def _reader_name(self, name: str) -> str:
        """Today's name of a reader (`Topology::parse_reader`): under grouped-query attention earlier
        versions named key/value head g's key reader "a{l}.h{g}.k"; it is "a{l}.kv{g}.k"."""
        today = _native.reader_name(name, self.layers, self.heads, self.kv_heads, self.parallel)
        return name if today is None else today
    @classmethod
    def _from_native(cls, d: Dict[str, Any]) -> "EdgeResult":
        return cls(
            method=d["method"],
            ig_steps=int(d["ig_steps"]),
            metric=d["metric"],
            layers=int(d["layers"]),
            heads=int(d["heads"]),
            kv_heads=int(d["kv_heads"]),
            parallel=bool(d["parallel"]),
            edges=[(e["from"], e["to"]) for e in d["edges"]],
            scores=np.array([e["score"] for e in d["edges"]], dtype=np.float64),
            nodes=[n["node"] for n in d["nodes"]],
            node_scores=np.array([n["score"] for n in d["nodes"]], dtype=np.float64),
            head_attribution=_grid(d["head_attribution"]),
            clean_metric=float(d["clean_metric"]),
            corrupted_metric=float(d["corrupted_metric"]),
            pair_metrics=_grid(d["pair_metrics"]).reshape(-1, 2),
            warnings=list(d["warnings"]),
            runtime=d["runtime"],
            timings=dict(d["timings"]),
            runtime_calls=int(d["runtime_calls"]),
            raw=d,
        )


@dataclass(frozen=True)
class Comparison:
    """Exact patching beside attribution (and integrated gradients), as `attrpatch compare`."""

    exact: Result
    attribution: Result
    #: With `ig_steps`, else None.
    ig: Optional[Result]
    #: Per estimate and grid: Pearson, Spearman, mean and largest errors (compare.json's fields).
    stats: Dict[str, Any]


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of an augmented model."""

    name: str
    #: ONNX element type name, e.g. "float32", "int64".
    dtype: str
    #: Dimensions: int for fixed ones, str for symbolic ones ("batch", "sequence"), None for
    #: unknown ones; None when not even the rank is known.
    shape: Optional[List[Any]]


@dataclass(frozen=True)
class Augmented:
    """A rewritten model: the metric, the backward graph and the hook outputs added.

    `model` is a standard ONNX model (`onnx.load_from_string(model)`,
    `onnxruntime.InferenceSession(model)`); `feeds(pairs)` builds its inputs for token-id pairs,
    the answer selectors following the model's metric.

    Inputs: `clean.<model input>` and `corrupted.<model input>` (input_ids, attention_mask,
    position_ids as the model has them), `attrpatch.last_position_onehot` [B, 1, S],
    `attrpatch.answer_onehot` [B, V, 1], `attrpatch.pair_weights` [B, 1]. Outputs: the metric's
    batch means `attrpatch.clean_logit_diff`, `attrpatch.corrupted_logit_diff` (names kept
    whatever the metric), `attrpatch.metric`, per pair `attrpatch.clean_logit_diffs` and
    `attrpatch.corrupted_logit_diffs` [1, B]; per layer L `attrpatch.clean_act.L`,
    `attrpatch.corrupted_act.L` and `attrpatch.grad.L` (the gradient of the normalised metric),
    and `attrpatch.heads.L` [B, H], `attrpatch.positions.L` [B, S]."""

    #: The serialised augmented model.
    model: bytes
    metric: str
    hook: str
    #: Attention heads per layer (None when the hooks are not per-head).
    heads: Optional[int]
    #: The model's vocabulary size.
    vocab: int
    #: One dict per hook: layer, tensor and how it was matched.
    hooks: List[Dict[str, Any]]
    inputs: List[TensorInfo]
    outputs: List[TensorInfo]
    raw: Dict[str, Any] = field(repr=False)
    _native: Any = field(repr=False, default=None)

    def feeds(self, pairs: Any) -> Dict[str, np.ndarray]:
        """Every input of one run over token-id `pairs` (a list of dicts or a dict of arrays, as
        for `attrpatch.run`), by name, as numpy arrays to pass to onnxruntime."""
        from . import _inputs

        kind, value = _inputs.pair_source(pairs, self.metric)
        if kind != "tokens":
            raise InputError(
                "Augmented.feeds takes token-id pairs (the augmented model has no tokenizer); got "
                + ("the default text pairs" if kind == "default" else f"{kind} pairs")
            )
        raw = self._native.feeds(value)
        return {name: np.frombuffer(b, dtype=np.dtype(dt).newbyteorder("<")).reshape(shape).astype(dt)
                for name, (dt, shape, b) in raw.items()}

    @classmethod
    def _from_native(cls, model: bytes, d: Dict[str, Any], native: Any) -> "Augmented":
        def infos(k: str) -> List[TensorInfo]:
            return [TensorInfo(t["name"], t.get("dtype"), t.get("shape")) for t in d[k]]

        return cls(
            model=model,
            metric=d["metric"],
            hook=d["hook"],
            heads=d.get("heads"),
            vocab=int(d["vocab"]),
            hooks=list(d["hooks"]),
            inputs=infos("inputs"),
            outputs=infos("outputs"),
            raw=d,
            _native=native,
        )
