//! Quantised models. `MatMulNBits` (com.microsoft; the GenAI builder's and
//! `MatMulNBitsQuantizer`'s int2/4/8 blocks) whose weight stays in the model's
//! files (external data, read by ONNX Runtime in place) stays as it is, packed:
//! the forward is the op itself and its gradient rule (`autodiff`'s
//! `matmul_nbits`) dequantises the blocks at run time for its one product.
//! That needs 4 or 8 bits, integer zero points and opset 21 (the blocked
//! DequantizeLinear); other weight-only quantisation is undone at load: a
//! `DequantizeLinear` whose inputs are all constants (QDQ weights) becomes the
//! float32 initializer it computes, and a `MatMulNBits` becomes a `MatMul` with
//! that float32 weight, keeping the node's name (hooks are found by it). The
//! values are exactly the kernels' `(q - zero_point) * scale`.
//!
//! Activation quantisation (`quantize_dynamic`, `quantize_static`: activations
//! rounded to 8 bits at run time) is refused, naming the nodes: rounding has
//! no useful gradient, and the float model the file was made from gives the
//! attribution the user wants.

use crate::consts::{find_constant, BFLOAT16, FLOAT, FLOAT16};
use crate::error::{Error, Result};
use crate::file_precision;
use crate::graph::all_names;
use crate::pb::{tensor_proto::DataLocation, GraphProto, ModelProto, NodeProto, TensorProto};
use std::collections::HashSet;
use std::path::Path;

const UINT8: i32 = 2;
const INT8: i32 = 3;
const UINT16: i32 = 4;
const INT16: i32 = 5;
const INT32: i32 = 6;
const UINT4: i32 = 21;
const INT4: i32 = 22;

/// Ops that quantise or compute on quantised activations. A DequantizeLinear
/// counts when what it reads was quantised at run time (`quantize_dynamic`
/// also dequantises rows gathered from a quantised embedding table: those are
/// weights).
fn quantises_activations(n: &NodeProto, constants: &HashSet<String>, quantised: &HashSet<String>) -> bool {
    let op = n.op_type.as_str();
    let first = n.input.first();
    let non_const_input = first.is_some_and(|i| !constants.contains(i));
    (op == "DequantizeLinear" && first.is_some_and(|i| quantised.contains(i)))
        || matches!(
            op,
            "DynamicQuantizeLinear"
                | "MatMulInteger"
                | "ConvInteger"
                | "DynamicQuantizeMatMul"
                | "MatMulIntegerToFloat"
                | "QAttention"
                | "QGemm"
                | "DynamicQuantizeLSTM"
                | "QEmbedLayerNormalization"
        )
        || op.starts_with("QLinear")
        || op.starts_with("QOrdered")
        || (op == "QuantizeLinear" && non_const_input)
}

fn constant_names(g: &GraphProto) -> HashSet<String> {
    let mut s: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    for n in &g.node {
        if n.op_type == "Constant" {
            s.extend(n.output.iter().cloned());
        }
    }
    s
}

/// Refuses a model that quantises activations, naming every such node.
pub fn refuse_activation_quantization(proto: &ModelProto, path: &Path) -> Result<()> {
    let g = proto.graph.as_ref().expect("checked by caller");
    let constants = constant_names(g);
    let none = HashSet::new();
    // Tensors quantised at run time: outputs of the quantising ops.
    let quantised: HashSet<String> = g
        .node
        .iter()
        .filter(|n| quantises_activations(n, &constants, &none))
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    let found: Vec<String> = g
        .node
        .iter()
        .filter(|n| quantises_activations(n, &constants, &quantised))
        .map(|n| format!("'{}' ({})", n.name, n.op_type))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    let shown = found.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if found.len() > 5 { format!(" and {} more", found.len() - 5) } else { String::new() };
    let (noun, verb) = if found.len() == 1 { ("node", "quantises") } else { ("nodes", "quantise") };
    Err(Error::Unsupported(format!(
        "{}: {noun} {shown}{more} {verb} activations at run time (activation quantisation, as \
         onnxruntime.quantization's quantize_dynamic/quantize_static write); attrpatch differentiates float \
         computations and dequantises weights only. Use the float model this file was quantised from, or quantise \
         weights only (onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer, QOperator or QDQ), \
         which attrpatch dequantises at load",
        path.display()
    )))
}

