//! The patching graph cut at a layer, so that rows patched at that layer or
//! above do not recompute the layers below it.
//!
//! For rows whose masks are zero below hook `start`, every tensor that does
//! not depend on a mask of hook `start` or above equals the unpatched
//! corrupted run's (rows copy) or the clean run's (clean copy). The cut graph
//! keeps only the nodes the rows' metric needs that do depend on such a mask,
//! plus cheap nodes that depend on no hook at all (masks, positions, selector
//! gathers). Every other tensor those nodes read is a "frontier" tensor, fed
//! from one unpatched run of the whole patching graph (the cache run, whose
//! graph is `cache_graph`): rows-copy tensors gathered per row from the
//! per-pair cache by the caller (`staged::gather_rows`), clean-copy tensors
//! as they are.
//!
//! Shape and Size outputs never count as depending on a hook (their value
//! depends on the row count, not on the activations), so shape arithmetic
//! stays in the cut graph and reads the frontier tensor itself.

use super::graph::names;
use crate::augment::names as aug_names;
use crate::hooks::Hook;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::graph::value_info_unshaped;
use attrpatch_onnx::pb::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use std::collections::{HashMap, HashSet};

/// A tensor the cut graph reads from the cache run.
#[derive(Debug, Clone, PartialEq)]
pub struct Frontier {
    /// The tensor's name in the patching graph (an output of the cache graph).
    pub name: String,
    /// A rows-copy tensor (rows outermost: [R, ...] or flattened [R * k, ...]);
    /// the cache run holds it for one row per pair. False: a clean-copy tensor, per pair.
    pub rows: bool,
}

/// The patching graph cut below hook `start`.
pub struct Cut {
    /// Index into the hooks of the first hook the cut graph patches.
    pub start: usize,
    /// The cut graph: the nodes that depend on a mask of hook `start` or above, reading the frontier as inputs.
    pub proto: ModelProto,
    /// What it reads from the cache run.
    pub frontier: Vec<Frontier>,
    /// The graph's inputs, in order (a subset of the patching graph's, then the frontier's).
    pub inputs: Vec<String>,
}

/// Tensors the seeds reach through `g`'s nodes; nodes of the ops in `blocked` do not pass it on.
fn reach(g: &GraphProto, seeds: impl IntoIterator<Item = String>, blocked: &[&str]) -> HashSet<String> {
    let mut set: HashSet<String> = seeds.into_iter().collect();
    // Nodes are in topological order after the builder; repeat until stable in case they are not.
    loop {
        let before = set.len();
        for n in &g.node {
            if blocked.contains(&n.op_type.as_str()) {
                continue;
            }
            if n.input.iter().any(|i| !i.is_empty() && set.contains(i)) {
                set.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

fn has_subgraph(n: &NodeProto) -> bool {
    n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())
}

/// The patching graph (exact patching: no gradients) cut below `hooks[start]`.
pub fn cut(proto: &ModelProto, hooks: &[Hook], start: usize, dtype: i32) -> Result<Cut> {
    let g = proto.graph.as_ref().ok_or_else(|| Error::Model("the patching graph has no graph".into()))?;
    let first = hooks.get(start).ok_or_else(|| {
        Error::Input(format!("cutting the patching graph at hook {start}: the model has {} hooks", hooks.len()))
    })?;
    let masks = hooks[start..].iter().map(|h| names::mask(h.layer));
    let patched = reach(g, masks, &[]);
    let hook_tensors =
        hooks.iter().flat_map(|h| [h.tensor.clone(), format!("{}{}", aug_names::CLEAN_PREFIX, h.tensor)]);
    let deep = reach(g, hook_tensors, &["Shape", "Size"]);
    let row_dependent = reach(g, [names::ROW_PAIR.to_string()], &[]);

    let producer: HashMap<&str, usize> =
        g.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let graph_inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    let mut keep = vec![false; g.node.len()];
    let mut used_inputs = HashSet::new();
    let mut frontier = vec![];
    let mut seen = HashSet::new();
    let mut stack = vec![names::ROW_METRIC.to_string()];
    while let Some(t) = stack.pop() {
        if t.is_empty() || !seen.insert(t.clone()) {
            continue;
        }
        if graph_inputs.contains(t.as_str()) {
            used_inputs.insert(t);
            continue;
        }
        let Some(&i) = producer.get(t.as_str()) else { continue }; // an initializer
        if patched.contains(&t) || !deep.contains(&t) {
            if !keep[i] {
                keep[i] = true;
                let n = &g.node[i];
                if has_subgraph(n) {
                    return Err(Error::Model(format!(
                        "node '{}' ({}) has a subgraph: the patching graph is not cut through control flow",
                        n.name, n.op_type
                    )));
                }
                stack.extend(n.input.iter().cloned());
            }
        } else {
            let rows = row_dependent.contains(&t);
            frontier.push(Frontier { name: t, rows });
        }
    }
    if !keep.iter().any(|&k| k) || frontier.is_empty() && start > 0 {
        return Err(Error::Model(format!(
            "hook '{}' (layer {}): no tensor computed below it was found to cut the patching graph at",
            first.tensor, first.layer
        )));
    }
    frontier.sort_by(|a, b| a.name.cmp(&b.name));

    let mut nodes = vec![];
    nodes.extend(g.node.iter().zip(&keep).filter(|(_, &k)| k).map(|(n, _)| n.clone()));
    let read: HashSet<String> = nodes.iter().flat_map(|n| n.input.iter().cloned()).collect();
    let mut input: Vec<ValueInfoProto> = g.input.iter().filter(|i| used_inputs.contains(&i.name)).cloned().collect();
    input.extend(frontier.iter().map(|f| value_info_unshaped(&f.name, dtype)));
    let inputs = input.iter().map(|i| i.name.clone()).collect();
    let graph = GraphProto {
        name: format!("{}/cut{start}", g.name),
        node: nodes,
        initializer: g.initializer.iter().filter(|t| read.contains(&t.name)).cloned().collect(),
        input,
        output: g.output.iter().filter(|o| o.name == names::ROW_METRIC).cloned().collect(),
        ..Default::default()
    };
    let out = ModelProto {
        ir_version: proto.ir_version,
        opset_import: proto.opset_import.clone(),
        producer_name: proto.producer_name.clone(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(Cut { start, proto: out, frontier, inputs })
}

/// The whole patching graph with every frontier tensor of `cuts` as an extra output.
pub fn cache_graph(proto: &ModelProto, cuts: &[Cut], dtype: i32) -> ModelProto {
    let mut out = proto.clone();
    let g = out.graph.as_mut().expect("the patching graph has a graph");
    let mut named: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for f in cuts.iter().flat_map(|c| &c.frontier) {
        if named.insert(f.name.clone()) {
            g.output.push(value_info_unshaped(&f.name, dtype));
        }
    }
    out
}
