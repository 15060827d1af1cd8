//! Every gradient rule (`attrpatch::autodiff::rules::SUPPORTED`) against
//! central finite differences, run through ONNX Runtime's CPU provider.
//!
//! A case is a tiny graph: the differentiable variables are graph inputs with
//! random values, constants are initializers, and the loss is
//! `sum_k ReduceSum(out_k * R_k)` for fixed random `R_k`, so every element of
//! every output that enters the loss carries a distinct weight. `Backward`
//! adds the gradient nodes; their outputs are compared with
//! `(L(x + h e_i) - L(x - h e_i)) / 2h` for every element of every variable.
//!
//! Tolerances: float64 cases use h = 1e-6 and require
//! `|analytic - numeric| <= 1e-6 + 1e-5 * |numeric|`. Cases with float32
//! arithmetic state theirs: `erf_float32` (ONNX Runtime's CPU provider has no
//! float64 Erf kernel), `cast_round_trip_through_float32` (float64 variables,
//! a float32 value in between) and `chain_attention_like_block_float32` (the
//! element type of real models, on purpose).
//!
//! The cases at opset 11/12 exercise the opset-dependent forms (axes as an
//! attribute); `OnnxModel::load` itself rejects opset < 13.

use attrpatch::augment::value_info;
use attrpatch::autodiff::rules::SUPPORTED;
use attrpatch::autodiff::Backward;
use attrpatch::onnx::builder::{attr_f, attr_i, attr_ints, GraphBuilder};
use attrpatch::onnx::consts::{float_tensor, i64_tensor, BOOL, DOUBLE, FLOAT};
use attrpatch::onnx::facts::{analyse_with_probe, Dim};
use attrpatch::onnx::graph::all_names;
use attrpatch::onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TypeProto,
    ValueInfoProto,
};
use ndarray::{ArrayD, IxDyn};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynValue, Tensor};
use prost::Message;
use std::collections::HashSet;
use std::path::Path;

// ---------------------------------------------------------------- harness --

/// splitmix64: small, deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn seeded(label: &str) -> Self {
        // FNV-1a of the case name, so every case has its own stream.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in label.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

struct Var {
    name: String,
    shape: Vec<usize>,
    values: Vec<f64>,
}

struct Case {
    label: String,
    opset: i64,
    dtype: i32,
    vars: Vec<Var>,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    loss_from: Vec<String>,
    /// Intermediate tensors (name, shape) whose gradients are asked for too.
    extra_wrt: Vec<(String, Vec<usize>)>,
    /// Finite-difference step and tolerance `atol + rtol * |numeric|`.
    h: f64,
    atol: f64,
    rtol: f64,
    rng: Rng,
}

/// Gradients through the Backward graph and by central differences.
struct Checked {
    /// Per variable: name, analytic, numeric.
    grads: Vec<(String, Vec<f64>, Vec<f64>)>,
    /// Per extra (intermediate) wrt tensor: name, analytic.
    extra: Vec<(String, Vec<f64>)>,
}

fn case(label: &str, opset: i64) -> Case {
    Case {
        label: label.into(),
        opset,
        dtype: DOUBLE,
        vars: vec![],
        inits: vec![],
        nodes: vec![],
        loss_from: vec![],
        extra_wrt: vec![],
        h: 1e-6,
        atol: 1e-6,
        rtol: 1e-5,
        rng: Rng::seeded(label),
    }
}

fn vi_untyped_shape(name: &str, elem_type: i32) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type, shape: None })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn known(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Known(d as i64)).collect()
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

fn session(bytes: &[u8]) -> Result<Session, String> {
    let (_, env) = attrpatch::runtime::ort_lib::init(None).map_err(|e| e.to_string())?;
    let b = Session::builder(&env).map_err(|e| e.to_string())?;
    let b = b.with_optimization_level(GraphOptimizationLevel::Disable).map_err(|e| e.to_string())?;
    let mut b = b.with_intra_threads(1).map_err(|e| e.to_string())?;
    b.commit_from_memory(bytes).map_err(|e| e.to_string())
}

/// Output tensors as (shape, values).
type Outputs = Vec<(Vec<usize>, Vec<f64>)>;

/// Runs a session; returns (shape, values) of each requested output.
fn run(
    sess: &mut Session,
    dtype: i32,
    feeds: &[(String, Vec<usize>, Vec<f64>)],
    outputs: &[String],
) -> Result<Outputs, String> {
    let mut feed: Vec<(String, DynValue)> = vec![];
    for (name, shape, vals) in feeds {
        let v = if dtype == DOUBLE {
            let a = ArrayD::from_shape_vec(IxDyn(shape), vals.clone()).unwrap();
            Tensor::from_array(a).map(|t| t.into_dyn())
        } else {
            let a = ArrayD::from_shape_vec(IxDyn(shape), vals.iter().map(|&v| v as f32).collect()).unwrap();
            Tensor::from_array(a).map(|t| t.into_dyn())
        }
        .map_err(|e| format!("input '{name}': {e}"))?;
        feed.push((name.clone(), v));
    }
    let out = sess.run(feed).map_err(|e| e.to_string())?;
    let mut res = vec![];
    for name in outputs {
        let v = &out[name.as_str()];
        let (shape, vals) = if dtype == DOUBLE {
            let a = v.try_extract_array::<f64>().map_err(|e| format!("output '{name}': {e}"))?;
            (a.shape().to_vec(), a.iter().copied().collect())
        } else {
            let a = v.try_extract_array::<f32>().map_err(|e| format!("output '{name}': {e}"))?;
            (a.shape().to_vec(), a.iter().map(|&x| x as f64).collect())
        };
        res.push((shape, vals));
    }
    Ok(res)
}

