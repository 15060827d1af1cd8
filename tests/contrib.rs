//! Every contrib-op decomposition (`attrpatch::normalize::contrib`) against
//! ONNX Runtime's own CPU kernel for the op.
//!
//! A case is a one-node model holding the contrib op. It runs in ONNX Runtime
//! as it is, then decomposed into standard ops, on the same random inputs; the
//! decomposed graph must hold no contrib op, and every output must match:
//! `|got - want| <= TOL * (1 + |want|)` with TOL = 1e-5 (float32 arithmetic
//! on both sides, summed in different orders), unless a case states another.
//! The cases cover the attribute combinations exporters emit: masks present
//! and absent, unidirectional, bias present and absent, epsilon given and
//! default, past absent and empty, rotary interleaved and not.

use crate::common::rng::Rng;
use attrpatch::augment::value_info;
use attrpatch::normalize::contrib::{decompose, is_decomposed, MS_DOMAIN};
use attrpatch::onnx::builder::{attr_f, attr_i, attr_ints};
use attrpatch::onnx::consts::{float_tensor, FLOAT, INT32, INT64};
use attrpatch::onnx::facts::Dim;
use attrpatch::onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use ndarray::{ArrayD, IxDyn};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynValue, Tensor};
use prost::Message;

const TOL: f64 = 1e-5;

/// splitmix64, seeded by the case name.
#[derive(Clone)]
enum Data {
    F32(Vec<f64>),
    I32(Vec<i64>),
    I64(Vec<i64>),
}

struct Feed {
    name: String,
    shape: Vec<usize>,
    data: Data,
}

struct Case {
    label: String,
    opset: i64,
    feeds: Vec<Feed>,
    inits: Vec<TensorProto>,
    node: NodeProto,
    /// (output name, element type) compared; other outputs are left unread.
    outputs: Vec<(String, i32)>,
    /// Per batch row, the valid length: output 0 ([B, S, ..]) is compared only below it.
    valid_len: Option<Vec<usize>>,
    tol: f64,
    rng: Rng,
}

fn case(label: &str, op: &str, domain: &str) -> Case {
    Case {
        label: label.into(),
        opset: 17,
        feeds: vec![],
        inits: vec![],
        node: NodeProto { name: format!("{op}_0"), op_type: op.into(), domain: domain.into(), ..Default::default() },
        outputs: vec![],
        valid_len: None,
        tol: TOL,
        rng: Rng::seeded(label),
    }
}

fn ms(label: &str, op: &str) -> Case {
    case(label, op, MS_DOMAIN)
}

impl Case {
    fn input(mut self, name: &str) -> Self {
        self.node.input.push(name.into());
        self
    }
    fn absent(self) -> Self {
        self.input("")
    }
    /// A float32 graph input of random values in [-2, 2].
    fn float(mut self, name: &str, shape: &[usize]) -> Self {
        let v = self.rng.vec(shape.iter().product(), -2.0, 2.0);
        self.feeds.push(Feed { name: name.into(), shape: shape.to_vec(), data: Data::F32(v) });
        self.input(name)
    }
    fn int32(mut self, name: &str, shape: &[usize], v: &[i64]) -> Self {
        self.feeds.push(Feed { name: name.into(), shape: shape.to_vec(), data: Data::I32(v.to_vec()) });
        self.input(name)
    }
    fn int64(mut self, name: &str, shape: &[usize], v: &[i64]) -> Self {
        self.feeds.push(Feed { name: name.into(), shape: shape.to_vec(), data: Data::I64(v.to_vec()) });
        self.input(name)
    }
    /// A float32 weight (initializer) of random values in [lo, hi].
    fn weight_in(mut self, name: &str, shape: &[usize], lo: f64, hi: f64) -> Self {
        let v = self.rng.vec(shape.iter().product(), lo, hi);
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.inits.push(float_tensor(name, FLOAT, &dims, &v));
        self.input(name)
    }
    fn weight(self, name: &str, shape: &[usize]) -> Self {
        self.weight_in(name, shape, -1.0, 1.0)
    }
    fn weight_vals(mut self, name: &str, shape: &[usize], v: &[f64]) -> Self {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.inits.push(float_tensor(name, FLOAT, &dims, v));
        self.input(name)
    }
    fn attr(mut self, a: AttributeProto) -> Self {
        self.node.attribute.push(a);
        self
    }
    /// An output that is read (a graph output, compared).
    fn out(self, name: &str) -> Self {
        self.out_typed(name, FLOAT)
    }
    fn out_typed(mut self, name: &str, t: i32) -> Self {
        self.node.output.push(name.into());
        self.outputs.push((name.into(), t));
        self
    }
    /// An output slot left unread (empty name).
    fn no_out(mut self) -> Self {
        self.node.output.push(String::new());
        self
    }
    fn opset(mut self, v: i64) -> Self {
        self.opset = v;
        self
    }

