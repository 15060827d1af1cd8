//! Appending standard ONNX nodes to a graph, opset-aware: where an op's
//! signature changed between opsets (axes as attribute or input), the helpers
//! emit the form the model's opset expects.

use super::consts::{float_tensor, i64_tensor};
use super::pb::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto, TensorProto};
use std::collections::HashSet;

/// Collects new nodes and initializers for a graph, named so that no name clashes
/// with the graph's; nothing reaches the graph until `apply`.
pub struct GraphBuilder {
    /// Default-domain opset of the model: decides the form of ops whose signature changed.
    pub opset: i64,
    /// Nodes built and not yet applied, in order.
    pub nodes: Vec<NodeProto>,
    /// Initializers built and not yet applied.
    pub initializers: Vec<TensorProto>,
    prefix: String,
    counter: usize,
    taken: HashSet<String>,
    /// `shared_initializer`'s key -> name.
    shared: std::collections::HashMap<String, String>,
}

/// An int attribute.
pub fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}
/// A float attribute.
pub fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}
/// An ints (list of int64) attribute.
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: ints.to_vec(), ..Default::default() }
}
/// A tensor attribute.
pub fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Tensor as i32, t: Some(t), ..Default::default() }
}

impl GraphBuilder {
    /// `taken`: every tensor and node name already in the graph, so new names never clash.
    pub fn new(opset: i64, prefix: &str, taken: HashSet<String>) -> Self {
        GraphBuilder {
            opset,
            nodes: vec![],
            initializers: vec![],
            prefix: prefix.into(),
            counter: 0,
            taken,
            shared: Default::default(),
        }
    }

    /// Moves the nodes and initializers built so far to the end of `g`, so a
    /// rewrite can append in stages and keep building with the same names taken.
    pub fn apply(&mut self, g: &mut GraphProto) {
        g.node.append(&mut self.nodes);
        g.initializer.append(&mut self.initializers);
    }

    /// A new name, `{prefix}{hint}_{n}`, never used before in the graph; it is taken from now on.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{}{}_{}", self.prefix, hint, self.counter);
            if self.taken.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Appends an `op` node with `n_out` fresh outputs; returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], n_out: usize, attrs: Vec<AttributeProto>) -> Vec<String> {
        let outputs: Vec<String> = (0..n_out).map(|_| self.fresh(op)).collect();
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    /// Appends an `op` node with one fresh output; returns its name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, 1, attrs).pop().unwrap()
    }

    /// A node whose output gets the given name (for graph outputs).
    pub fn node_named(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>) {
        self.taken.insert(out.to_string());
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// A 1-d int64 initializer holding `values`; returns its name.
    pub fn const_i64s(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const_i64");
        self.initializers.push(i64_tensor(&name, &[values.len() as i64], values));
        name
    }

    /// A scalar of the given float element type.
    pub fn const_scalar(&mut self, data_type: i32, v: f64) -> String {
        let name = self.fresh("const_f");
        self.initializers.push(float_tensor(&name, data_type, &[], &[v]));
        name
    }

    /// An initializer made once per `key` and shared by every caller that asks
    /// with the same key (e.g. one default zero-point tensor per weight shape).
    pub fn shared_initializer(&mut self, key: &str, make: impl FnOnce(String) -> TensorProto) -> String {
        if let Some(name) = self.shared.get(key) {
            return name.clone();
        }
        let name = self.fresh(key);
        self.initializers.push(make(name.clone()));
        self.shared.insert(key.to_string(), name.clone());
        name
    }

    /// A float initializer of element type `data_type` and shape `dims` (see `float_tensor`); returns its name.
    pub fn const_tensor(&mut self, data_type: i32, dims: &[i64], values: &[f64]) -> String {
        let name = self.fresh("const_f");
        self.initializers.push(float_tensor(&name, data_type, dims, values));
        name
    }

    // ---- ops whose signature depends on the opset ----

    fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool, axes_as_input: bool) -> String {
        let keep = attr_i("keepdims", keepdims as i64);
        if axes_as_input {
            let a = self.const_i64s(axes);
            self.node(op, &[x, &a], vec![keep])
        } else {
            self.node(op, &[x], vec![attr_ints("axes", axes), keep])
        }
    }
    /// ReduceSum over `axes` (axes as an input from opset 13, an attribute before).
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let v = self.opset >= 13;
        self.reduce("ReduceSum", x, axes, keepdims, v)
    }
    /// ReduceMean over `axes` (axes as an input from opset 18, an attribute before).
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let v = self.opset >= 18;
        self.reduce("ReduceMean", x, axes, keepdims, v)
    }
    /// ReduceProd over `axes` (axes as an input from opset 18, an attribute before).
    pub fn reduce_prod(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let v = self.opset >= 18;
        self.reduce("ReduceProd", x, axes, keepdims, v)
    }
    /// ReduceMax over `axes` (axes as an input from opset 18, an attribute before).
    pub fn reduce_max(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let v = self.opset >= 18;
        self.reduce("ReduceMax", x, axes, keepdims, v)
    }
    /// `x` with size-1 axes inserted at `axes` (axes as an input from opset 13, an attribute before).
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let a = self.const_i64s(axes);
            self.node("Unsqueeze", &[x, &a], vec![])
        } else {
            self.node("Unsqueeze", &[x], vec![attr_ints("axes", axes)])
        }
    }

    // ---- plain ops ----

    /// `a + b` (broadcasting).
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }
    /// `a - b` (broadcasting).
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.node("Sub", &[a, b], vec![])
    }
    /// `a * b` (broadcasting).
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.node("Mul", &[a, b], vec![])
    }
    /// `a / b` (broadcasting).
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.node("Div", &[a, b], vec![])
    }
    /// `-a`.
    pub fn neg(&mut self, a: &str) -> String {
        self.node("Neg", &[a], vec![])
    }
    /// `a @ b` (MatMul).
    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.node("MatMul", &[a, b], vec![])
    }
    /// The run-time shape of `x`, a 1-d int64 tensor.
    pub fn shape(&mut self, x: &str) -> String {
        self.node("Shape", &[x], vec![])
    }
    /// `x` reshaped to `shape`, a 1-d int64 tensor.
    pub fn reshape(&mut self, x: &str, shape: &str) -> String {
        self.node("Reshape", &[x, shape], vec![])
    }
    /// `x` reshaped to the run-time shape of `like`.
    pub fn reshape_like(&mut self, x: &str, like: &str) -> String {
        let s = self.shape(like);
        self.reshape(x, &s)
    }
    /// `x` with its axes permuted by `perm`.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![attr_ints("perm", perm)])
    }
    /// `x` cast to the ONNX element type `to`.
    pub fn cast(&mut self, x: &str, to: i32) -> String {
        self.node("Cast", &[x], vec![attr_i("to", to as i64)])
    }
    /// `xs` joined along `axis`.
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.node("Concat", xs, vec![attr_i("axis", axis)])
    }
    /// Zeros with the shape of `like`, in element type `data_type`.
    pub fn zeros_like(&mut self, like: &str, data_type: i32) -> String {
        let s = self.shape(like);
        let zero = float_tensor("value", data_type, &[1], &[0.0]);
        self.node("ConstantOfShape", &[&s], vec![attr_t("value", zero)])
    }
    /// A tensor of `like`'s shape and `value`, by broadcasting a scalar.
    pub fn expand_to(&mut self, x: &str, like: &str) -> String {
        let s = self.shape(like);
        self.node("Expand", &[x, &s], vec![])
    }
}