/// Whether a MatMulNBits node stays packed: its weight is left in the model's
/// files and its gradient can be built from standard ops (see the module doc).
fn stays_packed(g: &GraphProto, n: &NodeProto, opset: i64) -> bool {
    let external = |k: usize| {
        n.input.get(k).filter(|s| !s.is_empty()).and_then(|name| g.initializer.iter().find(|t| &t.name == name))
    };
    let b_left = external(1).is_some_and(|t| t.data_location == Some(DataLocation::External as i32));
    let zp_ok = external(3).is_none_or(|z| z.data_type == UINT8)
        && n.input.get(3).is_none_or(|s| s.is_empty() || external(3).is_some());
    let no_g_idx = n.input.get(4).is_none_or(|s| s.is_empty());
    let bits = attr(n, "bits").unwrap_or(4);
    b_left && zp_ok && no_g_idx && opset >= 21 && matches!(bits, 4 | 8)
}

/// Checks a packed MatMulNBits' inputs against its attributes, as ONNX Runtime's
/// kernel reads them: B uint8 [N, blocks, blob] (or [N, blocks x blob]), scales
/// N x blocks floats (flat or [N, blocks]), zero points N x ceil(blocks x bits / 8) bytes.
fn check_packed(g: &GraphProto, n: &NodeProto) -> std::result::Result<(), String> {
    let k = attr(n, "K").ok_or("no K attribute")?;
    let nn = attr(n, "N").ok_or("no N attribute")?;
    let bits = attr(n, "bits").unwrap_or(4);
    let bs = attr(n, "block_size").ok_or("no block_size attribute")?;
    if k <= 0 || nn <= 0 || bs < 16 || bs & (bs - 1) != 0 {
        return Err(format!("K = {k}, N = {nn}, block_size = {bs}: need K, N > 0 and a power-of-two block_size >= 16"));
    }
    let blocks = (k + bs - 1) / bs;
    let numel = |t: &TensorProto| t.dims.iter().product::<i64>();
    let b = constant(g, n, 1)?.ok_or("no B input")?;
    let want_b = nn * blocks * (bs * bits / 8);
    if b.data_type != UINT8 || numel(b) != want_b {
        return Err(format!(
            "B '{}' must be uint8 holding N x blocks x blob = {nn} x {blocks} x {} = {want_b} bytes, found {} {:?}",
            b.name,
            bs * bits / 8,
            crate::consts::type_name(b.data_type),
            b.dims
        ));
    }
    let s = constant(g, n, 2)?.ok_or("no scales input")?;
    if !matches!(s.data_type, FLOAT | FLOAT16 | BFLOAT16) || numel(s) != nn * blocks {
        return Err(format!(
            "scales '{}' must be float32/float16/bfloat16 holding N x blocks = {} values, found {} {:?}",
            s.name,
            nn * blocks,
            crate::consts::type_name(s.data_type),
            s.dims
        ));
    }
    if let Some(z) = constant(g, n, 3)? {
        let want = nn * ((blocks * bits + 7) / 8);
        if numel(z) != want {
            return Err(format!(
                "zero_points '{}' must hold N x ceil(blocks x bits / 8) = {want} bytes, found {:?}",
                z.name, z.dims
            ));
        }
    }
    Ok(())
}

