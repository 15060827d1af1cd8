//! The opset-23 decompositions (`attrpatch::normalize::opset23`) against ONNX
//! Runtime's own CPU kernel for each op: a one-node model runs in ONNX Runtime
//! as it is and decomposed, on the same random inputs; no opset-23 op may be
//! left, and every output must agree within `1e-5 * (1 + |want|)` (float32 on
//! both sides, summed in different orders). The cases cover what the dynamo
//! exporter writes (rank-4 rotary with batch-1 caches, sdpa with a bool mask,
//! RMSNorm over the last axis) and the spec's other forms (rank 3, grouped
//! heads, interleaved and partial rotary, position ids, causal, softcap,
//! float masks, explicit scale).

use attrpatch::augment::value_info;
use attrpatch::normalize::opset23::{decompose, is_decomposed};
use attrpatch::onnx::builder::{attr_f, attr_i};
use attrpatch::onnx::consts::{float_tensor, FLOAT, INT64};
use attrpatch::onnx::facts::Dim;
use attrpatch::onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use ndarray::{ArrayD, IxDyn};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynValue, Tensor};
use prost::Message;

const TOL: f64 = 1e-5;
const BOOL: i32 = 9;

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

struct Case {
    label: &'static str,
    feeds: Vec<(String, Vec<usize>, Data)>,
    inits: Vec<TensorProto>,
    node: NodeProto,
    outputs: Vec<String>,
    seed: u64,
}

fn case(label: &'static str, op: &str) -> Case {
    Case {
        label,
        feeds: vec![],
        inits: vec![],
        node: NodeProto { name: format!("{op}_0"), op_type: op.into(), ..Default::default() },
        outputs: vec![],
        seed: label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)),
    }
}

