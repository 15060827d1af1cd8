"""Normalising what a user passes (models, tokenizers, prompt pairs, the ONNX Runtime library)
into the few plain forms the native module takes: str paths, bytes, lists of str and int."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ._errors import InputError

PAIR_KEYS = ("clean", "corrupted", "correct", "incorrect")
_EXPECTED_PAIRS = (
    "a JSONL file path, a list of {'clean', 'corrupted', 'correct', 'incorrect'} dicts "
    "(texts, or token-id lists with answer ids), or a dict of token-id arrays "
    "{'clean': [N, S], 'corrupted': [N, S], 'correct': [N], 'incorrect': [N]}"
)


def model_source(model: Any, what: str = "model") -> Union[str, bytes]:
    """A path (str) or the serialised model (bytes), from a path, bytes or an onnx.ModelProto.

    onnx is never imported here: a ModelProto is recognised by its type name and serialised with
    its own SerializeToString."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return path
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if type(model).__name__ == "ModelProto" and hasattr(model, "SerializeToString"):
        try:
            return model.SerializeToString()
        except ValueError as e:  # protobuf refuses messages over 2 GB
            raise InputError(
                f"{what}: the onnx.ModelProto cannot be serialised ({e}); save it with external data "
                "(onnx.save_model(m, path, save_as_external_data=True)) and pass the path"
            ) from None
    raise InputError(
        f"{what}: expected a path (str or os.PathLike), bytes or an onnx.ModelProto, "
        f"got {type(model).__name__}"
    )


def tokenizer_source(tokenizer: Any) -> Union[None, str, bytes]:
    """None (the tokenizer.json beside the model), a path, or tokenizer.json's content as bytes.

    Accepts a `tokenizers.Tokenizer` and a transformers fast tokenizer (their JSON is taken with
    `to_str()`), without importing either package."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, os.PathLike)):
        return os.fsdecode(os.fspath(tokenizer))
    if isinstance(tokenizer, (bytes, bytearray, memoryview)):
        return bytes(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # transformers' fast tokenizers
    if callable(getattr(backend, "to_str", None)):
        return backend.to_str().encode("utf-8")
    raise InputError(
        "tokenizer: expected a tokenizer.json path, its content as bytes, a tokenizers.Tokenizer or a "
        f"transformers fast tokenizer, got {type(tokenizer).__name__}"
    )


def _is_int(x: Any) -> bool:
    # numpy integer scalars have __index__; bool is excluded (a True answer id is a mistake).
    return not isinstance(x, bool) and hasattr(x, "__index__") and not isinstance(x, (str, bytes))


def _ids(value: Any, where: str) -> List[int]:
    """A 1-D sequence of token ids as a list of int."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InputError(f"{where}: expected a sequence of token ids, got {type(value).__name__}")
    out = []
    for k, x in enumerate(value):
        if not _is_int(x):
            raise InputError(f"{where}[{k}]: expected a token id (int), got {type(x).__name__} {x!r}")
        out.append(int(x.__index__()))
    return out


def _answer_id(value: Any, where: str) -> int:
    if _is_int(value):
        return int(value.__index__())
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == 1:
        return _answer_id(value[0], where)
    raise InputError(
        f"{where}: with token-id prompts the answer is a token id (int), got {type(value).__name__} {value!r}"
    )


TextPairs = List[Tuple[str, str, str, str]]
TokenPairs = Tuple[List[List[int]], List[List[int]], List[int], List[int]]


def _optional_answers(metric: str) -> Tuple[str, ...]:
    """The answers `metric` does not read: kl reads none, prob only the correct one."""
    return {"kl": ("correct", "incorrect"), "prob": ("incorrect",)}.get(metric, ())


def pair_source(pairs: Any, metric: str = "logit-diff") -> Tuple[str, Any]:
    """One of ("default", None), ("file", path), ("texts", [(clean, corrupted, correct, incorrect)])
    or ("tokens", (clean_ids, corrupted_ids, correct_ids, incorrect_ids)). A token-id answer the
    metric does not read may be left out (it becomes id 0, never read)."""
    optional = _optional_answers(metric)
    if pairs is None:
        return "default", None
    if isinstance(pairs, (str, os.PathLike)):
        return "file", os.fsdecode(os.fspath(pairs))
    if isinstance(pairs, dict):
        return "tokens", _token_arrays(pairs, optional, metric)
    if isinstance(pairs, (bytes, bytearray)) or not hasattr(pairs, "__iter__"):
        raise InputError(f"pairs: expected {_EXPECTED_PAIRS}; got {type(pairs).__name__}")
    items = list(pairs)
    if not items:
        raise InputError("pairs: the list is empty; give at least one prompt pair (or None for the tutorial's 8)")
    for i, p in enumerate(items):
        if not isinstance(p, dict):
            raise InputError(f"pairs[{i}]: expected a dict with keys {', '.join(PAIR_KEYS)}; got {type(p).__name__}")
        unknown = [k for k in p if k not in PAIR_KEYS]
        if unknown:
            raise InputError(f"pairs[{i}]: unknown key {unknown[0]!r}; the keys are {', '.join(PAIR_KEYS)}")
        for k in ("clean", "corrupted"):
            if k not in p:
                raise InputError(f"pairs[{i}]: missing {k!r}")
    textual = [isinstance(p["clean"], str) for p in items]
    if all(textual):
        return "texts", [_text_pair(p, i) for i, p in enumerate(items)]
    if not any(textual):
        return "tokens", _token_pairs(items, optional, metric)
    first_text = textual.index(True) if not textual[0] else textual.index(False)
    raise InputError(
        f"pairs[{first_text}]: pairs mix texts and token ids; give all as texts or all as token ids"
    )