/// GatherBlockQuantized (com.microsoft): the builder's embedding when it shares
/// the lm_head's int4 codes, `GBQ(Reshape(B, [vocab, row bytes]), ids, scales)`.
/// It becomes `Gather(table, ids)`: the table is a stand-in `[vocab, hidden]`
/// recording the node when B stays in the model's files (the node comes back
/// for ONNX Runtime, `file_precision::restore`), else the float32 table
/// dequantised here (the same blocks as MatMulNBits' B, whose default zero
/// point 2^(bits-1) the builder's sharing relies on).
fn gathered_tables(g: &mut GraphProto, opset: i64, path: &Path) -> Result<()> {
    let at: Vec<usize> = (0..g.node.len())
        .filter(|&i| g.node[i].op_type == "GatherBlockQuantized" && g.node[i].domain == "com.microsoft")
        .collect();
    let dir = crate::model::model_dir(path).to_path_buf();
    let mut drop_nodes: HashSet<usize> = HashSet::new();
    for i in at {
        let n = g.node[i].clone();
        let here = |msg: String| {
            Error::Unsupported(format!("{}: GatherBlockQuantized node '{}': {msg}", path.display(), n.name))
        };
        let a = |name: &str, default: i64| attr(&n, name).unwrap_or(default);
        let (bits, bs, gather_axis, quantize_axis) =
            (a("bits", 4), a("block_size", 128), a("gather_axis", 0), a("quantize_axis", 1));
        if n.input.len() < 3 || n.output.is_empty() {
            return Err(here("needs data, indices and scales inputs and an output".into()));
        }
        if gather_axis != 0 || quantize_axis != 1 || !matches!(bits, 4 | 8) {
            return Err(here(format!(
                "gather_axis {gather_axis}, quantize_axis {quantize_axis}, bits {bits}: attrpatch reads the embedding \
                 layout (gather_axis 0, quantize_axis 1, 4 or 8 bits)"
            )));
        }
        // The codes: the data input itself, or the constant a Reshape gives it its 2-D shape from.
        let reshape = g.node.iter().position(|m| m.op_type == "Reshape" && m.output.first() == Some(&n.input[0]));
        let b_name = match reshape {
            Some(r) => g.node[r].input[0].clone(),
            None => n.input[0].clone(),
        };
        let b = find_constant(g, &b_name).ok_or_else(|| here(format!("data '{b_name}' is not a constant")))?.clone();
        let typed = matches!(b.data_type, INT4 | UINT4) && b.dims.len() == 2 && reshape.is_none() && bits == 4;
        if !(typed || b.data_type == UINT8) || b.dims.is_empty() {
            return Err(here(format!(
                "data '{b_name}' must be uint8 packed codes or an int4/uint4 [vocab, hidden] tensor, found {} {:?}",
                crate::consts::type_name(b.data_type),
                b.dims
            )));
        }
        let vocab = b.dims[0];
        let row_bytes: i64 = b.dims[1..].iter().product();
        let hidden = if typed { b.dims[1] } else { row_bytes * 8 / bits };
        let input = |k: usize| n.input.get(k).filter(|s| !s.is_empty()).cloned();
        let zp = input(3);
        let zp_type = if typed { b.data_type } else { UINT8 };
        let zp_uint8 = zp.as_ref().is_none_or(|z| find_constant(g, z).is_some_and(|t| t.data_type == zp_type));
        let kept = b.data_location == Some(DataLocation::External as i32) && zp_uint8 && opset >= 21;
        let record = file_precision::Packed {
            node: n.name.clone(),
            b: b_name.clone(),
            scales: n.input[2].clone(),
            zero_points: zp.clone(),
            k: hidden,
            n: vocab,
            bits,
            block_size: bs,
            accuracy_level: None,
            table: true,
            typed_codes: typed.then_some(b.data_type),
        };
        let mut taken = all_names(g);
        let mut tname = format!("{b_name}.table");
        while !taken.insert(tname.clone()) {
            tname.push('_');
        }
        let table = if kept {
            // Small zero points are read (the run-time dequantisation may repack them).
            for t in g.initializer.iter_mut().filter(|t| Some(&t.name) == zp.as_ref()) {
                crate::external::inline_tensor(t, &dir, path)?;
            }
            TensorProto { name: tname.clone(), ..file_precision::packed_stand_in(String::new(), record) }
        } else {
            for t in g
                .initializer
                .iter_mut()
                .filter(|t| t.name == b_name || Some(&t.name) == zp.as_ref() || t.name == n.input[2])
            {
                crate::external::inline_tensor(t, &dir, path)?;
            }
            if typed {
                // (q - zero point) * scale per block of `bs` along the row; the default zero
                // point is 0 for int4, 8 for uint4 (as for packed codes).
                let q = int_values(&b).map_err(here)?;
                let scale = float_values(
                    find_constant(g, &n.input[2]).ok_or_else(|| here("scales are not a constant".into()))?,
                )
                .map_err(here)?;
                let zpv = match &zp {
                    Some(z) => int_values(
                        find_constant(g, z).ok_or_else(|| here(format!("zero points '{z}' are not a constant")))?,
                    )
                    .map_err(here)?,
                    None => vec![if b.data_type == INT4 { 0 } else { 8 }; scale.len()],
                };
                let (h, bpr) = (hidden as usize, (hidden as usize).div_ceil(bs as usize));
                if scale.len() < vocab as usize * bpr || zpv.len() < vocab as usize * bpr {
                    return Err(here(format!(
                        "scales/zero points hold fewer than vocab x blocks = {} values",
                        vocab as usize * bpr
                    )));
                }
                let mut t = vec![0f32; vocab as usize * h];
                for (i, v) in t.iter_mut().enumerate() {
                    let blk = (i / h) * bpr + (i % h) / bs as usize;
                    *v = (q[i] - zpv[blk]) as f32 * scale[blk];
                }
                f32_tensor(&tname, &[vocab, hidden], &t)
            } else {
                // The same blocks as a MatMulNBits by W [hidden, vocab]; the table is W^T.
                let as_matmul = NodeProto {
                    op_type: "MatMulNBits".into(),
                    input: vec![String::new(), b_name.clone(), n.input[2].clone(), zp.clone().unwrap_or_default()],
                    attribute: vec![
                        crate::builder::attr_i("K", hidden),
                        crate::builder::attr_i("N", vocab),
                        crate::builder::attr_i("bits", bits),
                        crate::builder::attr_i("block_size", bs),
                    ],
                    ..Default::default()
                };
                let w = matmul_nbits_weight(g, &as_matmul).map_err(here)?;
                let wv: Vec<f32> =
                    w.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                let (k, nn) = (hidden as usize, vocab as usize);
                let mut t = vec![0f32; k * nn];
                for kk in 0..k {
                    for c in 0..nn {
                        t[c * k + kk] = wv[kk * nn + c];
                    }
                }
                f32_tensor(&tname, &[vocab, hidden], &t)
            }
        };
        g.initializer.push(table);
        g.node[i] = NodeProto {
            name: n.name.clone(),
            op_type: "Gather".into(),
            input: vec![tname, n.input[1].clone()],
            output: vec![n.output[0].clone()],
            attribute: vec![crate::builder::attr_i("axis", 0)],
            ..Default::default()
        };
        if let Some(r) = reshape {
            let out = &g.node[r].output[0];
            if !g.node.iter().any(|m| m.input.contains(out)) {
                drop_nodes.insert(r);
            }
        }
    }
    if !drop_nodes.is_empty() {
        let mut k = 0..;
        g.node.retain(|_| !drop_nodes.contains(&k.next().unwrap()));
    }
    Ok(())
}

