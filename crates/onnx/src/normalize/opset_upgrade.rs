//! Opset 11 and 12 graphs (ONNX Runtime's GPT-2 converter, old exports)
//! upgraded to opset 13, the oldest the differentiator knows: the ops whose
//! signature or meaning changed in 12 and 13 are rewritten, then the model
//! imports opset 13.
//!
//! - Split `split`, Squeeze/Unsqueeze `axes`, ReduceSum `axes`: attribute to
//!   input (the other Reduce* keep their attribute until opset 18).
//! - Softmax, LogSoftmax, Hardmax: before 13 they flatten the input to 2-D at
//!   `axis` (default 1) and normalise over the whole tail; from 13 over one
//!   axis. When the axis is the last one (declared rank) it is kept; otherwise
//!   the old meaning is spelt out as Flatten, the op on axis 1, Reshape back.
//! - Dropout (ratio attribute before 12): an Identity, as at inference.

use crate::builder::{attr_i, GraphBuilder};
use crate::error::{Error, Result};
use crate::graph::all_names;
use crate::pb::{type_proto, AttributeProto, GraphProto, ModelProto, NodeProto};
use std::collections::HashMap;
use std::path::Path;

/// The oldest opset attrpatch upgrades from.
pub const OLDEST: i64 = 11;
/// The opset upgraded graphs import.
pub const TARGET: i64 = 13;

/// Upgrades an opset-11/12 model to opset 13; returns the model's opset afterwards.
pub fn upgrade(proto: &mut ModelProto, opset: i64, path: &Path) -> Result<i64> {
    if opset >= TARGET {
        return Ok(opset);
    }
    if opset < OLDEST {
        return Err(Error::Unsupported(format!(
            "{}: opset {opset} is not supported; attrpatch needs opset {OLDEST} or newer (re-export with \
             opset_version>=14)",
            path.display()
        )));
    }
    let g = proto.graph.as_mut().expect("checked by caller");
    upgrade_graph(g, path)?;
    for o in &mut proto.opset_import {
        if o.domain.is_empty() || o.domain == "ai.onnx" {
            o.version = TARGET;
        }
    }
    Ok(TARGET)
}

fn declared_ranks(g: &GraphProto) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for vi in g.input.iter().chain(&g.value_info).chain(&g.output) {
        if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            if let Some(s) = &t.shape {
                m.insert(vi.name.clone(), s.dim.len());
            }
        }
    }
    for t in &g.initializer {
        m.insert(t.name.clone(), t.dims.len());
    }
    m
}

fn take_attr(n: &mut NodeProto, name: &str) -> Option<AttributeProto> {
    let i = n.attribute.iter().position(|a| a.name == name)?;
    Some(n.attribute.remove(i))
}

fn upgrade_graph(g: &mut GraphProto, path: &Path) -> Result<()> {
    let ranks = declared_ranks(g);
    let mut b = GraphBuilder::new(TARGET, "attrpatch/opset13/", all_names(g));
    let mut out = Vec::with_capacity(g.node.len());
    for mut n in std::mem::take(&mut g.node) {
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                upgrade_graph(sub, path)?;
            }
        }
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            out.push(n);
            continue;
        }
        match n.op_type.as_str() {
            "Split" => {
                if let Some(a) = take_attr(&mut n, "split") {
                    let s = b.const_i64s(&a.ints);
                    n.input.resize(1, String::new());
                    n.input.push(s);
                }
            }
            "Squeeze" | "Unsqueeze" | "ReduceSum" => {
                if let Some(a) = take_attr(&mut n, "axes") {
                    let s = b.const_i64s(&a.ints);
                    n.input.resize(1, String::new());
                    n.input.push(s);
                }
            }
            "Softmax" | "LogSoftmax" | "Hardmax" if n.input.is_empty() || n.output.is_empty() => {
                return Err(Error::Model(format!(
                    "{}: {} node '{}' has no input or output",
                    path.display(),
                    n.op_type,
                    n.name
                )));
            }
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = take_attr(&mut n, "axis").map(|a| a.i).unwrap_or(1);
                let last = axis == -1 || ranks.get(&n.input[0]).is_some_and(|&r| axis == r as i64 - 1);
                if !last {
                    // The opset-11 meaning: normalise over the flattened tail from `axis`.
                    let x = n.input[0].clone();
                    let flat = b.node("Flatten", &[&x], vec![attr_i("axis", axis)]);
                    let y = b.node(&n.op_type, &[&flat], vec![attr_i("axis", 1)]);
                    let s = b.shape(&x);
                    b.node_named("Reshape", &[&y, &s], &n.output[0], vec![]);
                    out.append(&mut b.nodes);
                    continue;
                }
                n.attribute.push(attr_i("axis", -1));
            }
            "Dropout" => {
                if n.output.len() > 1 && !n.output[1].is_empty() {
                    return Err(Error::Unsupported(format!(
                        "{}: Dropout node '{}' at opset < 13 has its mask output '{}' used; attrpatch upgrades \
                         Dropout to an Identity and cannot feed that mask",
                        path.display(),
                        n.name,
                        n.output[1]
                    )));
                }
                n.op_type = "Identity".into();
                n.input.truncate(1);
                n.attribute.clear();
            }
            _ => {}
        }
        out.append(&mut b.nodes);
        out.push(n);
    }
    g.node = out;
    g.initializer.append(&mut b.initializers);
    Ok(())
}
