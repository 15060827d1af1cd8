"""Reference attribution-patching grids (PyTorch autograd) for a GPT-2 model, in the format of
models/ioi-gpt2/ioi-reference.json and tests/fixtures/ioi-reference.json: the tools' one reference
implementation (tools/attribution_reference.py, which states the arithmetic) hooking the input of
each block's attn.c_proj, computed in float64 (heads, positions) and in float32 (heads_f32,
positions_f32).

Usage (defaults: the bundled models/ioi-gpt2 model, weights from models/ioi-gpt2/pytorch_model.pt,
or from models/ioi-gpt2/model.onnx's initializers where there is no state dict; --onnx FILE reads
any GPT-2 ONNX export's initializers, with --n-head):
  /work/venv-torch/bin/python tools/train_ioi/reference.py
  /work/venv-torch/bin/python tools/train_ioi/reference.py --bos --out models/ioi-gpt2/ioi-reference-bos.json
Check against the repository's random-weight fixture (same weights, n_head 4):
  /work/venv-torch/bin/python tools/train_ioi/reference.py \
      --onnx models/gpt2-tiny-random.onnx --n-head 4 \
      --out /tmp/fixture-ref.json --compare tests/fixtures/ioi-reference.json
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import attribution_reference as A  # noqa: E402
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
    """(CLEAN, CORR, heads, positions) of the tools' one reference (tools/attribution_reference.py),
    hooking each block's attn.c_proj; the model is converted to `dtype` in place."""
    model = model.to(dtype)
    mask = torch.ones_like(clean)

    def run(ids):
        return model(input_ids=ids, attention_mask=mask, return_dict=False)[0]
    modules = [blk.attn.c_proj for blk in model.transformer.h]
    clean_ld, corr_ld, heads, positions, _ = A.attribution(
        model, modules, model.config.n_head, run, clean, corrupted, answers)
    return clean_ld, corr_ld, heads, positions


max_rel_err = A.max_rel_err


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
