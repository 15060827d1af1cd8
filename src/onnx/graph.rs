//! Whole-graph helpers shared by the rewrites: the set of names in use.

use super::pb::GraphProto;
use std::collections::HashSet;

/// Every node, tensor, initializer, input and output name of `g`, so that a
/// rewrite can pick fresh ones.
pub fn all_names(g: &GraphProto) -> HashSet<String> {
    let mut s = HashSet::new();
    for n in &g.node {
        s.insert(n.name.clone());
        s.extend(n.input.iter().cloned());
        s.extend(n.output.iter().cloned());
    }
    s.extend(g.initializer.iter().map(|t| t.name.clone()));
    s.extend(g.input.iter().map(|v| v.name.clone()));
    s.extend(g.output.iter().map(|v| v.name.clone()));
    s
}
