"""attrpatch: attribution patching on transformer models exported to ONNX.

    import attrpatch
    r = attrpatch.run("models/ioi-gpt2/model.onnx")     # the tutorial's 8 IOI pairs
    r.heads        # numpy [layers, heads]
    r.positions    # numpy [layers, positions], columns labelled by r.token_labels
    e = attrpatch.edges("models/ioi-gpt2/model.onnx")   # every edge's score (EAP), as `attrpatch edges`
    e.top(5)       # [(from, to, score), ...] by |score|

`model` is a path, bytes or an onnx.ModelProto; `pairs` a JSONL path, a list of
{"clean", "corrupted", "correct", "incorrect"} dicts (texts, or token-id lists with answer ids),
or a dict of token-id arrays; None runs the tutorial's 8 pairs. `Attributor` keeps the rewritten
graph and the runtime session between calls. Failures raise `attrpatch.Error` (subclasses
`InputError`, `ModelError`, `BackendError`, `NumericError`) with the command line's messages.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from . import _inputs
from ._errors import BackendError, Error, InputError, ModelError, NumericError
from ._results import Augmented, Comparison, EdgeResult, Result, TensorInfo

from . import _attrpatch as _native  # noqa: E402  (after _errors: the native module imports it)

__version__: str = _native.__version__

__all__ = [
    "Attributor",
    "Augmented",
    "BackendError",
    "Comparison",
    "EdgeResult",
    "Error",
    "InputError",
    "ModelError",
    "NumericError",
    "Result",
    "TensorInfo",
    "compare",
    "default_pairs",
    "edges",
    "inspect",
    "patch",
    "rewrite",
    "run",
    "tokenize",
]

ModelLike = Any  # str | os.PathLike | bytes | onnx.ModelProto
PairsLike = Any  # None | str | os.PathLike | list of dicts | dict of token-id arrays


def default_pairs() -> list:
    """The tutorial's 8 IOI prompt pairs (what `pairs=None` runs), as dicts."""
    return json.loads(_native.default_pairs())


