//! Every gradient rule (`attrpatch::autodiff::rules::RULES`) against
//! central finite differences. The gradient graph runs on ONNX Runtime's CPU
//! provider and on tract; both must match the finite differences (which
//! ONNX Runtime computes). A case tract cannot run says so with
//! `.ort_only("why")`, and then tract must indeed fail on it, so the mark
//! cannot go stale. `grad_case!(name, opset, |c| c...)` declares a case whose
//! label is the test's name; `every_rule_has_a_finite_difference_case`
//! checks that each op in the rule table appears in one.
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

use crate::common::rng::Rng;
use attrpatch::augment::value_info;
use attrpatch::autodiff::rules::{docs_list, lookup, supported, RULES};
use attrpatch::autodiff::Backward;
use attrpatch::onnx::builder::{attr_f, attr_i, attr_ints, GraphBuilder};
use attrpatch::onnx::consts::{float_tensor, i64_tensor, BOOL, DOUBLE, FLOAT};
use attrpatch::onnx::facts::{analyse_with_probe, Dim};
use attrpatch::onnx::graph::{all_names, value_info_unshaped};
use attrpatch::onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use ndarray::{ArrayD, IxDyn};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynValue, Tensor};
use prost::Message;
use std::collections::HashSet;
use std::path::Path;

// ---------------------------------------------------------------- harness --

/// (shape, values) of each output a run was asked for.
type Outputs = Vec<(Vec<usize>, Vec<f64>)>;

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
    /// Why tract cannot run this case's gradient graph (None: it must).
    ort_only: Option<String>,
}

/// Gradients through the Backward graph and by central differences.
struct Checked {
    /// Per variable: name, analytic, numeric.
    grads: Vec<(String, Vec<f64>, Vec<f64>)>,
    /// Per extra (intermediate) wrt tensor: name, analytic.
    extra: Vec<(String, Vec<f64>)>,
    /// tract's gradients of the variables (shape, values), or why it failed.
    tract: Result<Outputs, String>,
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
        ort_only: None,
    }
}

/// A finite-difference case as a test: `grad_case!(name, opset, |c| c.var(..).node(..).loss(..))`.
/// The case's label (and its random stream) is the test's name.
macro_rules! grad_case {
    ($name:ident, $opset:expr, |$c:ident| $body:expr) => {
        #[test]
        fn $name() {
            let $c = case(stringify!($name), $opset);
            let built: Case = $body;
            built.check();
        }
    };
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

/// Runs a model with tract (optimised for the feeds' shapes); returns (shape,
/// values) of each requested output. A panic inside tract is an error here.
fn tract_run(
    bytes: &[u8],
    dtype: i32,
    feeds: &[(String, Vec<usize>, Vec<f64>)],
    outputs: &[String],
) -> Result<Outputs, String> {
    use tract_onnx::prelude::*;
    let attempt = || -> TractResult<Outputs> {
        let proto = tract_onnx::pb::ModelProto::decode(bytes)?;
        let names: Vec<String> =
            proto.graph.as_ref().map(|g| g.output.iter().map(|o| o.name.clone()).collect()).unwrap();
        let mut m = tract_onnx::onnx().model_for_proto_model(&proto)?;
        let mut inputs = TVec::new();
        for (i, (_, shape, vals)) in feeds.iter().enumerate() {
            let t: Tensor = if dtype == DOUBLE {
                tract_ndarray::ArrayD::from_shape_vec(shape.clone(), vals.clone())?.into()
            } else {
                tract_ndarray::ArrayD::from_shape_vec(shape.clone(), vals.iter().map(|&v| v as f32).collect())?.into()
            };
            m.set_input_fact(i, InferenceFact::dt_shape(t.datum_type(), shape))?;
            inputs.push(t.into_tvalue());
        }
        let plan = m.into_optimized()?.into_runnable()?;
        let outs = plan.run(inputs)?;
        let mut res = vec![];
        for name in outputs {
            let k = names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| tract_onnx::tract_core::internal::format_err!("no output '{name}'"))?;
            let t = outs[k].cast_to::<f64>()?;
            res.push((t.shape().to_vec(), t.to_plain_array_view::<f64>()?.iter().copied().collect()));
        }
        Ok(res)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(attempt)) {
        Ok(r) => r.map_err(|e| format!("{e:?}")),
        Err(_) => Err("tract panicked".into()),
    }
}

impl Case {
    /// tract cannot run this case's gradient graph (say why): the case checks
    /// ONNX Runtime only, and asserts that tract does fail.
    fn ort_only(mut self, why: &str) -> Self {
        self.ort_only = Some(why.into());
        self
    }
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
        let outs = self.loss_from.iter().map(|o| value_info_unshaped(o, self.dtype)).collect();
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
        let gm_bytes = gm.encode_to_vec();
        let var_grads = grad_names[..self.vars.len()].to_vec();
        let tract = tract_run(&gm_bytes, self.dtype, &self.feeds(), &var_grads);
        let mut gs = session(&gm_bytes).unwrap_or_else(|e| panic!("{}: gradient model: {e}", self.label));
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
        (self, Checked { grads, extra, tract })
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
        eprintln!("{}: ONNX Runtime ok, worst error {:.3} of tolerance", case.label, worst);
        case.check_tract(&c);
    }

    /// tract's gradients against the same finite differences, or, for a case
    /// marked `ort_only`, that tract does fail on it.
    fn check_tract(&self, c: &Checked) {
        match (&self.ort_only, &c.tract) {
            (Some(why), Err(e)) => {
                eprintln!("{}: ONNX Runtime only, tract cannot run it ({why}); tract says: {e}", self.label)
            }
            (Some(why), Ok(_)) => panic!(
                "{}: marked ort_only (\"{why}\") but tract ran it: remove the mark so tract is checked",
                self.label
            ),
            (None, Err(e)) => panic!(
                "{}: tract failed on the gradient graph: {e}\n(if tract truly cannot run an op here, mark the case \
                 .ort_only(\"why\"))",
                self.label
            ),
            (None, Ok(t)) => {
                let mut bad = vec![];
                let mut worst = 0f64;
                for ((name, _, n), (shape, a)) in c.grads.iter().zip(t) {
                    let v = self.vars.iter().find(|v| &v.name == name).unwrap();
                    assert_eq!(shape, &v.shape, "{}: tract's shape of the gradient of '{name}'", self.label);
                    for (i, (&a, &n)) in a.iter().zip(n).enumerate() {
                        let err = (a - n).abs();
                        worst = worst.max(err / (self.atol + self.rtol * n.abs()));
                        if err.is_nan() || err > self.atol + self.rtol * n.abs() {
                            bad.push(format!("  d loss / d {name}[{i}]: tract {a:.10e}, numeric {n:.10e}"));
                        }
                    }
                }
                assert!(
                    bad.is_empty(),
                    "{}: tract: {} gradient element(s) off:\n{}",
                    self.label,
                    bad.len(),
                    bad.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
                );
                eprintln!("{}: tract ok, worst error {:.3} of tolerance", self.label, worst);
            }
        }
    }
}

fn ai(name: &str, v: i64) -> AttributeProto {
    attr_i(name, v)
}

fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attrpatch::onnx::pb::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

// ------------------------------------------------------- elementwise, binary --

