//! Every reader gets its own copy of its input, so that the gradient with
//! respect to that copy is the reader's alone.
//!
//! - q/k/v readers of layer l: the residual entering the block is given a
//!   leading axis of R = H + 2 H_kv copies (`reads.l`, [R, .., d]); the
//!   attention layer-norm runs on it batched, and copy i goes through only
//!   its head's columns of the projection (one batched MatMul with the
//!   per-head weight slices stacked [R, d, head_dim]). The pieces are put
//!   back together into the tensors the original projections produced, and
//!   the attention goes on unchanged. The projections cost what they did.
//! - MLP reader of layer l and `logits`: an Identity copy of the residual
//!   that only the MLP's (final) layer-norm reads.
//!
//! The weight slices are Gathers of the weight initializers (the weights may
//! stay in an external file); the runtime folds them once.

use super::anatomy::{Block, BlockAnatomy};
use attrpatch_onnx::builder::{attr_i, GraphBuilder};
use attrpatch_onnx::consts::{find_constant, tensor_i64s};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::Facts;
use attrpatch_onnx::pb::{GraphProto, NodeProto};

/// The reader copies' tensor names in the (corrupted) forward graph.
pub mod names {
    /// Layer l's q/k/v readers' inputs, [R, .., d].
    pub fn head_reads(layer: usize) -> String {
        format!("attrpatch.edges.reads.{layer}")
    }
    /// Layer l's MLP reader's input.
    pub fn mlp_read(layer: usize) -> String {
        format!("attrpatch.edges.mlp_read.{layer}")
    }
    /// The logits reader's input.
    pub const LOGITS_READ: &str = "attrpatch.edges.logits_read";
}

/// Elementwise ops a layer-norm may be made of (they broadcast over a leading axis).
const ELEMENTWISE: &[&str] =
    &["Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Cast", "Identity", "Neg", "Abs", "Erf", "Exp", "Log"];

/// Rewrites `g` in place so that every reader reads its own copy (module doc).
pub fn give_readers_copies(
    g: &mut GraphProto,
    anat: &BlockAnatomy,
    facts: &Facts,
    b: &mut GraphBuilder,
    path: &std::path::Path,
) -> Result<()> {
    for block in &anat.blocks {
        head_copies(g, anat, block, facts, b, path)?;
        if block.shared_norm {
            continue;
        }
        let readers: Vec<&str> = block.mlp_readers.iter().map(String::as_str).collect();
        identity_copy(g, &block.mlp_in, &names::mlp_read(block.layer), &readers, b);
    }
    let readers: Vec<&str> = anat.final_readers.iter().map(String::as_str).collect();
    identity_copy(g, &anat.final_in, names::LOGITS_READ, &readers, b);
    Ok(())
}

/// `copy = Identity(x)`, read by `readers` instead of `x`, placed before the first of them.
fn identity_copy(g: &mut GraphProto, x: &str, copy: &str, readers: &[&str], b: &mut GraphBuilder) {
    let mut first = g.node.len();
    for (i, n) in g.node.iter_mut().enumerate() {
        if readers.contains(&n.name.as_str()) {
            first = first.min(i);
            for inp in n.input.iter_mut().filter(|t| *t == x) {
                *inp = copy.to_string();
            }
        }
    }
    b.node_named("Identity", &[x], copy, vec![]);
    let new = std::mem::take(&mut b.nodes);
    g.node.splice(first..first, new);
}

