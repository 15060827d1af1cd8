#!/usr/bin/env python3
"""Times attribution patching done the tutorial's way in PyTorch eager, on the GPT-2-small-sized
random model made by tools/bench/make_gpt2_small.py.

Usage:
    /work/venv-torch/bin/python tools/bench/pytorch_bench.py --weights OUT.pt \
        [--pairs 8] [--seq 14] [--threads 2] [--repeats 5] [--json RESULT.json] \
        [--prompts random|tutorial] [--corrupt position|swap] [--mode separate|batched] \
        [--clean-grad | --no-clean-grad] [--seed 0]

What one timed "attribution" run does (as the nnsight tutorial does it, parameters requiring grad
as nnsight leaves them, model in eval mode):
  1. clean forward of the clean batch [pairs, seq], a forward pre-hook on every layer's
     attn.c_proj saving its input [pairs, seq, n_embd] (grad mode on, as in the tutorial's trace;
     --no-clean-grad runs it under torch.no_grad instead);
  2. corrupted forward, saving the c_proj inputs and calling retain_grad() on them;
  3. metric = (ld - CORR) / (CLEAN - CORR), ld = mean over the batch of logit(correct) -
     logit(incorrect) at the last position of the corrupted logits, CLEAN and CORR the same quantity
     of the clean and corrupted logits as Python floats; metric.backward();
  4. the grids: heads [layer, head] = sum over batch and head_dim of grad * (clean - corrupted) at the
     last position; positions [layer, position] = sum over batch and hidden of the same product.
--mode batched runs steps 1 and 2 as one forward of the concatenated [2*pairs, seq] batch, the way
nnsight batches the tutorial's two tracer.invoke calls. --mode nnsight runs the tutorial's own code
through nnsight (0.8's API: one trace, two invokes, `with metric.backward():` serving the
gradients); its baselines come from untimed forwards beforehand, as in the tutorial.
"forward only": forwards of the clean and corrupted batches under torch.no_grad (reference).

Prompts: --prompts random (default) draws clean ids uniformly from the vocabulary (seeded); the
corrupted prompt is the clean one with the token at position 3 replaced (--corrupt position) or the
neighbouring clean prompt (--corrupt swap: 0<->1, 2<->3, ..., the tutorial's scheme; needs even
--pairs); answers are two distinct random ids per pair. --prompts tutorial uses the tutorial's 8 IOI
prompts tokenized with models/tokenizer.json (no BOS; 14 tokens), swapped as in the tutorial.

One untimed warm-up of each kind runs first. Prints one summary line; --json writes medians, all
times (seconds), versions, threads, machine, the token ids and the grids (from the warm-up run).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tools"))
# The metric and the grid arithmetic of the tools' one reference (tools/attribution_reference.py);
# this file times the tutorial's way of getting the gradients.
from attribution_reference import grids, logit_diff  # noqa: E402

TUTORIAL_PROMPTS = [
    "When John and Mary went to the shops, John gave the bag to",
    "When John and Mary went to the shops, Mary gave the bag to",
    "When Tom and James went to the park, James gave the ball to",
    "When Tom and James went to the park, Tom gave the ball to",
    "When Dan and Sid went to the shops, Sid gave an apple to",
    "When Dan and Sid went to the shops, Dan gave an apple to",
    "After Martin and Amy went to the park, Amy gave a drink to",
    "After Martin and Amy went to the park, Martin gave a drink to",
]
TUTORIAL_ANSWERS = [
    (" Mary", " John"), (" John", " Mary"), (" Tom", " James"), (" James", " Tom"),
    (" Dan", " Sid"), (" Sid", " Dan"), (" Martin", " Amy"), (" Amy", " Martin"),
]


def load_model(weights, n_head):
    sd = torch.load(weights, map_location="cpu")
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.h."))
    vocab, n_embd = sd["transformer.wte.weight"].shape
    n_positions = sd["transformer.wpe.weight"].shape[0]
    cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, tie_word_embeddings=True, attn_implementation="eager")
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    model.load_state_dict(sd, assign=True)
    model.tie_weights()
    model.config._attn_implementation = "eager"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise SystemExit("lm_head is not tied to wte after loading")
    return model


def make_inputs(args, vocab):
    if args.prompts == "tutorial":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(REPO, "models", "tokenizer.json"))
        ids = [tok.encode(p, add_special_tokens=False).ids for p in TUTORIAL_PROMPTS]
        if len({len(i) for i in ids}) != 1:
            raise SystemExit("tutorial prompts tokenized to different lengths")
        clean = torch.tensor(ids, dtype=torch.int64)
        corrupted = clean[[i + 1 if i % 2 == 0 else i - 1 for i in range(len(ids))]]
        answers = torch.tensor(
            [[tok.encode(a, add_special_tokens=False).ids[0] for a in pair]
             for pair in TUTORIAL_ANSWERS], dtype=torch.int64)
        return clean, corrupted, answers

    gen = torch.Generator().manual_seed(args.seed)
    clean = torch.randint(0, vocab, (args.pairs, args.seq), generator=gen, dtype=torch.int64)
    if args.corrupt == "swap":
        if args.pairs % 2:
            raise SystemExit("--corrupt swap needs an even --pairs")
        corrupted = clean[[i + 1 if i % 2 == 0 else i - 1 for i in range(args.pairs)]].clone()
    else:
        if args.seq <= 3:
            raise SystemExit("--corrupt position needs --seq > 3")
        corrupted = clean.clone()
        shift = torch.randint(1, vocab, (args.pairs,), generator=gen, dtype=torch.int64)
        corrupted[:, 3] = (clean[:, 3] + shift) % vocab  # always a different token
    a = torch.randint(0, vocab, (args.pairs,), generator=gen, dtype=torch.int64)
    b = (a + torch.randint(1, vocab, (args.pairs,), generator=gen, dtype=torch.int64)) % vocab
    answers = torch.stack([a, b], dim=1)
    return clean, corrupted, answers


def attribution(model, clean, corrupted, answers, mode, clean_grad):
    """Clean fwd + corrupted fwd + backward + grids, the tutorial's way. Returns the grids."""
    layers = model.transformer.h
    n_head = model.config.n_head
    saved = []  # the c_proj inputs of the forward in progress, one per layer

    def pre_hook(_module, args):
        x = args[0]
        if x.requires_grad:
            x.retain_grad()
        saved.append(x)

    handles = [layer.attn.c_proj.register_forward_pre_hook(pre_hook) for layer in layers]
    try:
        if mode == "batched":
            n = clean.shape[0]
            mask = torch.ones((2 * n, clean.shape[1]), dtype=torch.int64)
            logits = model(input_ids=torch.cat([clean, corrupted]), attention_mask=mask,
                           use_cache=False, return_dict=False)[0]
            clean_out = [x[:n] for x in saved]
            corr_out = [x[n:] for x in saved]
            clean_logits, corr_logits = logits[:n], logits[n:]
        else:
            mask = torch.ones_like(clean)
            with torch.set_grad_enabled(clean_grad):
                clean_logits = model(input_ids=clean, attention_mask=mask,
                                     use_cache=False, return_dict=False)[0]
            clean_out = list(saved)
            saved.clear()
            corr_logits = model(input_ids=corrupted, attention_mask=mask,
                                use_cache=False, return_dict=False)[0]
            corr_out = list(saved)
        clean_ld = logit_diff(clean_logits, answers).item()
        corr_ld = logit_diff(corr_logits, answers).item()
        value = (logit_diff(corr_logits, answers) - corr_ld) / (clean_ld - corr_ld)
        value.backward()
        with torch.no_grad():
            if mode == "batched":
                corr_grads = [x.grad[n:] for x in saved]
            else:
                corr_grads = [x.grad for x in corr_out]
            heads, positions = grids(corr_grads, clean_out, corr_out, n_head)  # [layer, head], [layer, position]
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)  # parameter grads were accumulated too, as in nnsight
    return heads, positions, clean_ld, corr_ld