/// What the stand-in of a packed MatMulNBits records (checked by `check_packed`).
fn packed_record(n: &NodeProto) -> file_precision::Packed {
    let input = |k: usize| n.input.get(k).filter(|s| !s.is_empty()).cloned();
    file_precision::Packed {
        node: n.name.clone(),
        b: n.input[1].clone(),
        scales: n.input[2].clone(),
        zero_points: input(3),
        k: attr(n, "K").unwrap_or(0),
        n: attr(n, "N").unwrap_or(0),
        bits: attr(n, "bits").unwrap_or(4),
        block_size: attr(n, "block_size").unwrap_or(0),
        accuracy_level: attr(n, "accuracy_level"),
        table: false,
        typed_codes: None,
    }
}

/// Dequantises every constant `DequantizeLinear` and every `MatMulNBits` that
/// does not stay packed (`stays_packed`); reads the external bytes this needs.
pub fn dequantize_weights(proto: &mut ModelProto, opset: i64, path: &Path) -> Result<()> {
    let g = proto.graph.as_mut().expect("checked by caller");
    gathered_tables(g, opset, path)?;
    if !g.node.iter().any(|n| n.op_type == "DequantizeLinear" || n.op_type == "MatMulNBits") {
        return Ok(());
    }
    // Which nodes stay packed, and the tensors the others (and the packed ones'
    // small zero points, which the gradient rule repacks) need read from the files.
    let mut packed: HashSet<usize> = HashSet::new();
    let mut read: HashSet<String> = HashSet::new();
    for (i, n) in g.node.iter().enumerate() {
        let here =
            |msg: String| Error::Unsupported(format!("{}: {} node '{}': {msg}", path.display(), n.op_type, n.name));
        if n.op_type == "MatMulNBits" && n.domain == "com.microsoft" {
            if stays_packed(g, n, opset) {
                check_packed(g, n).map_err(here)?;
                packed.insert(i);
                read.extend(n.input.get(3).cloned());
            } else {
                read.extend(n.input.iter().skip(1).cloned());
            }
        } else if n.op_type == "DequantizeLinear" {
            read.extend(n.input.iter().cloned());
        }
    }
    let dir = crate::model::model_dir(path);
    for t in g.initializer.iter_mut().filter(|t| read.contains(&t.name)) {
        crate::external::inline_tensor(t, dir, path)?;
    }
    let mut taken = all_names(g);
    // Decided on the graph as it is (Constant nodes included), applied afterwards.
    let mut replace: Vec<Option<Vec<NodeProto>>> = vec![None; g.node.len()];
    let mut new_inits = vec![];
    let mut consumed: HashSet<String> = HashSet::new();
    for (i, n) in g.node.iter().enumerate() {
        let is_quant = n.op_type == "DequantizeLinear" || (n.op_type == "MatMulNBits" && n.domain == "com.microsoft");
        if !is_quant {
            continue;
        }
        let here =
            |msg: String| Error::Unsupported(format!("{}: {} node '{}': {msg}", path.display(), n.op_type, n.name));
        let arity = if n.op_type == "MatMulNBits" { 3 } else { 2 };
        if n.input.len() < arity || n.output.is_empty() {
            return Err(here(format!("needs at least {arity} inputs and an output")));
        }
        if n.op_type == "DequantizeLinear" {
            // Only weights: a DequantizeLinear of gathered rows (a quantised embedding) stays.
            if find_constant(g, &n.input[0]).is_none() {
                continue;
            }
            new_inits.push(dequantize_linear(g, n).map_err(here)?);
            consumed.extend(n.input.iter().cloned());
            replace[i] = Some(vec![]);
            continue;
        }
        // Packed: a stand-in that records the node (its inputs stay); else the float32 weight.
        let w = if packed.contains(&i) {
            file_precision::packed_stand_in(String::new(), packed_record(n))
        } else {
            consumed.extend(n.input.iter().skip(1).cloned());
            matmul_nbits_weight(g, n).map_err(here)?
        };
        let mut wname = format!("{}.dequantized", n.input[1]);
        while !taken.insert(wname.clone()) {
            wname.push('_');
        }
        let bias = n.input.get(5).filter(|s| !s.is_empty()).cloned();
        let mm_out = match &bias {
            Some(_) => {
                let mut o = format!("{}.no_bias", n.output[0]);
                while !taken.insert(o.clone()) {
                    o.push('_');
                }
                o
            }
            None => n.output[0].clone(),
        };
        let mut with = vec![NodeProto {
            name: n.name.clone(),
            op_type: "MatMul".into(),
            input: vec![n.input[0].clone(), wname.clone()],
            output: vec![mm_out.clone()],
            ..Default::default()
        }];
        if let Some(bias) = bias {
            with.push(NodeProto {
                name: format!("{}/bias", n.name),
                op_type: "Add".into(),
                input: vec![mm_out, bias],
                output: vec![n.output[0].clone()],
                ..Default::default()
            });
        }
        new_inits.push(TensorProto { name: wname, ..w });
        replace[i] = Some(with);
    }
    let mut nodes = Vec::with_capacity(g.node.len());
    for (n, r) in std::mem::take(&mut g.node).into_iter().zip(replace) {
        match r {
            Some(mut with) => nodes.append(&mut with),
            None => nodes.push(n),
        }
    }
    g.node = nodes;
    g.initializer.extend(new_inits);
    // The quantised tensors nothing reads any more (tract cannot even parse 4-bit ones).
    let mut used: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    collect_uses(g, &mut used);
    g.initializer.retain(|t| used.contains(&t.name) || !consumed.contains(&t.name));
    Ok(())
}

