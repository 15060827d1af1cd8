//! Opset 23's fused standard ops (`Attention`, `RMSNormalization`,
//! `RotaryEmbedding`, written by the dynamo exporter from opset 23 on) as the
//! older standard ops the differentiator and tract know. Each follows the ONNX
//! specification (and its reference implementation) step by step; the tests
//! compare every decomposition with ONNX Runtime's kernel for the op.
//!
//! Decomposing RotaryEmbedding also lets its sin/cos caches broadcast: the
//! exporter gives them batch 1, and ONNX Runtime's kernel then refuses any
//! batch larger than 1.

use crate::builder::{attr_i, GraphBuilder};
use crate::consts::FLOAT;
use crate::error::{Error, Result};
use crate::graph::all_names;
use crate::pb::{GraphProto, ModelProto, NodeProto};
use std::collections::HashMap;

/// The ops this pass replaces (default domain, opset 23 or newer).
pub const OPS: &[&str] = &["Attention", "RMSNormalization", "RotaryEmbedding"];

/// ONNX's BOOL element type.
const BOOL: i32 = 9;

/// Whether `n` is one of the ops this pass replaces.
pub fn is_decomposed(n: &NodeProto, opset: i64) -> bool {
    opset >= 23 && (n.domain.is_empty() || n.domain == "ai.onnx") && OPS.contains(&n.op_type.as_str())
}

/// Replaces every Attention, RMSNormalization and RotaryEmbedding node.
pub fn decompose(proto: &mut ModelProto, opset: i64) -> Result<()> {
    let g = proto.graph.as_mut().expect("checked by caller");
    if !g.node.iter().any(|n| is_decomposed(n, opset)) {
        return Ok(());
    }
    let types = TypeInfo::of(g);
    let mut b = GraphBuilder::new(opset, "attrpatch/opset23/", all_names(g));
    let mut nodes = Vec::with_capacity(g.node.len());
    for n in std::mem::take(&mut g.node) {
        if !is_decomposed(&n, opset) {
            nodes.push(n);
            continue;
        }
        match n.op_type.as_str() {
            "RMSNormalization" => rms_normalization(&mut b, &n)?,
            "RotaryEmbedding" => rotary_embedding(&mut b, &n, &types)?,
            _ => attention(&mut b, &n, &types)?,
        }
        nodes.append(&mut b.nodes);
    }
    g.node = nodes;
    g.initializer.append(&mut b.initializers);
    Ok(())
}

/// Element type and rank of the tensors the model declares (inputs, outputs,
/// value_info, initializers), with Transpose's perm as a fallback for rank.
struct TypeInfo {
    declared: HashMap<String, (i32, Option<usize>)>,
    transposed: HashMap<String, usize>,
}

