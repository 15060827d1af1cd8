//! KV-cache decoders as plain decoders. optimum's "with past" decoders, its
//! merged decoders and the onnxruntime-genai builder's models take the cache
//! of earlier tokens as `past_key_values.*` inputs and return the grown cache
//! as `present.*` outputs. With an empty past (sequence length 0) they compute
//! the plain decoder's logits, so the past becomes an in-graph empty tensor,
//! the `present.*` outputs are dropped and a merged decoder's
//! `use_cache_branch` becomes the constant `false` (its `If` is then inlined).
//! ONNX Runtime's own GPT-2 converter (`onnxruntime.transformers.models.gpt2.
//! convert_to_onnx`) names its caches `past_0`, `past_1`, ... with keys and
//! values stacked: [2, batch, heads, past, head size].

use crate::builder::{attr_t, GraphBuilder};
use crate::consts::{elem_size, BOOL};
use crate::error::{Error, Result};
use crate::facts::Dim;
use crate::graph::{all_names, declared_dims};
use crate::pb::{type_proto, GraphProto, ModelProto, TensorProto, ValueInfoProto};
use std::path::Path;

/// Prefix of every node this pass adds: the empty caches it builds are
/// recognisable to later passes (GroupQueryAttention's decomposition drops them).
pub const NAME_PREFIX: &str = "attrpatch/kv_cache/";

/// Whether a graph input is a cache of earlier tokens.
pub fn is_past_input(name: &str) -> bool {
    let stacked = name.strip_prefix("past_").is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
    stacked || name.starts_with("past_key_values") || name.starts_with("past_key.") || name.starts_with("past_value.")
}

/// Whether a graph output is the grown cache.
pub fn is_present_output(name: &str) -> bool {
    name.starts_with("present")
}

/// A graph input's element type and declared dims.
fn declared(vi: &ValueInfoProto) -> (i32, Vec<Dim>) {
    let elem = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.elem_type,
        _ => return (0, vec![]),
    };
    (elem, declared_dims(vi))
}