fn collect_uses(g: &GraphProto, used: &mut HashSet<String>) {
    for n in &g.node {
        used.extend(n.input.iter().cloned());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                collect_uses(sub, used);
            }
        }
    }
}

/// Integer values of a quantised tensor (any storage, 4-bit packed two per byte, low nibble first).
fn int_values(t: &TensorProto) -> std::result::Result<Vec<i64>, String> {
    let raw = &t.raw_data;
    let numel: usize = t.dims.iter().product::<i64>().max(0) as usize;
    let v: Vec<i64> = match t.data_type {
        UINT8 if !raw.is_empty() => raw.iter().map(|&b| b as i64).collect(),
        INT8 if !raw.is_empty() => raw.iter().map(|&b| b as i8 as i64).collect(),
        UINT16 if !raw.is_empty() => raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        INT16 if !raw.is_empty() => raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        INT32 if !raw.is_empty() => {
            raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect()
        }
        UINT4 | INT4 if !raw.is_empty() => (0..numel)
            .map(|i| {
                let nib = (raw[i / 2] >> (4 * (i % 2))) & 0xf;
                if t.data_type == INT4 && nib >= 8 {
                    nib as i64 - 16
                } else {
                    nib as i64
                }
            })
            .collect(),
        UINT8 | INT8 | UINT16 | INT16 | INT32 => t
            .int32_data
            .iter()
            .map(|&v| match t.data_type {
                INT8 => v as i8 as i64,
                UINT8 => v as u8 as i64,
                INT16 => v as i16 as i64,
                UINT16 => v as u16 as i64,
                _ => v as i64,
            })
            .collect(),
        other => return Err(format!("quantised element type {other} of '{}' is not supported", t.name)),
    };
    if v.len() < numel {
        return Err(format!("tensor '{}' holds {} values for shape {:?}", t.name, v.len(), t.dims));
    }
    Ok(v)
}

