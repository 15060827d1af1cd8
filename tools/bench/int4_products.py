#!/usr/bin/env python3
"""One int4 weight's product, the ways ONNX Runtime can compute it (issue 22's choice of how
attrpatch restores packed MatMulNBits weights; figures in docs/src/speed.md, "Models of 1-8 billion parameters").

  /work/venv-torch/bin/python tools/bench/int4_products.py   # any Python with onnxruntime, numpy, onnx

X [112, 2048] (8 prompts of 14 tokens) times a Llama-1B MLP weight (N 8192, K 2048, blocks of 32),
2 threads, mean of 20 calls: MatMulNBits at accuracy_level 4 (int8 activations: what the plain
forward of a builder file runs, 0.5% off the exact product) and 0 (float32, prepacked), a resident
float32 Gemm, and the two run-time dequantisations attrpatch can read the packed codes through
(blocked DequantizeLinear, GatherBlockQuantized of every row) followed by a float32 Gemm.
"""
import onnx, onnxruntime as ort, numpy as np, time
from onnx import helper as h, TensorProto as T
N,K,blk,M=8192,2048,32,112
rng=np.random.default_rng(0)
codes=rng.integers(0,256,size=(N,K//blk,blk//2),dtype=np.uint8)
scales=(rng.random((N*(K//blk)),dtype=np.float32)*0.01).astype(np.float32)
x=rng.standard_normal((M,K),dtype=np.float32)
def sess(m, prepack=True):
    so=ort.SessionOptions(); so.intra_op_num_threads=2
    so.add_session_config_entry("optimization.disable_specified_optimizers","ConstantFolding;CommonSubexpressionElimination")
    if not prepack: so.add_session_config_entry("session.disable_prepacking","1")
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
def bench(name,s,feeds,n=20):
    s.run(None,feeds); t=time.time()
    for _ in range(n): y=s.run(None,feeds)[0]
    dt=(time.time()-t)/n; print(f"{name:40s} {dt*1e3:7.2f} ms  {2*M*N*K/dt/1e9:6.1f} GFLOP/s"); return y
cinit=h.make_tensor("B",T.UINT8,list(codes.shape),codes.tobytes(),raw=True)
sinit=h.make_tensor("S",T.FLOAT,[N*(K//blk)],scales.tobytes(),raw=True)
for acc in (4,0):
    g=h.make_graph([h.make_node("MatMulNBits",["x","B","S"],["y"],domain="com.microsoft",K=K,N=N,bits=4,block_size=blk,accuracy_level=acc)],"g",
      [h.make_tensor_value_info("x",T.FLOAT,[M,K])],[h.make_tensor_value_info("y",T.FLOAT,None)],[cinit,sinit])
    m=h.make_model(g,opset_imports=[h.make_opsetid("",21),h.make_opsetid("com.microsoft",1)])
    y=bench(f"MatMulNBits acc{acc} prepacked", sess(m), {"x":x})
    if acc==0: y0=y
    else: y4=y
# fp32 resident
W=np.zeros((N,K),np.float32)
g=h.make_graph([h.make_node("Gemm",["x","W"],["y"],transB=1)],"g",[h.make_tensor_value_info("x",T.FLOAT,[M,K])],[h.make_tensor_value_info("y",T.FLOAT,None)],[h.make_tensor("W",T.FLOAT,[N,K],W.tobytes(),raw=True)])
bench("Gemm fp32 resident W", sess(h.make_model(g,opset_imports=[h.make_opsetid("",21)]),prepack=False), {"x":x})
# GBQ + Gemm
idx=h.make_tensor("idx",T.INT64,[N],np.arange(N).tobytes(),raw=True)
g=h.make_graph([h.make_node("Shape",["x"],["sh"]),h.make_node("Slice",["sh","z","o"],["s1"]),h.make_node("Mul",["s1","z"],["s0"]),h.make_node("Add",["s0","n"],["tg"]),h.make_node("Expand",["idx","tg"],["ix"]),
  h.make_node("GatherBlockQuantized",["B2","ix","S2"],["w"],domain="com.microsoft",gather_axis=0,quantize_axis=1,block_size=blk,bits=4),h.make_node("Gemm",["x","w"],["y"],transB=1)],"g",
  [h.make_tensor_value_info("x",T.FLOAT,[M,K])],[h.make_tensor_value_info("y",T.FLOAT,None)],
  [h.make_tensor("B2",T.UINT8,[N,K//2],codes.tobytes(),raw=True),h.make_tensor("S2",T.FLOAT,[N,K//blk],scales.tobytes(),raw=True),idx,
   h.make_tensor("z",T.INT64,[1],[0]),h.make_tensor("o",T.INT64,[1],[1]),h.make_tensor("n",T.INT64,[1],[N])])
# blocked DequantizeLinear (opset 21) + Gemm: the previous restore
zp=h.make_tensor("ZP",T.UINT4,[N,K//blk],bytes([0x88])*(N*(K//blk)//2),raw=True)
g2=h.make_graph([h.make_node("Shape",["x"],["sh"]),h.make_node("Slice",["sh","z","o"],["s1"]),h.make_node("Mul",["s1","z"],["s0"]),h.make_node("Add",["s0","nk"],["tg"]),h.make_node("Expand",["S2","tg"],["se"]),
  h.make_node("DequantizeLinear",["Q","se","ZP"],["w"],axis=1,block_size=blk),h.make_node("Gemm",["x","w"],["y"],transB=1)],"g",
  [h.make_tensor_value_info("x",T.FLOAT,[M,K])],[h.make_tensor_value_info("y",T.FLOAT,None)],
  [h.make_tensor("Q",T.UINT4,[N,K],codes.tobytes(),raw=True),h.make_tensor("S2",T.FLOAT,[N,K//blk],scales.tobytes(),raw=True),zp,
   h.make_tensor("z",T.INT64,[1],[0]),h.make_tensor("o",T.INT64,[1],[1]),h.make_tensor("nk",T.INT64,[2],[N,K//blk])])
yd=bench("DequantizeLinear + Gemm fp32", sess(h.make_model(g2,opset_imports=[h.make_opsetid("",21)]),prepack=False), {"x":x})
yg=bench("GBQ + Gemm fp32", sess(h.make_model(g,opset_imports=[h.make_opsetid("",21),h.make_opsetid("com.microsoft",1)]),prepack=False), {"x":x})
print("DQ vs GBQ", np.abs(yd-yg).max()/np.abs(yg).max())
print("acc4 vs exact rel err", np.abs(y4-yg).max()/np.abs(yg).max(), "acc0 vs gbq", np.abs(y0-yg).max()/np.abs(yg).max())
