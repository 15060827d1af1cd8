//! Whole-graph helpers: the set of names in use (for rewrites), and declared
//! shapes of inputs and outputs (read and written). A model's content hash is
//! in `hash`.

use super::pb::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, GraphProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// One dimension of a tensor's shape.
pub enum Dim {
    /// A concrete extent.
    Known(i64),
    /// A symbolic expression as tract prints it, e.g. `batch*sequence`.
    Sym(String),
    /// Not inferred.
    Unknown,
}

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

/// A tensor declaration of `elem_type` with no shape at all (not even a
/// rank): for tensors whose shape the runtime works out itself.
pub fn value_info_unshaped(name: &str, elem_type: i32) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type, shape: None })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Renames the uses of names in `nodes` and in the subgraphs of their
/// attributes (which read outer names by reference; ONNX forbids a subgraph
/// to redefine them).
pub fn rename_uses(nodes: &mut [NodeProto], map: &HashMap<String, String>) {
    for n in nodes {
        for i in n.input.iter_mut() {
            if let Some(new) = map.get(i.as_str()) {
                *i = new.clone();
            }
        }
        for a in n.attribute.iter_mut() {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                rename_uses(&mut sub.node, map);
            }
        }
    }
}

/// A tensor declaration (graph input or output) of `elem_type` and `dims`;
/// symbolic dims that are not identifiers (`batch*sequence`) are left unnamed.
pub fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: match d {
                Dim::Known(v) => Some(dimension::Value::DimValue(*v)),
                Dim::Sym(s) if is_identifier(s) => Some(dimension::Value::DimParam(s.clone())),
                _ => None,
            },
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Expressions like `batch*sequence` are left unnamed in declared shapes.
fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// The dims a graph input or output declares (empty when it declares none).
pub fn declared_dims(vi: &ValueInfoProto) -> Vec<Dim> {
    match &vi.r#type {
        Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), .. }) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(dimension::Value::DimValue(v)) => Dim::Known(*v),
                        Some(dimension::Value::DimParam(p)) => Dim::Sym(p.clone()),
                        None => Dim::Unknown,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![],
    }
}