impl Case {
    /// splitmix64 in [lo, hi).
    fn rand(&mut self, lo: f64, hi: f64) -> f64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        lo + (hi - lo) * (((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64)
    }
    fn input(mut self, name: &str) -> Self {
        self.node.input.push(name.into());
        self
    }
    fn absent(self) -> Self {
        self.input("")
    }
    fn float(mut self, name: &str, shape: &[usize]) -> Self {
        let v = (0..shape.iter().product()).map(|_| self.rand(-2.0, 2.0) as f32).collect();
        self.feeds.push((name.into(), shape.to_vec(), Data::F32(v)));
        self.input(name)
    }
    fn int64(mut self, name: &str, shape: &[usize], v: Vec<i64>) -> Self {
        self.feeds.push((name.into(), shape.to_vec(), Data::I64(v)));
        self.input(name)
    }
    /// A bool mask, true (attend) with probability 0.7 and on the diagonal, so no row is empty.
    fn bool_mask(mut self, name: &str, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        let (s, l) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let v = (0..n).map(|i| self.rand(0.0, 1.0) < 0.7 || (i / l) % s == i % l).collect();
        self.feeds.push((name.into(), shape.to_vec(), Data::Bool(v)));
        self.input(name)
    }
    fn weight(mut self, name: &str, shape: &[usize]) -> Self {
        let v: Vec<f64> = (0..shape.iter().product()).map(|_| self.rand(0.5, 1.5)).collect();
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.inits.push(float_tensor(name, FLOAT, &dims, &v));
        self.input(name)
    }
    /// cos/sin caches of real angles: position p, frequency k -> p * 10000^(-k/half).
    fn caches(mut self, rows: &[usize], half: usize) -> Self {
        let mut cos = vec![];
        let mut sin = vec![];
        let n: usize = rows.iter().product();
        for p in 0..n {
            let pos = (p % rows[rows.len() - 1]) as f64;
            for k in 0..half {
                let a = pos * 10000f64.powf(-(k as f64) / half as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let shape: Vec<usize> = rows.iter().copied().chain([half]).collect();
        self.feeds.push(("cos".into(), shape.clone(), Data::F32(cos)));
        self.feeds.push(("sin".into(), shape, Data::F32(sin)));
        self.input("cos").input("sin")
    }
    fn attr(mut self, a: AttributeProto) -> Self {
        self.node.attribute.push(a);
        self
    }
    fn out(mut self, name: &str) -> Self {
        self.node.output.push(name.into());
        self.outputs.push(name.into());
        self
    }

    fn model(&self) -> ModelProto {
        let input = self
            .feeds
            .iter()
            .map(|(name, shape, d)| {
                let t = match d {
                    Data::F32(_) => FLOAT,
                    Data::I64(_) => INT64,
                    Data::Bool(_) => BOOL,
                };
                value_info(name, t, &shape.iter().map(|&d| Dim::Known(d as i64)).collect::<Vec<_>>())
            })
            .collect();
        let mut output: Vec<_> = self.outputs.iter().map(|n| value_info(n, FLOAT, &[])).collect();
        for v in &mut output {
            if let Some(attrpatch::onnx::pb::type_proto::Value::TensorType(t)) =
                v.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.shape = None;
            }
        }
        ModelProto {
            ir_version: 10,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 23 }],
            graph: Some(GraphProto {
                name: self.label.into(),
                node: vec![self.node.clone()],
                initializer: self.inits.clone(),
                input,
                output,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(self) {
        let original = self.model();
        let want = run(&self, &original).unwrap_or_else(|e| panic!("{}: ONNX Runtime's kernel: {e}", self.label));
        let mut decomposed = original.clone();
        decompose(&mut decomposed, 23).unwrap_or_else(|e| panic!("{}: decompose: {e}", self.label));
        let g = decomposed.graph.as_ref().unwrap();
        assert!(!g.node.iter().any(|n| is_decomposed(n, 23)), "{}: an opset-23 op is left", self.label);
        let got = run(&self, &decomposed).unwrap_or_else(|e| panic!("{}: decomposed graph: {e}", self.label));
        let mut worst = 0f64;
        for (name, ((ws, wv), (gs, gv))) in self.outputs.iter().zip(want.iter().zip(&got)) {
            assert_eq!(ws, gs, "{}: shape of '{name}'", self.label);
            for (i, (w, g)) in wv.iter().zip(gv).enumerate() {
                let err = (g - w).abs() / (1.0 + w.abs());
                assert!(err <= TOL, "{}: '{name}'[{i}]: decomposed {g}, ONNX Runtime {w}", self.label);
                worst = worst.max(err);
            }
        }
        eprintln!("{}: max error {worst:.2e}", self.label);
    }
}

/// (shape, values) of each compared output.
type Outputs = Vec<(Vec<usize>, Vec<f64>)>;

fn run(c: &Case, m: &ModelProto) -> Result<Outputs, String> {
    let (_, env) = attrpatch::runtime::ort_lib::init(None).map_err(|e| e.to_string())?;
    let b = Session::builder(&env).map_err(|e| e.to_string())?;
    let b = b.with_optimization_level(GraphOptimizationLevel::Disable).map_err(|e| e.to_string())?;
    let mut b = b.with_intra_threads(1).map_err(|e| e.to_string())?;
    let mut s = b.commit_from_memory(&m.encode_to_vec()).map_err(|e| e.to_string())?;
    let mut feed: Vec<(String, DynValue)> = vec![];
    for (name, shape, d) in &c.feeds {
        let sh = IxDyn(shape);
        let v = match d {
            Data::F32(v) => Tensor::from_array(ArrayD::from_shape_vec(sh, v.clone()).unwrap()).map(|t| t.into_dyn()),
            Data::I64(v) => Tensor::from_array(ArrayD::from_shape_vec(sh, v.clone()).unwrap()).map(|t| t.into_dyn()),
            Data::Bool(v) => Tensor::from_array(ArrayD::from_shape_vec(sh, v.clone()).unwrap()).map(|t| t.into_dyn()),
        }
        .map_err(|e| format!("input '{name}': {e}"))?;
        feed.push((name.clone(), v));
    }
    let out = s.run(feed).map_err(|e| e.to_string())?;
    let mut res = vec![];
    for name in &c.outputs {
        let a = out[name.as_str()].try_extract_array::<f32>().map_err(|e| format!("output '{name}': {e}"))?;
        res.push((a.shape().to_vec(), a.iter().map(|&x| x as f64).collect()));
    }
    Ok(res)
}

const B: usize = 3;
const H: usize = 4;
const S: usize = 5;
const D: usize = 8;

#[test]
fn rms_normalization_last_axis_as_dynamo_writes_it() {
    case("rms_last", "RMSNormalization")
        .float("x", &[B, S, H * D])
        .weight("scale", &[H * D])
        .attr(attr_i("axis", -1))
        .attr(attr_f("epsilon", 1e-6))
        .attr(attr_i("stash_type", 1))
        .out("y")
        .check();
}

#[test]
fn rms_normalization_two_axes_default_epsilon() {
    case("rms_two_axes", "RMSNormalization")
        .float("x", &[B, S, H, D])
        .weight("scale", &[H, D])
        .attr(attr_i("axis", -2))
        .out("y")
        .check();
}

#[test]
fn rotary_rank4_batch1_caches_as_dynamo_writes_it() {
    // The exporter's caches have batch 1; ONNX Runtime's kernel needs the input's
    // batch to match them, so the kernel runs at batch 1 here.
    case("rotary_dynamo", "RotaryEmbedding")
        .float("x", &[1, H, S, D])
        .caches(&[1, S], D / 2)
        .attr(attr_i("interleaved", 0))
        .attr(attr_i("num_heads", H as i64))
        .out("y")
        .check();
}

#[test]
fn rotary_rank4_batch1_caches_broadcast_over_a_larger_batch_after_decomposition() {
    // What ONNX Runtime 1.32 refuses: batch 3 against batch-1 caches. The
    // decomposition broadcasts; each row must equal the kernel's result at batch 1.
    let c = case("rotary_broadcast", "RotaryEmbedding")
        .float("x", &[B, H, S, D])
        .caches(&[1, S], D / 2)
        .attr(attr_i("num_heads", H as i64))
        .out("y");
    let mut decomposed = c.model();
    decompose(&mut decomposed, 23).unwrap();
    let got = run(&c, &decomposed).unwrap().remove(0).1;
    let Data::F32(x) = &c.feeds[0].2 else { unreachable!() };
    let row = H * S * D;
    for b in 0..B {
        let mut one = case("rotary_broadcast_row", "RotaryEmbedding");
        one.feeds.push(("x".into(), vec![1, H, S, D], Data::F32(x[b * row..(b + 1) * row].to_vec())));
        let one = one.input("x").caches(&[1, S], D / 2).attr(attr_i("num_heads", H as i64)).out("y");
        let want = run(&one, &one.model()).unwrap().remove(0).1;
        for (i, (g, w)) in got[b * row..(b + 1) * row].iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= TOL * (1.0 + w.abs()), "row {b} [{i}]: {g} vs kernel {w}");
        }
    }
}

#[test]
fn rotary_rank3_with_position_ids_interleaved() {
    let pos: Vec<i64> = (0..B * S).map(|i| ((i * 7) % 11) as i64).collect();
    case("rotary_rank3_interleaved", "RotaryEmbedding")
        .float("x", &[B, S, H * D])
        .caches(&[16], D / 2)
        .int64("pos", &[B, S], pos)
        .attr(attr_i("interleaved", 1))
        .attr(attr_i("num_heads", H as i64))
        .out("y")
        .check();
}

#[test]
fn rotary_partial_rank4_per_batch_caches() {
    case("rotary_partial", "RotaryEmbedding")
        .float("x", &[B, H, S, D])
        .caches(&[B, S], D / 4)
        .attr(attr_i("rotary_embedding_dim", (D / 2) as i64))
        .out("y")
        .check();
}

#[test]
fn attention_rank4_bool_mask_as_dynamo_writes_it() {
    case("attention_dynamo", "Attention")
        .float("q", &[B, H, S, D])
        .float("k", &[B, H, S, D])
        .float("v", &[B, H, S, D])
        .bool_mask("mask", &[B, 1, S, S])
        .attr(attr_f("scale", 0.25))
        .attr(attr_i("is_causal", 0))
        .out("y")
        .check();
}

#[test]
fn attention_rank4_grouped_heads_causal_default_scale() {
    case("attention_gqa_causal", "Attention")
        .float("q", &[B, H, S, D])
        .float("k", &[B, 2, S, D])
        .float("v", &[B, 2, S, D])
        .attr(attr_i("is_causal", 1))
        .out("y")
        .check();
}

#[test]
fn attention_rank3_float_mask_softcap_present_kv() {
    case("attention_rank3", "Attention")
        .float("q", &[B, S, H * D])
        .float("k", &[B, S + 2, 2 * D])
        .float("v", &[B, S + 2, 2 * D])
        .float("mask", &[S, S + 2])
        .attr(attr_i("q_num_heads", H as i64))
        .attr(attr_i("kv_num_heads", 2))
        .attr(attr_f("softcap", 3.0))
        .out("y")
        .out("present_key")
        .out("present_value")
        .check();
}

#[test]
fn attention_with_past_key_values_causal() {
    case("attention_past", "Attention")
        .float("q", &[B, H, S, D])
        .float("k", &[B, H, S, D])
        .float("v", &[B, H, S, D])
        .absent()
        .float("past_key", &[B, H, 2, D])
        .float("past_value", &[B, H, 2, D])
        .attr(attr_i("is_causal", 1))
        .out("y")
        .out("present_key")
        .out("present_value")
        .check();
}

#[test]
fn attention_with_an_unsupported_form_is_named() {
    let c = case("attention_qk_out", "Attention")
        .float("q", &[B, H, S, D])
        .float("k", &[B, H, S, D])
        .float("v", &[B, H, S, D])
        .attr(attr_i("qk_matmul_output_mode", 3))
        .out("y")
        .out("")
        .out("")
        .out("qk");
    let mut m = c.model();
    let e = decompose(&mut m, 23).unwrap_err().to_string();
    assert!(e.contains("Attention node 'Attention_0'") && e.contains("qk_matmul_output_mode"), "{e}");
}
