//! `If` nodes whose condition is a constant (a merged decoder's
//! `use_cache_branch` once the KV-cache pass has fixed it) are replaced by the
//! nodes of the branch they always take, so the rest of the pipeline sees one
//! flat graph of ops it knows.

use crate::builder::GraphBuilder;
use crate::consts::{find_constant, tensor_i64s, BOOL};
use crate::error::{Error, Result};
use crate::graph::{all_names, rename_uses};
use crate::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Inlines every `If` of the main graph with a constant condition (repeatedly,
/// for nested ones). Returns how many were inlined.
pub fn inline_constant_ifs(proto: &mut ModelProto, path: &Path) -> Result<usize> {
    let opset = crate::model::default_opset(proto).unwrap_or(13);
    let g = proto.graph.as_mut().expect("checked by caller");
    let mut count = 0;
    while let Some(i) =
        g.node.iter().position(|n| n.op_type == "If" && n.domain.is_empty() && constant_cond(g, n).is_some())
    {
        let node = g.node.remove(i);
        let cond = constant_cond(g, &node).unwrap();
        let which = if cond { "then_branch" } else { "else_branch" };
        let branch =
            node.attribute.iter().find(|a| a.name == which).and_then(|a| a.g.clone()).ok_or_else(|| {
                Error::Model(format!("{}: If node '{}' has no {which} graph", path.display(), node.name))
            })?;
        if branch.output.len() != node.output.len() {
            return Err(Error::Model(format!(
                "{}: If node '{}' has {} outputs but its {which} graph {}",
                path.display(),
                node.name,
                node.output.len(),
                branch.output.len()
            )));
        }
        let mut outer = all_names(g);
        for o in &node.output {
            outer.remove(o);
        }
        let mut b = GraphBuilder::new(opset, "attrpatch/if/", outer.clone());
        let (nodes, inits, value_info) = inline(branch, &node, &outer, &mut b);
        g.node.splice(i..i, nodes);
        g.initializer.extend(inits);
        g.value_info.extend(value_info);
        count += 1;
    }
    Ok(count)
}

/// The condition's value when it is a constant tensor.
fn constant_cond(g: &GraphProto, n: &NodeProto) -> Option<bool> {
    let t = find_constant(g, n.input.first()?)?;
    Some(bool_value(t)? != 0)
}

fn bool_value(t: &TensorProto) -> Option<i64> {
    if t.data_type == BOOL {
        return t.raw_data.first().map(|&v| v as i64).or_else(|| t.int32_data.first().map(|&v| v as i64));
    }
    tensor_i64s(t)?.first().copied()
}

/// The branch's nodes with every name it defines that clashes with the outer
/// graph renamed, its outputs renamed to the If's outputs (or copied by an
/// Identity where the branch passes an outer or constant tensor through).
fn inline(
    mut branch: GraphProto,
    node: &NodeProto,
    outer: &HashSet<String>,
    b: &mut GraphBuilder,
) -> (Vec<NodeProto>, Vec<TensorProto>, Vec<crate::pb::ValueInfoProto>) {
    let produced: HashSet<String> = branch.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut identities = vec![];
    let mut claimed = HashSet::new();
    for (bo, io) in branch.output.iter().map(|o| o.name.clone()).zip(node.output.iter().cloned()) {
        if bo == io {
            claimed.insert(bo);
        } else if produced.contains(&bo) && claimed.insert(bo.clone()) {
            rename.insert(bo, io);
        } else {
            identities.push((bo, io));
        }
    }
    let defined = branch.node.iter().flat_map(|n| n.output.iter()).chain(branch.initializer.iter().map(|t| &t.name));
    let clashes: Vec<String> =
        defined.filter(|d| outer.contains(*d) && !rename.contains_key(*d)).cloned().collect::<Vec<_>>();
    for d in clashes {
        let fresh = b.fresh("inlined");
        rename.insert(d, fresh);
    }
    let map = |s: &mut String| {
        if let Some(r) = rename.get(s.as_str()) {
            *s = r.clone();
        }
    };
    for n in &mut branch.node {
        n.input.iter_mut().for_each(map);
        n.output.iter_mut().for_each(map);
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                rename_uses(&mut sub.node, &rename);
            }
        }
    }
    branch.initializer.iter_mut().for_each(|t| map(&mut t.name));
    branch.value_info.iter_mut().for_each(|v| map(&mut v.name));
    let mut nodes = branch.node;
    for (from, to) in identities {
        let from = rename.get(&from).cloned().unwrap_or(from);
        b.node_named("Identity", &[&from], &to, vec![]);
    }
    nodes.append(&mut b.nodes);
    (nodes, branch.initializer, branch.value_info)
}