/// Float values of a scale or float zero point (float32, float16, bfloat16).
fn float_values(t: &TensorProto) -> std::result::Result<Vec<f32>, String> {
    let mut t = t.clone();
    super::precision::upcast_tensor(&mut t);
    if t.data_type != FLOAT {
        return Err(format!("tensor '{}' must be float32, float16 or bfloat16", t.name));
    }
    Ok(match t.raw_data.is_empty() {
        false => t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        true => t.float_data.clone(),
    })
}

fn constant<'g>(g: &'g GraphProto, n: &NodeProto, k: usize) -> std::result::Result<Option<&'g TensorProto>, String> {
    match n.input.get(k).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(name) => find_constant(g, name).map(Some).ok_or_else(|| {
            format!("input {k} '{name}' is not a constant; attrpatch dequantises constant weights only")
        }),
    }
}

fn attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// `y = (x - zero_point) * scale`, per tensor, per axis or per block.
fn dequantize_linear(g: &GraphProto, n: &NodeProto) -> std::result::Result<TensorProto, String> {
    let x = constant(g, n, 0)?.ok_or("no input")?;
    let scale_t = constant(g, n, 1)?.ok_or("no scale")?;
    let q = int_values(x)?;
    let scale = float_values(scale_t)?;
    let zp = match constant(g, n, 2)? {
        Some(z) => int_values(z)?,
        None => vec![0; scale.len()],
    };
    if zp.len() != scale.len() {
        return Err(format!("zero point has {} values but scale has {}", zp.len(), scale.len()));
    }
    let dims = &x.dims;
    let rank = dims.len() as i64;
    let numel = q.len().min(dims.iter().product::<i64>().max(0) as usize);
    let axis = attr(n, "axis").unwrap_or(1);
    let axis = if axis < 0 { axis + rank } else { axis };
    let block = attr(n, "block_size").unwrap_or(0);
    let sdims: Vec<usize> = scale_t.dims.iter().map(|&d| d as usize).collect();
    let strides: Vec<usize> = (0..dims.len()).map(|k| dims[k + 1..].iter().product::<i64>() as usize).collect();
    let index = |f: usize| -> std::result::Result<usize, String> {
        if scale.len() == 1 {
            return Ok(0);
        }
        if !(0..rank).contains(&axis) {
            return Err(format!("axis {axis} is outside rank {rank}"));
        }
        let coord = |k: usize| (f / strides[k]) % dims[k] as usize;
        if block > 0 {
            // Blocked: the scale has x's rank, axis `axis` divided into blocks.
            let mut idx = 0;
            for (k, &sd) in sdims.iter().enumerate() {
                let c = if k as i64 == axis { coord(k) / block as usize } else { coord(k) };
                idx = idx * sd + c;
            }
            Ok(idx)
        } else {
            Ok(coord(axis as usize))
        }
    };
    let mut out = Vec::with_capacity(numel);
    for (f, &v) in q.iter().enumerate().take(numel) {
        let i = index(f)?;
        let (s, z) = (scale.get(i).ok_or("scale too short for the input")?, zp[i]);
        out.push((v - z) as f32 * s);
    }
    let mut t = f32_tensor(&n.output[0], dims, &out);
    if scale_t.data_type == FLOAT16 || scale_t.data_type == BFLOAT16 {
        // The kernel's output type is the scale's; the precision pass makes it float32 anyway.
        t.data_type = FLOAT;
    }
    Ok(t)
}

