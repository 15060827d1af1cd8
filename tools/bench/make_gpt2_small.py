#!/usr/bin/env python3
"""Builds a GPT-2-small-sized random-weight GPT2LMHeadModel and exports it to ONNX (legacy exporter).

Usage:
    /work/venv-torch/bin/python tools/bench/make_gpt2_small.py OUT.onnx [--force] [--threads 2]

Writes OUT.onnx and OUT.pt (the PyTorch state dict with exactly the exported weights, for
tools/bench/pytorch_bench.py). Skips the work when both files exist, unless --force.

Model: n_layer 12, n_head 12, n_embd 768, vocab 50257, n_positions 1024, eager attention, lm_head
tied to wte. Weights: HF default init under torch.manual_seed(0), then every 1-D parameter (biases,
LayerNorm weights and biases) gets N(0, 0.02) added from a generator seeded 1, so that no bias is
exactly 0 and no LayerNorm gain exactly 1 (a gradient rule that drops a bias or a gain then shows).

Export: torch.onnx.export(dynamo=False, opset_version=14, do_constant_folding=True), inputs
input_ids/attention_mask [batch, sequence], output logits [batch, sequence, vocab]. The model is
exported through a subclass whose forward takes just (input_ids, attention_mask) and returns the
logits (return_dict=False, use_cache=False); being a subclass rather than a wrapper module, it keeps
the node scopes (/transformer/h.0/attn/c_proj/Gemm) and initializer names
(transformer.h.0.attn.c_proj.weight) of a plain GPT2LMHeadModel export.

Finally checks with onnxruntime that the ONNX logits match PyTorch's within 1e-3 on a 2x5 batch.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

CONFIG = dict(
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    tie_word_embeddings=True,
)


class NarrowGPT2LMHeadModel(GPT2LMHeadModel):
    """GPT2LMHeadModel whose forward is (input_ids, attention_mask) -> logits."""

    def forward(self, input_ids, attention_mask):
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            return_dict=False,
            use_cache=False,
        )[0]


SIZES = {  # GPT-2's published shapes
    "small": dict(n_embd=768, n_layer=12, n_head=12),
    "medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "large": dict(n_embd=1280, n_layer=36, n_head=20),
}


def make_config():
    cfg = GPT2Config(**CONFIG, attn_implementation="eager")
    cfg._attn_implementation = "eager"
    return cfg


def build_model(cls=GPT2LMHeadModel):
    """HF default init under seed 0, then N(0, 0.02) added to every 1-D parameter (seed 1)."""
    torch.manual_seed(0)
    cfg = make_config()
    model = cls(cfg)
    model.config._attn_implementation = "eager"
    model.eval()
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        raise SystemExit("lm_head is not tied to wte")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():  # tied parameters are listed once
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.02)
    return model


def check_with_onnxruntime(model, onnx_path, threads):
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, CONFIG["vocab_size"], (2, 5), generator=gen, dtype=torch.int64)
    attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        ref = model(input_ids, attention_mask).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(
        ["logits"], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    )
    err = float(np.max(np.abs(got - ref)))
    print(f"onnxruntime {ort.__version__} vs PyTorch on 2x5: max |diff| = {err:.3g} "
          f"(logits range {ref.min():.3f}..{ref.max():.3f})")
    if got.shape != ref.shape or not err <= 1e-3:
        raise SystemExit(f"ONNX logits differ from PyTorch: shape {got.shape} vs {ref.shape}, "
                         f"max |diff| {err}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .onnx path; the state dict goes to the same path with .pt")
    ap.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (2)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small",
                    help="GPT-2 small (default), medium or large shapes, same vocabulary")
    ap.add_argument("--external-data", action="store_true",
                    help="weights in OUT.onnx.data beside the graph (always for large: over 2 GB)")
    args = ap.parse_args()
    CONFIG.update(SIZES[args.size])

    out = os.path.abspath(args.out)
    pt = os.path.splitext(out)[0] + ".pt"
    if os.path.exists(out) and os.path.exists(pt) and not args.force:
        print(f"{out} and {pt} exist; skipping (--force rebuilds)")
        return
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = build_model(NarrowGPT2LMHeadModel)
    t_build = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built GPT-2-{args.size}-sized random model ({n_params / 1e6:.1f} M parameters, tied) "
          f"in {t_build:.1f} s")

    # Plain GPT2LMHeadModel state dict keys (the subclass adds no modules).
    torch.save(model.state_dict(), pt)
    print(f"wrote {pt} ({os.path.getsize(pt) / 1e6:.1f} MB)")

    input_ids = torch.ones((2, 5), dtype=torch.int64)
    attention_mask = torch.ones((2, 5), dtype=torch.int64)
    t0 = time.perf_counter()
    torch.onnx.export(
        model,
        (input_ids, attention_mask),
        out,
        dynamo=False,
        opset_version=14,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"},
        },
        do_constant_folding=True,
    )
    t_export = time.perf_counter() - t0
    print(f"exported {out} ({os.path.getsize(out) / 1e6:.1f} MB) in {t_export:.1f} s "
          f"(torch {torch.__version__}, legacy exporter, opset 14)")
    if args.external_data or args.size == "large":
        import onnx

        m = onnx.load(out)  # the exporter may have written external data already; one file now
        onnx.save_model(m, out, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(out) + ".data", size_threshold=1024)
        del m
        print(f"weights moved to {out}.data ({os.path.getsize(out + '.data') / 1e6:.1f} MB)")

    check_with_onnxruntime(model, out, args.threads)


if __name__ == "__main__":
    sys.exit(main())
