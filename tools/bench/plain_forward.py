#!/usr/bin/env python3
"""A plain ONNX Runtime forward of a GenAI-built (or any decoder) model on the tutorial's sequences:
the baseline `attrpatch run` is compared with (issue 22). One process: import, session, one run of
the 16 sequences (the 8 IOI pairs' clean and corrupted prompts, 14 tokens each, as one batch), the
logit differences, exit. Feeds what attrpatch feeds: input_ids, an all-ones attention_mask,
position_ids = arange where the model takes them, and an EMPTY KV cache ([batch, kv_heads, 0,
head_size], the input's own dtype; kv heads and head size from genai_config.json beside the model).

    /work/venv-torch/bin/python tools/bench/plain_forward.py /work/big/llama1b-int4/model.onnx \
        [--prompts P.jsonl] [--tokenizer models/tokenizer.json] [--threads 2] [--json OUT.json]

--prompts defaults to the tutorial's 8 pairs made 14 tokens long (whole_process.py make-prompts
--pairs 8 --tokens 14, written to a temp file); --tokenizer defaults to models/tokenizer.json (GPT-2:
the ids of these prompts are below 17,200, so they fit a 32,000 vocabulary; checked). Prints
`session S s`, `run S s` and a summary line with the process's wall time (from interpreter start)
and peak RSS (getrusage ru_maxrss: the whole process, as /usr/bin/time's "Maximum resident set
size"); --json writes them too.
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

T_START = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import whole_process as W  # noqa: E402

OPT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
              "disable": "ORT_DISABLE_ALL"}
NP = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
      "tensor(int64)": "int64", "tensor(int32)": "int32"}


def kv_shape(folder):
    path = os.path.join(folder, "genai_config.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: it gives the KV cache's head count and size")
    with open(path) as f:
        dec = json.load(f)["model"]["decoder"]
    return dec["num_key_value_heads"], dec["head_size"], json.load(open(path))["model"]["vocab_size"]


def feeds(sess, ids, kv, hd):
    import numpy as np
    b, s = ids.shape
    out = {}
    for i in sess.get_inputs():
        if i.type not in NP:
            raise SystemExit(f"input '{i.name}' of type {i.type}: not fed by this benchmark")
        dt = np.dtype(NP[i.type]) if NP[i.type] != "bfloat16" else None
        if dt is None:
            raise SystemExit(f"input '{i.name}' is bfloat16: numpy cannot feed it")
        if i.name == "input_ids":
            out[i.name] = ids.astype(dt)
        elif i.name == "attention_mask":
            out[i.name] = np.ones((b, s), dtype=dt)
        elif i.name == "position_ids":
            out[i.name] = np.tile(np.arange(s, dtype=dt), (b, 1))
        elif i.name.startswith("past_key_values.") or i.name.startswith("past_"):
            out[i.name] = np.zeros((b, kv, 0, hd), dtype=dt)
        else:
            raise SystemExit(f"unexpected model input '{i.name}' {i.type} {i.shape}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompts")
    ap.add_argument("--tokenizer", default=os.path.join(REPO, "models", "tokenizer.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--graph-opt", choices=list(OPT_LEVELS), default="all",
                    help="session graph_optimization_level [all: ONNX Runtime's default]; 'disable' keeps "
                         "the CPU's inserted float16->float32 Casts of a float16 file from being folded into "
                         "float32 copies of the weights")
    ap.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                    help="session config entries, e.g. session.disable_prepacking=1")
    args = ap.parse_args()
    W.TOKENIZER = args.tokenizer
    prompts = args.prompts
    if not prompts:
        prompts = os.path.join(tempfile.mkdtemp(), "prompts-8x14.jsonl")
        W.make_prompts(argparse.Namespace(pairs=8, tokens=14, out=prompts))
    clean, corrupted, answers = W.tokenize(W.read_pairs(prompts))
    kv, hd, vocab = kv_shape(os.path.dirname(os.path.abspath(args.model)))
    top = max(max(map(max, clean + corrupted)), max(map(max, answers)))
    if top >= vocab:
        raise SystemExit(f"token id {top} >= the model's vocabulary {vocab}: use another tokenizer")
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[args.graph_opt])
    for kv_ in args.config:
        if "=" not in kv_:
            raise SystemExit(f"--config {kv_!r}: need KEY=VALUE")
        so.add_session_config_entry(*kv_.split("=", 1))
    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    t_session = time.perf_counter() - t0
    print(f"session {t_session:.3f} s (onnxruntime {ort.__version__})", flush=True)
    ids = np.array(clean + corrupted, dtype=np.int64)
    t0 = time.perf_counter()
    logits = sess.run(["logits"], feeds(sess, ids, kv, hd))[0][:, -1, :].astype(np.float32)
    t_run = time.perf_counter() - t0
    print(f"run {t_run:.3f} s", flush=True)
    n = len(clean)
    ans = np.array(answers)
    rows = np.arange(2 * n)
    ld = logits[rows, np.concatenate([ans[:, 0]] * 2)] - logits[rows, np.concatenate([ans[:, 1]] * 2)]
    if not np.isfinite(logits).all():
        raise SystemExit("logits are not finite")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall = time.time() - T_START
    res = {"model": args.model, "sequences": int(ids.shape[0]), "tokens": int(ids.shape[1]),
           "threads": args.threads, "graph_opt": args.graph_opt, "config": args.config, "session_s": t_session, "run_s": t_run, "wall_s": wall,
           "peak_rss_mb": peak_mb, "clean_logit_diff": float(ld[:n].mean()),
           "corrupted_logit_diff": float(ld[n:].mean()), "onnxruntime": ort.__version__}
    print(f"plain forward {os.path.basename(os.path.dirname(os.path.abspath(args.model)))} (graph opt {args.graph_opt}): "
          f"{ids.shape[0]} x {ids.shape[1]} tokens, session {t_session:.2f} s, run {t_run:.2f} s, "
          f"process wall {wall:.2f} s, peak RSS {peak_mb:.0f} MB; clean ld {res['clean_logit_diff']:.5g}, "
          f"corrupted {res['corrupted_logit_diff']:.5g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
