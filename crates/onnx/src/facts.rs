//! Element type and (symbolic) shape of every named tensor, from tract's
//! analysis of the model. Gradient rules read ranks and dims from here to
//! decide broadcast reductions and permutations statically.

use super::pb::ModelProto;
use crate::error::{Error, Result};
use std::collections::HashMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// One dimension of a tensor's shape (declared in `graph`, which writes and reads them).
pub use super::graph::Dim;

#[derive(Clone, Debug, Default)]
/// What is known of one tensor; either part may be unknown.
pub struct TensorFact {
    /// ONNX element type code, when known.
    pub dtype: Option<i32>,
    /// Dims, when the rank is known.
    pub shape: Option<Vec<Dim>>,
}

impl TensorFact {
    /// Number of dims, when the rank is known.
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(|s| s.len())
    }
    /// The fact as text for messages, e.g. `float32[batch, 768]`, with `?` for what is unknown.
    pub fn describe(&self) -> String {
        let ty = self.dtype.map(super::consts::type_name).unwrap_or("?");
        match &self.shape {
            Some(s) => format!("{ty}[{}]", s.iter().map(dim_str).collect::<Vec<_>>().join(", ")),
            None => format!("{ty}[?]"),
        }
    }
}

/// A dim as text: its value, its symbolic expression, or `?`.
pub fn dim_str(d: &Dim) -> String {
    match d {
        Dim::Known(v) => v.to_string(),
        Dim::Sym(s) => s.clone(),
        Dim::Unknown => "?".into(),
    }
}

#[derive(Debug, Default)]
/// Tensor name -> what tract's analysis inferred of that tensor.
pub struct Facts(pub HashMap<String, TensorFact>);

impl Facts {
    /// The fact of a tensor; None when tract has none for the name.
    pub fn get(&self, name: &str) -> Option<&TensorFact> {
        self.0.get(name)
    }
    /// The tensor's rank, when known.
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.get(name).and_then(|f| f.rank())
    }
    /// The tensor's ONNX element type code, when known.
    pub fn dtype(&self, name: &str) -> Option<i32> {
        self.get(name).and_then(|f| f.dtype)
    }
    /// The tensor's dims, when its rank is known.
    pub fn shape(&self, name: &str) -> Option<&[Dim]> {
        self.get(name).and_then(|f| f.shape.as_deref())
    }
}

/// Runs tract's type and shape analysis over the model, with symbolic dims.
pub fn analyse(proto: &ModelProto, file: &std::path::Path) -> Result<Facts> {
    analyse_with_probe(proto, file, &[])
}

/// As `analyse`, with the named inputs fixed to concrete probe shapes.
/// tract does not carry symbolic dims through the Shape/Gather/Concat chains
/// of legacy exports; concrete dims it does. Probe sizes that are not 1 keep
/// every broadcast (a structural 1) distinguishable from a real extent.
pub fn analyse_with_probe(proto: &ModelProto, file: &std::path::Path, probe: &[(&str, Vec<usize>)]) -> Result<Facts> {
    super::guard::guard(&format!("analysing {}", file.display()), || analyse_unguarded(proto, file, probe))
}