def attribution_nnsight(nn_model, model, clean, corrupted, answers, baselines):
    """The tutorial's own code, ported to nnsight 0.8: one trace, a clean and a corrupted invoke
    batched into one forward (parameters requiring grad), metric.backward() serving the c_proj
    inputs' gradients in reverse layer order. `baselines` = (CLEAN, CORR) from earlier untimed
    forwards, as the tutorial computes them before the attribution trace."""
    import nnsight

    n_head = model.config.n_head
    clean_base, corr_base = baselines
    mask = torch.ones_like(clean)
    with nn_model.trace() as tracer:
        with tracer.invoke({"input_ids": clean, "attention_mask": mask}):
            clean_out = nnsight.save([layer.attn.c_proj.input for layer in nn_model.transformer.h])
        with tracer.invoke({"input_ids": corrupted, "attention_mask": mask}):
            acts = [layer.attn.c_proj.input for layer in nn_model.transformer.h]
            corr_out = nnsight.save(acts)
            logits = nn_model.lm_head.output
            value = (logit_diff(logits, answers) - corr_base) / (clean_base - corr_base)
            with value.backward():
                grads = nnsight.save([a.grad for a in reversed(acts)])
    grads = grads[::-1]
    with torch.no_grad():
        heads, positions = grids(grads, clean_out, corr_out, n_head)
    model.zero_grad(set_to_none=True)
    return heads, positions, clean_base, corr_base


