//! The anatomy of every transformer block as edge scoring needs it: where the
//! residual stream enters each block, the attention layer-norm between it and
//! the Q/K/V projections, which projection columns each head reads, the
//! out-projection the head writers come from, where the MLP reads the residual
//! and what it adds back, and the final layer-norm's input.
//!
//! Everything is read from the graph's structure (no names), except the column
//! layout of a fused Q/K/V projection, which follows its family's convention
//! (`FusedLayout`). A layout this module does not know is refused with an error
//! naming the layer, the node and what was expected. Exact edge patching can
//! build on the same description: every reader's input is one tensor here.

use crate::hooks::Hook;
use attrpatch_onnx::consts::is_float;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::Facts;
use attrpatch_onnx::pb::{GraphProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// Ops that only move or relabel values: followed when tracing a tensor.
const LAYOUT: &[&str] = &["Reshape", "Transpose", "Identity", "Cast", "Flatten", "Squeeze", "Unsqueeze"];
/// Ops that pass the residual stream on unchanged but for its layout (OPT
/// flattens it to [batch*seq, d] around the MLP).
const STREAM: &[&str] = &["Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"];
/// Ops whose outputs are never float (whatever the facts say): they carry no gradient.
const NO_FLOAT_OUTPUT: &[&str] = &[
    "Shape",
    "Size",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "ArgMax",
    "ArgMin",
    "IsNaN",
    "IsInf",
    "NonZero",
];
/// The most nodes a layer-norm may have (decomposed forms are ~12).
const MAX_NORM_NODES: usize = 40;

/// A Q/K/V projection: a MatMul or Gemm with a constant weight reading the
/// attention layer-norm's output.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Projection {
    /// The node's name.
    pub node: String,
    /// "MatMul" or "Gemm".
    pub op_type: String,
    /// The weight initializer (or constant tensor).
    pub weight: String,
    /// Gemm's transB: the weight is stored [out, in].
    pub trans_b: bool,
    /// Gemm's C input (the bias), if any.
    pub bias: Option<String>,
    /// Rank of the projection's activation input (2 for GPT-2's flattened Gemm).
    pub input_rank: usize,
    /// The projection's output tensor.
    pub output: String,
    /// Output columns.
    pub width: usize,
}

/// Where one q/k/v reader's columns are: `head_dim` columns of a projection's
/// output starting at `column`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadRead {
    /// Index into `Block::projections`.
    pub projection: usize,
    /// The first output column.
    pub column: usize,
}

/// The attention out-projection: `z @ W_O (+ bias)`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OutProjection {
    /// Node name.
    pub node: String,
    /// Its activation input z, [.., heads * head_dim].
    pub z: String,
    /// The weight.
    pub weight: String,
    /// Gemm's transB.
    pub trans_b: bool,
}

/// One transformer block.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Block {
    /// Layer number.
    pub layer: usize,
    /// The residual stream entering the block: what the attention layer-norm reads.
    pub resid_in: String,
    /// The attention layer-norm's nodes, in graph order (names).
    pub attn_norm: Vec<String>,
    /// The attention layer-norm's output, which the projections read.
    pub attn_norm_out: String,
    /// The Q/K/V projections.
    pub projections: Vec<Projection>,
    /// Per reader, in `Topology::readers` order (q heads, k heads, v heads): its columns.
    pub reads: Vec<HeadRead>,
    /// The out-projection.
    pub out_proj: OutProjection,
    /// The attention's output as added to the residual (bias included).
    #[serde(default)]
    pub attn_write: String,
    /// The tensor the MLP's layer-norm reads (the residual after attention,
    /// or `resid_in` in a parallel block).
    pub mlp_in: String,
    /// The nodes reading `mlp_in` on the MLP's behalf (its layer-norm's first
    /// nodes); with `shared_norm`, the nodes reading `attn_norm_out` on its behalf.
    pub mlp_readers: Vec<String>,
    /// The MLP reads the attention layer-norm's output (GPT-J, Phi): its reader
    /// is then one more copy of the batched residual, after the q/k/v readers'.
    pub shared_norm: bool,
    /// The MLP's output as added to the residual (bias included).
    pub mlp_out: String,
    /// The residual stream after the block.
    pub resid_out: String,
}

/// Every block, and the final layer-norm's input.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BlockAnatomy {
    /// The blocks, by layer.
    pub blocks: Vec<Block>,
    /// The residual before the final layer-norm.
    pub final_in: String,
    /// The nodes reading `final_in` (the final layer-norm's first nodes).
    pub final_readers: Vec<String>,
    /// Query heads per layer.
    pub heads: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Columns per head.
    pub head_dim: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention and MLP read the same residual.
    pub parallel: bool,
    /// Rank of the residual stream tensors (3: [batch, seq, d]; 2: [batch*seq, d]).
    pub resid_rank: usize,
}

