#!/usr/bin/env python3
"""Peak memory of ONNX Runtime on a float16 model computed in float32, two ways (docs/src/files.md, "Files
attrpatch normalises"):

  A  upcast at load: every float16 weight becomes a float32 initializer (what normalize::precision does);
  B  float16 weights kept, a Cast to float32 at each use.

  /work/venv-torch/bin/python tools/bench/fp16_memory.py FLOAT32_MODEL.onnx [--work DIR]

The float32 model (e.g. tools/bench/make_gpt2_small.py's) is converted with
onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True); each variant then gets
a fresh process that creates a session (graph optimisation level 3 as attrpatch, and disabled) and
runs one forward on 8 x 16 tokens. Prints the peak RSS of each process, the float32 weights' bytes
and the largest difference between the variants' logits.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def child(path, level):
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ids = (np.arange(8 * 16).reshape(8, 16) * 37 % 50000 + 3).astype(np.int64)
    out = s.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    np.save(path + f".{level}.npy", out[:, -1, :].astype(np.float32))
    # VmHWM: this process image's peak (ru_maxrss would carry the parent's across exec).
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": hwm / 1024}))


def variants(fp32_path, work):
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16
    m16 = convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True)
    paths = {}

    def to_f32(model, keep_weights):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        casts = []
        for t in g.initializer:
            if t.data_type == onnx.TensorProto.FLOAT16:
                if keep_weights:
                    casts.append(t.name)
                else:
                    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == onnx.TensorProto.FLOAT16:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float32"), a.t.name))
                if n.op_type == "Cast" and a.name == "to" and a.i == onnx.TensorProto.FLOAT16:
                    a.i = onnx.TensorProto.FLOAT
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
                vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        if casts:
            rename = {c: c + "/f32" for c in casts}
            for n in g.node:
                for i, x in enumerate(n.input):
                    if x in rename:
                        n.input[i] = rename[x]
            cast_nodes = [helper.make_node("Cast", [c], [rename[c]], to=onnx.TensorProto.FLOAT, name=c + "/cast")
                          for c in casts]
            nodes = cast_nodes + list(g.node)
            del g.node[:]
            g.node.extend(nodes)
        return m

    for name, keep in (("A_upcast_at_load", False), ("B_cast_at_use", True)):
        p = os.path.join(work, name + ".onnx")
        onnx.save(to_f32(m16, keep), p)
        paths[name] = p
    return paths


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    import numpy as np
    work = args.work or tempfile.mkdtemp(prefix="fp16mem-")
    paths = {n: os.path.join(work, n + ".onnx") for n in ("A_upcast_at_load", "B_cast_at_use")}
    if not all(os.path.exists(p) for p in paths.values()):
        paths = variants(args.model, work)
    for name, p in paths.items():
        for level in ("all", "none"):
            r = subprocess.run([sys.executable, __file__, "--child", p, level], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name} ({level}): failed: {r.stderr[-500:]}")
                continue
            info = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{name}, optimisation {level}: peak RSS {info['peak_rss_mb']:.0f} MB, "
                  f"file {os.path.getsize(p) / 2**20:.0f} MB")
    a = np.load(paths["A_upcast_at_load"] + ".all.npy")
    b = np.load(paths["B_cast_at_use"] + ".all.npy")
    print(f"max |logits A - logits B| at the last position: {np.abs(a - b).max():.3e} "
          f"(largest |logit| {np.abs(a).max():.3e})")


if __name__ == "__main__":
    main()