/// The `[K, N]` float32 weight a MatMulNBits node multiplies by.
fn matmul_nbits_weight(g: &GraphProto, n: &NodeProto) -> std::result::Result<TensorProto, String> {
    let k = attr(n, "K").ok_or("no K attribute")? as usize;
    let nn = attr(n, "N").ok_or("no N attribute")? as usize;
    let bits = attr(n, "bits").unwrap_or(4) as usize;
    let bs = attr(n, "block_size").ok_or("no block_size attribute")? as usize;
    if !matches!(bits, 2 | 4 | 8) {
        return Err(format!("bits = {bits}; attrpatch dequantises 2, 4 and 8 bits"));
    }
    if bs == 0 {
        return Err("block_size 0".into());
    }
    let blocks = k.div_ceil(bs);
    let blob = bs * bits / 8;
    let b = constant(g, n, 1)?.ok_or("no B input")?;
    if b.data_type != UINT8 || b.raw_data.len() < nn * blocks * blob {
        return Err(format!(
            "B '{}' must be uint8 [N={nn}, {blocks} blocks, {blob} bytes], found type {} with {} bytes",
            b.name,
            b.data_type,
            b.raw_data.len()
        ));
    }
    let scale = float_values(constant(g, n, 2)?.ok_or("no scales input")?)?;
    if scale.len() < nn * blocks {
        return Err(format!("scales hold {} values, need N x blocks = {}", scale.len(), nn * blocks));
    }
    let mask = (1u32 << bits) - 1;
    let default_zp = (1u32 << (bits - 1)) as f32;
    let zp_t = constant(g, n, 3)?;
    let zp_row = (blocks * bits).div_ceil(8);
    let zp_packed = zp_t.filter(|z| z.data_type == UINT8).map(|z| z.raw_data.clone());
    let zp_float = match zp_t.filter(|z| z.data_type != UINT8) {
        Some(z) => Some(float_values(z)?),
        None => None,
    };
    if zp_packed.as_ref().is_some_and(|z| z.len() < nn * zp_row)
        || zp_float.as_ref().is_some_and(|z| z.len() < nn * blocks)
    {
        return Err("zero_points are shorter than N x blocks".into());
    }
    // g_idx (act-order: the block of each k) is refused: ONNX Runtime's
    // kernels do not agree on it (its packed path ignores it; with 4-bit
    // packed zero points even the plain order k / block_size gives other
    // numbers), so no dequantisation could be checked against it.
    if let Some(t) = constant(g, n, 4)? {
        return Err(format!(
            "has a g_idx input '{}' (act-order quantisation), which attrpatch does not dequantise; quantise \
             without act-order (MatMulNBitsQuantizer's default)",
            t.name
        ));
    }
    let raw = &b.raw_data;
    let mut w = vec![0f32; k * nn];
    for col in 0..nn {
        for kk in 0..k {
            let (blk, within) = (kk / bs, kk % bs);
            let group = blk;
            let bit = within * bits;
            let byte = raw[(col * blocks + blk) * blob + bit / 8];
            let qv = ((byte as u32) >> (bit % 8)) & mask;
            let s = scale[col * blocks + group];
            let z = if let Some(zp) = &zp_packed {
                let bit = group * bits;
                (((zp[col * zp_row + bit / 8] as u32) >> (bit % 8)) & mask) as f32
            } else if let Some(zp) = &zp_float {
                zp[col * blocks + group]
            } else {
                default_zp
            };
            w[kk * nn + col] = (qv as f32 - z) * s;
        }
    }
    Ok(f32_tensor("", &[k as i64, nn as i64], &w))
}
