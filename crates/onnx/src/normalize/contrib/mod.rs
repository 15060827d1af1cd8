//! ONNX Runtime's fused `com.microsoft` ops (and its default-domain
//! SimplifiedLayerNormalization) as standard ONNX ops, one file per op family.
//! Each decomposition computes what ONNX Runtime's CPU kernel computes, so the
//! autodiff's existing rules apply to the result (tests/contrib.rs compares
//! every one with the kernel on random inputs).

mod attention;
mod embed;
mod gelu;
mod gqa;
mod heads;
mod norm;
mod rotary;

use crate::builder::GraphBuilder;
use crate::error::bail;
use crate::error::Result;
use crate::graph::all_names;
use crate::pb::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use std::collections::HashSet;

/// ONNX Runtime's contrib-op domain.
pub const MS_DOMAIN: &str = "com.microsoft";

/// The ops this module decomposes, as (domain, op type).
pub const DECOMPOSED: &[(&str, &str)] = &[
    (MS_DOMAIN, "SkipLayerNormalization"),
    (MS_DOMAIN, "SkipSimplifiedLayerNormalization"),
    ("", "SimplifiedLayerNormalization"),
    (MS_DOMAIN, "SimplifiedLayerNormalization"),
    (MS_DOMAIN, "LayerNormalization"),
    // ONNX Runtime runs default-domain LayerNormalization below opset 17 (its
    // own kernel, before ONNX had the op); tract and the ONNX checker do not.
    ("", "LayerNormalization"),
    (MS_DOMAIN, "EmbedLayerNormalization"),
    (MS_DOMAIN, "FastGelu"),
    (MS_DOMAIN, "BiasGelu"),
    (MS_DOMAIN, "Gelu"),
    (MS_DOMAIN, "QuickGelu"),
    (MS_DOMAIN, "BiasAdd"),
    (MS_DOMAIN, "Attention"),
    (MS_DOMAIN, "MultiHeadAttention"),
    (MS_DOMAIN, "GroupQueryAttention"),
    (MS_DOMAIN, "RotaryEmbedding"),
];

/// What a decomposition may ask about the graph around its node.
pub(crate) struct Ctx<'g> {
    g: &'g GraphProto,
    graph_inputs: &'g [ValueInfoProto],
    /// Names read by some node or listed as graph outputs.
    consumed: HashSet<String>,
    /// Graph inputs that a decomposition made unused (an empty KV cache): removed at the end.
    pub(crate) dropped_inputs: Vec<String>,
    nodes: &'g [NodeProto],
}

impl Ctx<'_> {
    /// Whether output `i` of `n` exists and something reads it.
    pub(crate) fn used(&self, n: &NodeProto, i: usize) -> bool {
        n.output.get(i).is_some_and(|o| !o.is_empty() && self.consumed.contains(o))
    }
    /// The declared graph input of that name, if `name` is one.
    pub(crate) fn graph_input(&self, name: &str) -> Option<&ValueInfoProto> {
        self.graph_inputs.iter().find(|v| v.name == name)
    }
    /// The dims of a constant tensor (initializer or Constant node output).
    pub(crate) fn constant_dims(&self, name: &str) -> Option<Vec<i64>> {
        crate::consts::find_constant(self.g, name).map(|t| t.dims.clone())
    }
    /// The node producing `name`, if any.
    pub(crate) fn producer(&self, name: &str) -> Option<&NodeProto> {
        self.nodes.iter().find(|n| n.output.iter().any(|o| o == name))
    }
    /// The declared rank of `name` when it is a graph input, or when it comes
    /// from one through Cast/Identity nodes (how exporters feed masks).
    pub(crate) fn declared_rank(&self, name: &str) -> Option<usize> {
        let mut cur = name.to_string();
        // Axes a Gather of a table adds on the way back to a declared input.
        let mut extra = 0;
        // Through every layer's residual stream back to the embedding (bounded: no cycles in a DAG).
        for _ in 0..self.nodes.len() + 1 {
            if let Some(v) = self.graph_input(&cur) {
                return v.r#type.as_ref().and_then(|t| match &t.value {
                    Some(crate::pb::type_proto::Value::TensorType(tt)) => {
                        tt.shape.as_ref().map(|s| s.dim.len() + extra)
                    }
                    _ => None,
                });
            }
            let p = self.producer(&cur)?;
            // Ops whose first output has their first input's rank: casts, the
            // norms, a projection by a matrix, element-wise ops by a weight
            // (the builder's float16 layout feeds RotaryEmbedding a q_proj output).
            let keeps_rank = matches!(
                p.op_type.as_str(),
                "Cast"
                    | "Identity"
                    | "LayerNormalization"
                    | "SimplifiedLayerNormalization"
                    | "SkipLayerNormalization"
                    | "SkipSimplifiedLayerNormalization"
                    | "RMSNormalization"
            ) || (matches!(p.op_type.as_str(), "Add" | "Mul" | "Sub" | "Div")
                && p.input.get(1).is_some_and(|w| self.constant_dims(w).is_none_or(|d| d.len() <= 1)))
                || (p.op_type == "MatMul"
                    && p.input.get(1).is_some_and(|w| self.constant_dims(w).is_some_and(|d| d.len() == 2)));
            // A table: a 2-D constant, or the transposed lm_head weight of tied embeddings.
            let matrix = |t: &str| {
                self.constant_dims(t).is_some_and(|d| d.len() == 2)
                    || self.producer(t).is_some_and(|q| {
                        q.op_type == "Transpose" && self.constant_dims(&q.input[0]).is_some_and(|d| d.len() == 2)
                    })
            };
            if p.op_type == "Gather" && p.output.first() == Some(&cur) && matrix(&p.input[0]) {
                extra += 1;
                cur = p.input.get(1)?.clone();
                continue;
            }
            // The skip norms' other outputs (the residual sum) keep the rank too.
            let skip_norm = p.op_type.starts_with("Skip");
            if !keeps_rank || (!skip_norm && p.output.first() != Some(&cur)) {
                return None;
            }
            cur = p.input.first()?.clone();
        }
        None
    }
}

