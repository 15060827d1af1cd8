//! Finding the attention out-projections from the graph's structure, for
//! graphs whose names say nothing (renamed, stripped or re-serialised files).
//!
//! Attention is `softmax(Q K^T) V`, then the heads are merged back into one
//! feature axis (Transpose/Reshape) and projected: the out-projection is the
//! first MatMul/Gemm with a constant weight that the merged heads reach
//! through layout ops only. Its activation input is the hook, as with names.

use attrpatch_onnx::pb::{GraphProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// Ops between the softmax and the probabilities' MatMul with V: casts, masks
/// (Where), and BLOOM's `[B*H, S, S]` view.
const PROBS_PASS: &[&str] = &["Cast", "Where", "Identity", "Dropout", "Reshape", "Squeeze", "Unsqueeze"];
/// Ops that merge heads or only change layout between `P V` and the out-projection.
const MERGE_PASS: &[&str] = &["Transpose", "Reshape", "Identity", "Cast", "Flatten", "Squeeze", "Unsqueeze"];

/// One attention block found by structure: the out-projection node and its
/// activation input, in graph order.
pub struct Found<'a> {
    /// The out-projection node (a MatMul or Gemm with a constant weight).
    pub node: &'a NodeProto,
    /// Its activation input, the merged heads: the hook tensor.
    pub tensor: String,
}

/// Every out-projection reached from a Softmax as described above, in graph order.
pub fn find<'a>(g: &'a GraphProto, consts: &HashSet<String>) -> Vec<Found<'a>> {
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    let mut found: Vec<Found> = vec![];
    let mut seen: HashSet<&str> = HashSet::new();
    for sm in g.node.iter().filter(|n| n.op_type == "Softmax") {
        let Some(pv) = probs_times_values(&consumers, consts, &sm.output[0]) else { continue };
        if let Some((proj, t)) = merged_heads_projection(&consumers, consts, &pv.output[0]) {
            if seen.insert(proj.name.as_str()) {
                found.push(Found { node: proj, tensor: t });
            }
        }
    }
    found
}

/// The MatMul taking (the attention probabilities, V), V not a constant.
fn probs_times_values<'a>(
    consumers: &HashMap<&str, Vec<&'a NodeProto>>,
    consts: &HashSet<String>,
    probs: &str,
) -> Option<&'a NodeProto> {
    let mut frontier = vec![probs.to_string()];
    for _ in 0..4 {
        let mut next = vec![];
        for t in &frontier {
            for n in consumers.get(t.as_str()).into_iter().flatten() {
                if n.op_type == "MatMul" && n.input[0] == *t && n.input.get(1).is_some_and(|v| !consts.contains(v)) {
                    return Some(n);
                }
                // sdpa exports replace NaN rows: Where(IsNaN(p), 0, p) carries p in its data inputs.
                let carries = if n.op_type == "Where" { n.input[1..].contains(t) } else { n.input[0] == *t };
                if PROBS_PASS.contains(&n.op_type.as_str()) && carries {
                    next.push(n.output[0].clone());
                }
            }
        }
        frontier = next;
    }
    None
}

/// From `P V`, through head-merge layout ops (at least one), to the first
/// MatMul/Gemm with a constant weight: (that node, its activation input).
fn merged_heads_projection<'a>(
    consumers: &HashMap<&str, Vec<&'a NodeProto>>,
    consts: &HashSet<String>,
    pv: &str,
) -> Option<(&'a NodeProto, String)> {
    let mut t = pv.to_string();
    let mut merged = false;
    for _ in 0..6 {
        let users = consumers.get(t.as_str())?;
        if merged {
            if let Some(n) = users.iter().find(|n| {
                matches!(n.op_type.as_str(), "MatMul" | "Gemm")
                    && n.input.first() == Some(&t)
                    && n.input.get(1).is_some_and(|w| consts.contains(w))
            }) {
                return Some((n, t));
            }
        }
        let next = users.iter().find(|n| MERGE_PASS.contains(&n.op_type.as_str()) && n.input[0] == t)?;
        merged |= matches!(next.op_type.as_str(), "Transpose" | "Reshape" | "Flatten");
        t = next.output[0].clone();
    }
    None
}