/// Additions for the contrib-op decompositions (crates/onnx/src/normalize/contrib/).
impl GraphBuilder {
    /// An int64 scalar (0-d), as Range and Gather-as-index want.
    pub fn const_i64_scalar(&mut self, v: i64) -> String {
        let name = self.fresh("const_i64");
        self.initializers.push(i64_tensor(&name, &[], &[v]));
        name
    }
    /// Dimension `axis` of `x` at run time, as an int64 scalar.
    pub fn dim(&mut self, x: &str, axis: i64) -> String {
        let s = self.shape(x);
        let i = self.const_i64_scalar(axis);
        self.node("Gather", &[&s, &i], vec![attr_i("axis", 0)])
    }
    /// `n` equal parts of `x` along `axis`, in the form the opset expects.
    pub fn split_equal(&mut self, x: &str, axis: i64, n: usize) -> Vec<String> {
        let mut attrs = vec![attr_i("axis", axis)];
        if self.opset >= 18 {
            attrs.push(attr_i("num_outputs", n as i64));
        }
        self.node_n("Split", &[x], n, attrs)
    }
    /// Parts of the given sizes of `x` along `axis`.
    pub fn split_sizes(&mut self, x: &str, axis: i64, sizes: &[i64]) -> Vec<String> {
        if self.opset >= 13 {
            let s = self.const_i64s(sizes);
            self.node_n("Split", &[x, &s], sizes.len(), vec![attr_i("axis", axis)])
        } else {
            self.node_n("Split", &[x], sizes.len(), vec![attr_i("axis", axis), attr_ints("split", sizes)])
        }
    }
    /// `x[.., start..end, ..]` along one axis (constant bounds).
    pub fn slice_axis(&mut self, x: &str, axis: i64, start: i64, end: i64) -> String {
        let s = self.const_i64s(&[start]);
        let e = self.const_i64s(&[end]);
        let a = self.const_i64s(&[axis]);
        self.node("Slice", &[x, &s, &e, &a], vec![])
    }
    /// Softmax over the last axis.
    pub fn softmax_last(&mut self, x: &str) -> String {
        self.node("Softmax", &[x], vec![attr_i("axis", -1)])
    }
    /// `Where(cond, a, b)`: `a`'s elements where `cond` holds, `b`'s elsewhere (broadcasting).
    pub fn where_(&mut self, cond: &str, a: &str, b: &str) -> String {
        self.node("Where", &[cond, a, b], vec![])
    }
}
