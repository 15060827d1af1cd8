"""Loads an augmented model written by `attrpatch rewrite` in Python onnxruntime,
feeds the tutorial's IOI batch, rebuilds the grids from the activation and
gradient outputs and compares them with a reference JSON.
Usage: check_augmented.py AUGMENTED.onnx REFERENCE.json [rtol] [atol]"""
import json, sys
import numpy as np
import onnxruntime as ort

aug, ref_path = sys.argv[1], sys.argv[2]
rtol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
atol = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-6
ref = json.load(open(ref_path))
clean = np.array(ref["input_ids"], dtype=np.int64)
B, S = clean.shape
corrupted = clean[[i + 1 if i % 2 == 0 else i - 1 for i in range(B)]]
answers = np.array(ref["answer_ids"], dtype=np.int64)
sess = ort.InferenceSession(aug, providers=["CPUExecutionProvider"])
V = [i for i in sess.get_inputs() if i.name == "attrpatch.answer_onehot"][0].shape[1]
pos = np.zeros((B, 1, S), np.float32); pos[:, 0, S - 1] = 1
ans = np.zeros((B, V, 1), np.float32)
for r in range(B):
    ans[r, answers[r, 0], 0] += 1
    ans[r, answers[r, 1], 0] -= 1
feed = {"clean.input_ids": clean, "corrupted.input_ids": corrupted,
        "clean.attention_mask": np.ones((B, S), np.int64), "corrupted.attention_mask": np.ones((B, S), np.int64),
        "attrpatch.last_position_onehot": pos, "attrpatch.answer_onehot": ans,
        "attrpatch.pair_weights": np.full((B, 1), 1 / B, np.float32)}
names = [o.name for o in sess.get_outputs()]
out = dict(zip(names, sess.run(None, feed)))
layers = len([n for n in names if n.startswith("attrpatch.grad.")])
H = len(ref["heads"][0])
worst = 0.0
for l in range(layers):
    a = out[f"attrpatch.clean_act.{l}"].reshape(B, S, -1).astype(np.float64)
    c = out[f"attrpatch.corrupted_act.{l}"].reshape(B, S, -1).astype(np.float64)
    g = out[f"attrpatch.grad.{l}"].reshape(B, S, -1).astype(np.float64)
    p = g * (a - c)
    heads = p[:, -1, :].reshape(B, H, -1).sum(axis=(0, 2))
    positions = p.sum(axis=(0, 2))
    for got, want in ((heads, ref["heads"][l]), (positions, ref["positions"][l])):
        want = np.array(want)
        err = np.abs(got - want)
        ok = err <= np.maximum(rtol * np.abs(want), atol)
        worst = max(worst, float((err / np.maximum(np.abs(want), atol / rtol)).max()))
        if not ok.all():
            print(f"layer {l}: mismatch\n got  {got}\n want {want}")
            sys.exit(1)
ld_c = float(out["attrpatch.clean_logit_diff"].ravel()[0])
ld_k = float(out["attrpatch.corrupted_logit_diff"].ravel()[0])
assert abs(ld_c - ref["clean_logit_diff"]) <= 1e-3 * abs(ref["clean_logit_diff"]) + 1e-7, (ld_c, ref["clean_logit_diff"])
assert abs(ld_k - ref["corrupted_logit_diff"]) <= 1e-3 * abs(ref["corrupted_logit_diff"]) + 1e-7, (ld_k, ref["corrupted_logit_diff"])
print(f"ok: {layers} layers, max relative error {worst:.2e}")
