//! tract as the runtime: pure Rust, on the CPU or (with the `tract-cuda`
//! feature) through tract's CUDA runtime. The graph is optimised for the
//! concrete input shapes of each call (tract cannot declutter symbolic dims
//! of these exports), and the prepared plan is kept while shapes repeat.

use super::{Runtime, Value};
use attrpatch_onnx::error::{Error, Result};
use ndarray::ArrayD;
use std::collections::HashMap;
use tract_onnx::prelude::*;

type Plan = Box<dyn tract_onnx::tract_core::runtime::Runnable>;

/// A tract session: the parsed model, and the plan optimised for the last call's input shapes.
pub struct TractRuntime {
    model: InferenceModel,
    /// Graph input and output names, in tract's order.
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// tract's CUDA runtime, found (and its libraries checked) once at creation.
    cuda: Option<&'static dyn tract_onnx::tract_core::runtime::Runtime>,
    cached: Option<(Vec<Vec<usize>>, Plan)>,
}

fn t_err(what: &str, e: TractError) -> Error {
    Error::Runtime(format!("tract: {what}: {e:?}"))
}

impl TractRuntime {
    /// `cuda`: run through tract's CUDA runtime (only with the `tract-cuda` feature).
    pub fn new(model_bytes: &[u8], cuda: bool) -> Result<Self> {
        let cuda = if cuda { Some(cuda_runtime()?) } else { None };
        let mut rt = attrpatch_onnx::guard::guard("loading the augmented model", || Self::load(model_bytes))?;
        rt.cuda = cuda;
        Ok(rt)
    }

    fn load(model_bytes: &[u8]) -> Result<Self> {
        use prost::Message;
        let mut proto = tract_onnx::pb::ModelProto::decode(model_bytes)
            .map_err(|e| Error::Model(format!("tract: decoding the augmented model: {e}")))?;
        clamp_slice_bounds(&mut proto);
        integer_cumsum_in_f64(&mut proto);
        nonnegative_nd_indices(&mut proto);
        let onnx = tract_onnx::onnx();
        refuse_unimplemented(&onnx, &proto)?;
        let model = onnx.model_for_proto_model(&proto).map_err(|e| t_err("loading the model", e))?;
        let output_names = proto.graph.map(|g| g.output.into_iter().map(|o| o.name).collect()).unwrap_or_default();
        let input_names = model
            .input_outlets()
            .map_err(|e| t_err("inputs", e))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        Ok(TractRuntime { model, input_names, output_names, cuda: None, cached: None })
    }

    fn plan(&mut self, inputs: &[(String, Value)]) -> Result<&Plan> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, v)| shape_of(v)).collect();
        if self.cached.as_ref().is_none_or(|(s, _)| *s != shapes) {
            let mut m = self.model.clone();
            let outlets = m.input_outlets().map_err(|e| t_err("inputs", e))?.to_vec();
            for (i, outlet) in outlets.iter().enumerate() {
                let name = &m.node(outlet.node).name;
                let (_, v) = inputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| Error::Runtime(format!("tract: no value given for model input '{name}'")))?;
                let fact = match v {
                    Value::F32(a) => InferenceFact::dt_shape(f32::datum_type(), a.shape()),
                    Value::I64(a) => InferenceFact::dt_shape(i64::datum_type(), a.shape()),
                };
                m.set_input_fact(i, fact).map_err(|e| t_err("input shape", e))?;
            }
            let typed = m.into_typed().and_then(|m| m.into_decluttered()).map_err(|e| t_err("typing the model", e))?;
            let plan: Plan = if let Some(cuda) = self.cuda {
                cuda.prepare(typed).map_err(|e| t_err("preparing the model for CUDA", e))?
            } else {
                Box::new(
                    typed
                        .into_optimized()
                        .and_then(|m| m.into_runnable())
                        .map_err(|e| t_err("optimising the model", e))?,
                )
            };
            self.cached = Some((shapes, plan));
        }
        Ok(&self.cached.as_ref().unwrap().1)
    }
}

