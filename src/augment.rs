//! The augmented model: the original graph, metric nodes, a backward graph
//! and new outputs for every hook activation and its gradient.
//!
//! One batch holds the clean prompts (rows 0..B) and the corrupted prompts
//! (rows B..2B). The metric is the tutorial's normalised logit difference of
//! the corrupted half, (ld_corr - CORR) / (CLEAN - CORR), where CLEAN and CORR
//! are the same run's baselines held constant (stop-gradient). Its value is
//! 0 by construction; its gradient is d ld_corr / (CLEAN - CORR).
//!
//! Selections are written as matrix products with one-hot inputs so the metric
//! is differentiated by the same MatMul rule as the model itself:
//!   sel  = last_position_onehot[N,1,S] @ logits[N,S,V]     -> [N,1,V]
//!   ld   = sel @ answer_onehot[N,V,1] (+1 correct, -1 incorrect) -> [N,1,1]
//!   CLEAN = ld^T @ clean_weights[N,1], ld_corr = ld^T @ corrupted_weights[N,1]

use crate::autodiff::Backward;
use crate::error::{Error, Result};
use crate::hooks::{find_attention_out_hooks, find_logits, Hook};
use crate::onnx::builder::GraphBuilder;
use crate::onnx::facts::{analyse, analyse_with_probe, Dim, Facts};
use crate::onnx::normalize::all_names;
use crate::onnx::pb::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::onnx::OnnxModel;
use std::collections::HashSet;

pub mod names {
    pub const POSITION_ONEHOT: &str = "attrpatch.last_position_onehot";
    pub const ANSWER_ONEHOT: &str = "attrpatch.answer_onehot";
    pub const CLEAN_WEIGHTS: &str = "attrpatch.clean_weights";
    pub const CORRUPTED_WEIGHTS: &str = "attrpatch.corrupted_weights";
    pub const CLEAN_LD: &str = "attrpatch.clean_logit_diff";
    pub const CORRUPTED_LD: &str = "attrpatch.corrupted_logit_diff";
    pub const METRIC: &str = "attrpatch.metric";
    pub fn act(layer: usize) -> String {
        format!("attrpatch.act.{layer}")
    }
    pub fn grad(layer: usize) -> String {
        format!("attrpatch.grad.{layer}")
    }
}

/// Probe sizes for shape analysis: rows and positions, neither 1.
const PROBE_ROWS: usize = 6;
const PROBE_SEQ: usize = 7;

pub struct Augmented {
    pub proto: ModelProto,
    pub hooks: Vec<Hook>,
    /// Facts of the augmented graph's forward part (original + metric), at probe sizes.
    pub facts: Facts,
    pub logits: String,
    /// The model's own token-input names.
    pub input_ids: String,
    pub attention_mask: Option<String>,
    pub vocab: usize,
}

