"""Train a small GPT-2 (real GPT-2 vocabulary) on synthetic IOI sentences, on the CPU with one
thread, then export it to ONNX (legacy exporter, opset 14) as models/ioi-gpt2/model.onnx.

  tools/train_ioi/setup-venv.sh            # once: /work/venv-torch
  /work/venv-torch/bin/python tools/train_ioi/train.py
  /work/venv-torch/bin/python tools/train_ioi/reference.py

Writes models/ioi-gpt2/{model.onnx, tokenizer.json, config.json, training.json, pytorch_model.pt}
(the PyTorch state dict, without the tied lm_head.weight; it goes to --ckpt-dir, default
/work/ioi-ckpt outside the repository, instead if it is 30 MB or more).

Loss: cross-entropy over the full 50257-token vocabulary at the answer position only (the token
after the final "to"/"said to"); the lm_head is applied only there, which keeps a step cheap.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ioi_common as C  # noqa: E402
import ioi_data as D  # noqa: E402

PAD_ID = C.BOS_ID


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-layer", type=int, default=3)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-positions", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--prefix-prob", type=float, default=0.15,
                    help="probability of a short unrelated sentence before the IOI sentence")
    ap.add_argument("--n-heldout-names", type=int, default=40)
    ap.add_argument("--eval-n", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default=C.OUT_DIR)
    ap.add_argument("--ckpt-dir", default="/work/ioi-ckpt",
                    help="where the PyTorch state dict goes if it is 30 MB or more (else --out-dir)")
    ap.add_argument("--no-export", action="store_true")
    return ap.parse_args()


def valid_names(tok):
    names, dropped, seen = [], [], set()
    for n in D.CANDIDATE_NAMES:
        if n in seen:
            continue
        seen.add(n)
        if len(C.encode(tok, " " + n)) == 1:
            names.append(n)
        else:
            dropped.append(n)
    for n in D.TUTORIAL_NAMES:
        assert n in names, n
    return names, dropped


def encode_examples(tok, examples):
    """examples: list of (text, io, s, ...). Returns right-padded ids [B, L], answer position
    (index of the last prompt token) [B], correct ids [B], incorrect ids [B]."""
    seqs = [C.encode(tok, e[0]) for e in examples]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    pos = torch.tensor([len(s) - 1 for s in seqs])
    io = torch.tensor([C.single_token_id(tok, " " + e[1]) for e in examples])
    s = torch.tensor([C.single_token_id(tok, " " + e[2]) for e in examples])
    return ids, pos, io, s


def answer_logits(model, ids, pos):
    h = model.transformer(input_ids=ids, return_dict=False)[0]
    h = h[torch.arange(ids.shape[0]), pos]
    return model.lm_head(h)  # [B, vocab]


@torch.no_grad()
def evaluate(model, tok, examples, batch=250):
    model.eval()
    diffs, ranks_top1 = [], []
    for i in range(0, len(examples), batch):
        ids, pos, io, s = encode_examples(tok, examples[i: i + batch])
        lg = answer_logits(model, ids, pos)
        d = lg.gather(1, io[:, None])[:, 0] - lg.gather(1, s[:, None])[:, 0]
        diffs.append(d)
        ranks_top1.append(lg.argmax(1) == io)
    model.train()
    d = torch.cat(diffs)
    top1 = torch.cat(ranks_top1).float()
    return {"n": len(examples), "accuracy": float((d > 0).float().mean()),
            "mean_logit_diff": float(d.mean()), "top1_is_answer": float(top1.mean())}


def tutorial_eval(model, tok):
    clean, corrupted, answers = C.tutorial_batch(tok)
    model.eval()
    with torch.no_grad():
        m = torch.ones_like(clean)
        cl = model(input_ids=clean, attention_mask=m, return_dict=False)[0]
        co = model(input_ids=corrupted, attention_mask=m, return_dict=False)[0]
    last = cl[:, -1, :]
    per = (last.gather(1, answers[:, 0:1]) - last.gather(1, answers[:, 1:2]))[:, 0]
    return {"clean_logit_diff": float(C.logit_diff(cl, answers)),
            "corrupted_logit_diff": float(C.logit_diff(co, answers)),
            "per_prompt_clean_logit_diff": [float(x) for x in per],
            "top1_is_answer": [bool(x) for x in (last.argmax(1) == answers[:, 0])]}


def export_onnx(model, path, tok):
    """Legacy TorchScript exporter, opset 14, like models/gpt2-tiny-random.onnx."""
    import onnx
    import onnxruntime as ort

    cls = type(model)

    class Narrow(cls):
        # a narrow (input_ids, attention_mask) -> logits signature for the legacy exporter; a
        # subclass (not a wrapper module) keeps node scopes like /transformer/h.0/attn/c_proj/Gemm
        def forward(self, input_ids, attention_mask):
            return cls.forward(self, input_ids=input_ids, attention_mask=attention_mask,
                               use_cache=False, return_dict=False)[0]

    model.eval()
    orig_cls = model.__class__
    model.__class__ = Narrow
    try:
        ids = torch.tensor([C.encode(tok, C.TUTORIAL_PROMPTS[0])] * 2)
        mask = torch.ones_like(ids)
        torch.onnx.export(
            model, (ids, mask), path, dynamo=False, opset_version=14, do_constant_folding=True,
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                          "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch", 1: "sequence"}},
        )
    finally:
        model.__class__ = orig_cls

    m = onnx.load(path)
    onnx.checker.check_model(m)
    names = [n.name for n in m.graph.node]
    for i in range(model.config.n_layer):
        assert f"/transformer/h.{i}/attn/c_proj/Gemm" in names, f"c_proj Gemm of layer {i} not found"
    inits = {x.name for x in m.graph.initializer}
    for i in range(model.config.n_layer):
        assert f"transformer.h.{i}.attn.c_proj.weight" in inits

    # onnxruntime vs PyTorch on the tutorial prompts and on a batch of another shape
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    clean, _, _ = C.tutorial_batch(tok)
    g = torch.Generator().manual_seed(123)
    other = torch.randint(0, 50257, (3, 21), generator=g)
    max_diff = 0.0
    for x in [clean, other, clean[:1, :5]]:
        m_ = torch.ones_like(x)
        with torch.no_grad():
            pt = model(input_ids=x, attention_mask=m_, return_dict=False)[0].numpy()
        on = sess.run(["logits"], {"input_ids": x.numpy(), "attention_mask": m_.numpy()})[0]
        assert on.shape == pt.shape, (on.shape, pt.shape)
        max_diff = max(max_diff, float(np.abs(on - pt).max()))
    assert max_diff < 1e-4, f"ONNX vs PyTorch logits differ by {max_diff}"
    return max_diff


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    # one CPU thread: the run is deterministic for a given seed and library versions

    tok = C.load_tokenizer()
    names, dropped = valid_names(tok)
    train_names, heldout_names = D.split_names(names, args.seed, args.n_heldout_names)
    print(f"{len(names)} single-token names ({len(train_names)} train, {len(heldout_names)} held out); "
          f"dropped as multi-token: {dropped}")
    tutorial_set = set(C.TUTORIAL_PROMPTS)

    cfg = C.make_config(args.n_layer, args.n_head, args.n_embd, args.n_positions)
    model = C.build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT2LMHeadModel n_layer {args.n_layer} n_head {args.n_head} n_embd {args.n_embd}: "
          f"{n_params} parameters (tied wte/lm_head)")

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))

    data_rng = random.Random(args.seed)
    eval_rng = random.Random(args.seed + 7)

    def make_eval(templates, names_):
        return [D.sample(eval_rng, templates, names_, 0.0, tutorial_set) for _ in range(args.eval_n)]

    eval_sets = {
        "in_distribution": make_eval(D.TRAIN_TEMPLATES, train_names),
        "heldout_templates": make_eval(D.HELDOUT_TEMPLATES, train_names),
        "heldout_names": make_eval(D.TRAIN_TEMPLATES, heldout_names),
        "heldout_templates_and_names": make_eval(D.HELDOUT_TEMPLATES, heldout_names),
    }

    model.train()
    t0 = time.time()
    n_train_sentences = 0
    template_counts = [0] * len(D.TRAIN_TEMPLATES)
    pattern_counts = {"ABB": 0, "BAB": 0}
    log = []
    ema = None
    for step in range(args.steps):
        batch = [D.sample(data_rng, D.TRAIN_TEMPLATES, train_names, args.prefix_prob, tutorial_set)
                 for _ in range(args.batch)]
        for e in batch:
            assert e[0] not in tutorial_set
            template_counts[e[3]] += 1
            pattern_counts[e[4]] += 1
        n_train_sentences += len(batch)
        ids, pos, io, _ = encode_examples(tok, batch)
        logits = answer_logits(model, ids, pos)
        loss = F.cross_entropy(logits, io)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            el = time.time() - t0
            msg = f"step {step:5d} loss {ema:.4f} lr {lr_at(step):.2e} {el:7.1f}s"
            if step % args.eval_every == 0 or step == args.steps - 1:
                r = evaluate(model, tok, eval_sets["heldout_templates"][:500])
                msg += f" | heldout-templates acc {r['accuracy']:.3f} ld {r['mean_logit_diff']:.2f}"
            print(msg, flush=True)
            log.append({"step": step, "loss_ema": ema, "seconds": el})
    train_seconds = time.time() - t0
    print(f"training took {train_seconds:.1f} s")

    results = {k: evaluate(model, tok, v) for k, v in eval_sets.items()}
    for k, v in results.items():
        print(f"{k:30s} acc {v['accuracy']:.4f}  mean ld {v['mean_logit_diff']:.3f}  top1 {v['top1_is_answer']:.3f}")
    tut = tutorial_eval(model, tok)
    print(f"tutorial prompts: clean ld {tut['clean_logit_diff']:.4f} corrupted ld {tut['corrupted_logit_diff']:.4f}")
    print("  per prompt:", " ".join(f"{x:.2f}" for x in tut["per_prompt_clean_logit_diff"]))

    os.makedirs(args.out_dir, exist_ok=True)
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    sd_bytes = sum(v.numel() * v.element_size() for v in sd.values())
    ckpt_dir = args.out_dir if sd_bytes < 30e6 else args.ckpt_dir
    os.makedirs(ckpt_dir, exist_ok=True)
    ckpt = os.path.join(ckpt_dir, "pytorch_model.pt")
    torch.save(sd, ckpt)
    print(f"saved {ckpt} ({os.path.getsize(ckpt) / 1e6:.1f} MB)")
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
              "n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd,
              "n_positions": args.n_positions, "n_inner": None, "activation_function": "gelu_new",
              "layer_norm_epsilon": cfg.layer_norm_epsilon, "tie_word_embeddings": True,
              "attn_implementation": "eager", "bos_token_id": C.BOS_ID, "eos_token_id": C.BOS_ID}
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    shutil.copyfile(C.TOKENIZER_PATH, os.path.join(args.out_dir, "tokenizer.json"))

    onnx_path = os.path.join(args.out_dir, "model.onnx")
    onnx_diff = None
    if not args.no_export:
        onnx_diff = export_onnx(model, onnx_path, tok)
        print(f"exported {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.1f} MB); "
              f"onnxruntime vs PyTorch max abs logit diff {onnx_diff:.2e}")

    import transformers
    import onnx
    import onnxruntime
    training = {
        "model": {"class": "GPT2LMHeadModel", "n_layer": args.n_layer, "n_head": args.n_head,
                  "head_dim": args.n_embd // args.n_head, "n_embd": args.n_embd,
                  "n_inner": 4 * args.n_embd, "n_positions": args.n_positions, "vocab_size": 50257,
                  "tied_wte_lm_head": True, "activation": "gelu_new", "attn_implementation": "eager",
                  "parameters": n_params},
        "seed": args.seed,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "ckpt_dir")},
        "optimizer": "AdamW betas (0.9, 0.98), eps 1e-8, weight decay on matrices only, "
                     "linear warmup then cosine to min_lr_frac*lr, grad-norm clip",
        "loss": "cross-entropy over the full vocabulary at the answer position only",
        "threads": args.threads,
        "training_seconds": round(train_seconds, 1),
        "train_sentences_seen": n_train_sentences,
        "train_template_counts": template_counts,
        "train_pattern_counts": pattern_counts,
        "data": {
            "train_templates": D.TRAIN_TEMPLATES,
            "heldout_templates": D.HELDOUT_TEMPLATES,
            "train_names": train_names,
            "heldout_names": heldout_names,
            "dropped_multi_token_names": dropped,
            "places": D.PLACES, "nouns": D.NOUNS, "give_verbs": D.GIVE_VERBS,
            "prefixes": D.PREFIXES,
            "excluded": "the tutorial's 8 prompts; its 4 name pairs (either order) never appear "
                        "together in a training sentence",
        },
        "eval": results,
        "eval_note": "accuracy = fraction with logit[IO] > logit[S] at the answer position; "
                     "mean_logit_diff = mean of logit[IO] - logit[S]; top1_is_answer = IO is the "
                     "argmax over the full vocabulary; each set has eval_n fresh sentences",
        "tutorial_prompts": tut,
        "onnx": {"file": "model.onnx", "exporter": "torch.onnx.export dynamo=False (TorchScript)",
                 "opset": 14, "constant_folding": True,
                 "max_abs_logit_diff_onnxruntime_vs_pytorch": onnx_diff},
        "checkpoint": os.path.relpath(ckpt, C.REPO) if ckpt.startswith(C.REPO) else ckpt,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "loss_log": log,
    }
    with open(os.path.join(args.out_dir, "training.json"), "w") as f:
        json.dump(training, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out_dir}/training.json")


if __name__ == "__main__":
    main()
