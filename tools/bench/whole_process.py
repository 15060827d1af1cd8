#!/usr/bin/env python3
"""One peer of `attrpatch run` as the whole process a user starts: import, load, the job once,
exit. tools/bench/whole.sh times each under /usr/bin/time (wall, peak RSS).

    whole_process.py ort-forward --model M.onnx --prompts P.jsonl [--threads 2] [--loop K]
    whole_process.py hooks|nnsight --weights W.pt --prompts P.jsonl [--threads 2] [--loop K]
    whole_process.py make-prompts --pairs N --tokens S --out P.jsonl

ort-forward: a plain ONNX Runtime forward (default session options) of the clean and corrupted
prompts as one batch, and the logit differences. hooks: the tutorial's attribution with
hand-written forward hooks (pytorch_bench.attribution, separate forwards). nnsight: the tutorial's
own nnsight code (pytorch_bench.attribution_nnsight, baselines from forwards first, as the
tutorial does). --loop K then repeats the job K more times in the same process (warm) and prints
their median. make-prompts writes N pairs of exactly S tokens (the tutorial's pairs, a shared
prefix of ' the' tokens), so every peer and attrpatch run the same sequences.
"""
import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER = os.path.join(REPO, "models", "tokenizer.json")


def read_pairs(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tokenize(pairs):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(TOKENIZER)
    ids = lambda s: tok.encode(s, add_special_tokens=False).ids
    clean = [ids(p["clean"]) for p in pairs]
    corrupted = [ids(p["corrupted"]) for p in pairs]
    if len({len(x) for x in clean + corrupted}) != 1:
        raise SystemExit("prompts of different lengths: make them with make-prompts")
    answers = [[ids(p["correct"])[0], ids(p["incorrect"])[0]] for p in pairs]
    return clean, corrupted, answers


def make_prompts(args):
    base = read_pairs(os.path.join(REPO, "models", "ioi-prompts.jsonl"))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(TOKENIZER)
    out = []
    for i in range(args.pairs):
        p = dict(base[i % len(base)])
        n = len(tok.encode(p["clean"], add_special_tokens=False).ids)
        if args.tokens < n:
            raise SystemExit(f"--tokens must be at least {n}")
        extra = args.tokens - n  # "The the ... the." is one token per word and the full stop
        prefix = "" if extra == 0 else "." if extra == 1 else "The" + " the" * (extra - 2) + "."
        for k in ("clean", "corrupted"):
            p[k] = prefix + (" " if prefix else "") + p[k]
            got = len(tok.encode(p[k], add_special_tokens=False).ids)
            if got != args.tokens:
                raise SystemExit(f"pair {i}: {got} tokens, not {args.tokens}")
        out.append(p)
    with open(args.out, "w") as f:
        for p in out:
            f.write(json.dumps(p) + "\n")


def ort_forward(args, clean, corrupted, answers):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    t0 = time.perf_counter()
    s = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    # scaling.sh reads this line: the plain model's session time beside attrpatch's.
    print(f"session {time.perf_counter() - t0:.3f} s (onnxruntime {ort.__version__})")
    ids = np.array(clean + corrupted, dtype=np.int64)
    names = {i.name for i in s.get_inputs()}
    feed = {"input_ids": ids}
    if "attention_mask" in names:
        feed["attention_mask"] = np.ones_like(ids)
    n = len(clean)
    ans = np.array(answers)

    def job():
        logits = s.run(None, feed)[0][:, -1, :]
        ld = logits[np.arange(2 * n), np.concatenate([ans[:, 0]] * 2)] - logits[
            np.arange(2 * n), np.concatenate([ans[:, 1]] * 2)]
        return float(ld[:n].mean()), float(ld[n:].mean())

    return job


def torch_job(args, clean, corrupted, answers):
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    import pytorch_bench as pb

    torch.set_num_threads(args.threads)
    model = pb.load_model(args.weights, args.n_head)
    c, k, a = (torch.tensor(x, dtype=torch.int64) for x in (clean, corrupted, answers))
    if args.mode == "hooks":
        return lambda: pb.attribution(model, c, k, a, "separate", True)[2:]
    import nnsight
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast(tokenizer_file=TOKENIZER)
    nn_model = nnsight.TransformersModel(model, tokenizer=tok, task="text-generation")

    def job():
        # As the tutorial: baselines from two forwards, then the attribution trace.
        cl, kl = pb.forward_only(model, c, k)
        baselines = (pb.logit_diff(cl, a).item(), pb.logit_diff(kl, a).item())
        return pb.attribution_nnsight(nn_model, model, c, k, a, baselines)[2:]

    return job


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["ort-forward", "hooks", "nnsight", "make-prompts"])
    ap.add_argument("--model")
    ap.add_argument("--weights")
    ap.add_argument("--prompts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=12)
    ap.add_argument("--loop", type=int, default=0, help="warm repetitions after the first job")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=14)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.mode == "make-prompts":
        return make_prompts(args)
    clean, corrupted, answers = tokenize(read_pairs(args.prompts))
    job = ort_forward(args, clean, corrupted, answers) if args.mode == "ort-forward" else torch_job(
        args, clean, corrupted, answers)
    clean_ld, corr_ld = (float(x) for x in job())
    print(f"{args.mode}: clean logit diff {clean_ld:.6g}, corrupted {corr_ld:.6g}")
    if args.loop:
        times = []
        for _ in range(args.loop):
            t0 = time.perf_counter()
            job()
            times.append(time.perf_counter() - t0)
        print(f"warm: median {statistics.median(times):.3f} s of {args.loop} "
              f"[{', '.join(f'{t:.3f}' for t in times)}]")


if __name__ == "__main__":
    sys.exit(main())