/// Feeds every `past_key_values.*` input an empty tensor built in the graph,
/// makes `use_cache_branch` the constant false and drops `present.*`
/// outputs. Returns whether the model had a cache.
pub fn feed_empty_cache(proto: &mut ModelProto, opset: i64, path: &Path) -> Result<bool> {
    let g = proto.graph.as_mut().expect("checked by caller");
    let has_flag = g.input.iter().any(|i| i.name == "use_cache_branch");
    let pasts: Vec<ValueInfoProto> = g.input.iter().filter(|i| is_past_input(&i.name)).cloned().collect();
    if pasts.is_empty() && !has_flag {
        return Ok(false);
    }
    let tokens = g
        .input
        .iter()
        .find(|i| i.name == "input_ids")
        .or_else(|| g.input.iter().find(|i| !is_past_input(&i.name) && i.name != "use_cache_branch"))
        .map(|i| i.name.clone())
        .ok_or_else(|| {
            Error::Model(format!("{}: the graph takes only KV-cache inputs, no token input", path.display()))
        })?;
    let mut b = GraphBuilder::new(opset, NAME_PREFIX, all_names(g));
    let mut batch: Option<String> = None;
    for vi in &pasts {
        let (elem, dims) = declared(vi);
        if elem_size(elem).is_none() || dims.is_empty() {
            return Err(Error::Model(format!(
                "{}: KV-cache input '{}' declares no element type or shape; attrpatch feeds it an empty \
                 cache and needs both",
                path.display(),
                vi.name
            )));
        }
        let seq_axis = sequence_axis(&dims);
        let batch_axis = batch_axis(&dims);
        let mut parts = vec![];
        for (k, d) in dims.iter().enumerate() {
            let part = if Some(k) == seq_axis {
                b.const_i64s(&[0])
            } else if k == batch_axis {
                batch.get_or_insert_with(|| first_dim(&mut b, &tokens, 0)).clone()
            } else {
                match d {
                    Dim::Known(v) => b.const_i64s(&[*v]),
                    _ => dim_from_consumers(&mut b, g, &vi.name, k, path)?,
                }
            };
            parts.push(part);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let shape = b.concat(&refs, 0);
        let zero = TensorProto {
            name: "value".into(),
            dims: vec![1],
            data_type: elem,
            raw_data: vec![0; elem_size(elem).unwrap() as usize],
            ..Default::default()
        };
        b.node_named("ConstantOfShape", &[&shape], &vi.name, vec![attr_t("value", zero)]);
    }
    if has_flag {
        // `If` on use_cache_branch: false takes the branch without a cache.
        g.initializer.push(TensorProto {
            name: "use_cache_branch".into(),
            dims: vec![1],
            data_type: BOOL,
            raw_data: vec![0],
            ..Default::default()
        });
    }
    g.input.retain(|i| !is_past_input(&i.name) && i.name != "use_cache_branch");
    g.output.retain(|o| !is_present_output(&o.name));
    let mut nodes = std::mem::take(&mut b.nodes);
    nodes.append(&mut g.node);
    g.node = nodes;
    g.initializer.append(&mut b.initializers);
    Ok(true)
}

/// The cache's sequence axis: the dim whose name speaks of a sequence or the
/// past, else axis 2 of the usual `[batch, heads, sequence, head_dim]`.
fn sequence_axis(dims: &[Dim]) -> Option<usize> {
    let named = dims.iter().position(|d| match d {
        Dim::Sym(s) => {
            let s = s.to_lowercase();
            s.contains("seq") || s.contains("past") || s.contains("length")
        }
        _ => false,
    });
    named.or(if dims.len() == 4 { Some(2) } else { None })
}

/// The cache's batch axis: the dim whose name speaks of a batch, else axis 1
/// of the GPT-2 converter's stacked [2, batch, heads, past, head size], else 0.
fn batch_axis(dims: &[Dim]) -> usize {
    let named = dims.iter().position(|d| matches!(d, Dim::Sym(s) if s.to_lowercase().contains("batch")));
    let stacked = dims.len() == 5 && matches!(dims[0], Dim::Known(2));
    named.unwrap_or(if stacked { 1 } else { 0 })
}

/// `Shape(x)[k]` as a 1-element int64 tensor.
fn first_dim(b: &mut GraphBuilder, x: &str, k: i64) -> String {
    let s = b.shape(x);
    let (start, end) = (b.const_i64s(&[k]), b.const_i64s(&[k + 1]));
    b.node("Slice", &[&s, &start, &end], vec![])
}

fn attr_int(n: &crate::pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// A symbolic cache dim read from the graph: the other operand of the Concat
/// that appends the new keys/values, or GroupQueryAttention's head counts and
/// the width of its key (or packed query) input.
fn dim_from_consumers(b: &mut GraphBuilder, g: &GraphProto, past: &str, k: usize, path: &Path) -> Result<String> {
    let users: Vec<_> = g.node.iter().filter(|n| n.input.iter().any(|i| i == past)).collect();
    for n in &users {
        if n.op_type == "Concat" {
            if let Some(other) = n.input.iter().find(|i| i.as_str() != past && !i.is_empty()) {
                return Ok(first_dim(b, other, k as i64));
            }
        }
        // MultiHeadAttention's past_key/past_value [B, heads, past, head size] (the GenAI
        // builder's float16 CPU layout without grouped keys): heads and the key's width.
        if n.op_type == "MultiHeadAttention" {
            if let Some(h) = attr_int(n, "num_heads") {
                if k == 1 {
                    return Ok(b.const_i64s(&[h]));
                }
                let width_of = n.input.get(1).filter(|s| !s.is_empty()).or(n.input.first());
                if let (3, Some(width_of)) = (k, width_of) {
                    let w = first_dim(b, width_of, 2);
                    let d = b.const_i64s(&[h]);
                    return Ok(b.div(&w, &d));
                }
            }
        }
        if n.op_type == "GroupQueryAttention" {
            let (heads, kv_heads) = (attr_int(n, "num_heads"), attr_int(n, "kv_num_heads"));
            if let (Some(h), Some(kv)) = (heads, kv_heads) {
                if k == 1 {
                    return Ok(b.const_i64s(&[kv]));
                }
                if k == 3 {
                    let key = n.input.get(1).filter(|s| !s.is_empty());
                    let (width_of, parts) = match (key, n.input.first()) {
                        (Some(key), _) => (key.clone(), kv),
                        (None, Some(q)) => (q.clone(), h + 2 * kv),
                        (None, None) => continue,
                    };
                    let w = first_dim(b, &width_of, 2);
                    let d = b.const_i64s(&[parts]);
                    return Ok(b.div(&w, &d));
                }
            }
        }
    }
    let ops: Vec<String> = users.iter().map(|n| format!("{} '{}'", n.op_type, n.name)).collect();
    Err(Error::Unsupported(format!(
        "{}: KV-cache input '{past}' has a symbolic dim {k} that attrpatch cannot read from the graph (it feeds \
         {}); attrpatch feeds the cache empty and needs its other dims: export the decoder without a cache \
         (optimum-cli export onnx --task text-generation)",
        path.display(),
        if ops.is_empty() { "no node".to_string() } else { ops.join(", ") }
    )))
}