fn head_copies(
    g: &mut GraphProto,
    anat: &BlockAnatomy,
    block: &Block,
    facts: &Facts,
    b: &mut GraphBuilder,
    path: &std::path::Path,
) -> Result<()> {
    let layer = block.layer;
    let err = |m: String| Error::Unsupported(format!("{}: edge scores: layer {layer}: {m}", path.display()));
    let r = anat.head_readers();
    let copies = anat.copies(block);
    let dh = anat.head_dim;
    let rank =
        facts.rank(&block.resid_in).ok_or_else(|| err(format!("the rank of '{}' is unknown", block.resid_in)))?;
    if !(2..=3).contains(&rank) {
        return Err(err(format!("the residual '{}' should be [batch, seq, d] or [batch*seq, d]", block.resid_in)));
    }
    // R copies of the residual.
    let xu = b.unsqueeze(&block.resid_in, &[0]);
    let mut reps = vec![1i64; rank + 1];
    reps[0] = copies as i64;
    let reps = b.const_i64s(&reps);
    let reads = names::head_reads(layer);
    b.node_named("Expand", &[&xu, &reps], &reads, vec![]);

    // The layer-norm, batched.
    let mut renamed: std::collections::HashMap<String, String> = [(block.resid_in.clone(), reads.clone())].into();
    for name in &block.attn_norm {
        let n = g.node.iter().find(|n| n.name == *name).unwrap();
        let mut c = n.clone();
        c.name = b.fresh("edges_norm");
        for i in c.input.iter_mut() {
            if let Some(new) = renamed.get(i.as_str()) {
                *i = new.clone();
            }
        }
        for o in c.output.iter_mut() {
            let new = b.fresh("edges_norm_out");
            renamed.insert(o.clone(), new.clone());
            *o = new;
        }
        batch_axes(&mut c, g, facts, b, &n.input[0]).map_err(|m| err(format!("layer-norm node '{}': {m}", n.name)))?;
        b.nodes.push(c);
    }
    let yb =
        renamed.get(&block.attn_norm_out).cloned().ok_or_else(|| err("the layer-norm output was not copied".into()))?;

    // The per-head weight slices, stacked in reader order: [R, d, dh].
    let mut runs: Vec<(usize, Vec<usize>)> = vec![];
    for read in &block.reads {
        match runs.last_mut() {
            Some((p, cols)) if *p == read.projection => cols.push(read.column),
            _ => runs.push((read.projection, vec![read.column])),
        }
    }
    let mut slices = vec![];
    for (p, cols) in &runs {
        let proj = &block.projections[*p];
        let w = if proj.trans_b { b.transpose(&proj.weight, &[1, 0]) } else { proj.weight.clone() };
        let idx: Vec<i64> = cols.iter().flat_map(|&c| (c..c + dh).map(|k| k as i64)).collect();
        let idx_t = b.fresh("edges_cols");
        b.initializers.push(attrpatch_onnx::consts::i64_tensor(&idx_t, &[cols.len() as i64, dh as i64], &idx));
        let gathered = b.node("Gather", &[&w, &idx_t], vec![attr_i("axis", 1)]);
        slices.push(b.transpose(&gathered, &[1, 0, 2]));
    }
    let refs: Vec<&str> = slices.iter().map(String::as_str).collect();
    let mut stacked = if refs.len() == 1 { slices[0].clone() } else { b.concat(&refs, 0) };
    if rank == 3 {
        stacked = b.unsqueeze(&stacked, &[1]);
    }
    let heads_in = if block.shared_norm {
        // The last copy is the MLP's: it goes to the MLP's readers of the norm.
        let mlp_copy = b.const_i64_scalar(r as i64);
        let mlp_in = b.node("Gather", &[&yb, &mlp_copy], vec![attr_i("axis", 0)]);
        for n in g.node.iter_mut().filter(|n| block.mlp_readers.contains(&n.name)) {
            for i in n.input.iter_mut().filter(|i| **i == block.attn_norm_out) {
                *i = mlp_in.clone();
            }
        }
        b.slice_axis(&yb, 0, 0, r as i64)
    } else {
        yb.clone()
    };
    let per_head = b.matmul(&heads_in, &stacked);

    // Each projection's output, put back together from its heads' pieces.
    for (p, proj) in block.projections.iter().enumerate() {
        let mut mine: Vec<(usize, usize)> =
            block.reads.iter().enumerate().filter(|(_, rd)| rd.projection == p).map(|(i, rd)| (rd.column, i)).collect();
        mine.sort();
        let covers = mine.iter().enumerate().all(|(k, (c, _))| *c == k * dh) && mine.len() * dh == proj.width;
        if !covers {
            return Err(err(format!(
                "the head reads do not cover projection '{}''s {} columns",
                proj.node, proj.width
            )));
        }
        if proj.input_rank > rank {
            return Err(err(format!(
                "projection '{}' reads rank {} from a rank-{rank} residual",
                proj.node, proj.input_rank
            )));
        }
        let idx: Vec<i64> = mine.iter().map(|(_, i)| *i as i64).collect();
        let idx = b.const_i64s(&idx);
        let pieces = b.node("Gather", &[&per_head, &idx], vec![attr_i("axis", 0)]);
        // [n, .., dh] -> [.., n, dh] -> [.., n * dh]
        let mut perm: Vec<i64> = (1..rank as i64).collect();
        perm.extend([0, rank as i64]);
        let moved = b.transpose(&pieces, &perm);
        let mut shape = vec![0i64; rank - 1];
        shape.push(-1);
        let shape = b.const_i64s(&shape);
        let mut out = b.reshape(&moved, &shape);
        if proj.input_rank < rank {
            let flat = b.const_i64s(&[-1, proj.width as i64]);
            out = b.reshape(&out, &flat);
        }
        if let Some(bias) = &proj.bias {
            out = b.add(&out, bias);
        }
        b.node_named("Identity", &[&out], &proj.output, vec![]);
    }

    // In place of the first projection; the others and the old norm go (the norm is pruned as dead).
    let first = g
        .node
        .iter()
        .position(|n| block.projections.iter().any(|p| p.node == n.name))
        .ok_or_else(|| err("the projections were not found".into()))?;
    let new = std::mem::take(&mut b.nodes);
    let inits = std::mem::take(&mut b.initializers);
    g.initializer.extend(inits);
    g.node.retain(|n| !block.projections.iter().any(|p| p.node == n.name) || n.name.is_empty());
    g.node.splice(first..first, new);
    Ok(())
}