    fn model(&self) -> ModelProto {
        let input = self
            .feeds
            .iter()
            .map(|f| {
                let t = match f.data {
                    Data::F32(_) => FLOAT,
                    Data::I32(_) => INT32,
                    Data::I64(_) => INT64,
                };
                let dims: Vec<Dim> = f.shape.iter().map(|&d| Dim::Known(d as i64)).collect();
                value_info(&f.name, t, &dims)
            })
            .collect();
        let output = self.outputs.iter().map(|(n, t)| value_info(n, *t, &[])).collect::<Vec<_>>();
        let output = output
            .into_iter()
            .map(|mut v| {
                // No shape: the element type alone.
                if let Some(attrpatch::onnx::pb::type_proto::Value::TensorType(t)) =
                    v.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    t.shape = None;
                }
                v
            })
            .collect();
        ModelProto {
            ir_version: 8,
            opset_import: vec![
                OperatorSetIdProto { domain: String::new(), version: self.opset },
                OperatorSetIdProto { domain: MS_DOMAIN.into(), version: 1 },
            ],
            graph: Some(GraphProto {
                name: self.label.clone(),
                node: vec![self.node.clone()],
                initializer: self.inits.clone(),
                input,
                output,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs the op in ONNX Runtime and its decomposition; returns the largest error.
    fn check(self) -> f64 {
        let original = self.model();
        let want = run(&self, &original).unwrap_or_else(|e| panic!("{}: ONNX Runtime's kernel: {e}", self.label));
        let mut decomposed = original.clone();
        decompose(&mut decomposed, self.opset).unwrap_or_else(|e| panic!("{}: decompose: {e}", self.label));
        let g = decomposed.graph.as_ref().unwrap();
        assert!(
            !g.node.iter().any(|n| is_decomposed(n, self.opset) || n.domain == MS_DOMAIN),
            "{}: a contrib op is left after decomposition",
            self.label
        );
        let got = run(&self, &decomposed).unwrap_or_else(|e| panic!("{}: decomposed graph: {e}", self.label));
        let mut worst = 0f64;
        for (k, ((name, _), ((ws, wv), (gs, gv)))) in self.outputs.iter().zip(want.iter().zip(&got)).enumerate() {
            assert_eq!(ws, gs, "{}: shape of '{name}'", self.label);
            let row = if gs.len() >= 2 { gs[1..].iter().product::<usize>() } else { 1 };
            let inner = if gs.len() >= 2 { gs[2..].iter().product::<usize>() } else { 1 };
            for (i, (w, g)) in wv.iter().zip(gv).enumerate() {
                if let (0, Some(len)) = (k, &self.valid_len) {
                    if (i % row) / inner >= len[i / row] {
                        continue;
                    }
                }
                let err = (g - w).abs() / (1.0 + w.abs());
                assert!(err <= self.tol, "{}: '{name}'[{i}]: decomposed {g}, ONNX Runtime {w}", self.label);
                worst = worst.max(err);
            }
        }
        eprintln!("{}: max error {worst:.2e}", self.label);
        worst
    }
}

fn session(bytes: &[u8]) -> Result<Session, String> {
    let (_, env) = attrpatch::runtime::ort_lib::init(None).map_err(|e| e.to_string())?;
    let b = Session::builder(&env).map_err(|e| e.to_string())?;
    let b = b.with_optimization_level(GraphOptimizationLevel::Disable).map_err(|e| e.to_string())?;
    let mut b = b.with_intra_threads(1).map_err(|e| e.to_string())?;
    b.commit_from_memory(bytes).map_err(|e| e.to_string())
}

/// An output's shape and values.
type Out = (Vec<usize>, Vec<f64>);

/// Runs `m` on the case's feeds (those `m` still takes); one `Out` per compared output.
fn run(c: &Case, m: &ModelProto) -> Result<Vec<Out>, String> {
    let mut s = session(&m.encode_to_vec())?;
    let takes: Vec<&str> = m.graph.as_ref().unwrap().input.iter().map(|i| i.name.as_str()).collect();
    let mut feed: Vec<(String, DynValue)> = vec![];
    for f in c.feeds.iter().filter(|f| takes.contains(&f.name.as_str())) {
        let sh = IxDyn(&f.shape);
        let v = match &f.data {
            Data::F32(v) => {
                Tensor::from_array(ArrayD::from_shape_vec(sh, v.iter().map(|&x| x as f32).collect()).unwrap())
                    .map(|t| t.into_dyn())
            }
            Data::I32(v) => {
                Tensor::from_array(ArrayD::from_shape_vec(sh, v.iter().map(|&x| x as i32).collect()).unwrap())
                    .map(|t| t.into_dyn())
            }
            Data::I64(v) => Tensor::from_array(ArrayD::from_shape_vec(sh, v.clone()).unwrap()).map(|t| t.into_dyn()),
        }
        .map_err(|e| format!("input '{}': {e}", f.name))?;
        feed.push((f.name.clone(), v));
    }
    let out = s.run(feed).map_err(|e| e.to_string())?;
    let mut res = vec![];
    for (name, t) in &c.outputs {
        let v = &out[name.as_str()];
        res.push(match *t {
            INT32 => {
                let a = v.try_extract_array::<i32>().map_err(|e| format!("output '{name}': {e}"))?;
                (a.shape().to_vec(), a.iter().map(|&x| x as f64).collect())
            }
            _ => {
                let a = v.try_extract_array::<f32>().map_err(|e| format!("output '{name}': {e}"))?;
                (a.shape().to_vec(), a.iter().map(|&x| x as f64).collect())
            }
        });
    }
    Ok(res)
}

const B: usize = 2;
const S: usize = 5;
const H: usize = 32;

// ------------------------------------------------------------ normalisations --

#[test]
fn skip_layer_norm_beta_bias_all_outputs() {
    ms("skip_ln_full", "SkipLayerNormalization")
        .float("x", &[B, S, H])
        .float("skip", &[B, S, H])
        .weight("gamma", &[H])
        .weight("beta", &[H])
        .weight("bias", &[H])
        .attr(attr_f("epsilon", 1e-5))
        .out("y")
        .out("mean")
        .out("inv_std")
        .out("sum")
        .check();
}

#[test]
fn skip_layer_norm_no_beta_no_bias_default_epsilon() {
    ms("skip_ln_plain", "SkipLayerNormalization")
        .float("x", &[B, S, H])
        .float("skip", &[B, S, H])
        .weight("gamma", &[H])
        .out("y")
        .check();
}

#[test]
fn skip_layer_norm_sum_output_only_as_the_optimizer_writes_it() {
    ms("skip_ln_sum", "SkipLayerNormalization")
        .float("x", &[B, S, H])
        .float("skip", &[B, S, H])
        .weight("gamma", &[H])
        .weight("beta", &[H])
        .attr(attr_f("epsilon", 1e-5))
        .out("y")
        .no_out()
        .no_out()
        .out("sum")
        .check();
}

#[test]
fn skip_simplified_layer_norm_as_genai_writes_it() {
    ms("skip_rms_genai", "SkipSimplifiedLayerNormalization")
        .float("x", &[B, S, H])
        .float("skip", &[B, S, H])
        .weight("gamma", &[H])
        .attr(attr_f("epsilon", 1e-6))
        .out("y")
        .no_out()
        .no_out()
        .out("sum")
        .check();
}

#[test]
fn skip_simplified_layer_norm_bias_inv_std() {
    ms("skip_rms_bias", "SkipSimplifiedLayerNormalization")
        .float("x", &[B, S, H])
        .float("skip", &[B, S, H])
        .weight("gamma", &[H])
        .weight("bias", &[H])
        .out("y")
        .no_out()
        .out("inv_std")
        .out("sum")
        .check();
}

#[test]
fn simplified_layer_norm_default_domain() {
    case("rms_default_domain", "SimplifiedLayerNormalization", "")
        .float("x", &[B, S, H])
        .weight("gamma", &[H])
        .attr(attr_i("axis", -1))
        .attr(attr_f("epsilon", 1e-6))
        .attr(attr_i("stash_type", 1))
        .out("y")
        .out("inv_std")
        .check();
}

#[test]
fn layer_norm_default_domain_below_opset_17_all_outputs() {
    // ONNX Runtime's own LayerNormalization kernel (no com.microsoft one is registered).
    case("ln_opset14", "LayerNormalization", "")
        .opset(14)
        .float("x", &[B, S, H])
        .weight("gamma", &[H])
        .weight("beta", &[H])
        .attr(attr_i("axis", -1))
        .attr(attr_f("epsilon", 1e-5))
        .out("y")
        .out("mean")
        .out("inv_std")
        .check();
}

#[test]
fn layer_norm_other_axis_is_refused_by_name() {
    let c = ms("ln_axis", "LayerNormalization")
        .float("x", &[B, S, H])
        .weight("gamma", &[S, H])
        .attr(attr_i("axis", 1))
        .out("y");
    let mut m = c.model();
    let e = decompose(&mut m, 17).unwrap_err().to_string();
    assert!(e.contains("LayerNormalization node 'LayerNormalization_0'") && e.contains("axis 1"), "{e}");
}

#[test]
fn skip_simplified_mean_output_read_is_refused_by_name() {
    let c = ms("skip_rms_mean", "SkipSimplifiedLayerNormalization")
        .float("x", &[B, S, H])
        .float("skip", &[B, S, H])
        .weight("gamma", &[H])
        .out("y")
        .out("mean");
    let mut m = c.model();
    let e = decompose(&mut m, 17).unwrap_err().to_string();
    assert!(e.contains("SkipSimplifiedLayerNormalization_0") && e.contains("'mean'"), "{e}");
}

#[test]
fn embed_layer_norm_segment_and_mask() {
    let ids: Vec<i64> = (0..B * S).map(|i| (i * 7 % 11) as i64).collect();
    let seg: Vec<i64> = (0..B * S).map(|i| (i % 2) as i64).collect();
    ms("embed_ln_full", "EmbedLayerNormalization")
        .int32("ids", &[B, S], &ids)
        .int32("seg", &[B, S], &seg)
        .weight("word", &[11, H])
        .weight("pos", &[16, H])
        .weight("seg_emb", &[2, H])
        .weight("gamma", &[H])
        .weight("beta", &[H])
        .int32("mask", &[B, S], &[1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
        .attr(attr_f("epsilon", 1e-5))
        .out("y")
        .out_typed("mask_index", INT32)
        .out("sum")
        .check();
}

#[test]
fn embed_layer_norm_no_segment_no_mask_position_ids() {
    let ids: Vec<i64> = (0..B * S).map(|i| (i * 5 % 11) as i64).collect();
    let pos: Vec<i64> = (0..B * S).map(|i| (i % S + 2) as i64).collect();
    ms("embed_ln_plain", "EmbedLayerNormalization")
        .int32("ids", &[B, S], &ids)
        .absent()
        .weight("word", &[11, H])
        .weight("pos", &[16, H])
        .absent()
        .weight("gamma", &[H])
        .weight("beta", &[H])
        .absent()
        .int32("position_ids", &[B, S], &pos)
        .out("y")
        .out_typed("mask_index", INT32)
        .check();
}

/// Opset 21: ReduceMean takes its axes as an input.
#[test]
fn skip_layer_norm_opset_21() {
    ms("skip_ln_op21", "SkipLayerNormalization")
        .opset(21)
        .float("x", &[B, S, H])
        .float("skip", &[B, S, H])
        .weight("gamma", &[H])
        .weight("beta", &[H])
        .out("y")
        .no_out()
        .no_out()
        .out("sum")
        .check();
}

// ------------------------------------------------------------ activations --

#[test]
fn fast_gelu_with_and_without_bias() {
    ms("fast_gelu_bias", "FastGelu").float("x", &[B, S, H]).weight("bias", &[H]).out("y").check();
    ms("fast_gelu", "FastGelu").float("x", &[B, S, H]).out("y").check();
}

#[test]
fn bias_gelu_and_gelu() {
    ms("bias_gelu", "BiasGelu").float("x", &[B, S, H]).weight("bias", &[H]).out("y").check();
    ms("gelu", "Gelu").float("x", &[B, S, H]).out("y").check();
}

#[test]
fn quick_gelu_default_and_given_alpha() {
    ms("quick_gelu", "QuickGelu").float("x", &[B, S, H]).out("y").check();
    ms("quick_gelu_alpha", "QuickGelu").float("x", &[B, S, H]).attr(attr_f("alpha", 1.5)).out("y").check();
}

/// ONNX Runtime has no CPU kernel for BiasAdd (CUDA only), so the
/// decomposition is checked against the op's definition, x + bias + skip,
/// computed here in float32.
#[test]
fn bias_add_against_its_definition() {
    let c = ms("bias_add", "BiasAdd").float("x", &[B, S, H]).weight("bias", &[H]).float("skip", &[B, S, H]).out("y");
    let mut m = c.model();
    decompose(&mut m, c.opset).unwrap();
    let got = run(&c, &m).unwrap().remove(0).1;
    let (Data::F32(x), Data::F32(skip)) = (&c.feeds[0].data, &c.feeds[1].data) else { unreachable!() };
    let bias = attrpatch::onnx::consts::tensor_f64s(&c.inits[0]).unwrap();
    for (i, g) in got.iter().enumerate() {
        let want = (x[i] as f32 + bias[i % H] as f32) + skip[i] as f32;
        assert_eq!(*g as f32, want, "bias_add[{i}]");
    }
}

// ------------------------------------------------------------ attention --

const NH: i64 = 4;
const HID: usize = 64; // 4 heads of 16

fn attention(label: &str) -> Case {
    ms(label, "Attention").float("x", &[B, S, HID]).weight_in("w", &[HID, 3 * HID], -0.3, 0.3)
}

#[test]
fn attention_plain_bias_no_mask() {
    attention("attn_plain").weight("b", &[3 * HID]).attr(attr_i("num_heads", NH)).out("y").check();
}

#[test]
fn attention_unidirectional_no_mask() {
    // (ONNX Runtime 1.31's CPU kernel crashes without the bias input.)
    attention("attn_causal")
        .weight("b", &[3 * HID])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .out("y")
        .check();
}

#[test]
fn attention_2d_mask_unidirectional_as_gpt2_fusion() {
    attention("attn_mask2d_causal")
        .weight("b", &[3 * HID])
        .int32("mask", &[B, S], &[1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .out("y")
        .check();
}

#[test]
fn attention_2d_mask_with_holes_bidirectional() {
    attention("attn_mask2d")
        .weight("b", &[3 * HID])
        .int32("mask", &[B, S], &[0, 1, 1, 0, 1, 1, 1, 1, 0, 0])
        .attr(attr_i("num_heads", NH))
        .attr(attr_f("mask_filter_value", -1000.0))
        .out("y")
        .check();
}

/// A small mask_filter_value leaves masked keys some weight, so the value
/// shows, and how the key mask and the causal mask combine (future keys get
/// float32's lowest score whatever the filter value).
#[test]
fn attention_small_mask_filter_value_with_holes_and_causal() {
    attention("attn_mask_small_filter")
        .weight("b", &[3 * HID])
        .int32("mask", &[B, S], &[0, 1, 1, 0, 1, 1, 1, 1, 0, 0])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .attr(attr_f("mask_filter_value", -3.0))
        .out("y")
        .check();
}

#[test]
fn attention_small_mask_filter_value_key_mask_only() {
    attention("attn_mask_small_filter_bidir")
        .weight("b", &[3 * HID])
        .int32("mask", &[B, S], &[0, 1, 1, 0, 1, 1, 1, 1, 0, 0])
        .attr(attr_i("num_heads", NH))
        .attr(attr_f("mask_filter_value", -3.0))
        .out("y")
        .check();
}

#[test]
fn attention_1d_lengths_mask_and_scale() {
    attention("attn_mask1d")
        .weight("b", &[3 * HID])
        .int32("mask", &[B], &[5, 3])
        .attr(attr_i("num_heads", NH))
        .attr(attr_f("scale", 0.2))
        .out("y")
        .check();
}

#[test]
fn attention_empty_past_present() {
    attention("attn_past")
        .weight("b", &[3 * HID])
        .int32("mask", &[B, S], &[1; B * S])
        .float("past", &[2, B, NH as usize, 0, 16])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .out("y")
        .out("present")
        .check();
}

/// A non-empty past: keys and values concatenated, the causal mask offset by its length.
#[test]
fn attention_nonempty_past_unidirectional() {
    attention("attn_past3")
        .weight("b", &[3 * HID])
        .int32("mask", &[B, S + 3], &[1; B * (S + 3)])
        .float("past", &[2, B, NH as usize, 3, 16])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .out("y")
        .out("present")
        .check();
}

#[test]
fn attention_bias_input() {
    attention("attn_bias")
        .weight("b", &[3 * HID])
        .absent()
        .absent()
        .float("attn_bias", &[1, NH as usize, S, S])
        .attr(attr_i("num_heads", NH))
        .out("y")
        .check();
}

#[test]
fn attention_qkv_hidden_sizes() {
    ms("attn_qkv_sizes", "Attention")
        .float("x", &[B, S, HID])
        .weight_in("w", &[HID, 64 + 64 + 32], -0.3, 0.3)
        .weight("b", &[160])
        .attr(attr_i("num_heads", NH))
        .attr(attr_ints("qkv_hidden_sizes", &[64, 64, 32]))
        .out("y")
        .check();
}

/// Opset 21: Split takes num_outputs; opset 13: the oldest attrpatch loads.
#[test]
fn attention_opsets_13_and_21() {
    for v in [13, 21] {
        attention(&format!("attn_op{v}"))
            .opset(v)
            .weight("b", &[3 * HID])
            .int32("mask", &[B, S], &[1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
            .attr(attr_i("num_heads", NH))
            .attr(attr_i("unidirectional", 1))
            .out("y")
            .check();
    }
}

fn mha(label: &str, kv_len: usize) -> Case {
    ms(label, "MultiHeadAttention").float("q", &[B, S, HID]).float("k", &[B, kv_len, HID]).float("v", &[B, kv_len, HID])
}

#[test]
fn mha_self_bias_no_mask() {
    mha("mha_bias", S).weight("b", &[3 * HID]).attr(attr_i("num_heads", NH)).out("y").check();
}

#[test]
fn mha_cross_key_padding_mask() {
    mha("mha_cross_mask", 7)
        .absent()
        .int32("kpm", &[B, 7], &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
        .attr(attr_i("num_heads", NH))
        .out("y")
        .check();
}

#[test]
fn mha_small_mask_filter_value_unidirectional() {
    mha("mha_small_filter", S)
        .absent()
        .int32("kpm", &[B, S], &[0, 1, 1, 0, 1, 1, 1, 1, 0, 0])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .attr(attr_f("mask_filter_value", -3.0))
        .out("y")
        .check();
}

#[test]
fn mha_nonempty_past_unidirectional() {
    mha("mha_past3", S)
        .weight("b", &[3 * HID])
        .absent()
        .absent()
        .float("past_k", &[B, NH as usize, 3, 16])
        .float("past_v", &[B, NH as usize, 3, 16])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .out("y")
        .out("present_k")
        .out("present_v")
        .check();
}

#[test]
fn mha_unidirectional_empty_past_presents_attention_bias() {
    mha("mha_past", S)
        .weight("b", &[3 * HID])
        .absent()
        .float("attn_bias", &[B, NH as usize, S, S])
        .float("past_k", &[B, NH as usize, 0, 16])
        .float("past_v", &[B, NH as usize, 0, 16])
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("unidirectional", 1))
        .out("y")
        .out("present_k")
        .out("present_v")
        .check();
}

// ------------------------------------------------------------ GQA --

const KVH: i64 = 2;
const HS: usize = 16;
const MAXPOS: usize = 32;

/// cos/sin caches of angles p * theta_i, as the GenAI builder bakes them.
fn caches(half: usize) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![];
    let mut s = vec![];
    for p in 0..MAXPOS {
        for i in 0..half {
            let a = p as f64 / 10000f64.powf(2.0 * i as f64 / (2 * half) as f64);
            c.push(a.cos());
            s.push(a.sin());
        }
    }
    (c, s)
}

/// GQA with separate or packed Q/K/V, an empty past, seqlens from `lens`.
fn gqa(label: &str, packed: bool, lens: &[usize], rotary: Option<usize>) -> Case {
    gqa_hs(label, packed, lens, rotary, HS)
}

fn gqa_hs(label: &str, packed: bool, lens: &[usize], rotary: Option<usize>, hs: usize) -> Case {
    let hid = NH as usize * hs;
    let kvd = KVH as usize * hs;
    let mut c = ms(label, "GroupQueryAttention");
    c = if packed {
        c.float("qkv", &[B, S, hid + 2 * kvd]).absent().absent()
    } else {
        c.float("q", &[B, S, hid]).float("k", &[B, S, kvd]).float("v", &[B, S, kvd])
    };
    let sk: Vec<i64> = lens.iter().map(|&l| l as i64 - 1).collect();
    c = c
        .float("past_key", &[B, KVH as usize, 0, hs])
        .float("past_value", &[B, KVH as usize, 0, hs])
        .int32("seqlens_k", &[B], &sk)
        .int32("total_sequence_length", &[], &[S as i64]);
    if let Some(half) = rotary {
        let (cv, sv) = caches(half);
        c = c
            .weight_vals("cos", &[MAXPOS, half], &cv)
            .weight_vals("sin", &[MAXPOS, half], &sv)
            .attr(attr_i("do_rotary", 1));
    }
    c.attr(attr_i("num_heads", NH)).attr(attr_i("kv_num_heads", KVH)).out("y").out("present_k").out("present_v")
}

#[test]
fn gqa_separate_qkv_no_rotary() {
    gqa("gqa_plain", false, &[S, S], None).check();
}

#[test]
fn gqa_packed_qkv_rotary_as_genai() {
    gqa("gqa_packed_rotary", true, &[S, S], Some(HS / 2)).check();
}

#[test]
fn gqa_rotary_interleaved() {
    gqa("gqa_rotary_interleaved", false, &[S, S], Some(HS / 2)).attr(attr_i("rotary_interleaved", 1)).check();
}

/// Opset 22 (the GenAI builder's), with the interleaved rotation's Split.
#[test]
fn gqa_packed_rotary_interleaved_opset_22() {
    gqa("gqa_op22", true, &[S, S], Some(HS / 2)).opset(22).attr(attr_i("rotary_interleaved", 1)).check();
}

#[test]
fn gqa_position_ids_and_attention_bias() {
    let pos: Vec<i64> = (0..B * S).map(|i| (i % S + 2 * (i / S)) as i64).collect();
    gqa("gqa_pos_bias", false, &[S, S], Some(HS / 2))
        .int64("position_ids", &[B, S], &pos)
        .float("attn_bias", &[B, 1, S, S])
        .check();
}

#[test]
fn gqa_partial_rotary() {
    // ONNX Runtime wants the cache width a multiple of 8: head size 32, rotary dim 16.
    gqa_hs("gqa_partial_rotary", false, &[S, S], Some(8), 32).check();
}

#[test]
fn gqa_local_window() {
    gqa("gqa_window", false, &[S, S], Some(HS / 2)).attr(attr_i("local_window_size", 2)).check();
}

#[test]
fn gqa_softcap() {
    gqa("gqa_softcap", false, &[S, S], Some(HS / 2)).attr(attr_f("softcap", 2.0)).check();
}

#[test]
fn gqa_scale() {
    gqa("gqa_scale", false, &[S, S], Some(HS / 2)).attr(attr_f("scale", 0.3)).check();
}

#[test]
fn gqa_right_padded_rows() {
    // ONNX Runtime leaves a padded row's output undefined (scores it never
    // wrote); the valid rows must match.
    let mut c = gqa("gqa_padded", false, &[S, 3], Some(HS / 2));
    c.valid_len = Some(vec![S, 3]);
    c.check();
}

// ------------------------------------------------------------ rotary --

fn rotary(label: &str, x_shape: &[usize], pos: (&[usize], Vec<i64>), half: usize) -> Case {
    let (cv, sv) = caches(half);
    ms(label, "RotaryEmbedding")
        .float("x", x_shape)
        .int64("pos", pos.0, &pos.1)
        .weight_vals("cos", &[MAXPOS, half], &cv)
        .weight_vals("sin", &[MAXPOS, half], &sv)
}

fn positions() -> (&'static [usize], Vec<i64>) {
    (&[B, S], (0..B * S).map(|i| (i % S + i / S * 3) as i64).collect())
}

#[test]
fn rotary_3d_num_heads() {
    rotary("rope_3d", &[B, S, HID], positions(), HS / 2).attr(attr_i("num_heads", NH)).out("y").check();
}

#[test]
fn rotary_3d_interleaved_offset_position() {
    rotary("rope_3d_inter", &[B, S, HID], (&[1], vec![4]), HS / 2)
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("interleaved", 1))
        .out("y")
        .check();
}

#[test]
fn rotary_4d() {
    rotary("rope_4d", &[B, NH as usize, S, HS], positions(), HS / 2).out("y").check();
}

#[test]
fn rotary_4d_interleaved() {
    rotary("rope_4d_inter", &[B, NH as usize, S, HS], positions(), HS / 2)
        .attr(attr_i("interleaved", 1))
        .out("y")
        .check();
}

#[test]
fn rotary_partial_dim() {
    rotary("rope_partial", &[B, S, HID], positions(), HS / 4)
        .attr(attr_i("num_heads", NH))
        .attr(attr_i("rotary_embedding_dim", (HS / 2) as i64))
        .out("y")
        .check();
}

// ------------------------------------------------------------ end to end --

/// Models fused by ONNX Runtime's own tools (tools/fixtures/contrib_fixtures.py):
/// their grids, through the decompositions and the autodiff, against the
/// PyTorch float64 reference of the same weights, at the core tolerance
/// (1e-3 relative or 1e-6 absolute).
mod fixtures {
    use crate::common::*;
    use attrpatch::hooks::HookKind;
    use attrpatch::job::{run_job, JobOptions};
    use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

    fn options(name: &str, model: &str, hooks: HookKind) -> (JobOptions, serde_json::Value) {
        options_on(name, model, hooks, RuntimeKind::Ort)
    }

    fn options_on(name: &str, model: &str, hooks: HookKind, kind: RuntimeKind) -> (JobOptions, serde_json::Value) {
        let dir = root().join("tests/fixtures/contrib");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
        let mut o = JobOptions::new(dir.join(model));
        o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
        o.heads = v["n_heads"].as_u64().map(|h| h as usize);
        o.hooks = hooks;
        o.runtime = RuntimeOptions { kind, device: Device::Cpu, ort_lib: None, threads: 1 };
        (o, v)
    }

    /// Runs the job; checks the logit differences, the positions grid and (for
    /// attention hooks) the heads grid against the reference.
    fn check(name: &str, model: &str, hooks: HookKind) {
        check_on(name, model, hooks, RuntimeKind::Ort)
    }

    fn check_on(name: &str, model: &str, hooks: HookKind, kind: RuntimeKind) {
        let heads = hooks.has_heads();
        let (o, v) = options_on(name, model, hooks, kind);
        let r = run_job(&o).unwrap_or_else(|e| panic!("{name}: {e}")).unwrap();
        let grid = |k: &str| -> Vec<Vec<f64>> { serde_json::from_value(v[k].clone()).unwrap() };
        assert!(close(r.clean_metric, v["clean_logit_diff"].as_f64().unwrap()), "{name}: clean ld");
        assert!(close(r.corrupted_metric, v["corrupted_logit_diff"].as_f64().unwrap()), "{name}: corrupted ld");
        let ep = assert_grid_close(&format!("{name} positions"), &r.grids.positions, &grid("positions"));
        if heads {
            let eh = assert_grid_close(&format!("{name} heads"), &r.grids.heads, &grid("heads"));
            eprintln!("{name}: max relative error heads {eh:.2e}, positions {ep:.2e}");
        } else {
            eprintln!("{name}: max relative error positions {ep:.2e}");
        }
    }

    #[test]
    fn gpt2_fused_by_the_ort_optimizer() {
        check("gpt2-ortopt", "gpt2-ortopt.onnx", HookKind::AttnOut);
    }

    /// ONNX Runtime's own GPT-2 converter: opset 11, int32 inputs, fused
    /// Attention fed one stacked `past_N` [2, batch, heads, past, head size]
    /// per layer (regression: "input 'past_0' is not supported").
    #[test]
    fn gpt2_converted_by_ort_with_stacked_past_and_int32_inputs() {
        check("gpt2-ortconv", "gpt2-ortconv.onnx", HookKind::AttnOut);
    }

    #[test]
    fn gptneox_fused_by_the_ort_optimizer() {
        check("gptneox-ortopt", "gptneox-ortopt.onnx", HookKind::AttnOut);
    }

    /// The patching graph on the decomposed graphs against patching by hand
    /// through the plain (normalised) model, as tests/architectures.rs does.
    #[test]
    fn exact_patching_matches_patching_by_hand_on_the_fused_gpt2_and_gptneox() {
        for (name, model) in [
            ("gpt2-ortopt", "gpt2-ortopt.onnx"),
            ("gptneox-ortopt", "gptneox-ortopt.onnx"),
            ("gpt2-ortconv", "gpt2-ortconv.onnx"),
        ] {
            let (o, v) = options(name, model, HookKind::AttnOut);
            let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
            let pairs = by_hand::Pairs::new(&ids("input_ids"), &ids("corrupted_ids"), &ids("answer_ids"));
            let (want_heads, want_positions) = by_hand::exact_grids(&o.model, &pairs, o.heads.unwrap());
            let exact = attrpatch::patch::run(&o, attrpatch::patch::Estimator::Exact { positions: true }, 64)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let scale = want_positions.iter().flatten().fold(1f64, |m, v| m.max(v.abs()));
            let eh = by_hand::assert_abs_close(&format!("{name} heads"), &exact.grids.heads, &want_heads, 1e-4 * scale);
            let ep = by_hand::assert_abs_close(
                &format!("{name} positions"),
                &exact.grids.positions,
                &want_positions,
                1e-4 * scale,
            );
            eprintln!("{name}: exact vs by hand, max abs error heads {eh:.2e}, positions {ep:.2e}");
        }
    }

    /// The optimizer's BERT fusion: EmbedLayerNormalization (whose mask_index
    /// feeds the attention), Attention, SkipLayerNormalization, BiasGelu. No
    /// preset names BERT's `attention.output.dense`: the hook is found by
    /// structure in the decomposed graph (the MatMul after the head merge).
    #[test]
    fn bert_attention_fused_by_the_ort_optimizer() {
        check("bert-ortopt", "bert-ortopt.onnx", HookKind::AttnOut);
    }

    /// The same with `--use_multi_head_attention`: MultiHeadAttention.
    #[test]
    fn bert_multi_head_attention_fused_by_the_ort_optimizer() {
        check("bert-ortopt-mha", "bert-ortopt-mha.onnx", HookKind::AttnOut);
    }

    /// The GenAI builder's Llama: GroupQueryAttention with rotary and an
    /// empty KV cache, RMSNorms. The default hook finds `/model/layers.N/attn/o_proj`
    /// by its preset, so both grids.
    #[test]
    fn llama_built_by_genai() {
        check("llama-genai", "llama-genai/model.onnx", HookKind::AttnOut);
    }

    /// The pure-Rust runtime on the decomposed graphs.
    #[test]
    fn fused_fixtures_on_tract() {
        check_on("gpt2-ortopt", "gpt2-ortopt.onnx", HookKind::AttnOut, RuntimeKind::Tract);
        check_on("gpt2-ortconv", "gpt2-ortconv.onnx", HookKind::AttnOut, RuntimeKind::Tract);
        check_on("gptneox-ortopt", "gptneox-ortopt.onnx", HookKind::AttnOut, RuntimeKind::Tract);
        check_on("llama-genai", "llama-genai/model.onnx", HookKind::AttnOut, RuntimeKind::Tract);
        check_on("bert-ortopt", "bert-ortopt.onnx", HookKind::AttnOut, RuntimeKind::Tract);
    }
}

// ------------------------------------------------------------ refusals --

/// `m` with a node in front computing `to` from `from` (so `to` is no graph input).
fn computed_input(mut m: ModelProto, op: &str, from: &str, to: &str) -> ModelProto {
    let g = m.graph.as_mut().unwrap();
    for n in &mut g.node {
        for i in &mut n.input {
            if i == from {
                *i = to.to_string();
            }
        }
    }
    let pre = NodeProto {
        name: "pre".into(),
        op_type: op.into(),
        input: vec![from.into()],
        output: vec![to.into()],
        ..Default::default()
    };
    g.node.insert(0, pre);
    m
}

#[test]
fn attention_mask_of_undeclared_rank_is_refused_by_name() {
    let c = attention("attn_mask_undeclared")
        .weight("b", &[3 * HID])
        .int32("mask", &[B, S], &[1; B * S])
        .attr(attr_i("num_heads", NH))
        .out("y");
    let mut m = computed_input(c.model(), "Abs", "mask", "mask_abs");
    let e = decompose(&mut m, 17).unwrap_err().to_string();
    assert!(
        e.contains("Attention node 'Attention_0'") && e.contains("mask 'mask_abs'") && e.contains("undeclared rank"),
        "{e}"
    );
}

#[test]
fn gqa_with_a_computed_past_is_refused_by_name() {
    let c = gqa("gqa_computed_past", false, &[S, S], None);
    let mut m = computed_input(c.model(), "Identity", "past_key", "past_key_copy");
    let e = decompose(&mut m, 17).unwrap_err().to_string();
    assert!(e.contains("GroupQueryAttention node 'GroupQueryAttention_0'") && e.contains("'past_key_copy'"), "{e}");
}

#[test]
fn packed_multi_head_attention_is_refused_by_name() {
    let c = ms("mha_packed", "MultiHeadAttention")
        .float("qkv", &[B, S, NH as usize, 3, HS])
        .attr(attr_i("num_heads", NH))
        .out("y");
    let mut m = c.model();
    let e = decompose(&mut m, 17).unwrap_err().to_string();
    assert!(e.contains("MultiHeadAttention node 'MultiHeadAttention_0'") && e.contains("packs Q, K and V"), "{e}");
}
