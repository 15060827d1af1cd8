//! attrpatch-autodiff: reverse-mode differentiation of an ONNX graph,
//! emitted as ONNX nodes (a symbolic backward any ONNX runtime can run).
//!
//! Only activations are differentiated (weights are constants here), only
//! nodes on a path from a `wrt` tensor to the loss get backward nodes, and a
//! tensor used by several nodes sums its contributions. Rules live in
//! `rules/`, one file per op family; `ctx` is what a rule may use.
//!
//! # Example
//!
//! Differentiating `loss = ReduceSum(Tanh(x) * Tanh(x))` for a float input `x`
//! of shape `[2, 3]`, a model built in code from the ONNX protobuf types:
//!
//! ```rust
//! use attrpatch_onnx::pb::{
//!     attribute_proto, tensor_proto, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
//!     NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
//! };
//!
//! // A float tensor declaration; `dims` empty for a scalar.
//! fn float(name: &str, dims: &[i64]) -> ValueInfoProto {
//!     let dim = dims
//!         .iter()
//!         .map(|&d| tensor_shape_proto::Dimension {
//!             value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
//!             ..Default::default()
//!         })
//!         .collect();
//!     let tensor = type_proto::Tensor {
//!         elem_type: tensor_proto::DataType::Float as i32,
//!         shape: Some(TensorShapeProto { dim }),
//!     };
//!     ValueInfoProto {
//!         name: name.into(),
//!         r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
//!         ..Default::default()
//!     }
//! }
//!
//! fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
//!     NodeProto {
//!         op_type: op.into(),
//!         name: output.into(),
//!         input: inputs.iter().map(|s| s.to_string()).collect(),
//!         output: vec![output.into()],
//!         attribute,
//!         ..Default::default()
//!     }
//! }
//!
//! let keepdims = AttributeProto {
//!     name: "keepdims".into(),
//!     r#type: attribute_proto::AttributeType::Int as i32,
//!     i: 0,
//!     ..Default::default()
//! };
//! let graph = GraphProto {
//!     name: "tiny".into(),
//!     node: vec![
//!         node("Tanh", &["x"], "y", vec![]),
//!         node("Mul", &["y", "y"], "yy", vec![]),
//!         node("ReduceSum", &["yy"], "loss", vec![keepdims]),
//!     ],
//!     input: vec![float("x", &[2, 3])],
//!     output: vec![float("loss", &[])],
//!     ..Default::default()
//! };
//! let model = ModelProto {
//!     ir_version: 8,
//!     opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
//!     graph: Some(graph),
//!     ..Default::default()
//! };
//!
//! let d = attrpatch_autodiff::differentiate(model, &["x"], "loss")?;
//!
//! // One gradient, declared as a new graph output of x's type and shape.
//! assert_eq!(d.gradients, vec![("x".to_string(), "x_grad".to_string())]);
//! let g = d.model.graph.as_ref().unwrap();
//! let outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
//! assert_eq!(outputs, ["loss", "x_grad"]);
//!
//! // Tanh's rule, dx = g * (1 - y * y), emitted as plain ONNX nodes: a Sub
//! // whose second input is a Mul of Tanh's output with itself.
//! let producer = |t: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == t));
//! let tanh_grad = g.node.iter().any(|n| {
//!     n.op_type == "Sub"
//!         && n.input.get(1).and_then(|t| producer(t)).is_some_and(|m| m.op_type == "Mul" && m.input == ["y", "y"])
//! });
//! assert!(tanh_grad, "no 1 - y*y among {:?}", g.node.iter().map(|n| &n.op_type).collect::<Vec<_>>());
//!
//! // A tensor the graph does not have is an error, not a zero gradient.
//! let err = attrpatch_autodiff::differentiate(d.model.clone(), &["nope"], "loss").err().unwrap();
//! assert!(err.to_string().contains("no tensor named 'nope'"));
//! # Ok::<(), attrpatch_onnx::error::Error>(())
//! ```
#![deny(missing_docs)]

pub mod ctx;
mod differentiate;
pub mod rules;

pub use differentiate::{differentiate, Differentiated};

use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::consts::is_float;
use attrpatch_onnx::error::{Error, Result, UnsupportedOp};
use attrpatch_onnx::facts::Facts;
use attrpatch_onnx::pb::GraphProto;
use ctx::{ConstIndex, RuleCtx};
use std::collections::{HashMap, HashSet};

/// The backward pass of one graph: which facts the rules read, what is constant.
pub struct Backward<'a> {
    /// The forward graph.
    pub graph: &'a GraphProto,
    /// Types and shapes of its tensors (the rules read ranks and dims).
    pub facts: &'a Facts,
    /// Tensors treated as constants (stop-gradient), e.g. metric baselines.
    pub stop: &'a HashSet<String>,
}