class Attributor:
    """A model rewritten once for a metric and hook choice, with its runtime session kept, so
    repeated `run`/`patch`/`compare`/`edges` calls pay the set-up once.

    Args:
        model: path, bytes or onnx.ModelProto.
        metric: "logit-diff" (the tutorial's), "logprob-diff", "prob" or "kl".
        hook: "attn" (input of each attention out-projection, per head), "resid", "mlp", or a
            regex over tensor names.
        tokenizer: tokenizer.json path or bytes, or a tokenizers/transformers fast tokenizer;
            default: the tokenizer.json beside a model given as a path.
        heads: attention heads per layer, when they cannot be read from the graph.
        bos: prepend the tokenizer's BOS token to every prompt.
        device: "auto" (CUDA when ONNX Runtime has it, else CPU), "cpu", "cuda" or "cuda:N".
        runtime: "ort" (ONNX Runtime) or "tract".
        threads: intra-op threads (0: the runtime's default).
        ort_lib: the ONNX Runtime library or its folder; default: ORT_DYLIB_PATH, then this
            interpreter's onnxruntime package, then the project's .ort/ folder.
        max_memory: bytes the jobs may plan for (default: 70% of the memory available).
        batch_size: prompt pairs per runtime call of attribution (default: sized from max_memory).
        per_pair: keep each pair's grids (`Result.per_pair_heads`, `per_pair_positions`).
    """

    def __init__(
        self,
        model: ModelLike,
        *,
        metric: str = "logit-diff",
        hook: str = "attn",
        tokenizer: Any = None,
        heads: Optional[int] = None,
        bos: bool = False,
        device: str = "auto",
        runtime: str = "ort",
        threads: int = 0,
        ort_lib: Any = None,
        max_memory: Optional[int] = None,
        batch_size: Optional[int] = None,
        per_pair: bool = False,
    ) -> None:
        options = _options(
            metric=metric, hook=hook, tokenizer=tokenizer, heads=heads, bos=bos, device=device,
            runtime=runtime, threads=threads, ort_lib=ort_lib, max_memory=max_memory,
        )
        options["batch_size"] = _count(batch_size, "batch_size")
        options["per_pair"] = bool(per_pair)
        self._metric = options["metric"]
        self._native = _native.Attributor(_inputs.model_source(model), options)

    def run(self, pairs: PairsLike = None, *, ig_steps: Optional[int] = None) -> Result:
        """Attribution patching (or integrated gradients with `ig_steps`) on these pairs."""
        job = {"ig_steps": _count(ig_steps, "ig_steps")}
        kind, value = _inputs.pair_source(pairs, self._metric)
        return Result._from_native(json.loads(self._native.run(kind, value, job)))

    def patch(
        self,
        pairs: PairsLike = None,
        *,
        positions: bool = False,
        rows_per_call: Optional[int] = None,
    ) -> Result:
        """Exact activation patching: one patched run per head (and per position with `positions`)."""
        job = {"positions": bool(positions), "rows_per_call": _count(rows_per_call, "rows_per_call")}
        kind, value = _inputs.pair_source(pairs, self._metric)
        return Result._from_native(json.loads(self._native.patch(kind, value, job)))

    def compare(
        self,
        pairs: PairsLike = None,
        *,
        positions: bool = False,
        ig_steps: Optional[int] = None,
        rows_per_call: Optional[int] = None,
    ) -> Comparison:
        """Exact patching beside attribution (and integrated gradients with `ig_steps`)."""
        job = {"positions": bool(positions), "ig_steps": _count(ig_steps, "ig_steps"),
               "rows_per_call": _count(rows_per_call, "rows_per_call")}
        kind, value = _inputs.pair_source(pairs, self._metric)
        d = json.loads(self._native.compare(kind, value, job))
        ig = d.get("ig")
        return Comparison(
            exact=Result._from_native(d["exact"]),
            attribution=Result._from_native(d["attribution"]),
            ig=None if ig is None else Result._from_native(ig),
            stats=d["stats"],
        )

    def edges(self, pairs: PairsLike = None, *, ig_steps: Optional[int] = None, method: Optional[str] = None,
              convention: str = "denoising", ablation: str = "patching") -> EdgeResult:
        """Every edge's score (as `attrpatch edges [--method M] [--ig-steps N] [--convention C]
        [--ablation A]`): `method` "eap", "eap-ig-inputs", "eap-ig-activations" or "clean-corrupted"
        (default: EAP, or EAP-IG-inputs with `ig_steps` > 1; the IG methods take 5 steps unless
        `ig_steps` says). Summed over the pairs (`per_pair` does not apply); needs the default hook."""
        job = {"ig_steps": _count(ig_steps, "ig_steps"), "method": None if method is None else _str(method, "method"),
               "convention": _str(convention, "convention"), "ablation": _str(ablation, "ablation")}
        kind, value = _inputs.pair_source(pairs, self._metric)
        return EdgeResult._from_native(json.loads(self._native.edges(kind, value, job)))

    @property
    def stats(self) -> Dict[str, int]:
        """How often the set-up ran: {"graphs_built": one rewrite and session per kind of job used
        (attribution, exact patching, IG, edges per ig_steps), "jobs": jobs run}."""
        return dict(self._native.stats())


def run(model: ModelLike, pairs: PairsLike = None, *, ig_steps: Optional[int] = None, **options: Any) -> Result:
    """Attribution patching on `pairs` (default: the tutorial's 8). Options as for `Attributor`."""
    return Attributor(model, **options).run(pairs, ig_steps=ig_steps)


def patch(model: ModelLike, pairs: PairsLike = None, *, positions: bool = False,
          rows_per_call: Optional[int] = None, **options: Any) -> Result:
    """Exact activation patching on `pairs`. Options as for `Attributor`."""
    return Attributor(model, **options).patch(pairs, positions=positions, rows_per_call=rows_per_call)