impl TypeInfo {
    fn of(g: &GraphProto) -> Self {
        use crate::pb::type_proto::Value;
        let mut declared = HashMap::new();
        for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
            if let Some(Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                declared.insert(v.name.clone(), (t.elem_type, t.shape.as_ref().map(|s| s.dim.len())));
            }
        }
        for t in &g.initializer {
            declared.insert(t.name.clone(), (t.data_type, Some(t.dims.len())));
        }
        let transposed = g
            .node
            .iter()
            .filter(|n| n.op_type == "Transpose")
            .filter_map(|n| {
                let perm = n.attribute.iter().find(|a| a.name == "perm")?;
                Some((n.output[0].clone(), perm.ints.len()))
            })
            .collect();
        TypeInfo { declared, transposed }
    }

    fn rank(&self, t: &str) -> Option<usize> {
        self.declared.get(t).and_then(|(_, r)| *r).or_else(|| self.transposed.get(t).copied())
    }

    fn elem_type(&self, t: &str) -> Option<i32> {
        self.declared.get(t).map(|(e, _)| *e)
    }
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a crate::pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}
fn int_attr(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}
fn input(n: &NodeProto, k: usize) -> Option<&str> {
    n.input.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
}
fn output(n: &NodeProto, k: usize) -> Option<&str> {
    n.output.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

fn unsupported(n: &NodeProto, what: &str) -> Error {
    Error::Unsupported(format!("{} node '{}' (opset 23): {what}", n.op_type, n.name))
}

/// A float32 scalar constant.
fn scalar(b: &mut GraphBuilder, v: f64) -> String {
    b.const_scalar(FLOAT, v)
}

/// The rank of `t`, which must be one of `allowed`.
fn rank_of(n: &NodeProto, types: &TypeInfo, t: &str, allowed: &[usize]) -> Result<usize> {
    match types.rank(t) {
        Some(r) if allowed.contains(&r) => Ok(r),
        Some(r) => Err(unsupported(n, &format!("input '{t}' has rank {r}, expected one of {allowed:?}"))),
        None => Err(unsupported(
            n,
            &format!(
                "the rank of input '{t}' is not declared in the model (value_info), and the decomposition \
                 differs between ranks {allowed:?}; run onnx.shape_inference.infer_shapes on the file first"
            ),
        )),
    }
}

/// `Y = X / sqrt(mean(X^2 over axis..) + epsilon) * scale`, in float32.
fn rms_normalization(b: &mut GraphBuilder, n: &NodeProto) -> Result<()> {
    let axis = int_attr(n, "axis", -1);
    if axis >= 0 {
        return Err(unsupported(
            n,
            &format!("axis {axis}: only negative axes (counted from the end) are decomposed; re-export with axis=-1"),
        ));
    }
    let eps = attr(n, "epsilon").map(|a| a.f as f64).unwrap_or(1e-5);
    let (x, scale) = (n.input[0].as_str(), n.input[1].as_str());
    let sq = b.mul(x, x);
    let axes: Vec<i64> = (axis..0).collect();
    let ms = b.reduce_mean(&sq, &axes, true);
    let e = scalar(b, eps);
    let ms = b.add(&ms, &e);
    let rms = b.node("Sqrt", &[&ms], vec![]);
    let normed = b.div(x, &rms);
    b.node_named("Mul", &[&normed, scale], &n.output[0], vec![]);
    Ok(())
}

/// Rotates the first `rotary_embedding_dim` features of each head by the
/// positions' angles: halves (or even/odd pairs when interleaved) `x1, x2`
/// become `cos x1 - sin x2, sin x1 + cos x2`.
fn rotary_embedding(b: &mut GraphBuilder, n: &NodeProto, types: &TypeInfo) -> Result<()> {
    let x = n.input[0].as_str();
    let rank = rank_of(n, types, x, &[3, 4])?;
    let interleaved = int_attr(n, "interleaved", 0) != 0;
    let num_heads = int_attr(n, "num_heads", 0);
    let rot = int_attr(n, "rotary_embedding_dim", 0);
    let (mut cos, mut sin) = (n.input[1].clone(), n.input[2].clone());
    if let Some(pos) = input(n, 3) {
        // caches [max_position, rot/2] indexed by position ids [B, S]
        cos = b.node("Gather", &[&cos, pos], vec![attr_i("axis", 0)]);
        sin = b.node("Gather", &[&sin, pos], vec![attr_i("axis", 0)]);
    }
    // cos/sin [B or 1, S, rot/2] against x in [B, H, S, D] (rank 4) or [B, S, H, D] (rank 3).
    let (x4, head_axis) = if rank == 4 {
        (x.to_string(), 1)
    } else {
        if num_heads <= 0 {
            return Err(unsupported(n, "a rank-3 input needs the num_heads attribute"));
        }
        let s = b.const_i64s(&[0, 0, num_heads, -1]);
        (b.reshape(x, &s), 2)
    };
    let cos = b.unsqueeze(&cos, &[head_axis]);
    let sin = b.unsqueeze(&sin, &[head_axis]);
    let (x_rot, x_pass) = if rot > 0 {
        let (zero, r, end, last) =
            (b.const_i64s(&[0]), b.const_i64s(&[rot]), b.const_i64s(&[i64::MAX]), b.const_i64s(&[-1]));
        let x_rot = b.node("Slice", &[&x4, &zero, &r, &last], vec![]);
        let x_pass = b.node("Slice", &[&x4, &r, &end, &last], vec![]);
        (x_rot, Some(x_pass))
    } else {
        (x4.clone(), None)
    };
    let (x1, x2) = if interleaved {
        let (zero, one, end, last, two) = (
            b.const_i64s(&[0]),
            b.const_i64s(&[1]),
            b.const_i64s(&[i64::MAX]),
            b.const_i64s(&[-1]),
            b.const_i64s(&[2]),
        );
        let x1 = b.node("Slice", &[&x_rot, &zero, &end, &last, &two], vec![]);
        let x2 = b.node("Slice", &[&x_rot, &one, &end, &last, &two], vec![]);
        (x1, x2)
    } else {
        let mut halves = b.node_n("Split", &[&x_rot], 2, vec![attr_i("axis", -1), attr_i("num_outputs", 2)]);
        let x2 = halves.pop().expect("two outputs");
        (halves.pop().expect("two outputs"), x2)
    };
    let (c1, s2) = (b.mul(&cos, &x1), b.mul(&sin, &x2));
    let real = b.sub(&c1, &s2);
    let (s1, c2) = (b.mul(&sin, &x1), b.mul(&cos, &x2));
    let imag = b.add(&s1, &c2);
    let rotated = if interleaved {
        let real = b.unsqueeze(&real, &[-1]);
        let imag = b.unsqueeze(&imag, &[-1]);
        let pairs = b.concat(&[&real, &imag], -1);
        b.reshape_like(&pairs, &x_rot)
    } else {
        b.concat(&[&real, &imag], -1)
    };
    let out = match &x_pass {
        Some(p) => b.concat(&[&rotated, p], -1),
        None => rotated,
    };
    if rank == 4 {
        b.node_named("Identity", &[&out], &n.output[0], vec![]);
    } else {
        let s = b.shape(x);
        b.node_named("Reshape", &[&out, &s], &n.output[0], vec![]);
    }
    Ok(())
}

/// `softmax(softcap(Q K^T * scale) + mask) V`, heads grouped as the spec's
/// GQA (query head h reads key/value head h / (q_heads / kv_heads)).
fn attention(b: &mut GraphBuilder, n: &NodeProto, types: &TypeInfo) -> Result<()> {
    if input(n, 6).is_some() {
        return Err(unsupported(n, "the nonpad_kv_seqlen input (an external KV cache) is not decomposed"));
    }
    if int_attr(n, "qk_matmul_output_mode", 0) != 0 && output(n, 3).is_some() {
        return Err(unsupported(n, "qk_matmul_output_mode other than 0 is not decomposed"));
    }
    if int_attr(n, "left_window_size", -1) >= 0 || int_attr(n, "right_window_size", -1) >= 0 {
        return Err(unsupported(n, "sliding-window attention (left/right_window_size) is not decomposed"));
    }
    let (q, k, v) = (n.input[0].as_str(), n.input[1].as_str(), n.input[2].as_str());
    let rank = rank_of(n, types, q, &[3, 4])?;
    let (q4, k4, v4) = if rank == 4 {
        (q.to_string(), k.to_string(), v.to_string())
    } else {
        let qh = int_attr(n, "q_num_heads", 0);
        let kvh = int_attr(n, "kv_num_heads", 0);
        if qh <= 0 || kvh <= 0 {
            return Err(unsupported(n, "rank-3 inputs need the q_num_heads and kv_num_heads attributes"));
        }
        (split_heads(b, q, qh), split_heads(b, k, kvh), split_heads(b, v, kvh))
    };
    let (k4, v4) = match (input(n, 4), input(n, 5)) {
        (Some(pk), Some(pv)) => (b.concat(&[pk, &k4], 2), b.concat(&[pv, &v4], 2)),
        (None, None) => (k4, v4),
        _ => return Err(unsupported(n, "past_key and past_value must be given together")),
    };
    if let Some(o) = output(n, 1) {
        b.node_named("Identity", &[&k4], o, vec![]);
    }
    if let Some(o) = output(n, 2) {
        b.node_named("Identity", &[&v4], o, vec![]);
    }
    let shape_q = b.shape(&q4);
    let (k4g, v4g) = (repeat_kv(b, &k4, &shape_q), repeat_kv(b, &v4, &shape_q));
    let scale = match attr(n, "scale") {
        Some(a) => scalar(b, a.f as f64),
        None => {
            // 1 / sqrt(head size of Q)
            let (a, e) = (b.const_i64s(&[3]), b.const_i64s(&[4]));
            let d = b.node("Slice", &[&shape_q, &a, &e], vec![]);
            let d = b.cast(&d, FLOAT);
            let r = b.node("Sqrt", &[&d], vec![]);
            b.node("Reciprocal", &[&r], vec![])
        }
    };
    let kt = b.transpose(&k4g, &[0, 1, 3, 2]);
    let qk = b.matmul(&q4, &kt);
    let mut scores = b.mul(&qk, &scale);
    let softcap = attr(n, "softcap").map(|a| a.f as f64).unwrap_or(0.0);
    if softcap > 0.0 {
        let c = scalar(b, softcap);
        let t = b.div(&scores, &c);
        let t = b.node("Tanh", &[&t], vec![]);
        scores = b.mul(&t, &c);
    }
    let lowest = scalar(b, f32::MIN as f64);
    if let Some(mask) = input(n, 3) {
        scores = match types.elem_type(mask) {
            Some(BOOL) => b.node("Where", &[mask, &scores, &lowest], vec![]),
            Some(t) if crate::consts::is_float(t) => b.add(&scores, mask),
            _ => {
                return Err(unsupported(
                    n,
                    &format!("the element type of attn_mask '{mask}' is not declared (bool and float masks differ)"),
                ))
            }
        };
    }
    if int_attr(n, "is_causal", 0) != 0 {
        let allowed = causal(b, &scores);
        scores = b.node("Where", &[&allowed, &scores, &lowest], vec![]);
    }
    let probs = b.node("Softmax", &[&scores], vec![attr_i("axis", -1)]);
    let y4 = b.matmul(&probs, &v4g);
    if rank == 4 {
        b.node_named("Identity", &[&y4], &n.output[0], vec![]);
    } else {
        let t = b.transpose(&y4, &[0, 2, 1, 3]);
        let s = b.const_i64s(&[0, 0, -1]);
        b.node_named("Reshape", &[&t, &s], &n.output[0], vec![]);
    }
    Ok(())
}

/// [B, S, H*D] -> [B, H, S, D].
fn split_heads(b: &mut GraphBuilder, x: &str, heads: i64) -> String {
    let s = b.const_i64s(&[0, 0, heads, -1]);
    let r = b.reshape(x, &s);
    b.transpose(&r, &[0, 2, 1, 3])
}

/// Key/value heads [B, kv, L, D] repeated to Q's head count (shape `shape_q`
/// [B, H, S, Dq]), each kv head for H / kv consecutive query heads; the
/// identity when the counts agree.
fn repeat_kv(b: &mut GraphBuilder, x: &str, shape_q: &str) -> String {
    let shape_x = b.shape(x);
    let (h0, h1) = (b.const_i64s(&[1]), b.const_i64s(&[2]));
    let qh = b.node("Slice", &[shape_q, &h0, &h1], vec![]);
    let kvh = b.node("Slice", &[&shape_x, &h0, &h1], vec![]);
    let group = b.div(&qh, &kvh);
    let x5 = b.unsqueeze(x, &[2]);
    let one = b.const_i64s(&[1]);
    let target = b.concat(&[&one, &one, &group, &one, &one], 0);
    let expanded = b.node("Expand", &[&x5, &target], vec![]);
    let (b0, b1, tail0, tail1) = (b.const_i64s(&[0]), b.const_i64s(&[1]), b.const_i64s(&[2]), b.const_i64s(&[4]));
    let batch = b.node("Slice", &[&shape_x, &b0, &b1], vec![]);
    let tail = b.node("Slice", &[&shape_x, &tail0, &tail1], vec![]);
    let merged = b.concat(&[&batch, &qh, &tail], 0);
    b.reshape(&expanded, &merged)
}

/// The bottom-right-aligned causal pattern for `scores` [.., S, L]: query i
/// sees key j when j <= i + (L - S).
fn causal(b: &mut GraphBuilder, scores: &str) -> String {
    let shape = b.shape(scores);
    let (a, m, e) = (b.const_i64s(&[-2]), b.const_i64s(&[-1]), b.const_i64s(&[i64::MAX]));
    let s = b.node("Slice", &[&shape, &a, &m], vec![]);
    let l = b.node("Slice", &[&shape, &m, &e], vec![]);
    let sq = b.node("Squeeze", &[&s], vec![]);
    let lq = b.node("Squeeze", &[&l], vec![]);
    let zero = b.node("Constant", &[], vec![value_i64_scalar(0)]);
    let one = b.node("Constant", &[], vec![value_i64_scalar(1)]);
    let rows = b.node("Range", &[&zero, &sq, &one], vec![]);
    let cols = b.node("Range", &[&zero, &lq, &one], vec![]);
    let offset = b.sub(&lq, &sq);
    let rows = b.add(&rows, &offset);
    let rows = b.unsqueeze(&rows, &[1]);
    let cols = b.unsqueeze(&cols, &[0]);
    b.node("GreaterOrEqual", &[&rows, &cols], vec![])
}

fn value_i64_scalar(v: i64) -> crate::pb::AttributeProto {
    crate::builder::attr_t("value", crate::consts::i64_tensor("value", &[], &[v]))
}
