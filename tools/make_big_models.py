#!/usr/bin/env python3
"""Big benchmark files for issue 22 (not CI): random Llama checkpoints built by onnxruntime-genai's
builder, and 32-layer 7B-shaped files streamed from a 2-layer build of the 7B widths.

    PY=/work/venv-torch/bin/python
    $PY tools/make_big_models.py checkpoint 1b /work/big/hf-llama1b          # float16 safetensors
    $PY tools/make_big_models.py build /work/big/hf-llama1b /work/big/llama1b-int4 -p int4
    $PY tools/make_big_models.py build /work/big/hf-llama1b /work/big/llama1b-fp16 -p fp16
    $PY tools/make_big_models.py build /work/big/hf-llama1b /work/big/llama1b-fp32 -p fp32
    $PY tools/make_big_models.py checkpoint 7b-2layer /work/big/hf-llama7b-2layer
    $PY tools/make_big_models.py build /work/big/hf-llama7b-2layer /work/big/llama7b-2layer-int4 -p int4
    $PY tools/make_big_models.py build /work/big/hf-llama7b-2layer /work/big/llama7b-2layer-fp16 -p fp16
    $PY tools/make_big_models.py reference /work/big/llama7b-2layer-int4 /work/big/hf-llama7b-2layer
    $PY tools/make_big_models.py reference /work/big/llama7b-2layer-fp16 /work/big/hf-llama7b-2layer
    $PY tools/make_big_models.py stream /work/big/llama7b-2layer-int4 /work/big/llama7b-int4 --layers 32
    $PY tools/make_big_models.py stream /work/big/llama7b-2layer-fp16 /work/big/llama7b-fp16 --layers 32
    $PY tools/make_big_models.py verify /work/big/llama7b-int4
    $PY tools/make_big_models.py plain /work/big/llama1b-int4     # tools/bench/plain_forward.py, timed
    $PY tools/make_big_models.py check-stream [--layers 5]        # the streaming on the tiny fixtures

Every step except `verify` runs its work in a child process under /usr/bin/time -v and appends
{step, wall_s, peak_rss_mb, ...} to /work/big/measurements.jsonl (BIG_LOG overrides), so the
numbers below come from that file. `build` runs `python -m onnxruntime_genai.models.builder -i HF
-o OUT -p P -e cpu` (fp16: also -e cpu, which the builder accepts: MultiHeadAttention +
RotaryEmbedding; `-e cuda` gives the GPU file, GroupQueryAttention). Shapes:

- 1b: Llama-3.2-1B: hidden 2048, 16 layers, 32 query / 8 key-value heads (head 64), MLP 8192, vocab
  32000, tied embeddings (1.04 B parameters with the tie, as Llama-3.2-1B), rope_theta 500000 without
  the llama3 rope scaling, 4096 positions (the builder's cos/sin caches stay small), rms eps 1e-5.
- 7b-2layer: Llama-2-7B widths: hidden 4096, 32 heads (no GQA), MLP 11008, vocab 32000, untied,
  4096 positions, rope_theta 10000, 2 layers (0.67 B parameters). The builder was killed for memory
  (23.6 GB) on a full 7B checkpoint on this 24 GB machine, so the 32-layer files are streamed.
- Weights: Hugging Face's init under torch.manual_seed(0) (std 0.02), the 1-D ones perturbed as
  tools/fixtures/models.py does, saved as float16 safetensors. A word-level tokenizer.json of the
  vocabulary (w0 ... w31999) goes beside it, so the builder copies it next to the model.

`stream SRC OUT --layers N`: the builder's exact 2-layer graph, extended to N layers: the last layer's
nodes are copied for layers 2..N-1 with their tensors renamed (layers.1 -> layers.k, its reads of
layers.0 -> layers.k-1, past_key_values.1 / present.1 -> k), fresh random initializers for each copy
(int4: uniform random packed codes (and zero points), the template layer's scales shuffled; float16:
N(0, std of the template tensor); norms copied), the final norm renamed to layers.N, graph inputs
and outputs past_key_values.k.* / present.k.* added in the builder's order, genai_config.json's
num_hidden_layers set. Initializers are written straight to OUT/model.onnx.data one at a time (the
template's read from SRC's data file by offset), 4096-byte aligned; at most one tensor is in memory.

`reference FOLDER HF`: FOLDER/reference.json, the JSON of tools/fixtures/genai_fixtures.py (same keys
as tests/fixtures/genai/*.json) on the 2-layer file: the PyTorch float64 grids of an untied
LlamaForCausalLM holding the file's dequantised / float16 weights and its rotary caches, prompts of
ids < 32000 (seed 2024), and the ORT checks; a word-level tokenizer.json (vocab 32000) beside it.

`check-stream`: streams each tests/fixtures/genai/ fixture to 5 layers and compares ONNX Runtime (a
float32-compute copy) with PyTorch on the streamed file's own weights (< 1e-4; measured 2-4e-7 for
all seven), which checks the renaming and the layer chaining of `stream`.

`verify FOLDER`: ONNX Runtime (CPU, 2 threads) loads FOLDER/model.onnx and runs one 1 x 8 prompt with
an empty cache; fails unless the logits are finite; prints session/run time and peak RSS.

Measured on this machine (2 cores shared with other builds, 24 GB, no GPU), onnxruntime-genai 0.18.0,
onnxruntime 1.32.0, 2026-12-06 (from /work/big/measurements.jsonl; sizes = model.onnx + model.onnx.data;
plain forward = `plain` (tools/bench/plain_forward.py: session + one run of the 16 sequences of 14
tokens, 2 threads), two runs each, whole process under /usr/bin/time -v):

| file | size | made by: wall, peak RSS | plain forward wall | session / run | plain peak RSS |
|---|---|---|---|---|---|
| hf-llama1b (float16 safetensors, 1.039 B params) | 2.08 GB | checkpoint 18.8 s, 5.0 GB | | | |
| llama1b-int4 | 0.651 GB | build 23.8 s, 8.0 GB | 3.4 / 5.5 s | 1.0-1.1 / 1.9-4.0 s | 1068 / 1062 MB |
| llama1b-fp16 | 2.078 GB | build 14.6 s, 3.0 GB | 16.5 / 16.2 s | 9.6-10.2 / 5.5-5.7 s | 4448 / 4444 MB |
| llama1b-fp32 | 4.156 GB | build 19.4 s, 3.6 GB | 11.5 / 17.6 s | 4.9-11.6 / 5.3-5.9 s | 4565 / 4559 MB |
| hf-llama7b-2layer (float16, 0.667 B params) | 1.33 GB | checkpoint 29.9 s, 3.6 GB | | | |
| llama7b-2layer-int4 | 0.861 GB | build 46.1 s, 6.0 GB; reference 52 s, 9.2 GB | 3.5 s | 0.8 / 2.3 s | 637 MB |
| llama7b-2layer-fp16 | 1.335 GB | build 17.1 s, 2.4 GB; reference 81 s, 9.0 GB | 8.1 s | 4.3 / 3.1 s | 2640 MB |
| llama7b-int4 (32 layers) | 4.657 GB | stream 19.7 s, 0.56 GB | 31.2 / 32.3 s | 6.1-13.2 / 18.0-24.3 s | 5962 / 5920 MB |
| llama7b-fp16 (32 layers) | 13.48 GB | stream 158 s, 0.52 GB | fails | | see below |

- 1B int4 with session.disable_prepacking=1: peak 1094 MB, run 11.0 s (so the ~1.6x of the file
  is not MatMulNBits prepacking). The 2-layer 7B-width int4 file peaks below its size: its float32
  embedding (524 MB) is memory-mapped and only the prompts' rows are touched.
- `verify llama7b-int4`: session 8.1 s, 1 x 8 prompt 1.1 s, finite logits (max |logit| 5.8),
  peak RSS 6208 MB for the 4.66 GB file (1.33x).
- Float16 on the CPU is upcast: 1B fp16 peaks at 4.4 GB (2.1x its 2.08 GB, about the float32 file's
  4.6 GB; 4.9 GB with --graph-opt basic or disable). The 7B fp16 plain forward under `ulimit -v
  20971520` (20 GiB, so the machine's other work is not OOM-killed) fails in session creation with
  std::bad_alloc after 80 s at 19.9 GB peak RSS. A 4-layer stream of the same widths (2.14 GB) verifies
  (finite logits) at 4.6 GB peak, i.e. ~2.2x: the 32-layer file would need ~29 GB, more than this
  24 GB machine. The 32-layer fp16 file itself is therefore checked only by the stream's own checks
  and the tiny-model stream check (tools/fixtures/genai_facts.md).
- The 2-layer 7B-width references: ORT float32-compute copies vs the reference model's float32
  logits 3.7e-5 (int4, accuracy_level 0 copy) and 1.3e-5 (fp16, float32 copy), logits up to ~7;
  the files as built: 0.16 (int4, accuracy_level 4) and 6.4e-3 (fp16 computing in float16).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
LOG = os.environ.get("BIG_LOG", "/work/big/measurements.jsonl")

SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=32000, tie_word_embeddings=True, rope_theta=500000.0,
               max_position_embeddings=4096, rms_norm_eps=1e-5),
    "7b-2layer": dict(hidden_size=4096, num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0,
                      max_position_embeddings=4096, rms_norm_eps=1e-5),
}


def record(entry):
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    entry = dict(entry, at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print("measured:", json.dumps(entry), flush=True)


def timed(step, cmd, **extra):
    """Runs cmd under /usr/bin/time -v; records wall time and peak RSS; raises naming the step."""
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("/usr/bin/time not found (apt-get install time)")
    tfile = f"/tmp/make_big_models.{os.getpid()}.time"
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", "-o", tfile, *cmd])
    wall = time.time() - t0
    txt = open(tfile).read()
    os.remove(tfile)
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1)) / 1024
    entry = dict(step=step, wall_s=round(wall, 1), peak_rss_mb=round(peak), rc=p.returncode,
                 command=" ".join(cmd), **extra)
    record(entry)
    if p.returncode != 0:
        raise SystemExit(f"{step} failed (exit {p.returncode}): {' '.join(cmd)}")
    return entry


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, f)))


def word_tokenizer(folder, vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0", "bos_token": "w1",
                   "eos_token": "w2"}, f)


# ------------------------------------------------------------------ checkpoint --

def checkpoint_child(shape, out):
    import torch
    import transformers as T
    from fixtures import models as M
    kw = SHAPES[shape]
    cfg = T.LlamaConfig(head_dim=kw["hidden_size"] // kw["num_attention_heads"], hidden_act="silu",
                        attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=None, **kw)
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(cfg)
    M.perturb_1d(model)
    n = sum(p.numel() for p in model.parameters())
    model = model.half()
    model.save_pretrained(out)
    word_tokenizer(out, kw["vocab_size"])
    print(f"{shape}: {n / 1e9:.3f} B parameters (tied counted once) -> {out}")


def cmd_checkpoint(args):
    timed(f"checkpoint {args.shape}", [sys.executable, __file__, "_checkpoint", args.shape, args.out], out=args.out)
    record(dict(step=f"checkpoint {args.shape} size", bytes=folder_bytes(args.out), out=args.out))


# ------------------------------------------------------------------ build --

def cmd_build(args):
    import onnxruntime_genai as g
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", args.hf, "-o", args.out,
           "-p", args.precision, "-e", args.ep, "-c", os.path.join(os.path.dirname(args.out), "builder-cache")]
    if args.extra:
        cmd += ["--extra_options", *args.extra]
    timed(f"build {os.path.basename(args.out)}", cmd, builder=g.__version__)
    args_only = ["-p", args.precision, "-e", args.ep] + (["--extra_options", *args.extra] if args.extra else [])
    with open(os.path.join(args.out, "build.json"), "w") as f:
        json.dump({"args": args_only, "hf": os.path.abspath(args.hf), "builder": g.__version__}, f)
    record(dict(step=f"build {os.path.basename(args.out)} size", bytes=folder_bytes(args.out),
                onnx_bytes=sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)
                               if f.startswith("model.onnx"))))
    subprocess.run(["rm", "-rf", os.path.join(os.path.dirname(args.out), "builder-cache")], check=True)


# ------------------------------------------------------------------ stream --

LAYER_NODE = re.compile(r"^/model/layers\.(\d+)/")
INDEXED = re.compile(r"(layers\.|past_key_values\.|present\.)(\d+)(?=[./])")


def renamer(mapping):
    def rename(s):
        return INDEXED.sub(lambda m: m.group(1) + str(mapping.get(int(m.group(2)), int(m.group(2)))), s)
    return rename


def renamed_node(n, rename):
    import onnx
    c = onnx.NodeProto()
    c.CopyFrom(n)
    c.name = rename(n.name)
    c.input[:] = [rename(i) for i in n.input]
    c.output[:] = [rename(o) for o in n.output]
    return c


def stream_child(src, dst, n_layers, seed):
    import onnx
    from onnx import TensorProto, helper

    with open(os.path.join(src, "genai_config.json")) as f:
        genai = json.load(f)
    L0 = genai["model"]["decoder"]["num_hidden_layers"]
    if L0 < 2 or n_layers <= L0:
        raise SystemExit(f"stream: source has {L0} layers, target {n_layers}: need 2 <= source < target")
    T_ = L0 - 1  # template: the last layer (it reads the previous layer's outputs like every later one)
    proto = onnx.load(os.path.join(src, "model.onnx"), load_external_data=False)
    g = proto.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in g.initializer}

    # nodes: as they are up to the template's last node, then the copies, then the rest renamed
    last_t = max(i for i, n in enumerate(g.node) if (m := LAYER_NODE.match(n.name)) and int(m.group(1)) == T_)
    tmpl = [n for n in g.node if (m := LAYER_NODE.match(n.name)) and int(m.group(1)) == T_]
    final = renamer({L0: n_layers, T_: n_layers - 1})
    nodes = list(g.node[:last_t + 1])
    new_inits = []  # (new name, template initializer)
    for k in range(L0, n_layers):
        rn = renamer({T_: k, T_ - 1: k - 1})
        for n in tmpl:
            nodes.append(renamed_node(n, rn))
            for i in n.input:
                if i in inits and rn(i) != i:
                    new_inits.append((rn(i), inits[i]))
    for n in g.node[last_t + 1:]:
        if (m := LAYER_NODE.match(n.name)) and int(m.group(1)) < T_:
            raise SystemExit(f"stream: node '{n.name}' of layer {m.group(1)} after the template layer")
        nodes.append(renamed_node(n, final))
    seen = set()
    new_inits = [(nm, t) for nm, t in new_inits if not (nm in seen or seen.add(nm))]

    # graph inputs / outputs: the caches of every layer, in the builder's order
    def caches(vs, prefix):
        plain = [v for v in vs if not v.name.startswith(prefix)]
        cache = [v for v in vs if v.name.startswith(prefix)]
        kinds = [v.name.rsplit(".", 1)[1] for v in cache]
        grouped = kinds == sorted(kinds, key=lambda s: (s != "key", s))
        tmpl_of = {v.name.rsplit(".", 1)[1]: v for v in cache if f"{prefix}{T_}." in v.name}
        out = []

        def vi(kind, k):
            c = onnx.ValueInfoProto()
            c.CopyFrom(tmpl_of[kind])
            c.name = f"{prefix}{k}.{kind}"
            return c
        order = ([(kd, k) for kd in ("key", "value") for k in range(n_layers)] if grouped
                 else [(kd, k) for k in range(n_layers) for kd in ("key", "value")])
        out = [vi(kd, k) for kd, k in order]
        return plain, out, grouped
    pin, cin, grouped_in = caches(g.input, "past_key_values.")
    pout, cout, _ = caches(g.output, "present.")
    value_info = []
    for v in g.value_info:
        m = INDEXED.search(v.name)
        value_info.append(v)
        if m and m.group(1) == "layers." and int(m.group(2)) == T_:
            for k in range(L0, n_layers):
                c = onnx.ValueInfoProto()
                c.CopyFrom(v)
                c.name = renamer({T_: k, T_ - 1: k - 1})(v.name)
                value_info.append(c)
    for v in value_info:
        m = INDEXED.search(v.name)
        if m and int(m.group(2)) == L0 and m.group(1) == "layers.":
            v.name = final(v.name)

    os.makedirs(dst, exist_ok=True)
    data_path = os.path.join(dst, "model.onnx.data")
    src_data = {}
    written = 0

    def src_bytes(t):
        ext = {e.key: e.value for e in t.external_data}
        loc = ext["location"]
        if loc not in src_data:
            src_data[loc] = open(os.path.join(src, loc), "rb")
        f = src_data[loc]
        f.seek(int(ext.get("offset", 0)))
        return f.read(int(ext["length"]))

    def fresh(name, t):
        """Random bytes for a copy of template initializer t (one tensor in memory)."""
        from onnx import numpy_helper
        dims = tuple(t.dims)
        if t.data_type == TensorProto.UINT8:  # packed int4 codes / zero points
            return rng.integers(0, 256, size=dims, dtype=np.uint8).tobytes()
        arr = np.frombuffer(src_bytes(t), dtype=helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(dims)
        if "scales" in name:
            return rng.permutation(arr.ravel()).astype(arr.dtype).tobytes()
        if arr.ndim == 1 or "layernorm" in name:
            return arr.tobytes()
        if t.data_type in (TensorProto.FLOAT16, TensorProto.FLOAT):
            std = float(arr.astype(np.float32).std())
            out = np.empty(dims, dtype=arr.dtype)
            for r in range(0, dims[0], 1024):  # chunks: no float64 copy of the whole tensor
                out[r:r + 1024] = (rng.standard_normal((min(1024, dims[0] - r),) + dims[1:], dtype=np.float32)
                                   * std).astype(arr.dtype)
            return out.tobytes()
        del numpy_helper
        raise SystemExit(f"stream: no rule for initializer '{name}' of type {t.data_type} {dims}")

    out_inits = []
    with open(data_path, "wb") as out:
        def put(t, payload):
            nonlocal written
            pad = (-written) % 4096
            out.write(b"\0" * pad)
            written += pad
            out.write(payload)
            del t.external_data[:]
            for k, v in (("location", "model.onnx.data"), ("offset", str(written)), ("length", str(len(payload)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            t.data_location = TensorProto.EXTERNAL
            t.ClearField("raw_data")
            written += len(payload)

        for t in g.initializer:
            c = TensorProto()
            c.CopyFrom(t)
            c.name = final(t.name) if INDEXED.search(t.name) and int(INDEXED.search(t.name).group(2)) == L0 else t.name
            if t.data_location == TensorProto.EXTERNAL:
                put(c, src_bytes(t))
            out_inits.append(c)
        for name, t in new_inits:
            c = TensorProto()
            c.CopyFrom(t)
            c.name = name
            put(c, fresh(name, t))
            out_inits.append(c)
    for f in src_data.values():
        f.close()
    # every renamed initializer name a node reads must exist
    have = {t.name for t in out_inits} | {v.name for v in pin + cin}
    produced = {o for n in nodes for o in n.output}
    for n in nodes:
        for i in n.input:
            if i and i not in have and i not in produced:
                raise SystemExit(f"stream: node '{n.name}' reads '{i}', which nothing provides")

    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(out_inits)
    del g.input[:]
    g.input.extend(pin + cin)
    del g.output[:]
    g.output.extend(pout + cout)
    del g.value_info[:]
    g.value_info.extend(value_info)
    onnx.save(proto, os.path.join(dst, "model.onnx"))
    genai["model"]["decoder"]["num_hidden_layers"] = n_layers
    with open(os.path.join(dst, "genai_config.json"), "w") as f:
        json.dump(genai, f, indent=4)
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(src, extra)):
            with open(os.path.join(src, extra), "rb") as a, open(os.path.join(dst, extra), "wb") as b:
                b.write(a.read())
    print(f"stream: {L0} -> {n_layers} layers, {len(nodes)} nodes, {len(out_inits)} initializers, "
          f"{written / 2**30:.2f} GiB of external data ({'grouped' if grouped_in else 'interleaved'} caches)")


def cmd_stream(args):
    timed(f"stream {os.path.basename(args.out)}",
          [sys.executable, __file__, "_stream", args.src, args.out, str(args.layers), str(args.seed)])
    record(dict(step=f"stream {os.path.basename(args.out)} size", bytes=folder_bytes(args.out)))


# ------------------------------------------------------------------ verify --

def verify_child(folder):
    import resource
    import onnxruntime as ort
    from fixtures import genai_fixtures as G
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    t0 = time.perf_counter()
    sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), so, providers=["CPUExecutionProvider"])
    t_s = time.perf_counter() - t0
    vocab = json.load(open(os.path.join(folder, "genai_config.json")))["model"]["vocab_size"]
    ids = np.array([[1, 450, 4996, 17354, 1701, 29916, 432, 17204]], dtype=np.int64) % vocab
    t0 = time.perf_counter()
    logits = sess.run(["logits"], G.genai_feeds(sess, ids, G.kv_shape(folder)))[0]
    t_r = time.perf_counter() - t0
    ok = bool(np.isfinite(logits.astype(np.float32)).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"verify {folder}: logits {logits.dtype} {logits.shape} finite={ok} max |logit| "
          f"{float(np.abs(logits.astype(np.float32)).max()):.4g}; session {t_s:.1f} s, run {t_r:.1f} s, "
          f"peak RSS {peak:.0f} MB")
    if not ok:
        raise SystemExit(f"{folder}: logits not finite")


def cmd_verify(args):
    onnx_bytes = sum(os.path.getsize(os.path.join(args.folder, f)) for f in os.listdir(args.folder)
                     if f.startswith("model.onnx"))
    timed(f"verify {os.path.basename(args.folder)}", [sys.executable, __file__, "_verify", args.folder],
          onnx_bytes=onnx_bytes)


# ------------------------------------------------------------------ reference --

def reference_child(folder, hf):
    import tempfile
    import torch
    import transformers as T
    from fixtures import genai_fixtures as G
    torch.set_num_threads(2)
    cfg = T.AutoConfig.from_pretrained(hf)
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = type("HF", (), {"config": cfg})()
        builder = json.load(open(os.path.join(folder, "build.json"))) if os.path.exists(
            os.path.join(folder, "build.json")) else {}
        out = G.describe(os.path.basename(folder), folder, hf_model, cfg.tie_word_embeddings,
                         builder.get("args", ["(see measurements.jsonl)"]), G.genai_version(), tmp,
                         vocab=cfg.vocab_size)
    out["hf_checkpoint"] = os.path.abspath(hf)
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    word_tokenizer(folder, cfg.vocab_size)
    print(f"{folder}/reference.json: ORT as is {out['ort_max_abs_diff']:.2e} (logits up to "
          f"{out['ort_logits_max_abs']:.2e}), exact copy {out['ort_exact_max_abs_diff']:.2e} {out['ort_check']}; "
          f"CLEAN {out['clean_logit_diff']:.5g} CORR {out['corrupted_logit_diff']:.5g}; f32 vs f64 {out['f32_vs_f64_max_rel']}")
    if out["ort_check"] != "pass":
        raise SystemExit(f"{folder}: ORT float32-compute copy differs by {out['ort_exact_max_abs_diff']:.3g}")


def cmd_reference(args):
    timed(f"reference {os.path.basename(args.folder)}", [sys.executable, __file__, "_reference", args.folder, args.hf])


def cmd_check_stream(args):
    """Streams every tests/fixtures/genai/ int4 / float16 fixture to --layers layers in a temp dir and
    compares ONNX Runtime (float32-compute copy) with PyTorch on the streamed file's own weights
    (genai_fixtures.file_weights): wrong layer chaining or renaming shows as a large difference."""
    import shutil
    import tempfile
    import onnx
    import torch
    from fixtures import genai_fixtures as G
    fx = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "genai")
    worst = 0.0
    for name, (tied, _p, _e, _x) in G.FIXTURES.items():
        with tempfile.TemporaryDirectory() as tmp:
            dst = os.path.join(tmp, "s")
            stream_child(os.path.join(fx, name), dst, args.layers, 7)
            cfg = G.build_hf_model(tied).config
            cfg.num_hidden_layers = args.layers
            w, rot = G.file_weights(onnx.load(os.path.join(dst, "model.onnx")), cfg)
            model = G.reference_model(cfg, w, rot)
            ids = torch.tensor([[5, 9, 100, 200, 300, 7, 8, 9], [11, 12, 13, 14, 15, 16, 17, 18]])
            with torch.no_grad():
                ref = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                            return_dict=False)[0].numpy()
            if name.startswith("fp16"):
                os.makedirs(os.path.join(tmp, "f32"))
                path = G.float32_copy(os.path.join(dst, "model.onnx"), os.path.join(tmp, "f32", "model.onnx"))
                shutil.copy(os.path.join(dst, "genai_config.json"), os.path.join(tmp, "f32"))
            else:
                path = G.accuracy0_copy(dst, "model-acc0.onnx")
            d = float(np.abs(G.ort_logits(path, ids.numpy()) - ref).max())
            worst = max(worst, d)
            print(f"check-stream {name} -> {args.layers} layers: ORT vs PyTorch on the file's weights {d:.2e} "
                  f"(logits up to {float(np.abs(ref).max()):.2f})")
    if worst >= 1e-4:
        raise SystemExit(f"check-stream: a streamed file differs by {worst:.3g} (>= 1e-4)")


def cmd_plain(args):
    """tools/bench/plain_forward.py on FOLDER/model.onnx under /usr/bin/time -v (the 16 sequences)."""
    onnx_bytes = sum(os.path.getsize(os.path.join(args.folder, f)) for f in os.listdir(args.folder)
                     if f.startswith("model.onnx"))
    out_json = f"/tmp/plain_forward.{os.getpid()}.json"
    label = f"plain forward {os.path.basename(args.folder)}" + ("" if args.graph_opt == "all" else f" graph-opt {args.graph_opt}")
    label += "".join(f" {c}" for c in args.config)
    e = timed(label, [sys.executable, os.path.join(HERE, "bench", "plain_forward.py"), os.path.join(args.folder, "model.onnx"),
                      "--threads", str(args.threads), "--graph-opt", args.graph_opt, "--json", out_json] + (["--config", *args.config] if args.config else []),
              onnx_bytes=onnx_bytes)
    res = json.load(open(out_json))
    os.remove(out_json)
    record(dict(step=f"{label} detail", session_s=round(res["session_s"], 2),
                run_s=round(res["run_s"], 2), time_wall_s=e["wall_s"], time_peak_rss_mb=e["peak_rss_mb"]))


def main():
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        child = {"_checkpoint": checkpoint_child, "_stream": lambda s, d, n, seed: stream_child(s, d, int(n), int(seed)),
                 "_verify": verify_child, "_reference": reference_child}[sys.argv[1]]
        return child(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("checkpoint")
    a.add_argument("shape", choices=list(SHAPES))
    a.add_argument("out")
    a = sub.add_parser("build")
    a.add_argument("hf")
    a.add_argument("out")
    a.add_argument("-p", "--precision", required=True, choices=["int4", "fp16", "fp32"])
    a.add_argument("-e", "--ep", default="cpu")
    a.add_argument("--extra", nargs="*")
    a = sub.add_parser("stream")
    a.add_argument("src")
    a.add_argument("out")
    a.add_argument("--layers", type=int, default=32)
    a.add_argument("--seed", type=int, default=7)
    a = sub.add_parser("verify")
    a.add_argument("folder")
    a = sub.add_parser("check-stream")
    a.add_argument("--layers", type=int, default=5)
    a = sub.add_parser("plain")
    a.add_argument("folder")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--graph-opt", default="all", choices=["all", "extended", "basic", "disable"])
    a.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE")
    a = sub.add_parser("reference")
    a.add_argument("folder")
    a.add_argument("hf")
    args = ap.parse_args()
    {"checkpoint": cmd_checkpoint, "build": cmd_build, "stream": cmd_stream, "verify": cmd_verify,
     "reference": cmd_reference, "plain": cmd_plain,
     "check-stream": cmd_check_stream}[args.cmd](args)


if __name__ == "__main__":
    main()