/// tract loads an op it does not implement as a placeholder that fails only
/// when the first batch is typed; naming every such op up front says what
/// cannot run before any work is done.
fn refuse_unimplemented(onnx: &tract_onnx::Onnx, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    let mut missing: std::collections::BTreeMap<&str, (usize, &str)> = Default::default();
    for n in proto.graph.iter().flat_map(|g| &g.node) {
        if !onnx.op_register.0.contains_key(&n.op_type) {
            missing.entry(n.op_type.as_str()).or_insert((0, n.name.as_str())).0 += 1;
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> =
        missing.iter().map(|(op, (count, node))| format!("{op} ({count} node(s), first '{node}')")).collect();
    Err(Error::Unsupported(format!(
        "tract cannot run these ops of the model: {}; use the ort runtime (ONNX Runtime)",
        list.join(", ")
    )))
}

/// tract 0.23.9 evaluates CumSum over int64 values that came from a graph
/// input (BLOOM's alibi positions, a cumsum of the attention mask) as symbolic
/// dims and fails ("TDim is not a number"). Summing in float64 is exact below
/// 2^53, so an int64 CumSum becomes Cast(f64) -> CumSum -> Cast(int64).
fn integer_cumsum_in_f64(proto: &mut tract_onnx::pb::ModelProto) {
    use tract_onnx::pb::{attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, NodeProto};
    let Some(g) = proto.graph.as_mut() else { return };
    let int64_casts: std::collections::HashSet<String> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Cast" && n.attribute.iter().any(|a| a.name == "to" && a.i == DataType::Int64 as i64))
        .map(|n| n.output[0].clone())
        .collect();
    let cast = |name: String, input: &str, output: &str, to: DataType| NodeProto {
        name,
        op_type: "Cast".into(),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: to as i64,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut nodes = Vec::with_capacity(g.node.len());
    for mut n in std::mem::take(&mut g.node) {
        if n.op_type == "CumSum" && int64_casts.contains(&n.input[0]) {
            let (x, y) = (n.input[0].clone(), n.output[0].clone());
            let (xf, yf) = (format!("{}/f64_in", n.name), format!("{}/f64_out", n.name));
            nodes.push(cast(format!("{}/to_f64", n.name), &x, &xf, DataType::Double));
            n.input[0] = xf;
            n.output[0] = yf.clone();
            let back = cast(format!("{}/to_i64", n.name), &yf, &y, DataType::Int64);
            nodes.push(n);
            nodes.push(back);
        } else {
            nodes.push(n);
        }
    }
    g.node = nodes;
}

/// tract 0.23.9 reads a negative GatherND/ScatterND index as a huge unsigned
/// one (Falcon's fused QKV is split by GatherND with `[[-2]]`, `[[-1]]`; the
/// Gather rules' ScatterND reuses them). For constant indices holding a
/// negative value, each such node gets `idx + dims * (idx < 0)` computed from
/// its own data's shape (the first `k` dims for index tuples of length `k`).
fn nonnegative_nd_indices(proto: &mut tract_onnx::pb::ModelProto) {
    use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};
    let Some(g) = proto.graph.as_mut() else { return };
    let mut negative: HashMap<String, usize> = HashMap::new(); // index tensor -> tuple length k
    let has_negative = |t: &TensorProto| {
        t.int64_data.iter().any(|&v| v < 0)
            || t.raw_data.chunks_exact(8).any(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) < 0)
    };
    let int64 = tract_onnx::pb::tensor_proto::DataType::Int64 as i32;
    for t in g.initializer.iter().filter(|t| t.data_type == int64 && !t.dims.is_empty() && has_negative(t)) {
        negative.insert(t.name.clone(), *t.dims.last().expect("non-empty") as usize);
    }
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        if let Some(t) = n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
            if t.data_type == int64 && !t.dims.is_empty() && has_negative(t) {
                negative.insert(n.output[0].clone(), *t.dims.last().expect("non-empty") as usize);
            }
        }
    }
    if negative.is_empty() {
        return;
    }
    let node = |name: String, op: &str, inputs: Vec<String>, attrs: Vec<AttributeProto>| NodeProto {
        output: vec![format!("{name}/out")],
        name,
        op_type: op.into(),
        input: inputs,
        attribute: attrs,
        ..Default::default()
    };
    let mut extra_inits = vec![];
    let mut nodes = Vec::with_capacity(g.node.len());
    for mut n in std::mem::take(&mut g.node) {
        let batch_dims = n.attribute.iter().find(|a| a.name == "batch_dims").map(|a| a.i).unwrap_or(0);
        let k = n.input.get(1).and_then(|i| negative.get(i)).copied();
        if let (true, 0, Some(k)) = (matches!(n.op_type.as_str(), "GatherND" | "ScatterND"), batch_dims, k) {
            let p = format!("{}/nonneg", n.name);
            let (zero, kk) = (format!("{p}/zero"), format!("{p}/k"));
            extra_inits.push(i64_init(&zero, &[0]));
            extra_inits.push(i64_init(&kk, &[k as i64]));
            let shape = node(format!("{p}/shape"), "Shape", vec![n.input[0].clone()], vec![]);
            let dims = node(format!("{p}/dims"), "Slice", vec![shape.output[0].clone(), zero.clone(), kk], vec![]);
            let less = node(format!("{p}/less"), "Less", vec![n.input[1].clone(), zero], vec![]);
            let add = node(format!("{p}/add"), "Add", vec![n.input[1].clone(), dims.output[0].clone()], vec![]);
            let fixed = node(
                format!("{p}/where"),
                "Where",
                vec![less.output[0].clone(), add.output[0].clone(), n.input[1].clone()],
                vec![],
            );
            n.input[1] = fixed.output[0].clone();
            nodes.extend([shape, dims, less, add, fixed]);
        }
        nodes.push(n);
    }
    g.node = nodes;
    g.initializer.extend(extra_inits);
}

