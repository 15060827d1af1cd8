#!/usr/bin/env python3
"""Builds the architecture fixtures in tests/fixtures/arch/: small random-weight GPT-2, GPT-NeoX and
Llama (grouped-query attention) models exported by three exporters, each with a reference
attribution-patching JSON computed by PyTorch autograd (float64 and float32) on the same weights.

  /work/venv-torch/bin/python tools/make_fixtures.py            # all fixtures
  /work/venv-torch/bin/python tools/make_fixtures.py --only gpt2-legacy-op14 llama-dynamo-op18

Needs the main venv (torch, transformers 5.x, onnx, onnxruntime, onnxscript for dynamo=True) and,
for gpt2-optimum, /work/venv-optimum (tools/fixtures/setup-venv-optimum.sh; override with
OPTIMUM_PYTHON=...). See tools/fixtures/README.md for the models, the prompts and the JSON keys.
"""
import argparse
import json
import os
import re
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fixtures import exporters as E  # noqa: E402
from fixtures import models as M  # noqa: E402
from fixtures import onnx_facts as F  # noqa: E402
from fixtures import reference as R  # noqa: E402

REPO = os.path.dirname(HERE)
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "arch")
README = os.path.join(HERE, "fixtures", "README.md")

# name: (arch, exporter, opset or None for the exporter's default)
FIXTURES = {
    "gpt2-legacy-op14": ("gpt2", "legacy", 14),
    "gpt2-legacy-op17": ("gpt2", "legacy", 17),
    "gpt2-dynamo-op18": ("gpt2", "dynamo", 18),
    "gpt2-optimum": ("gpt2", "optimum", None),
    "gptneox-legacy-op14": ("gpt_neox", "legacy", 14),
    "gptneox-dynamo-op18": ("gpt_neox", "dynamo", 18),
    "llama-legacy-op14": ("llama", "legacy", 14),
    "llama-dynamo-op18": ("llama", "dynamo", 18),
}
ARCH_LABEL = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM",
              "llama": "LlamaForCausalLM (GQA 4 q / 2 kv heads)"}
MAX_BYTES = 2 * 1024 * 1024
ORT_TOL = 1e-4


def export(exporter, model, path, opset):
    if exporter == "legacy":
        return E.legacy(model, path, opset)
    if exporter == "dynamo":
        return E.dynamo(model, path, opset)
    if exporter == "optimum":
        return E.optimum(model, path, opset)
    raise ValueError(exporter)


def torch_logits32(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                     return_dict=False)[0]


def hook_inputs32(model, arch, ids):
    acts = {}
    handles = [mod.register_forward_pre_hook(lambda _m, inp, i=i: acts.__setitem__(i, inp[0].detach()))
               for i, _name, mod in M.hook_modules(model, arch)]
    try:
        torch_logits32(model, ids)
    finally:
        for h in handles:
            h.remove()
    return acts


