//! What a gradient rule sees: the node, tensor facts, constants, and a builder.

use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::consts::{constant_node_tensor, tensor_f64s, tensor_i64s, FLOAT};
use attrpatch_onnx::error::{Error, Result, UnsupportedOp};
use attrpatch_onnx::facts::{dim_str, Dim, Facts};
use attrpatch_onnx::pb::{GraphProto, NodeProto, TensorProto};
use std::collections::HashMap;

/// Initializers and Constant-node outputs by name.
pub struct ConstIndex<'g>(HashMap<&'g str, &'g TensorProto>);

impl<'g> ConstIndex<'g> {
    /// Indexes `g`'s initializers and the outputs of its Constant nodes, leaving
    /// out graph inputs (an initializer that is also an input is not constant).
    pub fn new(g: &'g GraphProto) -> Self {
        let mut m: HashMap<&str, &TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        for n in &g.node {
            if let (Some(t), Some(o)) = (constant_node_tensor(n), n.output.first()) {
                m.insert(o.as_str(), t);
            }
        }
        // Graph inputs with a default initializer are still inputs.
        for i in &g.input {
            m.remove(i.name.as_str());
        }
        ConstIndex(m)
    }
    /// Whether `name` is a constant of the graph.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    /// The constant tensor named `name`, if it is one.
    pub fn get(&self, name: &str) -> Option<&'g TensorProto> {
        self.0.get(name).copied()
    }
}

/// A rule's whole view of one node: the gradients reaching its outputs, which
/// inputs need one, what shape analysis knows, and the builder for new nodes.
pub struct RuleCtx<'a, 'g> {
    /// Where the rule emits its backward nodes and initializers.
    pub b: &'a mut GraphBuilder,
    /// Types and shapes of the forward graph's tensors.
    pub facts: &'a Facts,
    /// The forward graph's constants (initializers, Constant outputs).
    pub consts: &'a ConstIndex<'g>,
    /// The forward node being differentiated.
    pub node: &'g NodeProto,
    /// Per output: its gradient, None where the metric does not depend on it.
    pub out_grads: &'a [Option<String>],
    /// Per input: whether the metric's gradient must flow into it.
    pub need: &'a [bool],
}

impl<'g> RuleCtx<'_, 'g> {
    /// This node cannot be differentiated, and why (names op and node).
    pub fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::UnsupportedOps(vec![UnsupportedOp {
            op: self.node.op_type.clone(),
            domain: self.node.domain.clone(),
            node: self.node.name.clone(),
            reason: Some(msg.to_string()),
        }])
    }
    /// The gradient of the node's first (for most ops, only) output.
    pub fn grad(&self) -> Result<String> {
        self.out_grads.first().cloned().flatten().ok_or_else(|| self.err("no gradient for its output"))
    }
    /// Whether input `k` needs a gradient (false for absent inputs).
    pub fn needs(&self, k: usize) -> bool {
        self.need.get(k).copied().unwrap_or(false)
    }
    /// The name of input `k` ("" when absent). Borrowed from the graph, not
    /// from the context, so it can be held while the builder is used.
    pub fn input(&self, k: usize) -> &'g str {
        self.node.input.get(k).map(|s| s.as_str()).unwrap_or("")
    }
    /// The name of output `k` ("" when absent), borrowed from the graph.
    pub fn output(&self, k: usize) -> &'g str {
        self.node.output.get(k).map(|s| s.as_str()).unwrap_or("")
    }
    /// The node's attribute `name` read as a string (bytes decoded lossily as UTF-8).
    pub fn attr_s(&self, name: &str) -> Option<String> {
        self.node.attribute.iter().find(|a| a.name == name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    /// The node's attribute `name` read as an integer.
    pub fn attr_i(&self, name: &str) -> Option<i64> {
        self.node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
    }
    /// The node's attribute `name` read as a float.
    pub fn attr_f(&self, name: &str) -> Option<f32> {
        self.node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
    }
    /// The node's attribute `name` read as a list of integers.
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
    }
    /// Integer values of a constant input (axes, split sizes, shapes).
    pub fn const_ints(&self, k: usize) -> Result<Vec<i64>> {
        let name = self.input(k);
        self.consts
            .get(name)
            .and_then(tensor_i64s)
            .ok_or_else(|| self.err(format!("input {k} ('{name}') must be a constant integer tensor")))
    }
    /// Values of input `k` when it is a float or double constant; None otherwise.
    pub fn const_floats(&self, k: usize) -> Option<Vec<f64>> {
        self.consts.get(self.input(k)).and_then(tensor_f64s)
    }
    /// The rank of `t`; an error naming the node when shape analysis left it unknown.
    pub fn rank(&self, t: &str) -> Result<usize> {
        self.facts.rank(t).ok_or_else(|| self.err(format!("the rank of '{t}' is unknown after shape analysis")))
    }
    /// The shape of `t`; an error naming the node when shape analysis left it unknown.
    pub fn shape(&self, t: &str) -> Result<Vec<Dim>> {
        self.facts
            .shape(t)
            .map(|s| s.to_vec())
            .ok_or_else(|| self.err(format!("the shape of '{t}' is unknown after shape analysis")))
    }
    /// Element type of `t`; float when analysis could not tell.
    pub fn dtype(&self, t: &str) -> i32 {
        self.facts.dtype(t).unwrap_or(FLOAT)
    }
    /// A new scalar initializer holding `v`, of the element type of `like`.
    pub fn scalar(&mut self, like: &str, v: f64) -> String {
        let dt = self.dtype(like);
        self.b.const_scalar(dt, v)
    }
    /// Normalises a possibly negative axis against `rank`.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let a = if axis < 0 { axis + rank as i64 } else { axis };
        if a < 0 || a >= rank as i64 {
            return Err(self.err(format!("axis {axis} out of range for rank {rank}")));
        }
        Ok(a as usize)
    }

    /// Sums a gradient of the node's output `out` (broadcast shape) back to the
    /// shape of input `x`: over leading axes `x` lacks and axes where `x` has 1.
    pub fn reduce_to(&mut self, grad: &str, out: &str, x: &str) -> Result<String> {
        let so = self.shape(out)?;
        self.reduce_shape_to(grad, &so, x)
    }

    /// As `reduce_to`, with the gradient's shape `so` given.
    pub fn reduce_shape_to(&mut self, grad: &str, so: &[Dim], x: &str) -> Result<String> {
        let sx = self.shape(x)?;
        if so == sx {
            return Ok(grad.to_string());
        }
        if sx.len() > so.len() {
            return Err(self.err(format!("input '{x}' has higher rank than the gradient reaching it")));
        }
        let lead = so.len() - sx.len();
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, dx) in sx.iter().enumerate() {
            let dout = &so[lead + i];
            match dx {
                Dim::Known(1) if *dout != Dim::Known(1) => axes.push((lead + i) as i64),
                Dim::Unknown => {
                    return Err(self.err(format!(
                        "cannot tell whether '{x}' (shape [{}]) is broadcast along axis {i}",
                        sx.iter().map(dim_str).collect::<Vec<_>>().join(", ")
                    )))
                }
                // ONNX broadcasting: a dim other than 1 equals the output's.
                _ => {}
            }
        }
        if axes.is_empty() {
            return Ok(grad.to_string());
        }
        let r = self.b.reduce_sum(grad, &axes, true);
        Ok(self.b.reshape_like(&r, x))
    }
}