grad_case!(add_same_shape, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[2, 3])
    .node("Add", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(add_broadcast_row_vector, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[3])
    .node("Add", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

// [2,1,3] + [4,1] -> [2,4,3]: each side is summed over axes the other brings.
grad_case!(add_broadcast_both_operands, 17, |c| c
    .var("a", &[2, 1, 3])
    .var("b", &[4, 1])
    .node("Add", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(add_scalar_variable, 17, |c| c
    .var("a", &[2, 3])
    .var("s", &[])
    .node("Add", &["a", "s"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(add_constant_operand, 17, |c| c
    .var("a", &[3])
    .constant("c", &[2, 3])
    .node("Add", &["c", "a"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(sub_broadcast_column, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[2, 1])
    .node("Sub", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

// Only the subtrahend needs a gradient.
grad_case!(sub_constant_minuend, 17, |c| c
    .constant("c", &[2, 3])
    .var("b", &[3])
    .node("Sub", &["c", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(mul_broadcast_2x1x3_by_4x1, 17, |c| c
    .var("a", &[2, 1, 3])
    .var("b", &[4, 1])
    .node("Mul", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(mul_constant_operand, 17, |c| c
    .var("a", &[2, 3])
    .constant("c", &[3])
    .node("Mul", &["a", "c"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(div_same_shape, 17, |c| c
    .var("a", &[2, 3])
    .var_in("b", &[2, 3], 0.5, 2.0)
    .node("Div", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(div_broadcast_divisor, 17, |c| c
    .var("a", &[2, 3])
    .var_in("b", &[3], 0.5, 2.0)
    .node("Div", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(div_broadcast_divisor_column_3d, 17, |c| c
    .var("a", &[2, 3, 4])
    .var_in("b", &[3, 1], 0.5, 2.0)
    .node("Div", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(div_broadcast_numerator, 17, |c| c
    .var("a", &[3])
    .var_in("b", &[2, 3], 0.5, 2.0)
    .node("Div", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(div_constant_divisor, 17, |c| c
    .var("a", &[2, 3])
    .constant_in("c", &[3], 0.5, 2.0)
    .node("Div", &["a", "c"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(div_constant_numerator, 17, |c| c
    .constant("c", &[2, 3])
    .var_in("b", &[2, 1], 0.5, 2.0)
    .node("Div", &["c", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(pow_constant_exponent, 17, |c| c
    .var_in("a", &[2, 3], 0.5, 2.0)
    .constant_vals("p", &[], &[2.5])
    .node("Pow", &["a", "p"], &["y"], vec![])
    .loss(&["y"]));

// An integer exponent: the rule casts it to the base's type. Negative bases are fine.
grad_case!(pow_constant_int64_exponent, 17, |c| c
    .var_away_from_zero("a", &[2, 3])
    .int_scalar("p", 3)
    .node("Pow", &["a", "p"], &["y"], vec![])
    .loss(&["y"]));

// Base and exponent both variables, the exponent broadcast along rows.
grad_case!(pow_variable_exponent, 17, |c| c
    .var_in("a", &[2, 3], 0.5, 2.0)
    .var_in("p", &[3], -1.5, 2.5)
    .node("Pow", &["a", "p"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(pow_variable_exponent_constant_base, 17, |c| c
    .constant_in("a", &[2, 3], 0.5, 2.0)
    .var_in("p", &[2, 1], -1.0, 2.0)
    .node("Pow", &["a", "p"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(pow_broadcast_base, 17, |c| c
    .var_in("a", &[3], 0.5, 2.0)
    .var_in("p", &[2, 3], -1.0, 2.0)
    .node("Pow", &["a", "p"], &["y"], vec![])
    .loss(&["y"]));

// cond [2,3], a [3], b [2,1]: each branch is summed where it was broadcast.
grad_case!(where_broadcast_branches, 17, |c| c
    .bools("c", &[2, 3], &[true, false, true, false, false, true])
    .var("a", &[3])
    .var("b", &[2, 1])
    .node("Where", &["c", "a", "b"], &["y"], vec![])
    .loss(&["y"]));

// The condition brings the leading axis; the branches are [4,3] and [1].
grad_case!(where_condition_broadcast, 17, |c| c
    .bools("c", &[2, 1, 3], &[true, false, true, false, true, true])
    .var("a", &[4, 3])
    .var("b", &[1])
    .node("Where", &["c", "a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(where_one_branch_constant, 17, |c| c
    .bools("c", &[2, 3], &[false, false, true, true, false, true])
    .constant("a", &[2, 3])
    .var("b", &[2, 3])
    .node("Where", &["c", "a", "b"], &["y"], vec![])
    .loss(&["y"]));

// -------------------------------------------------------- elementwise, unary --

grad_case!(neg, 17, |c| c.var("x", &[2, 3]).node("Neg", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(sqrt, 17, |c| c.var_in("x", &[2, 3], 0.3, 2.0).node("Sqrt", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(tanh, 17, |c| c.var_in("x", &[2, 3], -2.0, 2.0).node("Tanh", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(exp, 17, |c| c.var_in("x", &[2, 3], -2.0, 2.0).node("Exp", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(log, 17, |c| c.var_in("x", &[2, 3], 0.3, 3.0).node("Log", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(sigmoid, 17, |c| c
    .var_in("x", &[2, 3], -3.0, 3.0)
    .node("Sigmoid", &["x"], &["y"], vec![])
    .loss(&["y"])
    .ort_only("tract has no float64 Sigmoid (sigmoid_float32 runs on tract)"));

// float32, so that tract (no float64 Sigmoid) runs it too; tolerance as erf_float32.
grad_case!(sigmoid_float32, 17, |c| c
    .float32(1e-2, 2e-4, 2e-3)
    .var_in("x", &[2, 3], -3.0, 3.0)
    .node("Sigmoid", &["x"], &["y"], vec![])
    .loss(&["y"]));

// float32: ONNX Runtime's CPU provider has Erf for float only (no double
// kernel). Step 1e-2 (float32 rounding of the loss, ~1e-7 relative, over
// 2h gives ~1e-5; the truncation error h^2/6 * |erf'''| <= 2e-5);
// tolerance 2e-4 + 2e-3 * |numeric|.
grad_case!(erf_float32, 17, |c| c
    .float32(1e-2, 2e-4, 2e-3)
    .var_in("x", &[2, 3], -1.5, 1.5)
    .node("Erf", &["x"], &["y"], vec![])
    .loss(&["y"]));

// Values at least 0.2 from the kink, so the finite difference is exact.
grad_case!(relu, 17, |c| c.var_away_from_zero("x", &[3, 4]).node("Relu", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(identity, 17, |c| c.var("x", &[2, 3]).node("Identity", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(cast_same_type, 17, |c| c
    .var("x", &[2, 3])
    .node("Cast", &["x"], &["y"], vec![ai("to", DOUBLE as i64)])
    .loss(&["y"]));

// double -> float -> double: both Cast rules, each direction. The loss is
// piecewise constant at float32 resolution (~6e-8 relative), so the step
// is 1e-2 (the function is linear: no truncation error) and the tolerance
// 1e-5 + 1e-4 * |numeric| (rounding of x +- h to float32 over 2h: <= 6e-6).
grad_case!(cast_round_trip_through_float32, 17, |c| c
    .tolerance(1e-2, 1e-5, 1e-4)
    .var("x", &[2, 3])
    .node("Cast", &["x"], &["f"], vec![ai("to", FLOAT as i64)])
    .node("Cast", &["f"], &["y"], vec![ai("to", DOUBLE as i64)])
    .loss(&["y"]));

// ----------------------------------------------------------------- MatMul --

grad_case!(matmul_2d, 17, |c| c
    .var("a", &[3, 4])
    .var("b", &[4, 2])
    .node("MatMul", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

// [2,2,3] @ [3,4]: the rank-2 operand's gradient sums over the batch.
grad_case!(matmul_broadcast_batch_rhs_2d, 17, |c| c
    .var("a", &[2, 2, 3])
    .var("b", &[3, 4])
    .node("MatMul", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(matmul_broadcast_batch_lhs_2d, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[2, 3, 4])
    .node("MatMul", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

// [1,2,3] @ [2,3,4]: a batch dim of 1 against 2.
grad_case!(matmul_broadcast_batch_of_one, 17, |c| c
    .var("a", &[1, 2, 3])
    .var("b", &[2, 3, 4])
    .node("MatMul", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

// [2,1,2,3] @ [3,3,2] -> [2,3,2,2]: each operand broadcast along a different axis.
grad_case!(matmul_broadcast_4d_both_sides, 17, |c| c
    .var("a", &[2, 1, 2, 3])
    .var("b", &[3, 3, 2])
    .node("MatMul", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(matmul_constant_weight, 17, |c| c
    .var("a", &[2, 2, 3])
    .constant("w", &[3, 4])
    .node("MatMul", &["a", "w"], &["y"], vec![])
    .loss(&["y"]));

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

grad_case!(gemm_no_c, 17, |c| c
    .var("a", &[3, 2])
    .var("b", &[2, 4])
    .node("Gemm", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(gemm_full_c_default_attrs, 17, |c| c
    .var("a", &[3, 2])
    .var("b", &[2, 4])
    .var("c", &[3, 4])
    .node("Gemm", &["a", "b", "c"], &["y"], vec![])
    .loss(&["y"]));

// A is [2,3] (op(A) = A^T is [3,2]); C [4] broadcast over rows.
grad_case!(gemm_trans_a_alpha_beta_c_vector, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[2, 4])
    .var("c", &[4])
    .node("Gemm", &["a", "b", "c"], &["y"], vec![ai("transA", 1), attr_f("alpha", 0.75), attr_f("beta", 1.25)])
    .loss(&["y"])
    .ort_only("tract's Gemm multiplies a float64 C by a float32 beta and fails (gemm_c_float32 runs on tract)"));

// B is [4,2] (op(B) = B^T is [2,4]); C [1,4].
grad_case!(gemm_trans_b_c_row, 17, |c| c
    .var("a", &[3, 2])
    .var("b", &[4, 2])
    .var("c", &[1, 4])
    .node("Gemm", &["a", "b", "c"], &["y"], vec![ai("transB", 1), attr_f("alpha", -0.5), attr_f("beta", 2.0)])
    .loss(&["y"])
    .ort_only("tract's Gemm multiplies a float64 C by a float32 beta and fails (gemm_c_float32 runs on tract)"));

grad_case!(gemm_trans_both_c_full, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[4, 2])
    .var("c", &[3, 4])
    .node("Gemm", &["a", "b", "c"], &["y"], vec![ai("transA", 1), ai("transB", 1), attr_f("beta", 0.5)])
    .loss(&["y"])
    .ort_only("tract's Gemm multiplies a float64 C by a float32 beta and fails (gemm_c_float32 runs on tract)"));

grad_case!(gemm_c_column, 17, |c| c
    .var("a", &[3, 2])
    .var("b", &[2, 4])
    .var("c", &[3, 1])
    .node("Gemm", &["a", "b", "c"], &["y"], vec![attr_f("beta", 0.25)])
    .loss(&["y"])
    .ort_only("tract's Gemm multiplies a float64 C by a float32 beta and fails (gemm_c_float32 runs on tract)"));

grad_case!(gemm_c_scalar, 17, |c| c
    .var("a", &[3, 2])
    .var("b", &[2, 4])
    .var("c", &[])
    .node("Gemm", &["a", "b", "c"], &["y"], vec![attr_f("beta", 1.5)])
    .loss(&["y"])
    .ort_only("tract's Gemm multiplies a float64 C by a float32 beta and fails (gemm_c_float32 runs on tract)"));

// The usual linear layer: only A needs a gradient.
grad_case!(gemm_constant_weights_and_bias, 17, |c| c
    .var("a", &[3, 2])
    .constant("w", &[4, 2])
    .constant("bias", &[4])
    .node("Gemm", &["a", "w", "bias"], &["y"], vec![ai("transB", 1)])
    .loss(&["y"])
    .ort_only("tract's Gemm multiplies a float64 C by a float32 beta and fails (gemm_c_float32 runs on tract)"));

// ---------------------------------------------------------- shape movers --

grad_case!(reshape_with_minus_one_and_zero, 17, |c| c
    .var("x", &[2, 3, 4])
    .ints("s", &[0, -1, 2])
    .node("Reshape", &["x", "s"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(flatten_axis2, 17, |c| c
    .var("x", &[2, 3, 2, 2])
    .node("Flatten", &["x"], &["y"], vec![ai("axis", 2)])
    .loss(&["y"]));

grad_case!(flatten_default_axis, 17, |c| c.var("x", &[2, 3, 2]).node("Flatten", &["x"], &["y"], vec![]).loss(&["y"]));

grad_case!(squeeze_axes_attr_opset11, 11, |c| c
    .var("x", &[2, 1, 3, 1])
    .node("Squeeze", &["x"], &["y"], vec![attr_ints("axes", &[1, -1])])
    .loss(&["y"]));

grad_case!(squeeze_axes_input_opset13, 13, |c| c
    .var("x", &[2, 1, 3, 1])
    .ints("axes", &[1, 3])
    .node("Squeeze", &["x", "axes"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(unsqueeze_axes_attr_opset11, 11, |c| c
    .var("x", &[2, 3])
    .node("Unsqueeze", &["x"], &["y"], vec![attr_ints("axes", &[0, 3])])
    .loss(&["y"]));

grad_case!(unsqueeze_axes_input_opset13, 13, |c| c
    .var("x", &[2, 3])
    .ints("axes", &[1, -1])
    .node("Unsqueeze", &["x", "axes"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(transpose_perm, 17, |c| c
    .var("x", &[2, 3, 4])
    .node("Transpose", &["x"], &["y"], vec![attr_ints("perm", &[2, 0, 1])])
    .loss(&["y"]));

grad_case!(transpose_default_perm_reverses, 17, |c| c
    .var("x", &[2, 3, 4])
    .node("Transpose", &["x"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(expand_row_to_matrix, 17, |c| c
    .var("x", &[3])
    .ints("s", &[2, 3])
    .node("Expand", &["x", "s"], &["y"], vec![])
    .loss(&["y"]));

// [3,1] -> [2,3,4]: summed over the new axis 0 and the unit axis 2.
grad_case!(expand_new_leading_and_unit_axes, 17, |c| c
    .var("x", &[3, 1])
    .ints("s", &[2, 1, 4])
    .node("Expand", &["x", "s"], &["y"], vec![])
    .loss(&["y"]));

// Expand broadcasts both ways: shape [1,1] against x [2,3] leaves x as is.
grad_case!(expand_target_smaller_than_input, 17, |c| c
    .var("x", &[2, 3])
    .ints("s", &[1, 1])
    .node("Expand", &["x", "s"], &["y"], vec![])
    .loss(&["y"]));

// ----------------------------------------------------------------- Split --

// Output 1 is not in the loss: its gradient is the zeros path.
grad_case!(split_sizes_input_opset13_loss_uses_first_and_last, 13, |c| c
    .var("x", &[2, 4, 3])
    .ints("sizes", &[1, 2, 1])
    .node("Split", &["x", "sizes"], &["p0", "p1", "p2"], vec![ai("axis", 1)])
    .loss(&["p0", "p2"]));

grad_case!(split_num_outputs_opset18_loss_uses_middle, 18, |c| c
    .var("x", &[2, 6])
    .node("Split", &["x"], &["p0", "p1", "p2"], vec![ai("axis", 1), ai("num_outputs", 3)])
    .loss(&["p1"]));

grad_case!(split_attr_opset11_negative_axis_loss_uses_last, 11, |c| c
    .var("x", &[3, 5])
    .node("Split", &["x"], &["p0", "p1"], vec![ai("axis", -1), attr_ints("split", &[2, 3])])
    .loss(&["p1"]));

grad_case!(split_equal_default_axis_all_outputs_used, 13, |c| c
    .var("x", &[4, 3])
    .node("Split", &["x"], &["p0", "p1"], vec![])
    .loss(&["p0", "p1"]));

// ---------------------------------------------------------------- Concat --

grad_case!(concat_two_variables_and_a_constant, 17, |c| c
    .var("a", &[2, 1, 3])
    .constant("c", &[2, 2, 3])
    .var("b", &[2, 3, 3])
    .node("Concat", &["a", "c", "b"], &["y"], vec![ai("axis", 1)])
    .loss(&["y"]));

grad_case!(concat_negative_axis, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[2, 1])
    .node("Concat", &["a", "b"], &["y"], vec![ai("axis", -1)])
    .loss(&["y"]));

// One input used twice by the same node: both pieces accumulate.
grad_case!(concat_same_tensor_twice, 17, |c| c
    .var("a", &[2, 3])
    .node("Concat", &["a", "a"], &["y"], vec![ai("axis", 0)])
    .loss(&["y"]));

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

grad_case!(reduce_sum_axes_attr_opset12_keepdims1, 12, |c| c
    .var("x", &[2, 3, 4])
    .node("ReduceSum", &["x"], &["y"], vec![attr_ints("axes", &[1]), ai("keepdims", 1)])
    .loss(&["y"]));

grad_case!(reduce_sum_axes_attr_opset11_keepdims0_negative_axes, 11, |c| c
    .var("x", &[2, 3, 4])
    .node("ReduceSum", &["x"], &["y"], vec![attr_ints("axes", &[-1, 0]), ai("keepdims", 0)])
    .loss(&["y"]));

grad_case!(reduce_sum_axes_input_opset13_keepdims0, 13, |c| c
    .var("x", &[2, 3, 4])
    .ints("axes", &[2, 0])
    .node("ReduceSum", &["x", "axes"], &["y"], vec![ai("keepdims", 0)])
    .loss(&["y"]));

grad_case!(reduce_sum_axes_input_opset18_keepdims1, 18, |c| c
    .var("x", &[2, 3, 4])
    .ints("axes", &[-2])
    .node("ReduceSum", &["x", "axes"], &["y"], vec![ai("keepdims", 1)])
    .loss(&["y"]));

grad_case!(reduce_sum_no_axes_all_opset18_keepdims0, 18, |c| c
    .var("x", &[2, 3])
    .node("ReduceSum", &["x"], &["y"], vec![ai("keepdims", 0)])
    .loss(&["y"]));

grad_case!(reduce_sum_no_axes_all_opset12_keepdims1, 12, |c| c
    .var("x", &[2, 3])
    .node("ReduceSum", &["x"], &["y"], vec![])
    .loss(&["y"]));

// noop_with_empty_axes = 1 and no axes: an identity.
grad_case!(reduce_sum_empty_axes_noop_opset18, 18, |c| c
    .var("x", &[2, 3])
    .node("ReduceSum", &["x"], &["y"], vec![ai("noop_with_empty_axes", 1)])
    .loss(&["y"]));

// An empty axes tensor (noop_with_empty_axes = 0) reduces every axis.
grad_case!(reduce_sum_empty_axes_input_opset18_reduces_all, 18, |c| c
    .var("x", &[2, 3])
    .ints("axes", &[])
    .node("ReduceSum", &["x", "axes"], &["y"], vec![ai("keepdims", 1)])
    .loss(&["y"]));

grad_case!(reduce_mean_axes_attr_opset13_keepdims1, 13, |c| c
    .var("x", &[2, 3, 4])
    .node("ReduceMean", &["x"], &["y"], vec![attr_ints("axes", &[-1]), ai("keepdims", 1)])
    .loss(&["y"]));

grad_case!(reduce_mean_axes_attr_opset14_keepdims0, 14, |c| c
    .var("x", &[2, 3, 4])
    .node("ReduceMean", &["x"], &["y"], vec![attr_ints("axes", &[0, 2]), ai("keepdims", 0)])
    .loss(&["y"]));

grad_case!(reduce_mean_axes_input_opset18_keepdims0, 18, |c| c
    .var("x", &[2, 3, 4])
    .ints("axes", &[1])
    .node("ReduceMean", &["x", "axes"], &["y"], vec![ai("keepdims", 0)])
    .loss(&["y"]));

grad_case!(reduce_mean_axes_input_opset18_keepdims1_two_axes, 18, |c| c
    .var("x", &[2, 3, 4])
    .ints("axes", &[-1, 1])
    .node("ReduceMean", &["x", "axes"], &["y"], vec![ai("keepdims", 1)])
    .loss(&["y"]));

grad_case!(reduce_mean_no_axes_all_opset18_keepdims0, 18, |c| c
    .var("x", &[2, 3])
    .node("ReduceMean", &["x"], &["y"], vec![ai("keepdims", 0)])
    .loss(&["y"]));

grad_case!(reduce_mean_no_axes_all_opset13_keepdims1, 13, |c| c
    .var("x", &[2, 3])
    .node("ReduceMean", &["x"], &["y"], vec![ai("keepdims", 1)])
    .loss(&["y"]));

// ----------------------------------------------------- softmax family --

grad_case!(softmax_last_axis, 13, |c| c
    .var_in("x", &[2, 3, 4], -2.0, 2.0)
    .node("Softmax", &["x"], &["y"], vec![ai("axis", -1)])
    .loss(&["y"]));

grad_case!(softmax_axis1, 13, |c| c
    .var_in("x", &[2, 3, 4], -2.0, 2.0)
    .node("Softmax", &["x"], &["y"], vec![ai("axis", 1)])
    .loss(&["y"]));

grad_case!(softmax_default_axis_opset18, 18, |c| c
    .var_in("x", &[3, 4], -2.0, 2.0)
    .node("Softmax", &["x"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(log_softmax_last_axis, 13, |c| c
    .var_in("x", &[2, 3, 4], -2.0, 2.0)
    .node("LogSoftmax", &["x"], &["y"], vec![ai("axis", -1)])
    .loss(&["y"]));

grad_case!(log_softmax_axis1, 13, |c| c
    .var_in("x", &[2, 3, 4], -2.0, 2.0)
    .node("LogSoftmax", &["x"], &["y"], vec![ai("axis", 1)])
    .loss(&["y"]));

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

grad_case!(layer_norm_last_axis_x_scale_bias, 17, |c| c
    .var("x", &[2, 3, 4])
    .var_in("scale", &[4], 0.5, 1.5)
    .var("bias", &[4])
    .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![ai("axis", -1), attr_f("epsilon", 1e-5)])
    .loss(&["y"]));

grad_case!(layer_norm_axis1_normalises_two_axes, 17, |c| c
    .var("x", &[2, 3, 4])
    .var_in("scale", &[3, 4], 0.5, 1.5)
    .var("bias", &[3, 4])
    .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![ai("axis", 1)])
    .loss(&["y"]));

// axis -2 on rank 3 normalises the last two axes; a large epsilon makes
// a wrong epsilon in the rule visible.
grad_case!(layer_norm_negative_axis_two_axes_large_epsilon, 18, |c| c
    .var("x", &[2, 3, 4])
    .var_in("scale", &[3, 4], 0.5, 1.5)
    .var("bias", &[3, 4])
    .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![ai("axis", -2), attr_f("epsilon", 0.25)])
    .loss(&["y"]));

grad_case!(layer_norm_no_bias_constant_scale, 17, |c| c
    .var("x", &[3, 5])
    .constant_in("scale", &[5], 0.5, 1.5)
    .node("LayerNormalization", &["x", "scale"], &["y"], vec![])
    .loss(&["y"]));

// X needs no gradient; Scale and B do.
grad_case!(layer_norm_constant_input_scale_and_bias_only, 17, |c| c
    .constant("x", &[3, 4])
    .var("scale", &[4])
    .var("bias", &[4])
    .node("LayerNormalization", &["x", "scale", "bias"], &["y"], vec![])
    .loss(&["y"]));

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

grad_case!(rms_norm_opset23_last_axis, 23, |c| c
    .var("x", &[2, 3, 4])
    .var_in("scale", &[4], 0.5, 1.5)
    .node("RMSNormalization", &["x", "scale"], &["y"], vec![ai("axis", -1), attr_f("epsilon", 1e-5)])
    .loss(&["y"]));

// axis 1 on rank 3 normalises two axes; a large epsilon makes a wrong one visible.
grad_case!(rms_norm_opset23_two_axes_large_epsilon_constant_scale, 23, |c| c
    .var("x", &[2, 3, 4])
    .constant_in("scale", &[3, 4], 0.5, 1.5)
    .node("RMSNormalization", &["x", "scale"], &["y"], vec![ai("axis", 1), attr_f("epsilon", 0.25)])
    .loss(&["y"]));

// ----------------------------------------------------------- accumulation --

grad_case!(accumulate_mul_of_a_tensor_with_itself, 17, |c| c
    .var("x", &[2, 3])
    .node("Mul", &["x", "x"], &["y"], vec![])
    .loss(&["y"]));

// x -> Tanh -> t, x * c -> m, y = t + m: two contributions summed.
grad_case!(accumulate_tensor_feeding_two_nodes, 17, |c| c
    .var("x", &[2, 3])
    .constant("c", &[3])
    .node("Tanh", &["x"], &["t"], vec![])
    .node("Mul", &["x", "c"], &["m"], vec![])
    .node("Add", &["t", "m"], &["y"], vec![])
    .loss(&["y"]));

// e = exp(x) feeds Mul(e, e), a Softmax and the loss directly.
grad_case!(accumulate_intermediate_used_by_two_nodes_and_the_loss, 17, |c| c
    .var("x", &[2, 3])
    .node("Exp", &["x"], &["e"], vec![])
    .node("Mul", &["e", "e"], &["sq"], vec![])
    .node("Softmax", &["e"], &["s"], vec![])
    .loss(&["sq", "s", "e"]));

// b [3] is used at shape [3] and broadcast at [2,3]: both reduced to [3] before summing.
grad_case!(accumulate_broadcast_contributions_of_different_shapes, 17, |c| c
    .var("a", &[2, 3])
    .var("b", &[3])
    .node("Mul", &["a", "b"], &["m"], vec![])
    .node("Exp", &["b"], &["e"], vec![])
    .loss(&["m", "e"]));

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

// q,k,v [2,3,4]: softmax(q @ k^T / 2 + mask) @ v, then LayerNorm and a
// Gemm-free projection; the rules meet at broadcasts and accumulations.
grad_case!(chain_attention_like_block, 18, |c| c
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
    .loss(&["y"]));

// The same kind of block in float32 (the element type of real models), to
// catch a rule that emits constants or zeros in the wrong type. float32
// tolerance: step 1e-2, |analytic - numeric| <= 1e-3 + 1e-2 * |numeric|
// (loss rounding ~1e-7 relative over 2h, plus the h^2 truncation error).
grad_case!(chain_attention_like_block_float32, 18, |c| c
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
    .loss(&["y"]));

// ------------------------------------------------------------------ errors --

#[test]
fn rule_table_lookup_and_supported_agree_both_ways() {
    let ops = supported();
    // Every op in the table is found, in the default domain under both spellings,
    // and its lookup gives the table's own rule (no op listed twice).
    for r in RULES {
        assert_eq!(r.domain, "", "{}: rules emit and match default-domain ops", r.op);
        assert_eq!(ops.iter().filter(|o| **o == r.op).count(), 1, "{} is in the table twice", r.op);
        assert!(lookup(r.op, "").is_some_and(|f| f as usize == r.rule as usize), "{}", r.op);
        assert!(lookup(r.op, "ai.onnx").is_some_and(|f| f as usize == r.rule as usize), "{}", r.op);
        assert!(lookup(r.op, "com.microsoft").is_none(), "{}", r.op);
    }
    // And nothing outside the table has a rule.
    assert_eq!(ops.len(), RULES.len());
    for op in ["Tan", "Atan", "Mod", "ReduceMax", "Mish", "ArgMax", "Equal", "Less", "add", ""] {
        assert!(!ops.contains(&op), "{op}");
        assert!(lookup(op, "").is_none(), "{op}");
    }
}

/// The ops that `grad_case!` cases of this file put in their graphs.
fn ops_in_grad_cases() -> std::collections::BTreeMap<String, Vec<String>> {
    let src = include_str!("gradients.rs");
    let mut found: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let marker = concat!("grad_case", "!(");
    for chunk in src.split(marker).skip(1) {
        let name: String = chunk.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let body = &chunk[..chunk.find("\n);").unwrap_or(chunk.len())];
        for piece in body.split(".node(\"").skip(1) {
            let op: String = piece.chars().take_while(|c| c.is_alphanumeric()).collect();
            found.entry(op).or_default().push(name.clone());
        }
    }
    found
}

#[test]
fn every_rule_has_a_finite_difference_case() {
    let found = ops_in_grad_cases();
    assert!(found.len() > 20, "the parser of this file found only {:?}", found.keys());
    let missing: Vec<&str> = RULES.iter().map(|r| r.op).filter(|op| !found.contains_key(*op)).collect();
    assert!(missing.is_empty(), "ops with a rule but no grad_case!: {missing:?}");
}

#[test]
fn the_book_lists_exactly_the_rule_table() {
    // The list moved from the README into the book's method chapter.
    let method = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src/method.md")).unwrap();
    let start = method.find("Gradient rules (").expect("docs/src/method.md has a 'Gradient rules (' paragraph");
    let para = &method[start..];
    let para = &para[..para.find("\n\n").unwrap_or(para.len())];
    let list = para.split_once("):").map(|(_, l)| l).expect("'Gradient rules (...): A, B, ...'");
    let list = &list[..list.find('.').expect("the list ends with a full stop")];
    let listed: Vec<&str> = list.split(',').map(|s| s.trim()).collect();
    let table = supported();
    assert_eq!(
        listed,
        table,
        "docs/src/method.md's rule list differs from the table; it should read:\n{}",
        docs_list()
    );
}

#[test]
fn op_without_rule_on_the_path_names_op_and_node() {
    let e = case("op_without_rule_on_the_path_names_op_and_node", 17)
        .var("x", &[2, 3])
        .node("Exp", &["x"], &["e"], vec![])
        .named_node("my_tangent", "", "Tan", &["e"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[2, 3]]);
    assert!(e.contains("no gradient rule for op 'Tan'") && e.contains("'my_tangent'"), "{e}");
}

#[test]
fn every_op_without_rule_is_named_at_once() {
    // Three nodes of two ops without a rule: one error lists all three (not
    // just the first met). Missing rules are found before any rule runs.
    let e = case("every_op_without_rule_is_named_at_once", 17)
        .var("x", &[2, 3])
        .named_node("tan_a", "", "Tan", &["x"], &["t1"], vec![])
        .named_node("atan_b", "", "Atan", &["t1"], &["t2"], vec![])
        .named_node("tan_c", "", "Tan", &["x"], &["t3"], vec![])
        .node("Add", &["t2", "t3"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[2, 3]]);
    for want in ["3 nodes", "no gradient rule for op 'Tan' (node 'tan_a')", "'atan_b'", "'tan_c'", "'Atan'"] {
        assert!(e.contains(want), "'{want}' missing from: {e}");
    }
}

#[test]
fn every_rule_refusal_is_named_at_once() {
    // Two rules that refuse their nodes: both named in one error, with the reasons.
    let e = case("every_rule_refusal_is_named_at_once", 18)
        .var("x", &[2, 3])
        .constant("w", &[3, 4])
        .named_node("einsum_a", "", "Einsum", &["x", "w"], &["t1"], vec![attr_s("equation", "ij,jk->k")])
        .ints("pads", &[1, 1])
        .named_node("pad_b", "", "Pad", &["t1", "pads"], &["y"], vec![attr_s("mode", "reflect")])
        .loss(&["y"])
        .backward_error(&[&[6]]);
    assert!(e.contains("2 nodes") && e.contains("'einsum_a'") && e.contains("ij,jk->k"), "{e}");
    assert!(e.contains("'pad_b'") && e.contains("mode 'reflect'"), "{e}");
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

// Floor (no rule) on a branch the loss does not use needs no rule.
grad_case!(op_without_rule_off_the_path_is_fine, 17, |c| c
    .var("x", &[2, 3])
    .named_node("unused_floor", "", "Floor", &["x"], &["unused"], vec![])
    .node("Tanh", &["x"], &["y"], vec![])
    .loss(&["y"]));

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

grad_case!(reciprocal, 17, |c| c
    .var_in("x", &[2, 3], 0.5, 2.0)
    .node("Reciprocal", &["x"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(slice_last_axis_halves_like_rotate_half, 17, |c| c
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
    .loss(&["y"]));

grad_case!(slice_negative_bounds_two_axes, 17, |c| c
    .var("x", &[4, 5])
    .ints("s", &[-3, 1])
    .ints("e", &[-1, 100])
    .ints("ax", &[0, 1])
    .node("Slice", &["x", "s", "e", "ax"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(slice_default_axes_and_explicit_steps_of_one, 13, |c| c
    .var("x", &[3, 4])
    .ints("s", &[1, 0])
    .ints("e", &[3, 3])
    .ints("ax", &[0, 1])
    .ints("st", &[1, 1])
    .node("Slice", &["x", "s", "e", "ax", "st"], &["y"], vec![])
    .loss(&["y"]));

// Rotary embeddings' x[..., : x.shape[-1] // 2]: the bounds are not constants.
grad_case!(slice_with_bounds_computed_from_the_shape, 17, |c| c
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
    .loss(&["y"]));

// ------------------------------------------------------- Slice with steps --

// GPT-J's interleaved rotary: x[..., ::2] and x[..., 1::2], rotated and interleaved back.
grad_case!(slice_step_two_interleaved_rotary_like, 17, |c| c
    .var("x", &[2, 3, 6])
    .ints("s0", &[0])
    .ints("s1", &[1])
    .ints("e", &[i64::MAX])
    .ints("ax", &[-1])
    .ints("st", &[2])
    .node("Slice", &["x", "s0", "e", "ax", "st"], &["even"], vec![])
    .node("Slice", &["x", "s1", "e", "ax", "st"], &["odd"], vec![])
    .node("Neg", &["odd"], &["nodd"], vec![])
    .ints("un", &[-1])
    .node("Unsqueeze", &["nodd", "un"], &["a"], vec![])
    .node("Unsqueeze", &["even", "un"], &["b"], vec![])
    .node("Concat", &["a", "b"], &["ab"], vec![ai("axis", -1)])
    .ints("flat", &[2, 3, 6])
    .node("Reshape", &["ab", "flat"], &["y"], vec![])
    .loss(&["y"]));

// x[::-1]: start -1, end "before the beginning" (i64::MIN), as exporters write a flip.
grad_case!(slice_negative_step_reverses, 17, |c| c
    .var("x", &[5, 2])
    .ints("s", &[-1])
    .ints("e", &[i64::MIN])
    .ints("ax", &[0])
    .ints("st", &[-1])
    .node("Slice", &["x", "s", "e", "ax", "st"], &["y"], vec![])
    .loss(&["y"]));

// x[4:0:-2] on one axis, x[1:] on the other (steps -2 and 1 together).
grad_case!(slice_step_minus_two_with_a_unit_step_axis, 17, |c| c
    .var("x", &[3, 6])
    .ints("s", &[4, 1])
    .ints("e", &[0, 100])
    .ints("ax", &[1, 0])
    .ints("st", &[-2, 1])
    .node("Slice", &["x", "s", "e", "ax", "st"], &["y"], vec![])
    .loss(&["y"]));

// Step 3 with bounds past the ends (clamped) and a negative start.
grad_case!(slice_step_three_clamped_bounds, 13, |c| c
    .var("x", &[2, 8])
    .ints("s", &[-7])
    .ints("e", &[1000])
    .ints("ax", &[1])
    .ints("st", &[3])
    .node("Slice", &["x", "s", "e", "ax", "st"], &["y"], vec![])
    .loss(&["y"]));

// Step 2 with bounds computed from the shape at run time.
grad_case!(slice_step_two_bounds_from_the_shape, 17, |c| c
    .var("x", &[2, 7])
    .ints("m1", &[-1])
    .ints("big", &[i64::MAX])
    .ints("two", &[2])
    .ints("one", &[1])
    .node("Shape", &["x"], &["sh"], vec![])
    .node("Slice", &["sh", "m1", "big"], &["last"], vec![])
    .node("Div", &["last", "two"], &["half"], vec![])
    .node("Slice", &["x", "one", "half", "one", "two"], &["y"], vec![])
    .loss(&["y"]));

// ---------------------------------------------------------- Gather family --

// Indices [[2, 0], [-1, 2]]: row 2 is read twice (once as -1), row 1 never.
grad_case!(gather_axis0_repeated_and_negative_indices, 17, |c| c
    .var("x", &[3, 4])
    .ints("i", &[2, 0, -1, 2])
    .ints("ishape", &[2, 2])
    .node("Reshape", &["i", "ishape"], &["idx"], vec![])
    .node("Gather", &["x", "idx"], &["y"], vec![ai("axis", 0)])
    .loss(&["y"]));

// The last position, x[:, -1, :], as a scalar index (the axis disappears).
grad_case!(gather_scalar_index_middle_axis, 17, |c| c
    .var("x", &[2, 5, 3])
    .int_scalar("last", -1)
    .node("Gather", &["x", "last"], &["y"], vec![ai("axis", 1)])
    .loss(&["y"]));

grad_case!(gather_last_axis_broadcast_into_mul, 13, |c| c
    .var("x", &[2, 3, 4])
    .var("w", &[2, 1, 2])
    .ints("i", &[3, 1])
    .node("Gather", &["x", "i"], &["g"], vec![ai("axis", -1)])
    .node("Mul", &["g", "w"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(gather_elements_axis1_repeated, 16, |c| c
    .var("x", &[2, 4])
    .ints("i", &[3, 3, 0, 1, 2, 1])
    .ints("ishape", &[2, 3])
    .node("Reshape", &["i", "ishape"], &["idx"], vec![])
    .node("GatherElements", &["x", "idx"], &["y"], vec![ai("axis", 1)])
    .loss(&["y"]));

#[test]
fn gather_elements_below_opset16_is_a_clear_error() {
    let e = case("gather_elements_below_opset16_is_a_clear_error", 14)
        .var("x", &[2, 4])
        .ints("i", &[3, 3, 0, 1])
        .ints("ishape", &[2, 2])
        .node("Reshape", &["i", "ishape"], &["idx"], vec![])
        .node("GatherElements", &["x", "idx"], &["y"], vec![ai("axis", 1)])
        .loss(&["y"])
        .backward_error(&[&[2, 2]]);
    assert!(e.contains("GatherElements") && e.contains("opset 16") && e.contains("opset 14"), "{e}");
}

// Index tuples into the first two axes; (1, 2) is read twice.
grad_case!(gather_nd_pairs_repeated, 16, |c| c
    .var("x", &[2, 3, 4])
    .ints("i", &[1, 2, 0, 0, 1, 2])
    .ints("ishape", &[3, 2])
    .node("Reshape", &["i", "ishape"], &["idx"], vec![])
    .node("GatherND", &["x", "idx"], &["y"], vec![])
    .loss(&["y"]));

// Gemm with alpha, beta and a broadcast C in float32, which tract runs
// (float32 tolerance as chain_attention_like_block_float32).
grad_case!(gemm_c_float32, 17, |c| c
    .float32(1e-2, 1e-3, 1e-2)
    .var("a", &[3, 4])
    .var("b", &[2, 4])
    .var("c", &[2])
    .node("Gemm", &["a", "b", "c"], &["y"], vec![attr_f("alpha", 0.5), attr_f("beta", 2.0), ai("transB", 1)])
    .loss(&["y"]));

// ScatterElements (reduction none): the overwritten data gets no gradient.
grad_case!(scatter_elements_none_axis1, 13, |c| c
    .var("data", &[2, 4])
    .var("upd", &[2, 2])
    .ints("i", &[1, 3, 2, 0])
    .ints("ishape", &[2, 2])
    .node("Reshape", &["i", "ishape"], &["idx"], vec![])
    .node("ScatterElements", &["data", "idx", "upd"], &["y"], vec![ai("axis", 1)])
    .loss(&["y"]));

// reduction add with a repeated index: every update reaches the output.
grad_case!(scatter_elements_add_repeated_index, 16, |c| c
    .var("data", &[3, 2])
    .var("upd", &[2, 2])
    .ints("i", &[2, 0, 2, 1])
    .ints("ishape", &[2, 2])
    .node("Reshape", &["i", "ishape"], &["idx"], vec![])
    .node("ScatterElements", &["data", "idx", "upd"], &["y"], vec![ai("axis", 0), attr_s("reduction", "add")])
    .loss(&["y"]));

grad_case!(scatter_nd_none_rows, 13, |c| c
    .var("data", &[3, 4])
    .var("upd", &[2, 4])
    .ints("i", &[2, 0])
    .ints("ishape", &[2, 1])
    .node("Reshape", &["i", "ishape"], &["idx"], vec![])
    .node("ScatterND", &["data", "idx", "upd"], &["y"], vec![])
    .loss(&["y"]));

// MoE's index_add_: rows added into the output, row 1 twice.
grad_case!(scatter_nd_add_repeated_rows, 16, |c| c
    .var("data", &[3, 4])
    .var("upd", &[3, 4])
    .ints("i", &[1, 1, 0])
    .ints("ishape", &[3, 1])
    .node("Reshape", &["i", "ishape"], &["idx"], vec![])
    .node("ScatterND", &["data", "idx", "upd"], &["y"], vec![attr_s("reduction", "add")])
    .loss(&["y"]));

// MoE routing weights: the top 2 of 5 per row, then normalised.
grad_case!(top_k_values_then_normalised, 13, |c| c
    .var_in("x", &[3, 5], 0.5, 2.0)
    .ints("k", &[2])
    .node("TopK", &["x", "k"], &["v", "i"], vec![ai("axis", -1)])
    .ints("ax", &[-1])
    .node("ReduceSum", &["v", "ax"], &["s"], vec![ai("keepdims", 1)])
    .node("Div", &["v", "s"], &["y"], vec![])
    .loss(&["y"]));

// ------------------------------------------------------------ Tile, Pad --

grad_case!(tile_two_axes, 13, |c| c
    .var("x", &[2, 3])
    .ints("r", &[2, 3])
    .node("Tile", &["x", "r"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(tile_rank3_with_ones, 17, |c| c
    .var("x", &[2, 1, 3])
    .ints("r", &[1, 4, 2])
    .node("Tile", &["x", "r"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(pad_constant_value_input_is_a_variable, 13, |c| c
    .var("x", &[2, 3])
    .var("v", &[])
    .ints("p", &[1, 0, 0, 2])
    .node("Pad", &["x", "p", "v"], &["y"], vec![])
    .loss(&["y"])
    .ort_only("tract's Pad needs a constant pad value"));

#[test]
fn pad_axes_input_opset18_is_refused_by_name() {
    // tract, whose shape analysis the rules read, cannot type Pad with axes.
    let e = case("pad_axes_input_opset18_is_refused_by_name", 18)
        .var("x", &[2, 3, 2])
        .ints("p", &[2, 1])
        .ints("ax", &[-2])
        .node("Pad", &["x", "p", "", "ax"], &["y"], vec![])
        .loss(&["y"])
        .backward_error(&[&[2, 6, 2]]);
    assert!(e.contains("Pad") && e.contains("axes input"), "{e}");
}

// Negative pads crop: the gradient is Pad(g, -pads), which tract's Pad refuses.
grad_case!(pad_negative_pads_crop, 13, |c| c
    .var("x", &[3, 4])
    .ints("p", &[-1, 1, 0, -2])
    .node("Pad", &["x", "p"], &["y"], vec![])
    .loss(&["y"])
    .ort_only("tract's Pad does not accept negative pads"));

// Pads computed at run time (sign unknown when the graph is built): Pad(g, -pads).
grad_case!(pad_pads_computed_at_run_time, 13, |c| c
    .var("x", &[2, 3])
    .ints("p0", &[0, 1])
    .ints("zero", &[0])
    .node("Shape", &["x"], &["sh"], vec![])
    .ints("a0", &[0])
    .ints("a1", &[1])
    .node("Slice", &["sh", "a0", "a1"], &["d0"], vec![])
    .node("Concat", &["p0", "d0", "zero"], &["p"], vec![ai("axis", 0)])
    .node("Pad", &["x", "p"], &["y"], vec![])
    .loss(&["y"])
    .ort_only("the gradient is Pad(g, -pads) and tract's Pad does not accept negative pads"));

grad_case!(pad_opset10_pads_attribute, 10, |c| c
    .var("x", &[2, 3])
    .node("Pad", &["x"], &["y"], vec![attr_ints("pads", &[0, 2, 1, 0]), attr_f("value", 0.5)])
    .loss(&["y"]));

#[test]
fn pad_reflect_is_refused_by_name() {
    let e = case("pad_reflect_is_refused_by_name", 13)
        .var("x", &[2, 3])
        .ints("p", &[0, 1, 0, 1])
        .node("Pad", &["x", "p"], &["y"], vec![attr_s("mode", "reflect")])
        .loss(&["y"])
        .backward_error(&[&[2, 5]]);
    assert!(e.contains("Pad") && e.contains("mode 'reflect'") && e.contains("constant"), "{e}");
}

// ------------------------------------------------------ Max, Min, Clip, Abs --

grad_case!(max_broadcast_two_inputs, 13, |c| c
    .var("a", &[2, 3])
    .var("b", &[3])
    .node("Max", &["a", "b"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(max_three_inputs_one_constant, 13, |c| c
    .var("a", &[2, 3])
    .var("b", &[2, 1])
    .constant("k", &[3])
    .node("Max", &["a", "b", "k"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(max_single_input, 13, |c| c.var("a", &[2, 3]).node("Max", &["a"], &["y"], vec![]).loss(&["y"]));

grad_case!(min_broadcast_with_constant, 13, |c| c
    .var("a", &[2, 1, 3])
    .var("b", &[4, 1])
    .constant("k", &[])
    .node("Min", &["a", "b", "k"], &["y"], vec![])
    .loss(&["y"]));

#[test]
fn max_min_ties_give_the_whole_gradient_to_the_first_input() {
    // a == b at elements 0 and 2. Central differences split a tie (1/2 each);
    // the rule's convention gives all of it to the first input: the sum over
    // the inputs still matches, and b gets none at the ties.
    for op in ["Max", "Min"] {
        let (case, c) = case(&format!("{op}_ties"), 13)
            .var_vals("a", &[3], &[0.5, -0.25, 0.75])
            .var_vals("b", &[3], &[0.5, 0.125, 0.75])
            .node(op, &["a", "b"], &["y"], vec![])
            .loss(&["y"])
            .gradients();
        let (ga, na) = (&c.grads[0].1, &c.grads[0].2);
        let (gb, nb) = (&c.grads[1].1, &c.grads[1].2);
        for i in 0..3 {
            let tol = case.atol + case.rtol * (na[i] + nb[i]).abs();
            assert!(((ga[i] + gb[i]) - (na[i] + nb[i])).abs() <= tol, "{op}[{i}]: {ga:?} {gb:?} vs {na:?} {nb:?}");
        }
        for i in [0, 2] {
            assert!(gb[i] == 0.0 && ga[i] != 0.0, "{op}: tie at {i} goes to the first input: {ga:?} {gb:?}");
        }
        assert!(gb[1] != 0.0 || ga[1] != 0.0);
    }
}

// Bounds as inputs (opset 11 on), x in [-1, 1], clipped to [-0.5, 0.4].
grad_case!(clip_constant_bounds_as_inputs, 13, |c| c
    .var("x", &[3, 4])
    .constant_vals("lo", &[], &[-0.5])
    .constant_vals("hi", &[], &[0.4])
    .node("Clip", &["x", "lo", "hi"], &["y"], vec![])
    .loss(&["y"]));

// The bounds themselves get gradients where x lies beyond them.
grad_case!(clip_variable_bounds, 13, |c| c
    .var("x", &[3, 4])
    .var_vals("lo", &[], &[-0.3])
    .var_vals("hi", &[], &[0.45])
    .node("Clip", &["x", "lo", "hi"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(clip_only_max_given, 13, |c| c
    .var("x", &[2, 5])
    .constant_vals("hi", &[], &[0.1])
    .node("Clip", &["x", "", "hi"], &["y"], vec![])
    .loss(&["y"]));

// Before opset 11, min and max are attributes.
// float32: ONNX Runtime's Clip-6 has no double kernel (tolerance as erf_float32).
grad_case!(clip_opset10_attributes_float32, 10, |c| c
    .float32(1e-2, 2e-4, 2e-3)
    .var("x", &[2, 5])
    .node("Clip", &["x"], &["y"], vec![attr_f("min", -0.25), attr_f("max", 0.5)])
    .loss(&["y"]));

grad_case!(abs_broadcast_into_mul, 17, |c| c
    .var_away_from_zero("x", &[2, 3])
    .constant("w", &[3])
    .node("Abs", &["x"], &["a"], vec![])
    .node("Mul", &["a", "w"], &["y"], vec![])
    .loss(&["y"]));

// ---------------------------------------------------------- sin, cos --

// Rotary caches: cos(pos * inv_freq), sin(...) on the path in some exports.
grad_case!(sin_and_cos_of_a_product, 17, |c| c
    .var_in("x", &[2, 3], -2.0, 2.0)
    .constant("f", &[3])
    .node("Mul", &["x", "f"], &["t"], vec![])
    .node("Sin", &["t"], &["s"], vec![])
    .node("Cos", &["t"], &["co"], vec![])
    .loss(&["s", "co"]));

// ---------------------------------------------------------- activations --

// float32 (ONNX Runtime's opset-20 Gelu, like Erf, has no double kernel):
// step 1e-2, tolerance 2e-4 + 2e-3 * |numeric|, as erf_float32.
grad_case!(gelu_opset20_exact_float32, 20, |c| c
    .float32(1e-2, 2e-4, 2e-3)
    .var_in("x", &[2, 4], -3.0, 3.0)
    .node("Gelu", &["x"], &["y"], vec![])
    .loss(&["y"]));

grad_case!(gelu_opset20_tanh_float32, 20, |c| c
    .float32(1e-2, 2e-4, 2e-3)
    .var_in("x", &[2, 4], -3.0, 3.0)
    .node("Gelu", &["x"], &["y"], vec![attr_s("approximate", "tanh")])
    .loss(&["y"]));

// float32 tolerance as above.
grad_case!(softplus_float32, 17, |c| c
    .float32(1e-2, 2e-4, 2e-3)
    .var_in("x", &[2, 4], -3.0, 3.0)
    .node("Softplus", &["x"], &["y"], vec![])
    .loss(&["y"]));

// alpha 0.5, beta 0.6: linear for x in (-1.2, 0.8); values chosen away from
// the kinks by more than the float32 step.
grad_case!(hard_sigmoid_float32, 17, |c| c
    .float32(1e-2, 2e-4, 2e-3)
    .var_vals("x", &[2, 3], &[-1.5, -0.9, 0.1, 0.5, 0.95, 1.4])
    .node("HardSigmoid", &["x"], &["y"], vec![attr_f("alpha", 0.5), attr_f("beta", 0.6)])
    .loss(&["y"]));

// ---------------------------------------------------------------- Einsum --

grad_case!(einsum_attention_scores_bhqd_bhkd, 17, |c| c
    .var("q", &[2, 2, 3, 4])
    .var("k", &[2, 2, 5, 4])
    .node("Einsum", &["q", "k"], &["y"], vec![attr_s("equation", "bhqd,bhkd->bhqk")])
    .loss(&["y"]));

grad_case!(einsum_attention_values_bhqk_bhkd, 17, |c| c
    .var("p", &[2, 2, 3, 5])
    .var("v", &[2, 2, 5, 4])
    .node("Einsum", &["p", "v"], &["y"], vec![attr_s("equation", "bhqk,bhkd->bhqd")])
    .loss(&["y"]));

grad_case!(einsum_batched_matmul_bij_bjk, 13, |c| c
    .var("a", &[2, 3, 4])
    .var("b", &[2, 4, 5])
    .node("Einsum", &["a", "b"], &["y"], vec![attr_s("equation", "bij,bjk->bik")])
    .loss(&["y"]));

// "...": batched matmul over leading dims (tract cannot analyse a broadcast "...").
grad_case!(einsum_ellipsis_broadcast_batch, 13, |c| c
    .var("a", &[2, 3, 4])
    .var("b", &[2, 4, 5])
    .node("Einsum", &["a", "b"], &["y"], vec![attr_s("equation", "...ij,...jk->...ik")])
    .loss(&["y"]));

grad_case!(einsum_implicit_output_and_a_permutation, 13, |c| c
    .var("a", &[3, 4])
    .var("b", &[4, 2])
    .node("Einsum", &["a", "b"], &["m"], vec![attr_s("equation", "ij, jk")])
    .node("Einsum", &["m"], &["y"], vec![attr_s("equation", "ik->ki")])
    .loss(&["y"]));

#[test]
fn einsum_other_equations_are_refused_by_name() {
    for (eq, shapes, out) in [
        ("ii->i", vec![vec![3, 3]], vec![3]),
        ("ij,jk->k", vec![vec![2, 3], vec![3, 4]], vec![4]),
        ("ij->i", vec![vec![2, 3]], vec![2]),
    ] {
        let mut c = case(&format!("einsum_refused_{eq}"), 13);
        let names = ["a", "b"];
        for (k, s) in shapes.iter().enumerate() {
            c = c.var(names[k], s);
        }
        let e = c
            .node("Einsum", &names[..shapes.len()], &["y"], vec![attr_s("equation", eq)])
            .loss(&["y"])
            .backward_error(&[&out]);
        assert!(e.contains("Einsum") && e.contains(eq), "{eq}: {e}");
    }
}

// ------------------------------------------------- inspect and a refused run --

/// Synth's model with its extra op "Tan" after the layer-0 hook, plus an
/// "Atan" after it: two ops without a rule on the hook-to-logits path.
fn model_with_two_ops_without_rules(dir: &Path) -> std::path::PathBuf {
    let p = crate::common::synth::Synth { extra_op: Some("Tan".into()), ..Default::default() }.write(dir, "two.onnx");
    let mut m = ModelProto::decode(std::fs::read(&p).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let at = g.node.iter().position(|n| n.output.first().is_some_and(|o| o == "extra")).unwrap();
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| *i == "extra") {
            *i = "extra2".into();
        }
    }
    g.node.insert(
        at + 1,
        NodeProto {
            name: "/transformer/h.0/attn/extra2".into(),
            op_type: "Atan".into(),
            input: vec!["extra".into()],
            output: vec!["extra2".into()],
            ..Default::default()
        },
    );
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

#[test]
fn inspect_and_a_refused_rewrite_name_every_op_without_rule() {
    let d = crate::common::fresh_dir("gradients_two_norule");
    let p = model_with_two_ops_without_rules(&d);
    let model = attrpatch::onnx::OnnxModel::load(&p).unwrap();
    let s = attrpatch::inspect::inspect(&model, None).unwrap();
    for want in ["2 node(s) of 2 op type(s)", "Tan (domain ai.onnx) x1", "Atan (domain ai.onnx) x1", "h.0/attn/extra2'"]
    {
        assert!(s.contains(want), "'{want}' missing from inspect:\n{s}");
    }
    let out = d.join("x.onnx");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["rewrite", p.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for want in ["2 nodes", "'Tan'", "'Atan'", "/transformer/h.0/attn/extra'", "/transformer/h.0/attn/extra2'"] {
        assert!(err.contains(want), "'{want}' missing from:\n{err}");
    }
}

#[test]
fn inspect_says_when_every_op_has_a_rule() {
    let d = crate::common::fresh_dir("gradients_all_rules");
    let p = crate::common::synth::Synth::default().write(&d, "ok.onnx");
    let s = attrpatch::inspect::inspect(&attrpatch::onnx::OnnxModel::load(&p).unwrap(), None).unwrap();
    assert!(s.contains("every op on the path from the hooks to the logits has a rule"), "{s}");
}

#[test]
fn inspect_finds_no_problem_in_the_exports_that_run() {
    // Legacy exports leave symbolic dims unknown: inspect must read shapes at
    // a probe size, as the rewrite does, or it would list every rule as failing.
    for name in ["gpt2-legacy-op14", "llama-legacy-op14", "gptneox-dynamo-op18"] {
        let p = crate::common::root().join(format!("tests/fixtures/arch/{name}.onnx"));
        let s = attrpatch::inspect::inspect(&attrpatch::onnx::OnnxModel::load(&p).unwrap(), None).unwrap();
        assert!(s.contains("every op on the path from the hooks to the logits has a rule"), "{name}:\n{s}");
    }
}