/// Makes a layer-norm node's axes count from the end, so that it works the
/// same on a leading copies axis. `x` is the node's original data input.
fn batch_axes(
    n: &mut NodeProto,
    g: &GraphProto,
    facts: &Facts,
    b: &mut GraphBuilder,
    x: &str,
) -> std::result::Result<(), String> {
    let op = n.op_type.as_str();
    if ELEMENTWISE.contains(&op) {
        return Ok(());
    }
    let rank = facts.rank(x).ok_or_else(|| format!("the rank of '{x}' is unknown"))? as i64;
    let neg = |a: i64| if a >= 0 { a - rank } else { a };
    match op {
        "LayerNormalization" => {
            let axis = n.attribute.iter().find(|a| a.name == "axis").map_or(-1, |a| a.i);
            n.attribute.retain(|a| a.name != "axis");
            n.attribute.push(attr_i("axis", neg(axis)));
            Ok(())
        }
        _ if op.starts_with("Reduce") => {
            if let Some(a) = n.attribute.iter_mut().find(|a| a.name == "axes") {
                a.ints = a.ints.iter().map(|&v| neg(v)).collect();
                return Ok(());
            }
            match n.input.get(1).filter(|s| !s.is_empty()) {
                Some(axes) => {
                    let values = find_constant(g, axes)
                        .and_then(tensor_i64s)
                        .ok_or_else(|| format!("its axes '{axes}' are not a constant"))?;
                    let fixed: Vec<i64> = values.iter().map(|&v| neg(v)).collect();
                    n.input[1] = b.const_i64s(&fixed);
                    Ok(())
                }
                None => Err("it reduces over every axis".into()),
            }
        }
        _ => Err(format!(
            "{op} is not an op a layer-norm is made of here (elementwise ops, Reduce*, LayerNormalization)"
        )),
    }
}