fn analyse_unguarded(proto: &ModelProto, file: &std::path::Path, probe: &[(&str, Vec<usize>)]) -> Result<Facts> {
    let fail = |what: &str, e: TractError| {
        Error::Model(format!("{}: tract could not {what} the model: {e:?}", file.display()))
    };
    let mut skel = skeleton(proto);
    if !probe.is_empty() {
        // value_info's symbolic dims ('sequence') contradict the probe's concrete ones: tract
        // then carries `broadcast(sequence, 7)` and loses shapes downstream (GPT-Neo's dynamo export).
        skel.graph.as_mut().expect("skeleton has a graph").value_info.clear();
    }
    let parsed = tract_onnx::onnx().parse(&skel, None).map_err(|e| fail("parse", e))?;
    let mut model = parsed.model;
    let outlets = model.input_outlets().map_err(|e| fail("read the inputs of", e))?.to_vec();
    for (i, outlet) in outlets.iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        if let Some((_, shape)) = probe.iter().find(|(n, _)| *n == name) {
            let dt = model.outlet_fact(*outlet).ok().and_then(|f| f.datum_type.concretize()).unwrap_or(DatumType::F32);
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, shape.as_slice()))
                .map_err(|e| fail("set a probe shape on", e))?;
        }
    }
    // Obstinate: keep what could be inferred even if one node fails.
    if let Err(e) = model.analyse(true) {
        if std::env::var_os("ATTRPATCH_DEBUG").is_some() {
            eprintln!("tract analysis: {e:?}");
        }
    }
    let mut map = HashMap::with_capacity(parsed.outlets_by_name.len());
    for (name, outlet) in parsed.outlets_by_name {
        let Ok(fact) = model.outlet_fact(outlet) else { continue };
        map.insert(name, convert(fact));
    }
    Ok(Facts(map))
}

/// Float initializers bigger than this become typed graph inputs for the
/// analysis: their values never decide a shape, and copying the weights into
/// tract would double the memory and time of a rewrite.
const SKELETON_MIN_ELEMENTS: i64 = 64;

/// The model without its weights' bytes: large float initializers are
/// replaced by graph inputs of the same name, type and shape. Other weights
/// left in the model's files (the codes a packed MatMulNBits' stand-in refers
/// to, `file_precision`) are read by no node until restored: left out.
fn skeleton(proto: &ModelProto) -> ModelProto {
    use super::consts::is_float;
    use super::pb::{tensor_proto::DataLocation, GraphProto};
    let Some(g) = proto.graph.as_ref() else { return proto.clone() };
    let mut small = vec![];
    let mut typed_inputs = vec![];
    let read: std::collections::HashSet<&str> =
        g.node.iter().flat_map(|n| n.input.iter().map(|s| s.as_str())).collect();
    for t in &g.initializer {
        let n: i64 = t.dims.iter().product();
        if is_float(t.data_type) && n >= SKELETON_MIN_ELEMENTS && !g.input.iter().any(|i| i.name == t.name) {
            let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Known(d)).collect();
            typed_inputs.push(super::graph::value_info(&t.name, t.data_type, &dims));
        } else if !read.contains(t.name.as_str()) && t.data_location == Some(DataLocation::External as i32) {
            continue;
        } else {
            small.push(t.clone());
        }
    }
    let graph = GraphProto {
        node: g.node.clone(),
        name: g.name.clone(),
        initializer: small,
        input: g.input.iter().cloned().chain(typed_inputs).collect(),
        output: g.output.clone(),
        value_info: g.value_info.clone(),
        ..Default::default()
    };
    ModelProto {
        ir_version: proto.ir_version,
        opset_import: proto.opset_import.clone(),
        graph: Some(graph),
        functions: proto.functions.clone(),
        ..Default::default()
    }
}

fn convert(fact: &InferenceFact) -> TensorFact {
    let dtype = fact.datum_type.concretize().and_then(onnx_type_code);
    let shape = (!fact.shape.is_open()).then(|| {
        fact.shape
            .dims()
            .map(|d| match d.concretize() {
                Some(t) => match t.to_i64() {
                    Ok(v) => Dim::Known(v),
                    Err(_) => Dim::Sym(t.to_string()),
                },
                None => Dim::Unknown,
            })
            .collect()
    });
    TensorFact { dtype, shape }
}

fn onnx_type_code(dt: DatumType) -> Option<i32> {
    use super::consts::*;
    Some(match dt {
        DatumType::F32 => FLOAT,
        DatumType::F64 => DOUBLE,
        DatumType::F16 => FLOAT16,
        DatumType::I64 => INT64,
        DatumType::I32 => INT32,
        DatumType::Bool => BOOL,
        _ => return None,
    })
}
