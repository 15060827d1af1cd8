"""Reference attribution-patching grids (PyTorch autograd) for a GPT-2 model, in the format of
shared/fixtures/ioi-reference.json (see shared/fixtures/FIXTURES.md).

  For each layer, a = input of attn.c_proj, [batch, seq, n_embd];
  metric = (ld - CORR) / (CLEAN - CORR) on the corrupted run;
  p = d metric / d a_corrupted * (a_clean - a_corrupted)
  heads[layer][head]      = p at the last position, [batch, head, head_dim], summed over batch, head_dim
  positions[layer][pos]   = p summed over batch and features
computed in float64 (heads, positions) and in float32 (heads_f32, positions_f32).

Usage (defaults: the bundled models/ioi-gpt2 model, weights from models/ioi-gpt2/pytorch_model.pt,
or from models/ioi-gpt2/model.onnx's initializers where there is no state dict; --onnx FILE reads
any GPT-2 ONNX export's initializers, with --n-head):
  /work/venv-torch/bin/python tools/train_ioi/reference.py
  /work/venv-torch/bin/python tools/train_ioi/reference.py --bos --out models/ioi-gpt2/ioi-reference-bos.json
Check against the shared fixture (same weights, n_head 4):
  /work/venv-torch/bin/python tools/train_ioi/reference.py \
      --onnx /work/shared/fixtures/tiny-gpt2-rb-legacy-op14.onnx --n-head 4 \
      --out /tmp/fixture-ref.json --compare /work/shared/fixtures/ioi-reference.json
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ioi_common as C  # noqa: E402


def load_model(args):
    if args.state_dict:
        cfg = C.config_from_json(args.config)
        sd = torch.load(args.state_dict, map_location="cpu", weights_only=True)
        if "lm_head.weight" not in sd:
            sd["lm_head.weight"] = sd["transformer.wte.weight"]
    else:
        sd, n_layer, n_embd, n_positions, n_inner = C.state_dict_from_onnx(args.onnx)
        n_head = args.n_head
        if n_head is None:
            with open(args.config) as f:
                n_head = json.load(f)["n_head"]
        cfg = C.make_config(n_layer, n_head, n_embd, n_positions, n_inner)
    model = C.build_model(cfg)
    C.load_state_dict_into(model, sd)
    model.eval()
    return model


def attribution(model, clean, corrupted, answers, dtype):
    model = model.to(dtype)
    cfg = model.config
    n_layer, n_head = cfg.n_layer, cfg.n_head
    head_dim = cfg.n_embd // n_head
    mask = torch.ones_like(clean)

    acts = {}

    def make_hook(layer):
        def hook(module, inputs):
            x = inputs[0]
            if x.requires_grad:
                x.retain_grad()
            acts[layer] = x
        return hook

    handles = [blk.attn.c_proj.register_forward_pre_hook(make_hook(i))
               for i, blk in enumerate(model.transformer.h)]
    try:
        with torch.no_grad():
            clean_logits = model(input_ids=clean, attention_mask=mask, return_dict=False)[0]
            clean_acts = {k: v.detach().clone() for k, v in acts.items()}
            corr_logits_ng = model(input_ids=corrupted, attention_mask=mask, return_dict=False)[0]
        CLEAN = C.logit_diff(clean_logits, answers).item()
        CORR = C.logit_diff(corr_logits_ng, answers).item()

        acts.clear()
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=corrupted, attention_mask=mask, return_dict=False)[0]
        metric = (C.logit_diff(logits, answers) - CORR) / (CLEAN - CORR)
        metric.backward()
    finally:
        for h in handles:
            h.remove()

    heads, positions = [], []
    for layer in range(n_layer):
        a_corr = acts[layer]
        grad = a_corr.grad
        p = grad * (clean_acts[layer] - a_corr.detach())  # [batch, seq, n_embd]
        b, s, _ = p.shape
        heads.append(p[:, -1, :].reshape(b, n_head, head_dim).sum(dim=(0, 2)).tolist())
        positions.append(p.sum(dim=(0, 2)).tolist())
    return CLEAN, CORR, heads, positions


def max_rel_err(a, b):
    """max |a-b| / max|b| over a grid (relative to the grid's scale)."""
    import numpy as np
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", default=None, help="read the weights from this ONNX file's initializers")
    ap.add_argument("--state-dict", default=None,
                    help="PyTorch state dict to load (default: models/ioi-gpt2/pytorch_model.pt when "
                         "neither --onnx nor --state-dict is given and it exists; else --onnx initializers)")
    ap.add_argument("--config", default=os.path.join(C.OUT_DIR, "config.json"))
    ap.add_argument("--n-head", type=int, default=None, help="heads per layer (else from --config)")
    ap.add_argument("--tokenizer", default=C.TOKENIZER_PATH)
    ap.add_argument("--bos", action="store_true", help="prepend BOS 50256 to every prompt")
    ap.add_argument("--out", default=os.path.join(C.OUT_DIR, "ioi-reference.json"))
    ap.add_argument("--compare", default=None, help="a reference JSON to compare against")
    args = ap.parse_args()
    if args.onnx is None and args.state_dict is None:
        default_sd = os.path.join(C.OUT_DIR, "pytorch_model.pt")
        if os.path.exists(default_sd):
            args.state_dict = default_sd
        else:
            args.onnx = os.path.join(C.OUT_DIR, "model.onnx")
    print(f"weights from {args.state_dict or args.onnx}")

    torch.set_num_threads(1)
    tok = C.load_tokenizer(args.tokenizer)
    clean, corrupted, answers = C.tutorial_batch(tok, bos=args.bos)

    model = load_model(args)
    clean64, corr64, heads64, pos64 = attribution(model, clean, corrupted, answers, torch.float64)
    clean32, corr32, heads32, pos32 = attribution(model, clean, corrupted, answers, torch.float32)

    out = {
        "clean_logit_diff": clean64,
        "corrupted_logit_diff": corr64,
        "heads": heads64,
        "positions": pos64,
        "heads_f32": heads32,
        "positions_f32": pos32,
        "n_layers": model.config.n_layer,
        "n_heads": model.config.n_head,
        "seq_len": int(clean.shape[1]),
        "bos": bool(args.bos),
        "input_ids": clean.tolist(),
        "answer_ids": answers.tolist(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    print(f"clean logit diff {clean64:.6f}  corrupted {corr64:.6f}  (f32: {clean32:.6f} {corr32:.6f})")
    print("heads (float64), rows = layers:")
    for row in heads64:
        print("  " + " ".join(f"{v:+9.4f}" for v in row))
    print("positions (float64), rows = layers:")
    for row in pos64:
        print("  " + " ".join(f"{v:+8.4f}" for v in row))
    print(f"f64 vs f32: heads max rel {max_rel_err(heads32, heads64):.2e}, "
          f"positions max rel {max_rel_err(pos32, pos64):.2e}")
    print(f"wrote {args.out}")

    if args.compare:
        with open(args.compare) as f:
            ref = json.load(f)
        ok = True
        assert ref["input_ids"] == out["input_ids"], "input_ids differ"
        assert ref["answer_ids"] == out["answer_ids"], "answer_ids differ"
        for key in ["heads", "positions", "heads_f32", "positions_f32"]:
            e = max_rel_err(out[key], ref[key])
            print(f"compare {key}: max rel err {e:.3e}")
            ok &= e < 1e-6 if not key.endswith("f32") else e < 1e-4
        for key in ["clean_logit_diff", "corrupted_logit_diff"]:
            e = abs(out[key] - ref[key]) / abs(ref[key])
            print(f"compare {key}: rel err {e:.3e}")
            ok &= e < 1e-6
        print("MATCH" if ok else "MISMATCH")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
