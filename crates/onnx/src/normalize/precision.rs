//! Half-precision models (float16, bfloat16) computed in float32. float16
//! arithmetic misses a float64 reference by about 0.1 on a small model, and the
//! backward graph the rewrite adds is float32; so every half-precision
//! weight, constant, Cast target and declared type becomes float32 at load
//! (the values are exact: each half value is a float32 value).
//!
//! Weights left in the model's files (external data, which ONNX Runtime reads
//! in place) are not converted: they are declared float32 and marked with the
//! type the file holds (`onnx::file_precision`), and the graph ONNX Runtime
//! gets reads each through a Cast of its own at each use. Inline weights (a
//! small file, or one read whole for tract) are converted here.

use crate::consts::{BFLOAT16, FLOAT, FLOAT16};
use crate::file_precision;
use crate::pb::{type_proto, GraphProto, ModelProto, TensorProto, ValueInfoProto};

fn is_half(t: i32) -> bool {
    t == FLOAT16 || t == BFLOAT16
}

/// IEEE half to float32, exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: m * 2^-24
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 to float32, exactly (bfloat16 is float32's upper half).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A float16/bfloat16 tensor as float32, whatever its storage (raw bytes, or
/// the 16-bit patterns in `int32_data`).
pub fn upcast_tensor(t: &mut TensorProto) {
    if !is_half(t.data_type) {
        return;
    }
    let conv = if t.data_type == FLOAT16 { f16_to_f32 } else { bf16_to_f32 };
    let bits: Vec<u16> = if !t.raw_data.is_empty() {
        t.raw_data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
    } else {
        t.int32_data.iter().map(|&v| v as u16).collect()
    };
    t.raw_data = bits.into_iter().flat_map(|h| conv(h).to_le_bytes()).collect();
    t.int32_data.clear();
    t.data_type = FLOAT;
}

fn upcast_value_info(vi: &mut ValueInfoProto) {
    if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        if is_half(t.elem_type) {
            t.elem_type = FLOAT;
        }
    }
}

/// Rewrites a half-precision model (or the half-precision parts of one) to
/// compute in float32. Returns whether anything changed.
pub fn compute_in_float32(proto: &mut ModelProto) -> bool {
    let g = proto.graph.as_mut().expect("checked by caller");
    let mut left = false;
    for t in g.initializer.iter_mut().filter(|t| file_precision::is_left_half(t)) {
        file_precision::mark_half(t);
        left = true;
    }
    upcast_graph(g) || left
}

fn upcast_graph(g: &mut GraphProto) -> bool {
    let mut changed = false;
    for t in &mut g.initializer {
        changed |= is_half(t.data_type);
        upcast_tensor(t);
    }
    for vi in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        upcast_value_info(vi);
    }
    for n in &mut g.node {
        let is_default = n.domain.is_empty() || n.domain == "ai.onnx";
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                changed |= is_half(t.data_type);
                upcast_tensor(t);
            }
            for t in &mut a.tensors {
                changed |= is_half(t.data_type);
                upcast_tensor(t);
            }
            // Element types chosen by attribute: Cast's `to`, EyeLike/Random*'s `dtype`.
            let type_attr = (n.op_type == "Cast" && a.name == "to") || a.name == "dtype";
            if is_default && type_attr && is_half(a.i as i32) {
                a.i = FLOAT as i64;
                changed = true;
            }
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                changed |= upcast_graph(sub);
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_bit_patterns_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc0a0), -5.0);
    }
}