pub fn augment(model: &OnnxModel) -> Result<Augmented> {
    let hooks = find_attention_out_hooks(model)?;
    let facts0 = analyse(&model.proto, &model.path)?;
    let logits = find_logits(model, &facts0)?;
    let g0 = model.graph();
    let input_ids = g0
        .input
        .iter()
        .find(|i| i.name == "input_ids")
        .or_else(|| g0.input.first())
        .map(|i| i.name.clone())
        .ok_or_else(|| Error::Model(format!("{}: the graph has no inputs", model.path.display())))?;
    let attention_mask = g0.input.iter().find(|i| i.name == "attention_mask").map(|i| i.name.clone());
    for i in &g0.input {
        if i.name != input_ids && Some(&i.name) != attention_mask.as_ref() && !g0.initializer.iter().any(|t| t.name == i.name) {
            return Err(Error::Unsupported(format!(
                "{}: input '{}' is not supported (attrpatch feeds input_ids and attention_mask only); \
                 export the model without past key values or position ids",
                model.path.display(),
                i.name
            )));
        }
    }
    let dtype = facts0.dtype(&logits).unwrap_or(crate::onnx::consts::FLOAT);
    if dtype != crate::onnx::consts::FLOAT {
        return Err(Error::Unsupported(format!(
            "{}: logits '{logits}' are {}; attrpatch supports float32 models",
            model.path.display(),
            crate::onnx::consts::type_name(dtype)
        )));
    }
    let declared = g0.output.iter().find(|o| o.name == logits).map(declared_dims).unwrap_or_default();
    let vocab_dim = match declared.last() {
        Some(Dim::Known(v)) => Some(Dim::Known(*v)),
        _ => facts0.shape(&logits).and_then(|s| s.last().cloned()),
    };
    let vocab = match vocab_dim {
        Some(Dim::Known(v)) if v > 0 => v as usize,
        other => {
            return Err(Error::Model(format!(
                "{}: the vocabulary size (last dim of '{logits}') must be fixed, found {other:?}",
                model.path.display()
            )))
        }
    };
    let (batch, seq) = token_dims(model, &input_ids)?;

    let mut proto = model.proto.clone();
    let mut b = GraphBuilder::new(model.opset, "attrpatch/", all_names(proto.graph.as_ref().unwrap()));
    let g = proto.graph.as_mut().unwrap();
    let n = |d: &Dim| d.clone();
    g.input.push(value_info(names::POSITION_ONEHOT, dtype, &[n(&batch), Dim::Known(1), n(&seq)]));
    g.input.push(value_info(names::ANSWER_ONEHOT, dtype, &[n(&batch), Dim::Known(vocab as i64), Dim::Known(1)]));
    g.input.push(value_info(names::CLEAN_WEIGHTS, dtype, &[n(&batch), Dim::Known(1)]));
    g.input.push(value_info(names::CORRUPTED_WEIGHTS, dtype, &[n(&batch), Dim::Known(1)]));

    // Metric nodes.
    let sel = b.matmul(names::POSITION_ONEHOT, &logits);
    let ld = b.matmul(&sel, names::ANSWER_ONEHOT);
    let flat_shape = b.const_i64s(&[1, -1]);
    let ld_row = b.reshape(&ld, &flat_shape);
    b.node_named("MatMul", &[&ld_row, names::CLEAN_WEIGHTS], names::CLEAN_LD, vec![]);
    b.node_named("MatMul", &[&ld_row, names::CORRUPTED_WEIGHTS], names::CORRUPTED_LD, vec![]);
    let clean_const = b.node("Identity", &[names::CLEAN_LD], vec![]);
    let corr_const = b.node("Identity", &[names::CORRUPTED_LD], vec![]);
    let num = b.sub(names::CORRUPTED_LD, &corr_const);
    let den = b.sub(&clean_const, &corr_const);
    b.node_named("Div", &[&num, &den], names::METRIC, vec![]);
    let stop: HashSet<String> = [clean_const, corr_const].into_iter().collect();
    g.node.append(&mut b.nodes);
    g.initializer.append(&mut b.initializers);

    // Facts of the graph with the metric, for the rules, at a probe shape.
    let (pb, ps) = (PROBE_ROWS, PROBE_SEQ);
    let mut probe = vec![(input_ids.as_str(), vec![pb, ps])];
    if let Some(m) = &attention_mask {
        probe.push((m.as_str(), vec![pb, ps]));
    }
    probe.extend([
        (names::POSITION_ONEHOT, vec![pb, 1, ps]),
        (names::ANSWER_ONEHOT, vec![pb, vocab, 1]),
        (names::CLEAN_WEIGHTS, vec![pb, 1]),
        (names::CORRUPTED_WEIGHTS, vec![pb, 1]),
    ]);
    let facts = analyse_with_probe(&proto, &model.path, &probe)?;
    let g = proto.graph.as_mut().unwrap();
    let seed = b.const_tensor(dtype, &[1, 1], &[1.0]);
    let wrt: Vec<String> = hooks.iter().map(|h| h.tensor.clone()).collect();
    let grads = Backward { graph: g, facts: &facts, stop: &stop }.build(&mut b, &wrt, names::METRIC, &seed)?;

    // Outputs: baselines, metric, and per layer the activation and its gradient.
    g.output.clear();
    let scalar = [Dim::Known(1), Dim::Known(1)];
    for name in [names::CLEAN_LD, names::CORRUPTED_LD, names::METRIC] {
        g.output.push(value_info(name, dtype, &scalar));
    }
    for (h, gr) in hooks.iter().zip(&grads) {
        // Declared with the symbolic facts: the probe's sizes are not the model's.
        let shape = facts0.shape(&h.tensor).map(|s| s.to_vec()).unwrap_or_default();
        b.node_named("Identity", &[&h.tensor], &names::act(h.layer), vec![]);
        b.node_named("Identity", &[gr], &names::grad(h.layer), vec![]);
        g.output.push(value_info(&names::act(h.layer), dtype, &shape));
        g.output.push(value_info(&names::grad(h.layer), dtype, &shape));
    }
    g.node.append(&mut b.nodes);
    g.initializer.append(&mut b.initializers);
    // Intermediate value_info may disagree with new uses; runtimes re-infer.
    g.value_info.clear();
    proto.producer_name = "attrpatch".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
    Ok(Augmented { proto, hooks, facts, logits, input_ids, attention_mask, vocab })
}

/// The batch and sequence dims of the token input, as the model declares them.
fn token_dims(model: &OnnxModel, input: &str) -> Result<(Dim, Dim)> {
    let vi = model.graph().input.iter().find(|i| i.name == input).unwrap();
    let dims = declared_dims(vi);
    match dims.as_slice() {
        [b, s] => Ok((b.clone(), s.clone())),
        _ => Err(Error::Model(format!(
            "{}: input '{input}' should be [batch, sequence], found rank {}",
            model.path.display(),
            dims.len()
        ))),
    }
}

/// The dims a graph input or output declares (empty when it declares none).
fn declared_dims(vi: &ValueInfoProto) -> Vec<Dim> {
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