def _text_pair(p: Dict[str, Any], i: int) -> Tuple[str, str, str, str]:
    out = []
    for k in PAIR_KEYS:
        v = p.get(k, "")  # answers may be missing: only the kl metric reads none
        if not isinstance(v, str):
            raise InputError(f"pairs[{i}][{k!r}]: expected a string like the other texts, got {type(v).__name__} {v!r}")
        out.append(v)
    return tuple(out)  # type: ignore[return-value]


def _missing_answer(where: str, key: str, metric: str) -> InputError:
    return InputError(f"{where}: no {key!r} answer id; the metric {metric} reads it (only kl runs without answers)")


def _token_pairs(items: List[Dict[str, Any]], optional: Tuple[str, ...], metric: str) -> TokenPairs:
    clean, corrupted = [], []
    answers: Dict[str, List[int]] = {"correct": [], "incorrect": []}
    for i, p in enumerate(items):
        clean.append(_ids(p["clean"], f"pairs[{i}]['clean']"))
        corrupted.append(_ids(p["corrupted"], f"pairs[{i}]['corrupted']"))
        for k, out in answers.items():
            if k in p:
                out.append(_answer_id(p[k], f"pairs[{i}][{k!r}]"))
            elif k in optional:
                out.append(0)
            else:
                raise _missing_answer(f"pairs[{i}]", k, metric)
    return clean, corrupted, answers["correct"], answers["incorrect"]


def _token_arrays(d: Dict[str, Any], optional: Tuple[str, ...], metric: str) -> TokenPairs:
    unknown = [k for k in d if k not in PAIR_KEYS]
    if unknown:
        raise InputError(f"pairs: unknown key {unknown[0]!r}; the keys are {', '.join(PAIR_KEYS)}")
    for k in ("clean", "corrupted"):
        if k not in d:
            raise InputError(f"pairs: missing {k!r} (an [N, S] array of token ids)")
    clean = [_ids(row, f"pairs['clean'][{i}]") for i, row in enumerate(d["clean"])]
    corrupted = [_ids(row, f"pairs['corrupted'][{i}]") for i, row in enumerate(d["corrupted"])]
    n = len(clean)
    if n == 0:
        raise InputError("pairs['clean']: no rows; give at least one prompt pair")
    if len(corrupted) != n:
        raise InputError(f"pairs: {n} clean rows but {len(corrupted)} corrupted rows; they come in pairs")

    def answers(k: str) -> List[int]:
        if k not in d:
            if k in optional:
                return [0] * n
            raise _missing_answer("pairs", k, metric)
        a = [_answer_id(x, f"pairs[{k!r}][{i}]") for i, x in enumerate(d[k])]
        if len(a) != n:
            raise InputError(f"pairs[{k!r}]: {len(a)} answer ids for {n} prompt pairs")
        return a

    return clean, corrupted, answers("correct"), answers("incorrect")


def _onnxruntime_capi() -> Optional[Path]:
    """The capi folder of the onnxruntime (or onnxruntime-gpu) package this interpreter would import,
    found without importing it."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    capi = Path(spec.origin).parent / "capi"
    names = ("libonnxruntime.so*", "libonnxruntime*.dylib", "onnxruntime.dll")
    if any(any(capi.glob(n)) for n in names):
        return capi
    return None


def ort_library(explicit: Any) -> Optional[str]:
    """The ONNX Runtime library to load, or None for the library's own search.

    Order: the `ort_lib` argument; ORT_DYLIB_PATH (None here: the library reads it); the onnxruntime
    package of this interpreter (so a process that also imports onnxruntime loads one version); then
    the command line's own search (the project's .ort/ folder, `python3 -c 'import onnxruntime'`)."""
    if explicit is not None:
        return os.fsdecode(os.fspath(explicit))
    if os.environ.get("ORT_DYLIB_PATH"):
        return None
    capi = _onnxruntime_capi()
    return str(capi) if capi is not None else None
