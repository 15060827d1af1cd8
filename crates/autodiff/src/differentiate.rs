//! `differentiate`: the symbolic backward alone, for toolchains that want
//! gradient nodes in their own ONNX graph (no metric, no clean copy).

use super::Backward;
use attrpatch_onnx::builder::{attr_t, GraphBuilder};
use attrpatch_onnx::consts::{float_tensor, FLOAT};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::facts::analyse;
use attrpatch_onnx::graph::{all_names, value_info};
use attrpatch_onnx::pb::ModelProto;
use attrpatch_onnx::OnnxModel;
use std::collections::HashSet;
use std::path::Path;

/// A model with gradient outputs, and which output holds which gradient.
pub struct Differentiated {
    /// The (normalised) model with the backward nodes and one output per gradient.
    pub model: ModelProto,
    /// `(wrt tensor, output holding d loss / d wrt)`, in the order asked.
    pub gradients: Vec<(String, String)>,
}

/// Adds to `model` the nodes computing `d loss / d t` for every tensor `t` in
/// `wrt` (seeded with ones of the loss's shape, so a non-scalar loss is
/// summed), built from standard ONNX ops, and declares each gradient as a graph
/// output named `<t>_grad` (or a fresh name when that is taken). The model is
/// normalised first as for attribution (contrib and fused ops decomposed).
/// Every op on the path without a gradient rule is reported at once.
pub fn differentiate(model: ModelProto, wrt: &[&str], loss: &str) -> Result<Differentiated> {
    let name = Path::new(attrpatch_onnx::IN_MEMORY_MODEL);
    let m = OnnxModel::from_model_proto(model, name)?;
    let (opset, mut proto) = (m.opset, m.proto);
    let facts = analyse(&proto, name)?;
    let g = proto.graph.as_mut().ok_or_else(|| Error::Model("the model has no graph".into()))?;
    let known = all_names(g);
    for t in wrt.iter().chain([&loss]) {
        if !known.contains(*t) {
            return Err(Error::Input(format!("differentiate: the graph has no tensor named '{t}'")));
        }
    }
    let mut b = GraphBuilder::new(opset, "attrpatch.grad/", known.clone());
    let dtype = facts.dtype(loss).unwrap_or(FLOAT);
    let one = float_tensor("", dtype, &[1], &[1.0]);
    let loss_shape = b.shape(loss);
    let seed = b.node("ConstantOfShape", &[&loss_shape], vec![attr_t("value", one)]);
    let wrt: Vec<String> = wrt.iter().map(|s| s.to_string()).collect();
    let stop = HashSet::new();
    let grads = Backward { graph: g, facts: &facts, stop: &stop }.build(&mut b, &wrt, loss, &seed)?;
    let mut gradients = vec![];
    for (t, grad) in wrt.iter().zip(&grads) {
        let wanted = format!("{t}_grad");
        let out = if known.contains(&wanted) { b.fresh(&wanted) } else { wanted };
        b.node_named("Identity", &[grad], &out, vec![]);
        let shape = facts.shape(t).map(|s| s.to_vec()).unwrap_or_default();
        g.output.push(value_info(&out, facts.dtype(t).unwrap_or(dtype), &shape));
        gradients.push((t.clone(), out));
    }
    b.apply(g);
    Ok(Differentiated { model: proto, gradients })
}