fn i64_init(name: &str, values: &[i64]) -> tract_onnx::pb::TensorProto {
    tract_onnx::pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: tract_onnx::pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// Exporters write "to the end" as a Slice bound of `i64::MAX`. When the Slice
/// gradient's bound arithmetic (Less, Max, Min on int64 shape values) reads it,
/// tract's symbolic-dim evaluation goes wrong: `x < 0` computes `x + 1` (an
/// overflow panic in debug builds) and Max/Min keep only the low 32 bits
/// (`Min(2^40, 16)` gives 0, so the gradient's Pad comes out too wide).
/// Constant Slice starts/ends beyond +-2^30 mean the same as +-2^30 for any
/// axis shorter than that, so they are clamped there before tract sees them.
fn clamp_slice_bounds(proto: &mut tract_onnx::pb::ModelProto) {
    const FAR: i64 = 1 << 30;
    let Some(g) = proto.graph.as_mut() else { return };
    let bounds: std::collections::HashSet<String> =
        g.node.iter().filter(|n| n.op_type == "Slice").flat_map(|n| n.input.iter().skip(1).take(2).cloned()).collect();
    let clamp = |t: &mut tract_onnx::pb::TensorProto| {
        if t.data_type != tract_onnx::pb::tensor_proto::DataType::Int64 as i32 {
            return;
        }
        t.int64_data.iter_mut().for_each(|v| *v = (*v).clamp(-FAR, FAR));
        for c in t.raw_data.chunks_exact_mut(8) {
            let v = i64::from_le_bytes(c.try_into().expect("8 bytes")).clamp(-FAR, FAR);
            c.copy_from_slice(&v.to_le_bytes());
        }
    };
    g.initializer.iter_mut().filter(|t| bounds.contains(&t.name)).for_each(clamp);
    for n in g.node.iter_mut().filter(|n| n.op_type == "Constant" && n.output.iter().any(|o| bounds.contains(o))) {
        n.attribute.iter_mut().filter_map(|a| a.t.as_mut()).for_each(clamp);
    }
}

fn shape_of(v: &Value) -> Vec<usize> {
    match v {
        Value::F32(a) => a.shape().to_vec(),
        Value::I64(a) => a.shape().to_vec(),
    }
}

impl Runtime for TractRuntime {
    fn describe(&self) -> String {
        if self.cuda.is_some() {
            "tract (CUDA)".into()
        } else {
            "tract (CPU)".into()
        }
    }

    fn run(&mut self, inputs: Vec<(String, Value)>) -> Result<HashMap<String, ArrayD<f32>>> {
        attrpatch_onnx::guard::guard("running the augmented model", || self.run_unguarded(inputs))
    }
}

impl TractRuntime {
    fn run_unguarded(&mut self, inputs: Vec<(String, Value)>) -> Result<HashMap<String, ArrayD<f32>>> {
        self.plan(&inputs)?;
        let mut ordered = TVec::new();
        for name in &self.input_names {
            let (_, v) = inputs.iter().find(|(n, _)| n == name).unwrap();
            let t: Tensor = match v {
                Value::F32(a) => a.clone().into(),
                Value::I64(a) => a.clone().into(),
            };
            ordered.push(t.into_tvalue());
        }
        let plan = &self.cached.as_ref().expect("planned above").1;
        let outs = plan.run(ordered).map_err(|e| t_err("run", e))?;
        let mut res = HashMap::new();
        for (i, name) in self.output_names.iter().enumerate() {
            let name = name.clone();
            let arr = outs[i]
                .to_plain_array_view::<f32>()
                .map_err(|e| t_err(&format!("output '{name}'"), e))?
                .to_owned()
                .into_dimensionality()
                .map_err(|e| Error::Runtime(format!("tract: output '{name}': {e}")))?;
            res.insert(name, arr);
        }
        Ok(res)
    }
}

/// tract's CUDA runtime, registered by the tract-cuda crate when it is linked.
/// Finding it by name also checks that the CUDA libraries load; that probe
/// dlopens libcuda and friends, so it is guarded like every other tract call.
#[cfg(feature = "tract-cuda")]
fn cuda_runtime() -> Result<&'static dyn tract_onnx::tract_core::runtime::Runtime> {
    use tract_cuda as _; // links the crate, whose registration makes "cuda" known
    attrpatch_onnx::guard::guard("checking CUDA for tract", || {
        tract_onnx::tract_core::runtime::runtime_for_name("cuda")
            .map_err(|e| Error::Runtime(format!("tract CUDA runtime unavailable: {e:#}")))?
            .ok_or_else(|| Error::Runtime("tract: the CUDA runtime is not registered in this build".into()))
    })
}

#[cfg(not(feature = "tract-cuda"))]
fn cuda_runtime() -> Result<&'static dyn tract_onnx::tract_core::runtime::Runtime> {
    Err(Error::Input(
        "the tract runtime with the device cuda needs attrpatch built with `--features tract-cuda`; \
         or use the ort runtime (ONNX Runtime's CUDA provider)"
            .into(),
    ))
}
