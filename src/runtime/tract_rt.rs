//! tract as the runtime: pure Rust, CPU. The graph is optimised for the
//! concrete input shapes of each call (tract cannot declutter symbolic dims
//! of these exports), and the optimised plan is kept while shapes repeat.

use super::{Runtime, Value};
use crate::error::{Error, Result};
use ndarray::ArrayD;
use std::collections::HashMap;
use tract_onnx::prelude::*;

type Plan = std::sync::Arc<TypedSimplePlan>;

pub struct TractRuntime {
    model: InferenceModel,
    /// Graph output names, in tract's output order.
    output_names: Vec<String>,
    cached: Option<(Vec<Vec<usize>>, Plan)>,
}

fn t_err(what: &str, e: TractError) -> Error {
    Error::Runtime(format!("tract: {what}: {e:?}"))
}

impl TractRuntime {
    pub fn new(model_bytes: &[u8]) -> Result<Self> {
        crate::onnx::guard::guard("loading the augmented model", || Self::load(model_bytes))
    }

    fn load(model_bytes: &[u8]) -> Result<Self> {
        use prost::Message;
        let proto = tract_onnx::pb::ModelProto::decode(model_bytes)
            .map_err(|e| Error::Model(format!("tract: decoding the augmented model: {e}")))?;
        let model = tract_onnx::onnx().model_for_proto_model(&proto).map_err(|e| t_err("loading the model", e))?;
        let output_names = proto.graph.map(|g| g.output.into_iter().map(|o| o.name).collect()).unwrap_or_default();
        Ok(TractRuntime { model, output_names, cached: None })
    }

    fn plan(&mut self, inputs: &[(String, Value)]) -> Result<&Plan> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|(_, v)| shape_of(v)).collect();
        if self.cached.as_ref().is_none_or(|(s, _)| *s != shapes) {
            let mut m = self.model.clone();
            let outlets = m.input_outlets().map_err(|e| t_err("inputs", e))?.to_vec();
            for (i, outlet) in outlets.iter().enumerate() {
                let name = &m.node(outlet.node).name;
                let (_, v) = inputs.iter().find(|(n, _)| n == name).ok_or_else(|| {
                    Error::Runtime(format!("tract: no value given for model input '{name}'"))
                })?;
                let fact = match v {
                    Value::F32(a) => InferenceFact::dt_shape(f32::datum_type(), a.shape()),
                    Value::I64(a) => InferenceFact::dt_shape(i64::datum_type(), a.shape()),
                };
                m.set_input_fact(i, fact).map_err(|e| t_err("input shape", e))?;
            }
            let plan = m
                .into_optimized()
                .and_then(|m| m.into_runnable())
                .map_err(|e| t_err("optimising the model", e))?;
            self.cached = Some((shapes, plan));
        }
        Ok(&self.cached.as_ref().unwrap().1)
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
        "tract (CPU)".into()
    }

    fn run(&mut self, inputs: Vec<(String, Value)>) -> Result<HashMap<String, ArrayD<f32>>> {
        crate::onnx::guard::guard("running the augmented model", || self.run_unguarded(inputs))
    }
}

impl TractRuntime {
    fn run_unguarded(&mut self, inputs: Vec<(String, Value)>) -> Result<HashMap<String, ArrayD<f32>>> {
        let plan = self.plan(&inputs)?;
        let model = plan.model();
        let mut ordered = TVec::new();
        for outlet in model.input_outlets().map_err(|e| t_err("inputs", e))? {
            let name = &model.node(outlet.node).name;
            let (_, v) = inputs.iter().find(|(n, _)| n == name).unwrap();
            let t: Tensor = match v {
                Value::F32(a) => a.clone().into(),
                Value::I64(a) => a.clone().into(),
            };
            ordered.push(t.into_tvalue());
        }
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