impl BlockAnatomy {
    /// The topology these blocks make.
    pub fn topology(&self) -> super::Topology {
        super::Topology {
            layers: self.blocks.len(),
            heads: self.heads,
            kv_heads: self.kv_heads,
            parallel: self.parallel,
        }
    }

    /// Readers per layer that read through the attention layer-norm: H + 2 H_kv.
    pub fn head_readers(&self) -> usize {
        self.heads + 2 * self.kv_heads
    }

    /// Copies of the residual a block's batched reads hold: the q/k/v readers,
    /// and the MLP's reader when it shares the attention's layer-norm.
    pub fn copies(&self, block: &Block) -> usize {
        self.head_readers() + block.shared_norm as usize
    }
}

/// Lookups over a graph: producers, consumers, constants, element types.
struct Index<'a> {
    g: &'a GraphProto,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    consts: &'a HashSet<String>,
    facts: &'a Facts,
    path: String,
}

impl<'a> Index<'a> {
    fn new(g: &'a GraphProto, consts: &'a HashSet<String>, facts: &'a Facts, path: String) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.as_str(), i);
            }
            for x in n.input.iter().filter(|x| !x.is_empty()) {
                let c = consumers.entry(x.as_str()).or_default();
                if c.last() != Some(&i) {
                    c.push(i);
                }
            }
        }
        Index { g, producer, consumers, consts, facts, path }
    }

    fn node(&self, i: usize) -> &'a NodeProto {
        &self.g.node[i]
    }

    fn producer_of(&self, t: &str) -> Option<&'a NodeProto> {
        self.producer.get(t).map(|&i| self.node(i))
    }

    /// A float tensor that depends on the inputs: one that can carry a gradient.
    fn active(&self, t: &str) -> bool {
        !t.is_empty() && !self.consts.contains(t) && self.facts.dtype(t).is_none_or(is_float)
    }

    /// The inputs of `n` that carry values (not shapes, indices or axes) and can carry a gradient.
    fn data_inputs(&self, n: &'a NodeProto) -> Vec<&'a String> {
        if NO_FLOAT_OUTPUT.contains(&n.op_type.as_str()) {
            return vec![];
        }
        let first_only = [
            "Reshape",
            "Expand",
            "Tile",
            "Slice",
            "Squeeze",
            "Unsqueeze",
            "ConstantOfShape",
            "Range",
            "Pad",
            "Split",
            "Gather",
            "GatherElements",
            "GatherND",
            "TopK",
            "ReduceMean",
            "ReduceSum",
        ];
        let take = if first_only.contains(&n.op_type.as_str()) { 1 } else { n.input.len() };
        n.input.iter().take(take).filter(|x| self.active(x)).collect()
    }

    /// Consumers of `t` with a float output (Shape and friends left out: they carry no gradient).
    fn float_consumers(&self, t: &str) -> Vec<usize> {
        let all = self.consumers.get(t).cloned().unwrap_or_default();
        all.into_iter()
            .filter(|&i| {
                let n = self.node(i);
                !NO_FLOAT_OUTPUT.contains(&n.op_type.as_str()) && n.output.iter().any(|o| self.active(o))
            })
            .collect()
    }

    fn err(&self, msg: String) -> Error {
        Error::Unsupported(format!("{}: edge scores: {msg}", self.path))
    }

    fn is_projection(&self, n: &NodeProto) -> bool {
        matches!(n.op_type.as_str(), "MatMul" | "Gemm")
            && n.input.first().is_some_and(|x| self.active(x))
            && n.input.get(1).is_some_and(|w| self.consts.contains(w))
    }

    /// Back from `t` through layout ops (single active input) to the first other tensor.
    fn through_layout_back(&self, t: &str) -> String {
        let mut t = t.to_string();
        while let Some(n) = self.producer_of(&t) {
            if !LAYOUT.contains(&n.op_type.as_str()) {
                break;
            }
            t = n.input[0].clone();
        }
        t
    }

    /// Whether `b` is `a`, or `a` through Cast/Identity/reshaping nodes.
    fn same_stream(&self, a: &str, b: &str) -> bool {
        let mut t = b.to_string();
        for _ in 0..4 {
            if t == a {
                return true;
            }
            match self.producer_of(&t) {
                Some(n) if STREAM.contains(&n.op_type.as_str()) => t = n.input[0].clone(),
                _ => return false,
            }
        }
        false
    }

    /// The projections (constant-weight MatMul/Gemm) `t` is computed from,
    /// walking back through active tensors and stopping at them.
    fn projections_behind(&self, t: &str) -> Vec<usize> {
        let mut seen: HashSet<usize> = HashSet::new();
        let mut found = vec![];
        let mut stack = vec![t.to_string()];
        while let Some(t) = stack.pop() {
            let Some(&i) = self.producer.get(t.as_str()) else { continue };
            if !seen.insert(i) || seen.len() > 20_000 {
                continue;
            }
            let n = self.node(i);
            if self.is_projection(n) {
                found.push(i);
                continue;
            }
            stack.extend(self.data_inputs(n).into_iter().cloned());
        }
        found.sort();
        found
    }

    /// The layer-norm computing `y`: the nodes between the residual and `y`
    /// (every tensor inside read only inside), and the residual itself.
    /// `stop`: a tensor known to be the residual (never looked behind).
    fn norm_region(&self, y: &str, layer: &str, stop: Option<&str>) -> Result<(String, Vec<usize>)> {
        let start = *self.producer.get(y).ok_or_else(|| self.err(format!("{layer}: '{y}' has no producer")))?;
        let mut inside: HashSet<usize> = HashSet::from([start]);
        loop {
            let mut grew = false;
            let members: Vec<usize> = inside.iter().copied().collect();
            for i in members {
                for x in self.data_inputs(self.node(i)) {
                    let Some(&p) = self.producer.get(x.as_str()) else { continue };
                    if inside.contains(&p) || stop.is_some_and(|s| self.same_stream(s, x)) {
                        continue;
                    }
                    if self.float_consumers(x).iter().all(|c| inside.contains(c)) {
                        inside.insert(p);
                        grew = true;
                    }
                }
            }
            if !grew || inside.len() > MAX_NORM_NODES {
                break;
            }
        }
        let outputs: HashSet<&str> =
            inside.iter().flat_map(|&i| self.node(i).output.iter().map(String::as_str)).collect();
        let mut frontier: Vec<String> = inside
            .iter()
            .flat_map(|&i| self.data_inputs(self.node(i)))
            .filter(|x| !outputs.contains(x.as_str()))
            .cloned()
            .collect();
        frontier.sort();
        frontier.dedup();
        if inside.len() > MAX_NORM_NODES || frontier.len() != 1 {
            return Err(self.err(format!(
                "{layer}: expected a layer-norm between the residual stream and '{y}' (nodes that read one residual \
                 tensor and nothing else), found {} nodes reading {} tensors ({})",
                inside.len(),
                frontier.len(),
                frontier.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut nodes: Vec<usize> = inside.into_iter().collect();
        nodes.sort();
        Ok((frontier.pop().unwrap(), nodes))
    }

    fn dims_of(&self, t: &str) -> Option<Vec<usize>> {
        let s = self.facts.shape(t)?;
        s.iter()
            .map(|d| match d {
                attrpatch_onnx::facts::Dim::Known(v) if *v > 0 => Some(*v as usize),
                _ => None,
            })
            .collect()
    }
}

/// How a fused Q/K/V projection orders its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FusedLayout {
    /// [q heads | k heads | v heads] (GPT-2 `c_attn`, Phi-3 `qkv_proj`, OLMo `Wqkv`).
    Blocks,
    /// [heads, 3, head_dim] (GPT-NeoX and BLOOM `query_key_value`).
    PerHead,
}

/// The layout by the family's module name (in the node's, the weight's or the
/// bias Add's names), else by what reads the output: a Split or Slices cut
/// [q | k | v]; a Reshape to [.., heads, 3 head_dim] or [.., heads, 3, head_dim] is per head.
fn fused_layout(ix: &Index, n: &NodeProto, heads: usize) -> Option<FusedLayout> {
    let mut out = n.output[0].clone();
    let mut text = format!("{} {}", n.name, n.input.get(1).map(String::as_str).unwrap_or(""));
    // A separate bias add (dynamo exports keep the module name only there).
    if let [c] = ix.float_consumers(&out).as_slice() {
        let a = ix.node(*c);
        if a.op_type == "Add" && a.input.iter().any(|x| ix.consts.contains(x)) {
            text.push(' ');
            text.push_str(&a.input.join(" "));
            out = a.output[0].clone();
        }
    }
    if ["c_attn", "qkv_proj", "Wqkv"].iter().any(|k| text.contains(k)) {
        return Some(FusedLayout::Blocks);
    }
    if text.contains("query_key_value") {
        return Some(FusedLayout::PerHead);
    }
    let readers: Vec<&NodeProto> = ix.float_consumers(&out).into_iter().map(|c| ix.node(c)).collect();
    if !readers.is_empty() && readers.iter().all(|r| matches!(r.op_type.as_str(), "Split" | "Slice")) {
        return Some(FusedLayout::Blocks);
    }
    if let [r] = readers.as_slice() {
        let dims = ix.dims_of(&r.output[0]).unwrap_or_default();
        let per_head = match dims.as_slice() {
            [.., h, three, _] if *h == heads && *three == 3 => true,
            [.., h, _] if *h == heads && r.op_type == "Reshape" => true,
            _ => false,
        };
        if per_head {
            return Some(FusedLayout::PerHead);
        }
    }
    None
}

/// Reads every block's anatomy. `hooks` are the attention out-projection
/// hooks (one per layer), `heads` the query heads per layer, `logits_hidden`
/// the tensor the lm_head reads (None: the logits' producer is followed).
pub fn read(
    g: &GraphProto,
    consts: &HashSet<String>,
    facts: &Facts,
    path: &std::path::Path,
    hooks: &[Hook],
    heads: usize,
    logits: &str,
) -> Result<BlockAnatomy> {
    let ix = Index::new(g, consts, facts, path.display().to_string());
    let mut blocks = vec![];
    let mut kv_heads = None;
    let mut shape = None;
    for h in hooks {
        let (block, kv, dims) = read_block(&ix, h, heads)?;
        if kv_heads.is_some_and(|k| k != kv) || shape.is_some_and(|s| s != dims) {
            return Err(ix.err(format!("layer {}: its heads differ from layer 0's", h.layer)));
        }
        kv_heads = Some(kv);
        shape = Some(dims);
        blocks.push(block);
    }
    let (Some(kv_heads), Some((head_dim, d_model))) = (kv_heads, shape) else {
        return Err(ix.err("the model has no attention layers".into()));
    };
    // Block outputs chain into the next block's input.
    let mut parallel = None;
    for l in 0..blocks.len() {
        let next_in = if l + 1 < blocks.len() { Some(blocks[l + 1].resid_in.clone()) } else { None };
        finish_block(&ix, &mut blocks[l], next_in.as_deref(), &mut parallel)?;
    }
    let (final_in, final_readers) = final_norm(&ix, logits, &blocks.last().unwrap().resid_out)?;
    let resid_rank = facts.rank(&blocks[0].resid_in).unwrap_or(3);
    Ok(BlockAnatomy {
        resid_rank,
        blocks,
        final_in,
        final_readers,
        heads,
        kv_heads,
        head_dim,
        d_model,
        parallel: parallel.unwrap_or(false),
    })
}

/// The attention behind a hook alone, for graphs whose blocks `read` cannot
/// describe (AtP*'s QK-fix needs no more): (the Softmax node, the `Q K^T`
/// MatMul node), by name.
pub fn attention_of(
    g: &GraphProto,
    consts: &HashSet<String>,
    facts: &Facts,
    path: &std::path::Path,
    hook: &Hook,
) -> Result<(String, String)> {
    let ix = Index::new(g, consts, facts, path.display().to_string());
    let (_, sm, qk) = attention_nodes(&ix, hook)?;
    Ok((sm.name.clone(), qk.name.clone()))
}

/// The attention behind a hook: P V (the first MatMul behind z), its Softmax and Q K^T.
fn attention_nodes<'a>(ix: &Index<'a>, hook: &Hook) -> Result<(&'a NodeProto, &'a NodeProto, &'a NodeProto)> {
    let layer = format!("layer {}", hook.layer);
    let pv_t = ix.through_layout_back(&hook.tensor);
    let pv = ix.producer_of(&pv_t).filter(|n| n.op_type == "MatMul").ok_or_else(|| {
        ix.err(format!(
            "{layer}: '{}' should be the heads merged from a MatMul of the attention probabilities with V",
            hook.tensor
        ))
    })?;
    let (sm, qk) = scores_matmul(ix, &pv.input[0]).ok_or_else(|| {
        ix.err(format!("{layer}: no Softmax(Q K^T) found behind '{}' (node '{}')", pv.input[0], pv.name))
    })?;
    Ok((pv, sm, qk))
}

/// The attention half of a block: layer-norm, projections, head reads, out-projection.
/// Returns the block (MLP fields empty), the key/value heads and (head_dim, d_model).
fn read_block(ix: &Index, hook: &Hook, heads: usize) -> Result<(Block, usize, (usize, usize))> {
    let layer = format!("layer {}", hook.layer);
    let out =
        ix.g.node
            .iter()
            .find(|n| n.name == hook.node)
            .ok_or_else(|| ix.err(format!("{layer}: out-projection node '{}' not found", hook.node)))?;
    let trans = |n: &NodeProto, a: &str| n.attribute.iter().any(|x| x.name == a && x.i != 0);
    let plain_gemm = |n: &NodeProto| {
        n.op_type == "MatMul"
            || (!trans(n, "transA")
                && n.attribute.iter().filter(|a| a.name == "alpha" || a.name == "beta").all(|a| a.f == 1.0))
    };
    if !ix.is_projection(out) || !plain_gemm(out) {
        return Err(ix.err(format!(
            "{layer}: out-projection '{}' ({}) should be a MatMul or plain Gemm with a constant weight",
            out.name, out.op_type
        )));
    }
    let w_dims = ix.dims_of(&out.input[1]).unwrap_or_default();
    let (width, d_model) = match (w_dims.as_slice(), trans(out, "transB")) {
        ([i, o], false) => (*i, *o),
        ([o, i], true) => (*i, *o),
        _ => return Err(ix.err(format!("{layer}: out-projection weight '{}' should be a matrix", out.input[1]))),
    };
    if heads == 0 || width % heads != 0 {
        return Err(ix.err(format!("{layer}: {heads} heads do not split the out-projection's width {width}")));
    }
    let head_dim = width / heads;
    let out_proj = OutProjection {
        node: out.name.clone(),
        z: hook.tensor.clone(),
        weight: out.input[1].clone(),
        trans_b: trans(out, "transB"),
    };

    let (pv, _, qk) = attention_nodes(ix, hook)?;
    let sides = [&qk.input[0], &qk.input[1], &pv.input[1]];
    let behind: Vec<Vec<usize>> = sides.iter().map(|s| ix.projections_behind(s)).collect();
    let mut all: Vec<usize> = behind.iter().flatten().copied().collect();
    all.sort();
    all.dedup();
    let projections: Vec<Projection> = all
        .iter()
        .map(|&i| {
            let n = ix.node(i);
            let wd = ix.dims_of(&n.input[1]).unwrap_or_default();
            let width = match (wd.as_slice(), trans(n, "transB")) {
                ([_, o], false) | ([o, _], true) => *o,
                _ => 0,
            };
            Projection {
                node: n.name.clone(),
                op_type: n.op_type.clone(),
                weight: n.input[1].clone(),
                trans_b: trans(n, "transB"),
                bias: n.input.get(2).filter(|b| !b.is_empty()).cloned(),
                input_rank: ix.facts.rank(&n.input[0]).unwrap_or(0),
                output: n.output[0].clone(),
                width,
            }
        })
        .collect();
    for (p, &i) in projections.iter().zip(&all) {
        if p.width == 0 || !plain_gemm(ix.node(i)) || !matches!(p.input_rank, 2 | 3) {
            return Err(ix.err(format!(
                "{layer}: projection '{}' ({}) should be a MatMul or plain Gemm of a [.., d] activation with a constant matrix",
                p.node, p.op_type
            )));
        }
    }
    // Every projection reads the same layer-norm output.
    let inputs: Vec<String> = all.iter().map(|&i| ix.through_layout_back(&ix.node(i).input[0])).collect();
    if inputs.is_empty() || inputs.iter().any(|t| *t != inputs[0]) {
        return Err(ix.err(format!(
            "{layer}: the Q/K/V projections ({}) should read one layer-norm output, they read {}",
            projections.iter().map(|p| p.node.as_str()).collect::<Vec<_>>().join(", "),
            inputs.join(", ")
        )));
    }
    let y = inputs[0].clone();
    // The layer-norm output feeds the projections only (through layout ops).
    let shared = norm_users(ix, &y, &all, &layer)?;
    let (resid_in, norm) = ix.norm_region(&y, &layer, None)?;

    let (reads, kv) = head_reads(ix, &layer, &projections, &all, &behind, heads, head_dim)?;
    let block = Block {
        layer: hook.layer,
        resid_in,
        attn_norm: norm.iter().map(|&i| ix.node(i).name.clone()).collect(),
        attn_norm_out: y,
        projections,
        reads,
        out_proj,
        attn_write: String::new(),
        mlp_in: String::new(),
        shared_norm: !shared.is_empty(),
        mlp_readers: shared,
        mlp_out: String::new(),
        resid_out: String::new(),
    };
    Ok((block, kv, (head_dim, d_model)))
}

/// From the attention probabilities back to Softmax, then to the MatMul of
/// Q and K^T: (the Softmax, the MatMul).
fn scores_matmul<'a>(ix: &Index<'a>, probs: &str) -> Option<(&'a NodeProto, &'a NodeProto)> {
    let mut t = probs.to_string();
    let sm = loop {
        let n = ix.producer_of(&t)?;
        match n.op_type.as_str() {
            "Softmax" => break n,
            // sdpa exports: Where(IsNaN(p), 0, p).
            "Where" => t = n.input.iter().skip(1).find(|x| ix.active(x))?.clone(),
            op if LAYOUT.contains(&op) || op == "Dropout" => t = n.input[0].clone(),
            _ => return None,
        }
    };
    let mut frontier = vec![sm.input[0].clone()];
    for _ in 0..8 {
        let mut next = vec![];
        for t in &frontier {
            let Some(n) = ix.producer_of(t) else { continue };
            if n.op_type == "MatMul" && n.input.iter().all(|x| ix.active(x)) {
                return Some((sm, n));
            }
            next.extend(ix.data_inputs(n).into_iter().cloned());
        }
        frontier = next;
    }
    None
}

/// What reads the layer-norm output besides the projections (and the layout
/// ops leading to them): nothing, or the MLP's first projections when the
/// MLP shares the norm (GPT-J, Phi). Anything else is refused.
fn norm_users(ix: &Index, y: &str, projections: &[usize], layer: &str) -> Result<Vec<String>> {
    let leads_to_projections = |c: usize| {
        let n = ix.node(c);
        projections.contains(&c)
            || (LAYOUT.contains(&n.op_type.as_str())
                && ix.float_consumers(&n.output[0]).iter().all(|d| projections.contains(d)))
    };
    let mut users = vec![];
    for c in ix.float_consumers(y) {
        if leads_to_projections(c) {
            continue;
        }
        let n = ix.node(c);
        if !(ix.is_projection(n) || LAYOUT.contains(&n.op_type.as_str())) {
            return Err(ix.err(format!(
                "{layer}: the attention layer-norm's output '{y}' is also read by {} node '{}', not only by the Q/K/V \
                 projections (or an MLP sharing the norm); expected a layer-norm before the attention (blocks \
                 without one, as in OLMo 2, are not supported)",
                n.op_type, n.name
            )));
        }
        users.push(n.name.clone());
    }
    Ok(users)
}

/// Each reader's columns. `behind[s]`: the projections behind the Q, K and V sides.
fn head_reads(
    ix: &Index,
    layer: &str,
    projections: &[Projection],
    nodes: &[usize],
    behind: &[Vec<usize>],
    heads: usize,
    dh: usize,
) -> Result<(Vec<HeadRead>, usize)> {
    let pos = |i: usize| nodes.iter().position(|&n| n == i).unwrap();
    if projections.len() == 1 {
        let p = &projections[0];
        let cols = p.width / dh;
        if !p.width.is_multiple_of(dh) || cols < heads + 2 || !(cols - heads).is_multiple_of(2) {
            return Err(ix.err(format!(
                "{layer}: fused Q/K/V projection '{}' has {} columns, not (heads + 2 kv_heads) x head_dim with {heads} \
                 heads of {dh}",
                p.node, p.width
            )));
        }
        let kv = (cols - heads) / 2;
        let layout = fused_layout(ix, ix.node(nodes[0]), heads).ok_or_else(|| {
            ix.err(format!(
                "{layer}: fused Q/K/V projection '{}': its column layout is not known (known: GPT-2 c_attn, Phi-3 \
                 qkv_proj, OLMo Wqkv as [q | k | v]; GPT-NeoX and BLOOM query_key_value as [heads, 3, head_dim])",
                p.node
            ))
        })?;
        let reads = match layout {
            FusedLayout::Blocks => (0..heads)
                .map(|h| h * dh)
                .chain((0..kv).map(|h| (heads + h) * dh))
                .chain((0..kv).map(|h| (heads + kv + h) * dh))
                .collect::<Vec<_>>(),
            FusedLayout::PerHead if kv == heads => {
                (0..3).flat_map(|which| (0..heads).map(move |h| (3 * h + which) * dh)).collect()
            }
            // Falcon: [kv groups, (heads / kv) queries + key + value, head_dim].
            FusedLayout::PerHead if kv > 0 && heads.is_multiple_of(kv) => {
                let per = heads / kv;
                let width = per + 2;
                (0..heads)
                    .map(|h| ((h / per) * width + h % per) * dh)
                    .chain((0..kv).map(|g| (g * width + per) * dh))
                    .chain((0..kv).map(|g| (g * width + per + 1) * dh))
                    .collect()
            }
            FusedLayout::PerHead => {
                return Err(ix.err(format!(
                    "{layer}: query_key_value '{}' has {kv} key/value heads, which do not divide {heads} query heads",
                    p.node
                )))
            }
        };
        return Ok((reads.into_iter().map(|column| HeadRead { projection: 0, column }).collect(), kv));
    }
    // Separate projections: the one behind each side.
    let one = |s: usize, what: &str| -> Result<usize> {
        match behind[s].as_slice() {
            [i] => Ok(pos(*i)),
            other => Err(ix.err(format!(
                "{layer}: expected one {what} projection, found {} ({})",
                other.len(),
                other.iter().map(|&i| ix.node(i).name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    };
    let (q, k, v) = (one(0, "query")?, one(1, "key")?, one(2, "value")?);
    if projections.len() != 3 || q == k || k == v || q == v {
        return Err(ix.err(format!(
            "{layer}: expected separate query, key and value projections or one fused one, found {}",
            projections.iter().map(|p| p.node.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let kv = projections[k].width / dh;
    if projections[q].width != heads * dh || projections[k].width != kv * dh || projections[v].width != kv * dh {
        return Err(ix.err(format!(
            "{layer}: projection widths {} (q), {} (k), {} (v) do not fit {heads} heads of {dh}",
            projections[q].width, projections[k].width, projections[v].width
        )));
    }
    let reads = (0..heads)
        .map(|h| HeadRead { projection: q, column: h * dh })
        .chain((0..kv).map(|h| HeadRead { projection: k, column: h * dh }))
        .chain((0..kv).map(|h| HeadRead { projection: v, column: h * dh }))
        .collect();
    Ok((reads, kv))
}

/// The residual adds after the attention: the MLP's read point and output,
/// and the block's output, checked against the next block's input.
fn finish_block(ix: &Index, b: &mut Block, next_in: Option<&str>, parallel: &mut Option<bool>) -> Result<()> {
    let layer = format!("layer {}", b.layer);
    let out = ix.g.node.iter().find(|n| n.name == b.out_proj.node).unwrap();
    // From the out-projection to the first Add of another active tensor.
    let mut t = out.output[0].clone();
    let (a1, other) = loop {
        let cs = ix.float_consumers(&t);
        let [c] = cs.as_slice() else {
            let names: Vec<&str> = cs.iter().map(|&c| ix.node(c).name.as_str()).collect();
            return Err(ix.err(format!(
                "{layer}: the attention output '{t}' is read by {} nodes ({}); expected it to go straight into one \
                 residual add (a norm after the attention, as in Gemma 2/3, is not supported)",
                cs.len(),
                names.join(", ")
            )));
        };
        let n = ix.node(*c);
        let others: Vec<&String> = n.input.iter().filter(|x| **x != t).collect();
        match n.op_type.as_str() {
            op if LAYOUT.contains(&op) => t = n.output[0].clone(),
            "Add" if others.iter().all(|x| ix.consts.contains(*x)) => t = n.output[0].clone(),
            "Add" if others.len() == 1 => break (n, others[0].clone()),
            op => {
                return Err(ix.err(format!(
                "{layer}: the attention output reaches the residual stream through {op} node '{}'; edge scores need \
                     the heads' outputs added to the residual directly (post-attention norms, as in Gemma 2/3, are not \
                     supported)",
                n.name
            )))
            }
        }
    };
    let attn_write = t.clone();
    let is_parallel = !ix.same_stream(&b.resid_in, &other);
    if b.shared_norm && !is_parallel {
        return Err(ix.err(format!(
            "{layer}: the MLP reads the attention's layer-norm ('{}') but runs after the attention; expected a \
             parallel block",
            b.attn_norm_out
        )));
    }
    if parallel.is_some_and(|p| p != is_parallel) {
        return Err(ix.err(format!("{layer}: mixes parallel and sequential blocks")));
    }
    *parallel = Some(is_parallel);
    // Layout ops between the MLP's read point and the residual add: not MLP readers.
    let mut route_to_add: Vec<String> = vec![];
    let (mlp_in, a2, mlp_out) = if is_parallel {
        // attn + mlp first, then + residual.
        let cs = ix.float_consumers(&a1.output[0]);
        let a2 = match cs.as_slice() {
            [c] if ix.node(*c).op_type == "Add" => ix.node(*c),
            _ => {
                return Err(ix.err(format!(
                    "{layer}: '{}' (attention + MLP) should be added to the residual once",
                    a1.output[0]
                )))
            }
        };
        let r = a2.input.iter().find(|x| **x != a1.output[0]).cloned().unwrap_or_default();
        if !ix.same_stream(&b.resid_in, &r) {
            return Err(ix.err(format!(
                "{layer}: node '{}' adds '{r}' to attention + MLP; expected the block's input '{}'",
                a2.name, b.resid_in
            )));
        }
        (r, a2, other)
    } else {
        // residual + attn, then + mlp.
        // Llama's RMSNorm casts its input and the residual add reads the cast; OPT reshapes it.
        let mut mid = a1.output[0].clone();
        while let [c] = ix.float_consumers(&mid).as_slice() {
            let n = ix.node(*c);
            if !STREAM.contains(&n.op_type.as_str()) {
                break;
            }
            mid = n.output[0].clone();
        }
        // The add may read `mid` through layout ops of its own: the GenAI builder's
        // SkipSimplifiedLayerNormalization returns the sum (decomposed: an Identity)
        // beside the norm that the MLP reads.
        let mut adds: Vec<(&NodeProto, String, Vec<String>)> = vec![];
        let mut frontier = vec![(mid.clone(), vec![])];
        while let Some((t, via)) = frontier.pop() {
            for n in ix.float_consumers(&t).into_iter().map(|c| ix.node(c)) {
                if STREAM.contains(&n.op_type.as_str()) && via.len() < 4 {
                    let mut via = via.clone();
                    via.push(n.name.clone());
                    frontier.push((n.output[0].clone(), via));
                } else if n.op_type == "Add"
                    && leads_to(ix, &n.output[0], next_in)
                    && !adds.iter().any(|(a, _, _)| a.name == n.name)
                {
                    adds.push((n, t.clone(), via.clone()));
                }
            }
        }
        let [(a2, read, via)] = adds.as_slice() else {
            return Err(ix.err(format!("{layer}: no residual add after the MLP found reading '{mid}'")));
        };
        route_to_add = via.clone();
        let m = a2.input.iter().find(|x| *x != read).cloned().unwrap_or_default();
        (mid, *a2, m)
    };
    let resid_out = a2.output[0].clone();
    if let Some(next) = next_in {
        if !ix.same_stream(&resid_out, next) {
            return Err(ix.err(format!(
                "{layer}: the block's output '{resid_out}' is not the next layer's residual input '{next}'"
            )));
        }
    }
    b.mlp_in = mlp_in.clone();
    b.attn_write = attn_write;
    b.mlp_out = mlp_out;
    b.resid_out = resid_out;
    if b.shared_norm {
        return Ok(());
    }
    // The MLP reads mlp_in through every float consumer that is not the residual add or the attention norm.
    let attn_norm: HashSet<&str> = b.attn_norm.iter().map(String::as_str).collect();
    let readers: Vec<String> = ix
        .float_consumers(&mlp_in)
        .into_iter()
        .map(|c| ix.node(c))
        .filter(|n| n.name != a2.name && n.name != a1.name && !route_to_add.contains(&n.name))
        .filter(|n| !(is_parallel && attn_norm.contains(n.name.as_str())))
        .map(|n| n.name.clone())
        .collect();
    if readers.is_empty() {
        return Err(ix.err(format!(
            "{layer}: nothing but the residual adds reads '{mlp_in}': the MLP should read it through its own layer-norm \
             (a norm shared with the attention, as in GPT-J, is not supported yet)"
        )));
    }
    b.mlp_readers = readers;
    Ok(())
}

/// Whether `t` is `target` (through Cast/Identity); true when there is no target.
fn leads_to(ix: &Index, t: &str, target: Option<&str>) -> bool {
    target.is_none_or(|x| ix.same_stream(t, x))
}

/// The final layer-norm: its input (checked against the last block's output) and readers.
fn final_norm(ix: &Index, logits: &str, last_out: &str) -> Result<(String, Vec<String>)> {
    // Through the lm_head's bias (GPT-J) and layout ops to its MatMul/Gemm.
    let mut t = logits.to_string();
    while let Some(n) = ix.producer_of(&t) {
        let biased = n.op_type == "Add" && n.input.iter().filter(|x| ix.consts.contains(*x)).count() == 1;
        if biased {
            t = n.input.iter().find(|x| !ix.consts.contains(*x)).unwrap().clone();
        } else if LAYOUT.contains(&n.op_type.as_str()) {
            t = n.input[0].clone();
        } else {
            break;
        }
    }
    let head = ix.producer_of(&t).filter(|n| ix.is_projection(n)).ok_or_else(|| {
        ix.err(format!("the logits '{logits}' should come from a MatMul/Gemm with a constant weight (the lm_head)"))
    })?;
    let y = ix.through_layout_back(&head.input[0]);
    let (x, _) = ix.norm_region(&y, "the final layer-norm", Some(last_out))?;
    if !ix.same_stream(last_out, &x) {
        return Err(ix.err(format!("the final layer-norm reads '{x}', expected the last block's output '{last_out}'")));
    }
    let readers: Vec<String> = ix.float_consumers(&x).into_iter().map(|c| ix.node(c).name.clone()).collect();
    Ok((x, readers))
}
