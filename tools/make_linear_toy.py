"""Writes tests/fixtures/linear-toy.onnx: a 2-layer, 2-head GPT-2-shaped graph
with no nonlinearity between the writers and the logits (the "layer-norms" are
constant scales, the MLP has no activation), so that on one-token prompts
(softmax over one key is 1 whatever the scores) the logit difference is affine
in every reader's input and EAP equals exact edge patching. Node names follow
GPT-2's export (attn.c_proj is the hook). Run with /work/venv-torch/bin/python.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

V, D, H, DH, L, F = 16, 8, 2, 4, 2, 12
rng = np.random.default_rng(14)
nodes, inits = [], []


def init(name, a):
    inits.append(numpy_helper.from_array(np.asarray(a, dtype=np.float32) if a.dtype != np.int64 else a, name))
    return name


def const(name, values):
    return init(name, np.asarray(values, dtype=np.int64))


def node(op, ins, out, name, **attrs):
    nodes.append(helper.make_node(op, ins, [out], name=name, **attrs))
    return out


w = lambda *s: rng.normal(0, 0.5, s).astype(np.float32)
x = node("Gather", [init("wte", w(V, D)), "input_ids"], "/transformer/wte/Gather_output_0", "/transformer/wte/Gather")
const("shape_bshd", [0, 0, H, DH])
const("shape_bsd", [0, 0, H * DH])
for l in range(L):
    p = f"/transformer/h.{l}"
    n1 = node("Mul", [x, init(f"ln1.{l}", 1.0 + 0.1 * w(D))], f"{p}/ln_1/Mul_output_0", f"{p}/ln_1/Mul")
    sides = {}
    for s in "qkv":
        m = node("MatMul", [n1, init(f"W{s}.{l}", w(D, H * DH))], f"{p}/attn/{s}/MatMul_output_0", f"{p}/attn/{s}/MatMul")
        a = node("Add", [m, init(f"b{s}.{l}", w(H * DH))], f"{p}/attn/{s}/Add_output_0", f"{p}/attn/{s}/Add")
        r = node("Reshape", [a, "shape_bshd"], f"{p}/attn/{s}/Reshape_output_0", f"{p}/attn/{s}/Reshape")
        perm = [0, 2, 3, 1] if s == "k" else [0, 2, 1, 3]
        sides[s] = node("Transpose", [r], f"{p}/attn/{s}/Transpose_output_0", f"{p}/attn/{s}/Transpose", perm=perm)
    sc = node("MatMul", [sides["q"], sides["k"]], f"{p}/attn/MatMul_output_0", f"{p}/attn/MatMul")
    sc = node("Mul", [sc, init(f"scale.{l}", np.array(DH ** -0.5))], f"{p}/attn/Mul_output_0", f"{p}/attn/Mul")
    pr = node("Softmax", [sc], f"{p}/attn/Softmax_output_0", f"{p}/attn/Softmax", axis=-1)
    z = node("MatMul", [pr, sides["v"]], f"{p}/attn/MatMul_1_output_0", f"{p}/attn/MatMul_1")
    z = node("Transpose", [z], f"{p}/attn/Transpose_output_0", f"{p}/attn/Transpose", perm=[0, 2, 1, 3])
    z = node("Reshape", [z, "shape_bsd"], f"{p}/attn/Reshape_output_0", f"{p}/attn/Reshape")
    o = node("MatMul", [z, init(f"Wo.{l}", w(H * DH, D))], f"{p}/attn/c_proj/MatMul_output_0", f"{p}/attn/c_proj/MatMul")
    o = node("Add", [o, init(f"bo.{l}", w(D))], f"{p}/attn/c_proj/Add_output_0", f"{p}/attn/c_proj/Add")
    x1 = node("Add", [x, o], f"{p}/Add_output_0", f"{p}/Add")
    n2 = node("Mul", [x1, init(f"ln2.{l}", 1.0 + 0.1 * w(D))], f"{p}/ln_2/Mul_output_0", f"{p}/ln_2/Mul")
    f1 = node("MatMul", [n2, init(f"W1.{l}", w(D, F))], f"{p}/mlp/c_fc/MatMul_output_0", f"{p}/mlp/c_fc/MatMul")
    f1 = node("Add", [f1, init(f"b1.{l}", w(F))], f"{p}/mlp/c_fc/Add_output_0", f"{p}/mlp/c_fc/Add")
    f2 = node("MatMul", [f1, init(f"W2.{l}", w(F, D))], f"{p}/mlp/c_proj/MatMul_output_0", f"{p}/mlp/c_proj/MatMul")
    f2 = node("Add", [f2, init(f"b2.{l}", w(D))], f"{p}/mlp/c_proj/Add_output_0", f"{p}/mlp/c_proj/Add")
    x = node("Add", [x1, f2], f"{p}/Add_1_output_0", f"{p}/Add_1")
nf = node("Mul", [x, init("lnf", 1.0 + 0.1 * w(D))], "/transformer/ln_f/Mul_output_0", "/transformer/ln_f/Mul")
node("MatMul", [nf, init("lm_head", w(D, V))], "logits", "/lm_head/MatMul")

graph = helper.make_graph(
    nodes,
    "linear_toy",
    [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="tools/make_linear_toy.py")
model.ir_version = 7
onnx.checker.check_model(model)
onnx.save(model, "tests/fixtures/linear-toy.onnx")
print("wrote tests/fixtures/linear-toy.onnx", len(nodes), "nodes")
