"""`rewrite`'s model runs in Python's onnxruntime, and the grids computed in numpy from its
outputs (gradient x (clean - corrupted), summed as docs/src/method.md describes) equal attrpatch.run's.

Tolerance: relative 1e-4, absolute 1e-6 of the normalised metric (the job sums per batch in
float64; here numpy sums the float32 outputs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import attrpatch

TOKENIZER = "tokenizer.json"


@pytest.fixture(scope="module")
def tokens(model_path):
    return attrpatch.tokenize(tokenizer=model_path.parent / TOKENIZER)


def grids_from_outputs(out: dict, layers: int, heads: int, pairs: int, seq: int):
    """heads [layer, head] at the last position and positions [layer, position] from the raw
    hook outputs (the out-projection's Gemm input: [pairs * seq, features]): the attribution
    grad * (clean - corrupted), summed over the pairs."""
    hg, pg = [], []
    for layer in range(layers):
        clean = out[f"attrpatch.clean_act.{layer}"].astype(np.float64)
        corrupted = out[f"attrpatch.corrupted_act.{layer}"].astype(np.float64)
        grad = out[f"attrpatch.grad.{layer}"].astype(np.float64)
        a = (grad * (clean - corrupted)).reshape(pairs, seq, -1)
        b, s, d = a.shape
        hg.append(a[:, -1, :].reshape(b, heads, d // heads).sum(axis=(0, 2)))
        pg.append(a.sum(axis=(0, 2)))
    return np.array(hg), np.array(pg)


def test_rewrite_runs_in_onnxruntime_and_reproduces_the_grids(model_path, tokens):
    aug = attrpatch.rewrite(model_path)
    assert aug.metric == "logit-diff" and aug.hook == "attn" and aug.heads == 4 and len(aug.hooks) == 3
    model = onnx.load_from_string(aug.model)
    assert [i.name for i in model.graph.input] == [i.name for i in aug.inputs]
    assert [o.name for o in model.graph.output] == [o.name for o in aug.outputs]

    session = ort.InferenceSession(aug.model, providers=["CPUExecutionProvider"])
    feeds = aug.feeds(tokens)
    assert sorted(feeds) == sorted(i.name for i in session.get_inputs())
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds)))

    pairs, seq = feeds["corrupted.input_ids"].shape
    assert (pairs, seq) == (8, 14)
    heads, positions = grids_from_outputs(out, layers=3, heads=4, pairs=pairs, seq=seq)
    want = attrpatch.run(model_path, tokens, device="cpu")
    np.testing.assert_allclose(heads, want.heads, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(positions, want.positions, rtol=1e-4, atol=1e-6)
    # The graph's own per-pair grid outputs agree with the same sums.
    in_graph = np.array([out[f"attrpatch.heads.{layer}"].sum(axis=0) for layer in range(3)])
    np.testing.assert_allclose(in_graph, want.heads, rtol=1e-4, atol=1e-6)
    assert float(out["attrpatch.clean_logit_diff"].squeeze()) == pytest.approx(want.clean_metric, rel=1e-5)


def test_feeds_follow_the_models_metric(model_path, tokens):
    """The answer selectors differ between metrics: logit-diff puts -1 on the incorrect answer,
    prob reads only the correct one (the bug the facade fixed at its root)."""
    ld = attrpatch.rewrite(model_path, metric="logit-diff").feeds(tokens)["attrpatch.answer_onehot"]
    prob = attrpatch.rewrite(model_path, metric="prob").feeds(tokens)["attrpatch.answer_onehot"]
    pair = 0
    assert ld[pair, tokens["correct"][pair], 0] == 1 and ld[pair, tokens["incorrect"][pair], 0] == -1
    assert prob[pair, tokens["correct"][pair], 0] == 1 and prob[pair, tokens["incorrect"][pair], 0] == 0


def test_model_as_bytes_and_modelproto_give_the_path_grids(model_path, tokens):
    want = attrpatch.run(model_path, tokens, device="cpu")
    from_bytes = attrpatch.run(model_path.read_bytes(), tokens, device="cpu")
    from_proto = attrpatch.run(onnx.load(str(model_path)), tokens, device="cpu")
    for got in (from_bytes, from_proto):
        np.testing.assert_allclose(got.heads, want.heads, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got.positions, want.positions, rtol=1e-6, atol=1e-9)


def test_text_pairs_equal_their_token_ids(model_path, tokens):
    texts = attrpatch.default_pairs()
    assert len(texts) == 8 and set(texts[0]) >= {"clean", "corrupted", "correct", "incorrect"}
    by_text = attrpatch.run(model_path, texts[:4], device="cpu")
    by_ids = attrpatch.run(model_path, [
        {k: tokens[k][i] for k in ("clean", "corrupted", "correct", "incorrect")} for i in range(4)
    ], device="cpu")
    np.testing.assert_allclose(by_ids.heads, by_text.heads, rtol=1e-6, atol=1e-9)
    assert by_text.heads.shape == (3, 4)
