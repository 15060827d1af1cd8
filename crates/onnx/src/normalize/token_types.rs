//! Token inputs declared int32 become int64 inputs cast inside the graph.
//! ONNX Runtime's own GPT-2 converter (`--use_int64_inputs` off, its default)
//! declares `input_ids`, `position_ids` and `attention_mask` int32; every run
//! attrpatch makes feeds token ids, masks and positions as int64, so the
//! narrowing moves into the graph, where it computes the same values (token
//! ids, positions and masks are far below 2^31).

use crate::builder::{attr_i, GraphBuilder};
use crate::consts::{INT32, INT64};
use crate::graph::{all_names, rename_uses};
use crate::pb::{type_proto, GraphProto, ModelProto};
use std::collections::HashMap;

/// Prefix of the Cast nodes this pass adds.
const NAME_PREFIX: &str = "attrpatch/token_types/";

/// The inputs attrpatch feeds: by name, and the first input (the token ids of
/// a model that names them otherwise).
fn is_token_input(g: &GraphProto, name: &str) -> bool {
    ["input_ids", "attention_mask", "position_ids"].contains(&name) || g.input.first().is_some_and(|i| i.name == name)
}

/// Declares every int32 token input int64 and casts it back to int32 for its
/// consumers (in subgraphs too). Returns the inputs widened.
pub fn widen_int32_token_inputs(proto: &mut ModelProto, opset: i64) -> Vec<String> {
    let Some(g) = proto.graph.as_mut() else { return vec![] };
    let initializers: Vec<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    let narrow: Vec<String> = g
        .input
        .iter()
        .filter(|i| is_token_input(g, &i.name) && !initializers.contains(&i.name))
        .filter(|i| {
            matches!(i.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(type_proto::Value::TensorType(t)) if t.elem_type == INT32)
        })
        .map(|i| i.name.clone())
        .collect();
    if narrow.is_empty() {
        return narrow;
    }
    let mut b = GraphBuilder::new(opset, NAME_PREFIX, all_names(g));
    let mut map = HashMap::new();
    for name in &narrow {
        let cast = b.node("Cast", &[name], vec![attr_i("to", INT32 as i64)]);
        map.insert(name.clone(), cast);
    }
    rename_uses(&mut g.node, &map);
    for i in g.input.iter_mut().filter(|i| narrow.contains(&i.name)) {
        if let Some(type_proto::Value::TensorType(t)) = i.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.elem_type = INT64;
        }
    }
    // The casts read the new inputs; their own input keeps the graph input's name.
    let mut nodes = std::mem::take(&mut b.nodes);
    nodes.append(&mut g.node);
    g.node = nodes;
    narrow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Dim;
    use crate::graph::value_info;
    use crate::pb::{NodeProto, ValueInfoProto};

    fn input(name: &str, elem: i32) -> ValueInfoProto {
        value_info(name, elem, &[Dim::Sym("b".into()), Dim::Sym("s".into())])
    }

    #[test]
    fn int32_token_inputs_are_widened_and_cast_back_for_their_consumers() {
        let g = GraphProto {
            input: vec![input("input_ids", INT32), input("position_ids", INT64), input("other", INT32)],
            node: vec![NodeProto {
                op_type: "Gather".into(),
                input: vec!["table".into(), "input_ids".into()],
                output: vec!["e".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut m = ModelProto { graph: Some(g), ..Default::default() };
        assert_eq!(widen_int32_token_inputs(&mut m, 11), vec!["input_ids".to_string()]);
        let g = m.graph.unwrap();
        let elem = |i: &ValueInfoProto| {
            let type_proto::Value::TensorType(t) = i.r#type.as_ref().unwrap().value.as_ref().unwrap();
            t.elem_type
        };
        assert_eq!(elem(&g.input[0]), INT64);
        assert_eq!(elem(&g.input[2]), INT32, "not a token input: left alone");
        let cast = &g.node[0];
        assert_eq!((cast.op_type.as_str(), cast.input[0].as_str()), ("Cast", "input_ids"));
        assert_eq!(g.node[1].input[1], cast.output[0]);
    }
}