/// The `i`th input of `n` when present (ONNX marks absent optional inputs with "").
pub(crate) fn input(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

/// The `i`th input of `n`, which the op requires.
pub(crate) fn required<'n>(n: &'n NodeProto, i: usize, what: &str) -> Result<&'n str> {
    match input(n, i) {
        Some(s) => Ok(s),
        None => bail!(Model, "{} node '{}' has no {what} (input {i}), which the op requires", n.op_type, n.name),
    }
}

pub(crate) fn attr_int(n: &NodeProto, name: &str, default: i64) -> i64 {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i).unwrap_or(default)
}
pub(crate) fn attr_float(n: &NodeProto, name: &str, default: f32) -> f32 {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.f).unwrap_or(default)
}
pub(crate) fn attr_ints_of(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
}

/// Gives the tensor `src` the name `out` (an Identity node), so consumers of
/// the fused op's output read the decomposition's result.
pub(crate) fn bind(b: &mut GraphBuilder, src: &str, out: &str) {
    b.node_named("Identity", &[src], out, vec![]);
}

/// Refuses an optional output that something reads but the decomposition does not make.
pub(crate) fn refuse_used_output(cx: &Ctx, n: &NodeProto, i: usize, what: &str) -> Result<()> {
    if cx.used(n, i) {
        bail!(
            Unsupported,
            "{} node '{}': its output {i} ('{}', {what}) is read by the graph, and attrpatch's decomposition of {} \
             does not produce it",
            n.op_type,
            n.name,
            n.output[i],
            n.op_type
        );
    }
    Ok(())
}

/// Whether this module decomposes `n` in a model of default-domain `opset`
/// (LayerNormalization is standard from opset 17, has its gradient rule, and stays).
pub fn is_decomposed(n: &NodeProto, opset: i64) -> bool {
    let domain = if n.domain == "ai.onnx" { "" } else { n.domain.as_str() };
    let standard = n.op_type == "LayerNormalization" && domain.is_empty() && opset >= 17;
    !standard && DECOMPOSED.iter().any(|(d, op)| *d == domain && *op == n.op_type)
}

fn decompose_node(b: &mut GraphBuilder, n: &NodeProto, cx: &mut Ctx) -> Result<()> {
    match n.op_type.as_str() {
        "SkipLayerNormalization" => norm::skip_layer_norm(b, n, cx, false),
        "SkipSimplifiedLayerNormalization" => norm::skip_layer_norm(b, n, cx, true),
        "SimplifiedLayerNormalization" => norm::layer_norm(b, n, cx, true),
        "LayerNormalization" => norm::layer_norm(b, n, cx, false),
        "EmbedLayerNormalization" => embed::embed_layer_norm(b, n, cx),
        "FastGelu" | "BiasGelu" | "Gelu" | "QuickGelu" | "BiasAdd" => gelu::activation(b, n),
        "Attention" => attention::attention(b, n, cx),
        "MultiHeadAttention" => attention::multi_head_attention(b, n, cx),
        "GroupQueryAttention" => gqa::group_query_attention(b, n, cx),
        "RotaryEmbedding" => rotary::rotary_embedding_op(b, n, cx),
        other => bail!(Unsupported, "no decomposition for {other} (node '{}')", n.name),
    }
}

/// Replaces every contrib op that has a decomposition by standard ops, in place
/// (the new nodes take the fused node's position, so the graph stays sorted).
pub fn decompose(proto: &mut ModelProto, opset: i64) -> Result<()> {
    let Some(g) = proto.graph.as_mut() else { return Ok(()) };
    if !g.node.iter().any(|n| is_decomposed(n, opset)) {
        return Ok(());
    }
    let (nodes, inits, dropped) = decompose_graph(g, opset)?;
    g.node = nodes;
    g.initializer.extend(inits);
    let still_read: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(|s| s.as_str())).collect();
    g.input.retain(|i| !dropped.contains(&i.name) || still_read.contains(i.name.as_str()));
    // What fed only the fused ops' unread inputs (GenAI's seqlens_k subgraph) goes.
    crate::prune::prune_dead(g);
    if !g.node.iter().any(|n| n.domain == MS_DOMAIN) {
        proto.opset_import.retain(|o| o.domain != MS_DOMAIN);
    }
    Ok(())
}

type Decomposed = (Vec<NodeProto>, Vec<crate::pb::TensorProto>, Vec<String>);

fn decompose_graph(g: &GraphProto, opset: i64) -> Result<Decomposed> {
    let mut consumed: HashSet<String> = g.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    consumed.extend(g.output.iter().map(|o| o.name.clone()));
    let mut cx = Ctx { g, graph_inputs: &g.input, consumed, dropped_inputs: vec![], nodes: &g.node };
    let mut b = GraphBuilder::new(opset, "attrpatch/contrib/", all_names(g));
    let mut nodes = Vec::with_capacity(g.node.len());
    for n in &g.node {
        if is_decomposed(n, opset) {
            decompose_node(&mut b, n, &mut cx)?;
            nodes.append(&mut b.nodes);
        } else {
            nodes.push(n.clone());
        }
    }
    Ok((nodes, std::mem::take(&mut b.initializers), cx.dropped_inputs))
}
