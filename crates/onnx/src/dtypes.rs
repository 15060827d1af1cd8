//! Element types of every tensor, from declarations and op semantics.
//! tract's analysis leaves the types of many integer shape-path tensors open,
//! and the backward sweep must know which tensors are float (differentiable).

use super::consts::{BOOL, FLOAT, INT64};
use super::facts::Facts;
use super::pb::{type_proto, GraphProto, ValueInfoProto};
use std::collections::HashMap;

fn declared(vi: &ValueInfoProto) -> Option<i32> {
    let type_proto::Value::TensorType(t) = vi.r#type.as_ref()?.value.as_ref()?;
    Some(t.elem_type)
}

/// Tensor name -> ONNX element type, for every tensor whose type can be told:
/// declared inputs, value_info, outputs and initializers, then each node's
/// outputs in graph order (tract's fact, else the op's semantics, else the type
/// of its first input). Tensors whose type cannot be told are absent.
pub fn infer_dtypes(g: &GraphProto, facts: &Facts) -> HashMap<String, i32> {
    let mut m: HashMap<String, i32> = HashMap::new();
    for vi in g.input.iter().chain(&g.value_info).chain(&g.output) {
        if let Some(t) = declared(vi) {
            m.insert(vi.name.clone(), t);
        }
    }
    for t in &g.initializer {
        m.insert(t.name.clone(), t.data_type);
    }
    for n in &g.node {
        let of = |m: &HashMap<String, i32>, k: usize| n.input.get(k).and_then(|i| m.get(i)).copied();
        let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
        let by_op = match n.op_type.as_str() {
            "Constant" => attr("value").and_then(|a| a.t.as_ref()).map(|t| t.data_type),
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(INT64),
            "Cast" => attr("to").map(|a| a.i as i32),
            "CastLike" => of(&m, 1),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Not" | "Xor"
            | "IsNaN" | "IsInf" => Some(BOOL),
            "ConstantOfShape" => Some(attr("value").and_then(|a| a.t.as_ref()).map_or(FLOAT, |t| t.data_type)),
            "Where" => of(&m, 1),
            _ => of(&m, 0),
        };
        for o in &n.output {
            if let Some(t) = facts.dtype(o).or(by_op) {
                m.insert(o.clone(), t);
            }
        }
    }
    m
}
