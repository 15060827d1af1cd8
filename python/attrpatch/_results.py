"""The results handed to Python: numpy grids with their labels, baselines and per-pair values,
built from the plain dicts the native module returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


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
    #: [layers, positions], summed over heads and features.
    positions: np.ndarray
    #: The metric's name: logit-diff, logprob-diff, prob or kl.
    metric: str
    #: Mean metric over the clean prompts (the CLI's "Clean logit diff" for logit-diff).
    clean_metric: float
    #: Mean metric over the corrupted prompts.
    corrupted_metric: float
    #: [pairs, 2]: each pair's (clean, corrupted) metric.
    pair_metrics: np.ndarray
    #: One label per position column: "index token" of the first clean prompt.
    token_labels: List[str]
    #: One label per layer row: the hook tensor's name.
    layer_labels: List[str]
    #: The prompt pairs as run (texts are empty for token-id pairs).
    prompts: List[Dict[str, str]]
    #: [pairs, layers, heads] and [pairs, layers, positions]: each pair's share of the grids
    #: (`per_pair=True`), else None.
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
            layer_labels=list(d["layer_labels"]),
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
    #: Dimensions: int for fixed ones, str for symbolic ones ("batch", "seq").
    shape: List[Any]
    #: What it is for, e.g. "token ids of the clean prompts" or "layer 3 heads grid".
    role: str


@dataclass(frozen=True)
class Augmented:
    """A rewritten model: the metric, the backward graph and the hook outputs added.

    `model` is a standard ONNX model (`onnx.load_from_string(model)`,
    `onnxruntime.InferenceSession(model)`); `feeds(pairs)` builds its inputs."""

    #: The serialised augmented model.
    model: bytes
    metric: str
    hook: str
    #: Attention heads per layer (None when the hooks are not per-head).
    heads: Optional[int]
    #: One dict per hook: layer, tensor and how it was matched.
    hooks: List[Dict[str, Any]]
    inputs: List[TensorInfo]
    outputs: List[TensorInfo]
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def _from_native(cls, model: bytes, d: Dict[str, Any]) -> "Augmented":
        def infos(k: str) -> List[TensorInfo]:
            return [TensorInfo(t["name"], t["dtype"], list(t["shape"]), t.get("role", "")) for t in d[k]]

        return cls(
            model=model,
            metric=d["metric"],
            hook=d["hook"],
            heads=d.get("heads"),
            hooks=list(d["hooks"]),
            inputs=infos("inputs"),
            outputs=infos("outputs"),
            raw=d,
        )