def make_one(name, refs):
    import onnx
    arch, exporter, opset = FIXTURES[name]
    model = M.build_model(arch)
    onnx_path = os.path.join(OUT_DIR, name + ".onnx")
    t0 = time.time()
    info = export(exporter, model, onnx_path, opset)
    t_export = time.time() - t0
    proto = onnx.load(onnx_path)
    size = os.path.getsize(onnx_path)
    if size > MAX_BYTES:
        raise RuntimeError(f"{onnx_path} is {size} bytes (> {MAX_BYTES})")

    hooks = F.hook_nodes(proto)
    n_layer = model.config.num_hidden_layers
    if sorted(hooks) != list(range(n_layer)):
        raise RuntimeError(f"hook nodes found for layers {sorted(hooks)}, want 0..{n_layer - 1}")
    starts = [hooks[i][1] for i in range(n_layer)]
    all_ops, float_ops = F.path_ops(proto, starts)

    if arch not in refs:
        refs[arch] = R.reference(model, arch)
    ref, clean, logits32 = refs[arch]

    ort = F.ort_logits(onnx_path, clean.numpy())
    diff = float(abs(ort - logits32.numpy()).max())
    # a second batch/sequence shape: the export must not have baked in the example's shape
    g = torch.Generator().manual_seed(7)
    other = torch.randint(3, M.VOCAB - 1, (3, 13), generator=g)
    diff_other = float(abs(F.ort_logits(onnx_path, other.numpy())
                           - torch_logits32(model, other).numpy()).max())

    # the hook tensors hold the hook modules' inputs: compare with PyTorch's (float32, clean batch)
    hook_vals = F.run_tensors(onnx_path, starts, clean.numpy())
    torch_acts = hook_inputs32(model, arch, clean)
    hook_diff = max(float(abs(v.reshape(-1) - torch_acts[i].numpy().reshape(-1)).max())
                    for i, v in enumerate(hook_vals))

    cfg = model.config
    out = {
        "arch": arch,
        "model_class": type(model).__name__,
        "exporter": exporter,
        "exporter_detail": info["exporter_detail"],
        "opset": info["opset"],
        "ir_version": proto.ir_version,
        "n_layers": n_layer,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": M.n_kv_heads(model),
        "hidden": M.HIDDEN,
        "head_dim": M.HEAD_DIM,
        "vocab": cfg.vocab_size,
        "inputs": F.input_names(proto),
        "outputs": [o.name for o in proto.graph.output],
        "hook_module": M.ARCHS[arch].replace("{i}", "N"),
        "hook_nodes": [hooks[i][0].name for i in range(n_layer)],
        "hook_node_ops": [hooks[i][0].op_type for i in range(n_layer)],
        "hook_tensors": starts,
        "hook_tensor_shapes_4x10": [list(t.shape) for t in hook_vals],
        "hook_max_abs_diff": hook_diff,
        "path_ops": float_ops,
        "path_ops_with_shape_paths": all_ops,
        "ort_max_abs_diff": diff,
        "ort_max_abs_diff_batch3_seq13": diff_other,
        "onnx_bytes": size,
    }
    out.update({k: v for k, v in ref.items()})
    ok = diff < ORT_TOL and diff_other < ORT_TOL and hook_diff < ORT_TOL
    out["ort_check"] = "pass" if ok else "FAIL"
    with open(os.path.join(OUT_DIR, name + ".json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{name}: {size} bytes, export {t_export:.1f}s, inputs {out['inputs']}, "
          f"ort diff {diff:.2e} / {diff_other:.2e}, hooks {hook_diff:.2e} {'ok' if ok else 'FAIL'}, "
          f"CLEAN {ref['clean_logit_diff']:.3e} CORR {ref['corrupted_logit_diff']:.3e}, "
          f"f32 vs f64 {ref['f32_vs_f64_max_rel']}")
    print(f"  path ops: {' '.join(float_ops)}")
    return out


def table(results, failures):
    rows = ["| fixture | exporter | opset | architecture | inputs | path ops (float) | ONNX size | ORT check |",
            "|---|---|---|---|---|---|---|---|"]
    for name in FIXTURES:
        if name in results:
            r = results[name]
            rows.append(f"| {name} | {r['exporter']} | {r['opset']} | {ARCH_LABEL[r['arch']]} | "
                        f"{', '.join(r['inputs'])} | {', '.join(r['path_ops'])} | "
                        f"{r['onnx_bytes'] / 1024:.0f} KiB | {r['ort_check']} "
                        f"(max abs diff {r['ort_max_abs_diff']:.1e}) |")
        elif name in failures:
            rows.append(f"| {name} | {FIXTURES[name][1]} | {FIXTURES[name][2] or '-'} | "
                        f"{ARCH_LABEL[FIXTURES[name][0]]} | - | export failed: "
                        f"{failures[name].splitlines()[0][:120]} | - | - |")
    return "\n".join(rows)


def update_readme(text):
    begin, end = "<!-- fixtures-table:begin -->", "<!-- fixtures-table:end -->"
    if not os.path.exists(README):
        return
    with open(README) as f:
        doc = f.read()
    if begin not in doc:
        return
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end),
                 lambda _m: begin + "\n" + text + "\n" + end, doc, flags=re.S)
    with open(README, "w") as f:
        f.write(new)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="fixture names (default: all)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(OUT_DIR, exist_ok=True)
    names = args.only or list(FIXTURES)
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        sys.exit(f"unknown fixture(s) {unknown}; known: {list(FIXTURES)}")

    refs, results, failures = {}, {}, {}
    for name in names:
        try:
            results[name] = make_one(name, refs)
        except Exception as e:  # record and go on with the others
            failures[name] = f"{type(e).__name__}: {e}"
            print(f"{name}: FAILED {failures[name][:2000]}", file=sys.stderr)
            traceback.print_exc()
    # keep rows for fixtures made earlier when only some were rebuilt
    for name in FIXTURES:
        path = os.path.join(OUT_DIR, name + ".json")
        if name not in results and name not in failures and os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
    text = table(results, failures)
    print(text)
    if not args.no_readme:
        update_readme(text)
    bad = [n for n in results if results[n]["ort_check"] != "pass"]
    sys.exit(1 if failures or bad else 0)


if __name__ == "__main__":
    main()
