//! `Flatten` as `Reshape`. tract fails on Flatten with more than one symbolic
//! dim (every legacy PyTorch export has one), so Flatten becomes
//! Shape/Slice/ReduceProd/Concat/Reshape, which means the same thing to every
//! runtime.

use crate::builder::GraphBuilder;
use crate::error::Result;
use crate::graph::all_names;
use crate::pb::{ModelProto, NodeProto};

/// Rewrites every default-domain Flatten of the graph.
pub fn flatten_as_reshape_all(proto: &mut ModelProto, opset: i64) -> Result<()> {
    let g = proto.graph.as_mut().expect("checked by caller");
    if !g.node.iter().any(|n| n.op_type == "Flatten") {
        return Ok(());
    }
    let mut b = GraphBuilder::new(opset, "attrpatch/flatten/", all_names(g));
    let mut nodes = Vec::with_capacity(g.node.len());
    for n in std::mem::take(&mut g.node) {
        if n.op_type == "Flatten" && n.domain.is_empty() {
            flatten_as_reshape(&mut b, &n);
            nodes.append(&mut b.nodes);
        } else {
            nodes.push(n);
        }
    }
    g.node = nodes;
    g.initializer.append(&mut b.initializers);
    Ok(())
}

fn flatten_as_reshape(b: &mut GraphBuilder, n: &NodeProto) {
    let axis = n.attribute.iter().find(|a| a.name == "axis").map(|a| a.i).unwrap_or(1);
    let x = n.input[0].as_str();
    let shape = b.shape(x);
    let ax = b.const_i64s(&[axis]);
    let zero = b.const_i64s(&[0]);
    let end = b.const_i64s(&[i64::MAX]);
    let head = if axis == 0 {
        b.const_i64s(&[1])
    } else {
        let s = b.node("Slice", &[&shape, &zero, &ax], vec![]);
        b.reduce_prod(&s, &[0], true)
    };
    let tail_dims = b.node("Slice", &[&shape, &ax, &end], vec![]);
    let tail = b.reduce_prod(&tail_dims, &[0], true);
    let target = b.concat(&[&head, &tail], 0);
    b.node_named("Reshape", &[x, &target], &n.output[0], vec![]);
}