impl Case {
    /// Runs the case in float32 with the given step and tolerance (say why at the call).
    fn float32(mut self, h: f64, atol: f64, rtol: f64) -> Self {
        self.dtype = FLOAT;
        self.h = h;
        self.atol = atol;
        self.rtol = rtol;
        self
    }
    fn tolerance(mut self, h: f64, atol: f64, rtol: f64) -> Self {
        self.h = h;
        self.atol = atol;
        self.rtol = rtol;
        self
    }
    /// A variable with values uniform in [-1, 1].
    fn var(self, name: &str, shape: &[usize]) -> Self {
        self.var_in(name, shape, -1.0, 1.0)
    }
    /// A variable with values uniform in [lo, hi].
    fn var_in(mut self, name: &str, shape: &[usize], lo: f64, hi: f64) -> Self {
        let values = self.rng.vec(numel(shape), lo, hi);
        self.vars.push(Var { name: name.into(), shape: shape.to_vec(), values });
        self
    }
    /// A variable with |values| in [0.2, 1], random signs (away from kinks at 0).
    fn var_away_from_zero(mut self, name: &str, shape: &[usize]) -> Self {
        let values = (0..numel(shape))
            .map(|_| {
                let m = self.rng.uniform(0.2, 1.0);
                if self.rng.next_u64() & 1 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect();
        self.vars.push(Var { name: name.into(), shape: shape.to_vec(), values });
        self
    }
    fn var_vals(mut self, name: &str, shape: &[usize], vals: &[f64]) -> Self {
        assert_eq!(vals.len(), numel(shape));
        self.vars.push(Var { name: name.into(), shape: shape.to_vec(), values: vals.to_vec() });
        self
    }
    /// A float constant (initializer) in the case's type, uniform in [lo, hi].
    fn constant_in(mut self, name: &str, shape: &[usize], lo: f64, hi: f64) -> Self {
        let v = self.rng.vec(numel(shape), lo, hi);
        self.inits.push(float_tensor(name, self.dtype, &dims(shape), &v));
        self
    }
    fn constant(self, name: &str, shape: &[usize]) -> Self {
        self.constant_in(name, shape, -1.0, 1.0)
    }
    fn constant_vals(mut self, name: &str, shape: &[usize], vals: &[f64]) -> Self {
        self.inits.push(float_tensor(name, self.dtype, &dims(shape), vals));
        self
    }
    fn ints(mut self, name: &str, vals: &[i64]) -> Self {
        self.inits.push(i64_tensor(name, &[vals.len() as i64], vals));
        self
    }
    fn int_scalar(mut self, name: &str, v: i64) -> Self {
        self.inits.push(i64_tensor(name, &[], &[v]));
        self
    }
    fn bools(mut self, name: &str, shape: &[usize], vals: &[bool]) -> Self {
        assert_eq!(vals.len(), numel(shape));
        self.inits.push(TensorProto {
            name: name.into(),
            dims: dims(shape),
            data_type: BOOL,
            raw_data: vals.iter().map(|&b| b as u8).collect(),
            ..Default::default()
        });
        self
    }
    fn node(self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> Self {
        let name = format!("{op}_{}", self.nodes.len());
        self.named_node(&name, "", op, inputs, outputs, attrs)
    }
    fn named_node(
        mut self,
        name: &str,
        domain: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Self {
        self.nodes.push(NodeProto {
            name: name.into(),
            op_type: op.into(),
            domain: domain.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }
    /// The tensors whose weighted sums make the loss.
    fn loss(mut self, outs: &[&str]) -> Self {
        self.loss_from = outs.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Also asks Backward for the gradient of an intermediate tensor.
    fn also_wrt(mut self, name: &str, shape: &[usize]) -> Self {
        self.extra_wrt.push((name.into(), shape.to_vec()));
        self
    }

    fn model(&self, nodes: Vec<NodeProto>, inits: Vec<TensorProto>, outputs: Vec<ValueInfoProto>) -> ModelProto {
        let input = self.vars.iter().map(|v| value_info(&v.name, self.dtype, &known(&v.shape))).collect();
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: self.opset }],
            graph: Some(GraphProto {
                name: self.label.clone(),
                node: nodes,
                initializer: inits,
                input,
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn feeds(&self) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        self.vars.iter().map(|v| (v.name.clone(), v.shape.clone(), v.values.clone())).collect()
    }

    /// Shapes of the loss tensors, from one forward run.
    fn output_shapes(&self) -> Vec<Vec<usize>> {
        let outs = self.loss_from.iter().map(|o| vi_untyped_shape(o, self.dtype)).collect();
        let m = self.model(self.nodes.clone(), self.inits.clone(), outs);
        let mut s = session(&m.encode_to_vec()).unwrap_or_else(|e| panic!("{}: forward model: {e}", self.label));
        let r = run(&mut s, self.dtype, &self.feeds(), &self.loss_from)
            .unwrap_or_else(|e| panic!("{}: forward run: {e}", self.label));
        r.into_iter().map(|(shape, _)| shape).collect()
    }

    /// The forward graph plus `loss = sum_k ReduceSum(out_k * R_k)` (a scalar).
    fn loss_model(&mut self, shapes: &[Vec<usize>]) -> ModelProto {
        assert!(!self.loss_from.is_empty(), "{}: no loss outputs", self.label);
        let mut nodes = self.nodes.clone();
        let mut inits = self.inits.clone();
        let mut terms = vec![];
        for (k, (o, shape)) in self.loss_from.iter().zip(shapes).enumerate() {
            let r = format!("loss.r{k}");
            let v = self.rng.vec(numel(shape), -1.0, 1.0);
            inits.push(float_tensor(&r, self.dtype, &dims(shape), &v));
            let m = format!("loss.m{k}");
            let s = format!("loss.s{k}");
            nodes.push(NodeProto {
                name: format!("loss.mul{k}"),
                op_type: "Mul".into(),
                input: vec![o.clone(), r],
                output: vec![m.clone()],
                ..Default::default()
            });
            nodes.push(NodeProto {
                name: format!("loss.sum{k}"),
                op_type: "ReduceSum".into(),
                input: vec![m],
                output: vec![s.clone()],
                attribute: vec![attr_i("keepdims", 0)],
                ..Default::default()
            });
            terms.push(s);
        }
        let mut acc = terms[0].clone();
        for (k, t) in terms.iter().enumerate().skip(1) {
            let out = if k + 1 == terms.len() { "loss".to_string() } else { format!("loss.acc{k}") };
            nodes.push(NodeProto {
                name: format!("loss.add{k}"),
                op_type: "Add".into(),
                input: vec![acc, t.clone()],
                output: vec![out.clone()],
                ..Default::default()
            });
            acc = out;
        }
        if acc != "loss" {
            nodes.push(NodeProto {
                name: "loss.identity".into(),
                op_type: "Identity".into(),
                input: vec![acc],
                output: vec!["loss".into()],
                ..Default::default()
            });
        }
        self.model(nodes, inits, vec![value_info("loss", self.dtype, &[])])
    }

    /// Adds the backward graph to the loss model; the gradient of variable
    /// `v` becomes output `grad.v`.
    fn gradient_model(&self, loss_model: &ModelProto) -> attrpatch::Result<ModelProto> {
        let mut proto = loss_model.clone();
        let probe: Vec<(&str, Vec<usize>)> = self.vars.iter().map(|v| (v.name.as_str(), v.shape.clone())).collect();
        let facts = analyse_with_probe(&proto, Path::new(&format!("{}.onnx", self.label)), &probe)?;
        let g = proto.graph.as_mut().unwrap();
        let mut b = GraphBuilder::new(self.opset, "grad/", all_names(g));
        let seed = b.const_tensor(self.dtype, &[], &[1.0]);
        let targets: Vec<(&str, &[usize])> = self
            .vars
            .iter()
            .map(|v| (v.name.as_str(), v.shape.as_slice()))
            .chain(self.extra_wrt.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
            .collect();
        let wrt: Vec<String> = targets.iter().map(|(n, _)| n.to_string()).collect();
        let stop = HashSet::new();
        let grads = Backward { graph: g, facts: &facts, stop: &stop }.build(&mut b, &wrt, "loss", &seed)?;
        assert_eq!(grads.len(), wrt.len(), "{}: one gradient per wrt tensor", self.label);
        for ((name, shape), gr) in targets.iter().zip(&grads) {
            let out = format!("grad.{name}");
            b.node_named("Identity", &[gr], &out, vec![]);
            g.output.push(value_info(&out, self.dtype, &known(shape)));
        }
        g.node.append(&mut b.nodes);
        g.initializer.append(&mut b.initializers);
        Ok(proto)
    }

    /// The error `Backward` gives for this case (panics if it succeeds).
    fn backward_error(mut self, out_shapes: &[&[usize]]) -> String {
        let shapes: Vec<Vec<usize>> = out_shapes.iter().map(|s| s.to_vec()).collect();
        let lm = self.loss_model(&shapes);
        match self.gradient_model(&lm) {
            Ok(_) => panic!("{}: expected Backward to fail", self.label),
            Err(e) => e.to_string(),
        }
    }

    /// Analytic and numeric gradients, without comparing them.
    fn gradients(mut self) -> (Case, Checked) {
        let shapes = self.output_shapes();
        let lm = self.loss_model(&shapes);
        let gm = self.gradient_model(&lm).unwrap_or_else(|e| panic!("{}: Backward failed: {e}", self.label));
        let grad_names: Vec<String> = self
            .vars
            .iter()
            .map(|v| format!("grad.{}", v.name))
            .chain(self.extra_wrt.iter().map(|(n, _)| format!("grad.{n}")))
            .collect();
        let mut gs = session(&gm.encode_to_vec()).unwrap_or_else(|e| panic!("{}: gradient model: {e}", self.label));
        let mut analytic = run(&mut gs, self.dtype, &self.feeds(), &grad_names)
            .unwrap_or_else(|e| panic!("{}: gradient run: {e}", self.label));
        let extra_vals = analytic.split_off(self.vars.len());
        let mut extra = vec![];
        for ((name, shape), (got_shape, vals)) in self.extra_wrt.iter().zip(extra_vals) {
            assert_eq!(&got_shape, shape, "{}: shape of the gradient of '{name}'", self.label);
            extra.push((name.clone(), vals));
        }

        let mut ls = session(&lm.encode_to_vec()).unwrap_or_else(|e| panic!("{}: loss model: {e}", self.label));
        let loss_out = vec!["loss".to_string()];
        let mut loss_at = |feeds: &[(String, Vec<usize>, Vec<f64>)]| -> f64 {
            run(&mut ls, self.dtype, feeds, &loss_out).unwrap_or_else(|e| panic!("{}: loss run: {e}", self.label))[0].1
                [0]
        };
        let mut grads = vec![];
        for (vi, ((shape, a), v)) in analytic.into_iter().zip(&self.vars).enumerate() {
            assert_eq!(shape, v.shape, "{}: shape of the gradient of '{}'", self.label, v.name);
            let mut numeric = vec![];
            for i in 0..v.values.len() {
                let mut feeds = self.feeds();
                feeds[vi].2[i] = v.values[i] + self.h;
                let lp = loss_at(&feeds);
                feeds[vi].2[i] = v.values[i] - self.h;
                let lm = loss_at(&feeds);
                numeric.push((lp - lm) / (2.0 * self.h));
            }
            grads.push((v.name.clone(), a, numeric));
        }
        (self, Checked { grads, extra })
    }

    /// Asserts analytic == numeric within the case's tolerance, element by element.
    fn check(self) {
        let (case, c) = self.gradients();
        let mut bad = vec![];
        let mut worst = 0f64;
        let mut any_nonzero = false;
        for (name, a, n) in &c.grads {
            for (i, (&a, &n)) in a.iter().zip(n).enumerate() {
                let err = (a - n).abs();
                worst = worst.max(err / (case.atol + case.rtol * n.abs()));
                any_nonzero |= n.abs() > 1e-3;
                if err.is_nan() || err > case.atol + case.rtol * n.abs() {
                    bad.push(format!("  d loss / d {name}[{i}]: analytic {a:.10e}, numeric {n:.10e}, diff {err:.3e}"));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{}: {} gradient element(s) off (tolerance {:e} + {:e}*|numeric|):\n{}",
            case.label,
            bad.len(),
            case.atol,
            case.rtol,
            bad.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
        );
        assert!(any_nonzero, "{}: every gradient is ~0, the case checks nothing", case.label);
        eprintln!("{}: ok, worst error {:.3} of tolerance", case.label, worst);
    }
}

fn ai(name: &str, v: i64) -> AttributeProto {
    attr_i(name, v)
}

// ------------------------------------------------------- elementwise, binary --

#[test]
fn add_same_shape() {
    case("add_same_shape", 17)
        .var("a", &[2, 3])
        .var("b", &[2, 3])
        .node("Add", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn add_broadcast_row_vector() {
    case("add_broadcast_row_vector", 17)
        .var("a", &[2, 3])
        .var("b", &[3])
        .node("Add", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn add_broadcast_both_operands() {
    // [2,1,3] + [4,1] -> [2,4,3]: each side is summed over axes the other brings.
    case("add_broadcast_both_operands", 17)
        .var("a", &[2, 1, 3])
        .var("b", &[4, 1])
        .node("Add", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn add_scalar_variable() {
    case("add_scalar_variable", 17)
        .var("a", &[2, 3])
        .var("s", &[])
        .node("Add", &["a", "s"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn add_constant_operand() {
    case("add_constant_operand", 17)
        .var("a", &[3])
        .constant("c", &[2, 3])
        .node("Add", &["c", "a"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn sub_broadcast_column() {
    case("sub_broadcast_column", 17)
        .var("a", &[2, 3])
        .var("b", &[2, 1])
        .node("Sub", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn sub_constant_minuend() {
    // Only the subtrahend needs a gradient.
    case("sub_constant_minuend", 17)
        .constant("c", &[2, 3])
        .var("b", &[3])
        .node("Sub", &["c", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn mul_broadcast_2x1x3_by_4x1() {
    case("mul_broadcast_2x1x3_by_4x1", 17)
        .var("a", &[2, 1, 3])
        .var("b", &[4, 1])
        .node("Mul", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn mul_constant_operand() {
    case("mul_constant_operand", 17)
        .var("a", &[2, 3])
        .constant("c", &[3])
        .node("Mul", &["a", "c"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn div_same_shape() {
    case("div_same_shape", 17)
        .var("a", &[2, 3])
        .var_in("b", &[2, 3], 0.5, 2.0)
        .node("Div", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn div_broadcast_divisor() {
    case("div_broadcast_divisor", 17)
        .var("a", &[2, 3])
        .var_in("b", &[3], 0.5, 2.0)
        .node("Div", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn div_broadcast_divisor_column_3d() {
    case("div_broadcast_divisor_column_3d", 17)
        .var("a", &[2, 3, 4])
        .var_in("b", &[3, 1], 0.5, 2.0)
        .node("Div", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn div_broadcast_numerator() {
    case("div_broadcast_numerator", 17)
        .var("a", &[3])
        .var_in("b", &[2, 3], 0.5, 2.0)
        .node("Div", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn div_constant_divisor() {
    case("div_constant_divisor", 17)
        .var("a", &[2, 3])
        .constant_in("c", &[3], 0.5, 2.0)
        .node("Div", &["a", "c"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn div_constant_numerator() {
    case("div_constant_numerator", 17)
        .constant("c", &[2, 3])
        .var_in("b", &[2, 1], 0.5, 2.0)
        .node("Div", &["c", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn pow_constant_exponent() {
    case("pow_constant_exponent", 17)
        .var_in("a", &[2, 3], 0.5, 2.0)
        .constant_vals("p", &[], &[2.5])
        .node("Pow", &["a", "p"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn pow_constant_int64_exponent() {
    // An integer exponent: the rule casts it to the base's type. Negative bases are fine.
    case("pow_constant_int64_exponent", 17)
        .var_away_from_zero("a", &[2, 3])
        .int_scalar("p", 3)
        .node("Pow", &["a", "p"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn pow_variable_exponent() {
    // Base and exponent both variables, the exponent broadcast along rows.
    case("pow_variable_exponent", 17)
        .var_in("a", &[2, 3], 0.5, 2.0)
        .var_in("p", &[3], -1.5, 2.5)
        .node("Pow", &["a", "p"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn pow_variable_exponent_constant_base() {
    case("pow_variable_exponent_constant_base", 17)
        .constant_in("a", &[2, 3], 0.5, 2.0)
        .var_in("p", &[2, 1], -1.0, 2.0)
        .node("Pow", &["a", "p"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn pow_broadcast_base() {
    case("pow_broadcast_base", 17)
        .var_in("a", &[3], 0.5, 2.0)
        .var_in("p", &[2, 3], -1.0, 2.0)
        .node("Pow", &["a", "p"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn where_broadcast_branches() {
    // cond [2,3], a [3], b [2,1]: each branch is summed where it was broadcast.
    case("where_broadcast_branches", 17)
        .bools("c", &[2, 3], &[true, false, true, false, false, true])
        .var("a", &[3])
        .var("b", &[2, 1])
        .node("Where", &["c", "a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn where_condition_broadcast() {
    // The condition brings the leading axis; the branches are [4,3] and [1].
    case("where_condition_broadcast", 17)
        .bools("c", &[2, 1, 3], &[true, false, true, false, true, true])
        .var("a", &[4, 3])
        .var("b", &[1])
        .node("Where", &["c", "a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn where_one_branch_constant() {
    case("where_one_branch_constant", 17)
        .bools("c", &[2, 3], &[false, false, true, true, false, true])
        .constant("a", &[2, 3])
        .var("b", &[2, 3])
        .node("Where", &["c", "a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

// -------------------------------------------------------- elementwise, unary --

#[test]
fn neg() {
    case("neg", 17).var("x", &[2, 3]).node("Neg", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn sqrt() {
    case("sqrt", 17).var_in("x", &[2, 3], 0.3, 2.0).node("Sqrt", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn tanh() {
    case("tanh", 17).var_in("x", &[2, 3], -2.0, 2.0).node("Tanh", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn exp() {
    case("exp", 17).var_in("x", &[2, 3], -2.0, 2.0).node("Exp", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn log() {
    case("log", 17).var_in("x", &[2, 3], 0.3, 3.0).node("Log", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn sigmoid() {
    case("sigmoid", 17).var_in("x", &[2, 3], -3.0, 3.0).node("Sigmoid", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn erf_float32() {
    // float32: ONNX Runtime's CPU provider has Erf for float only (no double
    // kernel). Step 1e-2 (float32 rounding of the loss, ~1e-7 relative, over
    // 2h gives ~1e-5; the truncation error h^2/6 * |erf'''| <= 2e-5);
    // tolerance 2e-4 + 2e-3 * |numeric|.
    case("erf_float32", 17)
        .float32(1e-2, 2e-4, 2e-3)
        .var_in("x", &[2, 3], -1.5, 1.5)
        .node("Erf", &["x"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn relu() {
    // Values at least 0.2 from the kink, so the finite difference is exact.
    case("relu", 17).var_away_from_zero("x", &[3, 4]).node("Relu", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn identity() {
    case("identity", 17).var("x", &[2, 3]).node("Identity", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn cast_same_type() {
    case("cast_same_type", 17)
        .var("x", &[2, 3])
        .node("Cast", &["x"], &["y"], vec![ai("to", DOUBLE as i64)])
        .loss(&["y"])
        .check();
}

#[test]
fn cast_round_trip_through_float32() {
    // double -> float -> double: both Cast rules, each direction. The loss is
    // piecewise constant at float32 resolution (~6e-8 relative), so the step
    // is 1e-2 (the function is linear: no truncation error) and the tolerance
    // 1e-5 + 1e-4 * |numeric| (rounding of x +- h to float32 over 2h: <= 6e-6).
    case("cast_round_trip_through_float32", 17)
        .tolerance(1e-2, 1e-5, 1e-4)
        .var("x", &[2, 3])
        .node("Cast", &["x"], &["f"], vec![ai("to", FLOAT as i64)])
        .node("Cast", &["f"], &["y"], vec![ai("to", DOUBLE as i64)])
        .loss(&["y"])
        .check();
}

// ----------------------------------------------------------------- MatMul --

#[test]
fn matmul_2d() {
    case("matmul_2d", 17)
        .var("a", &[3, 4])
        .var("b", &[4, 2])
        .node("MatMul", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn matmul_broadcast_batch_rhs_2d() {
    // [2,2,3] @ [3,4]: the rank-2 operand's gradient sums over the batch.
    case("matmul_broadcast_batch_rhs_2d", 17)
        .var("a", &[2, 2, 3])
        .var("b", &[3, 4])
        .node("MatMul", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn matmul_broadcast_batch_lhs_2d() {
    case("matmul_broadcast_batch_lhs_2d", 17)
        .var("a", &[2, 3])
        .var("b", &[2, 3, 4])
        .node("MatMul", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn matmul_broadcast_batch_of_one() {
    // [1,2,3] @ [2,3,4]: a batch dim of 1 against 2.
    case("matmul_broadcast_batch_of_one", 17)
        .var("a", &[1, 2, 3])
        .var("b", &[2, 3, 4])
        .node("MatMul", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn matmul_broadcast_4d_both_sides() {
    // [2,1,2,3] @ [3,3,2] -> [2,3,2,2]: each operand broadcast along a different axis.
    case("matmul_broadcast_4d_both_sides", 17)
        .var("a", &[2, 1, 2, 3])
        .var("b", &[3, 3, 2])
        .node("MatMul", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn matmul_constant_weight() {
    case("matmul_constant_weight", 17)
        .var("a", &[2, 2, 3])
        .constant("w", &[3, 4])
        .node("MatMul", &["a", "w"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn matmul_rank1_operand_is_a_clear_error() {
    // Legal ONNX (vector operand) that the rule does not support: it must say so.
    let e = case("matmul_rank1_operand_is_a_clear_error", 17)
        .var("a", &[3])
        .var("b", &[3, 4])
        .node("MatMul", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[4]]);
    assert!(e.contains("MatMul") && e.contains("MatMul_0") && e.contains("rank"), "{e}");
}

// ------------------------------------------------------------------- Gemm --

#[test]
fn gemm_no_c() {
    case("gemm_no_c", 17)
        .var("a", &[3, 2])
        .var("b", &[2, 4])
        .node("Gemm", &["a", "b"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn gemm_full_c_default_attrs() {
    case("gemm_full_c_default_attrs", 17)
        .var("a", &[3, 2])
        .var("b", &[2, 4])
        .var("c", &[3, 4])
        .node("Gemm", &["a", "b", "c"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn gemm_trans_a_alpha_beta_c_vector() {
    // A is [2,3] (op(A) = A^T is [3,2]); C [4] broadcast over rows.
    case("gemm_trans_a_alpha_beta_c_vector", 17)
        .var("a", &[2, 3])
        .var("b", &[2, 4])
        .var("c", &[4])
        .node("Gemm", &["a", "b", "c"], &["y"], vec![ai("transA", 1), attr_f("alpha", 0.75), attr_f("beta", 1.25)])
        .loss(&["y"])
        .check();
}

#[test]
fn gemm_trans_b_c_row() {
    // B is [4,2] (op(B) = B^T is [2,4]); C [1,4].
    case("gemm_trans_b_c_row", 17)
        .var("a", &[3, 2])
        .var("b", &[4, 2])
        .var("c", &[1, 4])
        .node("Gemm", &["a", "b", "c"], &["y"], vec![ai("transB", 1), attr_f("alpha", -0.5), attr_f("beta", 2.0)])
        .loss(&["y"])
        .check();
}

#[test]
fn gemm_trans_both_c_full() {
    case("gemm_trans_both_c_full", 17)
        .var("a", &[2, 3])
        .var("b", &[4, 2])
        .var("c", &[3, 4])
        .node("Gemm", &["a", "b", "c"], &["y"], vec![ai("transA", 1), ai("transB", 1), attr_f("beta", 0.5)])
        .loss(&["y"])
        .check();
}

#[test]
fn gemm_c_column() {
    case("gemm_c_column", 17)
        .var("a", &[3, 2])
        .var("b", &[2, 4])
        .var("c", &[3, 1])
        .node("Gemm", &["a", "b", "c"], &["y"], vec![attr_f("beta", 0.25)])
        .loss(&["y"])
        .check();
}

#[test]
fn gemm_c_scalar() {
    case("gemm_c_scalar", 17)
        .var("a", &[3, 2])
        .var("b", &[2, 4])
        .var("c", &[])
        .node("Gemm", &["a", "b", "c"], &["y"], vec![attr_f("beta", 1.5)])
        .loss(&["y"])
        .check();
}

#[test]
fn gemm_constant_weights_and_bias() {
    // The usual linear layer: only A needs a gradient.
    case("gemm_constant_weights_and_bias", 17)
        .var("a", &[3, 2])
        .constant("w", &[4, 2])
        .constant("bias", &[4])
        .node("Gemm", &["a", "w", "bias"], &["y"], vec![ai("transB", 1)])
        .loss(&["y"])
        .check();
}

// ---------------------------------------------------------- shape movers --

#[test]
fn reshape_with_minus_one_and_zero() {
    case("reshape_with_minus_one_and_zero", 17)
        .var("x", &[2, 3, 4])
        .ints("s", &[0, -1, 2])
        .node("Reshape", &["x", "s"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn flatten_axis2() {
    case("flatten_axis2", 17)
        .var("x", &[2, 3, 2, 2])
        .node("Flatten", &["x"], &["y"], vec![ai("axis", 2)])
        .loss(&["y"])
        .check();
}

#[test]
fn flatten_default_axis() {
    case("flatten_default_axis", 17).var("x", &[2, 3, 2]).node("Flatten", &["x"], &["y"], vec![]).loss(&["y"]).check();
}

#[test]
fn squeeze_axes_attr_opset11() {
    case("squeeze_axes_attr_opset11", 11)
        .var("x", &[2, 1, 3, 1])
        .node("Squeeze", &["x"], &["y"], vec![attr_ints("axes", &[1, -1])])
        .loss(&["y"])
        .check();
}

#[test]
fn squeeze_axes_input_opset13() {
    case("squeeze_axes_input_opset13", 13)
        .var("x", &[2, 1, 3, 1])
        .ints("axes", &[1, 3])
        .node("Squeeze", &["x", "axes"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn unsqueeze_axes_attr_opset11() {
    case("unsqueeze_axes_attr_opset11", 11)
        .var("x", &[2, 3])
        .node("Unsqueeze", &["x"], &["y"], vec![attr_ints("axes", &[0, 3])])
        .loss(&["y"])
        .check();
}

#[test]
fn unsqueeze_axes_input_opset13() {
    case("unsqueeze_axes_input_opset13", 13)
        .var("x", &[2, 3])
        .ints("axes", &[1, -1])
        .node("Unsqueeze", &["x", "axes"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn transpose_perm() {
    case("transpose_perm", 17)
        .var("x", &[2, 3, 4])
        .node("Transpose", &["x"], &["y"], vec![attr_ints("perm", &[2, 0, 1])])
        .loss(&["y"])
        .check();
}

#[test]
fn transpose_default_perm_reverses() {
    case("transpose_default_perm_reverses", 17)
        .var("x", &[2, 3, 4])
        .node("Transpose", &["x"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn expand_row_to_matrix() {
    case("expand_row_to_matrix", 17)
        .var("x", &[3])
        .ints("s", &[2, 3])
        .node("Expand", &["x", "s"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn expand_new_leading_and_unit_axes() {
    // [3,1] -> [2,3,4]: summed over the new axis 0 and the unit axis 2.
    case("expand_new_leading_and_unit_axes", 17)
        .var("x", &[3, 1])
        .ints("s", &[2, 1, 4])
        .node("Expand", &["x", "s"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn expand_target_smaller_than_input() {
    // Expand broadcasts both ways: shape [1,1] against x [2,3] leaves x as is.
    case("expand_target_smaller_than_input", 17)
        .var("x", &[2, 3])
        .ints("s", &[1, 1])
        .node("Expand", &["x", "s"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

// ----------------------------------------------------------------- Split --

#[test]
fn split_sizes_input_opset13_loss_uses_first_and_last() {
    // Output 1 is not in the loss: its gradient is the zeros path.
    case("split_sizes_input_opset13_loss_uses_first_and_last", 13)
        .var("x", &[2, 4, 3])
        .ints("sizes", &[1, 2, 1])
        .node("Split", &["x", "sizes"], &["p0", "p1", "p2"], vec![ai("axis", 1)])
        .loss(&["p0", "p2"])
        .check();
}

#[test]
fn split_num_outputs_opset18_loss_uses_middle() {
    case("split_num_outputs_opset18_loss_uses_middle", 18)
        .var("x", &[2, 6])
        .node("Split", &["x"], &["p0", "p1", "p2"], vec![ai("axis", 1), ai("num_outputs", 3)])
        .loss(&["p1"])
        .check();
}

#[test]
fn split_attr_opset11_negative_axis_loss_uses_last() {
    case("split_attr_opset11_negative_axis_loss_uses_last", 11)
        .var("x", &[3, 5])
        .node("Split", &["x"], &["p0", "p1"], vec![ai("axis", -1), attr_ints("split", &[2, 3])])
        .loss(&["p1"])
        .check();
}

#[test]
fn split_equal_default_axis_all_outputs_used() {
    case("split_equal_default_axis_all_outputs_used", 13)
        .var("x", &[4, 3])
        .node("Split", &["x"], &["p0", "p1"], vec![])
        .loss(&["p0", "p1"])
        .check();
}

// ---------------------------------------------------------------- Concat --

#[test]
fn concat_two_variables_and_a_constant() {
    case("concat_two_variables_and_a_constant", 17)
        .var("a", &[2, 1, 3])
        .constant("c", &[2, 2, 3])
        .var("b", &[2, 3, 3])
        .node("Concat", &["a", "c", "b"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn concat_negative_axis() {
    case("concat_negative_axis", 17)
        .var("a", &[2, 3])
        .var("b", &[2, 1])
        .node("Concat", &["a", "b"], &["y"], vec![ai("axis", -1)])
        .loss(&["y"])
        .check();
}

#[test]
fn concat_same_tensor_twice() {
    // One input used twice by the same node: both pieces accumulate.
    case("concat_same_tensor_twice", 17)
        .var("a", &[2, 3])
        .node("Concat", &["a", "a"], &["y"], vec![ai("axis", 0)])
        .loss(&["y"])
        .check();
}

#[test]
fn concat_opset12_is_a_clear_error() {
    let e = case("concat_opset12", 12)
        .var("a", &[2, 3])
        .var("b", &[2, 2])
        .node("Concat", &["a", "b"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .backward_error(&[&[2, 5]]);
    assert!(e.contains("Concat") && e.contains("opset 13"), "{e}");
}

// ------------------------------------------------------------- reductions --

#[test]
fn reduce_sum_axes_attr_opset12_keepdims1() {
    case("reduce_sum_axes_attr_opset12_keepdims1", 12)
        .var("x", &[2, 3, 4])
        .node("ReduceSum", &["x"], &["y"], vec![attr_ints("axes", &[1]), ai("keepdims", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_sum_axes_attr_opset11_keepdims0_negative_axes() {
    case("reduce_sum_axes_attr_opset11_keepdims0_negative_axes", 11)
        .var("x", &[2, 3, 4])
        .node("ReduceSum", &["x"], &["y"], vec![attr_ints("axes", &[-1, 0]), ai("keepdims", 0)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_sum_axes_input_opset13_keepdims0() {
    case("reduce_sum_axes_input_opset13_keepdims0", 13)
        .var("x", &[2, 3, 4])
        .ints("axes", &[2, 0])
        .node("ReduceSum", &["x", "axes"], &["y"], vec![ai("keepdims", 0)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_sum_axes_input_opset18_keepdims1() {
    case("reduce_sum_axes_input_opset18_keepdims1", 18)
        .var("x", &[2, 3, 4])
        .ints("axes", &[-2])
        .node("ReduceSum", &["x", "axes"], &["y"], vec![ai("keepdims", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_sum_no_axes_all_opset18_keepdims0() {
    case("reduce_sum_no_axes_all_opset18_keepdims0", 18)
        .var("x", &[2, 3])
        .node("ReduceSum", &["x"], &["y"], vec![ai("keepdims", 0)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_sum_no_axes_all_opset12_keepdims1() {
    case("reduce_sum_no_axes_all_opset12_keepdims1", 12)
        .var("x", &[2, 3])
        .node("ReduceSum", &["x"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_sum_empty_axes_noop_opset18() {
    // noop_with_empty_axes = 1 and no axes: an identity.
    case("reduce_sum_empty_axes_noop_opset18", 18)
        .var("x", &[2, 3])
        .node("ReduceSum", &["x"], &["y"], vec![ai("noop_with_empty_axes", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_sum_empty_axes_input_opset18_reduces_all() {
    // An empty axes tensor (noop_with_empty_axes = 0) reduces every axis.
    case("reduce_sum_empty_axes_input_opset18_reduces_all", 18)
        .var("x", &[2, 3])
        .ints("axes", &[])
        .node("ReduceSum", &["x", "axes"], &["y"], vec![ai("keepdims", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_mean_axes_attr_opset13_keepdims1() {
    case("reduce_mean_axes_attr_opset13_keepdims1", 13)
        .var("x", &[2, 3, 4])
        .node("ReduceMean", &["x"], &["y"], vec![attr_ints("axes", &[-1]), ai("keepdims", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_mean_axes_attr_opset14_keepdims0() {
    case("reduce_mean_axes_attr_opset14_keepdims0", 14)
        .var("x", &[2, 3, 4])
        .node("ReduceMean", &["x"], &["y"], vec![attr_ints("axes", &[0, 2]), ai("keepdims", 0)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_mean_axes_input_opset18_keepdims0() {
    case("reduce_mean_axes_input_opset18_keepdims0", 18)
        .var("x", &[2, 3, 4])
        .ints("axes", &[1])
        .node("ReduceMean", &["x", "axes"], &["y"], vec![ai("keepdims", 0)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_mean_axes_input_opset18_keepdims1_two_axes() {
    case("reduce_mean_axes_input_opset18_keepdims1_two_axes", 18)
        .var("x", &[2, 3, 4])
        .ints("axes", &[-1, 1])
        .node("ReduceMean", &["x", "axes"], &["y"], vec![ai("keepdims", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_mean_no_axes_all_opset18_keepdims0() {
    case("reduce_mean_no_axes_all_opset18_keepdims0", 18)
        .var("x", &[2, 3])
        .node("ReduceMean", &["x"], &["y"], vec![ai("keepdims", 0)])
        .loss(&["y"])
        .check();
}

#[test]
fn reduce_mean_no_axes_all_opset13_keepdims1() {
    case("reduce_mean_no_axes_all_opset13_keepdims1", 13)
        .var("x", &[2, 3])
        .node("ReduceMean", &["x"], &["y"], vec![ai("keepdims", 1)])
        .loss(&["y"])
        .check();
}

// ----------------------------------------------------- softmax family --

#[test]
fn softmax_last_axis() {
    case("softmax_last_axis", 13)
        .var_in("x", &[2, 3, 4], -2.0, 2.0)
        .node("Softmax", &["x"], &["y"], vec![ai("axis", -1)])
        .loss(&["y"])
        .check();
}

#[test]
fn softmax_axis1() {
    case("softmax_axis1", 13)
        .var_in("x", &[2, 3, 4], -2.0, 2.0)
        .node("Softmax", &["x"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn softmax_default_axis_opset18() {
    case("softmax_default_axis_opset18", 18)
        .var_in("x", &[3, 4], -2.0, 2.0)
        .node("Softmax", &["x"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn log_softmax_last_axis() {
    case("log_softmax_last_axis", 13)
        .var_in("x", &[2, 3, 4], -2.0, 2.0)
        .node("LogSoftmax", &["x"], &["y"], vec![ai("axis", -1)])
        .loss(&["y"])
        .check();
}

#[test]
fn log_softmax_axis1() {
    case("log_softmax_axis1", 13)
        .var_in("x", &[2, 3, 4], -2.0, 2.0)
        .node("LogSoftmax", &["x"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn softmax_axis1_opset12_legacy_semantics_is_a_clear_error() {
    let e = case("softmax_axis1_opset12_legacy_semantics", 12)
        .var_in("x", &[2, 3, 4], -2.0, 2.0)
        .node("Softmax", &["x"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .backward_error(&[&[2, 3, 4]]);
    assert!(e.contains("Softmax") && e.contains("opset 13"), "{e}");
}

#[test]
fn log_softmax_axis1_opset12_legacy_semantics_is_a_clear_error() {
    let e = case("log_softmax_axis1_opset12_legacy_semantics", 12)
        .var_in("x", &[2, 3, 4], -2.0, 2.0)
        .node("LogSoftmax", &["x"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .backward_error(&[&[2, 3, 4]]);
    assert!(e.contains("Softmax") && e.contains("opset 13"), "{e}");
}

// --------------------------------------------------- LayerNormalization --

#[test]
fn layer_norm_last_axis_x_scale_bias() {
    case("layer_norm_last_axis_x_scale_bias", 17)
        .var("x", &[2, 3, 4])
        .var_in("scale", &[4], 0.5, 1.5)
        .var("bias", &[4])
        .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![ai("axis", -1), attr_f("epsilon", 1e-5)])
        .loss(&["y"])
        .check();
}

#[test]
fn layer_norm_axis1_normalises_two_axes() {
    case("layer_norm_axis1_normalises_two_axes", 17)
        .var("x", &[2, 3, 4])
        .var_in("scale", &[3, 4], 0.5, 1.5)
        .var("bias", &[3, 4])
        .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .check();
}

#[test]
fn layer_norm_negative_axis_two_axes_large_epsilon() {
    // axis -2 on rank 3 normalises the last two axes; a large epsilon makes
    // a wrong epsilon in the rule visible.
    case("layer_norm_negative_axis_two_axes_large_epsilon", 18)
        .var("x", &[2, 3, 4])
        .var_in("scale", &[3, 4], 0.5, 1.5)
        .var("bias", &[3, 4])
        .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![ai("axis", -2), attr_f("epsilon", 0.25)])
        .loss(&["y"])
        .check();
}

#[test]
fn layer_norm_no_bias_constant_scale() {
    case("layer_norm_no_bias_constant_scale", 17)
        .var("x", &[3, 5])
        .constant_in("scale", &[5], 0.5, 1.5)
        .node("LayerNormalization", &["x", "scale"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn layer_norm_constant_input_scale_and_bias_only() {
    // X needs no gradient; Scale and B do.
    case("layer_norm_constant_input_scale_and_bias_only", 17)
        .constant("x", &[3, 4])
        .var("scale", &[4])
        .var("bias", &[4])
        .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn layer_norm_mean_output_in_loss_is_a_clear_error() {
    let e = case("layer_norm_mean_output_in_loss_is_a_clear_error", 17)
        .var("x", &[2, 4])
        .constant("scale", &[4])
        .node("LayerNormalization", &["x", "scale"], &["y", "mean"], vec![])
        .loss(&["y", "mean"])
        .backward_error(&[&[2, 4], &[2, 1]]);
    assert!(e.contains("LayerNormalization") && e.contains("LayerNormalization_0") && e.contains("Mean"), "{e}");
}

// ----------------------------------------------------------- accumulation --

#[test]
fn accumulate_mul_of_a_tensor_with_itself() {
    case("accumulate_mul_of_a_tensor_with_itself", 17)
        .var("x", &[2, 3])
        .node("Mul", &["x", "x"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn accumulate_tensor_feeding_two_nodes() {
    // x -> Tanh -> t, x * c -> m, y = t + m: two contributions summed.
    case("accumulate_tensor_feeding_two_nodes", 17)
        .var("x", &[2, 3])
        .constant("c", &[3])
        .node("Tanh", &["x"], &["t"], vec![])
        .node("Mul", &["x", "c"], &["m"], vec![])
        .node("Add", &["t", "m"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn accumulate_intermediate_used_by_two_nodes_and_the_loss() {
    // e = exp(x) feeds Mul(e, e), a Softmax and the loss directly.
    case("accumulate_intermediate_used_by_two_nodes_and_the_loss", 17)
        .var("x", &[2, 3])
        .node("Exp", &["x"], &["e"], vec![])
        .node("Mul", &["e", "e"], &["sq"], vec![])
        .node("Softmax", &["e"], &["s"], vec![])
        .loss(&["sq", "s", "e"])
        .check();
}

#[test]
fn accumulate_broadcast_contributions_of_different_shapes() {
    // b [3] is used at shape [3] and broadcast at [2,3]: both reduced to [3] before summing.
    case("accumulate_broadcast_contributions_of_different_shapes", 17)
        .var("a", &[2, 3])
        .var("b", &[3])
        .node("Mul", &["a", "b"], &["m"], vec![])
        .node("Exp", &["b"], &["e"], vec![])
        .loss(&["m", "e"])
        .check();
}

#[test]
fn variable_off_the_loss_path_gets_zero_gradient() {
    // y feeds a Split output that the loss ignores, z feeds nothing: both zero.
    let (case, c) = case("variable_off_the_loss_path_gets_zero_gradient", 17)
        .var("x", &[2, 3])
        .var("y", &[2, 3])
        .var("z", &[2])
        .node("Concat", &["x", "y"], &["xy"], vec![ai("axis", 0)])
        .ints("sizes", &[2, 2])
        .node("Split", &["xy", "sizes"], &["p0", "p1"], vec![ai("axis", 0)])
        .loss(&["p0"])
        .gradients();
    for (name, a, n) in &c.grads {
        for (i, (&a, &n)) in a.iter().zip(n).enumerate() {
            assert!((a - n).abs() <= case.atol + case.rtol * n.abs(), "{name}[{i}]: analytic {a}, numeric {n}");
        }
        if name != "x" {
            assert!(a.iter().all(|&v| v == 0.0), "{name}: {a:?}");
        }
    }
}

#[test]
fn wrt_intermediate_tensor_gets_its_total_gradient() {
    // t is produced in the graph (like a hook tensor) and asked for directly.
    // d is a zero offset added to t, so d loss / d d (finite differences) is
    // d loss / d t; t feeds Tanh, Mul and Softmax, so its gradient is a sum.
    let (case, c) = case("wrt_intermediate_tensor_gets_its_total_gradient", 17)
        .var("x", &[2, 3])
        .var_vals("d", &[2, 3], &[0.0; 6])
        .node("Exp", &["x"], &["e"], vec![])
        .node("Add", &["e", "d"], &["t"], vec![])
        .node("Tanh", &["t"], &["u"], vec![])
        .node("Mul", &["u", "t"], &["y"], vec![])
        .node("Softmax", &["t"], &["s"], vec![])
        .loss(&["y", "s"])
        .also_wrt("t", &[2, 3])
        .gradients();
    let ok = |a: f64, n: f64| (a - n).abs() <= case.atol + case.rtol * n.abs();
    for (name, a, n) in &c.grads {
        for (i, (&a, &n)) in a.iter().zip(n).enumerate() {
            assert!(ok(a, n), "d loss / d {name}[{i}]: analytic {a}, numeric {n}");
        }
    }
    let (_, _, numeric_d) = c.grads.iter().find(|(n, _, _)| n == "d").unwrap();
    let (_, grad_t) = &c.extra[0];
    for (i, (&a, &n)) in grad_t.iter().zip(numeric_d).enumerate() {
        assert!(ok(a, n), "d loss / d t[{i}]: analytic {a}, numeric {n}");
    }
}

// ------------------------------------------------------------ small chains --

#[test]
fn chain_attention_like_block() {
    // q,k,v [2,3,4]: softmax(q @ k^T / 2 + mask) @ v, then LayerNorm and a
    // Gemm-free projection; the rules meet at broadcasts and accumulations.
    case("chain_attention_like_block", 18)
        .var("q", &[2, 3, 4])
        .var("k", &[2, 3, 4])
        .var("v", &[2, 3, 4])
        .constant_vals("half", &[], &[0.5])
        .constant_vals("mask", &[3, 3], &[0.0, -4.0, -4.0, 0.0, 0.0, -4.0, 0.0, 0.0, 0.0])
        .constant_in("ln_scale", &[4], 0.5, 1.5)
        .constant("w", &[4, 4])
        .node("Transpose", &["k"], &["kt"], vec![attr_ints("perm", &[0, 2, 1])])
        .node("MatMul", &["q", "kt"], &["s0"], vec![])
        .node("Mul", &["s0", "half"], &["s1"], vec![])
        .node("Add", &["s1", "mask"], &["s2"], vec![])
        .node("Softmax", &["s2"], &["p"], vec![ai("axis", -1)])
        .node("MatMul", &["p", "v"], &["o"], vec![])
        .node("Add", &["o", "q"], &["r"], vec![])
        .node("LayerNormalization", &["r", "ln_scale"], &["n"], vec![])
        .node("MatMul", &["n", "w"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn chain_attention_like_block_float32() {
    // The same kind of block in float32 (the element type of real models), to
    // catch a rule that emits constants or zeros in the wrong type. float32
    // tolerance: step 1e-2, |analytic - numeric| <= 1e-3 + 1e-2 * |numeric|
    // (loss rounding ~1e-7 relative over 2h, plus the h^2 truncation error).
    case("chain_attention_like_block_float32", 18)
        .float32(1e-2, 1e-3, 1e-2)
        .var("q", &[2, 3, 4])
        .var("k", &[2, 3, 4])
        .var("v", &[2, 3, 4])
        .constant_vals("half", &[], &[0.5])
        .constant_in("ln_scale", &[4], 0.5, 1.5)
        .constant_in("ln_bias", &[4], -0.5, 0.5)
        .constant("w", &[6, 4])
        .constant("wb", &[6])
        .node("Transpose", &["k"], &["kt"], vec![attr_ints("perm", &[0, 2, 1])])
        .node("MatMul", &["q", "kt"], &["s0"], vec![])
        .node("Mul", &["s0", "half"], &["s1"], vec![])
        .node("Softmax", &["s1"], &["p"], vec![ai("axis", -1)])
        .node("MatMul", &["p", "v"], &["o"], vec![])
        .node("LayerNormalization", &["o", "ln_scale", "ln_bias"], &["n"], vec![])
        .ints("flat", &[6, 4])
        .node("Reshape", &["n", "flat"], &["n2"], vec![])
        .node("Gemm", &["n2", "w", "wb"], &["g"], vec![ai("transB", 1)])
        .node("Erf", &["g"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

// ------------------------------------------------------------------ errors --

#[test]
fn every_supported_op_has_a_rule_and_unsupported_ops_have_none() {
    for op in SUPPORTED {
        assert!(attrpatch::autodiff::rules::lookup(op, "").is_some(), "{op}");
        assert!(attrpatch::autodiff::rules::lookup(op, "ai.onnx").is_some(), "{op}");
        assert!(attrpatch::autodiff::rules::lookup(op, "com.microsoft").is_none(), "{op}");
    }
    for op in ["Cos", "Abs", "Mod", "Gelu"] {
        assert!(!SUPPORTED.contains(&op), "{op}");
        assert!(attrpatch::autodiff::rules::lookup(op, "").is_none(), "{op}");
    }
}

#[test]
fn op_without_rule_on_the_path_names_op_and_node() {
    let e = case("op_without_rule_on_the_path_names_op_and_node", 17)
        .var("x", &[2, 3])
        .node("Exp", &["x"], &["e"], vec![])
        .named_node("my_cosine", "", "Cos", &["e"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[2, 3]]);
    assert!(e.contains("'Cos'") && e.contains("'my_cosine'"), "{e}");
}

#[test]
fn op_in_another_domain_names_domain_op_and_node() {
    let e = case("op_in_another_domain_names_domain_op_and_node", 17)
        .var("x", &[2, 3])
        .named_node("ms_gelu", "com.microsoft", "Gelu", &["x"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[2, 3]]);
    assert!(e.contains("com.microsoft:Gelu") && e.contains("'ms_gelu'"), "{e}");
}

#[test]
fn op_without_rule_off_the_path_is_fine() {
    // Cos on a branch the loss does not use needs no rule.
    case("op_without_rule_off_the_path_is_fine", 17)
        .var("x", &[2, 3])
        .node("Cos", &["x"], &["unused"], vec![])
        .node("Tanh", &["x"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn loss_independent_of_the_variables_is_an_error() {
    let e = case("loss_independent_of_the_variables_is_an_error", 17)
        .var("x", &[2, 3])
        .constant("c", &[2, 3])
        .node("Exp", &["c"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[2, 3]]);
    assert!(e.contains("does not depend"), "{e}");
}

// ------------------------------------------------------ Slice, Reciprocal --

#[test]
fn reciprocal() {
    case("reciprocal", 17)
        .var_in("x", &[2, 3], 0.5, 2.0)
        .node("Reciprocal", &["x"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn slice_last_axis_halves_like_rotate_half() {
    case("slice_last_axis_halves_like_rotate_half", 17)
        .var("x", &[2, 3, 4])
        .ints("s0", &[0])
        .ints("e0", &[2])
        .ints("s1", &[2])
        .ints("e1", &[i64::MAX])
        .ints("ax", &[-1])
        .node("Slice", &["x", "s0", "e0", "ax"], &["lo"], vec![])
        .node("Slice", &["x", "s1", "e1", "ax"], &["hi"], vec![])
        .node("Neg", &["hi"], &["nhi"], vec![])
        .node("Concat", &["nhi", "lo"], &["y"], vec![ai("axis", -1)])
        .loss(&["y"])
        .check();
}

#[test]
fn slice_negative_bounds_two_axes() {
    case("slice_negative_bounds_two_axes", 17)
        .var("x", &[4, 5])
        .ints("s", &[-3, 1])
        .ints("e", &[-1, 100])
        .ints("ax", &[0, 1])
        .node("Slice", &["x", "s", "e", "ax"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn slice_default_axes_and_explicit_steps_of_one() {
    case("slice_default_axes_and_explicit_steps_of_one", 13)
        .var("x", &[3, 4])
        .ints("s", &[1, 0])
        .ints("e", &[3, 3])
        .ints("ax", &[0, 1])
        .ints("st", &[1, 1])
        .node("Slice", &["x", "s", "e", "ax", "st"], &["y"], vec![])
        .loss(&["y"])
        .check();
}

#[test]
fn slice_with_step_two_is_a_clear_error() {
    let e = case("slice_with_step_two_is_a_clear_error", 17)
        .var("x", &[4])
        .ints("s", &[0])
        .ints("e", &[4])
        .ints("ax", &[0])
        .ints("st", &[2])
        .node("Slice", &["x", "s", "e", "ax", "st"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[2]]);
    assert!(e.contains("Slice") && e.contains("step"), "{e}");
}

#[test]
fn slice_with_bounds_computed_from_the_shape() {
    // Rotary embeddings' x[..., : x.shape[-1] // 2]: the bounds are not constants.
    case("slice_with_bounds_computed_from_the_shape", 17)
        .var("x", &[2, 3, 4])
        .ints("m1", &[-1])
        .ints("big", &[i64::MAX])
        .ints("two", &[2])
        .ints("zero", &[0])
        .node("Shape", &["x"], &["sh"], vec![])
        .node("Slice", &["sh", "m1", "big"], &["last"], vec![])
        .node("Div", &["last", "two"], &["half"], vec![])
        .node("Slice", &["x", "zero", "half", "m1"], &["lo"], vec![])
        .node("Slice", &["x", "half", "big", "m1"], &["hi"], vec![])
        .node("Mul", &["lo", "hi"], &["y"], vec![])
        .loss(&["y"])
        .check();
}