def forward_only(model, clean, corrupted):
    mask = torch.ones_like(clean)
    with torch.no_grad():
        a = model(input_ids=clean, attention_mask=mask, use_cache=False, return_dict=False)[0]
        b = model(input_ids=corrupted, attention_mask=mask, use_cache=False, return_dict=False)[0]
    return a, b


def cpu_model_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="state dict written by make_gpt2_small.py")
    ap.add_argument("--pairs", type=int, default=8, help="prompt pairs = batch of each run (8)")
    ap.add_argument("--seq", type=int, default=14, help="tokens per prompt (14)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each kind (5)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--prompts", choices=["random", "tutorial"], default="random")
    ap.add_argument("--corrupt", choices=["position", "swap"], default="position",
                    help="random prompts: change the token at position 3, or swap neighbours")
    ap.add_argument("--mode", choices=["separate", "batched", "nnsight"], default="separate",
                    help="clean and corrupted as two forwards (default), one concatenated one, or "
                         "the tutorial's nnsight code (needs pip install nnsight; 0.8 API)")
    ap.add_argument("--clean-grad", action=argparse.BooleanOptionalAction, default=True,
                    help="grad mode during the clean forward (default on, as in the tutorial)")
    ap.add_argument("--n-head", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    model = load_model(args.weights, args.n_head)
    load_s = time.perf_counter() - t0
    clean, corrupted, answers = make_inputs(args, model.config.vocab_size)
    pairs, seq = clean.shape

    if args.mode == "nnsight":
        import nnsight
        from transformers import GPT2TokenizerFast

        tok = GPT2TokenizerFast(tokenizer_file=os.path.join(REPO, "models", "tokenizer.json"))
        nn_model = nnsight.TransformersModel(model, tokenizer=tok, task="text-generation")
        c_logits, k_logits = forward_only(model, clean, corrupted)  # the tutorial's baselines, untimed
        baselines = (logit_diff(c_logits, answers).item(), logit_diff(k_logits, answers).item())
        run_attr = lambda: attribution_nnsight(nn_model, model, clean, corrupted, answers, baselines)
    else:
        run_attr = lambda: attribution(model, clean, corrupted, answers, args.mode, args.clean_grad)
    run_fwd = lambda: forward_only(model, clean, corrupted)
    heads, positions, clean_ld, corr_ld = run_attr()  # warm-up; its grids go to the JSON
    run_fwd()
    attr_times = timed(run_attr, args.repeats)
    fwd_times = timed(run_fwd, args.repeats)

    attr_med = statistics.median(attr_times)
    fwd_med = statistics.median(fwd_times)
    machine = cpu_model_name()
    load_after = os.getloadavg()
    result = {
        "tool": "nnsight " + __import__("nnsight").__version__ if args.mode == "nnsight" else "pytorch-eager",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "machine": machine,
        "cpus": os.cpu_count(),
        # 1/5/15-minute load averages: other processes on the box skew the times.
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "weights": os.path.abspath(args.weights),
        "model": {"n_layer": model.config.n_layer, "n_head": model.config.n_head,
                  "n_embd": model.config.n_embd, "vocab": model.config.vocab_size},
        "pairs": pairs,
        "seq": seq,
        "prompts": args.prompts,
        "corrupt": "swap" if args.prompts == "tutorial" else args.corrupt,
        "mode": args.mode,
        "clean_grad": args.clean_grad if args.mode == "separate" else True,
        "repeats": args.repeats,
        "warmup": 1,
        "load_s": load_s,
        "attribution_s": {"median": attr_med, "times": attr_times},
        "forward_only_s": {"median": fwd_med, "times": fwd_times},
        "clean_logit_diff": clean_ld,
        "corrupted_logit_diff": corr_ld,
        "inputs": {"clean": clean.tolist(), "corrupted": corrupted.tolist(),
                   "answers": answers.tolist()},
        "grids": {"heads": heads.tolist(), "positions": positions.tolist()},
    }
    print(f"{result['tool']} attribution {pairs}x{seq} ({args.mode}): median {attr_med:.3f} s "
          f"[{', '.join(f'{t:.3f}' for t in attr_times)}]; forward only: median {fwd_med:.3f} s "
          f"[{', '.join(f'{t:.3f}' for t in fwd_times)}]; torch {torch.__version__}, "
          f"{args.threads} threads, {machine}, load {load_after[0]:.2f}")
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
