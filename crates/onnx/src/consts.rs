//! Element types and constant tensors: reading the integer constants that
//! gradient rules need (axes, perms, split sizes) and making new ones.

use super::pb::{GraphProto, NodeProto, TensorProto};

/// ONNX element type code of float32.
pub const FLOAT: i32 = 1;
/// ONNX element type code of int32.
pub const INT32: i32 = 6;
/// ONNX element type code of int64.
pub const INT64: i32 = 7;
/// ONNX element type code of bool.
pub const BOOL: i32 = 9;
/// ONNX element type code of float16.
pub const FLOAT16: i32 = 10;
/// ONNX element type code of float64 (double).
pub const DOUBLE: i32 = 11;
/// ONNX element type code of bfloat16.
pub const BFLOAT16: i32 = 16;

/// Bytes per element of an ONNX element type; None for the types not listed
/// (4-bit, string, complex, float8 and others).
pub fn elem_size(data_type: i32) -> Option<u64> {
    Some(match data_type {
        2 | 3 | 9 => 1,       // uint8, int8, bool
        4 | 5 | 10 | 16 => 2, // uint16, int16, float16, bfloat16
        1 | 6 | 12 => 4,      // float, int32, uint32
        7 | 11 | 13 => 8,     // int64, double, uint64
        _ => return None,
    })
}

/// A readable name of an ONNX element type, for messages ("another type" for those not listed).
pub fn type_name(data_type: i32) -> &'static str {
    match data_type {
        FLOAT => "float32",
        DOUBLE => "float64",
        FLOAT16 => "float16",
        BFLOAT16 => "bfloat16",
        INT64 => "int64",
        INT32 => "int32",
        BOOL => "bool",
        2 => "uint8",
        3 => "int8",
        21 => "uint4",
        22 => "int4",
        _ => "another type",
    }
}

/// Whether the element type is a float one: float32, float64, float16 or bfloat16.
pub fn is_float(data_type: i32) -> bool {
    matches!(data_type, FLOAT | DOUBLE | FLOAT16 | BFLOAT16)
}

/// Integer values of a tensor proto (int64 or int32), whatever its storage.
pub fn tensor_i64s(t: &TensorProto) -> Option<Vec<i64>> {
    match t.data_type {
        INT64 if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        INT64 => Some(t.int64_data.clone()),
        INT32 if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect())
        }
        INT32 => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        _ => None,
    }
}

/// Float values of a tensor proto (float or double).
pub fn tensor_f64s(t: &TensorProto) -> Option<Vec<f64>> {
    match t.data_type {
        FLOAT if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect())
        }
        FLOAT => Some(t.float_data.iter().map(|&v| v as f64).collect()),
        DOUBLE if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        DOUBLE => Some(t.double_data.clone()),
        _ => None,
    }
}

/// The tensor held by a `Constant` node's `value` attribute.
pub fn constant_node_tensor(n: &NodeProto) -> Option<&TensorProto> {
    if n.op_type != "Constant" {
        return None;
    }
    n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref())
}

/// Finds the constant tensor behind a name: an initializer or a Constant node's output.
pub fn find_constant<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .or_else(|| graph.node.iter().find(|n| n.output.iter().any(|o| o == name)).and_then(constant_node_tensor))
}

/// An int64 tensor of shape `dims` holding `values` (as raw little-endian data).
pub fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A float tensor in `data_type` (float32 or float64).
pub fn float_tensor(name: &str, data_type: i32, dims: &[i64], values: &[f64]) -> TensorProto {
    let raw_data = match data_type {
        DOUBLE => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
    };
    TensorProto { name: name.to_string(), dims: dims.to_vec(), data_type, raw_data, ..Default::default() }
}
