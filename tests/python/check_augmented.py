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
N = 2 * B
pos = np.zeros((N, 1, S), np.float32); pos[:, 0, S - 1] = 1
ans = np.zeros((N, V, 1), np.float32)
for r in range(N):
    ans[r, answers[r % B, 0], 0] += 1
    ans[r, answers[r % B, 1], 0] -= 1
wc = np.zeros((N, 1), np.float32); wc[:B] = 1 / B
wk = np.zeros((N, 1), np.float32); wk[B:] = 1 / B
feed = {"input_ids": np.concatenate([clean, corrupted]), "attention_mask": np.ones((N, S), np.int64),
        "attrpatch.last_position_onehot": pos, "attrpatch.answer_onehot": ans,
        "attrpatch.clean_weights": wc, "attrpatch.corrupted_weights": wk}
names = [o.name for o in sess.get_outputs()]
out = dict(zip(names, sess.run(None, feed)))
layers = len([n for n in names if n.startswith("attrpatch.act.")])
H = len(ref["heads"][0])
worst = 0.0
for l in range(layers):
    a = out[f"attrpatch.act.{l}"].reshape(N, S, -1).astype(np.float64)
    g = out[f"attrpatch.grad.{l}"].reshape(N, S, -1).astype(np.float64)
    p = g[B:] * (a[:B] - a[B:])
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
