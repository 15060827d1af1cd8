//! Dead-node elimination. ONNX Runtime runs every node of a graph, used or
//! not: the original lm_head over all positions, whose logits the metric no
//! longer reads, would cost as much as the rest of the backward pass.

use super::pb::GraphProto;
use std::collections::HashSet;

/// Removes nodes none of whose outputs reach a graph output, and the
/// initializers nothing reads any more. Returns how many nodes went.
pub fn prune_dead(g: &mut GraphProto) -> usize {
    let mut live: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            live.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
            // Subgraphs (If/Loop bodies) read outer tensors by name.
            for a in &n.attribute {
                for sub in a.g.iter().chain(&a.graphs) {
                    for sn in &sub.node {
                        live.extend(sn.input.iter().cloned());
                    }
                }
            }
        }
    }
    let before = g.node.len();
    let mut k = keep.iter();
    g.node.retain(|_| *k.next().unwrap());
    // What stand-ins for packed weights refer to is read once they are restored.
    live.extend(super::file_precision::referenced(g));
    g.initializer.retain(|t| live.contains(&t.name));
    before - g.node.len()
}