impl Backward<'_> {
    /// Emits nodes computing d loss / d t for every t in `wrt`, given `seed` =
    /// d loss / d loss (a tensor of the loss's shape). Returns wrt -> grad tensor.
    pub fn build(&self, b: &mut GraphBuilder, wrt: &[String], loss: &str, seed: &str) -> Result<Vec<String>> {
        let g = self.graph;
        let consts = ConstIndex::new(g);
        let dtypes = attrpatch_onnx::dtypes::infer_dtypes(g, self.facts);
        let differentiable = |t: &str| -> bool {
            // Unknown types are treated as float so a rule gets the chance to fail loudly.
            dtypes.get(t).copied().is_none_or(is_float) && !consts.contains(t)
        };

        // Forward: tensors that depend on a wrt tensor through float values.
        let mut active: HashSet<&str> = wrt.iter().map(|s| s.as_str()).collect();
        let mut active_nodes = vec![false; g.node.len()];
        for (i, n) in g.node.iter().enumerate() {
            if n.input.iter().any(|x| active.contains(x.as_str()) && !self.stop.contains(x)) {
                active_nodes[i] = true;
                for o in &n.output {
                    if !o.is_empty() && differentiable(o) && !self.stop.contains(o) {
                        active.insert(o);
                    }
                }
            }
        }
        if !active.contains(loss) {
            return Err(Error::Model(format!("the metric '{loss}' does not depend on the hook tensors {wrt:?}")));
        }

        // Backward: of those, the ones the loss depends on.
        let mut needed: HashSet<&str> = HashSet::from([loss]);
        let mut on_path = vec![false; g.node.len()];
        for (i, n) in g.node.iter().enumerate().rev() {
            if active_nodes[i] && n.output.iter().any(|o| needed.contains(o.as_str())) {
                on_path[i] = true;
                for x in &n.input {
                    if active.contains(x.as_str()) && !self.stop.contains(x) {
                        needed.insert(x);
                    }
                }
            }
        }

        // Every op on the path without a rule, all at once, before any work.
        let missing: Vec<UnsupportedOp> = g
            .node
            .iter()
            .zip(&on_path)
            .filter(|(n, &p)| p && rules::lookup(&n.op_type, &n.domain).is_none())
            .map(|(n, _)| UnsupportedOp {
                op: n.op_type.clone(),
                domain: n.domain.clone(),
                node: n.name.clone(),
                reason: None,
            })
            .collect();
        if !missing.is_empty() {
            return Err(Error::UnsupportedOps(missing));
        }

        let mut grads: HashMap<String, Vec<String>> = HashMap::new();
        grads.insert(loss.to_string(), vec![seed.to_string()]);
        // A wrt tensor may itself be produced on the path (a later layer's hook):
        // its complete gradient is the sum taken when its producer is reached.
        let wanted: HashSet<&str> = wrt.iter().map(|s| s.as_str()).collect();
        let mut done: HashMap<String, String> = HashMap::new();
        // Rules that fail are collected, so that one error names every such node.
        let mut failed: Vec<UnsupportedOp> = vec![];
        for (i, n) in g.node.iter().enumerate().rev() {
            if !on_path[i] {
                continue;
            }
            let out_grads: Vec<Option<String>> = n.output.iter().map(|o| take_sum(b, &mut grads, o)).collect();
            for (o, go) in n.output.iter().zip(&out_grads) {
                if let (true, Some(go)) = (wanted.contains(o.as_str()), go) {
                    done.insert(o.clone(), go.clone());
                }
            }
            if out_grads.iter().all(|x| x.is_none()) {
                continue;
            }
            let needs: Vec<bool> = n.input.iter().map(|x| needed.contains(x.as_str())).collect();
            let rule = rules::lookup(&n.op_type, &n.domain).expect("checked above");
            let mut cx =
                RuleCtx { b, facts: self.facts, consts: &consts, node: n, out_grads: &out_grads, need: &needs };
            let in_grads = match rule(&mut cx) {
                Ok(v) => v,
                Err(Error::UnsupportedOps(v)) => {
                    failed.extend(v);
                    // Stand-ins, so that the nodes before this one are still
                    // checked; the graph is discarded with the error.
                    needs.iter().map(|&n| n.then(|| b.fresh("unavailable"))).collect()
                }
                Err(e) => return Err(e),
            };
            for (k, x) in n.input.iter().enumerate() {
                if !needs[k] {
                    continue;
                }
                match in_grads.get(k).cloned().flatten() {
                    Some(gx) => grads.entry(x.clone()).or_default().push(gx),
                    None => failed.push(UnsupportedOp {
                        op: n.op_type.clone(),
                        domain: n.domain.clone(),
                        node: n.name.clone(),
                        reason: Some(format!(
                            "the rule does not handle input {k} ('{x}'), which is on the path from the hooks to the metric"
                        )),
                    }),
                }
            }
        }
        if !failed.is_empty() {
            return Err(Error::UnsupportedOps(failed));
        }
        let mut out = vec![];
        for w in wrt {
            let gw = match done.remove(w).or_else(|| take_sum(b, &mut grads, w)) {
                Some(gw) => gw,
                // Not on any path to the loss: its gradient is exactly zero.
                None => {
                    let dt = self.facts.dtype(w).unwrap_or(attrpatch_onnx::consts::FLOAT);
                    b.zeros_like(w, dt)
                }
            };
            out.push(gw);
        }
        Ok(out)
    }
}

impl Backward<'_> {
    /// Every node on the path from `wrt` to `loss` that cannot be
    /// differentiated (no rule, or its rule refuses it), found by building
    /// the backward graph into a scratch builder. Empty when all is well.
    /// `opset`: the model's default-domain opset, which some rules depend on.
    pub fn problems(&self, opset: i64, wrt: &[String], loss: &str) -> Result<Vec<UnsupportedOp>> {
        let taken = attrpatch_onnx::graph::all_names(self.graph);
        let mut scratch = GraphBuilder::new(opset, "attrpatch.inspect/", taken);
        match self.build(&mut scratch, wrt, loss, "attrpatch.inspect/seed") {
            Ok(_) => Ok(vec![]),
            Err(Error::UnsupportedOps(v)) => Ok(v),
            Err(e) => Err(e),
        }
    }
}

/// The accumulated gradient of `t`: one contribution as is, several summed.
fn take_sum(b: &mut GraphBuilder, grads: &mut HashMap<String, Vec<String>>, t: &str) -> Option<String> {
    let parts = grads.remove(t)?;
    match parts.len() {
        0 => None,
        1 => parts.into_iter().next(),
        _ => {
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            Some(b.node("Sum", &refs, vec![]))
        }
    }
}