def compare(model: ModelLike, pairs: PairsLike = None, *, positions: bool = False,
            ig_steps: Optional[int] = None, rows_per_call: Optional[int] = None, **options: Any) -> Comparison:
    """Exact patching beside attribution (and IG). Options as for `Attributor`."""
    return Attributor(model, **options).compare(pairs, positions=positions, ig_steps=ig_steps,
                                                 rows_per_call=rows_per_call)


def edges(model: ModelLike, pairs: PairsLike = None, *, ig_steps: Optional[int] = None,
          method: Optional[str] = None, convention: str = "denoising", ablation: str = "patching",
          **options: Any) -> EdgeResult:
    """Every edge's score on `pairs`, as `attrpatch edges` (method, steps, convention and ablation
    as `Attributor.edges`). Options as for `Attributor`."""
    return Attributor(model, **options).edges(pairs, ig_steps=ig_steps, method=method, convention=convention,
                                              ablation=ablation)


def rewrite(model: ModelLike, *, metric: str = "logit-diff", hook: str = "attn",
            heads: Optional[int] = None) -> Augmented:
    """The augmented model as bytes, with the description of its inputs and outputs, without
    running it (as `attrpatch rewrite`)."""
    options = {"metric": _str(metric, "metric"), "hook": _str(hook, "hook"), "heads": _count(heads, "heads")}
    model_bytes, description, native = _native.rewrite(_inputs.model_source(model), options)
    return Augmented._from_native(model_bytes, json.loads(description), native)


def inspect(model: ModelLike, *, hook: Optional[str] = None) -> Dict[str, Any]:
    """What attrpatch sees in a model (as `attrpatch inspect`): inputs, outputs, layers, heads,
    the hooks and how each was found, and the ops between the hooks and the logits. `text`
    holds the command line's listing."""
    return json.loads(_native.inspect(_inputs.model_source(model), None if hook is None else _str(hook, "hook")))


def tokenize(pairs: PairsLike = None, *, tokenizer: Any, bos: bool = False,
             metric: str = "logit-diff") -> Dict[str, list]:
    """Text pairs (default: the tutorial's 8) as token ids, checked as a job checks them
    (single-token distinct answers, clean and corrupted prompts of equal length): a dict
    {"clean", "corrupted", "correct", "incorrect"} that `run`, `patch` and `Augmented.feeds`
    take as `pairs`."""
    source = _inputs.tokenizer_source(tokenizer)
    if source is None:
        raise InputError("tokenize: give a tokenizer (a tokenizer.json path or its bytes)")
    kind, value = _inputs.pair_source(pairs, _str(metric, "metric"))
    if kind == "tokens":
        raise InputError("tokenize: these pairs are token ids already")
    clean, corrupted, correct, incorrect = _native.tokenize(source, kind, value, bool(bos), metric)
    return {"clean": clean, "corrupted": corrupted, "correct": correct, "incorrect": incorrect}


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _count(value: Any, name: str) -> Optional[int]:
    """None, or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InputError(f"{name}: expected a whole number >= 1, got {type(value).__name__} {value!r}")
    n = int(value.__index__())
    if n < 1:
        raise InputError(f"{name}: expected a whole number >= 1, got {n}")
    return n


def _options(*, metric: Any, hook: Any, tokenizer: Any, heads: Any, bos: Any, device: Any, runtime: Any,
             threads: Any, ort_lib: Any, max_memory: Any) -> Dict[str, Any]:
    if isinstance(threads, bool) or not hasattr(threads, "__index__") or int(threads) < 0:
        raise InputError(f"threads: expected a whole number >= 0 (0: the runtime's default), got {threads!r}")
    return {
        "metric": _str(metric, "metric"),
        "hook": _str(hook, "hook"),
        "tokenizer": _inputs.tokenizer_source(tokenizer),
        "heads": _count(heads, "heads"),
        "bos": bool(bos),
        "device": _str(device, "device"),
        "runtime": _str(runtime, "runtime"),
        "threads": int(threads),
        "ort_lib": _inputs.ort_library(ort_lib),
        "max_memory": _count(max_memory, "max_memory"),
    }
