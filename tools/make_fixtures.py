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

# name: (arch, exporter, opset or None for the exporter's default, attention implementation)
FIXTURES = {
    "gpt2-legacy-op14": ("gpt2", "legacy", 14, "eager"),
    "gpt2-legacy-op17": ("gpt2", "legacy", 17, "eager"),
    "gpt2-dynamo-op18": ("gpt2", "dynamo", 18, "eager"),
    "gpt2-optimum": ("gpt2", "optimum", None, "eager"),
    "gptneox-legacy-op14": ("gpt_neox", "legacy", 14, "eager"),
    "gptneox-dynamo-op18": ("gpt_neox", "dynamo", 18, "eager"),
    "llama-legacy-op14": ("llama", "legacy", 14, "eager"),
    "llama-dynamo-op18": ("llama", "dynamo", 18, "eager"),
    # Hugging Face's default attention (sdpa) through both exporters, and dynamo at opset 23, where
    # Attention, RMSNormalization and RotaryEmbedding are standard ops.
    "llama-sdpa-legacy-op17": ("llama", "legacy", 17, "sdpa"),
    "llama-sdpa-dynamo-op18": ("llama", "dynamo", 18, "sdpa"),
    "llama-sdpa-dynamo-op23": ("llama", "dynamo", 23, "sdpa"),
    "qwen3-sdpa-dynamo-op23": ("qwen3", "dynamo", 23, "sdpa"),
}
# Every other family (models.FAMILIES): the legacy exporter with eager attention, and dynamo with sdpa
# (eager for the families whose transformers code has no sdpa path).
NO_SDPA = {"gpt_neo", "bloom", "gemma2"}
for _arch in M.FAMILIES:
    _tag = _arch.replace("_", "")
    FIXTURES[f"{_tag}-legacy-op14"] = (_arch, "legacy", 14, "eager")
    if _arch in NO_SDPA:
        FIXTURES[f"{_tag}-dynamo-op18"] = (_arch, "dynamo", 18, "eager")
    else:
        FIXTURES[f"{_tag}-sdpa-dynamo-op18"] = (_arch, "dynamo", 18, "sdpa")
ARCH_LABEL = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM",
              "llama": "LlamaForCausalLM (GQA 4 q / 2 kv heads)"}
ARCH_LABEL.update({a: spec[1] for a, spec in M.FAMILIES.items()})
MAX_BYTES = 2 * 1024 * 1024
TOKENIZER = os.path.join(OUT_DIR, "tokenizer-128.json")
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


def family_reference(model, arch):
    """reference.reference for the small-vocabulary families: the same prompts drawn from their
    vocabulary (reference.reference draws from the first fixtures' 512)."""
    clean, corrupted, answers = R.prompts(vocab=M.vocab(arch))
    with M.exact_float64():
        c64, r64, h64, p64, _ = R.attribution(model, arch, clean, corrupted, answers, torch.float64)
    c32, r32, h32, p32, logits32 = R.attribution(model, arch, clean, corrupted, answers, torch.float32)
    ref = {
        "clean_logit_diff": c64, "corrupted_logit_diff": r64, "heads": h64, "positions": p64,
        "heads_f32": h32, "positions_f32": p32,
        "clean_logit_diff_f32": c32, "corrupted_logit_diff_f32": r32,
        "n_layers": len(h64), "seq_len": int(clean.shape[1]),
        "input_ids": clean.tolist(), "corrupted_ids": corrupted.tolist(), "answer_ids": answers.tolist(),
        "f32_vs_f64_max_rel": {"heads": R.max_rel_err(h32, h64), "positions": R.max_rel_err(p32, p64)},
    }
    return ref, clean, logits32


def write_tokenizer():
    """A word-level tokenizer.json for the 128-token fixtures: ids 0-2 are <unk>, <s>, </s>, the
    others the words w3 ... w127 (`attrpatch run --tokenizer` on a fixture)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {"<unk>": 0, "<s>": M.BOS_ID, "</s>": M.EOS_ID}
    words.update({f"w{i}": i for i in range(3, M.S_VOCAB)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(TOKENIZER)


def make_one(name, refs):
    import onnx
    arch, exporter, opset, attn = FIXTURES[name]
    model = M.build_model(arch, attn)
    onnx_path = os.path.join(OUT_DIR, name + ".onnx")
    t0 = time.time()
    info = export(exporter, model, onnx_path, opset)
    t_export = time.time() - t0
    proto = onnx.load(onnx_path)
    size = os.path.getsize(onnx_path)
    if size > MAX_BYTES:
        raise RuntimeError(f"{onnx_path} is {size} bytes (> {MAX_BYTES})")

    hooks = F.hook_nodes(proto, M.ARCHS[arch])
    n_layer = model.config.num_hidden_layers
    if sorted(hooks) != list(range(n_layer)):
        raise RuntimeError(f"hook nodes found for layers {sorted(hooks)}, want 0..{n_layer - 1}")
    starts = [hooks[i][1] for i in range(n_layer)]
    all_ops, float_ops = F.path_ops(proto, starts)

    if (arch, attn) not in refs:
        refs[(arch, attn)] = R.reference(model, arch) if arch in ("gpt2", "gpt_neox", "llama") \
            else family_reference(model, arch)
    ref, clean, logits32 = refs[(arch, attn)]

    ort = F.ort_logits(onnx_path, clean.numpy())
    diff = float(abs(ort - logits32.numpy()).max())
    # a second batch/sequence shape: the export must not have baked in the example's shape
    g = torch.Generator().manual_seed(7)
    other = torch.randint(3, M.vocab(arch) - 1, (3, 13), generator=g)
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
        "attn_implementation": attn,
        "exporter_detail": info["exporter_detail"],
        "opset": info["opset"],
        "ir_version": proto.ir_version,
        "n_layers": n_layer,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": M.n_kv_heads(model),
        "hidden": M.hidden(arch),
        "head_dim": M.head_dim(arch),
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
    write_tokenizer()
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
