"""The package's grids equal the command line's on the bundled model (same library, same
runtime version: CI installs onnxruntime 1.31.1, which tools/fetch-ort.sh also fetches).

Tolerance: relative 1e-5, absolute 1e-7 of the normalised metric. The two processes run the same
graph on the same ONNX Runtime version; only the order of float reductions inside ONNX Runtime can
differ between processes, far below that."""

from __future__ import annotations

import json

import numpy as np
import pytest

import attrpatch
from conftest import ROOT, missing, run_cli

RTOL, ATOL = 1e-5, 1e-7


def results(out_dir) -> dict:
    return json.loads((out_dir / "results.json").read_text())


def test_run_grids_equal_the_cli(cli, model_path, tmp_path):
    run_cli(cli, "run", "--model", str(model_path), "--device", "cpu", "--out", str(tmp_path))
    want = results(tmp_path)
    got = attrpatch.run(model_path, device="cpu")
    np.testing.assert_allclose(got.heads, np.array(want["heads"]["values"]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.positions, np.array(want["positions"]["values"]), rtol=RTOL, atol=ATOL)
    assert got.heads.shape == (3, 4) and got.positions.shape == (3, 14)
    assert got.clean_metric == pytest.approx(want["clean_logit_diff"], rel=RTOL)
    assert got.corrupted_metric == pytest.approx(want["corrupted_logit_diff"], rel=RTOL)
    assert got.position_labels == want["positions"]["cols"]
    assert [p["clean"] for p in got.prompts] == [p["clean"] for p in want["prompts"]]
    # The per-pair baselines average to the job's.
    assert got.pair_metrics.shape == (8, 2)
    assert got.pair_metrics[:, 0].mean() == pytest.approx(got.clean_metric, rel=1e-9)


def test_patch_grids_equal_the_cli(cli, model_path, tmp_path):
    run_cli(cli, "patch", "--positions", "--model", str(model_path), "--device", "cpu", "--out", str(tmp_path))
    want = results(tmp_path)
    got = attrpatch.patch(model_path, positions=True, device="cpu")
    assert got.method == "Activation patching (exact)"
    np.testing.assert_allclose(got.heads, np.array(want["heads"]["values"]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.positions, np.array(want["positions"]["values"]), rtol=RTOL, atol=ATOL)


def test_integrated_gradients_equal_the_cli(cli, model_path, tmp_path):
    run_cli(cli, "run", "--ig-steps", "4", "--model", str(model_path), "--device", "cpu", "--out", str(tmp_path))
    want = results(tmp_path)
    got = attrpatch.run(model_path, ig_steps=4, device="cpu")
    assert got.method == "Integrated gradients (4 steps)"
    np.testing.assert_allclose(got.heads, np.array(want["heads"]["values"]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.positions, np.array(want["positions"]["values"]), rtol=RTOL, atol=ATOL)


def test_inspect_text_equals_the_cli(cli, model_path):
    want = run_cli(cli, "inspect", str(model_path)).stdout
    got = attrpatch.inspect(model_path)
    assert got["text"].strip() == want.strip()
    assert got["heads"] == 4 and len(got["hooks"]) == 3


def edges_json(out_dir) -> dict:
    return json.loads((out_dir / "edges.json").read_text())


@pytest.mark.parametrize("flags,kwargs,label", [
    (["--method", "eap-ig-activations", "--ig-steps", "2"], dict(method="eap-ig-activations", ig_steps=2),
     "EAP-IG-activations"),
    (["--method", "clean-corrupted", "--convention", "noising"], dict(method="clean-corrupted", convention="noising"),
     "clean-corrupted"),
    (["--method", "eap-ig-activations", "--convention", "noising", "--ablation", "mean-positional"],
     dict(method="eap-ig-activations", convention="noising", ablation="mean-positional"), "EAP-IG-activations"),
])
def test_edge_methods_equal_the_cli(cli, model_path, tmp_path, flags, kwargs, label):
    """`method`, `convention` and `ablation` as the command line's flags: the same edges.json."""
    run_cli(cli, "edges", *flags, "--model", str(model_path), "--device", "cpu", "--out", str(tmp_path))
    want = edges_json(tmp_path)
    got = attrpatch.edges(model_path, device="cpu", **kwargs)
    assert got.method == want["method"] == label
    assert got.ig_steps == want["ig_steps"] == kwargs.get("ig_steps", 5 if "ig" in kwargs["method"] else 1)
    np.testing.assert_allclose(got.scores, [e["score"] for e in want["edges"]], rtol=RTOL, atol=ATOL)


def test_edge_method_errors_name_the_argument(model_path):
    with pytest.raises(attrpatch.InputError, match="method 'eap-ig'"):
        attrpatch.edges(model_path, method="eap-ig", device="cpu")
    with pytest.raises(attrpatch.InputError, match="--method eap with --ig-steps 4"):
        attrpatch.edges(model_path, method="eap", ig_steps=4, device="cpu")


@pytest.mark.parametrize("ig_steps", [1, 3])
def test_edges_equal_the_cli(cli, model_path, tmp_path, ig_steps):
    """Names, order and scores of edges.json (EAP, and EAP-IG with 3 steps) on the tutorial's pairs."""
    run_cli(cli, "edges", "--ig-steps", str(ig_steps), "--model", str(model_path), "--device", "cpu",
            "--out", str(tmp_path))
    want = edges_json(tmp_path)
    got = attrpatch.edges(model_path, ig_steps=ig_steps, device="cpu")
    assert got.method == want["method"] == ("EAP" if ig_steps == 1 else "EAP-IG-inputs")
    for key in ("ig_steps", "metric", "layers", "heads", "kv_heads", "parallel"):
        assert getattr(got, key) == want[key], key
    assert got.edges == [(e["from"], e["to"]) for e in want["edges"]]
    assert len(got.edges) == 262
    np.testing.assert_allclose(got.scores, [e["score"] for e in want["edges"]], rtol=RTOL, atol=ATOL)
    assert got.nodes == [n["node"] for n in want["nodes"]]
    np.testing.assert_allclose(got.node_scores, [n["score"] for n in want["nodes"]], rtol=RTOL, atol=ATOL)
    # edges.csv holds the same edges; the top ones by |score| in the same order.
    rows = [line.split(",") for line in (tmp_path / "edges.csv").read_text().splitlines()[1:]]
    assert [(a, b) for a, b, _ in rows] == got.edges
    by_size = sorted(rows, key=lambda r: -abs(float(r[2])))[:5]
    assert [(a, b) for a, b, _ in got.top(5)] == [(a, b) for a, b, _ in by_size]
    assert got.score("a2.h2", "logits") == pytest.approx(got.scores[got.edges.index(("a2.h2", "logits"))])
    assert got.pair_metrics.shape == (8, 2)
    # Plain EAP's identity: each head's outgoing edges sum to its node attribution.
    if ig_steps == 1:
        for layer in range(3):
            for head in range(4):
                name = f"a{layer}.h{head}"
                assert got.node_scores[got.nodes.index(name)] == pytest.approx(got.head_attribution[layer, head],
                                                                              rel=1e-4, abs=1e-6)
    else:
        assert got.head_attribution.size == 0


def test_gqa_key_value_readers_are_named_and_read_by_their_old_names():
    """Under grouped-query attention the key/value readers are `a{l}.kv{g}.k|v`, in Python as in
    edges.json; `score` also reads the name earlier versions gave them (`a{l}.h{g}.k`)."""
    model = ROOT / "tests" / "fixtures" / "arch" / "llama-legacy-op14.onnx"
    reference = ROOT / "tests" / "fixtures" / "edges" / "llama-legacy-op14.json"
    if not model.is_file() or not reference.is_file():
        missing(f"the Llama fixture {model} or its edge reference is missing")
    ref = json.loads(reference.read_text())
    pairs = [{"clean": c, "corrupted": k, "correct": a, "incorrect": b}
             for c, k, (a, b) in zip(ref["input_ids"], ref["corrupted_ids"], ref["answer_ids"])]
    got = attrpatch.edges(model, pairs, device="cpu")
    assert (got.heads, got.kv_heads) == (4, 2)
    assert ("input", "a1.kv1.v") in got.edges and ("input", "a1.h1.v") not in got.edges
    # The names and order of the PyTorch reference (tools/edge_reference.py).
    assert got.edges == [(e["from"], e["to"]) for e in ref["eap"]]
    assert got.score("input", "a1.h1.v") == got.score("input", "a1.kv1.v") != 0.0
    with pytest.raises(attrpatch.InputError, match=r"readers a\{l\}\.h\{h\}\.q, a\{l\}\.kv\{g\}\.k\|v"):
        got.score("input", "a1.h3.k")
